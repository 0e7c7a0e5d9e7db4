"""Benchmark of leader failover as frameworks see it (not a test):

    python tests/bench/bench_failover_offers.py [--masters 3] [--trials 10] [--agents 3] [--frameworks 2]

The cluster of the fault-injection suite (`tests.faults.run`: real masters behind Raft proxies, real
agents, recording frameworks), with one fault only, repeated: `kill -9` of the leader. Each trial
measures from the kill:
- `serving leader`: a surviving master serves as leader (its LeaderElected barrier is applied), polled
  every 20 ms over GetQuorum: the baseline, what Raft and the barrier alone cost;
- `offers flowing`: every framework has re-subscribed to the new leader and received an offer again:
  the figure the target is about (median <= 2 s).
The killed master is restarted, the harness waits until it has rejoined (knows the leader, has applied
what was committed), and the cluster is left alone for `--settle` seconds between trials. It
prints min/median/max of both, and the median ratio offers/leader (how much the clients add to Raft).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere in the repo

import psutil  # noqa: E402

from tests.faults.run import FaultRun, RunConfig  # noqa: E402
from tests.support.cluster import wait_for  # noqa: E402


def machine() -> str:
    return (f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"{platform.platform()}, python {platform.python_version()}")


def _serving_leader_other_than(fr: FaultRun, name: str) -> bool:
    for m in fr.cluster.masters:
        if m.name == name or not m.alive:
            continue
        try:
            q = m.quorum(timeout=0.2)
        except Exception:  # noqa: BLE001 - a master still starting or electing
            continue
        if q.leader == m.raft and q.leader_grpc == m.grpc:
            return True
    return False


def trial(fr: FaultRun, timeout: float) -> tuple[float, float]:
    leader = fr.cluster.leader(timeout=30)
    t_kill = time.time()
    fr.cluster.kill(leader)
    wait_for(lambda: _serving_leader_other_than(fr, leader.name), timeout, interval=0.02, what="a new leader")
    t_leader = time.time()
    offered = wait_for(lambda: [fr._offers_after(n, t_kill) for n in fr.frameworks]
                       if all(fr._offers_after(n, t_kill) for n in fr.frameworks) else None,
                       timeout, interval=0.05, what="offers to every framework")
    fr._restart_master(leader)  # and wait until it has rejoined, so every trial starts from a full quorum
    return t_leader - t_kill, max(offered) - t_kill


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--masters", type=int, default=3, choices=(3, 5))
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--frameworks", type=int, default=2)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between trials")
    args = parser.parse_args()
    print(f"command: python tests/bench/bench_failover_offers.py --masters {args.masters} --trials {args.trials} "
          f"--agents {args.agents} --frameworks {args.frameworks}")
    print(f"machine: {machine()}")
    root = Path(tempfile.mkdtemp(prefix="tessera-bench-failover-"))
    fr = FaultRun(RunConfig(masters=args.masters, agents=args.agents, frameworks=args.frameworks, faults=0,
                            seed=1, verbose=False), root)
    leaders: list[float] = []
    offers: list[float] = []
    try:
        fr.start()
        for i in range(args.trials):
            time.sleep(args.settle)
            t_leader, t_offers = trial(fr, timeout=30)
            leaders.append(t_leader)
            offers.append(t_offers)
            print(f"trial {i + 1}: serving leader {t_leader:.2f} s, offers flowing {t_offers:.2f} s", flush=True)
    finally:
        fr.stop()
    if not offers:
        return 1
    for what, xs in (("serving leader (baseline)", leaders), ("offers flowing to every framework", offers)):
        print(f"{what:36s} min {min(xs):.2f} s  median {statistics.median(xs):.2f} s  max {max(xs):.2f} s")
    ratios = [o / max(t, 1e-3) for o, t in zip(offers, leaders, strict=True)]
    print(f"median ratio offers/leader: {statistics.median(ratios):.2f}")
    print(f"target: median offers flowing <= 2 s: {'met' if statistics.median(offers) <= 2.0 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
