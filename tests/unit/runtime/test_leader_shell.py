"""The threaded shell around the duties (`LeaderDuties`): what the pure functions decide reaches the
right stream in order, as protobuf, coalesced where the stream understands batches; and the shell runs
the same `duties` functions as the simulation (no copy of its own)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tessera.control_plane.core import commands as c
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import AgentInfo, Offer, TaskInfo, TaskState, TaskStatus
from tessera.control_plane.runtime import duties, leader
from tessera.control_plane.runtime.duties import MAX_PER_MESSAGE
from tests.support.cluster import wait_for
from tests.support.inprocess import InProcessMaster

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def node() -> Iterator[InProcessMaster]:
    with InProcessMaster() as m:
        yield m


def test_reactions_keep_each_streams_order_and_split_big_batches(node: InProcessMaster) -> None:
    def messages(agent_id: str) -> list[duties.ToAgent]:
        def run(task_id: str) -> duties.RunTask:
            return duties.RunTask(agent_id, 7, TaskInfo(task_id=task_id, name=task_id), traceparent="00-x",
                                  principal="alice")

        kill = duties.KillTask(agent_id, 7, "fw", "r-1", 2.0)
        return [run("r-0"), run("r-1"), kill] + [run(f"s-{i}") for i in range(MAX_PER_MESSAGE + 1)]

    batched = node.duties.attach_agent("agent-batched", batched=True)
    single = node.duties.attach_agent("agent-single")
    node.duties.deliver(messages("agent-batched"))
    node.duties.deliver(messages("agent-single"))
    sent = [batched.out.get_nowait() for _ in range(batched.out.qsize())]
    shape = [(m.WhichOneof("kind"), len(m.run_tasks.tasks)) for m in sent]
    assert shape == [("run_tasks", 2), ("kill_task", 0), ("run_tasks", MAX_PER_MESSAGE), ("run_task", 0)]
    flat = [t.task_id for m in sent for t in ([m.run_task.task] if m.HasField("run_task") else
                                                [r.task for r in m.run_tasks.tasks])]
    assert flat == [m.task.task_id for m in messages("x") if isinstance(m, duties.RunTask)]
    assert all(m.term == 7 for m in sent) and sent[1].kill_task.grace_period_seconds == 2.0
    singles = [single.out.get_nowait() for _ in range(single.out.qsize())]
    assert [m.WhichOneof("kind") for m in singles] == ["run_task", "run_task", "kill_task"] + [
        "run_task"] * (MAX_PER_MESSAGE + 1)
    assert singles[0].run_task.traceparent == "00-x" and singles[0].run_task.principal == "alice"
    assert {r.principal for r in sent[0].run_tasks.tasks} == {"alice"}

    statuses = [TaskStatus(task_id=f"u-{i}", state=TaskState.TASK_RUNNING, uuid=f"uuid-{i}")
                for i in range(MAX_PER_MESSAGE + 2)]
    offer = Offer(offer_id="o-2", framework_id="fw-batched", agent_id="a", role="web", resources=Resources.of(cpus=1))
    fw = node.duties.attach_framework("fw-batched", "stream-1", batched_updates=True)
    node.duties.deliver([duties.SendUpdate("fw-batched", statuses[0]), duties.SendRescind("fw-batched", "o-1"),
                         *[duties.SendUpdate("fw-batched", s) for s in statuses[1:]],
                         duties.SendOffers("fw-batched", (offer,)),
                         duties.RemoveFramework("fw-batched", "teardown"),
                         duties.SendRescind("fw-batched", "o-2")])  # after the removal: never sent
    events = [fw.out.get_nowait() for _ in range(fw.out.qsize())]
    assert [(e.WhichOneof("kind"), len(e.updates.updates)) if e is not leader.CLOSE else "CLOSE" for e in events] == [
        ("update", 0), ("rescind", 0), ("updates", MAX_PER_MESSAGE), ("update", 0), ("offers", 0), ("error", 0),
        "CLOSE"]
    assert "framework removed: teardown" in events[5].error.message
    assert set(fw.last_update_sent) == {s.uuid for s in statuses}


def test_the_shell_runs_the_duties_functions(node: InProcessMaster, monkeypatch: pytest.MonkeyPatch) -> None:
    """`LeaderDuties` asks `duties.tick` and `duties.react` (the functions the simulation runs)."""
    calls = {"tick": 0, "react": 0}
    tick, react = duties.tick, duties.react

    def counting_tick(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["tick"] += 1
        return tick(*args, **kwargs)

    def counting_react(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["react"] += 1
        return react(*args, **kwargs)

    monkeypatch.setattr(duties, "tick", counting_tick)
    monkeypatch.setattr(duties, "react", counting_react)
    node.master.propose([c.RegisterAgent(info=AgentInfo(hostname="h", resources=Resources.of(cpus=1)))])
    wait_for(lambda: calls["tick"] > 0 and calls["react"] > 0, 10, what="the shell to tick and react")


def test_a_wanted_allocation_wakes_the_ticker_instead_of_waiting_for_its_period() -> None:
    """A reaction that freed resources (`want_allocation`) gets its allocation pass after the short
    `allocation_batch` window, not at the next tick: with a tick of a minute and no allocation interval
    to speak of, only the wake can run the round."""
    from dataclasses import replace

    from tests.support.inprocess import FAST

    slow = replace(FAST, tick=60.0, allocation_interval=3600.0, allocation_batch=0.01)
    with InProcessMaster(settings=slow) as m:
        before = m.duties.allocation_rounds
        m.duties.want_allocation()
        wait_for(lambda: m.duties.allocation_rounds > before, 10, what="a round right after the want")
        after = m.duties.allocation_rounds
        m.duties.want_allocation()  # and again: each want is served
        wait_for(lambda: m.duties.allocation_rounds > after, 10, what="a second round after the second want")


def test_acknowledged_updates_are_no_longer_timed_for_re_sending(node: InProcessMaster) -> None:
    """The reactor forgets when an update was sent once its acknowledgement is committed, so a busy
    framework's session does not keep (and every tick copy) a time for every update it ever got."""
    from tessera.control_plane.core import events as ev
    from tessera.control_plane.core.apply import ApplyResult
    from tessera.control_plane.runtime.statemachine import Applied

    fw = node.duties.attach_framework("fw-acks", "stream-1", batched_updates=True)
    statuses = [TaskStatus(task_id=f"t-{i}", state=TaskState.TASK_RUNNING, uuid=f"uuid-{i}") for i in range(3)]
    node.duties.deliver([duties.SendUpdate("fw-acks", s) for s in statuses])
    assert set(fw.last_update_sent) == {"uuid-0", "uuid-1", "uuid-2"}
    acks = [ev.TaskStatusAcknowledged(task_id=f"t-{i}", framework_id="fw-acks", agent_id="a", uuid=f"uuid-{i}")
            for i in (0, 2)]
    assert duties.acknowledged([Applied(1, ev.Entry(term=1, leader="m1", time=0.0, events=tuple(acks)),
                                        ApplyResult(outcome="applied", events=tuple(enumerate(acks, 1))))]) == [
        ("fw-acks", "uuid-0"), ("fw-acks", "uuid-2")]
    node.duties.on_applied([Applied(1, ev.Entry(term=1, leader="m1", time=0.0, events=tuple(acks)),
                                    ApplyResult(outcome="applied", events=tuple(enumerate(acks, 1))))])
    wait_for(lambda: set(fw.last_update_sent) == {"uuid-1"}, 10, what="the acknowledged updates forgotten")


