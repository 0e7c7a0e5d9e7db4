"""CPU time of `MasterStateMachine.apply_entries` on the calling thread — pysyncobj's tick thread in a master —
for the entries a leader proposed in a benchmark run (recorded with COMMIT_HOPS_ENTRIES=1, see
sitecustomize.py), applied again in that run's own batches into a fresh state machine and SQLite event log;
and the process CPU until the event log has flushed. Not a test. TREE is the checkout whose code is measured
(`git archive` layout with proto/tessera/{control_plane,agent,sdk} linked, as in docs/benchmarks.md):

    python tests/bench/commit_hops/apply_cost.py TREE DIR [--repeat 3]

CPU time, not wall time: the machine is shared, waiting for a core is not a cost of the code. This is a
follower's path (every entry decoded); a leader skips decoding the entries it proposed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tree")
    parser.add_argument("dir")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sys.path[:0] = [args.tree, f"{args.tree}/proto"]
    from tessera.control_plane.eventlog import SqliteEventStore
    from tessera.control_plane.runtime.statemachine import MasterStateMachine

    recorded = max(Path(args.dir).glob("*.entries"), key=lambda p: p.stat().st_size)
    raw = recorded.read_bytes()
    datas: list[bytes] = []
    i = 0
    while i < len(raw):
        size = int.from_bytes(raw[i:i + 4], "little")
        datas.append(raw[i + 4:i + 4 + size])
        i += 4 + size
    sizes = [int(float(line.split("\t")[1])) for line in recorded.with_suffix(".tsv").read_text().splitlines()
             if line.startswith("B")]
    if sum(sizes) != len(datas):
        print(f"{recorded}: {len(datas)} entries but the batches hold {sum(sizes)}")
        return 1
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as work:
            store = SqliteEventStore(Path(work) / "events.db")
            sm = MasterStateMachine(store, snapshot_every=0)
            process = time.process_time()
            applying = 0.0
            per_batch = []
            position = 0
            for raft_index, n in enumerate(sizes, start=1):
                started = time.thread_time()
                sm.apply_entries(raft_index, datas[position:position + n])
                per_batch.append(time.thread_time() - started)
                applying += per_batch[-1]
                position += n
            if not store.flush(600):
                print("the event log did not flush")
                return 1
            process = time.process_time() - process
            events = store.last_seq()
            store.close()
        runs.append((applying, process, events, statistics.median(per_batch)))
    applying, process, events, median = min(runs)
    print(f"{args.tree}: {len(sizes)} batches, {len(datas)} entries, {events} events; applying thread "
          f"{applying * 1e3:.0f} ms CPU ({applying / events * 1e6:.1f} us/event, median batch {median * 1e3:.2f} ms); "
          f"process until flushed {process * 1e3:.0f} ms ({process / events * 1e6:.1f} us/event); best of {args.repeat}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
