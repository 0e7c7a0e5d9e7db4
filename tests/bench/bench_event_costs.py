"""Where one replicated event's CPU goes on a master, piece by piece (not a test).

    python tests/bench/bench_event_costs.py [--entries 50000] [--batch 100] [--repeat 3]

The workload is the write-path benchmark's (bench_write_path.py (b)): Raft entries of one
`RoleWeightSet` each, with a request id and a traceparent, applied in Raft batches of `--batch`.
Every master, leader or follower, does this work for every event. Measured in one run:

  baseline (the floor any Python master pays, in C):
    parse   `LogEntry.FromString` of the entry bytes (protobuf's C parser)
    insert  plain sqlite3 `executemany` of the event rows into the real schema and indexes
  Tessera, piece by piece:
    decode  `entry_from_bytes`: bytes to the core's frozen entry and event
    apply   the pure core's `apply` on a live `ClusterState`
    row     the event-log row of each event: ids, type, trace ids, JSON payload
    path    all of it through `MasterStateMachine.apply_entries` into an `SqliteEventStore`, as the
            Raft apply thread runs it: the process CPU from the first batch until the event log has
            flushed (so the writer thread, the history snapshotter and the hand-offs count)

Every piece is timed in CPU time of the measuring thread (`time.thread_time`, `path` in the process's
CPU time), not wall time: the machine is shared, and waiting for a core is not a cost of the code.
It prints µs per event for each, `path` against the baseline, and what they allow on this machine's
cores when three masters each pay `path` (or only the baseline) for every event, next to the write
path targets: 50,000 events/s leaves 2 cores x 1 s / 50,000 = 40 µs per event for all three masters,
Raft, gRPC and the writers together.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere in the repo

from tessera.control_plane.codec import entry_from_bytes, entry_to_bytes  # noqa: E402
from tessera.control_plane.core import events as ev  # noqa: E402
from tessera.control_plane.core.apply import apply  # noqa: E402
from tessera.control_plane.core.state import ClusterState  # noqa: E402
from tessera.control_plane.eventlog import SqliteEventStore  # noqa: E402
from tessera.control_plane.eventlog.records import EVENT_COLUMNS, EventRow  # noqa: E402
from tessera.control_plane.runtime.statemachine import MasterStateMachine, add_event_rows  # noqa: E402
from tessera.v1 import log_pb2  # noqa: E402
from tests.bench.bench_eventlog import insert_plain  # noqa: E402

TARGET_EVENTS_PER_S = 50_000  # what p50 <= 20 ms with 1,000 closed-loop writers needs (Little's law)


def make_entries(n: int) -> list[bytes]:
    return [entry_to_bytes(ev.Entry(
        term=1, leader="m1", time=1.7e9 + i * 1e-4, request_id=f"req-{i:032d}",
        traceparent=f"00-{i:032x}-{i:016x}-01",
        events=(ev.RoleWeightSet(role=f"role-{i % 50}", weight=1.0 + i % 7),),
    )) for i in range(n)]


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def per_event_us(seconds: float, n: int) -> float:
    return seconds / n * 1e6


def time_parse(datas: list[bytes]) -> float:
    parse = log_pb2.LogEntry.FromString
    t = time.thread_time()
    for data in datas:
        parse(data)
    return per_event_us(time.thread_time() - t, len(datas))


def time_decode(datas: list[bytes]) -> tuple[float, list[ev.Entry]]:
    t = time.thread_time()
    entries = [entry_from_bytes(d) for d in datas]
    return per_event_us(time.thread_time() - t, len(datas)), entries


def time_apply(entries: list[ev.Entry]) -> tuple[float, list[Any]]:
    state = ClusterState()
    t = time.thread_time()
    results = [apply(state, e) for e in entries]
    elapsed = time.thread_time() - t
    if any(r.outcome != "applied" for r in results):
        raise RuntimeError("the workload's entries must all apply")
    return per_event_us(elapsed, len(entries)), results


def build_rows(entries: list[ev.Entry], results: list[Any]) -> list[EventRow]:
    rows: list[EventRow] = []
    for raft_index, (entry, result) in enumerate(zip(entries, results, strict=True), start=1):
        add_event_rows(rows, raft_index, entry, result.events)
    return rows


def time_rows(entries: list[ev.Entry], results: list[Any]) -> tuple[float, list[EventRow]]:
    t = time.thread_time()
    rows = build_rows(entries, results)
    return per_event_us(time.thread_time() - t, len(rows)), rows


def time_insert(path: Path, rows: list[EventRow]) -> float:
    """Plain sqlite3 into the store's own schema, its pragmas, its batch size (bench_eventlog's baseline)."""
    if len(rows[0]) != len(EVENT_COLUMNS):
        raise RuntimeError(f"row has {len(rows[0])} fields, the schema {len(EVENT_COLUMNS)}")
    started = time.thread_time()  # CPU time: the wall time insert_plain returns also counts the disk
    insert_plain(path, list(rows))
    return per_event_us(time.thread_time() - started, len(rows))


def time_path(path: Path, datas: list[bytes], batch: int) -> float:
    store = SqliteEventStore(path)
    sm = MasterStateMachine(store)
    try:
        c = cpu()
        for raft_index, start in enumerate(range(0, len(datas), batch), start=1):
            sm.apply_entries(raft_index, datas[start:start + batch])
        if not store.flush(timeout=600):
            raise RuntimeError("the event log did not flush")
        elapsed = cpu() - c
        if store.last_seq() != len(datas):
            raise RuntimeError(f"event log holds {store.last_seq()} events, expected {len(datas)}")
        return per_event_us(elapsed, len(datas))
    finally:
        sm.close()
        store.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=100, help="entries per Raft batch in the full path")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    print(f"{cores} usable cores, Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}; "
          f"{args.entries:,} entries of one RoleWeightSet, Raft batches of {args.batch}")
    datas = make_entries(args.entries)
    figures: dict[str, list[float]] = {k: [] for k in ("parse", "insert", "decode", "apply", "row", "path")}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.repeat):
            figures["parse"].append(time_parse(datas))
            decode, entries = time_decode(datas)
            applied, results = time_apply(entries)
            row, rows = time_rows(entries, results)
            figures["decode"].append(decode)
            figures["apply"].append(applied)
            figures["row"].append(row)
            figures["insert"].append(time_insert(Path(tmp) / f"floor-{run}.db", rows))
            figures["path"].append(time_path(Path(tmp) / f"path-{run}.db", datas, args.batch))
            print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in figures.items()) + " µs/event")
    m = {k: statistics.median(v) for k, v in figures.items()}
    floor = m["parse"] + m["insert"]
    print("median µs per event on one master:")
    print(f"  baseline  parse {m['parse']:.2f} + insert {m['insert']:.2f} = {floor:.2f}")
    print(f"  Tessera   decode {m['decode']:.2f}, apply {m['apply']:.2f}, row {m['row']:.2f}; "
          f"whole apply path {m['path']:.2f} ({m['path'] / floor:.1f}x the baseline)")
    budget = cores * 1e6 / TARGET_EVENTS_PER_S
    for name, cost in (("whole apply path", m["path"]), ("baseline alone", floor)):
        ceiling = cores * 1e6 / (3 * cost)
        print(f"  three masters paying the {name} ({3 * cost:.1f} µs per event) on {cores} cores: at most "
              f"{ceiling:,.0f} events/s before Raft, gRPC and writers ({ceiling / TARGET_EVENTS_PER_S:.2f} "
              f"of the {TARGET_EVENTS_PER_S:,}/s the targets need; budget {budget:.0f} µs per event for all)")


if __name__ == "__main__":
    main()
