"""The web UI's server inside a master process: aiohttp on its own thread and event loop (`--http`).

`WebServer.start()` binds (raising `OSError` when it cannot, so the master reports it as one line) and
returns once the port listens; `url` is then what to open. `stop()` closes it and joins the thread. The
reads run on a small thread pool of their own, so a slow history rebuild never stalls the event loop, and
the gRPC servers' threads are never borrowed.

The rules of `--http` (docs/http-api.md): with an ACL the master serves HTTPS with its own certificate on
any address; without one (an insecure development master) it serves only loopback addresses
(`check_http_address`), plain HTTP unless it has a certificate anyway.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from tessera.control_plane.web.app import WebApp
from tessera.control_plane.web.service import WebReader

STATIC_DIR = Path(__file__).with_name("static")
READ_THREADS = 8
START_TIMEOUT = 10.0


class HttpAddressError(ValueError):
    """An unusable `--http` value; the message says why in one line."""


def parse_http_address(text: str) -> tuple[str, int] | None:
    """`HOST:PORT` (port 0: any free one) as (host, port); `off` as None. IPv6 hosts in brackets."""
    if text.strip().lower() == "off":
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535 or len(port) > 5:
        raise HttpAddressError(f"--http: expected HOST:PORT or off, got {text!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_http_address(host: str, insecure: bool) -> None:
    """An insecure master (no ACL: no token is asked) serves its UI on loopback only."""
    if insecure and not is_loopback(host):
        raise HttpAddressError(f"--http: {host} is not a loopback address; a master without an ACL "
                               "(--insecure-dev) serves its UI on 127.0.0.1 or ::1 only")


def server_ssl_context(tls_dir: Path) -> ssl.SSLContext:
    """HTTPS with the master's own certificate (browsers present none: no client certificate asked)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls_dir / "cert.pem", tls_dir / "key.pem")
    return context


class WebServer:
    def __init__(self, operator: Any, host: str, port: int, *, insecure: bool, ssl_context: ssl.SSLContext | None,
                 static_dir: Path = STATIC_DIR, guard: Any = None) -> None:
        """`operator`: the master's `OperatorService` (its reads, quorum view, files proxy and, unless
        `guard` is given, its guard: the ACL the tokens are checked against)."""
        check_http_address(host, insecure)
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.executor = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="web-read")
        self.reader = WebReader(operator, insecure=insecure)
        self.app = WebApp(self.reader, static_dir, guard or operator.guard, self.executor).build()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/"

    def start(self) -> WebServer:
        self._thread = threading.Thread(target=self._serve, name="web-ui", daemon=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT):
            raise OSError(f"the web UI did not start within {START_TIMEOUT:g} s")
        if self._error is not None:
            raise OSError(str(self._error)) from self._error
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._bind())
        except BaseException as exc:  # noqa: BLE001 - reported by start() in the master's thread
            self._error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            pending = asyncio.all_tasks(loop)  # live event streams: ended, not dropped mid-await
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _bind(self) -> None:
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        for address in runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                self.port = int(address[1])
                break

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and self._thread is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(5.0)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.reader.close()
