"""Readiness and status for systemd (`Type=notify` units): the sd_notify protocol, nothing else.

systemd passes a unix datagram socket in `NOTIFY_SOCKET` (a path, or an abstract name written with a
leading `@`); a service sends newline-separated `KEY=VALUE` lines to it in one datagram
(https://www.freedesktop.org/software/systemd/man/sd_notify.html). Tessera sends:

- `READY=1` once the process serves — a master when its gRPC port is bound and started and its state is
  restored from the Raft journal and dump; an agent when it has recovered its tasks from its checkpoint
  and started its master link. `systemctl start` returns then (and fails when the process exits first).
- `STATUS=...` one human line (`systemctl status` shows it): the master's role and leader, the agent's
  registration.
- `STOPPING=1` when a stop begins.

Without `NOTIFY_SOCKET` (not under systemd, or a unit that is not `Type=notify`) every call is a no-op.
Why not a library: the one pure-Python sd_notify package on the index was last released in 2017 and
swallows every error; the protocol is one `sendto`. `unset_environment` keeps the variable from the
agent's tasks and the master's children, as `sd_notify(unset_environment=1, ...)` does.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

__all__ = ["Notifier", "notify_address"]

ENV = "NOTIFY_SOCKET"


def notify_address(value: str | None) -> str | None:
    """The socket address `NOTIFY_SOCKET` names: a path as is, `@name` as the abstract `\\0name`; None when
    unset, empty, or neither (systemd also allows `vsock:`, which Tessera does not need)."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends sd_notify messages to the socket `NOTIFY_SOCKET` named when it was built.

    `status(line)` sends only when the line changed since the last one, so a caller may call it on every
    tick. A failed send is logged once at warning level and never raised: readiness reporting never stops
    the service (systemd times the start out instead)."""

    def __init__(self, environ: MutableMapping[str, str] | None = None, *, unset_environment: bool = True) -> None:
        env = os.environ if environ is None else environ
        self.address = notify_address(env.get(ENV))
        if unset_environment:
            env.pop(ENV, None)
        self._last_status: str | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send `lines` in one datagram; True when sent (False without a socket or on an error)."""
        if self.address is None:
            return False
        message = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd at %s: %s", self.address.replace("\0", "@"), exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        self._last_status = status
        return self.send("READY=1", f"STATUS={_one_line(status)}")

    def status(self, status: str) -> bool:
        if status == self._last_status:
            return False
        self._last_status = status
        return self.send(f"STATUS={_one_line(status)}")

    def stopping(self, status: str = "stopping") -> bool:
        self._last_status = status
        return self.send("STOPPING=1", f"STATUS={_one_line(status)}")


def _one_line(text: str) -> str:
    return " ".join(text.split())  # a newline would start another KEY=VALUE
