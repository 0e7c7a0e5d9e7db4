"""The pysyncobj release Tessera's Raft code is written for, and the repair its import needs.

* ``PATCHED_PYSYNCOBJ`` and ``check_pysyncobj_version``: the guards (``consensus_guards``,
  ``journal_alignment``, ``raft_port_guard``) replace private methods and read private fields of
  pysyncobj (``_SyncObj__transport``, ``_onMessageReceivedCallback`` …), checked against this release
  only; pyproject.toml pins the same range, and ``RaftReplicator`` refuses to start on another.
* Importing pysyncobj replaces ``socket.inet_ntop`` with a Windows-only shim on every OS (a mis-indented
  line in pysyncobj/win_inet_pton.py), which breaks whatever calls it afterwards in the process (psutil's
  connection listing raised TypeError). This module imports pysyncobj, then puts the real one back; the
  package imports it (through ``raft``) whenever it is imported.
"""

from __future__ import annotations

import _socket
import importlib.metadata
import socket

import pysyncobj  # noqa: F401 - installs the shim undone below

socket.inet_ntop = _socket.inet_ntop

PATCHED_PYSYNCOBJ = "0.3.17"


def check_pysyncobj_version(installed: str | None = None) -> None:
    """Refuse to run Raft on a pysyncobj release whose internals the guards were not written for.

    Another release may have renamed what the guards patch (they would then silently do nothing) or
    fixed the defects in another way; either needs a reading of its source before it is trusted."""
    version = installed if installed is not None else importlib.metadata.version("pysyncobj")
    if version != PATCHED_PYSYNCOBJ:
        raise RuntimeError(
            f"pysyncobj {version} is installed, but Tessera's Raft guards (control_plane/replication/) "
            f"patch the internals of pysyncobj {PATCHED_PYSYNCOBJ} only: install pysyncobj=={PATCHED_PYSYNCOBJ} "
            "(pip install -e . does), or port and re-test the guards before changing the pin")

