"""Benchmark of short tasks at full utilization (not a test): the Reuther et al. 2017 experiment on Tessera.

    python tests/bench/bench_short_tasks.py [--durations 0.5,1,5,30] [--agents 44] [--agent-cpus 32]
                                            [--waves 4] [--long-waves 2] [--real 1,5] [--real-slots 16]
                                            [--baseline-tasks 5000] [--quick]

Reuther et al., "Scalable System Scheduling for HPC and Big Data" (MIT Lincoln Laboratory, 2017) ran N
tasks of a fixed duration t on P slots with Slurm, Son of Grid Engine, Mesos and Hadoop YARN and measured
the utilization U = N·t / (P·wall): for all four, U falls below 10 % once tasks last only a few seconds.

The same experiment here, for each duration t (`--durations`), each on a fresh quorum:
- three real `tessera master` processes (LocalCluster, the Raft port encrypted);
- `--agents` emulated agents of `--agent-cpus` cpus each in one separate process (the agents of
  `tests/bench/bench_launch.py`, batched messages): P = agents × cpus one-cpu slots; an emulated task
  reports TASK_RUNNING at once and TASK_FINISHED t seconds later;
- the SDK's own batch framework, `tessera.sdk.examples.batch.BatchRunner` on the blocking
  `SchedulerDriver`, in this process, running N = waves·P tasks of `true` (cpus 1 each), `--waves` of
  them (`--long-waves` for t >= 30 s, as the long runs take minutes).
wall runs from the driver's start to the last task's TASK_FINISHED handled by the framework; the ideal is
waves·t. Printed per run: U, tasks per second end to end (N / wall), the CPU of every process (psutil; %
of one core over the run) and the load average.

Plus a real-process run (`--real`, t = 1, 5 s by default): three masters and one real `tessera agent`
with `--real-slots` cpus, tasks of `sleep t` run by the agent's supervisor, N = waves·slots.

The baseline, in the same run: `bench_launch.py`'s batched mode (its own code, `--baseline-tasks` tasks on
50 agents): how many launches per second the control plane commits when tasks never end. The ratio
end-to-end launches/s ÷ that rate is printed for every emulated run. `--quick` is the smoke run of
tests/integration/test_bench_short_tasks.py: 4 agents of 8 cpus, t = 0.5 s, no real run, no baseline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "proto"), str(ROOT / "tests" / "bench")]
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "proto"), os.environ.get("PYTHONPATH", "")])

import bench_launch  # noqa: E402  (the baseline and its emulated agents)
import psutil  # noqa: E402

PUBLISHED = ("Reuther et al. 2017: U < 10 % for Slurm, Son of Grid Engine, Mesos and Hadoop YARN once tasks "
             "last a few seconds (> 90 % only with multi-level schedulers bundling tasks)")
TASK_MEM = 32.0


@dataclass
class ShortRun:
    kind: str  # "emulated" or "real"
    t: float
    slots: int
    tasks: int
    finished: int
    wall: float
    cpu: dict[str, float]
    load: str
    notes: str

    @property
    def ideal(self) -> float:
        return self.tasks / self.slots * self.t

    @property
    def utilization(self) -> float:
        return self.tasks * self.t / (self.slots * self.wall) if self.wall > 0 else 0.0

    @property
    def rate(self) -> float:
        return self.tasks / self.wall if self.wall > 0 else 0.0


def timed_driver_class() -> type:
    """The SDK's blocking driver, counting each kind of call and the seconds spent in it (the piece-by-piece
    view: where a framework's time goes). The calls themselves are the driver's own."""
    from tessera.sdk import SchedulerDriver

    class TimedDriver(SchedulerDriver):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, **kw)  # type: ignore[arg-type]
            self.timings: dict[str, list[float]] = {}
            self._timing_lock = threading.Lock()
            self._made: dict[int, float] = {}  # id(AcceptCall) -> when `accept_async` made it
            self.accept_waits: list[float] = []

        def _call(self, call: object) -> object:  # type: ignore[override]
            started = time.perf_counter()
            try:
                return super()._call(call)  # type: ignore[arg-type]
            finally:
                took = time.perf_counter() - started
                with self._timing_lock:
                    count_sum = self.timings.setdefault(type(call).__name__.removesuffix("Call"), [0, 0.0])
                    count_sum[0] += 1
                    count_sum[1] += took

        def _accept_call(self, *a: object, **kw: object) -> object:  # type: ignore[override]
            call = super()._accept_call(*a, **kw)  # type: ignore[arg-type]
            with self._timing_lock:
                self._made[id(call)] = time.perf_counter()
            return call

        def _accept_now(self, call: object) -> None:  # type: ignore[override]
            """A pipelined Accept starts: how long it waited for a free sender (all `accepts_in_flight` busy)."""
            with self._timing_lock:
                made = self._made.pop(id(call), None)
                if made is not None:
                    self.accept_waits.append(time.perf_counter() - made)
            super()._accept_now(call)  # type: ignore[arg-type]

        def breakdown(self) -> str:
            with self._timing_lock:
                items = sorted(self.timings.items(), key=lambda kv: -kv[1][1])
                waits = list(self.accept_waits)
            med = bench_launch.pct
            queued = (f"; pipelined Accepts waited for a sender {1000 * med(waits, 0.5):.0f} ms median "
                      f"(p90 {1000 * med(waits, 0.9):.0f})" if waits else "")
            return ", ".join(f"{k} {int(n)} x {1000 * s / max(1, n):.1f} ms (sum {s:.1f} s)"
                             for k, (n, s) in items) + queued

    return TimedDriver


def timed_runner_class() -> type:
    """The SDK's batch framework, noting when (this process's clock) each offers callback came, when each
    task was packed into an Accept, and when its TASK_RUNNING and terminal updates arrived. Its
    behaviour is the example's own: every callback is passed on unchanged."""
    from tessera.sdk.examples.batch import BatchRunner

    class TimedRunner(BatchRunner):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, **kw)  # type: ignore[arg-type]
            self.offer_times: list[float] = []
            self.packed: dict[str, float] = {}
            self.running: dict[str, float] = {}
            self.ended: dict[str, float] = {}

        def offers(self, driver: object, offers: list[object]) -> None:  # type: ignore[override]
            now = time.perf_counter()
            self.offer_times.append(now)
            before = set(self._running)
            super().offers(driver, offers)  # type: ignore[arg-type]
            for task_id in set(self._running) - before:
                self.packed[task_id] = now

        def update(self, driver: object, status: object) -> None:  # type: ignore[override]
            now = time.perf_counter()
            if status.state.name == "TASK_RUNNING":  # type: ignore[attr-defined]
                self.running.setdefault(status.task_id, now)  # type: ignore[attr-defined]
            elif status.is_terminal:  # type: ignore[attr-defined]
                self.ended.setdefault(status.task_id, now)  # type: ignore[attr-defined]
            super().update(driver, status)  # type: ignore[arg-type]

        def pieces(self, started: float) -> str:
            """Where a slot's time goes between two tasks, as the framework sees it (medians)."""
            if not self.running or not self.offer_times:
                return "no task ran"
            offers = sorted(self.offer_times)
            import bisect

            free_to_offer = [offers[i] - f for f in self.ended.values()
                             if (i := bisect.bisect_left(offers, f)) < len(offers)]
            packed_to_running = [self.running[t] - p for t, p in self.packed.items() if t in self.running]
            run_to_end = [self.ended[t] - r for t, r in self.running.items() if t in self.ended]
            med = bench_launch.pct
            return (f"first offer +{offers[0] - started:.2f} s, first TASK_RUNNING +{min(self.running.values()) - started:.2f} s; "
                    f"medians: task ended -> next offers callback {1000 * med(free_to_offer, 0.5):.0f} ms "
                    f"(p90 {1000 * med(free_to_offer, 0.9):.0f}), packed -> TASK_RUNNING seen "
                    f"{1000 * med(packed_to_running, 0.5):.0f} ms (p90 {1000 * med(packed_to_running, 0.9):.0f}), "
                    f"TASK_RUNNING -> end seen {1000 * med(run_to_end, 0.5):.0f} ms; last end -> done "
                    f"{1000 * (time.perf_counter() - max(self.ended.values(), default=started)):.0f} ms")

    return TimedRunner


