"""The imperative shell of the event log's history: background snapshots and retention (two threads).

- `Snapshotter` (one background thread per master): the state machine tells it that the log crossed a
  multiple of `every` events. When the entry that recorded that event ended its batch, the live state is
  exactly the state as of that event, and the apply thread pickles it (bounded: a pickle slower than
  `live_budget_s` turns this off for a while); otherwise the thread waits until the event store holds
  the events, rebuilds from the previous snapshot (at most `every` events of replay) and stores the new
  snapshot. The apply thread never compresses, writes or waits for this thread. A replay of every event
  cost ~17 us an event on each master, more than a write to a master at 10k writes/s could spare; a
  pickle of a state with 50,000 remembered requests ~20 ms per `every` (10,000) events. Also
  `Snapshotter.restored`: when a master installs a Raft snapshot its event log has a hole before it, so
  that state is pickled right there.
- Every rebuild on the serving side (`replay.state_at` with a `sink`) stores the snapshots it passes on
  the way, so even a log without them becomes fast after the first query.
- `Retention` prunes in the background and always keeps a snapshot at the new start of history, so the
  state as of every kept index stays rebuildable.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from tessera.control_plane.core.state import ClusterState
from tessera.control_plane.eventlog.errors import (
    EventStoreClosed,
    HistoryError,
    HistoryUnavailable,
    ReplayError,
)
from tessera.control_plane.eventlog.records import EventRecord
from tessera.control_plane.eventlog.replay import entries_from_records, rebuild, replay_entry
from tessera.control_plane.eventlog.snapshots import (
    DEFAULT_SNAPSHOT_EVERY,
    decode_snapshot,
    delta_base,
    encode_delta,
    encode_pickled,
    encode_snapshot,
)
from tessera.control_plane.eventlog.source import HistorySource, SnapshotSink
from tessera.control_plane.eventlog.statecache import SnapshotBases, TaskOwnership, share_state

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_DELTA_EVERY", "DeferredSnapshots", "DeltaSnapshots", "Retention", "SnapshotBuilder", "Snapshotter", "ensure_snapshot", "retention_cut"]


class _Store(HistorySource, SnapshotSink, Protocol):
    def wait(self, after_seq: int, timeout: float) -> int: ...

    def flush(self, timeout: float = 5.0) -> bool: ...

    def prune(self, before_seq: int) -> int: ...


def ensure_snapshot(store: _Store, target: int, every: int = DEFAULT_SNAPSHOT_EVERY,
                    on_page: Callable[[int, int], None] | None = None) -> int:
    """Store a snapshot at the end of the entry holding `target` (and every `every` events on the way
    there). Returns the snapshot's seq."""
    snap = store.nearest_snapshot(target)
    if snap is not None and snap[0] == target and decode_snapshot(snap[1]) is not None:
        return target
    rebuilt = rebuild(store, target, sink=store, every=every, on_page=on_page)
    if rebuilt.snapshot_seq != rebuilt.index:
        store.put_snapshot(rebuilt.index, encode_snapshot(rebuilt.state))
    return rebuilt.index


class SnapshotBuilder(Protocol):
    """Builds, away from the store, the snapshots `ensure_snapshot(store, target, every)` would store; the
    snapshotter stores them (`rebuild_child.ChildRebuilder`: in a child process)."""

    def build(self, target: int, every: int) -> Sequence[tuple[int, bytes]]: ...

    def cancel(self) -> None: ...


class _SnapshotterStopped(Exception):
    """Raised from a rebuild's page callback to abandon it when the snapshotter stops."""


