"""Run the whole-cluster simulation from the command line.

    python -m tests.sim.run --seed 18              # one seed; on a violation, print it and the trace tail
    python -m tests.sim.run --seed 18 --steps 300  # the replay command a violation prints
    python -m tests.sim.run --seeds 0-9999         # a long run: progress, then a summary
    python -m tests.sim.run --seeds 0-199 --compare  # the same seeds with pre-vote off, then on: elections and terms
    python -m tests.sim.run --seeds 0-99 --apply-step  # masters apply as RaftReplicator's apply thread does
    python -m tests.sim.run --seeds 0-199 --masters 5 [--split-pre-votes]  # terms per leader fault, 5 masters

The summary counts elections by cause ("start": the first; "leader fault": the first after a fault
that left the leader crashed or cut off from a majority; "no leader fault (after KIND)": any other,
which deposed a leader nothing had hurt) and the terms reached (the highest term of any master at the
end, summed over the seeds) and the terms among them in which no master led: failed elections, such
as a split vote. `--split-pre-votes` runs pre-vote as it was before one pre-vote per term
(`prevote.PreVotePromise`): every voter grants every candidate whose term and log qualify, so two
candidates whose timeouts run out together can both win and split the real votes.

Exit status 1 when any seed violates an invariant.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import Counter
from collections.abc import Iterator
from unittest import mock

from tessera.control_plane.replication.prevote import PreVotePromise
from tests.sim.world import DEFAULT_STEPS, Report, Simulation, Violation


def parse_range(text: str) -> range:
    first, sep, last = text.partition("-")
    return range(int(first), int(last if sep else first) + 1)


@contextlib.contextmanager
def split_pre_votes() -> Iterator[None]:
    """Pre-vote without its one-pre-vote-per-term promise: a promise never binds."""
    with mock.patch.object(PreVotePromise, "binds", lambda self, **_: False):
        yield


def run_one(seed: int, steps: int, *, trace_tail: int = 0, guard_snapshots: bool = True,
            pre_vote: bool = True, apply_step: bool = False, masters: int = 3,
            split: bool = False, slow_snapshots: bool = False) -> Report | Violation:
    with split_pre_votes() if split else contextlib.nullcontext(), \
            Simulation(seed, steps, guard_snapshots=guard_snapshots, pre_vote=pre_vote, apply_step=apply_step,
                       masters=masters, slow_snapshots=slow_snapshots) as sim:
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
    parser.add_argument("--no-pre-vote", action="store_true",
                        help="run without pre-vote and check-quorum (pysyncobj's own elections)")
    parser.add_argument("--apply-step", action="store_true",
                        help="masters apply committed batches in a step after the tick, as RaftReplicator's apply "
                             "thread (replication.sim.SteppedApplier); default: inside the tick")
    parser.add_argument("--masters", type=int, default=3, choices=(3, 5), help="masters (default 3)")
    parser.add_argument("--slow-snapshots", action="store_true",
                        help="snapshots in small chunks that take their sender time, so a transmission spans "
                             "several append_entries periods (default: one tick)")
    parser.add_argument("--split-pre-votes", action="store_true",
                        help="pre-vote without one pre-vote per term (as before it): reproduces split votes")
    parser.add_argument("--compare", action="store_true",
                        help="with --seeds: run every seed without pre-vote, then with it, and compare")
    args = parser.parse_args(argv)
    guard = not args.unguarded

    if args.seed is not None:
        outcome = run_one(args.seed, args.steps, trace_tail=args.trace, guard_snapshots=guard,
                          pre_vote=not args.no_pre_vote, apply_step=args.apply_step, masters=args.masters,
                          split=args.split_pre_votes, slow_snapshots=args.slow_snapshots)
        if isinstance(outcome, Violation):
            print(outcome.report())
            return 1
        print(f"seed {outcome.seed}: ok, {outcome.steps} steps ({outcome.simulated_seconds:.1f} s simulated), "
              f"{outcome.events} events, "
              f"{outcome.messages} raft messages, {outcome.commits} raft entries committed, "
              f"{outcome.acked} acknowledged requests, {outcome.elections} elections "
              f"{dict(sorted(outcome.elections_after.items()))}, {outcome.leader_faults} leader faults, "
              f"term {outcome.max_term} ({outcome.leaderless_terms} without a leader), "
              f"faults {dict(sorted(outcome.faults.items()))}")
        print(f"trace {outcome.trace_hash}")
        return 0

    if args.compare:
        off = run_seeds(args.seeds, args.steps, guard=guard, pre_vote=False, label="pre-vote off", masters=args.masters)
        on = run_seeds(args.seeds, args.steps, guard=guard, pre_vote=True, label="pre-vote on", masters=args.masters,
                       split=args.split_pre_votes)
        print(comparison(off, on))
        return 1 if off.violations or on.violations else 0
    return 1 if run_seeds(args.seeds, args.steps, guard=guard, pre_vote=not args.no_pre_vote,
                          apply_step=args.apply_step, masters=args.masters,
                          split=args.split_pre_votes, slow_snapshots=args.slow_snapshots).violations else 0


class Totals:
    """What a range of seeds added up to."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.faults: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()
        self.elections_after: Counter[str] = Counter()
        self.violations: list[Violation] = []

    def add(self, outcome: Report) -> None:
        self.faults.update(outcome.faults)
        self.elections_after.update(outcome.elections_after)
        self.totals.update(steps=outcome.steps, simulated=round(outcome.simulated_seconds), events=outcome.events,
                           messages=outcome.messages, commits=outcome.commits, acked=outcome.acked,
                           elections=outcome.elections, terms=outcome.max_term, seeds=1,
                           leaderless_terms=outcome.leaderless_terms,
                           leader_faults=outcome.leader_faults)