def run_batch(masters: list[str], tasks: int, command: str, timeout: float, name: str
              ) -> tuple[float, int, str]:
    """Run the SDK's batch framework to the end: (wall seconds, jobs finished, notes)."""
    from tessera.sdk import FrameworkInfo, Resources

    TimedDriver, TimedRunner = timed_driver_class(), timed_runner_class()
    runner = TimedRunner([command] * tasks, Resources.of(cpus=1, mem=TASK_MEM), max_retries=2, name=name)
    driver = TimedDriver(runner, runner.framework_info(FrameworkInfo(name=name, failover_timeout=60.0)), masters,
                         call_timeout=60.0, give_up_after=60.0)
    started = time.perf_counter()
    driver.start()
    finished = runner.done.wait(timeout)
    wall = time.perf_counter() - started
    pieces = runner.pieces(started)
    driver.stop()
    driver.join(10)
    summary = runner.summary()
    notes = "" if finished else f"INCOMPLETE after {timeout:.0f} s; "
    notes += f"{pieces}\n    calls {driver.breakdown()}\n    "
    if summary.error:
        notes += f"stopped early: {summary.error}; "
    return wall, len(summary.succeeded), notes + summary.render().splitlines()[0]


def slot_pieces(events_db: Path) -> str:
    """Where a slot sits idle, read from the leader's event log after the run (medians, ms): the agent's
    status timestamps (its clock: the same machine) and the times the leader decided each entry, per
    task: STARTING at the agent -> the next task's Accept decided on that agent, cut at each step of the
    cycle — task ended (FINISHED at the agent) -> its update decided (the agent's send, the intake) ->
    the next offer on that agent decided (the update's commit, the allocation; 0 when the offer rides in
    the update's own entry) -> that offer's Accept decided (the offer's commit, the framework, the Accept
    call) -> the next task STARTING at the agent (the Accept's commit, RunTask) — and the commits the
    cycle waits for (raft.commit spans: the commit latency). Entries: how many log entries of each kind."""
    import bisect
    import json
    import sqlite3

    db = sqlite3.connect(events_db)
    try:
        rows = db.execute("SELECT type, time, raft_index, agent_id, task_id, offer_id, payload FROM events WHERE type IN "
                          "('TaskLaunched', 'TaskStatusUpdated', 'OfferIssued', 'OfferAccepted') ORDER BY seq").fetchall()
        commits = sorted(end - start for (start, end) in db.execute(
            "SELECT start_time, end_time FROM spans WHERE name = 'raft.commit'"))
    finally:
        db.close()
    agent_of: dict[str, str] = {}
    status: dict[tuple[str, str], tuple[float, float, int]] = {}  # (task, state) -> (decided, at agent, raft index)
    offers: dict[str, list[tuple[float, str]]] = {}
    accepted: dict[str, float] = {}
    entries: dict[str, set[int]] = {}
    for kind, t, index, agent, task, offer, payload in rows:
        entries.setdefault(kind, set()).add(index)
        if kind == "TaskLaunched":
            agent_of[task] = agent
        elif kind == "TaskStatusUpdated":
            st = json.loads(payload)["status"]
            status[(task, st["state"])] = (t, st["timestamp"], index)
        elif kind == "OfferIssued":
            offers.setdefault(agent, []).append((t, offer))
        elif kind == "OfferAccepted":
            accepted[offer] = t
    starts: dict[str, list[float]] = {}
    for (task, st), (_, at_agent, _) in status.items():
        if st == "TASK_STARTING" and task in agent_of:
            starts.setdefault(agent_of[task], []).append(at_agent)
    for v in (*starts.values(), *offers.values()):
        v.sort()
    names = ("ended -> update decided", "-> offer decided", "-> Accept decided", "-> next STARTING", "slot idle")
    pieces: dict[str, list[float]] = {n: [] for n in names}
    same_entry = 0
    for task, agent in agent_of.items():
        ended = status.get((task, "TASK_FINISHED"))
        if ended is None:
            continue
        decided, at_agent, index = ended
        pieces[names[0]].append(decided - at_agent)
        on_agent = starts.get(agent, [])
        j = bisect.bisect_left(on_agent, at_agent)
        if j < len(on_agent):
            pieces[names[4]].append(on_agent[j] - at_agent)
        agent_offers = offers.get(agent, [])
        i = bisect.bisect_left(agent_offers, (decided, ""))
        if i >= len(agent_offers):
            continue
        offered, offer_id = agent_offers[i]
        same_entry += offered == decided
        pieces[names[1]].append(offered - decided)
        if offer_id in accepted:
            pieces[names[2]].append(accepted[offer_id] - offered)
            j = bisect.bisect_left(on_agent, accepted[offer_id])
            if j < len(on_agent):
                pieces[names[3]].append(on_agent[j] - accepted[offer_id])
    med = bench_launch.pct
    parts = [f"{n} {1000 * med(v, 0.5):.0f} (p90 {1000 * med(v, 0.9):.0f})" for n, v in pieces.items() if v]
    ran = sum(1 for task in agent_of if (task, "TASK_FINISHED") in status)
    return (f"slot cycle at the leader, ms: {', '.join(parts)}; next offer in the ended task's own entry "
            f"{same_entry}/{ran}; commit {1000 * med(commits, 0.5):.0f} ms (p90 {1000 * med(commits, 0.9):.0f}) "
            f"over {len(commits)} entries; entries with " + ", ".join(f"{k} {len(v)}" for k, v in sorted(entries.items())))


