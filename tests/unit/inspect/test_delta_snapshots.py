"""Delta snapshots (snapshots.encode_delta, background.DeltaSnapshots) and rebuilds starting from them
(replay._start with statecache.SnapshotBases): every state read from a delta equals the history at its
index, a rebuild of any point starts from the nearest stored delta and answers exactly what a full replay
answers, and the bases it reads from are never changed."""

from __future__ import annotations

from collections import OrderedDict

import pytest

from tessera.control_plane.core.state import ClusterState
from tessera.control_plane.eventlog import MemoryEventStore
from tessera.control_plane.eventlog.background import DeltaSnapshots
from tessera.control_plane.eventlog.replay import entries_from_records, rebuild
from tessera.control_plane.eventlog.snapshots import (
    _dict_patch,
    decode_delta,
    decode_snapshot,
    delta_base,
    encode_delta,
)
from tessera.control_plane.eventlog.statecache import SnapshotBases, StateCache

from .test_statecache import _teardown_with_unacknowledged_tasks
from .workload import Leader, random_history, realistic_history

EVERY, DELTA_EVERY = 40, 6


def _history(name: str) -> tuple[MemoryEventStore, Leader]:
    store = MemoryEventStore()
    if name == "realistic":
        leader = realistic_history(store)
    elif name == "teardown":
        leader = _teardown_with_unacknowledged_tasks(store)
    else:
        leader = random_history(store, seed=int(name.split("-")[1]), steps=300)
    assert store.flush(60)
    return store, leader


def _write_deltas(store: MemoryEventStore, bases: SnapshotBases | None = None) -> DeltaSnapshots:
    """As a master does: the writer observes the end of every applied entry (a short history: denser)."""
    every, delta_every = (EVERY, DELTA_EVERY) if store.last_seq() > 4 * EVERY else (8, 2)
    writer = DeltaSnapshots(store, every=every, delta_every=delta_every, duty=1.0, bases=bases)
    last = 0
    for entry in entries_from_records(store.list(from_seq=1, limit=10**6)):
        writer.observe(entry.last_seq)
        last = entry.last_seq
    assert writer.wait_done(last, timeout=60), writer.last_error
    writer.stop()
    assert writer.last_error is None
    assert store.flush(60)  # the store writes snapshots in the background
    return writer


def _stored(store: MemoryEventStore) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    at = store.last_seq()
    while (found := store.nearest_snapshot(at)) is not None:
        out[found[0]] = found[1]
        at = found[0] - 1
    return out


HISTORIES = ["realistic", "teardown", "random-1", "random-2", "random-3"]


@pytest.mark.parametrize("history", HISTORIES)
def test_every_delta_written_decodes_to_the_history_and_leaves_its_base_alone(history: str) -> None:
    store, leader = _history(history)
    writer = _write_deltas(store)
    stored = _stored(store)
    deltas = {seq: blob for seq, blob in stored.items() if delta_base(blob) is not None}
    assert writer.deltas == len(deltas) and len(deltas) >= 3, (writer.deltas, sorted(stored))
    assert writer.fulls >= 1
    for seq, blob in sorted(deltas.items()):
        base_seq = delta_base(blob)
        assert base_seq is not None and base_seq < seq and seq - base_seq <= EVERY + 50, (base_seq, seq)
        base = decode_snapshot(stored[base_seq]) if base_seq else ClusterState()  # 0: before the first full one
        assert base is not None and base.seq == base_seq
        before = base.fingerprint()
        state = decode_delta(blob, base)
        assert state is not None and state.seq == seq
        assert state.fingerprint() == leader.fingerprints[seq], f"the delta at {seq} is not the history there"
        assert base.fingerprint() == before, f"decoding the delta at {seq} changed its base"
        # a delta read against another state than its base is refused, never half-applied
        assert decode_delta(blob, ClusterState(seq=base_seq + 1)) is None


