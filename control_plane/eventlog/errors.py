"""Errors raised by the event log.

They are plain values the API layer maps to status codes (`HistoryPruned` → a resumable-stream error
that names where kept history starts; `EventStoreClosed` → unavailable). No message text is meant to
be matched: callers look at the type and the attributes.
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