def measured(procs: dict[str, psutil.Process], body: Callable[[], tuple[float, int, str]]
             ) -> tuple[float, int, str, dict[str, float], str]:
    cpu_start = {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}
    clock = time.perf_counter()
    wall, finished, notes = body()
    span = time.perf_counter() - clock
    cpu = {}
    for k, p in procs.items():
        try:
            cpu[k] = (sum(p.cpu_times()[:2]) - cpu_start[k]) / span * 100
        except psutil.Error:
            cpu[k] = float("nan")
    return wall, finished, notes, cpu, bench_launch.load()


def cluster_procs(cluster: object) -> dict[str, psutil.Process]:
    pid, _ = bench_launch.leader_pid(cluster)
    procs = {"leader": psutil.Process(pid), "framework": psutil.Process()}
    followers = [m for m in cluster.masters if m.proc is not None and m.proc.pid != pid]  # type: ignore[attr-defined]
    for n, m in enumerate(followers):
        procs[f"follower{n + 1}"] = psutil.Process(m.proc.pid)
    return procs


def run_emulated(t: float, args: Namespace, work: Path) -> ShortRun:
    from tests.support.cluster import LocalCluster

    slots = args.agents * args.agent_cpus
    waves = args.long_waves if t >= 30 else args.waves
    tasks = waves * slots
    resources = f"cpus:{args.agent_cpus};mem:{args.agent_cpus * 1024};disk:100000"
    with LocalCluster(work / f"emulated-{t:g}", n=3) as cluster:
        cluster.master_flags = ["--grpc-workers", str(args.agents + 64), "--log-level", "WARNING"]
        cluster.start_all()
        masters = cluster.grpc_addresses()
        agents = bench_launch.start_agents(masters, args.agents, True, work / f"agents-{t:g}.log", resources, t)
        try:
            procs = cluster_procs(cluster)
            procs["agents"] = psutil.Process(agents.pid)
            term = bench_launch.leader_pid(cluster)
            profiler = profile(args, term[0], f"leader-t{t:g}")
            wall, finished, notes, cpu, load = measured(
                procs, lambda: run_batch(masters, tasks, "true", args.timeout, f"short-{t:g}"))
        finally:
            stats = bench_launch.stop_agents(agents)
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(30)
        try:
            if bench_launch.leader_pid(cluster) != term:
                notes += "; LEADER CHANGED during the run (figures are not comparable)"
        except TimeoutError:
            notes += "; no leader at the end of the run"
        leader = next((m for m in cluster.masters if m.proc is not None and m.proc.pid == term[0]), None)
        if leader is not None and (leader.data_dir / "events.db").exists():
            time.sleep(1.0)  # the event log's writer thread flushes in batches
            notes += f"\n    {slot_pieces(leader.data_dir / 'events.db')}\n   "
        return ShortRun("emulated", t, slots, tasks, finished, wall, cpu, load, f"{notes}; agents {stats}")


