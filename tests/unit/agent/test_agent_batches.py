"""The agent's batched messages (docs/protocol.md, AgentLink step 8) against a fake master over real gRPC:
`run_tasks` starts its tasks in one turn, the heads due in a turn leave as one `status_updates` message
(each written to the checkpoint first), `acks` settle them; lost acks lead to re-sends recorded once by
uuid; per-task order holds; an agent restart and a master failover lose nothing; with batching off the
agent speaks the single-message protocol to a master without the capability."""

from __future__ import annotations

from collections.abc import Callable

from tessera.agent.checkpoint import Checkpoint
from tessera.agent.runtime.updates import update_messages
from tessera.v1 import agent_pb2, common_pb2
from tests.unit.agent.conftest import RunningAgent
from tests.unit.agent.fake_master import FakeMaster
from tests.unit.agent.test_agent_link import registered, task, written_before_sent

Start = Callable[..., RunningAgent]
LIFECYCLE = ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]


def in_order(states: list[str]) -> bool:
    """A subsequence of the lifecycle, ending finished (updates superseded by a newer one may be absent)."""
    positions = [LIFECYCLE.index(s) for s in states]
    return positions == sorted(set(positions)) and states[-1:] == ["TASK_FINISHED"]


def all_finished(master: FakeMaster, ids: list[str]) -> Callable[[], bool]:
    return lambda: all("TASK_FINISHED" in master.states_of(t) for t in ids)


def settled(cp: Checkpoint) -> Callable[[], bool]:
    return lambda: cp.unacknowledged() == [] and cp.tasks() == []


def test_run_tasks_start_in_one_turn_and_their_updates_travel_together(fake_master: FakeMaster,
                                                                      start_agent: Start) -> None:
    # no re-send within the test: "sent once" must not depend on how fast a loaded machine acknowledges
    agent = start_agent([fake_master.address], status_retry_initial=60.0, status_retry_max=60.0)
    fake_master.wait_for(registered(fake_master), what="registration")
    assert list(fake_master.registers[0].capabilities) == ["BATCHED_MESSAGES"]
    missing = written_before_sent(fake_master, agent)
    ids = [f"b-{i}" for i in range(8)]
    fake_master.run_tasks([task(t, f"echo {t}") for t in ids])
    fake_master.wait_for(all_finished(fake_master, ids), timeout=30, what="every task finished")
    fake_master.wait_for(settled(agent.checkpoint), what="every update acknowledged")
    # The supervisors of one RunTasks start in one turn: their STARTING updates leave in one message.
    assert fake_master.batch_sizes[0] == len(ids)
    assert {u.status.state for u in fake_master.updates[:len(ids)]} == {common_pb2.TASK_STARTING}
    for t in ids:
        assert fake_master.states_of(t) == LIFECYCLE
        assert (agent.data_dir / "sandboxes" / "fw-1" / t / "sandbox" / "stdout").read_text() == f"{t}\n"
    # Nothing was lost or sent twice: every update acknowledged at its first sending, recorded once.
    assert len(fake_master.updates) == len(fake_master.recorded) == 3 * len(ids) == fake_master.acks_sent
    assert missing == []


def test_lost_acks_of_a_batch_are_resent_and_recorded_once(fake_master: FakeMaster, start_agent: Start) -> None:
    fake_master.drop_first_acks = True  # every update's first acknowledgement is lost
    agent = start_agent([fake_master.address])
    fake_master.wait_for(registered(fake_master), what="registration")
    missing = written_before_sent(fake_master, agent)
    ids = [f"lost-{i}" for i in range(5)]
    fake_master.run_tasks([task(t, "true") for t in ids])
    fake_master.wait_for(all_finished(fake_master, ids), timeout=30, what="every task finished")
    fake_master.wait_for(settled(agent.checkpoint), timeout=30, what="every update acknowledged")
    sent: dict[str, int] = {}
    for u in fake_master.updates:
        sent[u.status.uuid] = sent.get(u.status.uuid, 0) + 1
    assert set(sent) == set(fake_master.recorded) and len(sent) == 3 * len(ids)
    assert all(count >= 2 for count in sent.values())  # each was re-sent after its lost ack
    assert max(fake_master.batch_sizes) > 1  # the re-sends of several tasks travelled together
    for t in ids:
        assert fake_master.states_of(t) == LIFECYCLE  # per-task order kept across re-sends
        # Only the head of a task's stream is in flight: no update was sent before the previous was acked.
        order = [u.status.state for u in fake_master.updates if u.status.task_id == t]
        assert order == sorted(order)
    assert agent.agent.updates.retries >= len(sent)
    assert missing == []