class Snapshotter:
    """Takes a state snapshot every `every` events, on its own thread.

    `observe(seq, state)` is what the Raft apply thread calls after each batch. When the batch crossed a
    multiple of `every` and `state` is given (the live state right after the entry that recorded `seq`),
    the state is pickled right there — a small state pickles in a few milliseconds (50,000 remembered
    requests: ~20 ms), far less than replaying the `every` events since the last snapshot (~17 us each)
    — and the thread compresses and stores it; crossings that come too soon after the last pickle are
    skipped (`LIVE_DUTY`). A pickle that took longer than `live_budget_s` (a big
    state: the pause is on the thread that also runs Raft elections) turns that off for the next
    `LIVE_BACKOFF` crossings; those snapshots are rebuilt from the event log instead, as when no state is
    given: the thread waits until the store holds the events, replays from the previous snapshot and
    stores the result. Crossings that arrive while a snapshot is being built are coalesced into the
    latest one, and a replay pauses after each page so that it takes at most `duty` of one core (10 % by
    default: it shares the GIL with the apply thread; at 50 % it cost the leader a fifth of its write
    throughput), so under a heavy write load replayed snapshots become rarer rather than taking the GIL
    from the apply thread.
    """

    LIVE_BACKOFF = 8
    # Live pickles take at most this share of the apply thread: under a heavy write load a crossing that
    # comes sooner after the last pickle is skipped (a 20 ms pickle: at most one a second), so snapshots
    # are then further apart than `every` events.
    LIVE_DUTY = 0.02

    def __init__(self, store: _Store, every: int = DEFAULT_SNAPSHOT_EVERY, duty: float = 0.1,
                 live_budget_s: float = 0.05, builder: SnapshotBuilder | None = None) -> None:
        if every <= 0:
            raise ValueError("every must be positive")
        if not 0 < duty <= 1:
            raise ValueError("duty must be in (0, 1]")
        self.store = store
        self.every = every
        self.duty = duty
        self.live_budget_s = live_budget_s  # 0: never pickle the live state
        # None: rebuilds run on this object's thread (paced by `duty`); else `builder` builds them (a master:
        # in a child process, so the rebuilt state's memory never stays with the master)
        self.builder = builder
        self._live_after = 0  # the bucket from which live pickles are tried again after a slow one
        self._next_live = 0.0  # monotonic time before which a crossing is not pickled (LIVE_DUTY)
        self._worked_since = 0.0
        self._cond = threading.Condition()
        self._wanted = 0  # the latest seq that crossed a multiple of `every`
        self._captured: tuple[int, bytes] | None = None  # (seq, pickled live state) to store
        self._bucket: int | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._halt = threading.Event()  # set by stop(): ends a paced rebuild's pause at once
        self.taken = 0  # snapshots stored, for tests and metrics
        self.captured = 0  # of which pickled from the live state
        self.pickled = 0  # live states pickled (a pickle is dropped when a later crossing overtakes it)
        self.last_error: BaseException | None = None

    def observe(self, seq: int, state: ClusterState | None = None) -> None:
        bucket = seq // self.every
        if self._bucket is None:
            self._bucket = bucket  # the first batch after start: nothing crossed yet
            return
        if bucket <= self._bucket:
            return
        self._bucket = bucket
        if state is not None and self._live_ok(bucket) and time.monotonic() < self._next_live:
            return  # pickled recently: this crossing is skipped (see LIVE_DUTY)
        try:
            raw = self._pickle_live(bucket, seq, state)
            with self._cond:
                self._wanted = max(self._wanted, seq)
                if raw is not None:
                    self._captured = (seq, raw)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="tessera-snapshotter", daemon=True)
                    self._thread.start()
                self._cond.notify()
        except Exception as exc:  # noqa: BLE001 - runs on the apply thread: log, never raise
            self.last_error = exc
            log.warning("state snapshotter not started: %r", exc)

    def _live_ok(self, bucket: int) -> bool:
        return self.live_budget_s > 0 and bucket >= self._live_after

    def _pickle_live(self, bucket: int, seq: int, state: ClusterState | None) -> bytes | None:
        if state is None or state.seq != seq or not self._live_ok(bucket):
            return None
        # CPU time of this thread: what grows with the state (wall time also counts waits for the GIL)
        started = time.thread_time()
        raw = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        took = time.thread_time() - started
        self.pickled += 1
        self._next_live = time.monotonic() + took * (1 - self.LIVE_DUTY) / self.LIVE_DUTY
        if took > self.live_budget_s:
            self._live_after = bucket + self.LIVE_BACKOFF
            log.info("pickling the state for a snapshot took %.0f ms (budget %.0f ms): the next %d snapshots "
                     "are rebuilt from the event log instead", took * 1e3, self.live_budget_s * 1e3,
                     self.LIVE_BACKOFF)
        return raw

    def restored(self, state: ClusterState) -> None:
        """A Raft snapshot was installed: when the event log lacks the history up to it, store the
        state itself, so states after it stay rebuildable (see the module docstring)."""
        try:
            if self.store.last_seq() < state.seq:
                self.store.put_snapshot(state.seq, encode_snapshot(state))
                self._bucket = state.seq // self.every
        except Exception as exc:  # noqa: BLE001 - runs on the apply thread: log, never raise
            log.warning("could not store the installed state as a snapshot: %r", exc)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking snapshots and wait (bounded) for the thread, so that nothing reaches the store
        after its owner closes it. A rebuild under way is abandoned at its next page; the snapshot it
        would have stored is taken again from the log after a restart."""
        self._halt.set()
        if self.builder is not None:
            self.builder.cancel()
        with self._cond:
            self._stopped = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("state snapshotter still busy after %.0f s; closing without it", timeout)

    def _pace(self, seq: int, target: int) -> None:
        worked = time.monotonic() - self._worked_since
        if self._halt.wait(worked * (1 - self.duty) / self.duty if self.duty < 1 else 0):
            raise _SnapshotterStopped
        self._worked_since = time.monotonic()

    def _run(self) -> None:
        done = 0
        while True:
            with self._cond:
                while self._wanted <= done and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                target = self._wanted
                captured, self._captured = self._captured, None
            try:
                # the store writes asynchronously: wait until it holds the target (bounded)
                if self.store.wait(after_seq=target - 1, timeout=30.0) < target:
                    continue
                if captured is not None and captured[0] == target:
                    self.store.put_snapshot(target, encode_pickled(captured[1]))
                    self.captured += 1
                elif self.builder is not None:
                    for seq, blob in self.builder.build(target, self.every):
                        self.store.put_snapshot(seq, blob)
                else:
                    self._worked_since = time.monotonic()
                    ensure_snapshot(self.store, target, self.every, on_page=self._pace)
                self.taken += 1
                done = target
            except (EventStoreClosed, _SnapshotterStopped):
                return
            except HistoryError as exc:
                # e.g. history with a hole: nothing to build from; wait for the next crossing
                self.last_error = exc
                done = target
                log.warning("state snapshot at %d not taken: %s", target, exc)
            except Exception as exc:  # noqa: BLE001 - a bug here must not kill the master
                if self._halt.is_set():
                    return  # stopped while a builder ran (it was cancelled): abandoned, not failed
                self.last_error = exc
                done = target
                log.exception("state snapshot at %d failed", target)


class DeferredSnapshots:
    """Stores, on a thread of its own, the snapshots a serving rebuild passes (`rebuild(..., keep=
    DeferredSnapshots.keep)`: time travel asked of a master, Operator.GetStateAt and the web UI), so the
    request does not wait for the encoding (~0.4 s at 10,000 tasks). At most `pending` states wait
    (a state offered when that many wait is dropped: a later rebuild passing there offers it again); the
    thread runs while some wait, and encodes at most `duty` of the time (it shares the GIL with the
    requests). A store closed meanwhile drops what waits."""

    def __init__(self, store: SnapshotSink, pending: int = 4, duty: float = 0.25) -> None:
        if not 0 < duty <= 1:
            raise ValueError("duty must be in (0, 1]")
        self.store, self.pending, self.duty = store, pending, duty
        self._lock = threading.Lock()
        self._waiting: dict[int, ClusterState] = {}
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        self.stored = 0  # snapshots stored, for tests and metrics
        self.last_error: BaseException | None = None

    def keep(self, state: ClusterState) -> None:
        """Store a snapshot of `state` (after the entry holding `state.seq`; never mutated again) soon."""
        with self._lock:
            if state.seq in self._waiting or len(self._waiting) >= self.pending:
                return
            self._waiting[state.seq] = state
            self._idle.clear()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tessera-history-snapshots", daemon=True)
                self._thread.start()

    def wait_idle(self, timeout: float) -> bool:
        """Wait (bounded) until nothing waits to be stored; True when so."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._waiting:
                    self._thread = None
                    self._idle.set()
                    return
                seq = min(self._waiting)
                state = self._waiting.pop(seq)
            started = time.monotonic()
            try:
                self.store.put_snapshot(seq, encode_snapshot(state))
                self.stored += 1
            except EventStoreClosed:
                with self._lock:
                    self._waiting.clear()
                continue
            except Exception as exc:  # noqa: BLE001 - a snapshot not stored is taken again later
                self.last_error = exc
                log.warning("state snapshot at %d not stored: %r", seq, exc)
            worked = time.monotonic() - started
            if self.duty < 1:
                time.sleep(worked * (1 - self.duty) / self.duty)


