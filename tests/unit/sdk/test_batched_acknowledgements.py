"""Both drivers' batched acknowledgements (BATCHED_ACKNOWLEDGEMENTS) and the batched-message
conversions: acknowledgements that wait while a call is under way go out together, in order; a master
that does not offer the capability, or a driver told not to, gets one call per update."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tessera.sdk import FrameworkInfo, Resources, TaskInfo, TaskState
from tessera.sdk._convert import (
    call_from_proto,
    call_to_proto,
    event_from_proto,
    event_to_proto,
    events_from_proto,
)
from tessera.sdk.protocol import (
    BATCHED_ACKNOWLEDGEMENTS,
    AcknowledgeCall,
    AcknowledgeManyCall,
    CallHeader,
    SubscribedEvent,
    UpdateEvent,
)
from tessera.sdk.testing import FakeMaster, FakeTransport, runs_and_finishes
from tessera.sdk.types import TaskStatus
from tessera.v1 import scheduler_pb2
from tests.unit.sdk.harness import AsyncHarness, Harness, SyncHarness

pytestmark = pytest.mark.timeout(60)

SMALL = Resources.of(cpus=0.1, mem=16)


class GatedTransport(FakeTransport):
    """Holds the first acknowledgement call until `gate` is set, so the others wait meanwhile."""

    def __init__(self, master: FakeMaster) -> None:
        super().__init__(master)
        self.gate = threading.Event()

    def call(self, address: str, header: CallHeader, call: Any, timeout: float) -> Any:
        if isinstance(call, (AcknowledgeCall, AcknowledgeManyCall)):
            assert self.gate.wait(30), "the test never opened the gate"
        return super().call(address, header, call, timeout)


@pytest.fixture(params=["sync", "async"])
def make(request: pytest.FixtureRequest) -> Iterator[Any]:
    made: list[Harness] = []

    def factory(fake: FakeMaster, **options: Any) -> Harness:
        cls = SyncHarness if request.param == "sync" else AsyncHarness
        h = cls(fake, FrameworkInfo(name="acks"), **options)
        made.append(h)
        return h

    yield factory
    for h in made:
        try:
            h.stop()
        finally:
            if isinstance(h, AsyncHarness):
                h.close()


def run_five_tasks(h: Harness) -> None:
    assert h.fake is not None
    h.fake.add_agent("cpus:1;mem:256")
    h.start()
    offer = h.rec.wait_for(h.rec.offers, "an offer")[0]
    h.call("launch", offer, [TaskInfo(task_id=f"t{i}", resources=SMALL, command="true") for i in range(5)])
    h.rec.wait_for(lambda: len(h.rec.statuses()) == 15, "15 updates delivered")


def ack_calls(fake: FakeMaster) -> list[Any]:
    return [c for _, _, c in fake.calls if isinstance(c, (AcknowledgeCall, AcknowledgeManyCall))]


def test_acknowledgements_waiting_behind_a_call_go_out_together_and_in_order(make: Any) -> None:
    fake = FakeMaster(behaviour=runs_and_finishes)
    transport = GatedTransport(fake)
    h = make(fake, transport=transport)
    run_five_tasks(h)
    transport.gate.set()
    fake.wait_for(lambda: len(fake.acknowledged) == 15, what="15 acknowledgements")
    assert fake.acknowledged == [s.uuid for s in h.rec.statuses()]
    calls = ack_calls(fake)
    assert any(isinstance(c, AcknowledgeManyCall) for c in calls) and len(calls) < 15
    assert all(s.state in (TaskState.TASK_STARTING, TaskState.TASK_RUNNING, TaskState.TASK_FINISHED)
               for s in h.rec.statuses())


@pytest.mark.parametrize("who", ["master", "driver"])
def test_one_call_per_update_without_the_capability_or_when_turned_off(make: Any, who: str) -> None:
    fake = FakeMaster(behaviour=runs_and_finishes, batched_acknowledgements=who != "master")
    options = {"batch_acknowledgements": False} if who == "driver" else {}
    h = make(fake, **options)
    run_five_tasks(h)
    fake.wait_for(lambda: len(fake.acknowledged) == 15, what="15 acknowledgements")
    assert sorted(fake.acknowledged) == sorted(s.uuid for s in h.rec.statuses())
    assert all(isinstance(c, AcknowledgeCall) for c in ack_calls(fake)) and len(ack_calls(fake)) == 15


def test_batched_messages_convert_both_ways() -> None:
    header = CallHeader("fw-1", "stream-1", "req-1")
    call = AcknowledgeManyCall((AcknowledgeCall("t1", "a1", "u1"), AcknowledgeCall("t2", "a1", "u2")))
    method, request = call_to_proto(header, call)
    assert method == "Acknowledge" and isinstance(request, scheduler_pb2.AcknowledgeRequest)
    assert request.task_id == "" and [u.uuid for u in request.updates] == ["u1", "u2"]
    assert call_from_proto(request) == (header, call)
    subscribed = SubscribedEvent("fw-1", "stream-1", 5.0, "m:1", (BATCHED_ACKNOWLEDGEMENTS,))
    assert event_from_proto(event_to_proto(subscribed)) == subscribed
    statuses = [TaskStatus(task_id=f"t{i}", state=TaskState.TASK_RUNNING, uuid=f"u{i}") for i in range(3)]
    batch = scheduler_pb2.SchedulerEvent(updates=scheduler_pb2.Updates(updates=[
        event_to_proto(UpdateEvent(s)).update for s in statuses]))
    assert events_from_proto(batch) == [UpdateEvent(s) for s in statuses]
    assert event_from_proto(batch) is None  # what an SDK without `events_from_proto` would skip