def test_restart_with_an_unacknowledged_batch_loses_nothing(fake_master: FakeMaster, start_agent: Start) -> None:
    fake_master.ack_updates = False
    first = start_agent([fake_master.address])
    fake_master.wait_for(registered(fake_master), what="registration")
    ids = [f"r-{i}" for i in range(4)]
    fake_master.run_tasks([task(t, "true") for t in ids])
    fake_master.wait_for(lambda: {u.status.task_id for u in first.checkpoint.unacknowledged()
                                  if u.status.state == common_pb2.TASK_FINISHED} == set(ids),
                         timeout=30, what="every TASK_FINISHED checkpointed, unacknowledged")
    assert first.stop() == 0
    fake_master.ack_updates = True
    second = start_agent([fake_master.address], data_dir=first.data_dir)
    fake_master.wait_for(lambda: len(fake_master.registers) >= 2, what="re-registration")
    rereg = fake_master.registers[-1]
    assert list(rereg.capabilities) == ["BATCHED_MESSAGES"]
    assert sorted((s.task_id, s.state) for s in rereg.tasks) == [(t, common_pb2.TASK_FINISHED) for t in ids]
    fake_master.wait_for(all_finished(fake_master, ids), timeout=30, what="the finished updates re-sent")
    fake_master.wait_for(settled(second.checkpoint), what="every update acknowledged")
    for t in ids:
        assert in_order(fake_master.states_of(t))
    second.stop()


def test_master_failover_with_batches_in_flight_loses_nothing(start_agent: Start) -> None:
    old, new = FakeMaster(term=1, ack_updates=False), FakeMaster(term=2)
    old.start()
    new.start()
    try:
        agent = start_agent([old.address, new.address])
        old.wait_for(registered(old), what="registration")
        ids = [f"f-{i}" for i in range(4)]
        old.run_tasks([task(t, "true") for t in ids])
        old.wait_for(lambda: len({u.status.task_id for u in old.updates}) == len(ids), what="updates sent")
        assert max(old.batch_sizes) == len(ids)
        new.known_agents.add("agent-1")  # the new leader has the replicated registration
        old.stop()  # the old leader dies with every update unacknowledged
        new.wait_for(registered(new), what="re-registration at the new leader")
        assert list(new.registers[0].capabilities) == ["BATCHED_MESSAGES"]
        new.wait_for(all_finished(new, ids), timeout=30, what="every task finished at the new leader")
        new.wait_for(settled(agent.checkpoint), what="every update acknowledged")
        for t in ids:
            states = old.states_of(t) + [s for s in new.states_of(t) if s not in old.states_of(t)]
            assert in_order(states)
        assert agent.checkpoint.highest_term == 2
    finally:
        new.stop()


def test_without_batching_the_agent_speaks_single_messages_to_an_older_master(start_agent: Start) -> None:
    master = FakeMaster(batched=False)  # a master that predates BATCHED_MESSAGES
    master.start()
    try:
        agent = start_agent([master.address], batch_messages=False)
        master.wait_for(registered(master), what="registration")
        assert list(master.registers[0].capabilities) == []
        ids = [f"s-{i}" for i in range(6)]
        for t in ids:
            master.run_task(task(t, "true"))
        master.wait_for(all_finished(master, ids), timeout=30, what="every task finished")
        master.wait_for(settled(agent.checkpoint), what="every update acknowledged")
        assert set(master.batch_sizes) == {1} and master.ignored_batches == 0
        assert len(master.updates) == len(master.recorded) == 3 * len(ids)
        for t in ids:
            assert master.states_of(t) == LIFECYCLE
    finally:
        master.stop()


def test_a_batching_agent_is_not_understood_by_an_older_master(start_agent: Start) -> None:
    """Why the switch exists: a master without the capability drops StatusUpdates, so batches never settle."""
    master = FakeMaster(batched=False)
    master.start()
    try:
        start_agent([master.address])
        master.wait_for(registered(master), what="registration")
        assert list(master.registers[0].capabilities) == ["BATCHED_MESSAGES"]
        ids = [f"o-{i}" for i in range(3)]
        master.send(agent_pb2.MasterMessage(run_tasks=agent_pb2.RunTasks(tasks=[agent_pb2.RunTask(task=task(t, "true"))
                                                                                  for t in ids])))
        master.wait_for(lambda: master.ignored_batches >= 1, timeout=30, what="a dropped batch")
        assert not all_finished(master, ids)()
    finally:
        master.stop()


def test_due_updates_leave_in_batches_of_at_most_per_message_and_a_lone_one_as_a_single() -> None:
    updates = [agent_pb2.StatusUpdate(status=common_pb2.TaskStatus(task_id=f"t{i}")) for i in range(5)]
    batched = update_messages(updates, batched=True, per_message=2)
    assert [m.WhichOneof("kind") for m in batched] == ["status_updates", "status_updates", "status_update"]
    assert [[u.status.task_id for u in m.status_updates.updates] for m in batched[:2]] == [["t0", "t1"], ["t2", "t3"]]
    assert batched[2].status_update.status.task_id == "t4"
    single = update_messages(updates, batched=False)
    assert [m.status_update.status.task_id for m in single] == ["t0", "t1", "t2", "t3", "t4"]
    assert update_messages([], batched=True) == []
