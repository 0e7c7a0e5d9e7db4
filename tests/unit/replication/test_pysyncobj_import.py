"""Importing pysyncobj must not break the socket module for the rest of the process: its Windows shim
(pysyncobj/win_inet_pton.py) replaces socket.inet_ntop on every OS, and the replication layer puts the
real one back (psutil's connection listing, used by the fault suite's Raft proxy, raised TypeError)."""

from __future__ import annotations

import socket


def test_socket_inet_ntop_works_after_the_replicator_and_pysyncobj_are_imported() -> None:
    import pysyncobj.tcp_connection  # noqa: F401 - the module that installs the shim

    import tessera.control_plane.replication.pysyncobj_release  # noqa: F401

    assert socket.inet_ntop(socket.AF_INET, bytes([127, 0, 0, 1])) == "127.0.0.1"
    assert socket.inet_ntop(socket.AF_INET6, bytes(15) + b"\x01") == "::1"


def test_the_installed_pysyncobj_is_the_release_the_raft_guards_patch() -> None:
    from tessera.control_plane.replication.pysyncobj_release import check_pysyncobj_version

    check_pysyncobj_version()  # raises, naming both versions and the fix, on any other release


def test_another_pysyncobj_release_is_refused_naming_both_versions() -> None:
    import pytest

    from tessera.control_plane.replication.pysyncobj_release import PATCHED_PYSYNCOBJ, check_pysyncobj_version

    with pytest.raises(RuntimeError, match=r"pysyncobj 0\.3\.18 is installed") as refused:
        check_pysyncobj_version("0.3.18")
    assert f"pysyncobj=={PATCHED_PYSYNCOBJ}" in str(refused.value)