@pytest.mark.parametrize("history", HISTORIES)
def test_a_rebuild_starts_from_the_nearest_delta_and_equals_the_history(history: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from tessera.control_plane.eventlog import replay

    # in a history this small a kept base a few events back is cheaper by the costs of a big state: here
    # every start must be the nearest stored snapshot
    monkeypatch.setattr(replay, "CLONE_EVENTS", 10**6)
    store, leader = _history(history)
    bases = SnapshotBases()
    _write_deltas(store, bases)
    stored = sorted(_stored(store))
    points = sorted(leader.fingerprints)
    started_from_delta = 0
    for seq in points:
        cache = StateCache(0, bases=bases)  # no cached state: a first visit, from a stored snapshot
        got = rebuild(store, seq, every=0, cache=cache)
        assert got.state.fingerprint() == leader.fingerprints[seq], f"diverged at {seq}"
        nearest = max((s for s in stored if s <= seq), default=0)
        assert got.snapshot_seq == nearest, f"{seq} started from {got.snapshot_seq}, not the snapshot at {nearest}"
        assert got.replayed <= max(0, got.index - nearest)
        started_from_delta += delta_base(store.nearest_snapshot(seq)[1]) is not None if nearest else 0
    assert started_from_delta > len(points) // 3
    # the bases the rebuilds started from are still the snapshots stored there
    for seq in bases.seqs():
        base = bases.get(seq)
        assert base is not None and base.fingerprint() == leader.fingerprints[seq]


def test_a_delta_whose_base_is_gone_is_skipped_for_an_earlier_snapshot(
        memory_history: tuple[MemoryEventStore, Leader]) -> None:
    store, leader = memory_history
    _write_deltas(store)
    stored = _stored(store)
    base = max(b for blob in stored.values() if (b := delta_base(blob)) is not None)
    target = max(seq for seq, blob in stored.items() if delta_base(blob) == base)
    assert any(seq < base for seq in stored)
    store.put_snapshot(base, b"damaged")  # the base of the last deltas no longer decodes
    assert store.flush(60) and store.nearest_snapshot(base) == (base, b"damaged")
    got = rebuild(store, target, every=0, cache=StateCache(0, bases=SnapshotBases()))
    assert got.state.fingerprint() == leader.fingerprints[target]
    assert got.snapshot_seq < base  # started before the base that is gone


def test_a_dict_patch_keeps_the_order_or_is_refused() -> None:
    base = OrderedDict((k, object()) for k in "abcdef")
    cur = OrderedDict(base)
    del cur["a"], cur["b"]  # the oldest two evicted (a FIFO memory)
    cur["c"] = object()
    cur["g"] = object()
    removed, changed, added = _dict_patch(cur, base)  # type: ignore[misc]
    assert removed == 2 and [k for k, _ in changed] == ["c"] and [k for k, _ in added] == ["g"]
    cur2 = OrderedDict(base)
    del cur2["d"]
    assert _dict_patch(cur2, base)[0] == ["d"]  # type: ignore[index]
    cur3 = OrderedDict(base)
    cur3.move_to_end("a")  # removed and added again: its place changed
    assert _dict_patch(cur3, base) is None
    a = ClusterState(seq=3)
    b = ClusterState(seq=5, requests=OrderedDict(x=1))
    state = decode_delta(encode_delta(b, a), a)
    assert state is not None and state.requests == OrderedDict(x=1) and a.requests == OrderedDict()


def test_a_master_writes_deltas_as_it_applies_and_its_history_cache_starts_from_them() -> None:
    """`MasterStateMachine(delta_every=...)`: the writer observes every applied batch; the operator's
    history cache shares the state machine's bases, so a first visit starts from the nearest delta."""
    from types import SimpleNamespace

    from tessera.control_plane.api.operator import OperatorService

    store = MemoryEventStore()
    leader = realistic_history(store, snapshot_every=EVERY, delta_every=DELTA_EVERY)
    assert store.flush(60)
    writer = leader.sm.deltas
    assert writer is not None and writer.wait_done(leader.live.seq, timeout=60), writer.last_error
    leader.sm.close()
    assert store.flush(60)
    assert writer.last_error is None and writer.deltas >= 5
    service = OperatorService.__new__(OperatorService)
    OperatorService.__init__(service, SimpleNamespace(sm=leader.sm))  # type: ignore[arg-type]
    assert service.history_cache.bases is leader.sm.history_bases and leader.sm.history_bases.seqs()
    stored = sorted(_stored(store))
    for seq in sorted(leader.fingerprints)[::3]:
        got = rebuild(store, seq, every=0, cache=StateCache(0, bases=service.history_cache.bases))
        assert got.state.fingerprint() == leader.fingerprints[seq], f"diverged at {seq}"
        assert got.snapshot_seq in stored or got.snapshot_seq == 0
        assert seq - got.snapshot_seq <= EVERY + 50, (seq, got.snapshot_seq)


def test_a_kept_base_nearer_than_an_undecoded_full_snapshot_is_the_start(
        memory_history: tuple[MemoryEventStore, Leader]) -> None:
    store, leader = memory_history
    bases = SnapshotBases()
    _write_deltas(store, bases)
    kept = bases.seqs()
    assert kept
    base = next(b for b in reversed(kept) if sum(s > b + 1 for s in leader.fingerprints) >= 2)
    # a full snapshot stored a little after the kept base (another snapshotter's), not decoded yet
    later = min(s for s in leader.fingerprints if s > base + 1)
    target = min(s for s in leader.fingerprints if s > later)
    store.put_snapshot(later, _encode_full(store, later))
    assert store.flush(60)
    got = rebuild(store, target, every=0, cache=StateCache(0, bases=bases))
    assert got.snapshot_seq == base and bases.decoded == 0
    assert got.state.fingerprint() == leader.fingerprints[target]
    assert bases.get(base).fingerprint() == leader.fingerprints[base]  # type: ignore[union-attr]


def _encode_full(store: MemoryEventStore, seq: int) -> bytes:
    from tessera.control_plane.eventlog.snapshots import encode_snapshot

    return encode_snapshot(rebuild(store, seq, every=0).state)


def test_after_a_failed_replay_the_writer_waits_for_the_next_stretch(
        memory_history: tuple[MemoryEventStore, Leader]) -> None:
    """A log it cannot replay (here: a snapshot that does not match its events) is logged once per
    stretch of `every` events, not replayed again on every batch observed."""
    store, leader = memory_history
    first = min(s for s in leader.fingerprints if s > 10)
    store.put_snapshot(first, b"x")  # not a snapshot: skipped; then one whose state is the wrong one
    from tessera.control_plane.eventlog.snapshots import encode_snapshot

    store.put_snapshot(first, encode_snapshot(ClusterState(seq=first)))
    assert store.flush(60)
    writer = DeltaSnapshots(store, every=10_000, delta_every=DELTA_EVERY, duty=1.0)
    ends = [e.last_seq for e in entries_from_records(store.list(from_seq=1, limit=10**6)) if e.last_seq > first]
    writer.observe(ends[0])
    assert writer.wait_done(ends[0], timeout=60)
    assert writer.last_error is not None
    writer.last_error = None
    replayed = writer.replayed
    for seq in ends[1:]:
        writer.observe(seq)
    assert writer.wait_done(ends[-1], timeout=60)
    writer.stop()
    assert writer.last_error is None and writer.replayed == replayed  # not tried again in this stretch


def test_with_no_cached_state_a_delta_of_a_kept_base_is_priced_as_one(
        memory_history: tuple[MemoryEventStore, Leader], monkeypatch: pytest.MonkeyPatch) -> None:
    """A first visit (no state cached) with the bases kept: the nearest delta starts at what a delta of a
    kept base costs, so it is taken over the kept base itself when that replays more (it was priced as a
    full decode, and the kept base, ~4,300 events back in bench_web's log, won: 200 ms instead of 10)."""
    from tessera.control_plane.eventlog import replay, statecache

    store, leader = memory_history
    bases = SnapshotBases()
    _write_deltas(store, bases)
    stored = _stored(store)
    # this history is small: costs scaled down so that replaying more than 3 events costs more than a start
    monkeypatch.setattr(statecache, "DELTA_START_EVENTS", 1)
    monkeypatch.setattr(replay, "CLONE_EVENTS", 3)
    deltas = sorted(seq for seq, blob in stored.items() if (b := delta_base(blob)) and b in bases.seqs()
                    and seq - b > 10)
    assert deltas
    for seq in deltas:
        target = min(s for s in leader.fingerprints if s >= seq)
        got = rebuild(store, target, every=0, cache=StateCache(0, bases=bases))
        assert got.snapshot_seq == seq, (target, got.snapshot_seq, delta_base(stored[seq]))
        assert got.state.fingerprint() == leader.fingerprints[target]



@pytest.mark.parametrize("history", ["realistic", "random-2"])
def test_a_restarted_writer_decodes_the_older_bases_when_caught_up_so_first_visits_decode_none(history: str) -> None:
    """After a restart nothing is decoded: the writer starts from the newest full snapshot and, once
    caught up, decodes the older bases (newest first, while the pool has room, never pushing one out), so
    a first visit into any stretch starts from a delta without decoding its base on the request's thread."""
    store, leader = _history(history)
    _write_deltas(store)  # the log as a master that wrote it left it
    stored = _stored(store)
    fulls = sorted(seq for seq, blob in stored.items() if delta_base(blob) is None)
    assert len(fulls) >= 3, sorted(stored)
    every, delta_every = (EVERY, DELTA_EVERY) if store.last_seq() > 4 * EVERY else (8, 2)
    last = store.last_seq()
    for size, expected in ((2, fulls[-2:]), (len(fulls) + 2, fulls)):
        bases = SnapshotBases(size=size)
        writer = DeltaSnapshots(store, every=every, delta_every=delta_every, duty=1.0, bases=bases)
        writer.observe(last)
        assert writer.wait_done(last, timeout=60) and writer.wait_warmed(timeout=60), writer.last_error
        writer.stop()
        assert writer.last_error is None
        assert sorted(bases.seqs()) == expected and writer.warmed == len(expected) - 1, (size, bases.seqs())
        for seq in bases.seqs():
            assert bases.get(seq).fingerprint() == leader.fingerprints[seq]  # type: ignore[union-attr]
    # the pool with every base: a first visit anywhere after the first base decodes none
    for seq in sorted(s for s in leader.fingerprints if s >= fulls[0])[::2]:
        got = rebuild(store, seq, every=0, cache=StateCache(0, bases=bases))
        assert got.state.fingerprint() == leader.fingerprints[seq], f"diverged at {seq}"
    assert bases.decoded == 0


def test_a_decoded_delta_is_kept_so_a_point_after_it_starts_without_decoding_it_again(
        memory_history: tuple[MemoryEventStore, Leader], monkeypatch: pytest.MonkeyPatch) -> None:
    """A first visit that starts from a stored delta keeps a copy of the decoded state (a checkpoint): the
    next point between the delta and the visit (a diff's earlier end walking back, a slider stepping
    back) starts from that copy, with no delta decoded again, and both answers are the history."""
    from tessera.control_plane.eventlog import snapshots

    store, leader = memory_history
    bases = SnapshotBases()
    _write_deltas(store, bases)
    stored = _stored(store)
    decoded: list[int] = []
    real = snapshots.decode_delta

    def counting(blob: bytes, base: ClusterState) -> ClusterState | None:
        state = real(blob, base)
        decoded.append(-1 if state is None else state.seq)
        return state

    from tessera.control_plane.eventlog import replay

    monkeypatch.setattr(replay, "decode_delta", counting)
    # this history is small: costs scaled down (a delta of a kept base above a copy of a kept state, both
    # below replaying more than a few events)
    from tessera.control_plane.eventlog import statecache

    monkeypatch.setattr(statecache, "DELTA_START_EVENTS", 5)
    monkeypatch.setattr(statecache, "CLONE_EVENTS", 3)
    monkeypatch.setattr(replay, "CLONE_EVENTS", 3)
    points = sorted(leader.fingerprints)
    checked = 0
    for seq in sorted(s for s, blob in stored.items() if (b := delta_base(blob)) and b in bases.seqs()):
        after = [p for p in points if p > seq + 1]
        if len(after) < 2 or any(seq < s <= after[1] for s in stored):
            continue  # two points after it, before the next stored snapshot
        cache = StateCache(4, checkpoints=4, bases=bases)
        decoded.clear()
        far, near = after[1], after[0]
        got = rebuild(store, far, every=0, cache=cache, checkpoints=0)
        assert got.snapshot_seq == seq and decoded == [seq], (seq, got.snapshot_seq, decoded)
        again = rebuild(store, near, every=0, cache=cache, checkpoints=0)
        assert again.snapshot_seq == seq and decoded == [seq], (seq, again.snapshot_seq, decoded)
        assert got.state.fingerprint() == leader.fingerprints[far]
        assert again.state.fingerprint() == leader.fingerprints[near]
        checked += 1
    assert checked >= 2
