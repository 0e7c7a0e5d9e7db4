"""How much of a soaked master's memory is its replicated state: replay a copy of its events.db in one
process and measure the state at each minute of the soak's timeline, next to the master's RssAnon from
the soak's samples (docs/reliability.md, "Soak").

    python -m tests.faults.state_memory --db /work/soak-run/final/run/m1/events.db \\
        --csv /work/soak-run/final/soak.csv --master m1

At each minute mark of the soak (the sampler's t = 0 is when every framework had its first offer: the
first `OfferIssued` of the last framework to get one, unless `--t0` gives it) the replay stops before
the first entry recorded after the mark and prints, per minute: the master's RssAnon at that t (the
sample nearest to it), the state's deep size (`deep_size`: every object reachable from the
`ClusterState`, counted once) and that of each bounded memory (`requests`, `completed_tasks`,
`retired_offers`) with how full it is, the rest of the state, and with `--tracemalloc` the traced
size of the whole replaying process after a full collection. The last lines: how much of RssAnon's rise
between two minutes (`--from`, `--to`) the state's rise explains. `--out` also writes the table as CSV.

The replay is the event log's own (`eventlog.replay`: `entries_from_records`, `replay_entry`), from the
first event; the database is copied first and never changed.
"""

from __future__ import annotations

import argparse
import csv
import gc
import shutil
import sqlite3
import sys
import tempfile
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import BuiltinFunctionType, FunctionType, ModuleType

from tessera.control_plane.core.state import ClusterState
from tessera.control_plane.eventlog.records import EVENT_COLUMNS, EventRecord
from tessera.control_plane.eventlog.replay import entries_from_records, replay_entry

MEMORIES = ("requests", "completed_tasks", "retired_offers")
_SKIP = (type, ModuleType, FunctionType, BuiltinFunctionType, Enum)


def _slot_names(cls: type) -> list[str]:
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names += [slots] if isinstance(slots, str) else list(slots)
    return [n for n in names if n not in ("__dict__", "__weakref__")]


def deep_size(root: object, seen: set[int] | None = None) -> int:
    """Bytes of every object reachable from `root` (containers, instance dicts and slots), each counted
    once; objects in `seen` (ids) are skipped, and the ones counted are added to it. Classes, modules,
    functions and enum members are shared with the program, not the state: not counted."""
    seen = set() if seen is None else seen
    total = 0
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _SKIP):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif not isinstance(obj, (str, bytes, int, float, bool)) and obj is not None:
            d = getattr(obj, "__dict__", None)
            if d is not None:
                stack.append(d)
            for name in _slot_names(type(obj)):
                if hasattr(obj, name):
                    stack.append(getattr(obj, name))
    return total


@dataclass(frozen=True)
class Measure:
    minute: int
    t: float  # seconds since the soak's start
    seq: int
    rss_anon_mib: float
    state_mib: float
    memories_mib: dict[str, float]
    counts: dict[str, int]
    traced_mib: float

    @property
    def rest_mib(self) -> float:
        return self.state_mib - sum(self.memories_mib.values())


def measure_state(state: ClusterState) -> tuple[float, dict[str, float], dict[str, int]]:
    """(the whole state, each bounded memory, their lengths): MiB, MiB, counts."""
    seen: set[int] = set()
    memories = {name: deep_size(getattr(state, name), seen) / 2**20 for name in MEMORIES}
    rest = deep_size(state, seen) / 2**20
    counts = {name: len(getattr(state, name)) for name in MEMORIES}
    counts.update(tasks=len(state.tasks), offers=len(state.offers), agents=len(state.agents),
                  frameworks=len(state.frameworks))
    return rest + sum(memories.values()), memories, counts


def records(conn: sqlite3.Connection) -> Iterator[EventRecord]:
    cursor = conn.execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events ORDER BY seq")
    while rows := cursor.fetchmany(5000):
        for row in rows:
            yield EventRecord(*row)


def soak_start(conn: sqlite3.Connection) -> float:
    """When the soak's sampler started, as the harness starts it: once every framework got an offer."""
    row = conn.execute("SELECT max(first) FROM (SELECT min(time) AS first FROM events WHERE type = 'OfferIssued' "
                       "GROUP BY framework_id)").fetchone()
    return float(row[0])


