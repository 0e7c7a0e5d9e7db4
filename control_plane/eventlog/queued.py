"""The asynchronous half shared by both event stores: the queue, the writer thread and its bookkeeping.

What it owns: turning `append`/`append_spans`/`put_snapshot`/`prune` into work items, one writer
thread that drains them in order in large batches, and the marks readers and waiters rely on
(`first_seq`, `last_seq`, what is durable). A backend only says how to write one batch in one
transaction, how to prune, and which of its errors are worth retrying.

Rules it keeps:
- The enqueueing side never does I/O and holds the lock only to push onto a deque.
- Items are written in enqueue order; consecutive items are merged into one transaction until it
  holds about `MAX_BATCH_RECORDS` records. A prune is a barrier: items before it are committed first.
- Enqueueing never raises for a closed store or a dead writer: the item is dropped and counted (the
  Raft apply thread must not fail; the Raft log replays it into the store on restart).
- A transient backend error (disk full, database locked) is retried with backoff until it succeeds
  or `close` gives up. Any other error means the data cannot be written: the merged batch is retried
  item by item so one bad record does not sink its neighbours, and the items that still fail are
  dropped, counted and remembered. From then on `flush` answers False, since that history has a hole
  (`gaps()` shows where).
- Waiters (`flush`, `wait`) are woken after every committed batch, never before the data is visible
  to readers.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TypeVar, cast

from tessera.control_plane.eventlog.errors import EventStoreClosed
from tessera.control_plane.eventlog.records import EventRecord, EventRow, SpanRecord
from tessera.control_plane.eventlog.store import EventStore

log = logging.getLogger(__name__)

T = TypeVar("T")

# Records per transaction. Bigger batches write faster (fewer commits and index page writes) but make
# waiters wait longer for the first wake-up; ~20k rows is ~0.15 s of writing on the reference machine.
MAX_BATCH_RECORDS = 20_000

_EVENTS = 0
_SPANS = 1
_SNAPSHOT = 2
_PRUNE = 3
_ROWS = 4
_LATER_ROWS = 5  # a function that makes the rows, called by the writer (`append_rows_later`)

_RETRY_FIRST_DELAY = 0.05
_RETRY_MAX_DELAY = 1.0


@dataclass(slots=True)
class _Item:
    ticket: int  # position in the queue, 1-based; `_durable` counts processed tickets
    kind: int
    data: object
    weight: int  # records it carries, for batching and the backlog gauge


@dataclass(slots=True)
class Batch:
    """What one transaction writes; handed to the backend's `_write`."""

    events: list[EventRecord]
    spans: list[SpanRecord]
    snapshots: list[tuple[int, bytes]]
    rows: list[EventRow]  # events appended as rows, for a backend that `WRITES_ROWS` (else in `events`)


