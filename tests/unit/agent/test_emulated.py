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


def test_emulated_agents_can_be_named_by_distinct_loopback_addresses(fake_master: FakeMaster) -> None:
    with EmulatedAgents(config(fake_master, count=3, loopback_hostnames=True)) as agents:
        agents.wait_registered(timeout=30)
    assert sorted(r.info.hostname for r in fake_master.registers) == ["127.100.0.1", "127.100.0.2", "127.100.0.3"]


def test_emulated_task_reports_starting_running_finished(fake_master: FakeMaster) -> None:
    with EmulatedAgents(config(fake_master, count=3)) as agents:
        agents.wait_registered(timeout=30)
        fake_master.run_task(task("t1"))
        fake_master.wait_for(lambda: "TASK_FINISHED" in fake_master.states_of("t1"), what="TASK_FINISHED")
        stats = agents.wait(lambda s: s.updates_acked >= 3, timeout=10, what="acks")
    assert fake_master.states_of("t1") == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    assert stats.tasks_launched == 1 and stats.tasks_finished == 1


def checked_task(task_id: str, *, delay: float = 0.3, interval: float = 0.05, grace: float = 10.0,
                 failures: int = 3) -> common_pb2.TaskInfo:
    info = task(task_id)
    info.health_check.CopyFrom(common_pb2.HealthCheck(
        type=common_pb2.HealthCheck.TCP, tcp=common_pb2.HealthCheck.TCPCheckInfo(port=31000),
        delay_seconds=delay, interval_seconds=interval, timeout_seconds=interval, grace_period_seconds=grace,
        consecutive_failures=failures))
    return info


def health_statuses(master: FakeMaster, task_id: str) -> list[common_pb2.TaskStatus]:
    """The task's statuses that carry `healthy`, once per uuid, in the order received."""
    seen: dict[str, common_pb2.TaskStatus] = {}
    with master.lock:
        for u in master.updates:
            if u.status.task_id == task_id and u.status.HasField("healthy"):
                seen.setdefault(u.status.uuid, u.status)
    return list(seen.values())


def test_a_health_checked_emulated_task_reports_healthy_once_after_its_delay(fake_master: FakeMaster) -> None:
    with EmulatedAgents(config(fake_master, count=1, task_duration=1.5)) as agents:
        agents.wait_registered(timeout=30)
        fake_master.run_task(checked_task("web", delay=0.3, interval=0.05))
        fake_master.wait_for(lambda: "TASK_FINISHED" in fake_master.states_of("web"), what="TASK_FINISHED")
        stats = agents.stats()
    assert fake_master.states_of("web") == ["TASK_STARTING", "TASK_RUNNING", "TASK_RUNNING", "TASK_FINISHED"]
    healthy = health_statuses(fake_master, "web")
    assert [(s.healthy, s.reason) for s in healthy] == [(True, "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED")]
    running = next(u.status for u in fake_master.updates if u.status.state == common_pb2.TASK_RUNNING)
    assert healthy[0].timestamp - running.timestamp >= 0.3 - 0.01  # the first check waits for the delay
    # the checker went on checking every interval; none of those checks was a change, so none was sent
    assert stats.health_checks > 3 and stats.health_changes == 1


def test_failures_within_the_grace_period_are_not_reported(fake_master: FakeMaster) -> None:
    probe = lambda task_id, n: n > 4  # noqa: E731 - the first four checks fail, then they pass
    with EmulatedAgents(config(fake_master, count=1, task_duration=None, health_probe=probe)) as agents:
        agents.wait_registered(timeout=30)
        fake_master.run_task(checked_task("web", delay=0.0, interval=0.05, grace=30.0, failures=2))
        fake_master.wait_for(lambda: health_statuses(fake_master, "web"), what="a health status")
        agents.wait(lambda s: s.health_checks >= 8, timeout=10, what="more checks")
    assert [s.healthy for s in health_statuses(fake_master, "web")] == [True]
    assert fake_master.states_of("web") == ["TASK_STARTING", "TASK_RUNNING", "TASK_RUNNING"]


def test_a_health_flip_is_reported_once_each_way_and_failing_checks_kill_the_task(fake_master: FakeMaster) -> None:
    # pass, pass, fail (counts: past the first pass), pass, then fail until the third failure in a row kills
    probe = lambda task_id, n: n in (1, 2, 4)  # noqa: E731
    with EmulatedAgents(config(fake_master, count=1, task_duration=None, health_probe=probe)) as agents:
        agents.wait_registered(timeout=30)
        fake_master.run_task(checked_task("web", delay=0.0, interval=0.05, grace=0.0, failures=3))
        fake_master.wait_for(lambda: "TASK_KILLED" in fake_master.states_of("web"), what="TASK_KILLED")
        ended = agents.stats()
        agents.wait(lambda s: s.updates_acked >= 8, timeout=10, what="acks")
        after = agents.stats()
    statuses = health_statuses(fake_master, "web")
    assert [(common_pb2.TaskState.Name(s.state), s.healthy, s.reason) for s in statuses] == [
        ("TASK_RUNNING", True, "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED"),
        ("TASK_RUNNING", False, "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED"),
        ("TASK_RUNNING", True, "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED"),
        ("TASK_RUNNING", False, "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED"),  # once for the run of failures
        ("TASK_KILLING", False, "REASON_TASK_UNHEALTHY"),
        ("TASK_KILLED", False, "REASON_TASK_UNHEALTHY"),
    ]
    assert "3 consecutive failed health checks" in statuses[-1].message
    assert ended.health_checks == 7 and ended.health_changes == 4
    assert after.health_checks == 7  # a killed task is checked no more


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
