"""A local HTTP server of artifacts for fetcher tests: on 127.0.0.1, a free port, in a thread of the test
process; it counts the requests for each path, and can answer with a redirect, an error, a stream
without a Content-Length, or not at all (a stalled download, released when the server closes)."""

from __future__ import annotations

import collections
import http.server
import io
import tarfile
import threading
import zipfile
from dataclasses import dataclass
from typing import Any


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    location: str = ""  # a redirect's target
    chunked: bool = False  # no Content-Length: the body in chunks
    stall: bool = False  # headers, a few bytes, then nothing until the server closes


class ArtifactServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.released = threading.Event()
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.partition("?")[0]
                with server.lock:
                    server.counts[path] += 1
                    route = server.routes.get(path)
                if route is None:
                    self.send_error(404, "Not Found")
                    return
                if route.location:
                    self.send_response(route.status if route.status != 200 else 302)
                    self.send_header("Location", route.location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if route.status != 200:
                    self.send_error(route.status)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if route.stall:
                    self.send_header("Content-Length", str(len(route.body) + 1000))
                    self.end_headers()
                    self.wfile.write(route.body)
                    self.wfile.flush()
                    server.released.wait(120)
                    return
                if route.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for start in range(0, len(route.body), 65536):
                        part = route.body[start:start + 65536]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                    return
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                self.wfile.write(route.body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="artifact-server", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, body: bytes = b"", **kw: Any) -> str:
        self.routes[path] = Route(body, **kw)
        return self.url(path)

    def requests(self, path: str) -> int:
        with self.lock:
            return self.counts[path]

    def __enter__(self) -> ArtifactServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def tar_bytes(members: list[tarfile.TarInfo | tuple[str, bytes, int]], compression: str = "gz") -> bytes:
    """A tar archive of (name, content, mode) files and ready-made TarInfo headers (links, devices, ...)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=f"w:{compression}" if compression else "w") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data, mode = member
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), mode
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def tar_member(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    if kind == tarfile.DIRTYPE:
        info.mode = 0o755
    return info


def zip_bytes(members: list[tuple[str, bytes, int]]) -> bytes:
    """A zip archive of (name, content, unix mode with its file type) entries, as Info-ZIP writes them."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name, (2024, 1, 2, 3, 4, 6))
            info.create_system = 3
            info.external_attr = mode << 16
            archive.writestr(info, data)
    return out.getvalue()
