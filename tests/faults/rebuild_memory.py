"""What the event log's snapshot rebuilds leave behind in a master's memory: the soak's RSS finding, replayed
on a copy of a real events.db without a cluster (docs/reliability.md, "Soak").

    python -m tests.faults.rebuild_memory --db /work/soak-run/soak60/run/m1/events.db --mode thread
    python -m tests.faults.rebuild_memory --db /work/soak-run/soak60/run/m1/events.db --mode child

The database is copied to a temporary directory and its snapshots after the first are dropped (an
installed Raft snapshot, which covers a hole, is kept). Then a `Snapshotter` is told of each crossing
of `--every` events in turn, without a live state, as a master's apply thread tells it when pickling the
live state was too slow: `--mode thread` rebuilds on the snapshotter's thread (the old way), `--mode
child` in a child process (`eventlog.rebuild_child`, what a master does now). After each snapshot this
process's RssAnon (/proc/self/status) is printed; at the end again after a full garbage collection.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from tessera.control_plane.eventlog import SqliteEventStore
from tessera.control_plane.eventlog.background import Snapshotter
from tessera.control_plane.eventlog.rebuild_child import ChildRebuilder
from tessera.control_plane.runtime.memprobe import proc_status_kib


def rss_anon_mib() -> float:
    return proc_status_kib(Path("/proc/self/status").read_text()).get("RssAnon", 0) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.rebuild_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--db", type=Path, required=True, help="an events.db (copied, never changed)")
    parser.add_argument("--mode", choices=("thread", "child"), required=True)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--crossings", type=int, default=0, help="at most this many (0: all the log has)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rebuild-memory-") as tmp:
        db = Path(tmp) / "events.db"
        shutil.copy(args.db, db)
        conn = sqlite3.connect(db)
        first = conn.execute("SELECT min(seq) FROM snapshots").fetchone()[0] or 0
        holes = [row[0] for row in conn.execute("SELECT seq FROM snapshots WHERE seq % ? > 2", (args.every,))]
        conn.execute(f"DELETE FROM snapshots WHERE seq > ? AND seq NOT IN ({','.join('?' * len(holes))})",
                     (first, *holes))
        conn.commit()
        last = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
        conn.close()
        store = SqliteEventStore(db)
        builder = ChildRebuilder(db) if args.mode == "child" else None
        snapshotter = Snapshotter(store, args.every, duty=1.0, live_budget_s=0.0, builder=builder)
        targets = list(range((first // args.every + 1) * args.every, last + 1, args.every))
        if args.crossings:
            targets = targets[:args.crossings]
        print(f"{args.mode}: {len(targets)} crossings of {args.every} events (log {last} events, first snapshot "
              f"{first}); start RssAnon {rss_anon_mib():.1f} MiB", flush=True)
        snapshotter.observe(first)
        for target in targets:
            before, started = snapshotter.taken, time.monotonic()
            errors = snapshotter.last_error
            snapshotter.observe(target)
            while snapshotter.taken == before and snapshotter.last_error is errors:
                time.sleep(0.05)
            assert store.flush()
            note = f" ({snapshotter.last_error!r})" if snapshotter.last_error is not errors else ""
            print(f"  snapshot at {target}: "
                  f"{time.monotonic() - started:.1f} s, RssAnon {rss_anon_mib():.1f} MiB{note}", flush=True)
        snapshotter.stop()
        store.close()
    gc.collect()
    print(f"{args.mode}: end RssAnon {rss_anon_mib():.1f} MiB after a full collection", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
