"""MemoryEventStore: the in-memory twin of the SQLite event store, for tests and throwaway masters.

It has the same semantics as `SqliteEventStore`, including the asynchronous append through a writer
thread and `flush`, so code tested against it behaves the same in production. It keeps everything in
dicts and sorted lists under one lock; it is not built for large histories (filtered listings scan).
"""

from __future__ import annotations

import builtins
import threading
from bisect import bisect_left, bisect_right, insort

from tessera.control_plane.eventlog.errors import HistoryPruned
from tessera.control_plane.eventlog.queued import Batch, QueuedEventStore
from tessera.control_plane.eventlog.records import EventFilter, EventRecord, SpanRecord
from tessera.control_plane.eventlog.store import _NO_FILTER, list_start


class MemoryEventStore(QueuedEventStore):
    """Event store kept in process memory; lost when the process ends."""

    def __init__(self) -> None:
        super().__init__(writer_name="tessera-eventlog-writer-memory")
        self._data = threading.Lock()  # guards everything below; readers and the writer take it
        self._events: dict[int, EventRecord] = {}
        self._seqs: builtins.list[int] = []  # sorted keys of _events
        self._stored_first = 1  # first kept seq as the data sees it (the base caches its own)
        self._snapshots: dict[int, bytes] = {}
        self._snapshot_seqs: builtins.list[int] = []
        self._spans: dict[tuple[str, str], SpanRecord] = {}
        self._start_writer(first_seq=1, last_seq=0)

    # -- writer side -----------------------------------------------------------------------------------

    def _write(self, batch: Batch) -> None:
        with self._data:
            for record in batch.events:
                if record.seq in self._events:
                    continue  # first version wins, like ON CONFLICT DO NOTHING
                self._events[record.seq] = record
                if not self._seqs or record.seq > self._seqs[-1]:
                    self._seqs.append(record.seq)
                else:
                    insort(self._seqs, record.seq)  # a hole being filled by a replay
            for span in batch.spans:
                self._spans.setdefault((span.trace_id, span.span_id), span)
            for seq, blob in batch.snapshots:
                if seq not in self._snapshots:
                    insort(self._snapshot_seqs, seq)
                self._snapshots[seq] = blob

    def _prune_stored(self, before_seq: int) -> int:
        with self._data:
            cut = bisect_left(self._seqs, before_seq)
            if cut < len(self._seqs):
                span_cut: float | None = self._events[self._seqs[cut]].time
            else:
                span_cut = max((self._events[seq].time for seq in self._seqs[:cut]), default=None)
            if span_cut is not None:
                for key in [k for k, s in self._spans.items() if s.end_time < span_cut]:
                    del self._spans[key]
            for seq in self._seqs[:cut]:
                del self._events[seq]
            del self._seqs[:cut]
            snap_cut = bisect_left(self._snapshot_seqs, before_seq - 1)
            for seq in self._snapshot_seqs[:snap_cut]:
                del self._snapshots[seq]
            del self._snapshot_seqs[:snap_cut]
            self._stored_first = before_seq
            return cut

    def _release(self) -> None:
        pass  # nothing outside the Python heap

    # -- reads -----------------------------------------------------------------------------------------

    def count(self) -> int:
        self._check_open()
        with self._data:
            return len(self._seqs)

    def list(
        self,
        from_seq: int = 1,
        limit: int = 100,
        flt: EventFilter = _NO_FILTER,
        descending: bool = False,
    ) -> builtins.list[EventRecord]:
        start = list_start(from_seq, limit, descending)
        self._check_open()
        if start is None:
            return []
        from_seq = start
        out: builtins.list[EventRecord] = []
        with self._data:
            if from_seq < self._stored_first:
                raise HistoryPruned(self._stored_first)
            seqs = self._seqs
            if descending:
                i = bisect_right(seqs, from_seq) - 1
                while i >= 0 and len(out) < limit:
                    record = self._events[seqs[i]]
                    if flt.matches(record):
                        out.append(record)
                    i -= 1
            else:
                i = bisect_left(seqs, from_seq)
                while i < len(seqs) and len(out) < limit:
                    record = self._events[seqs[i]]
                    if flt.matches(record):
                        out.append(record)
                    i += 1
        return out

    def get(self, seq: int) -> EventRecord | None:
        self._check_open()
        with self._data:
            return self._events.get(seq)

    def gaps(self) -> builtins.list[tuple[int, int]]:
        self._check_open()
        with self._data:
            found: builtins.list[tuple[int, int]] = []
            expected = self._stored_first
            for seq in self._seqs:
                if seq > expected:
                    found.append((expected, seq - 1))
                expected = seq + 1
            return found

    def nearest_snapshot(self, at_or_before_seq: int) -> tuple[int, bytes] | None:
        self._check_open()
        with self._data:
            i = bisect_right(self._snapshot_seqs, at_or_before_seq)
            if i == 0:
                return None
            seq = self._snapshot_seqs[i - 1]
            return seq, self._snapshots[seq]

    def spans_for_trace(self, trace_id: str) -> builtins.list[SpanRecord]:
        self._check_open()
        with self._data:
            spans = [s for (t, _), s in self._spans.items() if t == trace_id]
        return sorted(spans, key=lambda s: (s.start_time, s.span_id))

    def traces_for_task(self, task_id: str, framework_id: str = "") -> builtins.list[str]:
        self._check_open()
        if not task_id:
            return []
        earliest: dict[str, float] = {}
        with self._data:
            sightings = [
                (e.trace_id, e.time) for e in self._events.values()
                if e.task_id == task_id and e.trace_id and (not framework_id or e.framework_id == framework_id)
            ]
            traces = {t for t, _ in sightings}
            sightings += [(s.trace_id, s.start_time) for s in self._spans.values()
                          if s.task_id == task_id and (not framework_id or s.trace_id in traces)]
        for trace_id, when in sightings:
            if trace_id not in earliest or when < earliest[trace_id]:
                earliest[trace_id] = when
        return sorted(earliest, key=lambda t: (earliest[t], t))

    def trace_tasks(self, trace_id: str) -> builtins.list[str]:
        self._check_open()
        if not trace_id:
            return []
        with self._data:
            named = {s.task_id for (t, _), s in self._spans.items() if t == trace_id and s.task_id}
            named |= {e.task_id for e in self._events.values() if e.trace_id == trace_id and e.task_id}
        return sorted(named)

    def type_counts(self) -> dict[str, int]:
        self._check_open()
        counts: dict[str, int] = {}
        with self._data:
            for record in self._events.values():
                counts[record.type] = counts.get(record.type, 0) + 1
        return dict(sorted(counts.items()))
