"""A small HTTP server for the load balancer's rolling-update test (tests/integration/test_lb_rolling_processes.py).

Run as a task: `python rolling_backend.py` with `PORT0` (where to listen), `TESSERA_TASK_ID` and
`WARMUP_SECONDS` in its environment. `/health` answers 503 for its first `WARMUP_SECONDS`, then 200 — an
instance that must not be sent traffic until it is ready. Every other path answers a JSON body saying who
answered and in what condition: `{"task": ..., "healthy": ..., "stopping": ...}`, `healthy` being what
`/health` would say at that moment. On SIGTERM it goes on answering for `LINGER_SECONDS` with `stopping`
true and `healthy` false (as a server that finishes its work before it exits, still accepting meanwhile),
then exits: a client through the load balancer that sees `stopping` was sent to an instance after it was
told to stop, i.e. the balancer had not dropped it before its SIGTERM.

With `SICK_DIR` in its environment, `/health` also answers 503 while a file named after its task id exists
in that directory: a test makes one instance of a service fail its health check
(tests/integration/test_services_unhealthy_processes.py).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.monotonic()
WARMUP = float(os.environ.get("WARMUP_SECONDS", "3"))
LINGER = float(os.environ.get("LINGER_SECONDS", "1"))
TASK = os.environ.get("TESSERA_TASK_ID", "?")
SICK_DIR = os.environ.get("SICK_DIR", "")
stopping = threading.Event()


def sick() -> bool:
    return bool(SICK_DIR) and os.path.exists(os.path.join(SICK_DIR, TASK))


def healthy() -> bool:
    return time.monotonic() - STARTED >= WARMUP and not stopping.is_set() and not sick()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/health":
            ok = healthy()
            body = b"ok\n" if ok else b"sick\n" if sick() else b"warming up\n"
            self.send_response(200 if ok else 503)
        else:
            body = json.dumps({"task": TASK, "healthy": healthy(), "stopping": stopping.is_set()}).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT0"])), Handler)
    server.daemon_threads = True

    def on_term(signum: int, frame: object) -> None:
        stopping.set()
        print(f"{TASK}: SIGTERM, answering {LINGER:g}s more", file=sys.stderr, flush=True)
        threading.Timer(LINGER, server.shutdown).start()

    signal.signal(signal.SIGTERM, on_term)
    print(f"{TASK}: listening on {server.server_address}, healthy after {WARMUP:g}s", file=sys.stderr, flush=True)
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
