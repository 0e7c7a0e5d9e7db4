"""One contract for FakeMaster and the real master (in process, its Scheduler service on 127.0.0.1, a
scripted agent): the refusals a scheduler can meet come back as the same error classes, and reconciling
an unknown task answers the same TASK_LOST. The framework's key/value state and its lease answer alike
too (compare-and-set, size limits, a deposed instance refused, a standby taking over), checked through
both transports. FakeMaster keeps its own copy of `decide`'s accept rules
(tessera.sdk.testing.protocol); this suite is what keeps the copy honest."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TypeVar

import pytest

from tessera.control_plane.core.limits import MAX_STATE_KEY_LENGTH, MAX_STATE_VALUE_LENGTH, MAX_STATE_WRITES
from tessera.sdk import (
    ABSENT,
    Conflict,
    Deposed,
    FrameworkInfo,
    InvalidRequest,
    KvDelete,
    KvEntry,
    KvPut,
    NotFound,
    Offer,
    Resources,
    TaskInfo,
    TaskState,
    VersionConflict,
)
from tessera.sdk.grpc_transport import GrpcTransport
from tessera.sdk.protocol import (
    CallHeader,
    ErrorEvent,
    GetValueCall,
    HeartbeatEvent,
    KvPage,
    LeaseClaim,
    ListValuesCall,
    OffersEvent,
    StandbyEvent,
    SubscribedEvent,
    WriteValuesCall,
)
from tessera.sdk.testing import FakeGrpcServer, FakeMaster
from tessera.sdk.transport import EventStream, StreamEnded, Transport
from tessera.sdk.types import KvWrite
from tests.support.inprocess import InProcessMaster
from tests.support.scripted import ScriptedAgent
from tests.unit.sdk.harness import SyncHarness

pytestmark = pytest.mark.timeout(60)
T = TypeVar("T")

SMALL = Resources.of(cpus=0.5, mem=64)
AGENT = "cpus:2;mem:1024"


@pytest.fixture(params=["fake", "master"])
def harness(request: pytest.FixtureRequest) -> Iterator[SyncHarness]:
    if request.param == "fake":
        fake = FakeMaster()
        fake.add_agent(AGENT)
        h = SyncHarness(fake, FrameworkInfo(name="contract"))
        yield h.start()
        h.stop()
        return
    with InProcessMaster() as m:
        assert m.channel is not None
        agent = ScriptedAgent(m.channel, resources=AGENT).start()
        assert agent.registered.wait(10)
        h = SyncHarness(None, FrameworkInfo(name="contract"), masters=[m.grpc_address])
        try:
            yield h.start()
            h.stop()
        finally:
            agent.close()


def an_offer(h: SyncHarness, seen: int = 0) -> Offer:
    return h.rec.wait_for(lambda: h.rec.offers()[seen:], "an offer")[0]


def task(task_id: str, resources: Resources = SMALL, **kw: object) -> TaskInfo:
    return TaskInfo(task_id=task_id, resources=resources, command="true", **kw)  # type: ignore[arg-type]


def reuse_a_task_id(h: SyncHarness) -> None:
    h.call("launch", an_offer(h), [task("t1")])
    h.rec.wait_for(lambda: [s for s in h.rec.statuses("t1") if s.is_terminal] or h.rec.offers()[1:],
                   "the task to end or another offer")
    h.call("revive")
    h.call("launch", an_offer(h, 1), [task("t1")])


CASES: dict[str, tuple[Callable[[SyncHarness], object], type[Exception]]] = {
    "a task id used before": (reuse_a_task_id, Conflict),
    "one id twice in a launch": (lambda h: h.call("launch", an_offer(h), [task("d"), task("d")]), Conflict),
    "a task that does not fit": (lambda h: h.call("launch", an_offer(h), [task("big", Resources.of(cpus=64))]),
                                 Conflict),
    "an unknown offer": (lambda h: an_offer(h) and h.call("launch", "no-such-offer", [task("u")]), NotFound),
    "an offer used already": (lambda h: _use_then(h, lambda o: h.call("decline", o)), Conflict),
    "another agent's task": (lambda h: h.call("launch", an_offer(h), [task("w", agent_id="elsewhere")]),
                             InvalidRequest),
    "killing an unknown task": (lambda h: an_offer(h) and h.call("kill", "nobody"), NotFound),
}


def _use_then(h: SyncHarness, then: Callable[[Offer], object]) -> object:
    offer = an_offer(h)
    h.call("launch", offer, [task("first")])
    return then(offer)


@pytest.mark.parametrize("case", sorted(CASES))
def test_refusals_are_the_same_error_class(harness: SyncHarness, case: str) -> None:
    act, error = CASES[case]
    with pytest.raises(error):
        act(harness)


def test_reconciling_an_unknown_task_answers_lost_for_reconciliation(harness: SyncHarness) -> None:
    an_offer(harness)
    (status,) = harness.call("reconcile", ["never-launched"])
    assert (status.task_id, status.state, status.reason) == ("never-launched", TaskState.TASK_LOST,
                                                             "REASON_RECONCILIATION")


# ---- the framework's key/value state and its lease -------------------------------------------------------------
# Raw subscriptions and calls through a transport (the in-memory one of the fake; gRPC to the fake served on
# 127.0.0.1; gRPC to the real master), so a test can keep a deposed instance's stream id and call with it.

@dataclass
class Backend:
    transport: Transport
    address: str
    pass_takeover_delay: Callable[[str], None]  # the fake's clock moves on `advance`; the master's is real


@pytest.fixture(params=["fake", "fake-grpc", "master"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "master":
        with InProcessMaster() as m:
            transport = GrpcTransport()
            try:
                yield Backend(transport, m.grpc_address, lambda framework_id: None)
            finally:
                transport.close()
        return
    fake = FakeMaster()

    def pass_takeover_delay(framework_id: str) -> None:
        # once the fake saw the stream end (over gRPC the cancel reaches it a little later)
        fake.wait_for(lambda: not fake.framework(framework_id).connected, what="the active stream to end")
        fake.advance(fake.takeover_delay)

    if request.param == "fake":
        yield Backend(fake.transport(), fake.leader, pass_takeover_delay)
        return
    with FakeGrpcServer(fake) as server:
        transport = GrpcTransport()
        try:
            yield Backend(transport, server.address, pass_takeover_delay)
        finally:
            transport.close()


LEASED = FrameworkInfo(name="leased", failover_timeout=60.0)


def next_event(stream: EventStream, kind: type[T]) -> T:
    """The next event of `kind` (heartbeats skipped), within 10 s."""
    for _ in range(100):
        event = stream.next(10.0)
        assert event is not None, f"no {kind.__name__} within 10 s"
        if isinstance(event, kind):
            return event
        assert isinstance(event, (HeartbeatEvent, OffersEvent)), f"expected {kind.__name__}, got {event!r}"
    raise AssertionError(f"no {kind.__name__}")


_WRITES = itertools.count(1)


def write(b: Backend, sub: SubscribedEvent, *writes: KvWrite, request_id: str = "") -> tuple[int, ...]:
    # a new request id per write unless one is given: the master answers a repeated id as a retry (an id()
    # of the writes tuple was reused by the next tuple, and a new write was answered as the old one)
    header = CallHeader(sub.framework_id, sub.stream_id, request_id or f"write-{next(_WRITES)}")
    return b.transport.call(b.address, header, WriteValuesCall(writes), 10.0)  # type: ignore[return-value]


def read(b: Backend, sub: SubscribedEvent, call: GetValueCall | ListValuesCall) -> object:
    return b.transport.call(b.address, CallHeader(sub.framework_id, sub.stream_id, ""), call, 10.0)


def test_state_puts_compare_versions_and_reads_answer_the_writes(backend: Backend) -> None:
    sub = next_event(backend.transport.subscribe(backend.address, LEASED), SubscribedEvent)
    (v1,) = write(backend, sub, KvPut("apps/web", '{"instances": 2}', ABSENT))
    assert read(backend, sub, GetValueCall("apps/web")) == (KvEntry("apps/web", '{"instances": 2}', v1),)
    with pytest.raises(VersionConflict) as again:
        write(backend, sub, KvPut("apps/web", "x", ABSENT))
    assert again.value.current_version == v1
    v2, v3, _ = write(backend, sub, KvPut("apps/web", '{"instances": 3}', v1), KvPut("apps/db", "db"),
                      KvPut("deploy/1", "d"))
    assert v1 < v2 < v3
    with pytest.raises(VersionConflict) as stale:
        write(backend, sub, KvPut("apps/web", "x", v1), KvPut("apps/new", "never written"))
    assert stale.value.current_version == v2
    page = read(backend, sub, ListValuesCall("apps/"))
    assert isinstance(page, KvPage) and not page.more
    assert [(e.key, e.version) for e in page.entries] == [("apps/db", v3), ("apps/web", v2)]
    assert write(backend, sub, KvDelete("apps/db", v3), KvDelete("never-there")) == (0, 0)
    assert read(backend, sub, GetValueCall("apps/db")) == ()


def test_a_retried_write_is_applied_once_and_answers_the_same_versions(backend: Backend) -> None:
    sub = next_event(backend.transport.subscribe(backend.address, LEASED), SubscribedEvent)
    first = write(backend, sub, KvPut("k", "v", ABSENT), request_id="write-once")
    assert write(backend, sub, KvPut("k", "v", ABSENT), request_id="write-once") == first


@pytest.mark.parametrize(("writes", "limit"), [
    ((KvPut("k", "x" * (MAX_STATE_VALUE_LENGTH + 1)),), "MAX_STATE_VALUE_LENGTH"),
    ((KvPut("k" * (MAX_STATE_KEY_LENGTH + 1), "v"),), "MAX_STATE_KEY_LENGTH"),
    (tuple(KvPut(f"k{n}", "v") for n in range(MAX_STATE_WRITES + 1)), "MAX_STATE_WRITES"),
])
def test_a_write_over_a_size_limit_is_invalid_naming_the_limit_and_writes_nothing(
        backend: Backend, writes: tuple[KvWrite, ...], limit: str) -> None:
    sub = next_event(backend.transport.subscribe(backend.address, LEASED), SubscribedEvent)
    with pytest.raises(InvalidRequest, match=limit):
        write(backend, sub, KvPut("first", "would be written"), *writes)
    assert read(backend, sub, GetValueCall("first")) == ()


def test_writes_need_the_writers_stream(backend: Backend) -> None:
    sub = next_event(backend.transport.subscribe(backend.address, LEASED), SubscribedEvent)
    with pytest.raises(InvalidRequest, match="stream"):
        write(backend, SubscribedEvent(sub.framework_id, ""), KvPut("k", "v"))


def test_a_deposed_instance_is_told_and_its_calls_are_refused_naming_the_lease_term(backend: Backend) -> None:
    first_stream = backend.transport.subscribe(backend.address, LEASED)
    first = next_event(first_stream, SubscribedEvent)
    assert first.lease_term == 1
    write(backend, first, KvPut("k", "from the first instance"))
    again = backend.transport.subscribe(backend.address, replace(LEASED, framework_id=first.framework_id))
    second = next_event(again, SubscribedEvent)  # a new instance takes the framework over (Mesos failover)
    assert second.lease_term == 2
    assert next_event(first_stream, ErrorEvent).lease_term == 2
    with pytest.raises(Deposed, match="term 2") as refused:
        write(backend, first, KvPut("k", "from the deposed instance"))
    assert refused.value.lease_term == 2
    assert read(backend, second, GetValueCall("k"))[0].value == "from the first instance"  # type: ignore[index]
    holder = backend.transport.subscribe(backend.address, replace(LEASED, framework_id=first.framework_id),
                                         lease=LeaseClaim(term=1))
    assert isinstance(ended(holder), Deposed)


def test_a_standby_waits_and_takes_over_with_the_next_term_when_the_active_instance_is_gone(backend: Backend) -> None:
    active_stream = backend.transport.subscribe(backend.address, LEASED, lease=LeaseClaim(standby=True))
    active = next_event(active_stream, SubscribedEvent)
    write(backend, active, KvPut("k", "kept"))
    standby_stream = backend.transport.subscribe(backend.address, LEASED, lease=LeaseClaim(standby=True))
    waiting = next_event(standby_stream, StandbyEvent)
    assert (waiting.framework_id, waiting.lease_term) == (active.framework_id, 1)
    active_stream.cancel()  # the active instance is gone
    backend.pass_takeover_delay(active.framework_id)
    took = next_event(standby_stream, SubscribedEvent)
    assert (took.framework_id, took.lease_term) == (active.framework_id, 2)
    assert read(backend, took, GetValueCall("k"))[0].value == "kept"  # type: ignore[index]
    with pytest.raises(Deposed):
        write(backend, active, KvPut("k", "late"))


def test_the_holder_resumes_its_own_term(backend: Backend) -> None:
    stream = backend.transport.subscribe(backend.address, LEASED, lease=LeaseClaim(standby=True))
    first = next_event(stream, SubscribedEvent)
    stream.cancel()
    back = backend.transport.subscribe(backend.address, replace(LEASED, framework_id=first.framework_id),
                                       lease=LeaseClaim(standby=True, term=1))
    resumed = next_event(back, SubscribedEvent)
    assert (resumed.framework_id, resumed.lease_term) == (first.framework_id, 1)


def test_claims_refused_before_the_lease_table_are_refused_alike(backend: Backend) -> None:
    # the one decision of a claim (core.leases.settle_claim) on the master's records and on the fake's
    stream = backend.transport.subscribe(backend.address, LEASED, lease=LeaseClaim(standby=True))
    first = next_event(stream, SubscribedEvent)
    refusals: list[tuple[FrameworkInfo, LeaseClaim, type[Exception]]] = [
        (replace(LEASED, framework_id="no-such-framework"), LeaseClaim(), NotFound),
        (replace(LEASED, framework_id=first.framework_id, principal="someone-else"), LeaseClaim(), Conflict),
        (replace(LEASED, name="renamed", framework_id=first.framework_id), LeaseClaim(standby=True), InvalidRequest),
        (LEASED, LeaseClaim(term=1), InvalidRequest),
    ]
    for info, lease, error in refusals:
        got = ended(backend.transport.subscribe(backend.address, info, lease=lease))
        assert isinstance(got, error), (info, lease, got)


def ended(stream: EventStream) -> BaseException | None:
    for _ in range(100):
        try:
            stream.next(10.0)
        except StreamEnded as end:
            return end.error
    raise AssertionError("the stream did not end")
