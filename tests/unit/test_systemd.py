"""The sd_notify protocol as systemd reads it: one datagram of KEY=VALUE lines to NOTIFY_SOCKET (a path or
an abstract `@name`), the variable taken out of the environment, status lines only when they change, and
no error ever raised at the service."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.control_plane.systemd import Notifier, notify_address
from tests.support.notify import notify_socket


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    with notify_socket(timeout=5) as bound:
        yield bound


def test_ready_status_and_stopping_reach_the_socket_and_the_variable_leaves_the_environment(
        listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "OTHER": "x"}
    notifier = Notifier(env)
    assert env == {"OTHER": "x"} and notifier.enabled
    assert notifier.ready("follower of m1")
    assert sock.recv(4096) == b"READY=1\nSTATUS=follower of m1"
    assert not notifier.status("follower of m1")  # unchanged: nothing sent
    assert notifier.status("leader in\nterm 3")
    assert sock.recv(4096) == b"STATUS=leader in term 3"  # one line: a newline would start another key
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


def test_an_abstract_socket_name_is_written_with_an_at_sign() -> None:
    name = f"tessera-test-{os.getpid()}-{os.urandom(4).hex()}"
    assert notify_address("@" + name) == "\0" + name
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready("serving")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"


def test_without_systemd_every_call_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x") and not notifier.status("y") and not notifier.stopping()
    assert notify_address("") is None and notify_address("vsock:2:1234") is None


def test_a_socket_that_is_gone_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing")})
    assert not notifier.ready("x")
    assert not notifier.status("y")
    assert [r.levelname for r in caplog.records if "cannot notify systemd" in r.message] == ["WARNING"]
