"""`tessera dns` run by a test: started against a cluster's masters, its address read from the line it
prints (`dns: <host>:<port>`, within a bounded wait), its log in a file (a pipe nobody reads could fill and
stop it), terminated by its PID at the end."""

from __future__ import annotations

import re
import select
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.support.cluster import stop_process

__all__ = ["dns_server"]


@contextmanager
def dns_server(masters: Sequence[str], log_path: Path, timeout: float = 30.0) -> Iterator[tuple[str, int]]:
    """Run `tessera dns --domain tessera`; yields the (host, port) it serves on."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tessera.control_plane.cli.main", "--masters",
                                 ",".join(masters), "dns", "--domain", "tessera"],
                                stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if readable else ""
        found = re.match(r"dns: ([\d.]+):(\d+)", line)
        assert found, f"tessera dns printed no address within {timeout:g}s: {line!r}; its log: " \
                      f"{log_path.read_text(errors='replace')[-2000:]}"
        yield found.group(1), int(found.group(2))
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()