def rss_series(path: Path, master: str) -> list[tuple[float, float]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [(float(r["t"]), float(r["rss_anon_mib"])) for r in csv.DictReader(f) if r["master"] == master]


def nearest(series: list[tuple[float, float]], t: float) -> float:
    return min(series, key=lambda tv: abs(tv[0] - t))[1] if series else float("nan")


def replay_by_minute(db: Path, rss: list[tuple[float, float]], t0: float | None,
                     traced: bool) -> Iterator[Measure]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    start = soak_start(conn) if t0 is None else t0
    end = rss[-1][0] if rss else float("inf")
    state = ClusterState()
    minute = 0

    def take() -> Measure:
        gc.collect()
        size, memories, counts = measure_state(state)
        return Measure(minute, 60.0 * minute, state.seq, nearest(rss, 60.0 * minute), size, memories, counts,
                       tracemalloc.get_traced_memory()[0] / 2**20 if traced else float("nan"))

    for entry in entries_from_records(records(conn)):
        while entry.time > start + 60.0 * minute and 60.0 * minute <= end:
            yield take()
            minute += 1
        replay_entry(state, entry)
    if 60.0 * minute <= end:
        yield take()
    conn.close()


def explained(rows: list[Measure], first: int, last: int) -> str:
    by_minute = {m.minute: m for m in rows}
    if first not in by_minute or last not in by_minute:
        return f"minutes {first} and {last} are not both in the replay"
    a, b = by_minute[first], by_minute[last]
    rss, state = b.rss_anon_mib - a.rss_anon_mib, b.state_mib - a.state_mib
    share = f"{state / rss:.0%}" if rss > 0 else "n/a"
    return (f"minute {first} -> {last}: RssAnon {a.rss_anon_mib:.1f} -> {b.rss_anon_mib:.1f} MiB ({rss:+.1f}), "
            f"state {a.state_mib:.1f} -> {b.state_mib:.1f} MiB ({state:+.1f}): the state explains {share}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.state_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--db", type=Path, required=True, help="a master's events.db (copied, never changed)")
    parser.add_argument("--csv", type=Path, required=True, help="the soak's soak.csv")
    parser.add_argument("--master", default="m1", help="whose RssAnon to show (a spared master: one process)")
    parser.add_argument("--t0", type=float, default=None, help="unix time of the soak's t = 0 (default: derived)")
    parser.add_argument("--from", dest="first", type=int, default=15, help="minute where the compared rise starts")
    parser.add_argument("--to", dest="last", type=int, default=None, help="minute where it ends (default: the last)")
    parser.add_argument("--tracemalloc", action="store_true", help="also the traced size of this process")
    parser.add_argument("--out", type=Path, default=None, help="write the table as CSV here")
    args = parser.parse_args(argv)
    rss = rss_series(args.csv, args.master)
    if args.tracemalloc:
        tracemalloc.start()
    rows: list[Measure] = []
    with tempfile.TemporaryDirectory(prefix="state-memory-") as tmp:
        db = Path(tmp) / "events.db"
        shutil.copy(args.db, db)
        print("min  seq     RssAnon  state  requests(n)        completed(n)       retired(n)         rest   traced")
        for m in replay_by_minute(db, rss, args.t0, args.tracemalloc):
            rows.append(m)
            mem, n = m.memories_mib, m.counts
            print(f"{m.minute:3d} {m.seq:6d} {m.rss_anon_mib:8.1f} {m.state_mib:6.2f}  "
                  f"{mem['requests']:5.2f} ({n['requests']:6d})  {mem['completed_tasks']:5.2f} ({n['completed_tasks']:6d})  "
                  f"{mem['retired_offers']:5.2f} ({n['retired_offers']:6d})  {m.rest_mib:5.2f}  {m.traced_mib:6.2f}",
                  flush=True)
    if rows:
        print(explained(rows, args.first, rows[-1].minute if args.last is None else args.last))
    if args.out is not None:
        with open(args.out, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["minute", "t", "seq", "rss_anon_mib", "state_mib", *(f"{k}_mib" for k in MEMORIES),
                        "rest_mib", *(f"{k}_n" for k in MEMORIES), "tasks", "offers", "traced_mib"])
            for m in rows:
                w.writerow([m.minute, m.t, m.seq, m.rss_anon_mib, round(m.state_mib, 3),
                            *(round(m.memories_mib[k], 3) for k in MEMORIES), round(m.rest_mib, 3),
                            *(m.counts[k] for k in MEMORIES), m.counts["tasks"], m.counts["offers"],
                            round(m.traced_mib, 3)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
