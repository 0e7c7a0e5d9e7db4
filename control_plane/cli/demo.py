"""The demo service of `tessera up --demo`: `hello`, two instances of a small HTTP server kept by the service
framework (`tessera services`, docs/services.md), found by `tessera dns` (`hello.tessera`) and, where
HAProxy is installed, balanced by `tessera lb` on a service port of its own.

`up` writes the definition to `DATA_DIR/demo/hello.yaml` (so it can be edited and applied again) and applies
it with `tessera service apply` once the framework has registered; what to print about it is decided here,
from facts `up` hands in (where DNS listens, the LB's port or None, the apply's outcome).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["HELLO", "apply_service", "demo_lines", "find_haproxy", "hello_definition"]

HELLO = "hello"
NOT_REGISTERED = "no tessera-services framework is registered"


def hello_definition(lb_port: int | None, user: str = "") -> str:
    """The app definition (YAML) of the demo service: 2 instances of Python's http.server on a port of the
    offer (`port: 0`), checked over HTTP; with `lb_port`, balanced by `tessera lb` on that service port."""
    lines = [
        "# The demo service of `tessera up --demo`. Edit it and apply it again: tessera service apply <this file>",
        f"id: {HELLO}",
        "instances: 2",
        "cpus: 0.1",
        "mem: 32",
        "cmd: python3 -m http.server $PORT0 --bind 127.0.0.1",
        "portDefinitions:",
        "  - {port: 0, name: http}",
        "healthChecks:",
        "  - {protocol: HTTP, path: /, portIndex: 0, delaySeconds: 0.5, intervalSeconds: 2, timeoutSeconds: 1,",
        "     gracePeriodSeconds: 30}",
        "upgradeStrategy: {minimumHealthCapacity: 0.5, maximumOverCapacity: 0.5}",
    ]
    if lb_port is not None:
        lines += ["labels:", f'  tessera.lb.port: "{lb_port}"', "  tessera.lb.mode: http"]
    if user:
        lines.append(f"user: {user}")
    return "\n".join(lines) + "\n"


def find_haproxy(path: str | None) -> str | None:
    """The HAProxy binary on `path` (a PATH value), or None: `tessera lb` is started only with one."""
    return shutil.which("haproxy", path=path)


def apply_service(tessera: list[str], definition: Path, env: dict[str, str], stop: threading.Event,
                  alive: Callable[[], bool], timeout: float) -> str | None:
    """`tessera ... service apply DEFINITION`, again every half second while the framework has not
    registered yet (and its process lives, and `stop` is not set), for at most `timeout` seconds.
    None when applied, else why not (the command's last line)."""
    deadline = time.monotonic() + timeout
    last = "the service framework did not register"
    while time.monotonic() < deadline and not stop.is_set():
        try:
            done = subprocess.run([*tessera, "service", "apply", str(definition)], env=env, capture_output=True,
                                  text=True, stdin=subprocess.DEVNULL, timeout=max(5.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return f"tessera service apply did not finish within {timeout:g}s"
        if done.returncode == 0:
            return None
        last = next((ln for ln in reversed(done.stderr.splitlines()) if ln.strip()), f"exit {done.returncode}")
        if NOT_REGISTERED not in last or not alive():
            return last.removeprefix("tessera: ")
        stop.wait(0.5)
    return last.removeprefix("tessera: ")


def demo_lines(dns_address: str, lb_port: int | None, problem: str | None, definition: Path
               ) -> tuple[list[str], list[str]]:
    """What `up` prints about the demo service: its status lines, and the commands to try. `lb_port` is
    None when `tessera lb` was not started (no HAProxy)."""
    host, port = dns_address.rsplit(":", 1)
    if problem is not None:
        status = [f"demo service: {HELLO} NOT applied: {problem} (the definition: {definition})"]
    else:
        status = [f"demo service: {HELLO}, 2 instances of an HTTP server, kept by `tessera services` "
                  f"(the definition: {definition})"]
    if lb_port is not None:
        status.append(f"lb: http://127.0.0.1:{lb_port}/ (the demo service {HELLO}, through HAProxy)")
    else:
        status.append("lb: not started (haproxy not found)")
    try_lines = ["tessera service list", f"tessera service show {HELLO}",
                 f"dig @{host} -p {port} {HELLO}.tessera A",
                 f"dig @{host} -p {port} _{HELLO}._tcp.tessera SRV"]
    if lb_port is not None:
        try_lines.append(f"curl http://127.0.0.1:{lb_port}/")
    return status, try_lines
