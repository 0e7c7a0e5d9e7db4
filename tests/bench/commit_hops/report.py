"""Summarize what `commit_hops/sitecustomize.py` wrote: where a replicated write's time went, hop by hop, on
the master that proposed the most batches (the leader). Not a test.

    python tests/bench/commit_hops/report.py DIR
"""

from __future__ import annotations

import bisect
import collections
import statistics
import sys
from pathlib import Path

HOPS = (
    ("submit -> proposed (batcher: linger, a free in-flight slot)", 1, 2),
    ("proposed -> appended (tick thread picks it up)", 2, 3),
    ("appended -> apply starts (followers sync and answer, commit)", 3, 4),
    ("apply (state machine, on the tick thread)", 4, 5),
    ("apply ends -> futures resolved (completer thread)", 5, 7),
    ("submit -> futures resolved (all)", 1, 7),
)


def quantile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def main(directory: str) -> int:
    best: tuple[Path, list[list[float]], list[list[float]]] | None = None
    leader_lines: dict[Path, list[list[str]]] = {}
    for path in Path(directory).glob("*.tsv"):
        batches: list[list[float]] = []
        wakes: list[list[float]] = []
        for line in path.read_text().splitlines():
            kind, *fields = line.split("\t")
            if kind == "L":
                leader_lines.setdefault(path, []).append(fields)
                continue
            (batches if kind == "B" else wakes).append([float(x) for x in fields])
        if best is None or len(batches) > len(best[1]):
            best = (path, batches, wakes)
    if best is None or not best[1]:
        print(f"no batches recorded in {directory}")
        return 1
    path, batches, wakes = best
    done = [b for b in batches if b[3] > 0 and b[4] > 0]
    print(f"{path.name}: {len(done)} batches, {int(sum(b[0] for b in done))} entries "
          f"({statistics.mean(b[0] for b in done):.1f} per batch); ms: median / p90 / mean")
    for name, a, b in HOPS:
        xs = [(row[b] - row[a]) * 1e3 for row in done]
        print(f"  {name:<62} {quantile(xs, .5):7.1f} {quantile(xs, .9):7.1f} {statistics.mean(xs):7.1f}")
    if wakes:
        xs = [(w[1] - w[0]) * 1e3 for w in wakes]
        print(f"  {'futures resolved -> blocking handler runs again':<62} {quantile(xs, .5):7.1f} "
              f"{quantile(xs, .9):7.1f} {statistics.mean(xs):7.1f}")
    free = collections.Counter(int(b[8]) for b in done)
    waited = [(b[2] - b[1]) * 1e3 for b in done if int(b[8]) == 0]
    print(f"  in-flight slots left after a proposal: {dict(sorted(free.items()))}; proposed into the last free "
          f"slot: {len(waited)} batches, submit -> proposed median {quantile(waited, .5):.1f} ms")
    if leader_lines.get(path):
        allocation(leader_lines[path])
    return 0


def allocation(lines: list[list[str]]) -> None:
    """The allocation side of a slot's cycle on the leader (`L` lines): how long a wanted allocation pass
    waited for its round, and how much of that was the previous round's offers committing."""
    wants = sorted(float(f[1]) for f in lines if f[0] == "WANT")
    rounds = sorted((float(f[1]), float(f[2])) for f in lines if f[0] == "ROUND")
    settled = sorted(float(f[1]) for f in lines if f[0] == "SETTLED")
    proposed = {f[2]: float(f[1]) for f in lines if f[0] == "PROPOSED"}
    commit = [float(f[1]) - proposed[f[2]] for f in lines if f[0] == "SETTLED" and f[2] in proposed]
    blocked = sum(1 for f in lines if f[0] == "BLOCKED")
    starts = [r[0] for r in rounds]
    to_round: list[float] = []
    waiting: list[float] = []
    after: list[float] = []
    for w in wants:
        i = bisect.bisect_left(starts, w)
        if i >= len(starts):
            continue
        r = starts[i]
        to_round.append((r - w) * 1e3)
        j = bisect.bisect_right(settled, r) - 1
        s = settled[j] if j >= 0 and settled[j] > w else w
        waiting.append((s - w) * 1e3)
        after.append((r - s) * 1e3)
    info = [[int(x) for x in f[3:8]] for f in lines if f[0] == "ROUND" and len(f) >= 8]
    if info:
        empty = [i for i in info if i[1] == 0]
        print(f"  rounds that offered nothing: {len(empty)} of {len(info)}; of those, with agents of a free cpu: "
              f"{sum(1 for i in empty if i[0] > 0)}, with decline filters in force: "
              f"{sum(1 for i in empty if i[2] > 0)}, with a suppressed role: {sum(1 for i in empty if i[3] > 0)}")
    print(f"  allocation (leader): {len(wants)} wants, {len(rounds)} rounds, {len(commit)} offer entries, "
          f"{blocked} ticks wanted a round while one was in flight; ms: median / p90 / mean")
    for name, xs in (("want -> its round starts", to_round),
                     ("  of which: the previous round's offers committing", waiting),
                     ("  of which: from that commit (or the want) to the round", after),
                     ("round (allocator, decide, propose)", [(e - s) * 1e3 for s, e in rounds]),
                     ("offer entry proposed -> settled (its commit)", [x * 1e3 for x in commit])):
        if xs:
            print(f"  {name:<62} {quantile(xs, .5):7.1f} {quantile(xs, .9):7.1f} {statistics.mean(xs):7.1f}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
