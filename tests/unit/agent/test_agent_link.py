"""The agent against a fake master over real gRPC on 127.0.0.1: registration, re-registration with
tasks, status updates (checkpointed before sending, in order, re-sent until acknowledged, re-sent after a
reconnect), term fencing, leader following, a forgotten agent, shutdown, a silent master.

Every test runs twice: with the agent announcing BATCHED_MESSAGES (its default) and without it (the
single-message protocol, as against a master that predates the capability)."""

from __future__ import annotations

import itertools
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tessera.agent.checkpoint import Checkpoint
from tessera.agent.executor.supervisor import read_json
from tessera.control_plane.core.values import TaskKey
from tessera.v1 import agent_pb2, common_pb2
from tests.unit.agent.conftest import AgentFactory, RunningAgent
from tests.unit.agent.fake_master import FakeMaster

Start = Callable[..., RunningAgent]


@pytest.fixture(params=["batched", "single"])
def start_agent(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Start]:
    factory = AgentFactory(tmp_path, defaults={"batch_messages": request.param == "batched"})
    yield factory
    factory.stop_all()


def written_before_sent(master: FakeMaster, agent: RunningAgent) -> list[str]:
    """The uuids of the status updates `master` received before `agent` had them in its checkpoint
    (filled in as updates arrive): a reliable agent sends only what it has written."""
    missing: list[str] = []

    def check(update: agent_pb2.StatusUpdate) -> None:
        with sqlite3.connect(agent.data_dir / "agent.db") as db:
            if db.execute("SELECT 1 FROM updates WHERE uuid = ?", [update.status.uuid]).fetchone() is None:
                missing.append(update.status.uuid)

    master.on_update = check
    return missing


def task(task_id: str, command: str, *, grace: float = 0.0, mem: float = 64) -> common_pb2.TaskInfo:
    return common_pb2.TaskInfo(
        task_id=task_id, framework_id="fw-1", kill_grace_period_seconds=grace,
        command=common_pb2.CommandInfo(shell=True, value=command),
        resources=[common_pb2.Resource(name="cpus", scalar=0.1), common_pb2.Resource(name="mem", scalar=mem)])


def registered(master: FakeMaster, count: int = 1) -> Callable[[], bool]:
    return lambda: len(master.streams) >= count and master.heartbeats > 0


def test_first_registration_stores_the_id_and_heartbeats(fake_master: FakeMaster, start_agent: Start) -> None:
    agent = start_agent([fake_master.address], attributes="rack:r1")
    fake_master.wait_for(lambda: fake_master.heartbeats >= 2, what="heartbeats")
    [reg] = fake_master.registers
    assert reg.agent_id == "" and reg.request_id and reg.info.hostname == "test-host"
    assert {r.name: r.scalar for r in reg.info.resources if r.name in ("cpus", "mem")} == {"cpus": 2, "mem": 1024}
    assert [(a.key, a.value) for a in reg.info.attributes] == [("rack", "r1")]
    assert reg.info.isolator == "rlimits"
    assert agent.checkpoint.agent_id == "agent-1"
    assert agent.checkpoint.highest_term == fake_master.term


def test_task_updates_arrive_in_order_each_written_before_it_was_sent(fake_master: FakeMaster, start_agent: Start,
                                                                   tmp_path: Path) -> None:
    agent = start_agent([fake_master.address])
    fake_master.wait_for(registered(fake_master), what="registration")
    missing = written_before_sent(fake_master, agent)
    fake_master.run_task(task("t1", "echo hi"), traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    fake_master.wait_for(lambda: "TASK_FINISHED" in fake_master.states_of("t1"), what="TASK_FINISHED")
    assert fake_master.states_of("t1") == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    assert missing == []
    final = next(u for u in fake_master.updates if u.status.state == common_pb2.TASK_FINISHED)
    assert final.status.agent_id == "agent-1" and final.status.framework_id == "fw-1"
    assert final.status.HasField("exit_code") and final.status.exit_code == 0
    assert final.status.data == b"hi\n"  # the tail of stdout rides on the terminal status
    assert final.status.message.endswith(f"sandbox={agent.data_dir / 'sandboxes' / 'fw-1' / 't1' / 'sandbox'}")
    assert final.traceparent.startswith("00-0af7651916cd43dd8448eb211c80319c")
    assert (agent.data_dir / "sandboxes" / "fw-1" / "t1" / "sandbox" / "stdout").read_text() == "hi\n"
    fake_master.wait_for(lambda: agent.checkpoint.tasks() == [], what="the task to be done")


def test_unacknowledged_update_is_resent_with_backoff(fake_master: FakeMaster, start_agent: Start) -> None:
    fake_master.ack_updates = False
    start_agent([fake_master.address])
    fake_master.wait_for(registered(fake_master), what="registration")
    fake_master.run_task(task("t1", "true"))
    fake_master.wait_for(lambda: len(fake_master.updates) >= 3, what="retries")
    # Only the head (STARTING) is ever in flight while it is unacknowledged.
    assert {u.status.uuid for u in fake_master.updates} == {fake_master.updates[0].status.uuid}
    assert fake_master.updates[0].status.state == common_pb2.TASK_STARTING
    fake_master.ack_updates = True
    fake_master.ack("t1", fake_master.updates[0].status.uuid)
    fake_master.wait_for(lambda: "TASK_FINISHED" in fake_master.states_of("t1"), what="the rest")
    assert fake_master.states_of("t1") == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]


