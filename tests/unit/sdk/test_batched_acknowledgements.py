"""The blocking driver's batched acknowledgements (BATCHED_ACKNOWLEDGEMENTS) and the batched-message
conversions: acknowledgements that wait while a call is under way go out together, in order; a master
that does not offer the capability, or a driver told not to, gets one call per update."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from sdk import FrameworkInfo, Resources, SchedulerDriver, TaskInfo, TaskState
from sdk._convert import call_from_proto, call_to_proto, event_from_proto, event_to_proto, events_from_proto
from sdk.protocol import (
    BATCHED_ACKNOWLEDGEMENTS,
    AcknowledgeCall,
    AcknowledgeManyCall,
    CallHeader,
    SubscribedEvent,
    UpdateEvent,
)
from sdk.testing import FakeMaster, FakeTransport, runs_and_finishes
from sdk.types import TaskStatus
from tessera.v1 import scheduler_pb2
from tests.unit.sdk.harness import Recorder, SyncRecording

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


def run_five_tasks(fake: FakeMaster, transport: FakeTransport, **options: Any) -> tuple[Recorder, SchedulerDriver]:
    fake.add_agent("cpus:1;mem:256")
    rec = Recorder()
    driver = SchedulerDriver(SyncRecording(rec), FrameworkInfo(name="acks"), fake.addresses, transport=transport,
                             call_timeout=30.0, **options)
    driver.start()
    offer = rec.wait_for(rec.offers, "an offer")[0]
    driver.launch(offer, [TaskInfo(task_id=f"t{i}", resources=SMALL, command="true") for i in range(5)])
    rec.wait_for(lambda: len(rec.statuses()) == 15, "15 updates delivered")
    return rec, driver


def ack_calls(fake: FakeMaster) -> list[Any]:
    return [c for _, _, c in fake.calls if isinstance(c, (AcknowledgeCall, AcknowledgeManyCall))]


def test_acknowledgements_waiting_behind_a_call_go_out_together_and_in_order() -> None:
    fake = FakeMaster(behaviour=runs_and_finishes)
    transport = GatedTransport(fake)
    rec, driver = run_five_tasks(fake, transport)
    transport.gate.set()
    fake.wait_for(lambda: len(fake.acknowledged) == 15, what="15 acknowledgements")
    driver.stop()
    assert fake.acknowledged == [s.uuid for s in rec.statuses()]
    calls = ack_calls(fake)
    assert any(isinstance(c, AcknowledgeManyCall) for c in calls) and len(calls) < 15
    assert all(s.state in (TaskState.TASK_STARTING, TaskState.TASK_RUNNING, TaskState.TASK_FINISHED)
               for s in rec.statuses())


@pytest.mark.parametrize("who", ["master", "driver"])
def test_one_call_per_update_without_the_capability_or_when_turned_off(who: str) -> None:
    fake = FakeMaster(behaviour=runs_and_finishes, batched_acknowledgements=who != "master")
    transport = GatedTransport(fake)
    options = {"batch_acknowledgements": False} if who == "driver" else {}
    rec, driver = run_five_tasks(fake, transport, **options)
    transport.gate.set()
    fake.wait_for(lambda: len(fake.acknowledged) == 15, what="15 acknowledgements")
    driver.stop()
    assert sorted(fake.acknowledged) == sorted(s.uuid for s in rec.statuses())
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
