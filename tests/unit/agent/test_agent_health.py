"""Health checks in the agent loop, against a fake master, with real supervisors running COMMAND checks: one
status per change of health, the kill for failing the check, and no change reported twice (or lost)
across an agent restart (agent/runtime/launches.py, agent/executor/health.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tessera.v1 import common_pb2
from tests.unit.agent.conftest import AgentFactory, RunningAgent
from tests.unit.agent.fake_master import FakeMaster

Start = Callable[..., RunningAgent]
HEALTH_UPDATED = "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED"


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Start]:
    factory = AgentFactory(tmp_path)
    yield factory
    factory.stop_all()


def checked_task(task_id: str, marker: Path, failures: int = 1000) -> common_pb2.TaskInfo:
    """A task that sleeps, checked by `test -f MARKER` every 0.1 s: healthy while the marker exists."""
    return common_pb2.TaskInfo(
        task_id=task_id, framework_id="fw-1", command=common_pb2.CommandInfo(shell=True, value="exec sleep 600"),
        resources=[common_pb2.Resource(name="cpus", scalar=0.1), common_pb2.Resource(name="mem", scalar=32)],
        kill_grace_period_seconds=0.5,
        health_check=common_pb2.HealthCheck(
            type=common_pb2.HealthCheck.COMMAND, command=common_pb2.CommandInfo(shell=True, value=f"test -f {marker}"),
            delay_seconds=0, interval_seconds=0.1, timeout_seconds=0.1, grace_period_seconds=0,
            consecutive_failures=failures))


def health_statuses(master: FakeMaster, task_id: str) -> list[common_pb2.TaskStatus]:
    """The task's statuses that carry health, each uuid once, in the order received."""
    with master.lock:
        seen: dict[str, common_pb2.TaskStatus] = {}
        for u in master.updates:
            if u.status.task_id == task_id and u.status.HasField("healthy"):
                seen.setdefault(u.status.uuid, u.status)
        return list(seen.values())


def health_file(root: Path) -> dict[str, object]:
    (path,) = root.rglob("health.json")
    return json.loads(path.read_text())


def test_each_change_of_health_is_one_status_and_the_kill_ends_the_task_unhealthy(
        fake_master: FakeMaster, start_agent: Start, tmp_path: Path) -> None:
    marker = tmp_path / "up"
    marker.write_text("")
    start_agent([fake_master.address])
    fake_master.wait_for(lambda: fake_master.heartbeats > 0, what="registration")
    fake_master.run_task(checked_task("t1", marker, failures=3))
    fake_master.wait_for(lambda: health_statuses(fake_master, "t1"), what="the first health status")
    marker.unlink()
    fake_master.wait_for(lambda: "TASK_KILLED" in fake_master.states_of("t1"), what="the kill", timeout=20)
    assert fake_master.states_of("t1") == ["TASK_STARTING", "TASK_RUNNING", "TASK_RUNNING", "TASK_RUNNING",
                                           "TASK_KILLING", "TASK_KILLED"]
    statuses = health_statuses(fake_master, "t1")
    assert [(s.state, s.healthy, s.reason) for s in statuses] == [
        (common_pb2.TASK_RUNNING, True, HEALTH_UPDATED), (common_pb2.TASK_RUNNING, False, HEALTH_UPDATED),
        (common_pb2.TASK_KILLING, False, "REASON_TASK_UNHEALTHY"), (common_pb2.TASK_KILLED, False, "REASON_TASK_UNHEALTHY")]
    assert "exit status 1" in statuses[1].message


def test_a_restarted_agent_reports_what_changed_while_it_was_down_once_and_nothing_twice(
        fake_master: FakeMaster, start_agent: Start, tmp_path: Path) -> None:
    marker = tmp_path / "up"
    marker.write_text("")
    data_dir = tmp_path / "agent"
    first = start_agent([fake_master.address], data_dir=data_dir)
    fake_master.wait_for(lambda: fake_master.heartbeats > 0, what="registration")
    fake_master.run_task(checked_task("t1", marker))
    fake_master.wait_for(lambda: health_statuses(fake_master, "t1"), what="healthy")
    assert first.stop() == 0  # the task and its checks go on

    # down, then up again, while the agent is away: the newest health (healthy) is what it reported
    marker.unlink()
    fake_master.wait_for(lambda: health_file(data_dir)["seq"] == 2, what="the checker to see it fail")
    marker.write_text("")
    fake_master.wait_for(lambda: health_file(data_dir)["seq"] == 3, what="the checker to see it pass")
    second = start_agent([fake_master.address], data_dir=data_dir)
    fake_master.wait_for(lambda: len(fake_master.registers) >= 2, what="re-registration")
    # unhealthy while the agent is away again: reported once after the restart
    assert second.stop() == 0
    marker.unlink()
    fake_master.wait_for(lambda: health_file(data_dir)["seq"] == 4, what="the checker to see it fail again")
    start_agent([fake_master.address], data_dir=data_dir)
    fake_master.wait_for(lambda: len(health_statuses(fake_master, "t1")) >= 2, what="the unhealthy status")
    marker.write_text("")
    fake_master.wait_for(lambda: len(health_statuses(fake_master, "t1")) >= 3, what="healthy again")
    fake_master.kill_task("t1")
    fake_master.wait_for(lambda: "TASK_KILLED" in fake_master.states_of("t1"), what="the kill")
    assert [s.healthy for s in health_statuses(fake_master, "t1")] == [True, False, True]