def test_unacknowledged_updates_are_resent_after_reconnecting(fake_master: FakeMaster, start_agent: Start) -> None:
    fake_master.ack_updates = False
    agent = start_agent([fake_master.address])
    fake_master.wait_for(registered(fake_master), what="registration")
    fake_master.run_task(task("t1", "true"))
    fake_master.wait_for(lambda: fake_master.updates, what="the first update")
    # Let the task finish on the agent while nothing is acknowledged.
    fake_master.wait_for(lambda: any(u.status.state == 5 for u in agent.checkpoint.unacknowledged()),
                         what="TASK_FINISHED checkpointed")
    fake_master.ack_updates = True
    fake_master.drop_stream()
    fake_master.wait_for(lambda: len(fake_master.registers) >= 2, what="re-registration")
    rereg = fake_master.registers[1]
    assert rereg.agent_id == "agent-1"
    assert [(s.task_id, s.state) for s in rereg.tasks] == [("t1", common_pb2.TASK_FINISHED)]
    finished_uuid = rereg.tasks[0].uuid
    fake_master.wait_for(lambda: finished_uuid in fake_master.recorded, what="the finished update re-sent")
    fake_master.wait_for(lambda: agent.checkpoint.unacknowledged() == [], what="everything acknowledged")
    # The older STARTING/RUNNING were superseded by the reported FINISHED, not sent after it.
    last = [u.status.state for u in fake_master.updates][-1]
    assert last == common_pb2.TASK_FINISHED


def test_restarted_agent_reregisters_with_its_running_task(fake_master: FakeMaster, start_agent: Start) -> None:
    first = start_agent([fake_master.address])
    fake_master.wait_for(registered(fake_master), what="registration")
    fake_master.run_task(task("long", "sleep 60"))
    fake_master.wait_for(lambda: "TASK_RUNNING" in fake_master.states_of("long"), what="RUNNING")
    fake_master.wait_for(lambda: first.checkpoint.unacknowledged() == [], what="acks")
    assert first.stop() == 0
    second = start_agent([fake_master.address], data_dir=first.data_dir)
    fake_master.wait_for(lambda: len(fake_master.registers) >= 2, what="re-registration")
    rereg = fake_master.registers[-1]
    assert rereg.agent_id == "agent-1"
    assert [(s.task_id, s.state) for s in rereg.tasks] == [("long", common_pb2.TASK_RUNNING)]
    fake_master.wait_for(registered(fake_master, 2), what="registered again")
    fake_master.kill_task("long", grace=0.5)
    fake_master.wait_for(lambda: "TASK_KILLED" in fake_master.states_of("long"), what="TASK_KILLED")
    assert fake_master.states_of("long")[-2:] == ["TASK_KILLING", "TASK_KILLED"]
    second.stop()


