"""The fast paths of time travel give the answers of a plain full replay from the start: states at random
points (inside multi-event entries too) after a cache filled by other requests, a diff whose task rows are
written only when read (every page of it, its length and counts), and points given as times."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.control_plane.core.state import ClusterState
from tessera.control_plane.eventlog import EventStore, MemoryEventStore, SqliteEventStore
from tessera.control_plane.eventlog import diff as diffmod
from tessera.control_plane.eventlog.diff import Change, FieldChange, diff_states
from tessera.control_plane.eventlog.replay import replay_records, state_and_diff
from tessera.control_plane.eventlog.source import iter_records
from tessera.control_plane.eventlog.statecache import StateCache
from tessera.control_plane.eventlog.timepoints import Point, resolve_point
from tests.unit.inspect.workload import realistic_history


@pytest.fixture(params=["memory", "sqlite"])
def history(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    store: EventStore = MemoryEventStore() if request.param == "memory" else SqliteEventStore(tmp_path / "e.db")
    realistic_history(store, rounds=6, fingerprints=False)
    assert store.flush()
    yield store
    store.close()


def full_replay(store: EventStore, seq: int) -> ClusterState:
    """The state after the entry holding event `seq`, replayed from the empty state, nothing cached."""
    records = list(iter_records(store, until_seq=seq))
    following = store.list(from_seq=seq + 1, limit=10_000)
    for r in following:  # the rest of the entry holding `seq`
        if r.position == 0:
            break
        records.append(r)
    return replay_records(ClusterState(), records)


def eager_task_rows(before: ClusterState, after: ClusterState) -> list[Change]:
    """Every task row of a diff written out, from the whole task views (what diff_states did before its
    rows were written lazily)."""
    a, b = diffmod._task_view(before), diffmod._task_view(after)
    rows: list[Change] = []
    for key in sorted(a.keys() | b.keys()):
        if key not in a:
            rows.append(Change("task", key, "added", tuple(FieldChange(k, "", v)
                                                           for k, v in diffmod._task_row(b[key]).items())))
        elif key not in b:
            rows.append(Change("task", key, "removed", tuple(FieldChange(k, v, "")
                                                             for k, v in diffmod._task_row(a[key]).items())))
        elif a[key] != b[key]:
            was, now = diffmod._task_row(a[key]), diffmod._task_row(b[key])
            rows.append(Change("task", key, "changed", tuple(FieldChange(k, was[k], now[k]) for k in now
                                                             if was[k] != now[k])))
    return rows


def test_states_and_diffs_at_random_points_equal_a_full_replay(history: EventStore) -> None:
    store, rng = history, random.Random(17)
    last = store.last_seq()
    cache = StateCache(4, checkpoints=4)  # small: states come and go, lineages mix
    for _ in range(25):
        a, b = sorted(rng.sample(range(1, last + 1), 2))
        if rng.random() < 0.3:
            a, b = b, a  # a diff backwards
        result, before, got = state_and_diff(store, Point(index=b), Point(index=a), 0.0, cache=cache)
        assert before is not None and got is not None
        plain_a, plain_b = full_replay(store, a), full_replay(store, b)
        assert result.state.fingerprint() == plain_b.fingerprint()
        assert before.state.fingerprint() == plain_a.fingerprint()
        expected = diff_states(plain_a, plain_b)
        changes = got.changes
        assert list(changes) == list(expected.changes)
        assert [c for c in changes if c.kind == "task"] == eager_task_rows(plain_a, plain_b)
        assert len(changes) == len(list(changes)) and changes == tuple(changes)
        every = list(changes)
        for _ in range(5):  # pages, as the web UI asks them
            offset, limit = rng.randrange(0, len(every) + 2), rng.randrange(1, 7)
            assert list(changes[offset:offset + limit]) == every[offset:offset + limit]
        if every:
            i = rng.randrange(len(every))
            assert changes[i] == every[i] and changes[i - len(every)] == every[i]
        for kind in ("task", "agent", "framework", "offer"):
            for change in ("added", "removed", "changed"):
                assert got.count(kind, change) == sum(1 for c in every if c.kind == kind and c.change == change)


def test_a_point_given_as_a_time_names_the_last_event_at_or_before_it(history: EventStore) -> None:
    store, rng = history, random.Random(23)
    records = list(iter_records(store))
    for r in rng.sample(records, 40):
        expected = max(x.seq for x in records if x.time <= r.time)
        assert resolve_point(store, Point(time=r.time), r.time) == expected
        just_before = math.nextafter(r.time, -math.inf)
        earlier = [x.seq for x in records if x.time <= just_before]
        if earlier:
            assert resolve_point(store, Point(time=just_before), r.time) == max(earlier)


def test_the_seq_of_the_nearest_snapshot_is_read_without_its_blob(history: EventStore) -> None:
    store, rng = history, random.Random(29)
    last = store.last_seq()
    for seq in rng.sample(range(1, last + 1), 6):
        store.put_snapshot(seq, f"blob-{seq}".encode())
    assert store.flush()
    for at in [0, last, *rng.sample(range(1, last + 1), 40)]:
        found = store.nearest_snapshot(at)
        assert store.snapshot_seq(at) == (found[0] if found is not None else None)
