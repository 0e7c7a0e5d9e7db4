"""The health checker's state machine and the agent's health statuses (agent/core/health.py): pure, so the
times here are plain numbers, and nothing runs."""

from __future__ import annotations

import dataclasses

from tessera.agent.core import health as machine
from tessera.agent.core.health import HealthChange, HealthState, health_outcomes, reported_health
from tessera.agent.core.tasks import ExitRecord, terminal_status
from tessera.control_plane.core.values import HealthCheck, HealthCheckType, TaskState, TaskStatus, TcpCheck

CHECK = HealthCheck(type=HealthCheckType.TCP, tcp=TcpCheck(80), delay_seconds=5.0, interval_seconds=2.0,
                    timeout_seconds=1.0, grace_period_seconds=10.0, consecutive_failures=3)


class Checker:
    """Drives the machine as the supervisor's thread would: each check takes `took` seconds."""

    def __init__(self, check: HealthCheck = CHECK, started_at: float = 100.0) -> None:
        self.check = check
        self.state = machine.start(check, started_at)
        self.changes: list[HealthChange] = []
        self.times: list[float] = []

    def result(self, ok: bool, took: float = 0.1, message: str = "m") -> list[HealthChange]:
        began = machine.due(self.state)
        assert began is not None, "no check is due: the task is to be killed"
        self.times.append(began)
        step = machine.on_result(self.check, self.state, ok=ok, message=message, began=began, ended=began + took)
        self.state = step.state
        self.changes.extend(step.changes)
        return list(step.changes)


def test_the_first_check_starts_after_the_delay_and_the_next_an_interval_after_each_start() -> None:
    checker = Checker()
    assert machine.due(checker.state) == 105.0
    checker.result(True, took=0.5)
    checker.result(True, took=0.5)
    checker.result(True, took=0.5)
    assert checker.times == [105.0, 107.0, 109.0]


def test_a_late_result_moves_the_next_check_to_when_it_came() -> None:
    checker = Checker()
    checker.result(True, took=3.5)  # longer than the interval (the probe overran its timeout)
    assert machine.due(checker.state) == 108.5


def test_the_first_success_is_reported_once_and_later_ones_are_not() -> None:
    checker = Checker()
    first = checker.result(True, message="GET /: 200")
    assert first == [HealthChange(True, "health check passed: GET /: 200")]
    for _ in range(10):
        assert checker.result(True) == []
    assert checker.state.healthy is True and checker.state.failures == 0


def test_failures_before_the_first_success_inside_the_grace_period_are_ignored() -> None:
    checker = Checker()  # grace: 10 s from 100; checks at 105, 107, 109 end inside it
    for _ in range(3):
        assert checker.result(False) == []
    assert checker.state.failures == 0 and checker.state.healthy is None and not checker.state.killing
    # 111: past the grace period, a failure counts and is reported, once
    assert [c.healthy for c in checker.result(False)] == [False]
    assert checker.state.failures == 1


def test_the_grace_period_ends_for_good_with_the_first_success() -> None:
    checker = Checker()
    checker.result(True)  # 105: inside the grace period, but a success ends it
    changes = checker.result(False)  # 107: still within 10 s of the start, and it counts
    assert [c.healthy for c in changes] == [False] and checker.state.failures == 1


def test_a_grace_period_shorter_than_the_delay_has_no_effect() -> None:
    checker = Checker(dataclasses.replace(CHECK, grace_period_seconds=1.0))
    assert [c.healthy for c in checker.result(False)] == [False]  # the first check is already past it


def test_a_run_of_failures_is_reported_once_and_kills_at_the_limit() -> None:
    checker = Checker(dataclasses.replace(CHECK, grace_period_seconds=0.0))
    first = checker.result(False, message="refused")
    assert len(first) == 1 and not first[0].healthy and "1 of 3" in first[0].message and "refused" in first[0].message
    assert checker.result(False) == []  # the second failure: no change to report
    last = checker.result(False, message="still refused")
    assert [(c.healthy, c.kill) for c in last] == [(False, True)]
    assert "3 consecutive failed health checks" in last[0].message and "still refused" in last[0].message
    assert checker.state.killing and machine.due(checker.state) is None


