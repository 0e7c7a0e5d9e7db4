"""Errors raised by the event log.

One tree (`EventLogError`) for the stores and the history modules (replay, time points, timelines,
event files). They are plain values the API layer maps to status codes in one place,
control_plane/api/errors.py (`HistoryPruned` → OUT_OF_RANGE, naming where kept history starts;
`EventStoreClosed` → UNAVAILABLE; the `HistoryError`s as their docstrings say). No message text is
meant to be matched: callers look at the type and the attributes.
"""

from __future__ import annotations


class EventLogError(Exception):
    """Base class of every error the event log raises on purpose."""


class HistoryPruned(EventLogError):
    """A read asked for events older than the first one retention kept.

    Raised instead of silently starting later, so a follower that resumes from an old index learns that
    it missed history. `first_kept` is where it can resume from.
    """

    def __init__(self, first_kept: int) -> None:
        # args == (first_kept,) keeps the exception picklable and comparable in tests.
        super().__init__(first_kept)
        self.first_kept = first_kept

    def __str__(self) -> str:
        return f"event history before seq {self.first_kept} was pruned"


class EventStoreClosed(EventLogError):
    """The store was closed: it answers no reads and runs no prunes (appends are dropped, see
    `EventStore.append`)."""


# ---- history: rebuilding states, time points, timelines, event files ----------------------------------
class HistoryError(EventLogError):
    """Base of what the history modules raise on purpose; `str()` is one sentence for an operator.

    The API maps it once (control_plane/api/errors.py): FAILED_PRECONDITION unless a subclass says
    otherwise (`PointOutOfRange`, `AmbiguousTask`: INVALID_ARGUMENT; `HistoryUnavailable` with
    `pruned`: OUT_OF_RANGE, like `HistoryPruned`).
    """


class PointOutOfRange(HistoryError):
    """An index beyond the log, a time in the future or before the first event, a malformed point."""


class HistoryUnavailable(HistoryError):
    """The history needed is not here: pruned (and no snapshot covers it) or a hole in this master's log.

    `first_available` is the first index whose state this source can still rebuild (0 when none);
    `pruned` says the history is gone because retention pruned it (not a hole).
    """

    def __init__(self, message: str, first_available: int = 0, pruned: bool = False) -> None:
        super().__init__(message)
        self.first_available = first_available
        self.pruned = pruned


class AmbiguousTask(HistoryError):
    """A bare task id that tasks of several frameworks use (task ids are scoped per framework)."""

    def __init__(self, task_id: str, framework_ids: list[str]) -> None:
        super().__init__(f"task id {task_id} is used by {len(framework_ids)} frameworks "
                         f"({', '.join(framework_ids)}); name one as FRAMEWORK_ID/{task_id}")
        self.task_id = task_id
        self.framework_ids = framework_ids


class ReplayError(HistoryError):
    """The recorded history does not replay: unknown event type, corrupt payload or a divergence."""


class EventFileError(HistoryError):
    """A path that is not a readable Tessera event log."""
