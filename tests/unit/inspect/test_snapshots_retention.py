"""State snapshots (the live state pickled at a crossing when that is quick and exact, otherwise rebuilt
from the event log; compressed and stored on a background thread) and retention (which keeps every kept
index rebuildable)."""

from __future__ import annotations

import pickle
import threading
import time
import zlib
from pathlib import Path

import grpc
import pytest

from tessera.control_plane.api.errors import status_for
from tessera.control_plane.core.state import ClusterState
from tessera.control_plane.eventlog import MemoryEventStore, SqliteEventStore
from tessera.control_plane.eventlog.background import Retention, Snapshotter, retention_cut
from tessera.control_plane.eventlog.errors import HistoryUnavailable
from tessera.control_plane.eventlog.replay import entries_from_records, rebuild, replay_entry, replay_records
from tessera.control_plane.eventlog.snapshots import decode_snapshot, encode_snapshot
from tessera.control_plane.runtime.statemachine import MasterStateMachine

from .workload import realistic_history

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def every_crossing_pickled(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests apply a history in a burst: without this, crossings right after a live pickle would be
    skipped by its pacing (`LIVE_DUTY`, tested on its own below), and which ones depends on timing."""
    monkeypatch.setattr(Snapshotter, "LIVE_DUTY", 1.0)


def wait_until(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def snapshot_seqs(store: MemoryEventStore) -> list[int]:
    out, at = [], store.last_seq()
    while (snap := store.nearest_snapshot(at)) is not None:
        out.append(snap[0])
        at = snap[0] - 1
    return sorted(out)


def test_the_state_machine_takes_a_snapshot_every_n_events_in_the_background() -> None:
    store = MemoryEventStore()
    leader = realistic_history(store, snapshot_every=50)
    snapshotter = leader.sm.snapshots
    assert snapshotter is not None
    # The writer thread coalesces crossings it lags behind (it writes the newest one wanted), so how many
    # intermediate ones are stored depends on the machine's load; the newest crossing always is.
    assert store.flush()  # the store writes asynchronously: last_seq() is the whole history only after it
    last_bucket = store.last_seq() // 50
    wait_until(lambda: store.nearest_snapshot(store.last_seq()) is not None
               and store.nearest_snapshot(store.last_seq())[0] // 50 == last_bucket)  # type: ignore[index]
    seqs = snapshot_seqs(store)
    assert len({seq // 50 for seq in seqs}) == len(seqs), "at most one snapshot per 50 events"
    for seq in seqs:  # each one is the live state after the entry that ended at seq
        state = decode_snapshot(store.nearest_snapshot(seq)[1])  # type: ignore[index]
        assert state is not None and state.fingerprint() == leader.fingerprints[seq]
    assert snapshotter.last_error is None
    assert 0 < snapshotter.captured <= snapshotter.taken  # pickled from the live state where exact
    store.close()


@pytest.mark.parametrize("budget", [0.0, 1e-9])
def test_without_live_pickles_or_when_they_are_too_slow_snapshots_are_rebuilt_from_the_log(budget: float) -> None:
    store = MemoryEventStore()
    leader = realistic_history(store, snapshot_every=0)
    assert store.flush()
    live = Snapshotter(store, every=10, live_budget_s=budget)
    live.LIVE_DUTY = 1.0  # no spacing between pickles here (see the next test)
    replay = rebuild(store, 0)
    for entry in entries_from_records(store.list(limit=10_000)):  # what the apply thread would report
        replay_entry(replay.state, entry)
        live.observe(entry.last_seq, replay.state)
    wait_until(lambda: live.taken > live.captured and store.nearest_snapshot(store.last_seq()) is not None
               and store.nearest_snapshot(store.last_seq())[0] >= store.last_seq() - 15)  # type: ignore[index]
    live.stop()
    crossings = store.last_seq() // 10
    assert crossings > 2 * live.LIVE_BACKOFF
    # a budget of 0 never pickles; one no pickle can meet pickles, then backs off for LIVE_BACKOFF buckets
    if budget == 0:
        assert live.pickled == 0
    else:
        assert 2 <= live.pickled <= crossings // live.LIVE_BACKOFF + 1
    assert live.captured <= live.pickled
    for seq in snapshot_seqs(store):  # each equals the state replayed from the start, and the live one
        state = decode_snapshot(store.nearest_snapshot(seq)[1])  # type: ignore[index]
        replayed = replay_records(ClusterState(), store.list(limit=seq))  # from the start, no snapshot
        assert state is not None and replayed.seq == seq and state.fingerprint() == replayed.fingerprint()
        assert state.fingerprint() == leader.fingerprints.get(seq, state.fingerprint())
    assert live.last_error is None
    store.close()


def test_crossings_soon_after_a_live_pickle_are_skipped_not_replayed() -> None:
    store = MemoryEventStore()
    realistic_history(store, snapshot_every=0, fingerprints=False)
    assert store.flush()
    live = Snapshotter(store, every=10, live_budget_s=10.0)
    live.LIVE_DUTY = 1e-6  # after one pickle, the next is due only after a million times its duration
    replay = rebuild(store, 0)
    for entry in entries_from_records(store.list(limit=10_000)):
        replay_entry(replay.state, entry)
        live.observe(entry.last_seq, replay.state)
    assert store.last_seq() // 10 > 10
    wait_until(lambda: live.taken == 1)
    assert live.pickled == live.captured == 1  # one snapshot, pickled; no crossing replayed
    live.stop()
    store.close()


def test_the_snapshotter_never_stores_on_the_apply_thread() -> None:
    store = MemoryEventStore()
    threads: set[str] = set()
    original = store.put_snapshot

    def spy(seq: int, blob: bytes) -> None:
        threads.add(threading.current_thread().name)
        original(seq, blob)

    store.put_snapshot = spy  # type: ignore[method-assign]
    leader = realistic_history(store, snapshot_every=40)
    wait_until(lambda: leader.sm.snapshots is not None and leader.sm.snapshots.taken >= 2)
    assert threads == {"tessera-snapshotter"}
    store.close()


def test_rebuild_starts_from_the_nearest_snapshot_and_saves_the_ones_it_passes() -> None:
    store = MemoryEventStore()
    leader = realistic_history(store)
    assert store.flush()
    last = store.last_seq()
    first = rebuild(store, last, sink=store, every=30)
    assert first.snapshot_seq == 0 and first.replayed == last
    assert store.flush()
    again = rebuild(store, last, every=30)
    assert 0 < again.snapshot_seq <= last and again.replayed == last - again.snapshot_seq < 40
    assert again.state.fingerprint() == first.state.fingerprint() == leader.live.fingerprint()
    store.close()


def test_a_snapshot_of_another_layout_or_damaged_is_skipped_not_loaded() -> None:
    store = MemoryEventStore()
    leader = realistic_history(store, rounds=1)
    assert store.flush()
    target = max(leader.fingerprints)
    store.put_snapshot(target, b"TSNAP\x01" + b"\x00" * 16 + pickle.dumps(ClusterState()))  # other layout
    store.put_snapshot(target - 5, b"garbage")
    assert store.flush()
    rebuilt = rebuild(store, target)
    assert rebuilt.snapshot_seq == 0 and rebuilt.state.fingerprint() == leader.fingerprints[target]
    store.close()


def test_a_snapshot_cannot_run_code() -> None:
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    blob = encode_snapshot(ClusterState())
    header = blob[:len(b"TSNAP") + 1 + 16]  # magic, format, layout hash
    assert decode_snapshot(header + zlib.compress(pickle.dumps(Evil()))) is None
    assert decode_snapshot(header + b"not zlib") is None
    assert decode_snapshot(blob) is not None


def test_an_installed_raft_snapshot_is_stored_when_the_log_lacks_its_history() -> None:
    source = MemoryEventStore()
    leader = realistic_history(source, rounds=1)
    # a new master installs the leader's state: its own event log has nothing before it
    fresh = MemoryEventStore()
    from tessera.control_plane.runtime.statemachine import MasterStateMachine

    sm = MasterStateMachine(fresh)
    installed = pickle.loads(pickle.dumps(leader.live))
    sm.restore(installed)
    assert fresh.flush()
    assert fresh.nearest_snapshot(installed.seq)[0] == installed.seq  # type: ignore[index]
    # events after it are applied and recorded as usual; the states after it rebuild
    fresh.append([r for r in source.list(limit=10_000) if r.seq > installed.seq])
    rebuilt = rebuild(fresh, installed.seq)
    assert rebuilt.state.fingerprint() == leader.live.fingerprint()
    with pytest.raises(HistoryUnavailable, match="pruned|missing"):
        rebuild(fresh, installed.seq - 3)
    source.close()
    fresh.close()


def test_retention_keeps_at_least_n_events_and_every_kept_index_stays_rebuildable(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "events.db")
    leader = realistic_history(store)
    assert store.flush()
    last = store.last_seq()
    retention = Retention(store, keep=60, step=25, every=1000)
    deleted = retention.run_once()
    first = store.first_seq()
    assert deleted == first - 1 and store.count() >= 60 and last - first + 1 >= 60
    assert store.get(first).position == 0  # history starts at an entry
    for seq in [s for s in leader.fingerprints if s >= first - 1]:
        assert rebuild(store, seq).state.fingerprint() == leader.fingerprints[seq]
    with pytest.raises(HistoryUnavailable) as info:
        rebuild(store, first - 2)
    assert info.value.pruned and info.value.first_available == first - 1
    assert "pruned" in str(info.value) and str(first - 1) in str(info.value)
    assert status_for(info.value)[:2] == (grpc.StatusCode.OUT_OF_RANGE, str(info.value))  # as HistoryPruned
    assert retention.run_once() == 0  # nothing more is due
    store.close()


def test_retention_cut_falls_on_an_entry_boundary() -> None:
    store = MemoryEventStore()
    realistic_history(store, rounds=1)
    assert store.flush()
    for keep in range(1, store.last_seq() + 2):
        cut = retention_cut(store, keep)
        if cut:
            assert store.get(cut).position == 0 and store.last_seq() - cut + 1 >= keep
    store.close()


def test_retention_runs_in_the_background_and_stops() -> None:
    store = MemoryEventStore()
    realistic_history(store)
    assert store.flush()
    retention = Retention(store, keep=100, interval=0.05).start()
    wait_until(lambda: store.first_seq() > 1)
    retention.stop()
    assert retention.last_error is None and store.count() >= 100
    store.close()


def test_stop_abandons_a_paced_rebuild_and_ends_the_thread() -> None:
    store = MemoryEventStore()
    realistic_history(store, snapshot_every=0, fingerprints=False)
    assert store.flush()
    # no live pickles, so a crossing is rebuilt from the log; after each page the rebuild pauses for a
    # million times the work it did, so only stop() can end it
    live = Snapshotter(store, every=10, duty=1e-6, live_budget_s=0.0)
    paused = threading.Event()
    pace = live._pace

    def pausing(seq: int, target: int) -> None:
        paused.set()
        pace(seq, target)

    live._pace = pausing  # type: ignore[method-assign]
    live.observe(0)
    live.observe(store.last_seq())  # crosses: the thread starts rebuilding
    assert paused.wait(20), "the rebuild never reached its first pause"
    live.stop()
    assert live._thread is not None and not live._thread.is_alive()  # the pause ended at stop()
    assert live.taken == 0 and live.last_error is None  # abandoned, not failed
    store.close()


def test_closing_the_state_machine_stops_its_snapshotter_before_the_store_closes() -> None:
    store = MemoryEventStore()
    leader = realistic_history(store, snapshot_every=10, fingerprints=False)
    snapshots = leader.sm.snapshots
    assert snapshots is not None
    wait_until(lambda: snapshots.taken >= 1)
    leader.sm.close()
    assert snapshots._thread is not None and not snapshots._thread.is_alive()
    # what the snapshotter wrote before it stopped may still sit in the store's queue: count it in
    assert store.flush()
    taken = snapshot_seqs(store)
    leader.sm.close()  # idempotent
    assert store.flush() and snapshot_seqs(store) == taken
    store.close()


def test_a_master_s_state_machine_never_pickles_its_live_state_when_told_not_to() -> None:
    """A master applies on pysyncobj's tick thread, which also sends the heartbeats: its state machine is
    built with `live_snapshots=False`, so every snapshot is rebuilt from the log off that thread."""
    store = MemoryEventStore()
    realistic_history(store, snapshot_every=0, fingerprints=False)
    assert store.flush()
    replay = rebuild(store, 0)
    machines = {live: MasterStateMachine(store, snapshot_every=10, live_snapshots=live) for live in (False, True)}
    for sm in machines.values():
        assert sm.snapshots is not None
        sm.snapshots.LIVE_DUTY = 1.0
    for entry in entries_from_records(store.list(limit=10_000)):  # what the apply thread would report
        replay_entry(replay.state, entry)
        for sm in machines.values():
            sm.snapshots.observe(entry.last_seq, replay.state)  # type: ignore[union-attr]
    for sm in machines.values():
        sm.snapshots.stop()  # type: ignore[union-attr]
    assert machines[False].snapshots.pickled == 0  # type: ignore[union-attr]
    assert machines[True].snapshots.pickled > 0  # type: ignore[union-attr]
    store.close()


def test_a_snapshot_decodes_to_the_state_it_encoded_in_both_formats() -> None:
    """`encode_snapshot` pickles the core's records and values as calls of its builders (format 6);
    the Snapshotter's live pickles stay plain pickles (`encode_pickled`, format 7): both load the same."""
    from tessera.control_plane.eventlog.snapshots import encode_pickled

    store = MemoryEventStore()
    leader = realistic_history(store)
    assert store.flush()
    state = leader.live
    built = encode_snapshot(state)
    plain = encode_pickled(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
    assert built[len(b"TSNAP")] == 6 and plain[len(b"TSNAP")] == 7
    assert b"build_TaskRecord" in zlib.decompress(built[len(b"TSNAP") + 1 + 16:])
    for blob in (built, plain):
        got = decode_snapshot(blob)
        assert got is not None and got.fingerprint() == state.fingerprint()
        assert got.tasks and all(type(t).__slots__ for t in got.tasks.values())
    store.close()


def test_a_snapshot_written_before_requests_were_remembered_as_ints_still_loads() -> None:
    """Formats 4 and 5 hold every remembered request as a tuple: they load, and answer a retry the same."""
    from tessera.control_plane.core.state import remembered_result
    from tessera.control_plane.eventlog.snapshots import encode_pickled

    store = MemoryEventStore()
    state = realistic_history(store).live
    assert any(isinstance(v, int) for v in state.requests.values())
    old = pickle.loads(pickle.dumps(state))
    for rid, value in old.requests.items():
        r = remembered_result(value, rid)
        old.requests[rid] = (r.outcome, r.first_seq, r.last_seq, r.error_code, r.reason)
    built, plain = bytearray(encode_snapshot(old)), bytearray(encode_pickled(pickle.dumps(old)))
    built[len(b"TSNAP")], plain[len(b"TSNAP")] = 5, 4
    for blob in (bytes(built), bytes(plain)):
        got = decode_snapshot(blob)
        assert got is not None
        assert {rid: got.result_for_request(rid) for rid in got.requests} == {
            rid: state.result_for_request(rid) for rid in state.requests}
    store.close()


def test_a_snapshot_can_call_no_builder_but_its_own() -> None:
    import io

    from tessera.control_plane.eventlog import snapshots

    unpickler = snapshots._CoreUnpickler(io.BytesIO(b""))
    assert unpickler.find_class(snapshots.__name__, "build_TaskRecord") is snapshots.build_TaskRecord  # type: ignore[attr-defined]
    for name in ("_register_builders", "encode_snapshot", "_make_builder", "exec"):
        with pytest.raises(pickle.UnpicklingError):
            unpickler.find_class(snapshots.__name__, name)


def test_a_serving_rebuild_leaves_its_snapshots_to_a_thread_of_their_own() -> None:
    """`rebuild(..., keep=DeferredSnapshots.keep)` (GetStateAt, the web UI) encodes and stores no
    snapshot on the caller's thread; the thread stores each state it passed, and they rebuild the history."""
    from tessera.control_plane.eventlog.background import DeferredSnapshots

    store = MemoryEventStore()
    leader = realistic_history(store)
    assert store.flush()
    stored_on: list[str] = []
    put = store.put_snapshot

    def recording(seq: int, blob: bytes) -> None:
        stored_on.append(threading.current_thread().name)
        put(seq, blob)

    store.put_snapshot = recording  # type: ignore[method-assign]
    deferred = DeferredSnapshots(store, pending=100, duty=1.0)
    last = store.last_seq()
    got = rebuild(store, last, every=25, keep=deferred.keep)
    assert got.state.fingerprint() == leader.live.fingerprint()
    assert deferred.wait_idle(30) and store.flush()
    assert deferred.stored >= 3 and deferred.stored == len(stored_on)
    assert stored_on and threading.current_thread().name not in stored_on
    assert set(stored_on) == {"tessera-history-snapshots"}
    for seq in range(25, last, 25):
        snap = store.nearest_snapshot(seq)
        assert snap is not None and seq - 25 < snap[0] <= seq
        again = rebuild(store, snap[0], every=0)
        assert again.replayed == 0 and again.state.fingerprint() == leader.fingerprints[snap[0]]
    store.close()