def profile(args: Namespace, pid: int, name: str) -> subprocess.Popen[bytes] | None:
    """With --profile-leader DIR: py-spy samples the leader (the thread holding the GIL) into DIR/name.txt."""
    if not args.profile_leader:
        return None
    out = Path(args.profile_leader) / f"{name}.txt"
    print(f"  leader profile (py-spy raw; summarize with bench_launch.py --summarize): {out}")
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "50",
                             "--output", str(out), "--nonblocking", "--gil"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_real(t: float, args: Namespace, work: Path) -> ShortRun:
    from tests.support.cluster import LocalCluster

    slots = args.real_slots
    tasks = args.waves * slots
    with LocalCluster(work / f"real-{t:g}", n=3) as cluster:
        cluster.master_flags = ["--log-level", "WARNING"]
        cluster.start_all()
        agent = cluster.add_agent(resources=f"cpus:{slots};mem:{slots * 256};disk:100000")
        cluster.wait_agents(1, timeout=60)
        masters = cluster.grpc_addresses()
        procs = cluster_procs(cluster)
        assert agent.proc is not None
        procs["agent"] = psutil.Process(agent.proc.pid)
        wall, finished, notes, cpu, load = measured(
            procs, lambda: run_batch(masters, tasks, f"sleep {t:g}", args.timeout, f"real-{t:g}"))
        return ShortRun("real", t, slots, tasks, finished, wall, cpu, load, notes)


def baseline(args: Namespace, work: Path) -> bench_launch.Result:
    ns = Namespace(agents=50, per_accept=100, accepts_in_flight=8, timeout=args.timeout, profile_leader="", keep="")
    return bench_launch.run_mode("batched", ns, args.baseline_tasks, work)


