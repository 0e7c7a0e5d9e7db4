"""The leader-following client: what it reports when no master answers."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

from tessera.control_plane.api.client import MasterClient, NoMasterAvailable

pytestmark = pytest.mark.timeout(30)


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[()]:
        return ()


def no_master(client: MasterClient, method: Any) -> NoMasterAvailable:
    """What `client.call(method, ...)` raises once the deadline has passed (the client is closed)."""
    try:
        with pytest.raises(NoMasterAvailable) as caught:
            client.call(method, object())
    finally:
        client.close()
    return caught.value


def test_an_attempt_cut_short_by_the_deadline_does_not_hide_the_error_before_it() -> None:
    # A master whose handshake fails: refused at once while an attempt has its full rpc_timeout, but an
    # attempt left with less than the handshake needs only runs out of time.
    codes: list[grpc.StatusCode] = []

    def refusing(stub: Any) -> Any:
        def call(request: object, timeout: float, metadata: object) -> None:
            if timeout < client.rpc_timeout:
                time.sleep(timeout)
                codes.append(grpc.StatusCode.DEADLINE_EXCEEDED)
                raise _Failed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            codes.append(grpc.StatusCode.UNAVAILABLE)
            raise _Failed(grpc.StatusCode.UNAVAILABLE, "failed to connect: handshake failed")
        return call

    client = MasterClient(["127.0.0.1:1"], timeout=1.2, rpc_timeout=1.0)
    error = no_master(client, refusing)
    assert codes[0] == grpc.StatusCode.UNAVAILABLE and codes[-1] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.last_error == "127.0.0.1:1: UNAVAILABLE failed to connect: handshake failed"


def test_a_deadline_is_reported_when_it_is_all_there_was() -> None:
    def slow(stub: Any) -> Any:
        def call(request: object, timeout: float, metadata: object) -> None:
            time.sleep(timeout)
            raise _Failed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        return call

    error = no_master(MasterClient(["127.0.0.1:1"], timeout=0.3, rpc_timeout=1.0), slow)
    assert "DEADLINE_EXCEEDED" in error.last_error
