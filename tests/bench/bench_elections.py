"""Benchmark of elections after a leader crash (not a test): terms per leader crash and the time to a new
leader, on real pysyncobj nodes over the simulated network (docs/benchmarks.md, docs/reliability.md).

    python tests/bench/bench_elections.py [--nodes 5] [--seeds 0-199] [--crashes 5]
    python tests/bench/bench_elections.py --split-pre-votes              # pre-vote as before one-per-term
    python tests/bench/bench_elections.py --split-pre-votes --max-timeout 0.9   # a wider timeout instead

For each seed a cluster of `--nodes` pysyncobj nodes with pre-vote and check-quorum (the masters'
``install_consensus_guards``, ``ReplicationConfig`` defaults: election timeout 0.3-0.6 s, heartbeat 50 ms,
0.5-20 ms per message, ``replication.sim``) elects a leader; then `--crashes` times: run 1 s, crash
the leader (kill -9), step 5 ms at a time until a node leads (the time to a new leader, simulated), run
1 s more and count the terms the crash cost; the crashed node comes back as a follower. The same seeds
give the same clusters, so runs with and without `--split-pre-votes` compare the same draws up to the
first election that differs.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
from pathlib import Path
from unittest import mock

from tessera.control_plane.replication.config import ReplicationConfig
from tessera.control_plane.replication.prevote import PreVotePromise
from tessera.control_plane.replication.sim import (
    NullStateMachine,
    Scheduler,
    SimClock,
    SimNetwork,
    SimRaftNode,
    deterministic_pysyncobj,
)

STEP = 0.005


def one_seed(seed: int, nodes: int, crashes: int, root: Path, max_timeout: float) -> list[tuple[int, float]]:
    """(terms the crash cost, seconds to a new leader) for each leader crash of one seed."""
    clock, rng = SimClock(1000.0), random.Random(seed)
    addresses = [f"10.0.0.{i + 1}:7000" for i in range(nodes)]
    out: list[tuple[int, float]] = []
    with deterministic_pysyncobj(clock, rng):
        scheduler = Scheduler(clock)
        network = SimNetwork(scheduler, rng)
        configs = [ReplicationConfig(a, tuple(p for p in addresses if p != a), root / str(i), raft_max_timeout_s=max_timeout)
                   for i, a in enumerate(addresses)]
        cluster = [SimRaftNode(network, cfg, NullStateMachine()) for cfg in configs]

        def leader() -> SimRaftNode | None:
            leading = [n for n in cluster if n.alive and n.is_leader()]
            return leading[0] if len(leading) == 1 else None

        try:
            scheduler.run_until(clock.now + 3.0)
            for _ in range(crashes):
                scheduler.run_until(clock.now + 1.0)
                old = leader()
                if old is None:
                    raise RuntimeError(f"seed {seed}: no single leader before a crash")
                term, crashed_at = old.term(), clock.now
                old.crash()
                while leader() is None and clock.now - crashed_at < 30:
                    scheduler.run_until(clock.now + STEP)
                elected = clock.now - crashed_at
                scheduler.run_until(clock.now + 1.0)
                new = leader()
                if new is None:
                    raise RuntimeError(f"seed {seed}: no leader 1 s after the election")
                out.append((new.term() - term, elected))
                i = cluster.index(old)
                cluster[i] = SimRaftNode(network, configs[i], NullStateMachine())
        finally:
            for n in cluster:
                n.crash()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/bench/bench_elections.py", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--seeds", default="0-199", help="a range, e.g. 0-199")
    parser.add_argument("--crashes", type=int, default=5, help="leader crashes per seed")
    parser.add_argument("--max-timeout", type=float, default=0.6, help="raft_max_timeout_s (default 0.6)")
    parser.add_argument("--split-pre-votes", action="store_true",
                        help="pre-vote without one pre-vote per term (as before it): two candidates can both win")
    args = parser.parse_args(argv)
    first, _, last = args.seeds.partition("-")
    seeds = range(int(first), int(last or first) + 1)
    results: list[tuple[int, float]] = []
    patch = mock.patch.object(PreVotePromise, "binds", lambda self, **_: False)
    with patch if args.split_pre_votes else contextlib.nullcontext(), tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            results += one_seed(seed, args.nodes, args.crashes, Path(tmp) / str(seed), args.max_timeout)
    terms = [t for t, _ in results]
    times = sorted(s for _, s in results)
    extra = sum(t - 1 for t in terms)
    print(f"{args.nodes} nodes, seeds {seeds.start}-{seeds.stop - 1}, election timeout 0.3-{args.max_timeout:g} s, "
          f"{'split pre-votes (before)' if args.split_pre_votes else 'one pre-vote per term'}: "
          f"{len(results)} leader crashes, {sum(terms)} terms ({extra} extra; "
          f"{sum(1 for t in terms if t > 1)} crashes cost more than one); time to a new leader: "
          f"median {statistics.median(times) * 1000:.0f} ms, p90 {times[int(0.9 * len(times))] * 1000:.0f} ms, "
          f"max {times[-1] * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
