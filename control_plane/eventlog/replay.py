"""Replay: records -> entries -> the cluster state as of any event.

Theory of operation
-------------------
The event log records *applied events*, not log entries: for each committed entry, the events `apply`
recorded, numbered by `seq`, with the entry's raft index, term, time and request id, and the event's
`position` inside what the entry recorded. So the entries can be rebuilt exactly: an entry starts at
every record with position 0 (positions count the recorded events 0, 1, 2, ... of one entry), and its
events are the payloads decoded back into core dataclasses (`from_jsonable`, the inverse of
`codec.to_jsonable`). Replaying an entry is the core's own `apply`, so replay can never disagree with
the masters about what an event means. Grouping is necessary, not cosmetic: a `TaskLaunched` is only
valid after the `OfferAccepted` of the same entry, and re-applying the events of one entry as separate
entries would make the second a duplicate of the request id.

A rejected entry recorded one `Rejected` event and otherwise changed nothing but the log: replay
reproduces it directly (seq, time, count and the de-duplication memory of its request id) rather than
through `apply`, which would record it as applied.

The property this keeps (pinned by tests/unit/inspect/test_replay.py): for every entry boundary `s`,
rebuilding from the log gives a state whose `fingerprint()` equals the live state's right after the
entry that recorded `s`. Two things a master applies leave nothing in the event log and so cannot be
rebuilt: the time of an entry that recorded no event (a read barrier; the next entry overwrites it) and
the request id of an entry whose every event turned out to be an idempotent no-op in flight (a race:
`decide` never proposes such an entry). Both are soft, de-duplication-only facts.

"State as of index N" is the state after the entry that recorded event N (an entry is atomic: no
master ever held a state in the middle of one). "As of time T" is the state after the last event
recorded at or before T. Rebuilding starts from the nearest stored snapshot at or before N, so it costs
decoding that snapshot and replaying the events after it; with a `StateCache` (statecache.py: the states
rebuilt lately, one cache per master) it starts from a cached state instead when that is cheaper, so a
point near one asked before (a time-travel slider's steps, the two ends of a diff) replays a few events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from tessera.control_plane.core import events as ev
from tessera.control_plane.core.apply import apply
from tessera.control_plane.core.state import MAX_ID_LENGTH, ClusterState
from tessera.control_plane.eventlog.decode import event_from_record
from tessera.control_plane.eventlog.diff import StateDiff, diff_states
from tessera.control_plane.eventlog.errors import (
    HistoryPruned,
    HistoryUnavailable,
    PointOutOfRange,
    ReplayError,
)
from tessera.control_plane.eventlog.records import EventRecord
from tessera.control_plane.eventlog.snapshots import (
    DEFAULT_SNAPSHOT_EVERY,
    decode_delta,
    decode_snapshot,
    delta_base,
    encode_snapshot,
)
from tessera.control_plane.eventlog.source import PAGE, HistorySource, SnapshotSink
from tessera.control_plane.eventlog.statecache import (
    CHECKPOINT_EVERY,
    CLONE_EVENTS,
    SNAPSHOT_DECODE_EVENTS,
    SnapshotBases,
    StateCache,
    TaskOwnership,
    checkpoint_due,
    choose_start,
    share_state,
)
from tessera.control_plane.eventlog.timepoints import Point, known_last, resolve_point

log = logging.getLogger(__name__)

__all__ = ["RecordedEntry", "StateAt", "entries_from_records", "rebuild", "replay_entry", "replay_records",
           "state_and_diff", "state_at"]


@dataclass(frozen=True, slots=True)
class RecordedEntry:
    """The recorded part of one committed entry: its events and where they are in the log."""

    first_seq: int
    last_seq: int
    raft_index: int
    term: int
    time: float
    request_id: str
    records: tuple[EventRecord, ...]

    @property
    def rejected(self) -> bool:
        """A rejected entry records exactly one `Rejected` event (decide never proposes one)."""
        return len(self.records) == 1 and self.records[0].type == "Rejected"


def entries_from_records(records: Iterable[EventRecord]) -> Iterator[RecordedEntry]:
    """Group records (in seq order) into the entries that recorded them.

    A new entry starts at position 0, and also whenever the entry's own fields change (defensive: a
    hole in the records must not glue two entries together).
    """
    group: list[EventRecord] = []
    for r in records:
        if group:
            head = group[-1]
            if (r.position == 0 or r.seq != head.seq + 1 or r.position != head.position + 1
                    or (r.raft_index, r.request_id, r.term, r.time)
                    != (head.raft_index, head.request_id, head.term, head.time)):
                yield _entry(group)
                group = []
        group.append(r)
    if group:
        yield _entry(group)


def _entry(group: list[EventRecord]) -> RecordedEntry:
    head = group[0]
    return RecordedEntry(head.seq, group[-1].seq, head.raft_index, head.term, head.time, head.request_id,
                         tuple(group))


def _replay_rejection(state: ClusterState, entry: RecordedEntry) -> None:
    """What `apply` did for a rejected entry: one recorded `Rejected`, its request id remembered."""
    rejected = event_from_record(entry.records[0])
    state.seq += 1
    state.time = float(entry.time)
    state.event_counts["Rejected"] = state.event_counts.get("Rejected", 0) + 1
    rid = entry.request_id
    # apply remembers the request id of a rejection only when the id itself was valid
    if rid and len(rid) <= MAX_ID_LENGTH:
        state.requests[rid] = ("rejected", state.seq, state.seq, rejected.code, rejected.reason)
        while len(state.requests) > max(state.request_limit, 0):
            state.requests.popitem(last=False)


def replay_entry(state: ClusterState, entry: RecordedEntry, owner: TaskOwnership | None = None) -> None:
    """Apply one recorded entry to `state`; `ReplayError` when the outcome differs from the record. With
    `owner`, the state shares task records with others (`statecache.share_state`): the ones the entry
    may change are copied first."""
    if entry.first_seq != state.seq + 1:
        raise ReplayError(f"event {entry.first_seq} does not follow the state's last event {state.seq}")
    if entry.records[0].position != 0:
        raise ReplayError(f"event {entry.first_seq} is not the first event of its entry (position "
                          f"{entry.records[0].position}); the log or the snapshot before it is damaged")
    if entry.rejected:
        _replay_rejection(state, entry)
        return
    events = tuple(event_from_record(r) for r in entry.records)
    if owner is not None:
        owner.before(events)
    result = apply(state, ev.Entry(term=entry.term, leader="", time=entry.time, request_id=entry.request_id,
                                   events=events))
    if result.outcome != "applied" or (result.first_seq, result.last_seq) != (entry.first_seq, entry.last_seq):
        raise ReplayError(
            f"replaying events {entry.first_seq}..{entry.last_seq} gave {result.outcome} "
            f"{result.first_seq}..{result.last_seq} ({result.reason or 'no reason'}); "
            "the event log does not match what the masters applied")


def replay_records(state: ClusterState, records: Iterable[EventRecord]) -> ClusterState:
    """Apply every entry the records hold, in order, to `state` (mutated and returned)."""
    for entry in entries_from_records(records):
        replay_entry(state, entry)
    return state


@dataclass
class StateAt:
    """A rebuilt state and how it was obtained."""

    requested: int  # the index asked for (or resolved from a time)
    state: ClusterState  # its `seq` is the last event of the entry holding `requested`
    snapshot_seq: int  # the snapshot or cached state replay started from (0: from the empty state)
    replayed: int  # events replayed on top of it

    @property
    def index(self) -> int:
        return self.state.seq


def _start(source: HistorySource, target: int, cache: StateCache | None = None
           ) -> tuple[ClusterState, int, TaskOwnership]:
    """The state to replay from for `target` (a copy replay may mutate, through its `TaskOwnership`: a
    cached state's copy shares its task records): the nearest cached state or the nearest usable
    snapshot (full, or a delta whose base is decoded or decodable), whichever is cheaper
    (`statecache.choose_start`), or the empty state."""
    cached = cache.nearest(target) if cache is not None else None
    if cached is not None and cached[0] < target and cached[0] + 1 < source.first_seq():
        cached = None  # the events after it were pruned since it was cached
    bases = cache.bases if cache is not None else None
    at = target
    while True:
        snap_seq = source.snapshot_seq(at)  # its blob (~2.5 MB at 10,000 tasks) is read only when used
        snap: tuple[int, bytes] | None = None
        cost = SNAPSHOT_DECODE_EVENTS
        if bases is not None and snap_seq is not None and (cached is not None or bases.seqs()):
            # a choice to make (a cached state, or a kept base below): what does this snapshot cost?
            known = bases.start_cost(snap_seq)
            if known is None:  # not read yet: what kind of snapshot is it?
                snap = source.nearest_snapshot(snap_seq)
                if snap is not None:
                    bases.note(snap[0], delta_base(snap[1]))
                    known = bases.start_cost(snap[0])
            cost = known if known is not None else cost
        choice = choose_start(target, cached[0] if cached else None, snap_seq, cost)
        pooled = bases.nearest(target) if bases is not None else None
        if pooled is not None and pooled[0] + 1 >= source.first_seq() and _cheaper(
                CLONE_EVENTS + target - pooled[0], choice, target, cached, snap_seq, cost):
            # a decoded full snapshot kept (the delta writer's newest, or one decoded before) is nearer
            # than the stored snapshot nearest to `target` is cheap (a full one not decoded yet)
            state = share_state(pooled[1])
            return state, pooled[0], TaskOwnership(state, owns_all=False)
        if choice == "cached" and cached is not None:
            state = cached[1] if cached[0] >= target else share_state(cached[1])
            return state, cached[0], TaskOwnership(state, owns_all=False)
        if choice != "empty" and snap_seq is not None and (snap is None or snap[0] != snap_seq):
            snap = source.nearest_snapshot(snap_seq)
        if choice == "empty" or snap is None:
            return _owned(ClusterState(), 0)
        seq, blob = snap
        started = _from_snapshot(source, seq, blob, bases)
        if started is not None:
            if cache is not None and seq < target and delta_base(blob) is not None:
                # a delta decoded: kept as a checkpoint, so the next point of its stretch starts from a copy
                # of it (a `share_state`) instead of decoding it again (a diff's earlier end or a slider
                # stepping back walks down a stretch: every step before the replay's first checkpoint)
                cache.put(share_state(started[0]), checkpoint=True)
                started[2].shared()
            return started
        log.info("skipping the snapshot at %d: written by another version of tessera, damaged, or a delta "
                 "whose base is gone", seq)
        if seq <= 0:
            return _owned(ClusterState(), 0)
        at = seq - 1


def _cheaper(pooled: int, choice: str, target: int, cached: tuple[int, ClusterState] | None, snap_seq: int | None,
             snap_cost: int) -> bool:
    """Whether starting from a kept base, at a cost of `pooled` events, is cheaper than `choice`."""
    if choice == "cached" and cached is not None:
        return cached[0] < target and pooled < CLONE_EVENTS + target - cached[0]
    if choice == "snapshot" and snap_seq is not None:
        return pooled < snap_cost + target - snap_seq
    return True


def _from_snapshot(source: HistorySource, seq: int, blob: bytes, bases: SnapshotBases | None
                   ) -> tuple[ClusterState, int, TaskOwnership] | None:
    """The state to replay from that the snapshot stored at `seq` holds, or None when it is not usable.
    With `bases`, a full snapshot's decoded state is kept there (the replay goes on from a `share_state`
    copy) and a delta's base is taken from there (decoded and kept when missing)."""
    base_seq = delta_base(blob)
    if bases is not None:
        bases.note(seq, base_seq)
    if base_seq is None:
        kept = bases.get(seq) if bases is not None else None
        if kept is None:
            decoded = decode_snapshot(blob)
            if decoded is None or decoded.seq != seq:
                return None
            if bases is None:
                return _owned(decoded, seq)
            bases.put(decoded)
            bases.decoded += 1
            kept = decoded
        state = share_state(kept)
        return state, seq, TaskOwnership(state, owns_all=False)
    base = ClusterState() if base_seq == 0 else bases.get(base_seq) if bases is not None else None
    if base is None:
        found = source.nearest_snapshot(base_seq)
        if found is None or found[0] != base_seq:
            return None
        base = decode_snapshot(found[1])
        if base is None or base.seq != base_seq:
            return None
        if bases is not None:
            bases.put(base)
            bases.decoded += 1
            bases.note(base_seq, None)
    state = decode_delta(blob, base)
    if state is None or state.seq != seq:
        return None
    return state, seq, TaskOwnership(state, owns_all=False)