def test_commands_with_a_lower_term_are_ignored_also_after_a_restart(fake_master: FakeMaster, start_agent: Start,
                                                                   tmp_path: Path) -> None:
    fake_master.term = 5
    agent = start_agent([fake_master.address])
    fake_master.wait_for(registered(fake_master), what="registration")
    fake_master.run_task(task("long", "sleep 60"))
    fake_master.wait_for(lambda: "TASK_RUNNING" in fake_master.states_of("long"), what="RUNNING")
    fake_master.run_task(task("stale-run", "true"), term=4)
    fake_master.kill_task("long", term=3)
    fake_master.run_task(task("fresh", "true"), term=6)  # a newer leader: accepted, and raises the fence
    fake_master.wait_for(lambda: "TASK_FINISHED" in fake_master.states_of("fresh"), what="fresh task")
    # The stream is ordered: by the time "fresh" ran, the stale commands had been seen and dropped.
    assert fake_master.states_of("stale-run") == []
    assert fake_master.states_of("long") == ["TASK_STARTING", "TASK_RUNNING"]
    assert agent.checkpoint.task(TaskKey("fw-1", "stale-run")) is None
    assert agent.checkpoint.highest_term == 6
    agent.stop()
    # A restarted agent still knows term 6: a term-5 leader cannot kill its task.
    again = start_agent([fake_master.address], data_dir=agent.data_dir)
    fake_master.wait_for(lambda: len(fake_master.registers) >= 2 and fake_master.open_streams() >= 1,
                         what="re-registration")
    fake_master.kill_task("long", term=5)
    fake_master.run_task(task("fresh-2", "true"), term=6)
    fake_master.wait_for(lambda: "TASK_FINISHED" in fake_master.states_of("fresh-2"), what="fresh-2")
    assert "TASK_KILLING" not in fake_master.states_of("long")
    fake_master.kill_task("long", term=6)
    fake_master.wait_for(lambda: "TASK_KILLED" in fake_master.states_of("long"), what="the real kill")
    again.stop()


def test_follower_redirects_to_the_leader(start_agent: Start) -> None:
    leader = FakeMaster()
    leader.start()
    follower = FakeMaster(leader_hint=leader.address)
    follower.start()
    try:
        agent = start_agent([follower.address])  # only the follower is configured
        leader.wait_for(registered(leader), what="registration at the leader")
        assert follower.refused >= 1 and follower.registers == []
        assert agent.checkpoint.agent_id == "agent-1"
    finally:
        follower.stop()
        leader.stop()


def test_dead_master_in_the_list_is_skipped(start_agent: Start) -> None:
    from tests.support.cluster import free_port

    master = FakeMaster()
    master.start()
    try:
        start_agent([f"127.0.0.1:{free_port()}", master.address])
        master.wait_for(registered(master), what="registration at the second master")
    finally:
        master.stop()


def test_master_failover_reregisters_with_the_new_leader(start_agent: Start) -> None:
    old, new = FakeMaster(term=1), FakeMaster(term=2)
    old.start()
    new.start()
    try:
        agent = start_agent([old.address, new.address])
        old.wait_for(registered(old), what="registration")
        old.run_task(task("long", "sleep 60"))
        old.wait_for(lambda: "TASK_RUNNING" in old.states_of("long"), what="RUNNING")
        new.known_agents.add("agent-1")  # the new leader has the replicated registration
        old.stop()  # the old leader dies
        new.wait_for(registered(new), what="re-registration at the new leader")
        assert new.registers[0].agent_id == "agent-1"
        assert [s.task_id for s in new.registers[0].tasks] == ["long"]
        new.kill_task("long", grace=0.2)
        new.wait_for(lambda: "TASK_KILLED" in new.states_of("long"), what="killed via the new leader")
        assert agent.checkpoint.highest_term == 2
    finally:
        new.stop()


def test_unknown_agent_kills_its_tasks_and_registers_anew(start_agent: Start, tmp_path: Path) -> None:
    first_master = FakeMaster()
    first_master.start()
    agent = start_agent([first_master.address])
    first_master.wait_for(registered(first_master), what="registration")
    first_master.run_task(task("old", "sleep 60"))
    first_master.wait_for(lambda: "TASK_RUNNING" in first_master.states_of("old"), what="RUNNING")
    agent.stop()
    first_master.stop()
    # A cluster that never heard of agent-1 (its state was wiped).
    fresh = FakeMaster(forget_unknown=True)
    fresh._ids = itertools.count(100)
    fresh.start()
    try:
        again = start_agent([fresh.address], data_dir=agent.data_dir)
        fresh.wait_for(lambda: any(r.agent_id == "" for r in fresh.registers) and fresh.heartbeats > 0,
                       what="a new registration")
        assert [r.agent_id for r in fresh.registers][:2] == ["agent-1", ""]
        assert again.checkpoint.agent_id == "agent-100"  # the id the fresh master minted
        fresh.wait_for(lambda: not again.agent.handles, what="the old task killed")
        assert fresh.states_of("old") == []  # nothing about a task the master does not know
        rec = again.checkpoint.task(TaskKey("fw-1", "old"))
        assert rec is not None and rec.state == common_pb2.TASK_KILLED
        again.stop()
    finally:
        fresh.stop()


