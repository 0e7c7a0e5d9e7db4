"""Master's one write pipeline (`decide_entry -> submit -> future of ApplyResult`): every kind of write
reaches the write observers exactly once with its outcome, checks that the master serves once and opens
its spans once; a batch whose shared entry `apply` rejected is committed command by command without a
thread; and a batch of independent commands keeps each command's own trace context (issue 15, 8a)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tessera.control_plane.core import commands as cmd
from tessera.control_plane.core.apply import ApplyResult
from tessera.control_plane.core.context import sequential_ids
from tessera.control_plane.core.errors import Conflict, InvalidRequest, NotLeader
from tessera.control_plane.eventlog import MemoryEventStore
from tessera.control_plane.eventlog.records import EventRow
from tessera.control_plane.replication import LocalReplicator
from tessera.control_plane.runtime.master import Master, MasterIdentity, WriteOutcome
from tessera.control_plane.runtime.statemachine import MasterStateMachine
from tessera.v1 import common_pb2
from tests.support.cluster import wait_for
from tests.support.inprocess import InProcessMaster
from tests.support.scripted import ScriptedAgent, ScriptedFramework

pytestmark = pytest.mark.timeout(60)

TRACE_A, TRACE_B = "a1" * 16, "b2" * 16
PARENT_A = f"00-{TRACE_A}-{'1a' * 8}-01"
PARENT_B = f"00-{TRACE_B}-{'2b' * 8}-01"


class RejectingReplicator(LocalReplicator):
    """The local replicator, except that the next `rejections` entries come back rejected by `apply`
    (as a stale decision would), without being applied."""

    def __init__(self, sm: MasterStateMachine) -> None:
        super().__init__(sm)
        self.rejections = 0

    def submit(self, entry: bytes) -> Future[object]:
        if self.rejections > 0:
            self.rejections -= 1
            done: Future[object] = Future()
            done.set_result(ApplyResult("rejected", (), 0, 0, "Conflict", "stale in flight", ""))
            return done
        return super().submit(entry)


class Node:
    def __init__(self, tracer_provider: Any = None, events: MemoryEventStore | None = None) -> None:
        self.events = events if events is not None else MemoryEventStore()
        self.sm = MasterStateMachine(self.events)
        self.replicator = RejectingReplicator(self.sm)
        self.master = Master(MasterIdentity("m1", "local:0", "127.0.0.1:1"), self.sm, self.replicator, self.events,
                             tracer_provider=tracer_provider, new_id=sequential_ids("w"))
        self.outcomes: list[WriteOutcome] = []
        self.master.add_write_observer(self.outcomes.append)


@pytest.fixture
def node() -> Iterator[Node]:
    n = Node()
    n.master.start()
    assert n.master.wait_serving(10)
    n.outcomes.clear()  # the leader barrier is a write too
    yield n
    n.master.stop()


def weight(role: str, value: float = 2.0) -> cmd.Command:
    return cmd.SetRoleWeight(role=role, weight=value)


class ThreadNotingStore(MemoryEventStore):
    """Notes the thread that hands rows over (`append_rows_later`) and the one that makes them."""

    def __init__(self) -> None:
        super().__init__()
        self.handed_over_on: list[str] = []
        self.made_on: list[str] = []

    def append_rows_later(self, build: Callable[[], Sequence[EventRow]], count: int) -> None:
        self.handed_over_on.append(threading.current_thread().name)

        def noted() -> Sequence[EventRow]:
            self.made_on.append(threading.current_thread().name)
            return build()

        super().append_rows_later(noted, count)


def test_the_applying_thread_hands_the_events_over_and_the_event_log_makes_their_rows() -> None:
    events = ThreadNotingStore()
    node = Node(events=events)
    node.master.start()
    try:
        assert node.master.wait_serving(10)
        node.master.propose([weight("analytics", 3.0)])
        assert events.flush(5.0)
        types = [r.type for r in events.list(limit=100)]
    finally:
        node.master.stop()
    assert events.handed_over_on and events.made_on
    assert not set(events.made_on) & set(events.handed_over_on)  # made off the applying thread
    assert types[-1] == "RoleWeightSet"


def test_each_kind_of_write_reaches_the_observer_exactly_once_with_its_outcome(node: Node) -> None:
    m = node.master
    assert m.propose([weight("a")], request_id="r-1").outcome == "applied"
    assert m.propose([weight("a")], request_id="r-1").outcome == "duplicate"  # answered from the log
    with pytest.raises(InvalidRequest):
        m.propose([weight("bad", -1.0)])
    assert m.submit([weight("b")]).result(5).outcome == "applied"
    wait_for(lambda: len(node.outcomes) == 4, 5, what="the submitted write observed")  # by a callback
    assert m.propose_redeciding([weight("c")]).outcome == "applied"
    # status updates and acknowledgements take this shape: one entry for the commands that pass
    assert m.propose_each_async([weight("d"), weight("bad", -1.0)]).result(5)[0] is None
    got = [(o.commands, o.error.__class__.__name__ if o.error else None, o.result.outcome if o.result else None)
           for o in node.outcomes]
    assert got == [
        ((weight("a"),), None, "applied"),
        ((weight("a"),), None, "duplicate"),
        ((weight("bad", -1.0),), "InvalidRequest", None),
        ((weight("b"),), None, "applied"),
        ((weight("c"),), None, "applied"),
        ((weight("d"), weight("bad", -1.0)), None, "applied"),
    ]
    assert all(o.seconds >= 0 for o in node.outcomes)


def test_a_rejected_write_and_a_write_to_a_master_that_does_not_serve_are_observed_with_their_error(
        node: Node) -> None:
    node.replicator.rejections = 1
    with pytest.raises(Conflict):
        node.master.propose([weight("a")], request_id="r-stale")
    [rejected] = node.outcomes
    assert isinstance(rejected.error, Conflict) and rejected.result is not None and not rejected.result.ok

    idle = Node()  # never started: not the serving leader
    with pytest.raises(NotLeader):
        idle.master.propose([weight("a")])
    with pytest.raises(NotLeader):
        idle.master.propose_each_async([weight("a")])
    assert [type(o.error) for o in idle.outcomes] == [NotLeader]  # the batch never became a write


def test_propose_redeciding_decides_again_through_the_one_path(node: Node) -> None:
    node.replicator.rejections = 2
    assert node.master.propose_redeciding([weight("web")], request_id="op-1").outcome == "applied"
    assert [type(o.error) for o in node.outcomes] == [Conflict, Conflict, type(None)]
    assert [o.request_id for o in node.outcomes][0] == "op-1"
    assert "op-1" not in [o.request_id for o in node.outcomes][1:]


def test_a_rejected_batch_commits_each_command_alone_and_starts_no_thread(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str] = []
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    node.replicator.rejections = 1  # the shared entry only
    outcomes = node.master.propose_each_async([weight("x"), weight("y"), weight("bad", -1.0)]).result(5)
    assert [type(o) for o in outcomes] == [type(None), type(None), InvalidRequest]
    assert node.master.read_state(lambda s: (s.roles["x"].weight, s.roles["y"].weight)) == (2.0, 2.0)
    assert started == []
    # the shared entry, then each of its two commands alone
    assert [(o.commands, type(o.error)) for o in node.outcomes] == [
        ((weight("x"), weight("y"), weight("bad", -1.0)), Conflict),
        ((weight("x"),), type(None)), ((weight("y"),), type(None)),
    ]


def test_the_serving_check_and_the_spans_appear_once_per_write() -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    n = Node(tracer_provider=provider)
    n.master.start()
    try:
        assert n.master.wait_serving(10)
        spans.clear()
        checks: list[int] = []
        real = n.master.serving_term

        def serving_term() -> int:
            checks.append(1)
            return real()

        n.master.serving_term = serving_term  # type: ignore[method-assign]
        n.master.propose([weight("a")], traceparent=PARENT_A)
        assert len(checks) == 1
        names = sorted(s.name for s in spans.get_finished_spans())
        assert names == ["master.propose", "raft.commit"]
        propose = next(s for s in spans.get_finished_spans() if s.name == "master.propose")
        commit = next(s for s in spans.get_finished_spans() if s.name == "raft.commit")
        assert f"{propose.context.trace_id:032x}" == TRACE_A
        assert commit.parent is not None and commit.parent.span_id == propose.context.span_id
        assert commit.attributes is not None and "raft.index" in commit.attributes

        spans.clear()
        with pytest.raises(InvalidRequest):
            n.master.propose([weight("bad", -1.0)], traceparent=PARENT_A)
        [refused] = spans.get_finished_spans()  # refused by decide: nothing was submitted
        assert refused.name == "master.propose" and not refused.status.is_ok
        assert [e.name for e in refused.events] == ["exception"]

        spans.clear()
        checks.clear()
        n.master.propose_each_async([weight("b"), weight("c")], traceparents=[PARENT_A, PARENT_B]).result(5)
        assert len(checks) == 1
        by_trace = sorted((f"{s.context.trace_id:032x}", s.name) for s in spans.get_finished_spans())
        assert by_trace == [(TRACE_A, "master.propose"), (TRACE_A, "raft.commit"),
                            (TRACE_B, "master.propose"), (TRACE_B, "raft.commit")]
    finally:
        n.master.stop()


# ---- 8a: an agent's batch of two tasks' updates keeps each task's trace --------------------------------
def test_a_batch_of_two_tasks_updates_records_each_under_its_own_trace() -> None:
    from tests.unit.api.test_batched_messages import launch_many

    with InProcessMaster() as node:
        assert node.channel is not None
        agent = ScriptedAgent(node.channel, auto_run=False, capabilities=("BATCHED_MESSAGES",)).start()
        fw = ScriptedFramework(node.channel, auto_ack=False).start()
        try:
            assert agent.registered.wait(5)
            wait_for(lambda: fw.offers, 10, what="an offer")
            launch_many(fw, next(iter(fw.offers.values())), ["task-a", "task-b"])
            wait_for(lambda: len(agent.run_tasks()) == 2, 10, what="the RunTasks")
            batch = [agent.status("task-a", common_pb2.TASK_RUNNING), agent.status("task-b", common_pb2.TASK_RUNNING)]
            for update, parent in zip(batch, (PARENT_A, PARENT_B), strict=True):
                update.status.framework_id = fw.framework_id
                update.traceparent = parent
            agent.send_batch(batch)
            wait_for(lambda: {u.status.uuid for u in batch} <= agent.acked, 5, what="acks of the batch")
            assert node.events.flush(5.0)
            traces = {r.task_id: r.trace_id for r in node.events.list(limit=10_000) if r.type == "TaskStatusUpdated"}
            assert traces == {"task-a": TRACE_A, "task-b": TRACE_B}
        finally:
            fw.close()
            agent.close()