def test_an_allocation_round_does_not_wait_for_the_previous_rounds_commit_and_offers_around_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The ticker proposes a round's offers in the background; the next round's snapshot is given the offers
    still committing (`pending`), and they leave it once their entry settled."""
    from concurrent.futures import Future

    with InProcessMaster(allocation=False) as m:
        seen: list[tuple[Offer, ...]] = []
        rounds = iter([(_offer("o-1"),), (_offer("o-2"),)])
        test_thread = threading.current_thread()  # the ticker's own rounds (if any) offer nothing

        def snapshot(state: object, now: float, *, ended: object = None, pending: tuple[Offer, ...] = ()) -> bool:
            if threading.current_thread() is not test_thread:
                return False
            seen.append(tuple(pending))
            return True

        m.duties._allocator = (snapshot, lambda mine, now: next(rounds) if mine else ())
        proposed: list[tuple[list[c.Command], Future[object]]] = []

        def propose_async(commands: list[c.Command], **kwargs: object) -> Future[object]:
            fut: Future[object] = Future()  # never committed until the test says so
            proposed.append((commands, fut))
            return fut

        monkeypatch.setattr(m.master, "propose_async", propose_async)
        m.duties._allocation_round()  # returns without the commit
        m.duties._allocation_round()
        assert seen == [(), (_offer("o-1"),)]
        assert [cmds for cmds, _ in proposed] == [[c.IssueOffers(offers=(_offer("o-1"),))],
                                                 [c.IssueOffers(offers=(_offer("o-2"),))]]
        proposed[0][1].set_result(None)  # the first round's entry settled: no longer pending
        with m.duties._lock:
            assert m.duties._ledger.pending_offers() == (_offer("o-2"),)
        proposed[1][1].set_result(None)


def _offer(offer_id: str) -> Offer:
    return Offer(offer_id=offer_id, framework_id="fw", agent_id="a", role="*", resources=Resources.of(cpus=1))


class _ChangedOnlyUnderLock(dict[str, float]):
    """A session's `last_update_sent` that fails a change made without the leader's lock held."""

    def __init__(self, lock: Any) -> None:
        super().__init__()
        self.lock = lock

    def _check(self) -> None:
        assert self.lock.locked(), "last_update_sent changed without the leader's lock"

    def __setitem__(self, key: str, value: float) -> None:
        self._check()
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: float) -> None:
        self._check()
        super().update(*args, **kwargs)

    def pop(self, *args: Any) -> Any:
        self._check()
        return super().pop(*args)


def test_the_times_updates_were_sent_change_only_under_the_lock_the_ticker_copies_them_with(
        node: InProcessMaster) -> None:
    """The ticker copies every session's `last_update_sent` under the leader's lock (`_soft_state`) while
    the reactor forgets acknowledged updates and senders record new ones: a change outside the lock
    during the copy raised "dictionary changed size during iteration" and failed that tick's duties."""
    fw = node.duties.attach_framework("fw-lock", "stream-1", batched_updates=True)
    fw.last_update_sent = _ChangedOnlyUnderLock(node.duties._lock)
    statuses = [TaskStatus(task_id=f"t-{i}", state=TaskState.TASK_RUNNING, uuid=f"uuid-{i}") for i in range(3)]
    node.duties.deliver([duties.SendUpdate("fw-lock", s) for s in statuses])
    assert set(fw.last_update_sent) == {"uuid-0", "uuid-1", "uuid-2"}
    node.duties._forget_sent([("fw-lock", "uuid-0")])
    assert set(fw.last_update_sent) == {"uuid-1", "uuid-2"}