def test_shutdown_kills_the_tasks_clears_the_id_and_exits(fake_master: FakeMaster, start_agent: Start) -> None:
    agent = start_agent([fake_master.address])
    fake_master.wait_for(registered(fake_master), what="registration")
    fake_master.run_task(task("long", "sleep 60", grace=0.5))
    fake_master.wait_for(lambda: "TASK_RUNNING" in fake_master.states_of("long"), what="RUNNING")
    fake_master.send(agent_pb2.MasterMessage(shutdown=agent_pb2.Shutdown(reason="removed by operator")))
    agent.thread.join(20)
    assert not agent.thread.is_alive() and agent.result == [0]
    assert "TASK_KILLED" in fake_master.states_of("long")
    cp = Checkpoint.open(agent.data_dir / "agent.db")
    assert cp.agent_id == ""
    cp.close()


def test_silent_master_is_dropped_and_dialed_again(fake_master: FakeMaster, start_agent: Start) -> None:
    agent = start_agent([fake_master.address])
    fake_master.wait_for(registered(fake_master), what="registration")
    fake_master.silent = True  # the stream stays open but nothing comes back
    fake_master.wait_for(lambda: len(fake_master.registers) >= 2, timeout=20, what="re-registration")
    fake_master.silent = False
    assert fake_master.registers[1].agent_id == "agent-1"
    assert agent.agent.registrations >= 1


def test_usage_is_reported_for_running_tasks(fake_master: FakeMaster, start_agent: Start) -> None:
    start_agent([fake_master.address])
    fake_master.wait_for(registered(fake_master), what="registration")
    fake_master.run_task(task("busy", f"{sys.executable} -c 'while True: pass'"))
    fake_master.wait_for(lambda: any(t.task_id == "busy" and t.cpu_seconds > 0 and t.rss_bytes > 0
                                     for u in fake_master.usages for t in u.tasks), what="usage of the task")
    assert all(u.agent_id == "agent-1" for u in fake_master.usages)
    fake_master.kill_task("busy")
    fake_master.wait_for(lambda: "TASK_KILLED" in fake_master.states_of("busy"), what="killed")


def test_invalid_and_duplicate_run_tasks(fake_master: FakeMaster, start_agent: Start) -> None:
    start_agent([fake_master.address])
    fake_master.wait_for(registered(fake_master), what="registration")
    fake_master.run_task(task("empty", ""))
    bad = task("neg", "true")
    bad.resources.add(name="disk", scalar=-5)
    fake_master.run_task(bad)
    fake_master.run_task(task("once", "sleep 60"))
    fake_master.run_task(task("once", "sleep 60"))
    fake_master.run_task(task("missing", "no-such-command-xyz"))
    fake_master.wait_for(lambda: "TASK_FAILED" in fake_master.states_of("missing"), what="missing command")
    fake_master.wait_for(lambda: "TASK_RUNNING" in fake_master.states_of("once"), what="once running")
    assert fake_master.states_of("empty") == ["TASK_ERROR"]
    assert fake_master.states_of("neg") == ["TASK_ERROR"]
    assert fake_master.states_of("once") == ["TASK_STARTING", "TASK_RUNNING"]  # launched once
    failed = next(u.status for u in fake_master.updates
                  if u.status.task_id == "missing" and u.status.state == common_pb2.TASK_FAILED)
    assert failed.exit_code == 127 and "not found" in failed.message
    assert failed.reason == "REASON_COMMAND_EXECUTOR_FAILED"
    fake_master.kill_task("once")
    fake_master.wait_for(lambda: "TASK_KILLED" in fake_master.states_of("once"), what="killed")


def test_a_working_dir_outside_the_sandbox_is_refused_by_the_agent_too(fake_master: FakeMaster,
                                                                      start_agent: Start) -> None:
    # The master refuses these at Accept; an agent told to run one (an older master) refuses it as well.
    agent = start_agent([fake_master.address])
    fake_master.wait_for(registered(fake_master), what="registration")
    for task_id, working_dir in (("abs", "/etc"), ("climb", "../../x")):
        bad = task(task_id, "touch made-here")
        bad.command.working_dir = working_dir
        fake_master.run_task(bad)
    fake_master.wait_for(lambda: fake_master.states_of("abs") and fake_master.states_of("climb"), what="refusals")
    for task_id in ("abs", "climb"):
        assert fake_master.states_of(task_id) == ["TASK_ERROR"]
        status = next(u.status for u in fake_master.updates if u.status.task_id == task_id)
        assert status.reason == "REASON_TASK_INVALID" and "working_dir" in status.message
    assert not list(agent.data_dir.rglob("made-here")) and not (agent.data_dir / "x").exists()
    assert not (agent.data_dir / "sandboxes" / "fw-1" / "abs").exists()


