"""The last event before a time (`timeindex.TimeBlocks`, `EventStore.seq_before_time`): always the answer
of reading the log backwards, with times that step back, after a prune and across a hole filled later."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from tessera.control_plane.eventlog import EventRecord, EventStore, SqliteEventStore
from tessera.control_plane.eventlog.errors import PointOutOfRange
from tessera.control_plane.eventlog.eventfile import EventFile
from tessera.control_plane.eventlog.timeindex import TimeBlocks
from tessera.control_plane.eventlog.timepoints import Point, resolve_point

T0 = 1_700_000_000.0


def jittered_times(n: int, seed: int) -> list[float]:
    """Times that mostly grow but step back now and then (writes decided in parallel, a new leader)."""
    rng = random.Random(seed)
    out, t = [], T0
    for _ in range(n):
        t += rng.choice((0.0, 0.001, 0.01, 0.5))
        out.append(t - (rng.random() * 3 if rng.random() < 0.05 else 0.0))
    return out


def backwards(times: dict[int, float], until: float) -> int | None:
    """The plain answer: the highest seq whose time is before `until`."""
    return max((seq for seq, t in times.items() if t < until), default=None)


def queries(times: dict[int, float], rng: random.Random, n: int = 300) -> list[float]:
    known = sorted(times.values())
    picks = [rng.choice(known) for _ in range(n)]  # exactly an event's time, and just after it
    return [*picks, *(math.nextafter(t, math.inf) for t in picks), known[0] - 1, known[-1] + 1,
            *(rng.uniform(known[0] - 1, known[-1] + 1) for _ in range(n))]


@pytest.mark.parametrize("block,chunk", [(1, 1), (4, 3), (7, 64), (1024, 64)])
def test_time_blocks_answer_as_a_backwards_scan(block: int, chunk: int) -> None:
    rng = random.Random(block * 31 + chunk)
    times = dict(enumerate(jittered_times(3_000, block), start=1))
    reads: list[tuple[int, int]] = []

    def minima(low: int, top: int) -> list[tuple[int, float, int]]:
        reads.append((low, top))
        out: dict[int, tuple[float, int]] = {}
        for seq in range(low, top + 1):
            if seq in times:
                b = (seq - 1) // block
                was = out.get(b, (float("inf"), 0))
                out[b] = (min(was[0], times[seq]), was[1] + 1)
        return [(b, t, n) for b, (t, n) in sorted(out.items())]

    def last_before(low: int, top: int, until: float) -> int | None:
        return max((s for s in range(low, top + 1) if s in times and times[s] < until), default=None)

    blocks = TimeBlocks(block, chunk)
    for until in queries(times, rng):
        assert blocks.seq_before(until, 1, len(times), minima, last_before) == backwards(times, until), until
    # the minima of complete blocks were read once: later lookups read the last, incomplete block only
    reads.clear()
    blocks.seq_before(T0 - 1, 1, len(times), minima, last_before)
    assert all(top - low < block for low, top in reads)
    assert blocks.kept() == len(times) // block


def fill(store: EventStore, times: dict[int, float]) -> None:
    store.append([EventRecord(seq, 100 + seq, 0, "TaskStatusUpdated", t, 1, f"req-{seq}", "fw", "agent", "task",
                              "", "", "", "{}") for seq, t in sorted(times.items())])
    assert store.flush()


def test_a_store_finds_the_last_event_before_a_time(store: EventStore) -> None:
    times = dict(enumerate(jittered_times(5_000, 3), start=1))
    fill(store, times)
    rng = random.Random(5)
    for until in queries(times, rng):
        assert store.seq_before_time(until) == backwards(times, until), until
    for t in rng.sample(sorted(times.values()), 50):  # "as of time t": the last event at or before t
        assert resolve_point(store, Point(time=t), t) == backwards(times, math.nextafter(t, math.inf))
    with pytest.raises(PointOutOfRange, match="no event at or before"):
        resolve_point(store, Point(time=T0 - 10), T0)
    # retention removed the first 1,500: the kept minima of the pruned blocks are too low, never wrong
    store.prune(1_501)
    kept = {s: t for s, t in times.items() if s > 1_500}
    for until in queries(kept, rng):
        assert store.seq_before_time(until) == backwards(kept, until), until


def test_a_hole_filled_later_is_found(tmp_path: Path) -> None:
    """A block with a hole is read again on every lookup: events written into it later are found."""
    times = dict(enumerate(jittered_times(6_000, 9), start=1))
    hole = range(2_100, 2_200)
    with SqliteEventStore(tmp_path / "events.db") as store:
        fill(store, {s: t for s, t in times.items() if s not in hole})
        early = times[2_100] - 100.0  # before every event but the first block's
        late = {s: early for s in hole}
        probe = early + 1e-6
        seen = {s: t for s, t in times.items() if s not in hole}
        assert store.seq_before_time(probe) == backwards(seen, probe)
        fill(store, late)
        assert store.seq_before_time(probe) == 2_199 == backwards({**seen, **late}, probe)


def test_an_events_file_finds_the_same_events(tmp_path: Path) -> None:
    times = dict(enumerate(jittered_times(4_500, 11), start=1))
    with SqliteEventStore(tmp_path / "events.db") as store:
        fill(store, times)
    rng = random.Random(13)
    with EventFile(tmp_path / "events.db") as f:
        for until in queries(times, rng, 100):
            assert f.seq_before_time(until) == backwards(times, until), until