DEFAULT_DELTA_EVERY = 500


class DeltaSnapshots:
    """Stores a delta snapshot (`snapshots.encode_delta`) every `delta_every` events and the full snapshot
    the deltas are read from every `every` events (when none is stored there yet), as the log is written,
    on a thread of its own: so a rebuild of any point (time travel, a first visit anywhere) finds a stored
    start at most `delta_every` events (plus the rest of an entry) before it, cheap to start from when its
    base is decoded (`statecache.SnapshotBases`).

    `observe(seq)` is what the apply thread calls after each batch (it only compares and notifies). The
    thread keeps one state (and the base it shares task records with, copy-on-write) and replays the new
    events onto it from the event store, pausing so that it works at most `duty` of the time: under a write
    load heavier than that, it falls behind and catches up later (the deltas are then written where it
    passes, still every `delta_every` events). It starts from the newest full snapshot at or before the
    first point it is asked for, or from the empty state (the deltas before the first full snapshot are
    written from it: base 0). The bases it makes are handed to `bases` (the
    master's, shared with its history cache), so the newest stretch's deltas start without a decode; once
    caught up it decodes the older bases into `bases` too, while there is room (`_warm_one`: after a
    restart, a first visit into an older stretch then decodes no base on the request's thread).
    Counters: `deltas`, `fulls`, `replayed` (events), `cpu_s` (this thread's CPU time; `encode_s` of it
    encoding), `bytes_written`. Memory: the state and its base (~32 MB at 8,500 tasks, the records shared).
    Measured (docs/benchmarks.md, 2026-12-07 night): ~150-310 us of CPU an event at load 20-40 on 2 cores
    (more than half of it encoding), deltas of ~260 kB every 500 events at 10,000 tasks."""

    def __init__(self, store: _Store, every: int = DEFAULT_SNAPSHOT_EVERY, delta_every: int = DEFAULT_DELTA_EVERY,
                 duty: float = 0.25, bases: SnapshotBases | None = None, page: int = 2_000) -> None:
        if every <= 0 or delta_every <= 0:
            raise ValueError("every and delta_every must be positive")
        if not 0 < duty <= 1:
            raise ValueError("duty must be in (0, 1]")
        self.store, self.every, self.delta_every, self.duty, self.bases = store, every, delta_every, duty, bases
        self.page = page
        self._cond = threading.Condition()
        self._wanted = 0
        self._done = 0
        self._stopped = False
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._blocked = 0  # after a failed replay: the bucket of `every` events from which it tries again
        self._state: ClusterState | None = None  # replayed so far (owned through `_owner`)
        self._owner: TaskOwnership | None = None
        self._base: ClusterState | None = None  # the full snapshot stored at `_base.seq` it shares records with
        self.deltas = self.fulls = self.replayed = self.bytes_written = 0
        self.cpu_s = 0.0
        self.encode_s = 0.0  # of which encoding deltas and full snapshots
        self.last_error: BaseException | None = None
        # decoding older bases when idle (`_warm_one`): where to look next, how many, whether done
        self._warm_at: int | None = None
        self._warm_finished = bases is None
        self.warmed = 0
        self.warm_s = 0.0  # of `cpu_s`: decoding older bases

    def observe(self, seq: int) -> None:
        """The log holds (or is about to hold) every event up to `seq`, the end of an applied batch."""
        with self._cond:
            if seq <= self._wanted or self._stopped:
                return
            self._wanted = seq
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tessera-delta-snapshots", daemon=True)
                self._thread.start()
            self._cond.notify()

    def wait_warmed(self, timeout: float) -> bool:
        """Wait (bounded) until the thread has decoded the older bases it keeps (see `_warm_one`)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._warm_finished or self._stopped, timeout)

    def wait_done(self, seq: int, timeout: float) -> bool:
        """Wait (bounded) until the thread has replayed up to `seq` (or given up on it); True when so."""
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= seq or self._stopped, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self._halt.set()
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._wanted <= self._done and not self._stopped and (self._warm_finished or self._done == 0):
                    self._cond.wait()
                if self._stopped:
                    return
                target = self._wanted
                warm = target <= self._done  # caught up: an older base to decode meanwhile
            if warm:
                try:
                    self._warm_one()
                except (EventStoreClosed, _SnapshotterStopped):
                    return
                except Exception as exc:  # noqa: BLE001 - a damaged snapshot: requests decode what they need
                    self.last_error = exc
                    self._warm_finished = True
                    log.warning("older bases of delta snapshots not decoded in advance: %r", exc)
                if self._warm_finished:
                    with self._cond:
                        self._cond.notify_all()
                continue
            try:
                if target // self.every < self._blocked:
                    pass  # a replay failed in this stretch: not tried again before the next full snapshot's
                elif self.store.wait(after_seq=target - 1, timeout=30.0) < target:
                    continue
                else:
                    self._advance(target)
            except (EventStoreClosed, _SnapshotterStopped):
                return
            except Exception as exc:  # noqa: BLE001 - a bug or a hole here must not kill the master
                self.last_error = exc
                self._state = self._owner = self._base = None  # start again from a stored snapshot
                self._blocked = target // self.every + 1
                log.warning("delta snapshots up to %d not written (tried again after event %d): %r", target,
                            self._blocked * self.every, exc)
            with self._cond:
                self._done = max(self._done, target)
                self._cond.notify_all()

    def _begin(self, target: int) -> None:
        """Start from the newest full snapshot at or before `target` that decodes (or the empty state)."""
        at = target
        while True:
            found = self.store.nearest_snapshot(at)
            if found is None:  # the deltas before the first full snapshot are written from the empty state
                self._set_base(ClusterState())
                return
            seq, blob = found
            decoded = decode_snapshot(blob) if delta_base(blob) is None else None
            if decoded is not None and decoded.seq == seq:
                self._set_base(decoded)
                return
            at = seq - 1

    def _set_base(self, state: ClusterState) -> None:
        self._base = state
        self._state = share_state(state)
        self._owner = TaskOwnership(self._state, owns_all=False)
        if self.bases is not None and state.seq > 0:
            self.bases.put(state)
            self.bases.note(state.seq, 0)

    def _advance(self, target: int) -> None:
        started = time.thread_time()
        worked_since = time.monotonic()
        if self._state is None or self._state.seq > target:
            self._begin(target)
        pending: list[EventRecord] = []  # the records of an entry not known to be complete yet
        while self._state is not None and self._state.seq < target:
            cursor = (pending[-1].seq if pending else self._state.seq) + 1
            limit = self.page if cursor > target else min(self.page, target - cursor + 2)
            page = self.store.list(from_seq=cursor, limit=limit)
            if not page:
                if pending and pending[-1].seq >= target:  # the batch observed ends its entry
                    self._replay(pending)
                break
            for r in page:
                if r.position == 0 and pending:
                    self._replay(pending)
                    pending = []
                    if self._state.seq >= target:
                        break
                pending.append(r)
            self.cpu_s += time.thread_time() - started
            worked = time.monotonic() - worked_since
            if self._halt.wait(worked * (1 - self.duty) / self.duty if self.duty < 1 else 0):
                raise _SnapshotterStopped
            started, worked_since = time.thread_time(), time.monotonic()
        self.cpu_s += time.thread_time() - started

    def _replay(self, records: list[EventRecord]) -> None:
        assert self._state is not None and self._owner is not None
        for entry in entries_from_records(records):
            before = self._state.seq
            replay_entry(self._state, entry, self._owner)
            self.replayed += entry.last_seq - entry.first_seq + 1
            seq = self._state.seq
            if seq // self.every > before // self.every:
                self._full(seq)
            elif self._base is not None and seq // self.delta_every > before // self.delta_every:
                started = time.thread_time()
                blob = encode_delta(self._state, self._base)
                self.encode_s += time.thread_time() - started
                self.store.put_snapshot(seq, blob)
                self.deltas += 1
                self.bytes_written += len(blob)

    def _warm_one(self) -> None:
        """When caught up: decode the next older base (the full snapshot the deltas of an earlier stretch
        are read from) into `bases`, while it has room, newest first, one per call, paced to `duty`. After a
        restart, the first visit into each stretch then starts from a delta (a `share_state` of the base and
        the changed records) instead of decoding its base on the request's thread (200-450 ms of CPU at
        8,500-10,000 tasks, docs/benchmarks.md). Memory: what the kept bases hold anyway once visited, at
        most `bases.size` of them (~32 MB each at 8,500 tasks); bases never push out the ones kept."""
        assert self.bases is not None
        started, worked_since = time.thread_time(), time.monotonic()
        at = self._warm_at if self._warm_at is not None else self._done
        found = self.store.nearest_snapshot(at) if at > 0 else None
        if found is None or not self.bases.has_room():
            self._warm_finished = True
            return
        seq, blob = found
        below = delta_base(blob)
        base_seq = seq if below is None else below
        if base_seq <= 0:  # the first stretch's deltas are read from the empty state: nothing to decode
            self._warm_finished = True
            return
        self._warm_at = base_seq - 1
        if base_seq not in self.bases.seqs():
            full = (seq, blob) if below is None else self.store.nearest_snapshot(base_seq)
            decoded = decode_snapshot(full[1]) if full is not None and full[0] == base_seq else None
            if decoded is not None and decoded.seq == base_seq and self.bases.offer(decoded):
                self.bases.note(base_seq, None)
                self.warmed += 1
        spent = time.thread_time() - started
        self.cpu_s += spent
        self.warm_s += spent
        worked = time.monotonic() - worked_since
        if self._halt.wait(worked * (1 - self.duty) / self.duty if self.duty < 1 else 0):
            raise _SnapshotterStopped

    def _full(self, seq: int) -> None:
        """A new base at `seq`: the full snapshot stored there (the Snapshotter's, or written now)."""
        assert self._state is not None
        found = self.store.nearest_snapshot(seq)
        if found is None or found[0] != seq or delta_base(found[1]) is not None:
            started = time.thread_time()
            blob = encode_snapshot(self._state)
            self.encode_s += time.thread_time() - started
            self.store.put_snapshot(seq, blob)
            self.fulls += 1
            self.bytes_written += len(blob)
        self._set_base(self._state)


def retention_cut(source: HistorySource, keep: int) -> int:
    """The `before_seq` to prune at so that at least the last `keep` events stay and kept history
    starts at an entry boundary; 0 when nothing needs pruning."""
    if keep < 0:
        raise ValueError("keep must be >= 0")
    last, first = source.last_seq(), source.first_seq()
    oldest_kept = last - keep + 1
    if oldest_kept <= first:
        return 0
    records = source.list(from_seq=oldest_kept, limit=1)
    if not records:
        return 0
    r = records[0]
    cut = r.seq - r.position  # the start of the entry holding the oldest kept event
    return cut if cut > first else 0


class Retention:
    """Keeps at least the last `keep` events: every `interval` seconds, on its own thread, it stores a
    snapshot at the new start of history, then prunes before it (in steps of at most `step` events, so
    one prune never holds the writer long)."""

    def __init__(self, store: _Store, keep: int, *, interval: float = 60.0, step: int = 100_000,
                 every: int = DEFAULT_SNAPSHOT_EVERY) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.store, self.keep, self.interval, self.step, self.every = store, keep, interval, step, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tessera-retention", daemon=True)
        self.pruned = 0
        self.last_error: BaseException | None = None

    def start(self) -> Retention:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def run_once(self) -> int:
        """Prune what is due now; returns the number of events deleted."""
        deleted = 0
        while not self._stop.is_set():
            cut = retention_cut(self.store, self.keep)
            if cut == 0:
                break
            first = self.store.first_seq()
            if cut - first > self.step:
                records = self.store.list(from_seq=first + self.step, limit=1)
                if records:
                    cut = records[0].seq - records[0].position
                if cut <= first:
                    break
            boundary = ensure_snapshot(self.store, cut - 1, self.every)
            if boundary != cut - 1:
                raise ReplayError(f"expected an entry boundary at {cut - 1}, got {boundary}")
            if not self.store.flush(timeout=30.0):
                raise HistoryUnavailable("the event store did not store the snapshot; not pruning")
            deleted += self.store.prune(cut)
        self.pruned += deleted
        return deleted

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except EventStoreClosed:
                return
            except Exception as exc:  # noqa: BLE001 - retried next interval; logged
                self.last_error = exc
                log.warning("event log retention failed: %s", exc)
