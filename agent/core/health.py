"""Health checks of one task: when to check, what a result means, and which statuses tell the master.

Pure: no I/O, no clock, no threads. Times are inputs (seconds on one monotonic clock); the checks
themselves run elsewhere (`tessera.agent.executor.health`, in the task's supervisor), and so does the
agent's reading of what they found (`tessera.agent.runtime.launches`). Mesos' health checker and its
executors are the model (docs/health-checks.md).

The checker's rules (`start`, `due`, `on_result`):
- The first check starts `delay_seconds` after the task started; each next one `interval_seconds` after
  the start of the one before (the master refuses a timeout above the interval, so a check is over by
  then; a late result moves the next check to when it came).
- A failure before the task's first success, within `grace_period_seconds` of its start, is ignored: not
  counted, not reported. Once a check has passed, the grace period is over for good (Mesos).
- Other failures count; a success resets the count.
- Health is reported only when it changes: the first result that counts, healthy or not, then every
  flip. A run of failures is reported once, at its first failure (Mesos reports every failure).
- At `consecutive_failures` failures in a row the task is to be killed, once; no check runs after that.

The agent's rule (`health_outcomes`): each change the checker recorded becomes a TASK_RUNNING status with
`healthy` and reason REASON_TASK_HEALTH_CHECK_STATUS_UPDATED, unless it repeats the health the task's
statuses already say (so a change is reported once, also across agent restarts); the kill becomes
TASK_KILLING with REASON_TASK_UNHEALTHY, after the unhealthy status. A task that is not RUNNING (still
starting, or being killed) gets no health statuses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from tessera.agent.core.tasks import Outcome
from tessera.control_plane.core.health_checks import (
    REASON_TASK_HEALTH_CHECK_STATUS_UPDATED,
    REASON_TASK_UNHEALTHY,
)
from tessera.control_plane.core.values import HealthCheck, TaskState, TaskStatus

__all__ = ["HealthChange", "HealthState", "Step", "due", "health_outcomes", "on_result", "reported_health", "start"]


@dataclass(frozen=True, slots=True)
class HealthState:
    """Where one task's checker is. `healthy` is the health last reported (None: none yet)."""

    started_at: float  # the task's start: the delay and the grace period count from here
    next_check_at: float
    healthy: bool | None = None
    failures: int = 0  # consecutive failures that counted
    passed: bool = False  # a check has passed: the grace period no longer applies
    killing: bool = False  # the task is to be killed: no more checks


@dataclass(frozen=True, slots=True)
class HealthChange:
    """One change for the agent to report: a new health, or (`kill`) the decision to kill the task."""

    healthy: bool
    message: str
    kill: bool = False


@dataclass(frozen=True, slots=True)
class Step:
    """What one result leads to: the checker's next state and the changes to record, in order."""

    state: HealthState
    changes: tuple[HealthChange, ...] = ()


def start(check: HealthCheck, started_at: float) -> HealthState:
    """The checker of a task that started at `started_at`."""
    return HealthState(started_at=started_at, next_check_at=started_at + check.delay_seconds)


def due(state: HealthState) -> float | None:
    """When the next check starts; None once the task is to be killed."""
    return None if state.killing else state.next_check_at


def on_result(check: HealthCheck, state: HealthState, *, ok: bool, message: str, began: float,
              ended: float) -> Step:
    """The checker after a check that began at `began` and ended at `ended` with `ok` (`message` says
    what it found)."""
    if state.killing:
        return Step(state)
    following = max(began + check.interval_seconds, ended)
    if ok:
        changes = () if state.healthy is True else (HealthChange(True, f"health check passed: {message}"),)
        return Step(replace(state, next_check_at=following, healthy=True, failures=0, passed=True), changes)
    if not state.passed and ended - state.started_at <= check.grace_period_seconds:
        return Step(replace(state, next_check_at=following))  # still starting up: ignored
    failures = state.failures + 1
    limit = check.consecutive_failures
    found: list[HealthChange] = []
    if state.healthy is not False:
        found.append(HealthChange(False, f"health check failed ({failures} of {limit} in a row kill the task): "
                                         f"{message}"))
    if failures >= limit:
        found.append(HealthChange(False, f"killed after {failures} consecutive failed health checks; the last: "
                                         f"{message}", kill=True))
        return Step(replace(state, healthy=False, failures=failures, killing=True), tuple(found))
    return Step(replace(state, next_check_at=following, healthy=False, failures=failures), tuple(found))


def reported_health(latest: TaskStatus | None) -> bool | None:
    """The health the task's statuses say: that of its newest status (None: no health reported yet).
    While it runs, a task's newest status is its TASK_RUNNING or the last health update after it."""
    return None if latest is None else latest.healthy


def health_outcomes(state: TaskState, reported: bool | None, changes: Iterable[HealthChange]) -> list[Outcome]:
    """The statuses that report `changes` (oldest first) of a task in `state` whose statuses say
    `reported` (see the module docstring)."""
    if state is not TaskState.TASK_RUNNING:
        return []
    out: list[Outcome] = []
    for change in changes:
        if change.healthy != reported:
            out.append(Outcome(TaskState.TASK_RUNNING, REASON_TASK_HEALTH_CHECK_STATUS_UPDATED,
                               change.message if not change.kill else f"unhealthy: {change.message}",
                               healthy=change.healthy))
            reported = change.healthy
        if change.kill:
            out.append(Outcome(TaskState.TASK_KILLING, REASON_TASK_UNHEALTHY, change.message, healthy=False))
            break
    return out