def run_seeds(seeds: range, steps: int, *, guard: bool, pre_vote: bool, label: str = "",
              apply_step: bool = False, masters: int = 3, split: bool = False,
              slow_snapshots: bool = False) -> Totals:
    started = time.perf_counter()
    result = Totals(label or ("pre-vote off" if not pre_vote else "pre-vote, split" if split else "pre-vote on"))
    for n, seed in enumerate(seeds, 1):
        outcome = run_one(seed, steps, guard_snapshots=guard, pre_vote=pre_vote, apply_step=apply_step,
                          masters=masters, split=split, slow_snapshots=slow_snapshots)
        if isinstance(outcome, Violation):
            result.violations.append(outcome)
            print(outcome.report(), flush=True)
        else:
            result.add(outcome)
        if n % 100 == 0 or n == len(seeds):
            elapsed = time.perf_counter() - started
            print(f"[{n}/{len(seeds)}] {elapsed:.1f} s, {len(result.violations)} violations", flush=True)
    elapsed = time.perf_counter() - started
    faults, totals = result.faults, result.totals
    print(f"seeds {seeds.start}-{seeds.stop - 1} ({result.label}, {masters} masters): {len(seeds)} seeds, "
          f"{totals['steps']} steps "
          f"({totals['simulated']} s simulated), "
          f"{sum(faults.values())} faults injected ({', '.join(f'{k} {v}' for k, v in sorted(faults.items()))}), "
          f"{totals['events']} events, {totals['messages']} raft messages, {totals['commits']} raft entries committed, "
          f"{totals['acked']} acknowledged requests, {totals['elections']} elections, "
          f"{totals['leader_faults']} leader faults, final terms {totals['terms']} in all "
          f"({totals['leaderless_terms']} without a leader), "
          f"{len(result.violations)} violations, {elapsed:.1f} s")
    print("elections after: " + ", ".join(f"{k} {v}" for k, v in sorted(result.elections_after.items())))
    for v in result.violations:
        print(f"violation: seed {v.seed} step {v.step}: replay with {v.replay}")
    return result


def comparison(off: Totals, on: Totals) -> str:
    """A table of faults, elections by cause and terms, pre-vote off against on (same seeds)."""
    rows: list[tuple[str, object, object]] = [("faults injected", sum(off.faults.values()), sum(on.faults.values())),
                                              ("leader faults", off.totals["leader_faults"], on.totals["leader_faults"]),
                                              ("elections", off.totals["elections"], on.totals["elections"])]
    for cause in sorted(set(off.elections_after) | set(on.elections_after)):
        rows.append((f"  {cause}", off.elections_after[cause], on.elections_after[cause]))
    rows += [("sum of final terms", off.totals["terms"], on.totals["terms"]),
             ("  terms without a leader", off.totals["leaderless_terms"], on.totals["leaderless_terms"]),
             ("seeds ok", off.totals["seeds"], on.totals["seeds"]),
             ("violations", len(off.violations), len(on.violations))]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}} {'pre-vote off':>13} {'pre-vote on':>12}"]
    lines += [f"{name:{width}} {a!s:>13} {b!s:>12}" for name, a, b in rows]
    return "\n".join(lines)

if __name__ == "__main__":
    sys.exit(main())
