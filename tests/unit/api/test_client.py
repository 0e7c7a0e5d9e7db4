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


# ---- which master, and when: the shared DialPlan, on a fake clock ------------------------------------------


class FakeTime:
    """A clock that only `sleep` moves (no threads, no real time)."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class _Hinted(_Failed):
    def __init__(self, hint: str) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, "not the leader")
        self._hint = hint

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        return (("tessera-leader", self._hint),)


def scripted(client: MasterClient, clock: FakeTime, answer: Any, limit: int = 40) -> list[tuple[str, float]]:
    """Call through `client`; `answer(address)` raises or returns. Returns the (address, time) of each attempt."""
    attempts: list[tuple[str, float]] = []

    def call(stub: Any) -> Any:
        def attempt(request: object, timeout: float, metadata: object) -> object:
            address = current[0]
            attempts.append((address, round(clock.now, 3)))
            if len(attempts) > limit:
                raise AssertionError(f"more than {limit} attempts: {attempts}")
            return answer(address)
        return attempt

    current = [""]
    real_operator = client.operator

    def operator(address: str) -> Any:
        current[0] = address
        return real_operator(address)

    client.operator = operator  # type: ignore[method-assign]  # to see which master each attempt went to
    try:
        client.call(call, object())
    except NoMasterAvailable:
        pass
    finally:
        client.close()
    return attempts


def make_client(addresses: list[str], clock: FakeTime, timeout: float = 10.0) -> MasterClient:
    return MasterClient(addresses, timeout=timeout, rpc_timeout=1.0, monotonic=clock.monotonic, sleep=clock.sleep,
                        random=lambda: 0.0)


def test_masters_that_refuse_are_walked_with_a_wait_before_each_that_grows_once_per_round() -> None:
    clock = FakeTime()

    def refuse(address: str) -> None:
        raise _Failed(grpc.StatusCode.UNAVAILABLE, "connection refused")

    attempts = scripted(make_client(["m1:1", "m2:1", "m3:1"], clock, timeout=1.0), clock, refuse)
    # the wait comes before each next master (it used to come only after a whole round, none between)
    assert attempts[:7] == [("m1:1", 0.0), ("m2:1", 0.1), ("m3:1", 0.2), ("m1:1", 0.3), ("m2:1", 0.5),
                            ("m3:1", 0.7), ("m1:1", 0.9)]


def test_two_masters_naming_each_other_as_leader_do_not_make_the_client_spin() -> None:
    clock = FakeTime()
    other = {"m1:1": "m2:1", "m2:1": "m1:1"}

    def stale_hint(address: str) -> None:
        raise _Hinted(other[address])

    attempts = scripted(make_client(["m1:1", "m2:1"], clock, timeout=1.0), clock, stale_hint)
    # every other attempt waits, and the waits grow (it used to hop at once, without end, until the
    # deadline: this test then stops at its attempt limit)
    assert attempts[:6] == [("m1:1", 0.0), ("m2:1", 0.0), ("m1:1", 0.1), ("m2:1", 0.1), ("m1:1", 0.3),
                            ("m2:1", 0.3)]
    assert clock.now >= 1.0


def test_a_call_follows_a_hint_at_once_and_the_next_call_starts_at_the_master_that_answered() -> None:
    clock = FakeTime()
    client = make_client(["m1:1", "m2:1", "m3:1"], clock)

    def leader_is_m3(address: str) -> str:
        if address != "m3:1":
            raise _Hinted("m3:1")
        return "ok"

    assert scripted(client, clock, leader_is_m3) == [("m1:1", 0.0), ("m3:1", 0.0)]
    assert scripted(client, clock, leader_is_m3) == [("m3:1", 0.0)]


# ---- a cluster that is not there -----------------------------------------------------------------------------


def test_a_port_nothing_listens_on_is_a_refused_connection_to_grpc_too() -> None:
    from tessera.v1 import operator_pb2
    from tests.support.cluster import free_ports

    addresses = [f"127.0.0.1:{p}" for p in free_ports(2)]
    client = MasterClient(addresses, timeout=10.0, rpc_timeout=2.0, refused_grace=0.2)
    try:
        with pytest.raises(NoMasterAvailable) as caught:
            client.call(lambda s: s.GetQuorum, operator_pb2.GetQuorumRequest())
    finally:
        client.close()
    error = caught.value
    assert error.refused and error.addresses == addresses and "connection refused" in error.last_error


def test_masters_refusing_the_connection_fail_after_the_refused_grace_not_the_timeout() -> None:
    clock = FakeTime()

    def refuse(stub: Any) -> Any:
        def call(request: object, timeout: float, metadata: object) -> None:
            raise _Failed(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: "
                          "ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused")
        return call

    client = MasterClient(["127.0.0.1:1", "127.0.0.1:2"], timeout=10.0, refused_grace=1.0,
                          monotonic=clock.monotonic, sleep=clock.sleep, random=lambda: 0.0)
    error = no_master(client, refuse)
    assert error.refused and 1.0 <= clock.now < 2.0  # the grace, plus at most one backoff wait
    clock.now = 0.0
    patient = MasterClient(["127.0.0.1:1"], timeout=3.0, monotonic=clock.monotonic, sleep=clock.sleep,
                           random=lambda: 0.0)  # without a grace: until the timeout, as before
    assert not no_master(patient, refuse).refused and clock.now >= 3.0


def test_a_master_that_answers_keeps_the_call_going_past_the_refused_grace() -> None:
    clock = FakeTime()
    answers = {"127.0.0.1:1": "connection refused", "127.0.0.1:2": "not the leader; no leader elected yet"}

    def method(stub: Any) -> Any:
        def call(request: object, timeout: float, metadata: object) -> None:
            raise _Failed(grpc.StatusCode.UNAVAILABLE, answers[stub])
        return call

    client = MasterClient(list(answers), timeout=5.0, refused_grace=0.5, monotonic=clock.monotonic,
                          sleep=clock.sleep, random=lambda: 0.0)
    client.operator = lambda address: address  # type: ignore[method-assign,assignment,return-value]
    error = no_master(client, method)
    assert not error.refused and clock.now >= 5.0  # it waited for the master that exists
