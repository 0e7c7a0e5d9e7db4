"""The socket systemd would pass in NOTIFY_SOCKET, bound by a test: a unix datagram socket in a short
temporary directory (socket paths are limited to 107 bytes), removed afterwards."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def notify_socket(timeout: float) -> Iterator[tuple[socket.socket, str]]:
    """(the bound socket, its path); every recv waits at most `timeout` seconds."""
    with tempfile.TemporaryDirectory(prefix="tsd-", dir="/tmp") as d:
        path = str(Path(d) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(path)
            sock.settimeout(timeout)
            yield sock, path
        finally:
            sock.close()