def test_invalid_argument_on_register_is_retried_not_fatal(start_agent: Start) -> None:
    class Refusing(FakeMaster):
        def Connect(self, request_iterator, context):  # type: ignore[no-untyped-def]
            with self.lock:
                self.refused += 1
                self.lock.notify_all()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad registration")
            yield  # pragma: no cover

    master = Refusing()
    master.start()
    try:
        agent = start_agent([master.address])
        master.wait_for(lambda: master.refused >= 2, what="retries")
        assert agent.thread.is_alive()
    finally:
        master.stop()


def test_kill_recorded_but_not_carried_out_before_a_crash_is_carried_out_after_restart(
        fake_master: FakeMaster, start_agent: Start) -> None:
    first = start_agent([fake_master.address])
    fake_master.wait_for(registered(fake_master), what="registration")
    fake_master.run_task(task("long", "trap '' TERM; sleep 60", grace=0.5))
    fake_master.wait_for(lambda: "TASK_RUNNING" in fake_master.states_of("long"), what="RUNNING")
    fake_master.wait_for(lambda: first.checkpoint.unacknowledged() == [], what="acks")
    first.stop()
    # What a crash right after checkpointing the kill (before signalling the supervisor) leaves behind.
    cp = Checkpoint.open(first.data_dir / "agent.db")
    cp.mark_kill(TaskKey("fw-1", "long"), 0.5)
    cp.close()
    start_agent([fake_master.address], data_dir=first.data_dir)
    fake_master.wait_for(lambda: "TASK_KILLED" in fake_master.states_of("long"), what="TASK_KILLED")
    assert fake_master.states_of("long")[-2:] == ["TASK_KILLING", "TASK_KILLED"]
    killed = next(u.status for u in fake_master.updates if u.status.state == common_pb2.TASK_KILLED)
    assert "SIGKILL" in killed.message  # the trap kept SIGTERM out: the grace ran out, as asked


def test_many_run_tasks_at_once_each_update_written_before_it_was_sent(fake_master: FakeMaster,
                                                                       start_agent: Start) -> None:
    agent = start_agent([fake_master.address])
    fake_master.wait_for(registered(fake_master), what="registration")
    missing = written_before_sent(fake_master, agent)
    ids = [f"many-{i}" for i in range(12)]
    for task_id in ids:
        fake_master.run_task(task(task_id, f"echo {task_id}"))
    for task_id in ids:
        fake_master.wait_for(lambda t=task_id: "TASK_FINISHED" in fake_master.states_of(t),  # type: ignore[misc]
                             timeout=30, what=f"TASK_FINISHED of {task_id}")
        assert fake_master.states_of(task_id) == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
        assert (agent.data_dir / "sandboxes" / "fw-1" / task_id / "sandbox" / "stdout").read_text() == f"{task_id}\n"
    assert missing == []
    pids = {int((read_json(agent.data_dir / "sandboxes" / "fw-1" / t / "supervisor.json") or {})["supervisor_pid"])
            for t in ids}
    assert len(pids) == len(ids)  # one supervisor per task


def test_a_task_killed_in_the_turn_it_arrived_in_is_killed_without_being_started(tmp_path: Path) -> None:
    from tessera.agent.config import AgentConfig, resolve
    from tessera.agent.executor.isolation import RlimitIsolator
    from tessera.agent.executor.launcher import ProcessLauncher
    from tessera.agent.runtime.agent import Agent

    config = resolve(AgentConfig(masters=("127.0.0.1:1",), data_dir=tmp_path / "agent",
                                 resources="cpus:2;mem:1024;disk:1024", hostname="test-host"))
    cp = Checkpoint.open(tmp_path / "agent" / "agent.db")
    launcher = ProcessLauncher(config.work_dir, RlimitIsolator())
    agent = Agent(config, cp, launcher, isolator_name="rlimits")
    agent.registered = True  # no stream: updates stay queued
    try:
        with cp.batch():  # one turn of the loop: RunTask and KillTask arrived together
            agent.on_run_task(agent_pb2.RunTask(task=task("t1", "touch ran")))
            agent.on_kill_task(agent_pb2.KillTask(task_id="t1", framework_id="fw-1", grace_period_seconds=1))
            agent._start_launches()
        assert [u.status.state for u in cp.updates(TaskKey("fw-1", "t1"))] == [common_pb2.TASK_KILLED]
        sandbox = config.work_dir / "fw-1" / "t1"
        assert not (sandbox / "launch.json").exists() and not (sandbox / "sandbox" / "ran").exists()
        assert TaskKey("fw-1", "t1") not in agent.handles and launcher.fork_server is not None and launcher.fork_server.pid is None
    finally:
        launcher.close()
        cp.close()
