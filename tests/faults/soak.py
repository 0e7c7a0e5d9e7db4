"""Soak: the fault run (`tests.faults.run`) for a stretch of wall-clock time instead of a number of faults,
with every master's resources sampled over time, then the history checker and a verdict on growth.

    python -m tests.faults.soak --minutes 60 --out /work/soak-run/60min
    python -m tests.faults.soak --minutes 1.5 --interval 2 --out /tmp/soak-smoke

What happens:
1. The fault run's cluster starts (`FaultRun.start`: `--masters` masters behind Raft proxies, `--agents`
   agents, `--frameworks` recording frameworks that launch, kill and finish tasks all the time).
2. Until `--minutes` are up the fault run's nemesis injects one fault after another (`FaultRun.inject`:
   a kill -9, SIGSTOP or partition held 1-2.5 s, then 0.3-1 s of quiet: a fault every few seconds).
   The `--spare` masters (m1 and m2 by default) are never killed: paused, cut off and deposed like the
   others, but each stays ONE process for the whole soak, so its series shows a leak rather than the
   saw-tooth of restarts. A leader kill that would hit a spared master pauses it instead.
3. Every `--interval` seconds a sampler thread reads, per running master (psutil): RSS, open file
   descriptors, threads, the size of `events.db` (with its WAL) and of the Raft journal directory
   (journal, meta, dumps). Each sample is a row of OUT/soak.csv as soon as it is taken.
4. At the end the fault run settles, stops and checks its history (`tests.faults.checker`); the plot
   OUT/soak.png is drawn from the CSV, and the verdict is printed (`growth` below).

The verdict (`verdict`): for each spared master and each of RSS, FDs, threads and journal size, a least-
squares line through the samples of the second half of the soak; its rise over that half must stay
within a tolerance of the first half's median (`TOLERANCES`: relative plus absolute slack). A process
that leaks grows at the same rate in both halves, while warm-up (imports, caches, the first snapshot)
is over within minutes, so the second half of a healthy master is flat. `events.db` is reported, not
judged: the soak keeps every event (no `--event-retention`: the checker reads the whole history), so it
grows with the number of events, which the verdict prints per minute. Restarted masters are reported
with their restart count and their largest values.

Exit status: 0 when the checker passes and every judged series is flat, 1 when the checker or the harness
failed, 2 when the checker passed but a series grew.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # see tests/faults/run.py: before grpc is imported

import argparse
import csv
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tessera.control_plane.runtime.memprobe import proc_status_kib
from tests.faults.run import FaultRun, RunConfig, RunResult, run

METRICS = ("rss_mib", "rss_anon_mib", "rss_file_mib", "fds", "threads", "events_db_mib", "journal_mib")
JUDGED = ("rss_mib", "rss_anon_mib", "fds", "threads", "journal_mib")
# (relative, absolute) slack on the rise of the second half's fitted line, against the first half's median
TOLERANCES: dict[str, tuple[float, float]] = {
    "rss_mib": (0.10, 8.0),
    "rss_anon_mib": (0.10, 8.0),
    "fds": (0.10, 4.0),
    "threads": (0.10, 2.0),
    "journal_mib": (0.25, 2.0),
}
FIELDS = ("t", "master", "pid", *METRICS)


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the soak's start
    master: str
    pid: int
    rss_mib: float
    rss_anon_mib: float  # RssAnon of /proc/PID/status: the heap, arenas, thread stacks (a leak shows here)
    rss_file_mib: float  # RssFile: mapped files' pages (libraries, mmap'd journal): bounded by the files
    fds: int
    threads: int
    events_db_mib: float
    journal_mib: float

    def value(self, metric: str) -> float:
        return float(getattr(self, metric))


@dataclass(frozen=True)
class Growth:
    master: str
    metric: str
    baseline: float  # median of the first half
    rise: float  # the second half's fitted line: its value at the end minus at the middle
    allowed: float

    @property
    def flat(self) -> bool:
        return self.rise <= self.allowed

    def describe(self) -> str:
        return (f"{self.master} {self.metric}: first half median {self.baseline:.1f}, second half rise "
                f"{self.rise:+.2f} (allowed {self.allowed:.2f}): {'flat' if self.flat else 'GROWS'}")


def slope(points: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of (t, value) points; 0 for fewer than two distinct times."""
    if len(points) < 2:
        return 0.0
    mt = statistics.fmean(t for t, _ in points)
    mv = statistics.fmean(v for _, v in points)
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mt) * (v - mv) for t, v in points) / var


