"""The event store port: what every master's event history must offer, whatever keeps it.

Rules every implementation keeps (the contract tests in tests/unit/eventlog hold them to it):
- `append`, `append_spans` and `put_snapshot` only enqueue. They never touch the disk on the caller's
  thread, because the caller is the Raft apply thread, which must never block. One writer thread
  drains the queue in order. `flush` waits until everything enqueued so far is stored.
- Sequence numbers are the identity of an event. Appending a seq that is already stored is a no-op
  (the first version wins), so replaying the Raft log after a restart is harmless. A seq older than
  the first kept one (`first_seq`) is ignored too: pruned history never comes back.
- Reads see only stored events, are safe from any thread and never wait for the writer.
- History is never skipped silently: a listing that starts before `first_seq` raises `HistoryPruned`,
  and holes (a master that installed a Raft snapshot never saw the events before it) are reported
  by `gaps`.
- `last_seq` is the highest stored seq, and never less than `first_seq - 1`: after pruning
  everything up to N, a follower resumes at N.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Callable, Sequence
from typing import Self

from tessera.control_plane.eventlog.records import EventFilter, EventRecord, EventRow, SpanRecord

_NO_FILTER = EventFilter()


def list_start(from_seq: int, limit: int, descending: bool) -> int | None:
    """The arguments of `EventStore.list` as every implementation reads them: ValueError for a negative
    `limit`; None when the answer is empty whatever is stored (descending from below 1); else the seq
    to start from (a `from_seq` below 1 means 1)."""
    if limit < 0:
        raise ValueError("limit must be >= 0")
    if descending and from_seq < 1:
        return None
    return max(from_seq, 1)


class EventStore(abc.ABC):
    """Port: the per-master event history, its state snapshots and its tracing spans."""

    # -- writes (asynchronous) -------------------------------------------------------------------

    @abc.abstractmethod
    def append(self, records: Sequence[EventRecord]) -> None:
        """Enqueue events, given in increasing seq order. Never blocks on I/O.

        After `close` the records are dropped (counted, logged once) rather than raising: the caller
        is the Raft apply thread, which must not fail, and the Raft log replays them on restart.
        """

    def append_rows(self, rows: Sequence[EventRow]) -> None:
        """`append` of records given as plain tuples in `EVENT_COLUMNS` order: what the Raft apply thread
        uses, since a tuple costs a tenth of a 14-field frozen record to make, per event on every master.
        Stores that write rows as they are override this; the default makes the records."""
        self.append([EventRecord(*row) for row in rows])

    def append_rows_later(self, build: Callable[[], Sequence[EventRow]], count: int) -> None:
        """`append_rows(build())`, where the store may call `build` later, once, on its own writer thread, in
        the order of the appends: the Raft apply thread hands over what it applied, and the rows (the events'
        JSON payloads above all) are made off the thread that also receives, acknowledges and commits the
        next entries. `build` must only read values nobody changes afterwards; `count` is how many rows it
        makes (for batching and the backlog). This default builds them now."""
        self.append_rows(build())

    @abc.abstractmethod
    def append_spans(self, spans: Sequence[SpanRecord]) -> None:
        """Enqueue finished spans. A (trace_id, span_id) already stored is kept as it was."""

    @abc.abstractmethod
    def put_snapshot(self, seq: int, blob: bytes) -> None:
        """Enqueue the serialized state after applying event `seq`; replaces one at the same seq."""

    @abc.abstractmethod
    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything enqueued so far is stored.

        False on timeout, and also when anything enqueued so far could not be stored (see
        `last_error`): the caller must not believe it durable.
        """

    @abc.abstractmethod
    def wait(self, after_seq: int, timeout: float) -> int:
        """Block until `last_seq() > after_seq`, the timeout passes or the store closes.

        Returns `last_seq()`. This is what follow-mode streams sleep on.
        """

    @abc.abstractmethod
    def prune(self, before_seq: int) -> int:
        """Delete events with seq < before_seq and remember before_seq as the first kept seq.

        Snapshots that can no longer serve a kept seq (seq < before_seq - 1) go too, and so do spans
        that ended before the first kept event's time (before the last deleted event's time when no
        event is kept): tracing history is kept as long as event history, no longer. Runs in order
        with the queued appends and returns the number of events deleted. Never moves `first_seq`
        backwards; pruning past `last_seq` is allowed and means "history starts after here".
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Store everything enqueued, stop the writer thread and release resources. Idempotent."""

    # -- reads --------------------------------------------------------------------------------------

    @abc.abstractmethod
    def last_seq(self) -> int:
        """Highest stored seq, at least `first_seq() - 1`; 0 when nothing was ever stored."""

    @abc.abstractmethod
    def first_seq(self) -> int:
        """First seq retention kept; 1 when nothing was ever pruned."""

    @abc.abstractmethod
    def count(self) -> int:
        """Number of stored events."""

    @abc.abstractmethod
    def list(
        self,
        from_seq: int = 1,
        limit: int = 100,
        flt: EventFilter = _NO_FILTER,
        descending: bool = False,
    ) -> builtins.list[EventRecord]:
        """Up to `limit` events matching `flt`, starting at `from_seq`.

        Ascending: seq >= from_seq in increasing order (a from_seq below 1 means 1). Descending:
        seq <= from_seq in decreasing order (a from_seq below 1 gives nothing). Raises
        `HistoryPruned` when from_seq is older than `first_seq()`.
        """

    def snapshot_seq(self, at_or_before_seq: int) -> int | None:
        """The seq of `nearest_snapshot(at_or_before_seq)` (None: none), without reading its blob (the
        SQLite store reads only the seq: a snapshot is ~2.5 MB at 10,000 tasks)."""
        found = self.nearest_snapshot(at_or_before_seq)
        return found[0] if found is not None else None

    def seq_before_time(self, until: float) -> int | None:
        """The highest stored seq whose event was recorded before `until` (None: none); raises
        `HistoryPruned` when retention removed every event. Reads backwards from the last event (the
        SQLite store answers through `timeindex.TimeBlocks` instead)."""
        found = self.list(from_seq=max(self.last_seq(), 1), limit=1, flt=EventFilter(until_time=until),
                          descending=True)
        return found[0].seq if found else None

    @abc.abstractmethod
    def get(self, seq: int) -> EventRecord | None:
        """The stored event with this seq, or None (never stored, or pruned)."""

    @abc.abstractmethod
    def gaps(self) -> builtins.list[tuple[int, int]]:
        """Inclusive (first, last) ranges of seqs missing between `first_seq` and `last_seq`."""

    @abc.abstractmethod
    def nearest_snapshot(self, at_or_before_seq: int) -> tuple[int, bytes] | None:
        """The stored snapshot with the highest seq <= at_or_before_seq, as (seq, blob)."""

    @abc.abstractmethod
    def spans_for_trace(self, trace_id: str) -> builtins.list[SpanRecord]:
        """All stored spans of a trace, by start time (then span id)."""

    @abc.abstractmethod
    def traces_for_task(self, task_id: str, framework_id: str = "") -> builtins.list[str]:
        """Distinct trace ids of the spans and events that name the task, earliest first. With
        `framework_id` (task ids are scoped per framework): the traces of that framework's events about
        the task (spans, which name only the task id, count for the ordering of those traces)."""

    @abc.abstractmethod
    def trace_tasks(self, trace_id: str) -> builtins.list[str]:
        """Distinct task ids that the stored events and spans of a trace name, sorted."""

    @abc.abstractmethod
    def type_counts(self) -> dict[str, int]:
        """Number of stored events per type, sorted by type name."""

    # -- health -------------------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def last_error(self) -> BaseException | None:
        """The last error the writer hit (transient or not), for health reporting."""

    @abc.abstractmethod
    def backlog(self) -> int:
        """Records (events, spans, snapshots) enqueued and not yet stored; a gauge for metrics."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