def _owned(state: ClusterState, seq: int) -> tuple[ClusterState, int, TaskOwnership]:
    return state, seq, TaskOwnership(state, owns_all=True)


def _first_available(source: HistorySource) -> int:
    """The lowest index whose state can be rebuilt: the first kept event's entry, or a snapshot."""
    first = source.first_seq()
    if first <= 1:
        return 0
    snap = source.nearest_snapshot(first - 1)
    return snap[0] if snap is not None and snap[0] >= first - 1 else 0


def _page_size(cursor: int, target: int) -> int:
    """How many records to read from `cursor` on the way to `target`: what is left up to it and one more
    (the next entry's start ends the target's entry), at most `PAGE`; past it, the rest of a long entry
    in pages of `PAST_TARGET`. A step of a slider replays a few events: it must not read thousands."""
    if cursor > target:
        return PAST_TARGET
    return min(PAGE, target - cursor + 2)


PAST_TARGET = 512


def rebuild(source: HistorySource, target: int, *, sink: SnapshotSink | None = None,
            every: int = DEFAULT_SNAPSHOT_EVERY, on_page: Callable[[int, int], None] | None = None,
            cache: StateCache | None = None, checkpoints: int = CHECKPOINT_EVERY,
            keep: Callable[[ClusterState], None] | None = None) -> StateAt:
    """The state after the entry that recorded event `target` (the empty state for 0).

    Replays from the nearest usable snapshot, or from a state in `cache` when that is cheaper, and keeps
    the result in `cache` (then the returned state is shared with it: read it, never mutate it), and on a
    long replay copies of the states it passes every `checkpoints` events (`statecache.checkpoint_due`). With a
    `sink`, a snapshot is stored whenever the replay crosses a multiple of `every` events, so the next
    rebuild near here is short. `on_page(seq, target)` is called after each page of records (progress
    bars, pacing a background thread). With `keep` (`background.DeferredSnapshots.keep`), those states are
    handed to it instead (read-only copies sharing the replay's records), to be encoded and stored off
    the caller's thread: a request does not wait ~0.4 s per snapshot at 10,000 tasks.
    """
    last = known_last(source)
    if target < 0 or target > last:
        raise PointOutOfRange(f"index {target} is beyond the last event of this log ({last})")
    state, snap_seq, owner = _start(source, target, cache)
    if snap_seq >= target:  # the state after the entry holding `target`, kept
        if cache is not None:
            cache.put(state)
        return StateAt(target, state, snap_seq, 0)
    first = source.first_seq()
    if snap_seq + 1 < first:
        available = _first_available(source)
        where = f"; the earliest state available is at index {available}" if available else ""
        raise HistoryUnavailable(f"history before index {first} was pruned and no snapshot covers index "
                                 f"{target}{where}", available, pruned=True)
    replayed = 0
    cursor = snap_seq + 1
    kept = snap_seq  # the last state kept in `cache` on the way
    last_bucket = snap_seq // every if every > 0 else 0
    pending: list[EventRecord] = []  # records of an entry not complete yet
    entry_first = snap_seq  # the first event of the last entry replayed
    done = False
    while not done:
        try:
            page = source.list(from_seq=cursor, limit=_page_size(cursor, target))
        except HistoryPruned as exc:
            raise HistoryUnavailable(f"history before index {exc.first_kept} was pruned while replaying",
                                     exc.first_kept, pruned=True) from exc
        if not page:
            done = True
        for r in page:
            expected = (pending[-1].seq if pending else state.seq) + 1
            if r.seq != expected:
                raise HistoryUnavailable(
                    f"events {expected}..{r.seq - 1} are missing from this log (the master installed a Raft "
                    "snapshot or could not write them); ask another master")
            if r.position == 0 and pending:
                if pending[-1].seq >= target:
                    done = True
                    break
                for entry in entries_from_records(pending):
                    replay_entry(state, entry, owner)
                    entry_first = entry.first_seq
                replayed += len(pending)
                pending = []
                if cache is not None and checkpoint_due(state.seq, kept, target, checkpoints):
                    # shares every task record from now on
                    cache.put(share_state(state), checkpoint=True, entry_first=entry_first)
                    owner.shared()
                    kept = state.seq
                if (sink is not None or keep is not None) and every > 0 and state.seq // every > last_bucket:
                    last_bucket = state.seq // every
                    if keep is not None:
                        keep(share_state(state))
                        owner.shared()
                    elif sink is not None:
                        sink.put_snapshot(state.seq, encode_snapshot(state))
            pending.append(r)
        if page:
            cursor = page[-1].seq + 1
            if on_page is not None:
                on_page(state.seq, target)
    if pending:
        if pending[-1].seq < target:
            raise HistoryUnavailable(f"events {pending[-1].seq + 1}..{target} are missing from this log")
        for entry in entries_from_records(pending):
            replay_entry(state, entry, owner)
            entry_first = entry.first_seq
        replayed += len(pending)
    elif state.seq < target:
        raise HistoryUnavailable(f"events {state.seq + 1}..{target} are missing from this log")
    if cache is not None:
        cache.put(state, entry_first=entry_first if replayed else None)
    return StateAt(target, state, snap_seq, replayed)


