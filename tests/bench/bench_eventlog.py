"""Benchmark of the event log writer (not a test): rows/s of SqliteEventStore's writer thread against a
baseline of plain sqlite3 `executemany` into the same schema, measured in the same run.

    python tests/bench/bench_eventlog.py [--events 200000] [--append-size 100] [--repeat 3]

Writer throughput is measured from the first `append` to `flush()` returning True, with the records
built beforehand and handed over `--append-size` at a time (one Raft entry's worth), so it includes
the queue, the thread hand-off, the row building and the commits. The baseline writes the same rows,
already as tuples, in transactions of the writer's batch size, with the same pragmas. The time the
caller spends inside `append` is reported too: that is what the Raft apply thread pays.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere in the repo

from tessera.control_plane.eventlog import EventRecord, SqliteEventStore  # noqa: E402
from tessera.control_plane.eventlog.queued import MAX_BATCH_RECORDS  # noqa: E402
from tessera.control_plane.eventlog.records import EVENT_COLUMNS  # noqa: E402

TYPES = ("AgentRegistered", "OfferMade", "TaskLaunched", "StatusUpdate", "OfferDeclined")


def make_records(n: int) -> list[EventRecord]:
    """Events shaped like a busy cluster's: several per Raft entry, most naming a framework, agent
    and task, a trace on each, a JSON payload of ~100 bytes."""
    base = 1_763_700_000.0
    records = []
    for seq in range(1, n + 1):
        records.append(
            EventRecord(
                seq=seq,
                raft_index=1000 + seq // 8,
                position=seq % 8,
                type=TYPES[seq % len(TYPES)],
                time=base + seq * 1e-4,
                term=3,
                request_id=f"req-{seq // 8:08d}",
                framework_id=f"fw-{seq % 12}",
                agent_id=f"agent-{seq % 200:04d}",
                task_id=f"task-{seq // 3:09d}" if seq % 5 else "",
                offer_id=f"offer-{seq // 7:09d}" if seq % 3 == 0 else "",
                trace_id=f"{(seq * 2654435761) % (1 << 128):032x}",
                span_id=f"{(seq * 40503) % (1 << 64):016x}",
                payload=json.dumps(
                    {"type": TYPES[seq % len(TYPES)], "seq": seq, "resources": {"cpus": 0.5, "mem": 256}}
                ),
            )
        )
    return records


def bench_store(path: Path, records: list[EventRecord], append_size: int) -> tuple[float, float]:
    """Returns (writer rows/s, microseconds the caller spent inside append per 1000 records)."""
    store = SqliteEventStore(path)
    try:
        in_append = 0.0
        started = time.perf_counter()
        for i in range(0, len(records), append_size):
            chunk = records[i : i + append_size]
            t = time.perf_counter()
            store.append(chunk)
            in_append += time.perf_counter() - t
        if not store.flush(timeout=600.0):
            raise RuntimeError("flush failed")
        elapsed = time.perf_counter() - started
        assert store.last_seq() == len(records)
    finally:
        store.close()
    return len(records) / elapsed, in_append / len(records) * 1000 * 1e6


def bench_baseline(path: Path, records: list[EventRecord]) -> float:
    """Plain sqlite3: the same schema (made by the store), the same pragmas and batch size."""
    rows = [tuple(getattr(r, c) for c in EVENT_COLUMNS) for r in records]
    return len(rows) / insert_plain(path, rows)


def insert_plain(path: Path, rows: list[tuple[Any, ...]]) -> float:
    """Seconds plain sqlite3 takes to insert `rows` (in EVENT_COLUMNS order) into the store's own schema
    (made by the store), with its pragmas, in transactions of its writer's batch size."""
    SqliteEventStore(path).close()
    sql = "INSERT INTO events ({}) VALUES ({}) ON CONFLICT(seq) DO NOTHING".format(
        ", ".join(EVENT_COLUMNS), ", ".join("?" * len(EVENT_COLUMNS))
    )
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        started = time.perf_counter()
        for i in range(0, len(rows), MAX_BATCH_RECORDS):
            conn.execute("BEGIN")
            conn.executemany(sql, rows[i : i + MAX_BATCH_RECORDS])
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return elapsed


def machine() -> str:
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cores} cores ({usable} usable), {mem_gib:.1f} GiB RAM, {cpu}; "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--append-size", type=int, default=100, help="events per append() call")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()

    print(f"machine: {machine()}")
    print(
        f"{args.events} events per run, append() of {args.append_size}, writer batches <= {MAX_BATCH_RECORDS}"
    )
    records = make_records(args.events)
    store_rates: list[float] = []
    append_costs: list[float] = []
    baseline_rates: list[float] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for run in range(args.repeat):
            # Alternate the two so background noise hits both alike.
            rate, cost = bench_store(Path(tmp) / f"store-{run}.db", records, args.append_size)
            store_rates.append(rate)
            append_costs.append(cost)
            baseline_rates.append(bench_baseline(Path(tmp) / f"baseline-{run}.db", records))
            print(
                f"run {run + 1}: SqliteEventStore writer {rate:,.0f} rows/s | plain sqlite3 executemany {baseline_rates[-1]:,.0f} rows/s"
            )
    store_median = statistics.median(store_rates)
    base_median = statistics.median(baseline_rates)
    print(
        f"median: SqliteEventStore writer {store_median:,.0f} rows/s, "
        f"plain sqlite3 executemany {base_median:,.0f} rows/s "
        f"({store_median / base_median:.0%} of baseline)"
    )
    print(f"caller's cost inside append(): {statistics.median(append_costs):.1f} µs per 1000 events")


if __name__ == "__main__":
    main()
