"""One contract (sdk/transport.py) for both transports: the in-memory one of FakeMaster and the gRPC one
(against the same fake served on 127.0.0.1), so the fake a scheduler is tested with behaves like the wire."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tessera.sdk.errors import Conflict, InvalidRequest, NotFound, NotLeader, Unavailable
from tessera.sdk.grpc_transport import GrpcTransport
from tessera.sdk.protocol import (
    AcceptCall,
    CallHeader,
    DeclineCall,
    ErrorEvent,
    MessageEvent,
    OffersEvent,
    ReconcileCall,
    ReviveCall,
    SubscribedEvent,
    UpdateEvent,
)
from tessera.sdk.testing import FakeGrpcServer, FakeMaster
from tessera.sdk.transport import EventStream, StreamEnded, Transport
from tessera.sdk.types import FrameworkInfo, Launch, Resources, TaskInfo, TaskState

pytestmark = pytest.mark.timeout(60)

INFO = FrameworkInfo(name="contract", roles=("default",), failover_timeout=30.0)


@dataclass
class Backend:
    fake: FakeMaster
    transport: Transport
    leader: str
    follower: str
    dead: str


@pytest.fixture(params=["memory", "grpc"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        fake = FakeMaster(["m1:5050", "m2:5050"])
        yield Backend(fake, fake.transport(), "m1:5050", "m2:5050", "m9:5050")
        return
    fake = FakeMaster()
    follower = FakeGrpcServer(fake, leader=False).start()
    leader = FakeGrpcServer(fake, leader=True).start()
    transport = GrpcTransport()
    try:
        yield Backend(fake, transport, leader.address, follower.address, "127.0.0.1:1")
    finally:
        transport.close()
        leader.stop()
        follower.stop()


def next_event(stream: EventStream) -> object:
    event = stream.next(10.0)
    assert event is not None, "no event within 10 s"
    return event


def ended(stream: EventStream) -> StreamEnded:
    with pytest.raises(StreamEnded) as info:
        for _ in range(100):
            stream.next(10.0)
    return info.value


def subscribe(b: Backend) -> tuple[EventStream, SubscribedEvent]:
    stream = b.transport.subscribe(b.leader, INFO)
    first = next_event(stream)
    assert isinstance(first, SubscribedEvent)
    return stream, first


def test_subscribe_starts_with_subscribed_then_waits_quietly(backend: Backend) -> None:
    stream, subscribed = subscribe(backend)
    assert subscribed.framework_id == backend.fake.framework().framework_id
    assert subscribed.stream_id == backend.fake.framework().stream_id
    assert subscribed.master == backend.leader
    assert stream.next(0.05) is None
    stream.cancel()


def test_a_follower_ends_the_stream_with_the_leaders_address(backend: Backend) -> None:
    err = ended(backend.transport.subscribe(backend.follower, INFO)).error
    assert isinstance(err, NotLeader) and err.leader_hint == backend.leader


def test_an_unreachable_master_ends_the_stream_unavailable(backend: Backend) -> None:
    err = ended(backend.transport.subscribe(backend.dead, INFO)).error
    assert isinstance(err, Unavailable) and not isinstance(err, NotLeader)


def test_a_refused_subscription_ends_with_the_domain_error(backend: Backend) -> None:
    unknown = FrameworkInfo(name="x", framework_id="no-such-framework")
    assert isinstance(ended(backend.transport.subscribe(backend.leader, unknown)).error, NotFound)


def test_cancel_ends_the_stream_cleanly_and_for_good(backend: Backend) -> None:
    stream, _ = subscribe(backend)
    stream.cancel()
    stream.cancel()
    assert ended(stream).error is None
    with pytest.raises(StreamEnded):
        stream.next(0.01)
    backend.fake.wait_for(lambda: not backend.fake.framework().connected, what="the fake to see the close")


def test_the_master_breaking_the_stream_is_reported_as_retryable(backend: Backend) -> None:
    stream, _ = subscribe(backend)
    backend.fake.drop_stream()
    assert isinstance(ended(stream).error, Unavailable)


def test_events_arrive_intact(backend: Backend) -> None:
    fake = backend.fake
    agent = fake.add_agent(Resources.parse("cpus:2;mem:1024;ports:[31000-31009]"), hostname="node-1",
                           attributes={"rack": "r1", "zone": "z"})
    stream, sub = subscribe(backend)
    offers = next_event(stream)
    assert isinstance(offers, OffersEvent)
    assert list(offers.offers) == fake.offers()
    (offer,) = offers.offers
    assert offer.ports == ((31000, 31009),) and offer.attributes == {"rack": "r1", "zone": "z"}
    header = CallHeader(sub.framework_id, sub.stream_id, "r1")
    task = TaskInfo(task_id="t1", resources=Resources.of(cpus=1, mem=64, ports=[(31000, 31000)]),
                    command=("python3", "-c", "print(1)"), env={"K": "V"}, labels={"l": "1"},
                    kill_grace_period=2.5)
    backend.transport.call(backend.leader, header, AcceptCall((offer.offer_id,), (Launch((task,)),)), 5.0)
    assert fake.task("t1").info == task.on_agent(agent)
    sent = fake.update("t1", TaskState.TASK_FAILED, message="exit 3", reason="REASON_X", exit_code=3)
    update = next_event(stream)
    while not isinstance(update, UpdateEvent):  # the leftover resources may be offered first
        update = next_event(stream)
    assert update.status == sent
    fake.send_message(sub.framework_id, agent, b"\x00bytes")
    message = next_event(stream)
    while not isinstance(message, MessageEvent):
        message = next_event(stream)
    assert message == MessageEvent(agent, b"\x00bytes")
    stream.cancel()


def test_an_error_event_is_delivered_before_the_end(backend: Backend) -> None:
    stream, sub = subscribe(backend)
    backend.fake.remove_framework(sub.framework_id, "bye")
    assert next_event(stream) == ErrorEvent("bye")
    assert ended(stream).error is None


def test_calls_return_results_and_map_errors(backend: Backend) -> None:
    stream, sub = subscribe(backend)
    header = CallHeader(sub.framework_id, sub.stream_id, "")
    t = backend.transport
    statuses = t.call(backend.leader, header, ReconcileCall(("ghost",)), 5.0)
    assert [(s.task_id, s.state, s.uuid) for s in statuses] == [("ghost", TaskState.TASK_LOST, "")]
    assert t.call(backend.leader, header, ReviveCall(), 5.0) == ()
    with pytest.raises(NotFound):
        t.call(backend.leader, header, DeclineCall(("no-such-offer",)), 5.0)
    with pytest.raises(InvalidRequest):
        t.call(backend.leader, header, DeclineCall(()), 5.0)
    with pytest.raises(Conflict):
        t.call(backend.leader, CallHeader(sub.framework_id, "old-stream", ""), ReviveCall(), 5.0)
    with pytest.raises(NotLeader) as info:
        t.call(backend.follower, header, ReviveCall(), 5.0)
    assert info.value.leader_hint == backend.leader
    with pytest.raises(Unavailable):
        t.call(backend.dead, header, ReviveCall(), 2.0)
    stream.cancel()
