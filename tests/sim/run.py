"""Run the whole-cluster simulation from the command line.

    python -m tests.sim.run --seed 18              # one seed; on a violation, print it and the trace tail
    python -m tests.sim.run --seed 18 --steps 300  # the replay command a violation prints
    python -m tests.sim.run --seeds 0-9999         # a long run: progress, then a summary

Exit status 1 when any seed violates an invariant.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from tests.sim.world import DEFAULT_STEPS, Report, Simulation, Violation


def parse_range(text: str) -> range:
    first, sep, last = text.partition("-")
    return range(int(first), int(last if sep else first) + 1)


def run_one(seed: int, steps: int, *, trace_tail: int = 0, guard_snapshots: bool = True) -> Report | Violation:
    with Simulation(seed, steps, guard_snapshots=guard_snapshots) as sim:
        try:
            return sim.run()
        except Violation as violation:
            if trace_tail:
                print("\n".join(sim.recent()[-trace_tail:]))
            return violation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--seed", type=int, help="run one seed")
    group.add_argument("--seeds", type=parse_range, help="run a range of seeds, e.g. 0-9999")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"steps per seed (default {DEFAULT_STEPS})")
    parser.add_argument("--trace", type=int, default=60, help="trace lines printed for a violation (--seed)")
    parser.add_argument("--unguarded", action="store_true",
                        help="run pysyncobj without the snapshot commit-index guard (reproduces its bug)")
    args = parser.parse_args(argv)
    guard = not args.unguarded

    if args.seed is not None:
        outcome = run_one(args.seed, args.steps, trace_tail=args.trace, guard_snapshots=guard)
        if isinstance(outcome, Violation):
            print(outcome.report())
            return 1
        print(f"seed {outcome.seed}: ok, {outcome.steps} steps ({outcome.simulated_seconds:.1f} s simulated), "
              f"{outcome.events} events, "
              f"{outcome.messages} raft messages, {outcome.commits} raft entries committed, "
              f"{outcome.acked} acknowledged requests, {outcome.elections} elections, "
              f"faults {dict(sorted(outcome.faults.items()))}")
        print(f"trace {outcome.trace_hash}")
        return 0

    seeds = args.seeds
    started = time.perf_counter()
    faults: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    violations: list[Violation] = []
    for n, seed in enumerate(seeds, 1):
        outcome = run_one(seed, args.steps, guard_snapshots=guard)
        if isinstance(outcome, Violation):
            violations.append(outcome)
            print(outcome.report(), flush=True)
        else:
            faults.update(outcome.faults)
            totals.update(steps=outcome.steps, simulated=round(outcome.simulated_seconds), events=outcome.events, messages=outcome.messages,
                          commits=outcome.commits, acked=outcome.acked, elections=outcome.elections)
        if n % 100 == 0 or n == len(seeds):
            elapsed = time.perf_counter() - started
            print(f"[{n}/{len(seeds)}] {elapsed:.1f} s, {len(violations)} violations", flush=True)
    elapsed = time.perf_counter() - started
    print(f"seeds {seeds.start}-{seeds.stop - 1}: {len(seeds)} seeds, {totals['steps']} steps "
          f"({totals['simulated']} s simulated), "
          f"{sum(faults.values())} faults injected ({', '.join(f'{k} {v}' for k, v in sorted(faults.items()))}), "
          f"{totals['events']} events, {totals['messages']} raft messages, {totals['commits']} raft entries committed, "
          f"{totals['acked']} acknowledged requests, {totals['elections']} elections, "
          f"{len(violations)} violations, {elapsed:.1f} s")
    for v in violations:
        print(f"violation: seed {v.seed} step {v.step}: replay with {v.replay}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
