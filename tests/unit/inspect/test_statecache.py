"""Rebuilding with a cache of rebuilt states (eventlog/statecache.py): every answer equals a fresh rebuild
from the log and the live state the master held, whatever was asked before (a slider's steps forward and
back, the two ends of a diff), and a cached state is never changed by a later replay."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from tessera.control_plane.core.state import ClusterState
from tessera.control_plane.eventlog import MemoryEventStore
from tessera.control_plane.eventlog.diff import diff_states
from tessera.control_plane.eventlog.replay import (
    entries_from_records,
    rebuild,
    replay_records,
    state_and_diff,
)
from tessera.control_plane.eventlog.snapshots import encode_snapshot
from tessera.control_plane.eventlog.statecache import (
    CLONE_EVENTS,
    SNAPSHOT_DECODE_EVENTS,
    StateCache,
    checkpoint_due,
    choose_start,
    clone_state,
)
from tessera.control_plane.eventlog.timepoints import Point

from .workload import Leader


def test_a_slider_moving_both_ways_gets_the_live_state_at_every_point(
        memory_history: tuple[MemoryEventStore, Leader]) -> None:
    store, leader = memory_history
    cache = StateCache(3)
    points = sorted(leader.fingerprints)
    rng = random.Random(7)
    i = len(points) // 2
    started_from_cache = 0
    for _ in range(300):
        i = min(len(points) - 1, max(0, i + rng.choice((-3, -1, 1, 1, 2, 5, -20, 20))))
        seq = points[i]
        got = rebuild(store, seq, every=0, cache=cache)
        assert got.state.fingerprint() == leader.fingerprints[seq], f"diverged at {seq}"
        started_from_cache += got.snapshot_seq > 0
    assert started_from_cache > 200  # the cache was used, not only the empty state
    # and what the cache holds now is still exactly the history
    for seq in cache.indexes():
        assert rebuild(store, seq, every=0, cache=cache).state.fingerprint() == leader.fingerprints[seq]


def test_a_cached_state_is_not_changed_by_replaying_on_from_it(memory_history: tuple[MemoryEventStore, Leader]) -> None:
    store, leader = memory_history
    points = sorted(leader.fingerprints)
    early, late = points[len(points) // 3], points[-1]
    cache = StateCache(4)
    first = rebuild(store, early, every=0, cache=cache)
    later = rebuild(store, late, every=0, cache=cache)
    assert later.snapshot_seq == early and later.replayed == late - early  # replayed on from the cached one
    assert later.state.fingerprint() == leader.fingerprints[late]
    again = rebuild(store, early, every=0, cache=cache)
    assert again.state is first.state and again.replayed == 0
    assert again.state.fingerprint() == leader.fingerprints[early] == rebuild(store, early, every=0).state.fingerprint()


def test_a_clone_shares_no_mutable_part(memory_history: tuple[MemoryEventStore, Leader]) -> None:
    store, leader = memory_history
    points = sorted(leader.fingerprints)
    mid = points[len(points) // 2]
    original = rebuild(store, mid, every=0).state
    before = original.fingerprint()
    copy = clone_state(original)
    assert copy.fingerprint() == before and copy is not original
    replay_records(copy, store.list(from_seq=mid + 1, limit=10**6))
    assert copy.fingerprint() == leader.fingerprints[points[-1]]
    assert original.fingerprint() == before


@dataclass
class _Odd:
    things: bytearray = field(default_factory=bytearray)


def test_a_state_holding_an_unknown_mutable_type_is_refused_not_shared() -> None:
    state = ClusterState()
    state.event_counts = {"x": _Odd()}  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="bytearray"):
        clone_state(state)


def test_a_diff_replays_once_and_equals_the_diff_of_fresh_rebuilds(
        memory_history: tuple[MemoryEventStore, Leader]) -> None:
    store, leader = memory_history
    points = sorted(leader.fingerprints)
    a, b = points[5], points[-3]
    fresh = diff_states(rebuild(store, a, every=0).state, rebuild(store, b, every=0).state)
    result, before, diff = state_and_diff(store, Point(index=b), Point(index=a), 0.0)
    assert before is not None and diff is not None
    assert (before.index, result.index) == (a, b) and diff == fresh and diff.changes
    assert result.snapshot_seq == a  # the later point replayed on from the earlier one
    assert result.state.fingerprint() == leader.fingerprints[b]
    assert before.state.fingerprint() == leader.fingerprints[a]
    # the other way round: what changed going back
    back, since, undo = state_and_diff(store, Point(index=a), Point(index=b), 0.0)
    assert since is not None and undo == diff_states(since.state, back.state)
    assert back.state.fingerprint() == leader.fingerprints[a]
    # without a diff, with a master's cache: the state alone
    cache = StateCache()
    only, none, nothing = state_and_diff(store, Point(index=b), None, 0.0, cache=cache)
    assert none is None and nothing is None and cache.indexes() == [b]
    assert only.state.fingerprint() == leader.fingerprints[b]


def test_a_cached_state_before_what_retention_removed_is_not_a_start(
        memory_history: tuple[MemoryEventStore, Leader]) -> None:
    store, leader = memory_history
    points = sorted(leader.fingerprints)
    old, kept, late = points[3], points[len(points) // 2], points[-1]
    cache = StateCache()
    rebuild(store, old, every=0, cache=cache)
    store.put_snapshot(kept, encode_snapshot(rebuild(store, kept, every=0).state))
    store.prune(before_seq=kept + 1)
    got = rebuild(store, late, every=0, cache=cache)
    assert got.snapshot_seq == kept and got.state.fingerprint() == leader.fingerprints[late]
    # the cached state itself still answers for its own index
    assert rebuild(store, old, every=0, cache=cache).state.fingerprint() == leader.fingerprints[old]


def test_where_a_rebuild_starts() -> None:
    assert choose_start(100, None, None) == "empty"
    assert choose_start(100, None, 0) == "snapshot"
    assert choose_start(100, 100, 90) == "cached"  # the very state: nothing to replay
    assert choose_start(100, 10, None) == "cached"
    # a snapshot nearer by more than decoding costs over cloning wins
    gap = SNAPSHOT_DECODE_EVENTS - CLONE_EVENTS
    assert choose_start(100_000, 50_000, 50_000 + gap) == "cached"
    assert choose_start(100_000, 50_000, 50_000 + gap + 1) == "snapshot"


def test_the_cache_keeps_the_most_recently_used_states() -> None:
    cache = StateCache(2)
    states = {seq: ClusterState(seq=seq) for seq in (10, 20, 30)}
    cache.put(states[10])
    cache.put(states[20])
    assert cache.nearest(25) == (20, states[20]) and cache.nearest(15) == (10, states[10])
    assert cache.nearest(5) is None
    cache.put(states[30])  # 20 was used least recently
    assert cache.indexes() == [10, 30] and cache.nearest(25) == (10, states[10])
    StateCache(0).put(states[10])


def test_a_long_replay_leaves_checkpoints_that_equal_the_history(
        memory_history: tuple[MemoryEventStore, Leader]) -> None:
    store, leader = memory_history
    last = max(leader.fingerprints)
    cache = StateCache(50)
    rebuild(store, last, every=0, cache=cache, checkpoints=last + 1)  # no multiple crossed
    assert cache.indexes() == [last]
    cache = StateCache(50)
    rebuild(store, last, every=0, cache=cache, checkpoints=max(2, last // 10))
    kept = cache.indexes()
    assert len(kept) >= 5 and kept[-1] == last
    for seq in kept:
        assert seq in leader.fingerprints and rebuild(store, seq, every=0, cache=cache).replayed == 0
        assert cache.nearest(seq) is not None
        assert cache.nearest(seq)[1].fingerprint() == leader.fingerprints[seq]  # type: ignore[index]
    # a point before the one asked starts from the checkpoint just before it
    back = next(s for s in sorted(leader.fingerprints) if kept[1] < s < kept[2])
    got = rebuild(store, back, every=0, cache=cache)
    assert got.snapshot_seq == kept[1] and got.state.fingerprint() == leader.fingerprints[back]


def test_when_a_replay_keeps_a_checkpoint() -> None:
    assert checkpoint_due(3_000, 0, 10_000, every=2_500)  # crossed 2,500
    assert not checkpoint_due(2_000, 0, 10_000, every=2_500)  # no multiple crossed yet
    assert not checkpoint_due(4_000, 3_000, 10_000, every=2_500)  # kept at 3,000: 5,000 not crossed yet
    assert checkpoint_due(9_990, 7_400, 10_000, every=2_500)  # crossed 7,500, even near the target
    assert not checkpoint_due(10_000, 7_400, 10_000, every=2_500)  # the target itself is kept anyway
    assert not checkpoint_due(3_000, 0, 10_000, every=0)
    # within `near` events of the target, a finer grid
    assert checkpoint_due(9_260, 9_000, 10_000, every=2_500, near_every=250, near=1_000)  # crossed 9,250
    assert not checkpoint_due(9_240, 9_000, 10_000, every=2_500, near_every=250, near=1_000)
    assert not checkpoint_due(8_760, 8_000, 10_000, every=2_500, near_every=250, near=1_000)  # not near yet
    assert not checkpoint_due(9_260, 9_000, 10_000, every=2_500, near_every=0)


def test_checkpoints_never_push_out_the_states_asked_for() -> None:
    cache = StateCache(2, checkpoints=3)
    asked = [ClusterState(seq=s) for s in (100, 200)]
    for st in asked:
        cache.put(st)
    for s in range(1, 20):
        cache.put(ClusterState(seq=1000 + s), checkpoint=True)
    assert cache.indexes() == [1017, 1018, 1019, 100, 200]
    assert cache.nearest(150) == (100, asked[0])
    cache.put(ClusterState(seq=1018))  # asked for: moves to the states asked for (100 was used last)
    assert cache.indexes() == [1017, 1019, 100, 1018]
    cache.put(ClusterState(seq=100), checkpoint=True)  # already kept as asked for: stays there
    assert cache.indexes() == [1017, 1019, 100, 1018]


def test_every_event_type_is_classified_for_sharing_task_records() -> None:
    """`share_state`'s copy-on-write knows which events change task records: a new event type must be
    placed in one of its tables (else a replay owns every record before it: correct, but slow)."""
    from tessera.control_plane.core import events as ev
    from tessera.control_plane.core.apply import _HANDLERS
    from tessera.control_plane.eventlog import statecache

    classified = statecache._NAMES_ITS_TASK | statecache._LEAVES_TASKS | {ev.FrameworkRemoved}
    assert set(_HANDLERS) == classified
    assert not statecache._NAMES_ITS_TASK & statecache._LEAVES_TASKS


def _teardown_with_unacknowledged_tasks(store: MemoryEventStore) -> Leader:
    """A framework removed while its tasks still have statuses nobody acknowledged (FrameworkRemoved
    then clears them: the one handler that changes tasks its event does not name)."""
    from tessera.control_plane.core import commands as c
    from tessera.control_plane.core.values import TaskState

    from .workload import Leader as _Leader

    L = _Leader(store)
    L.run(c.ElectLeader(term=1, master="m1", grpc_address="127.0.0.1:5050", name="m1"))
    aid = L.agent("host1")
    fid = L.framework("doomed")
    L.launch(fid, aid, "x1", "x2", "x3")
    for t in ("x1", "x2", "x3"):
        L.status(t, TaskState.TASK_RUNNING)
    L.tick(1)
    for t in ("x1", "x2"):  # ended, never acknowledged: no kill for them in the teardown's entry
        L.status(t, TaskState.TASK_FINISHED, exit_code=0)
    L.run(c.Teardown(fid))
    L.status("x3", TaskState.TASK_KILLED)
    return L


@pytest.mark.parametrize("history", ["realistic", "teardown", "random-1", "random-2", "random-3"])
def test_a_shared_copy_replays_to_the_history_and_never_changes_the_state_it_came_from(history: str) -> None:
    """From every entry boundary: replaying on from `share_state` of the state there (with its
    `TaskOwnership`, as `rebuild` does, keeping shared checkpoints on the way) gives the history at every
    later point, and leaves the state it was copied from, and every checkpoint, exactly as they were."""
    from tessera.control_plane.eventlog.replay import entries_from_records, replay_entry
    from tessera.control_plane.eventlog.statecache import TaskOwnership, share_state

    from .workload import random_history, realistic_history

    store = MemoryEventStore()
    if history == "realistic":
        leader = realistic_history(store)
    elif history == "teardown":
        leader = _teardown_with_unacknowledged_tasks(store)
    else:
        leader = random_history(store, seed=int(history.split("-")[1]))
    assert store.flush()
    entries = list(entries_from_records(store.list(from_seq=1, limit=10**6)))
    points = sorted(leader.fingerprints)
    for start in points[:: max(1, len(points) // 12)]:
        origin = rebuild(store, start, every=0).state
        before = origin.fingerprint()
        state = share_state(origin)
        owner = TaskOwnership(state, owns_all=False)
        kept: list[tuple[ClusterState, str]] = []
        for i, entry in enumerate(e for e in entries if e.first_seq > start):
            replay_entry(state, entry, owner)
            if state.seq in leader.fingerprints:
                assert state.fingerprint() == leader.fingerprints[state.seq], f"diverged at {state.seq}"
            if i % 3 == 0:  # a checkpoint shares every record with the replay from here on
                kept.append((share_state(state), state.fingerprint()))
                owner.shared()
        assert origin.fingerprint() == before, f"replaying on from {start} changed the state there"
        for checkpoint, fingerprint in kept:
            assert checkpoint.fingerprint() == fingerprint, f"a checkpoint at {checkpoint.seq} changed"


def _full_diff(a: ClusterState, b: ClusterState) -> list[object]:
    """The reference `diff_states` answers: every kind's view of both states compared key by key, the
    tasks too (every task's facts, shared records or not), rows written for every change."""
    from tessera.control_plane.eventlog import diff as diff_module
    from tessera.control_plane.eventlog.diff import Change, FieldChange

    out: list[object] = []
    for kind, view, row in diff_module._VIEWS:
        va, vb = view(a), view(b)
        for key in sorted(va.keys() | vb.keys()):
            if key not in va:
                out.append(Change(kind, key, "added", tuple(FieldChange(k, "", v) for k, v in row(vb[key]).items())))
            elif key not in vb:
                out.append(Change(kind, key, "removed", tuple(FieldChange(k, v, "") for k, v in row(va[key]).items())))
            elif va[key] != vb[key]:
                was, now = row(va[key]), row(vb[key])
                out.append(Change(kind, key, "changed", tuple(FieldChange(k, was[k], now[k]) for k in now
                                                                 if was[k] != now[k])))
    return out


@pytest.mark.parametrize("history", ["realistic", "random-4", "random-5"])
def test_a_diff_of_states_sharing_records_equals_the_diff_comparing_every_task(history: str) -> None:
    """`diff_states` skips the task records two states share and compares the others field by field; what
    it answers is what comparing every task of both gives: for states of one replay's lineage (sharing
    records) and of separate rebuilds (sharing none), both ways."""
    from .workload import random_history, realistic_history

    store = MemoryEventStore()
    leader = realistic_history(store) if history == "realistic" else random_history(store, seed=int(history[-1]))
    assert store.flush()
    points = sorted(leader.fingerprints)
    cache = StateCache(4)
    rng = random.Random(3)
    compared = 0
    for i in range(40):
        a, b = sorted(rng.sample(points, 2))
        if i % 2:  # separate lineages: no record shared
            before, after = rebuild(store, a, every=0).state, rebuild(store, b, every=0).state
        else:
            before = rebuild(store, a, every=0, cache=cache).state
            after = rebuild(store, b, every=0, cache=cache).state
        got = diff_states(before, after)
        assert list(got.changes) == _full_diff(before, after), (a, b)
        assert list(diff_states(after, before).changes) == _full_diff(after, before), (b, a)
        compared += bool(got.changes)
    assert compared > 30


@pytest.mark.parametrize("seed", range(6))
def test_a_diff_of_randomly_changed_task_tables_equals_the_diff_comparing_every_task(seed: int) -> None:
    """Random edits of a `share_state` copy's task tables, each of what a row shows (state, agent,
    unacknowledged count, kill requested, live or completed), records copied equal or replaced, tasks added
    and removed, in both tables at once: `diff_states` answers what comparing every task gives."""
    import dataclasses

    from tessera.control_plane.core.values import TaskState
    from tessera.control_plane.eventlog.statecache import share_state

    from .workload import realistic_history

    store = MemoryEventStore()
    leader = realistic_history(store)
    assert store.flush()
    base = rebuild(store, max(leader.fingerprints), every=0).state
    rng = random.Random(seed)
    records = [*base.tasks.values(), *base.completed_tasks.values()]
    states = list(TaskState)
    for _ in range(30):
        after = share_state(base)
        for _ in range(rng.randint(1, 12)):
            table = after.tasks if rng.random() < 0.6 or not after.completed_tasks else after.completed_tasks
            other = after.completed_tasks if table is after.tasks else after.tasks
            if not table:
                continue
            key = rng.choice(list(table))
            r = table[key]
            edit = rng.randrange(9)
            if edit == 0:
                table[key] = dataclasses.replace(r)  # a copy, equal: no change
            elif edit == 1:
                table[key] = dataclasses.replace(r, state=rng.choice(states))
            elif edit == 2:
                table[key] = dataclasses.replace(r, info=dataclasses.replace(r.info, agent_id=f"agent-{rng.randrange(3)}"))
            elif edit == 3:
                table[key] = dataclasses.replace(r, unacknowledged=r.unacknowledged[:-1] if r.unacknowledged
                                                 else (*r.unacknowledged, *records[0].unacknowledged, None))
            elif edit == 4:
                table[key] = dataclasses.replace(r, kill_requested=not r.kill_requested)
            elif edit == 5:  # moved to the other table
                other[key] = table.pop(key)
            elif edit == 6:  # in both tables: its live record is its row
                other[key] = dataclasses.replace(r, state=rng.choice(states))
            elif edit == 7:
                del table[key]
            else:  # a new task, like another one
                new = dataclasses.replace(r.info, task_id=f"new-{rng.randrange(10**6)}")
                table[type(key)(new.framework_id, new.task_id)] = dataclasses.replace(r, info=new)
        for a, b in ((base, after), (after, base)):
            got = diff_states(a, b)
            assert list(got.changes) == _full_diff(a, b)
            assert len(got.changes) == len(_full_diff(a, b))


def test_a_step_from_a_cached_state_reads_only_the_records_it_replays(
        memory_history: tuple[MemoryEventStore, Leader]) -> None:
    """A slider's step replays a few events and reads about as many records, not a page of thousands."""
    store, leader = memory_history
    read: list[int] = []
    listing = store.list

    def counting(*args: object, **kwargs: object) -> list[object]:
        page = listing(*args, **kwargs)  # type: ignore[arg-type]
        read.append(len(page))
        return page  # type: ignore[return-value]

    store.list = counting  # type: ignore[method-assign]
    points = sorted(leader.fingerprints)
    cache = StateCache(4)
    rebuild(store, points[len(points) // 2], every=0, cache=cache)
    for i in range(len(points) // 2 + 1, len(points) // 2 + 6):
        read.clear()
        got = rebuild(store, points[i], every=0, cache=cache)
        assert got.state.fingerprint() == leader.fingerprints[points[i]]
        assert 0 < got.replayed <= sum(read) <= got.replayed + 2, (read, got.replayed)


def test_every_index_inside_an_entry_is_answered_by_its_kept_state_without_replay() -> None:
    """An entry that recorded several events (a launch of many tasks) is atomic: every index inside it
    names the state after it, which the cache keeps once, so a slider stepping through it replays it once."""
    from tessera.control_plane.core import commands as c

    from .workload import Leader as _Leader

    store = MemoryEventStore()
    L = _Leader(store)
    L.run(c.ElectLeader(term=1, master="m1", grpc_address="127.0.0.1:5050", name="m1"))
    aid = L.agent("host1", resources="cpus:64;mem:65536")
    fid = L.framework("many")
    L.launch(fid, aid, *[f"m{i}" for i in range(12)], cpus=1, mem=64)
    L.agent("host2")
    assert store.flush()
    records = store.list(from_seq=1, limit=10**6)
    big = max(entries_from_records(records), key=lambda e: e.last_seq - e.first_seq)
    assert big.last_seq - big.first_seq >= 12
    cache = StateCache(4)
    first = rebuild(store, big.first_seq + 1, every=0, cache=cache)
    assert first.index == big.last_seq and first.replayed > 0
    for n in range(big.first_seq, big.last_seq + 1):
        got = rebuild(store, n, every=0, cache=cache)
        assert got.state is first.state and got.replayed == 0 and got.requested == n
    before = rebuild(store, big.first_seq - 1, every=0, cache=cache)
    assert before.index == big.first_seq - 1 and before.state.fingerprint() == L.fingerprints[big.first_seq - 1]
    after = rebuild(store, big.last_seq + 1, every=0, cache=cache)
    assert after.snapshot_seq == big.last_seq and after.state.fingerprint() == L.fingerprints[after.index]
