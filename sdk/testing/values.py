"""What a test of `FakeMaster` scripts (`StatusStep`, `Behaviour`, `runs_and_finishes`) and reads
(`AgentView`, `TaskView`, `FrameworkView`: frozen snapshots, taken under the fake's lock)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from tessera.sdk.types import FrameworkInfo, Resources, TaskInfo, TaskState, TaskStatus

__all__ = ["AgentView", "Behaviour", "FrameworkView", "StatusStep", "TaskView", "runs_and_finishes"]


@dataclass(frozen=True)
class StatusStep:
    """One scripted status of a task (see `FakeMaster(behaviour=...)`)."""

    state: TaskState
    exit_code: int | None = None
    message: str = ""
    reason: str = ""
    healthy: bool | None = None  # a health-check update (TASK_RUNNING) or the end of an unhealthy task


Behaviour = Callable[[TaskInfo], Iterable[TaskState | StatusStep]]


def runs_and_finishes(task: TaskInfo) -> list[TaskState | StatusStep]:
    """A behaviour: every task starts, runs and exits 0."""
    return [TaskState.TASK_STARTING, TaskState.TASK_RUNNING,
            StatusStep(TaskState.TASK_FINISHED, exit_code=0, message="command exited with status 0")]


# ---- views (what a test reads) -------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentView:
    agent_id: str
    hostname: str
    resources: Resources
    attributes: Mapping[str, str]
    used: Resources
    offered: Resources
    removed: bool


@dataclass(frozen=True)
class TaskView:
    info: TaskInfo
    framework_id: str
    agent_id: str
    state: TaskState
    statuses: tuple[TaskStatus, ...]
    kill_requested: bool


@dataclass(frozen=True)
class FrameworkView:
    framework_id: str
    info: FrameworkInfo
    connected: bool
    stream_id: str
    suppressed_roles: frozenset[str]
    refused_agents: Mapping[str, float]
    removed: str | None
    unacknowledged: tuple[TaskStatus, ...]
    subscriptions: int
    lease_term: int = 0
    standbys: int = 0  # standby subscriptions waiting for its lease