def report(r: ShortRun, base_rate: float | None) -> None:
    ratio = f"; {r.rate / base_rate:.2f}x bench_launch's rate" if base_rate and r.kind == "emulated" else ""
    ratio += f" (at most P/t = {r.slots / r.t:.0f}/s at full utilization)"
    print(f"  {r.kind} t={r.t:g} s: {r.finished}/{r.tasks} tasks on {r.slots} slots in {r.wall:.1f} s "
          f"(ideal {r.ideal:.1f} s): U = {100 * r.utilization:.1f} %, {r.rate:.0f} tasks/s end to end{ratio}")
    print("    CPU, % of one core: " + ", ".join(f"{k} {v:.0f}" for k, v in r.cpu.items()) + f"; {r.load}")
    print(f"    {r.notes}")


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--durations", type=floats, default=[0.5, 1.0, 5.0, 30.0], help="t values, seconds")
    parser.add_argument("--agents", type=int, default=44)
    parser.add_argument("--agent-cpus", type=int, default=32)
    parser.add_argument("--waves", type=int, default=4, help="N = waves x slots")
    parser.add_argument("--long-waves", type=int, default=2, help="waves for t >= 30 s")
    parser.add_argument("--real", type=floats, default=[1.0, 5.0], help="t values of the real-agent run ('' = none)")
    parser.add_argument("--real-slots", type=int, default=16)
    parser.add_argument("--baseline-tasks", type=int, default=5000, help="bench_launch batched tasks (0 = skip)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per run")
    parser.add_argument("--profile-leader", default="", metavar="DIR",
                        help="sample the leader with py-spy during each emulated run; collapsed stacks go to DIR")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 agents x 8 cpus, t = 0.5 s only")
    args = parser.parse_args(argv)
    if args.profile_leader:
        if shutil.which("py-spy") is None:
            parser.error("--profile-leader needs py-spy (pip install py-spy)")
        Path(args.profile_leader).mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.agents, args.agent_cpus, args.durations, args.real, args.baseline_tasks = 4, 8, [0.5], [], 0
        args.timeout = min(args.timeout, 120.0)
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print("machine:", bench_launch.machine())
    print(f"setup: 3 masters, {args.agents} emulated agents of {args.agent_cpus} cpus "
          f"({args.agents * args.agent_cpus} one-cpu slots), sdk.examples.batch, N = {args.waves} x slots "
          f"({args.long_waves} x for t >= 30 s) tasks of `true`")
    print("published:", PUBLISHED)
    runs: list[ShortRun] = []
    base_rate: float | None = None
    with tempfile.TemporaryDirectory(prefix="bench-short-") as tmp:
        work = Path(tmp)
        if args.baseline_tasks:
            print(f"\nbaseline: bench_launch.py batched, {args.baseline_tasks} tasks on 50 agents "
                  f"({bench_launch.load()} before)")
            b = baseline(args, work)
            base_rate = b.rate
            print(f"  {b.tasks} launches committed (accept -> TASK_RUNNING) in {b.seconds:.2f} s: {b.rate:.0f}/s; "
                  f"CPU " + ", ".join(f"{k} {v:.0f}" for k, v in b.cpu.items()) + f"; {b.notes}")
        for t in args.durations:
            print(f"\nemulated t={t:g} s ({bench_launch.load()} before)")
            runs.append(run_emulated(t, args, work))
            report(runs[-1], base_rate)
        for t in args.real:
            print(f"\nreal t={t:g} s ({bench_launch.load()} before)")
            runs.append(run_real(t, args, work))
            report(runs[-1], None)
    print("\n| run | t | slots | tasks | wall | ideal | U | tasks/s (P/t) |" + (" × bench_launch |" if base_rate else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|" if base_rate else ""))
    for r in runs:
        ratio = f" {r.rate / base_rate:.2f} |" if base_rate and r.kind == "emulated" else (" – |" if base_rate else "")
        u = f"{100 * r.utilization:.1f} %" if r.finished == r.tasks else f"INCOMPLETE ({r.finished} ended)"
        print(f"| {r.kind} | {r.t:g} s | {r.slots} | {r.tasks} | {r.wall:.1f} s | {r.ideal:.1f} s | "
              f"{u} | {r.rate:.0f} ({r.slots / r.t:.0f}) |{ratio}")
    if base_rate:
        print(f"baseline bench_launch.py batched: {base_rate:.0f} launches/s")
    print("published:", PUBLISHED)
    return 0 if all(r.finished == r.tasks for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