class QueuedEventStore(EventStore):
    """Base of the concrete stores: implements the asynchronous write side of the port.

    Subclasses call `_start_writer(first_seq, last_seq)` at the end of their constructor with the
    marks they loaded, and implement `_write`, `_prune_stored`, `_is_transient` and `_release`.
    """

    WRITES_ROWS = False  # True: `_write` takes events appended as rows in `Batch.rows`, as they are

    def __init__(self, writer_name: str) -> None:
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # writer sleeps here for items
        self._progress = threading.Condition(self._lock)  # flush()/wait() sleep here for commits
        self._queue: deque[_Item] = deque()
        self._submitted = 0  # last ticket handed out
        self._durable = 0  # last ticket the writer finished (stored, or dropped on failure)
        self._first_failed: int | None = None  # first ticket whose data had to be dropped
        self._dropped_records = 0
        self._backlog = 0
        self._last_error: BaseException | None = None
        self._first = 1
        self._last = 0
        self._closing = False
        self._closed = False
        self._close_deadline = float("inf")
        self._writer_done = False
        self._dropped_after_close = False
        self._writer = threading.Thread(target=self._run, name=writer_name, daemon=True)

    def _start_writer(self, first_seq: int, last_seq: int) -> None:
        self._first = first_seq
        self._last = max(last_seq, first_seq - 1)
        self._writer.start()

    # -- backend hooks (writer thread only, except _release) -----------------------------------------

    @abc.abstractmethod
    def _write(self, batch: Batch) -> None:
        """Store the batch in one transaction, all or nothing. Existing seqs/spans stay as they are."""

    @abc.abstractmethod
    def _prune_stored(self, before_seq: int) -> int:
        """Delete events < before_seq and snapshots < before_seq - 1, record the new first seq."""

    def _is_transient(self, exc: Exception) -> bool:
        """True when retrying the same write later may succeed."""
        return False

    @abc.abstractmethod
    def _release(self) -> None:
        """Release backend resources after the writer stopped (called once, by close())."""

    def _writer_exiting(self) -> None:
        """Called on the writer thread just before it ends (to close thread-owned resources)."""

    # -- enqueueing ------------------------------------------------------------------------------------

    def _enqueue(self, kind: int, data: object, weight: int) -> bool:
        """Queue one item; False when the store is closed or its writer is gone, and it was dropped.

        Never raises for that: the caller is usually the Raft apply thread, and an exception there
        would stall replication. Nothing is lost for good either, since whatever a master applies
        after closing its store is still in the Raft log and is replayed into the store on restart.
        """
        with self._lock:
            if self._closing or self._writer_done:
                # Queueing would grow memory for nobody. Count the loss so flush() answers False.
                if not self._dropped_after_close:
                    log.warning("event log is closed; dropping what is appended from now on")
                    self._dropped_after_close = True
                # A ticket that will never be finished: flush() covering it answers False.
                self._submitted += 1
                self._record_drop_locked(self._submitted, weight)
                return False
            self._submitted += 1
            self._queue.append(_Item(self._submitted, kind, data, weight))
            self._backlog += weight
            self._work.notify()
            return True

    def append(self, records: Sequence[EventRecord]) -> None:
        if not records:
            return
        # Copy: the caller may reuse its list once we return, and the writer reads it later.
        self._enqueue(_EVENTS, tuple(records), len(records))

    def append_rows(self, rows: Sequence[EventRow]) -> None:
        if not rows:
            return
        self._enqueue(_ROWS, tuple(rows), len(rows))

    def append_rows_later(self, build: Callable[[], Sequence[EventRow]], count: int) -> None:
        if count <= 0:
            return
        self._enqueue(_LATER_ROWS, build, count)

    def append_spans(self, spans: Sequence[SpanRecord]) -> None:
        if not spans:
            return
        self._enqueue(_SPANS, tuple(spans), len(spans))

    def put_snapshot(self, seq: int, blob: bytes) -> None:
        if not isinstance(seq, int):
            raise TypeError(f"snapshot seq must be an int, not {type(seq).__name__}")
        self._enqueue(_SNAPSHOT, (seq, bytes(blob)), 1)

    def prune(self, before_seq: int, timeout: float = 60.0) -> int:
        """See `EventStore.prune`. Blocks until the writer ran it; TimeoutError after `timeout`.

        It deletes in one transaction, so the log never shows half a prune; retention should prune
        often in modest steps rather than millions of events at once (the WAL grows by what is
        deleted, and appends queue up meanwhile).
        """
        if not isinstance(before_seq, int):
            raise TypeError(f"before_seq must be an int, not {type(before_seq).__name__}")
        result: Future[int] = Future()
        if not self._enqueue(_PRUNE, (before_seq, result), 1):
            raise EventStoreClosed("event store is closed")
        return result.result(timeout)

    # -- waiting ---------------------------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        with self._lock:
            target = self._submitted
            self._progress.wait_for(lambda: self._durable >= target or self._writer_done, max(timeout, 0.0))
            return self._durable >= target and (self._first_failed is None or self._first_failed > target)

    def wait(self, after_seq: int, timeout: float) -> int:
        with self._lock:
            self._progress.wait_for(lambda: self._last > after_seq or self._closing, max(timeout, 0.0))
            return self._last

    # -- marks and health ------------------------------------------------------------------------------

    def last_seq(self) -> int:
        with self._lock:
            return self._last

    def first_seq(self) -> int:
        with self._lock:
            return self._first

    @property
    def last_error(self) -> BaseException | None:
        with self._lock:
            return self._last_error

    @property
    def dropped_records(self) -> int:
        """Records the writer could not store (non-transient errors) since this store was opened."""
        with self._lock:
            return self._dropped_records

    def backlog(self) -> int:
        with self._lock:
            return self._backlog

    def _check_open(self) -> None:
        if self._closed:
            raise EventStoreClosed("event store is closed")

    # -- closing ---------------------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """See `EventStore.close`. Waits up to `timeout` for the queue to drain; after that the writer
        stops retrying transient errors, drops what is left (logged) and ends."""
        with self._lock:
            first_call = not self._closing
            if first_call:
                self._closing = True
                self._close_deadline = time.monotonic() + timeout
                self._work.notify_all()
                self._progress.notify_all()  # wake wait()ers so follow streams can end
        if self._writer.is_alive():
            self._writer.join()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._release()

    # -- the writer thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._queue and not self._closing:
                        self._work.wait()
                    if not self._queue:
                        return  # closing and drained
                    items = self._take_locked()
                self._process(items)
        except Exception as exc:  # a bug in this module: logged, and waiters must not hang
            log.exception("event log writer crashed; nothing more will be stored")
            with self._lock:
                self._last_error = exc
                self._record_drop_locked(self._durable + 1, self._backlog)
        finally:
            try:
                self._writer_exiting()
            finally:
                with self._lock:
                    self._writer_done = True
                    self._progress.notify_all()

    def _take_locked(self) -> list[_Item]:
        items: list[_Item] = []
        weight = 0
        while self._queue and weight < MAX_BATCH_RECORDS:
            item = self._queue.popleft()
            items.append(item)
            weight += item.weight
        return items

    def _process(self, items: list[_Item]) -> None:
        pending: list[_Item] = []
        for item in items:
            if item.kind == _PRUNE:
                self._commit(pending)
                pending = []
                self._run_prune(item)
            else:
                pending.append(item)
        self._commit(pending)

    def _build(self, items: list[_Item]) -> tuple[Batch, int]:
        """The batch to write for these items, without pruned history; and the highest event seq."""
        first = self._first  # only this thread changes it
        batch = Batch([], [], [], [])
        high = 0
        for item in items:
            if item.kind == _EVENTS:
                records = cast(tuple[EventRecord, ...], item.data)
                seqs = [r.seq for r in records]
                if min(seqs) < first:  # a replay of pruned history: it must not come back
                    records = tuple(r for r in records if r.seq >= first)
                    if not records:
                        continue
                batch.events.extend(records)
                high = max(high, max(seqs))
            elif item.kind == _ROWS or item.kind == _LATER_ROWS:
                if item.kind == _ROWS:
                    rows = cast(tuple[EventRow, ...], item.data)
                else:  # made here, on the writer thread; a failure drops this item (see `_commit`)
                    rows = tuple(cast(Callable[[], Sequence[EventRow]], item.data)())
                    if not rows:
                        continue
                low, top = rows[0][0], rows[-1][0]  # appended in increasing seq order
                if low < first:
                    rows = tuple(r for r in rows if r[0] >= first)
                    if not rows:
                        continue
                if self.WRITES_ROWS:
                    batch.rows.extend(rows)
                else:
                    batch.events.extend(EventRecord(*r) for r in rows)
                high = max(high, top)
            elif item.kind == _SPANS:
                batch.spans.extend(cast(tuple[SpanRecord, ...], item.data))
            else:
                seq, blob = cast(tuple[int, bytes], item.data)
                if seq >= first - 1:  # a snapshot at first-1 still serves replays of kept events
                    batch.snapshots.append((seq, blob))
        return batch, high

    def _commit(self, items: list[_Item]) -> None:
        if not items:
            return
        try:
            batch, high = self._build(items)
        except Exception as exc:  # e.g. something that is not an EventRecord was appended
            log.error("event log got a malformed item; dropping it: %r", exc)
            with self._lock:
                self._last_error = exc
            ok, high = False, 0
        else:
            ok = True
            if batch.events or batch.rows or batch.spans or batch.snapshots:
                ok, _, _ = self._retrying(lambda: self._write(batch))
        if not ok and len(items) > 1:
            # Find the poisonous item(s): write each on its own, keep every one that can be kept.
            for item in items:
                self._commit([item])
            return
        with self._lock:
            if ok:
                self._last = max(self._last, high)
            else:
                self._record_drop_locked(items[0].ticket, items[0].weight)
            self._finish_locked(items)

    def _run_prune(self, item: _Item) -> None:
        before_seq, result = cast(tuple[int, "Future[int]"], item.data)
        if before_seq <= self._first:
            with self._lock:
                self._finish_locked([item])
            result.set_result(0)
            return
        ok, deleted, exc = self._retrying(lambda: self._prune_stored(before_seq))
        with self._lock:
            if ok:
                self._first = before_seq
                self._last = max(self._last, before_seq - 1)
            self._finish_locked([item])
        if ok:
            result.set_result(deleted if deleted is not None else 0)
        else:
            result.set_exception(exc if exc is not None else RuntimeError("prune failed"))

    def _finish_locked(self, items: list[_Item]) -> None:
        self._durable = items[-1].ticket
        self._backlog -= sum(item.weight for item in items)
        self._progress.notify_all()

    def _record_drop_locked(self, ticket: int, weight: int) -> None:
        self._dropped_records += weight
        if self._first_failed is None:
            self._first_failed = ticket

    def _retrying(self, op: Callable[[], T]) -> tuple[bool, T | None, Exception | None]:
        delay = _RETRY_FIRST_DELAY
        while True:
            try:
                return True, op(), None
            except Exception as exc:
                transient = self._is_transient(exc)
                with self._lock:
                    self._last_error = exc
                    remaining = self._close_deadline - time.monotonic()  # inf until close()
                give_up = remaining <= 0
                if not transient or give_up:
                    log.error(
                        "event log write failed%s; dropping it: %r",
                        " and close() is out of time" if transient else "",
                        exc,
                    )
                    return False, None, exc
                log.warning("event log write failed, retrying in %.2fs: %r", delay, exc)
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, _RETRY_MAX_DELAY)
