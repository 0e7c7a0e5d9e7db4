"""Summarize what `commit_hops/sitecustomize.py` wrote: where a replicated write's time went, hop by hop, on
the master that proposed the most batches (the leader). Not a test.

    python tests/bench/commit_hops/report.py DIR
"""

from __future__ import annotations

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
    for path in Path(directory).glob("*.tsv"):
        batches: list[list[float]] = []
        wakes: list[list[float]] = []
        for line in path.read_text().splitlines():
            kind, *fields = line.split("\t")
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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