def state_at(source: HistorySource, point: Point, now: float, *, sink: SnapshotSink | None = None,
             every: int = DEFAULT_SNAPSHOT_EVERY, cache: StateCache | None = None,
             keep: Callable[[ClusterState], None] | None = None) -> StateAt:
    """`rebuild` at the index a point names (see `resolve_point`)."""
    return rebuild(source, resolve_point(source, point, now), sink=sink, every=every, cache=cache, keep=keep)


def state_and_diff(source: HistorySource, at: Point, since: Point | None, now: float, *,
                   sink: SnapshotSink | None = None, cache: StateCache | None = None,
                   keep: Callable[[ClusterState], None] | None = None
                   ) -> tuple[StateAt, StateAt | None, StateDiff | None]:
    """`tessera state --at AT [--diff SINCE]` (CLI, Operator.GetStateAt, GET /api/v1/state and /diff):
    the state at `at`, and with `since` the state there and what changed from it to `at`.

    One replay for a diff: the earlier point is rebuilt first and kept in `cache` (a cache of two when none
    is given), so the later one replays on from it instead of from a snapshot again."""
    target = resolve_point(source, at, now)
    if since is None:
        return rebuild(source, target, sink=sink, cache=cache, keep=keep), None, None
    cache = cache if cache is not None else StateCache(2)
    origin = resolve_point(source, since, now)
    if origin <= target:
        before = rebuild(source, origin, sink=sink, cache=cache, keep=keep)
        result = rebuild(source, target, sink=sink, cache=cache, keep=keep)
    else:
        result = rebuild(source, target, sink=sink, cache=cache, keep=keep)
        before = rebuild(source, origin, sink=sink, cache=cache, keep=keep)
    return result, before, diff_states(before.state, result.state)
