"""Emulated agents against the fake master: many agents in one process register, heartbeat, report
STARTING/RUNNING/FINISHED without running anything, honour kills and terms, re-register after a drop."""

from __future__ import annotations

from tessera.agent.emulated import EmulatedAgents, EmulatedConfig
from tessera.v1 import agent_pb2, common_pb2
from tests.unit.agent.fake_master import FakeMaster


def config(master: FakeMaster, **kw: object) -> EmulatedConfig:
    settings: dict[str, object] = dict(masters=(master.address,), count=20, heartbeat_interval=0.2,
                                       task_duration=0.2, status_retry_initial=0.2, status_retry_max=1.0,
                                       reconnect_backoff_max=0.5, seed=7, attributes="rack:r9")
    settings.update(kw)
    return EmulatedConfig(**settings)  # type: ignore[arg-type]


def task(task_id: str) -> common_pb2.TaskInfo:
    return common_pb2.TaskInfo(task_id=task_id, framework_id="fw",
                               command=common_pb2.CommandInfo(shell=True, value="this never runs"))


def test_many_emulated_agents_register_once_each_and_heartbeat(fake_master: FakeMaster) -> None:
    with EmulatedAgents(config(fake_master, count=20)) as agents:
        stats = agents.wait_registered(timeout=30)
        fake_master.wait_for(lambda: fake_master.heartbeats >= 40, what="heartbeats from the agents")
        ids = agents.agent_ids()
    assert stats.registered == 20 and len(set(ids)) == 20
    hostnames = {r.info.hostname for r in fake_master.registers}
    assert hostnames == {f"emulated-{i}" for i in range(1, 21)}
    assert all(r.agent_id == "" and r.info.isolator == "emulated" for r in fake_master.registers)
    assert {(a.key, a.value) for r in fake_master.registers for a in r.info.attributes} == {("rack", "r9")}
    assert len(stats.first_registration_seconds) == 20


def test_emulated_task_reports_starting_running_finished(fake_master: FakeMaster) -> None:
    with EmulatedAgents(config(fake_master, count=3)) as agents:
        agents.wait_registered(timeout=30)
        fake_master.run_task(task("t1"))
        fake_master.wait_for(lambda: "TASK_FINISHED" in fake_master.states_of("t1"), what="TASK_FINISHED")
        stats = agents.wait(lambda s: s.updates_acked >= 3, timeout=10, what="acks")
    assert fake_master.states_of("t1") == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    assert stats.tasks_launched == 1 and stats.tasks_finished == 1


def test_a_health_checked_emulated_task_reports_healthy_once_after_running(fake_master: FakeMaster) -> None:
    checked = task("web")
    checked.health_check.CopyFrom(common_pb2.HealthCheck(type=common_pb2.HealthCheck.TCP,
                                                         tcp=common_pb2.HealthCheck.TCPCheckInfo(port=31000)))
    with EmulatedAgents(config(fake_master, count=1)) as agents:
        agents.wait_registered(timeout=30)
        fake_master.run_task(checked)
        fake_master.wait_for(lambda: "TASK_FINISHED" in fake_master.states_of("web"), what="TASK_FINISHED")
    assert fake_master.states_of("web") == ["TASK_STARTING", "TASK_RUNNING", "TASK_RUNNING", "TASK_FINISHED"]
    healthy = [u.status for u in fake_master.updates if u.status.task_id == "web" and u.status.HasField("healthy")]
    assert {(s.healthy, s.reason) for s in healthy} == {(True, "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED")}


def test_emulated_kill_and_term_fencing(fake_master: FakeMaster) -> None:
    fake_master.term = 4
    with EmulatedAgents(config(fake_master, count=1, task_duration=60)) as agents:
        agents.wait_registered(timeout=30)
        fake_master.run_task(task("old"), term=3)  # a deposed leader: ignored
        fake_master.run_task(task("long"))
        fake_master.wait_for(lambda: "TASK_RUNNING" in fake_master.states_of("long"), what="RUNNING")
        fake_master.kill_task("long", framework_id="fw", term=2)  # ignored as well
        fake_master.kill_task("long", framework_id="fw")
        fake_master.wait_for(lambda: "TASK_KILLED" in fake_master.states_of("long"), what="TASK_KILLED")
        stats = agents.stats()
    assert fake_master.states_of("old") == []
    assert fake_master.states_of("long") == ["TASK_STARTING", "TASK_RUNNING", "TASK_KILLING", "TASK_KILLED"]
    assert stats.ignored_commands == 2


def test_emulated_agents_reregister_with_their_tasks_and_resend_unacked_updates(fake_master: FakeMaster) -> None:
    fake_master.ack_updates = False
    with EmulatedAgents(config(fake_master, count=1, task_duration=60)) as agents:
        agents.wait_registered(timeout=30)
        fake_master.run_task(task("t1"))
        fake_master.wait_for(lambda: len(fake_master.updates) >= 2, what="the head re-sent")
        assert {u.status.state for u in fake_master.updates} == {common_pb2.TASK_STARTING}
        fake_master.ack_updates = True
        fake_master.drop_stream()
        fake_master.wait_for(lambda: len(fake_master.registers) >= 2, what="re-registration")
        rereg = fake_master.registers[1]
        assert rereg.agent_id == agents.agent_ids()[0]
        assert [(s.task_id, s.state) for s in rereg.tasks] == [("t1", common_pb2.TASK_RUNNING)]
        stats = agents.wait(lambda s: s.updates_acked >= 1 and s.pending_updates == 0, timeout=10,
                            what="the reported RUNNING acknowledged")
        assert stats.updates_superseded == 1  # STARTING: the master recorded RUNNING at re-registration
        fake_master.send(agent_pb2.MasterMessage(shutdown=agent_pb2.Shutdown(reason="bench over")))
        fake_master.wait_for(lambda: "TASK_KILLED" in fake_master.states_of("t1"), what="killed at shutdown")