def test_a_success_resets_the_count_and_is_reported_as_a_change() -> None:
    checker = Checker(dataclasses.replace(CHECK, grace_period_seconds=0.0))
    checker.result(True)
    checker.result(False)
    checker.result(False)
    assert [c.healthy for c in checker.result(True)] == [True]
    assert checker.state.failures == 0
    checker.result(False)
    checker.result(False)
    assert not checker.state.killing  # two in a row again, not four
    assert [c.healthy for c in checker.changes] == [True, False, True, False]


def test_one_allowed_failure_reports_unhealthy_and_the_kill_together() -> None:
    checker = Checker(dataclasses.replace(CHECK, grace_period_seconds=0.0, consecutive_failures=1))
    checker.result(True)
    assert [(c.healthy, c.kill) for c in checker.result(False)] == [(False, False), (False, True)]


def test_a_result_after_the_kill_changes_nothing() -> None:
    state = HealthState(started_at=0.0, next_check_at=1.0, healthy=False, failures=3, killing=True)
    step = machine.on_result(CHECK, state, ok=True, message="m", began=1.0, ended=1.1)
    assert step.state == state and step.changes == ()


# ---- the agent's statuses ---------------------------------------------------------------------------------

def test_each_change_becomes_one_running_status_unless_the_statuses_say_it_already() -> None:
    changes = [HealthChange(True, "up"), HealthChange(False, "down"), HealthChange(False, "still down")]
    outcomes = health_outcomes(TaskState.TASK_RUNNING, None, changes)
    assert [(o.state, o.healthy, o.reason) for o in outcomes] == [
        (TaskState.TASK_RUNNING, True, "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED"),
        (TaskState.TASK_RUNNING, False, "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED")]
    assert health_outcomes(TaskState.TASK_RUNNING, True, [HealthChange(True, "up")]) == []


def test_the_kill_follows_the_unhealthy_status_as_task_killing() -> None:
    changes = [HealthChange(False, "down"), HealthChange(False, "killed after 3", kill=True)]
    outcomes = health_outcomes(TaskState.TASK_RUNNING, True, changes)
    assert [(o.state, o.healthy, o.reason) for o in outcomes] == [
        (TaskState.TASK_RUNNING, False, "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED"),
        (TaskState.TASK_KILLING, False, "REASON_TASK_UNHEALTHY")]
    # after an agent restart only the kill may be left to read: the unhealthy status still comes first
    alone = health_outcomes(TaskState.TASK_RUNNING, True, [HealthChange(False, "killed after 3", kill=True)])
    assert [o.state for o in alone] == [TaskState.TASK_RUNNING, TaskState.TASK_KILLING]


def test_a_task_that_is_not_running_gets_no_health_statuses() -> None:
    for state in (TaskState.TASK_STARTING, TaskState.TASK_KILLING, TaskState.TASK_FINISHED):
        assert health_outcomes(state, None, [HealthChange(True, "up")]) == []


def test_the_reported_health_is_the_newest_statuss() -> None:
    assert reported_health(None) is None
    assert reported_health(TaskStatus(task_id="t", state=TaskState.TASK_RUNNING)) is None
    assert reported_health(TaskStatus(task_id="t", state=TaskState.TASK_RUNNING, healthy=False)) is False


def test_a_task_its_supervisor_killed_for_failing_its_check_ends_killed_and_unhealthy() -> None:
    record = ExitRecord(signal=15, killed=True, unhealthy="killed after 3 consecutive failed health checks")
    outcome = terminal_status(record, kill_requested=False, sandbox="/s")
    assert (outcome.state, outcome.reason, outcome.healthy) == (TaskState.TASK_KILLED, "REASON_TASK_UNHEALTHY", False)
    assert outcome.message.startswith("killed after 3 consecutive failed health checks (signal SIGTERM)")
    # a memory limit still wins, and a plain kill says nothing about health
    assert terminal_status(dataclasses.replace(record, limitation="over"), False).state is TaskState.TASK_FAILED
    plain = terminal_status(ExitRecord(signal=15, killed=True), kill_requested=True)
    assert (plain.reason, plain.healthy) == ("", None)
