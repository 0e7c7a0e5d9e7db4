"""One process's `/metrics`: the registry (its own collector, `process_*`, `python_info`) and the small
HTTP server that serves its exposition. Masters and agents both are a `MetricsEndpoint`.

The same port answers the process's JSON probes (`add_probe`): the master's `/health` and `/leader`, the
agent's `/health`. A probe is a callable returning `(HTTP status, JSON-able body)`; what it says is
decided by its owner (`tessera.control_plane.runtime.health`, `tessera.agent.main`), this module only
serves it. No redirects: a probe answers where it was asked.

No `_created` series: `MetricsEndpoint` turns them off (`disable_created_metrics`, process-wide: the
metrics of a Tessera process are all served here). They double every counter and histogram for a
start time that `process_start_time_seconds` already gives."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.exposition import make_wsgi_app
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from tessera.control_plane.metrics.specs import DEFAULT_HOST

log = logging.getLogger(__name__)

__all__ = ["MetricsEndpoint", "MetricsServer", "Probe", "parse_address"]

Probe = Callable[[], tuple[int, dict[str, Any]]]  # -> (HTTP status, JSON body)
_REASONS = {200: "200 OK", 503: "503 Service Unavailable", 500: "500 Internal Server Error"}


def parse_address(address: str) -> tuple[str, int]:
    """'HOST:PORT' (IPv6 as '[::1]:PORT') -> (host, port); port 0 picks a free port. Raises ValueError."""
    host, sep, port_text = address.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port out of range in {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


class _QuietHandler(WSGIRequestHandler):
    timeout = 10.0  # a stalled client cannot hold a request thread (and so `stop`) for long

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass  # one line per scrape would drown the master's log


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = False  # request threads are joined by server_close: nothing outlives `stop`
    block_on_close = True
    allow_reuse_address = True


class MetricsServer:
    """Serves one registry's text exposition at `/metrics` on its own threads."""

    def __init__(self, registry: CollectorRegistry, address: str = f"{DEFAULT_HOST}:0") -> None:
        self.registry = registry
        self.probes: dict[str, Probe] = {}  # path -> probe, answered as JSON (see the module docstring)
        self.requested = address
        self.host, self._requested_port = parse_address(address)
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._httpd is not None:
            raise RuntimeError("metrics server already started")
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/metrics":
                return metrics_app(environ, start_response)  # type: ignore[no-any-return]
            probe = self.probes.get(path)
            if probe is not None:
                return _answer_probe(probe, start_response)
            paths = " ".join(["/metrics", *sorted(self.probes)])
            if path == "/":
                start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
                return [f"Tessera: GET {paths}\n".encode()]
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"not found; this port serves {paths}\n".encode()]

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_class = type("_MetricsHTTPServer", (_Server,), {"address_family": family})
        self._httpd = make_server(self.host, self._requested_port, app, server_class, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"metrics-http-{self.port}", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("metrics server not started")
        return int(self._httpd.server_port)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        httpd.shutdown()  # returns once serve_forever has exited
        httpd.server_close()  # joins in-flight request threads
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = self._thread = None


def _answer_probe(probe: Probe, start_response: Callable[..., Any]) -> Iterable[bytes]:
    try:
        status, body = probe()
    except Exception as exc:  # noqa: BLE001 - a probe that cannot answer says so, it does not hang up
        log.warning("probe failed", exc_info=True)
        status, body = 500, {"status": "error", "error": str(exc)}
    data = (json.dumps(body, sort_keys=True) + "\n").encode()
    start_response(_REASONS.get(status, f"{status} Status"),
                   [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                    ("Cache-Control", "no-store")])
    return [data]


class MetricsEndpoint:
    """The metrics of one process: `collector` (read at scrape time), then the `process_*` (cpu, rss, open
    fds vs LimitNOFILE) and `python_info` collectors in one registry, served by a `MetricsServer` at
    `address`. A subclass may register more metrics (histograms, counters) in `self.registry`.

    `start()` binds (OSError when the port is taken, ValueError for a bad address); `stop()` stops serving
    and joins the server's threads."""

    def __init__(self, collector: Collector, address: str = f"{DEFAULT_HOST}:0") -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # see the module docstring
        self.collector = collector
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.server = MetricsServer(self.registry, address)

    def add_probe(self, path: str, probe: Probe) -> None:
        """Answer GET `path` with `probe()` as JSON (the HTTP status it gives), from now on."""
        if not path.startswith("/") or path == "/metrics":
            raise ValueError(f"not a probe path: {path!r}")
        self.server.probes[path] = probe

    def start(self) -> None:
        self.server.start()
        log.info("metrics at %s", self.server.url)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.stop()

    def text(self) -> str:
        """The exposition as a scrape would return it (for tests and debugging)."""
        return generate_latest(self.registry).decode()