def growth(master: str, metric: str, points: Sequence[tuple[float, float]], start: float, end: float) -> Growth:
    """Does `points` (t, value) between `start` and `end` grow? See the module header."""
    mid = (start + end) / 2
    first = [v for t, v in points if t < mid]
    second = [(t, v) for t, v in points if t >= mid]
    baseline = statistics.median(first) if first else 0.0
    rel, absolute = TOLERANCES[metric]
    return Growth(master, metric, baseline, slope(second) * (end - mid), rel * baseline + absolute)


def verdict(samples: Sequence[Sample], start: float, end: float, spare: Sequence[str]) -> list[Growth]:
    """One `Growth` per spared master that ran as one process the whole time, and judged metric."""
    out = []
    for name in spare:
        mine = [s for s in samples if s.master == name and start <= s.t <= end]
        if not mine or len({s.pid for s in mine}) != 1:
            continue  # restarted (or never sampled): said by `restarts` instead
        for metric in JUDGED:
            out.append(growth(name, metric, [(s.t, s.value(metric)) for s in mine], start, end))
    return out


def restarts(samples: Sequence[Sample]) -> dict[str, int]:
    """How many times each master's pid changed between samples."""
    last: dict[str, int] = {}
    count: dict[str, int] = {}
    for s in sorted(samples, key=lambda s: s.t):
        count.setdefault(s.master, 0)
        if s.master in last and last[s.master] != s.pid:
            count[s.master] += 1
        last[s.master] = s.pid
    return count


def _size(paths: Sequence[Path]) -> int:
    total = 0
    for p in paths:
        try:
            total += p.stat().st_size
        except OSError:
            pass  # a WAL checkpointed or a dump replaced while we looked
    return total


