"""Every task of a history, finished ones included (`tessera tasks --all`): one row per task, folded from
the task events of the event log.

The master's state forgets a task some time after it ended (it keeps the last `completed_tasks` only),
but the event log keeps every launch and status update, so the rows are rebuilt from there: a task's
`TaskLaunched` gives its description, agent and launch time; each `TaskStatusUpdated` its state and
latest status; a `TaskKillRequested` marks it asked to end. Records come from any `HistorySource` (a
master over `ListEvents`, an events.db file) in index order; the fold is pure and the same for both.

Rules:
- Task ids are scoped per framework: a row is keyed by (framework id, task id).
- A task whose launch is older than the history kept (pruned by retention) still gets a row from its
  later events, without a description (`info` None, `launched_at` 0).
- A record that does not decode (a newer version's payload) is skipped and counted in `skipped`; the
  fold never fails on history.
- A row is `ended` once a terminal state is recorded; `ended_at` is that update's time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from tessera.control_plane.core.events import TaskKillRequested, TaskLaunched, TaskStatusUpdated
from tessera.control_plane.core.lifecycle import INITIAL_STATE, is_terminal
from tessera.control_plane.core.values import TaskInfo, TaskState, TaskStatus
from tessera.control_plane.eventlog.decode import event_from_record
from tessera.control_plane.eventlog.errors import ReplayError
from tessera.control_plane.eventlog.records import EventFilter, EventRecord

__all__ = ["TASK_EVENT_TYPES", "TaskHistory", "TaskRow", "task_filter", "task_history"]

TASK_EVENT_TYPES = ("TaskLaunched", "TaskStatusUpdated", "TaskKillRequested")


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One task as its events tell it."""

    framework_id: str
    task_id: str
    agent_id: str
    state: TaskState
    info: TaskInfo | None = None  # None: its launch is older than the history kept
    last_status: TaskStatus | None = None
    launched_at: float = 0.0  # 0: not in the history kept
    ended_at: float = 0.0  # 0: not ended
    kill_requested: bool = False
    last_index: int = 0  # the last event about it

    @property
    def ended(self) -> bool:
        return is_terminal(self.state)


@dataclass(frozen=True, slots=True)
class TaskHistory:
    rows: tuple[TaskRow, ...]  # by first appearance (launch order)
    first_index: int  # the first event index the fold saw (0: none)
    last_index: int
    skipped: int  # records that did not decode


def task_filter(framework_id: str = "", task_id: str = "") -> EventFilter:
    """The records `task_history` needs, optionally about one framework or task id only."""
    return EventFilter(types=TASK_EVENT_TYPES, framework_id=framework_id, task_id=task_id)


def task_history(records: Iterable[EventRecord]) -> TaskHistory:
    """Fold task events (in index order) into one row per task; other records are ignored."""
    rows: dict[tuple[str, str], TaskRow] = {}
    first = last = skipped = 0
    for record in records:
        if record.type not in TASK_EVENT_TYPES:
            continue
        first = first or record.seq
        last = record.seq
        try:
            event = event_from_record(record)
        except ReplayError:
            skipped += 1
            continue
        key = (event.framework_id, event.task_id)
        row = rows.get(key) or TaskRow(event.framework_id, event.task_id, event.agent_id, INITIAL_STATE)
        if isinstance(event, TaskLaunched):
            row = replace(row, agent_id=event.agent_id, info=event.task, launched_at=record.time)
        elif isinstance(event, TaskStatusUpdated):
            ended_at = row.ended_at or (record.time if is_terminal(event.status.state) else 0.0)
            row = replace(row, agent_id=event.agent_id or row.agent_id, state=event.status.state,
                          last_status=event.status, ended_at=ended_at)
        elif isinstance(event, TaskKillRequested):
            row = replace(row, kill_requested=True)
        rows[key] = replace(row, last_index=record.seq)
    return TaskHistory(tuple(rows.values()), first, last, skipped)
