"""The port the history modules read: what replay, time points and timelines need from an event store.

`EventStore` (a master's live store) and `EventFile` (an events.db opened read-only) both provide it.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from typing import Protocol

from tessera.control_plane.eventlog.records import EventFilter, EventRecord

PAGE = 5_000  # records read per query while replaying

__all__ = ["ALL", "PAGE", "HistorySource", "SnapshotSink", "iter_records"]


class HistorySource(Protocol):
    """What history needs from an event store; `EventStore` and `EventFile` both provide it."""

    def first_seq(self) -> int: ...

    def last_seq(self) -> int: ...

    def list(
        self, from_seq: int = 1, limit: int = 100, flt: EventFilter = ..., descending: bool = False
    ) -> builtins.list[EventRecord]: ...

    def nearest_snapshot(self, at_or_before_seq: int) -> tuple[int, bytes] | None: ...

    def seq_before_time(self, until: float) -> int | None: ...

    def snapshot_seq(self, at_or_before_seq: int) -> int | None: ...

    def gaps(self) -> builtins.list[tuple[int, int]]: ...


class SnapshotSink(Protocol):
    def put_snapshot(self, seq: int, blob: bytes) -> None: ...


ALL = EventFilter()


def iter_records(source: HistorySource, flt: EventFilter = ALL, from_seq: int | None = None,
                 until_seq: int | None = None) -> Iterator[EventRecord]:
    """Every stored record matching `flt` from `from_seq` (the first kept by default), page by page."""
    cursor = source.first_seq() if from_seq is None else from_seq
    while True:
        page = source.list(from_seq=cursor, limit=PAGE, flt=flt)
        for r in page:
            if until_seq is not None and r.seq > until_seq:
                return
            yield r
        if len(page) < PAGE:
            return
        cursor = page[-1].seq + 1