class Sampler:
    """Every `interval` seconds, one `Sample` per running master, appended to `csv_path` at once."""

    def __init__(self, fr: FaultRun, csv_path: Path, interval: float) -> None:
        self.fr = fr
        self.interval = interval
        self.samples: list[Sample] = []
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._file = open(csv_path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self._csv = csv.writer(self._file)
        self._csv.writerow(FIELDS)
        self._thread = threading.Thread(target=self._loop, name="soak-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            if self._thread.is_alive():
                self._thread.join(timeout=30)
            self._file.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        import psutil

        t = time.monotonic() - self.t0
        for m in self.fr.cluster.masters:
            proc = m.proc
            if proc is None or proc.poll() is not None:
                continue
            try:
                p = psutil.Process(proc.pid)
                with p.oneshot():
                    if p.status() == psutil.STATUS_ZOMBIE:
                        continue  # killed by the nemesis after the check, not reaped yet: no memory left to read
                    rss, fds, threads = p.memory_info().rss, p.num_fds(), p.num_threads()
                status = proc_status_kib(Path(f"/proc/{proc.pid}/status").read_text())
            except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
                continue  # killed by the nemesis between the check and the read
            if "RssAnon" not in status:
                continue  # exited meanwhile (a zombie's status has no memory lines)
            events = _size([m.data_dir / "events.db", m.data_dir / "events.db-wal"])
            raft_dir = m.data_dir / "raft"
            journal = _size(sorted(raft_dir.iterdir())) if raft_dir.is_dir() else 0
            s = Sample(round(t, 2), m.name, proc.pid, round(rss / 2**20, 2), round(status.get("RssAnon", 0) / 2**10, 2),
                       round(status.get("RssFile", 0) / 2**10, 2), fds, threads,
                       round(events / 2**20, 3), round(journal / 2**20, 3))
            self.samples.append(s)
            self._csv.writerow([s.t, s.master, s.pid, *(getattr(s, k) for k in METRICS)])
        self._file.flush()


def read_csv(path: Path) -> list[Sample]:
    with open(path, newline="", encoding="utf-8") as f:
        return [Sample(float(r["t"]), r["master"], int(r["pid"]), float(r["rss_mib"]),
                       float(r.get("rss_anon_mib") or 0), float(r.get("rss_file_mib") or 0), int(r["fds"]),
                       int(r["threads"]), float(r["events_db_mib"]), float(r["journal_mib"]))
                for r in csv.DictReader(f)]


def plot(samples: Sequence[Sample], path: Path, title: str) -> None:
    """One panel per metric, one line per master, minutes on the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"rss_mib": "RSS (MiB)", "rss_anon_mib": "RssAnon (MiB)", "rss_file_mib": "RssFile (MiB)", "fds": "open FDs", "threads": "threads",
              "events_db_mib": "events.db + WAL (MiB)", "journal_mib": "Raft journal dir (MiB)"}
    fig, axes = plt.subplots(len(METRICS), 1, figsize=(10, 2.4 * len(METRICS)), sharex=True)
    masters = sorted({s.master for s in samples})
    for ax, metric in zip(axes, METRICS, strict=True):
        for name in masters:
            mine = [s for s in samples if s.master == name]
            ax.plot([s.t / 60 for s in mine], [s.value(metric) for s in mine], label=name, linewidth=0.9)
        ax.set_ylabel(labels[metric])
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="upper left", ncol=len(masters), fontsize="small")
    axes[0].set_title(title)
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report(result: RunResult, samples: Sequence[Sample], start: float, end: float,
           spare: Sequence[str]) -> tuple[list[Growth], list[str]]:
    """The verdict and the lines that say it."""
    judged = verdict(samples, start, end, spare)
    lines = [f"soak: {len(samples)} samples of {len({s.master for s in samples})} masters over "
             f"{(end - start) / 60:.1f} min of faults"]
    lines += [f"  {g.describe()}" for g in judged]
    missing = [n for n in spare if n not in {g.master for g in judged}]
    if missing:
        lines.append(f"  not judged (restarted or never sampled): {', '.join(missing)}")
    for name, count in sorted(restarts(samples).items()):
        mine = [s for s in samples if s.master == name]
        events = [(s.t, s.events_db_mib) for s in mine if s.t <= end]
        rate = slope(events) * 60
        lines.append(f"  {name}: {count} restarts; max RSS {max(s.rss_mib for s in mine):.1f} MiB, "
                     f"max FDs {max(s.fds for s in mine)}, max threads {max(s.threads for s in mine)}, "
                     f"journal max {max(s.journal_mib for s in mine):.2f} MiB, events.db "
                     f"{mine[-1].events_db_mib:.2f} MiB at the end ({rate:+.3f} MiB/min: every event kept)")
    flat = all(g.flat for g in judged) and not missing
    lines.append("  verdict: " + ("FLAT: no series of a spared master grew beyond its tolerance" if flat
                                  else "GROWTH or an unjudged spared master: see above"))
    return judged, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help="how long faults are injected")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--masters", type=int, default=5, choices=(3, 5))
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--frameworks", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--spare", action="append", default=None, metavar="MASTER",
                        help="a master never killed, judged for growth (repeat; default m1 and m2)")
    parser.add_argument("--out", type=Path, required=True, help="directory for soak.csv, soak.png and the run")
    parser.add_argument("--master-flag", action="append", default=[], metavar="FLAG",
                        help="an extra flag for every master (repeat)")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    spare = tuple(args.spare or ("m1", "m2"))
    if len(spare) >= args.masters - 1:
        parser.error("--spare: leave at least two masters the nemesis may kill")
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = args.out / "soak.csv", args.out / "soak.png"
    config = RunConfig(masters=args.masters, agents=args.agents, frameworks=args.frameworks, faults=0,
                       seed=args.seed, root=args.out / "run", master_flags=tuple(args.master_flag),
                       verbose=not args.quiet, spare=spare)
    sampler: Sampler | None = None
    window: list[float] = []  # when the faults ended, on the sampler's clock

    def on_start(fr: FaultRun) -> None:
        nonlocal sampler
        sampler = Sampler(fr, csv_path, args.interval)
        sampler.start()

    deadline = time.monotonic() + 60 * args.minutes  # replaced once the cluster is up

    def more(i: int) -> bool:
        nonlocal deadline
        if i == 0:
            deadline = time.monotonic() + 60 * args.minutes
        if time.monotonic() < deadline:
            return True
        if sampler is not None:
            window.append(time.monotonic() - sampler.t0)
            sampler.stop()
        return False

    print(f"soak: {args.minutes:g} min, {args.masters} masters (spared: {', '.join(spare)}), sampling every "
          f"{args.interval:g} s into {csv_path}", flush=True)
    result = run(config, on_start=on_start, more=more)
    if sampler is not None:
        sampler.stop()
    print(result.summary())
    samples = read_csv(csv_path) if csv_path.exists() else []
    if not samples:
        print("soak: no samples (the cluster never came up)")
        return 1
    end = window[0] if window else samples[-1].t
    judged, lines = report(result, samples, 0.0, end, spare)
    plot(samples, png_path, f"soak: {args.masters} masters, {end / 60:.0f} min of faults "
                            f"({len(result.faults)} faults), seed {args.seed}; spared: {', '.join(spare)}")
    print("\n".join(lines))
    print(f"  csv: {csv_path}\n  plot: {png_path}")
    if not result.ok:
        return 1
    return 0 if all(g.flat for g in judged) and len(judged) == len(JUDGED) * len(spare) else 2


if __name__ == "__main__":
    sys.exit(main())
