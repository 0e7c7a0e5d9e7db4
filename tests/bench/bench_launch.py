"""Benchmark of control-plane launch throughput (not a test): accepted offers -> committed TASK_RUNNING.

    python tests/bench/bench_launch.py [--agents 50] [--tasks 5000] [--baseline-tasks 1500]
                                       [--per-accept 100] [--accepts-in-flight 8] [--profile-leader DIR]

Setup, once per mode, each on a fresh quorum: three real `tessera master` processes (LocalCluster),
`--agents` emulated agents (agent/emulated.py) in one separate process, and a framework in this process
built on the SDK's blocking `SchedulerDriver`. The emulated tasks keep running (their `task_duration` is
an hour), so the run measures placement and launch, as Nomad's C1M does, not churn.

The framework packs up to `--per-accept` tasks into each offer it gets and launches them with one Accept
per offer (Mesos and Nomad frameworks do the same: several tasks per offer), with up to
`--accepts-in-flight` Accepts under way at once; it acknowledges every update. A task's latency runs
from the moment its Accept is sent to the moment the framework receives its TASK_RUNNING update, which
the master forwards only after the update is committed (so it bounds the commit from above). Throughput
is tasks / (last TASK_RUNNING - first Accept).

Modes, measured in the same run:
- `legacy`: what a framework and an agent built before the batched messages do: one Acknowledge call
  per update, sent from a pool; one StatusUpdate per agent message. Same packing, same accepts in flight.
- `batched`: the SDK acknowledges the updates it has in hand in one call (`AcknowledgeRequest.updates`),
  emulated agents send the updates they have due in one message (`AgentMessage.status_updates`), and
  the master commits each such batch as one log entry and sends RunTasks to agents in batches.

Also printed per mode: the CPU of every process of the run (leader CPU per task is the figure that does
not depend on what else the machine runs), a timeline, and a warning when the leader changed during the
run (its figures are then not comparable). A job whose task is lost before it ran is launched again.

With `--profile-leader DIR` the leader is sampled with py-spy (`--gil`: only the thread holding the GIL)
while each run lasts, into `DIR/leader-<mode>.txt` (collapsed stacks);
`python tests/bench/bench_launch.py --summarize FILE` prints each function's share of the samples.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Run from anywhere in the repo, with this checkout's code and generated protos in this process and in
# every process it starts (masters, agents).
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "proto"), os.environ.get("PYTHONPATH", "")])

import psutil  # noqa: E402

AGENT_RESOURCES = "cpus:64;mem:262144;disk:1000000"
TASK_CPUS, TASK_MEM = 0.1, 32.0


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    return f"{platform.platform()}, python {platform.python_version()}, {psutil.cpu_count()} cpus, {mem:.1f} GiB"


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# ---- the emulated agents, in their own process -----------------------------------------------------


def serve_agents(masters: str, count: int, batched: bool, resources: str = AGENT_RESOURCES,
                 task_duration: float = 3600.0) -> int:
    """Child process: run the emulated agents until stdin closes; print READY once all registered. Each
    emulated task ends (TASK_FINISHED) `task_duration` seconds after it started."""
    from tessera.agent.emulated import EmulatedAgents, EmulatedConfig

    config = EmulatedConfig(masters=tuple(masters.split(",")), count=count, resources=resources,
                            hostname_prefix="launch", task_duration=task_duration, seed=1, batch_messages=batched)
    with EmulatedAgents(config) as agents:
        agents.wait_registered(timeout=120)
        print("READY", flush=True)
        sys.stdin.read()
        stats = agents.stats()
        print(f"STATS launched={stats.tasks_launched} updates_sent={stats.updates_sent} "
              f"acked={stats.updates_acked} reconnects={stats.reconnects}", flush=True)
    return 0


def start_agents(masters: list[str], count: int, batched: bool, log: Path, resources: str = AGENT_RESOURCES,
                 task_duration: float = 3600.0) -> subprocess.Popen[str]:
    """The emulated agents in a child process (this file's `--serve-agents`), once all registered."""
    cmd = [sys.executable, __file__, "--serve-agents", "--masters", ",".join(masters), "--agents", str(count),
           "--agent-resources", resources, "--task-duration", repr(task_duration)]
    if batched:
        cmd.append("--batched")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "ab"), text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "READY":
        proc.kill()
        raise RuntimeError(f"emulated agents did not start ({line!r}):\n{log.read_text(errors='replace')[-3000:]}")
    return proc


def stop_agents(proc: subprocess.Popen[str]) -> str:
    try:
        out, _ = proc.communicate(input="", timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return "STATS (agents did not stop in time)"
    return out.strip()


# ---- the framework ------------------------------------------------------------------------------------


@dataclass
class Run:
    """Per job (index 0..total-1): when its first Accept was sent, when a task of it was first RUNNING.
    A job whose task is lost (e.g. its agent was marked unreachable under load) is launched again under a
    new task id; its latency then includes the loss."""

    accepted_at: dict[int, float] = field(default_factory=dict)
    running_at: dict[int, float] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    accepts: int = 0
    accept_errors: int = 0
    relaunched: int = 0
    last_accept_done: float = 0.0
    error_kinds: dict[str, int] = field(default_factory=dict)
    other_states: dict[str, int] = field(default_factory=dict)


def job_of(task_id: str) -> int:
    return int(task_id.split("-", 1)[1].split(".", 1)[0])


def make_scheduler(total: int, per_accept: int, in_flight: int, run: Run, done: threading.Event) -> object:
    from tessera.sdk import (
        Filters,
        Offer,
        Resources,
        Scheduler,
        SchedulerDriver,
        TaskInfo,
        TaskState,
        TaskStatus,
    )
    from tessera.sdk.errors import TesseraError

    need = Resources.of(cpus=TASK_CPUS, mem=TASK_MEM)
    lock = threading.Lock()
    waiting: deque[int] = deque(range(total))
    pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="bench-accept")

    def revive(driver: SchedulerDriver) -> None:
        try:
            driver.revive()  # also clears the decline filters, so every agent is offered again
        except TesseraError:
            pass

    class Launcher(Scheduler):
        def offers(self, driver: SchedulerDriver, offers: list[Offer]) -> None:
            for offer in offers:
                left, tasks = offer.resources, []
                with lock:
                    while waiting and len(tasks) < per_accept and left.contains(need):
                        i = waiting.popleft()
                        left = left - need
                        attempt = run.attempts.get(i, 0)
                        tasks.append(TaskInfo(task_id=f"launch-{i}.{attempt}", name="bench", resources=need,
                                              command="sleep 3600"))
                if tasks:
                    pool.submit(self._launch, driver, offer, tasks)
                else:
                    pool.submit(self._decline, driver, offer)

        @staticmethod
        def _launch(driver: SchedulerDriver, offer: Offer, tasks: list[TaskInfo]) -> None:
            now = time.perf_counter()
            with lock:
                for t in tasks:
                    run.accepted_at.setdefault(job_of(t.task_id), now)
            try:
                driver.launch(offer, tasks)
                with lock:
                    run.accepts += 1
                    run.last_accept_done = max(run.last_accept_done, time.perf_counter())
            except TesseraError as exc:
                with lock:
                    run.accept_errors += 1
                    run.error_kinds[type(exc).__name__] = run.error_kinds.get(type(exc).__name__, 0) + 1
                    for t in tasks:
                        run.attempts[job_of(t.task_id)] = run.attempts.get(job_of(t.task_id), 0) + 1
                        waiting.appendleft(job_of(t.task_id))
                revive(driver)

        @staticmethod
        def _decline(driver: SchedulerDriver, offer: Offer) -> None:
            try:
                driver.decline(offer, Filters(refuse_seconds=60))
            except TesseraError:
                pass

        def update(self, driver: SchedulerDriver, status: TaskStatus) -> None:
            now = time.perf_counter()
            job = job_of(status.task_id)
            if status.state is TaskState.TASK_RUNNING:
                with lock:
                    run.running_at.setdefault(job, now)
                    if len(run.running_at) >= total:
                        done.set()
            elif status.state is not TaskState.TASK_STARTING:
                with lock:
                    run.other_states[status.state.name] = run.other_states.get(status.state.name, 0) + 1
                    if status.is_terminal and job not in run.running_at:
                        run.attempts[job] = run.attempts.get(job, 0) + 1
                        run.relaunched += 1
                        waiting.append(job)
                pool.submit(revive, driver)

    Launcher.pool = pool  # type: ignore[attr-defined]
    return Launcher()


@dataclass
class Result:
    mode: str
    tasks: int
    seconds: float
    p50: float
    p99: float
    accepts: int
    accept_errors: int
    cpu: dict[str, float]  # process -> % of one core over the run
    load: str
    notes: str
    timeline: str
    wall: float = 0.0  # seconds the CPU figures cover (driver start -> last TASK_RUNNING seen)

    @property
    def leader_ms_per_task(self) -> float:
        return self.cpu["leader"] / 100 * self.wall / self.tasks * 1000 if self.tasks else float("nan")

    @property
    def total_ms_per_task(self) -> float:
        return sum(self.cpu.values()) / 100 * self.wall / self.tasks * 1000 if self.tasks else float("nan")

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds if self.seconds > 0 else 0.0


def leader_pid(cluster: object) -> tuple[int, int]:
    """(pid, term) of the serving leader."""
    leader = cluster.leader(timeout=60)  # type: ignore[attr-defined]
    assert leader.proc is not None
    return int(leader.proc.pid), int(leader.quorum(timeout=5).term)


def run_mode(mode: str, args: argparse.Namespace, tasks: int, work: Path) -> Result:
    from tessera.sdk import FrameworkInfo, SchedulerDriver
    from tessera.sdk.grpc_transport import GrpcTransport
    from tests.support.cluster import LocalCluster

    batched = mode == "batched"
    with LocalCluster(work / mode, n=3) as cluster:
        # the Raft port encrypted, as outside development: LocalCluster hands its password to the masters in
        # their environment (TESSERA_RAFT_PASSWORD), never on their command line
        cluster.master_flags = ["--grpc-workers", str(args.agents + 64), "--log-level", "WARNING"]
        cluster.start_all()
        pid, term = leader_pid(cluster)
        masters = cluster.grpc_addresses()
        agents = start_agents(masters, args.agents, batched, work / f"agents-{mode}.log")
        profiler = None
        try:
            run, done = Run(), threading.Event()
            scheduler = make_scheduler(tasks, args.per_accept, args.accepts_in_flight, run, done)
            driver = SchedulerDriver(scheduler, FrameworkInfo(name=f"bench-{mode}"), masters,  # type: ignore[arg-type]
                                     call_timeout=60.0, batch_acknowledgements=batched,
                                     transport=GrpcTransport(batched_updates=batched))
            leader = psutil.Process(pid)
            if args.profile_leader:
                out = Path(args.profile_leader) / f"leader-{mode}.txt"
                profiler = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "50",
                                             "--output", str(out), "--nonblocking", "--gil"],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs = {"leader": leader, "agents": psutil.Process(agents.pid), "framework": psutil.Process()}
            for n, m in enumerate(m for m in cluster.masters if m.proc is not None and m.proc.pid != pid):
                procs[f"follower{n + 1}"] = psutil.Process(m.proc.pid)
            cpu_start = {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}
            wall_start = time.perf_counter()
            driver.start()
            finished = done.wait(args.timeout)
            wall = time.perf_counter() - wall_start
            cpu = {k: (sum(p.cpu_times()[:2]) - cpu_start[k]) / wall * 100 for k, p in procs.items()}
            load_now = load()
            driver.stop()
            driver.join(10)
            scheduler.pool.shutdown(wait=False)  # type: ignore[attr-defined]
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(30)
                print(f"    leader profile (py-spy raw): {Path(args.profile_leader) / f'leader-{mode}.txt'}")
        finally:
            stats = stop_agents(agents)
            if profiler is not None and profiler.poll() is None:
                profiler.kill()
        if not run.running_at:
            raise RuntimeError(f"{mode}: no task reached TASK_RUNNING; logs:\n{cluster.logs()}")
        first = min(run.accepted_at.values())
        last = max(run.running_at.values())
        latencies = [run.running_at[t] - run.accepted_at[t] for t in run.running_at if t in run.accepted_at]
        timeline = (f"last Accept answered at +{run.last_accept_done - first:.2f} s, first TASK_RUNNING at "
                    f"+{min(run.running_at.values()) - first:.2f} s, last at +{last - first:.2f} s")
        notes = stats + ("" if finished else f" INCOMPLETE: {len(run.running_at)}/{tasks} running")
        if run.error_kinds:
            notes += f" accept errors {run.error_kinds}"
        if run.relaunched:
            notes += f" {run.relaunched} jobs launched again after their task was lost"
        try:
            if leader_pid(cluster) != (pid, term):
                notes += " LEADER CHANGED during the run (figures are not comparable)"
        except TimeoutError:
            notes += " no leader at the end of the run"
        if run.other_states:
            notes += f" other states {run.other_states}"
        if args.keep:
            import shutil

            shutil.copytree(work / mode, Path(args.keep) / mode, dirs_exist_ok=True)
        return Result(mode, len(run.running_at), last - first, pct(latencies, 0.5), pct(latencies, 0.99),
                      run.accepts, run.accept_errors, cpu, load_now, notes, timeline, wall)


def summarize(path: str, top: int = 60) -> int:
    """Share of the samples in which each function is on the stack (inclusive), from py-spy raw output."""
    inclusive: dict[str, int] = {}
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        for frame in dict.fromkeys(f.split(":")[0] + ")" for f in stack.split(";")):
            inclusive[frame] = inclusive.get(frame, 0) + int(count)
    print(f"{total} samples")
    for frame, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{100 * n / max(1, total):5.1f} %  {frame}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--baseline-tasks", type=int, default=1500, help="tasks in the legacy run (0 = skip)")
    parser.add_argument("--per-accept", type=int, default=100, help="most tasks launched by one Accept")
    parser.add_argument("--accepts-in-flight", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--profile-leader", default="", metavar="DIR",
                        help="sample the leader with py-spy during each run; collapsed stacks go to DIR")
    parser.add_argument("--keep", default="", help="copy the clusters' data dirs (logs, events.db) here")
    parser.add_argument("--only", choices=("legacy", "batched"), default=None)
    parser.add_argument("--summarize", metavar="FILE", default="", help="print a --profile-leader file's top frames")
    parser.add_argument("--serve-agents", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--masters", default="", help=argparse.SUPPRESS)
    parser.add_argument("--batched", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--agent-resources", default=AGENT_RESOURCES, help=argparse.SUPPRESS)
    parser.add_argument("--task-duration", type=float, default=3600.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_agents:
        return serve_agents(args.masters, args.agents, args.batched, args.agent_resources, args.task_duration)
    if args.summarize:
        return summarize(args.summarize)
    if args.profile_leader:
        import shutil

        if shutil.which("py-spy") is None:
            parser.error("--profile-leader needs py-spy (pip install py-spy)")
        Path(args.profile_leader).mkdir(parents=True, exist_ok=True)
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print("machine:", machine())
    print(f"setup: 3 masters, {args.agents} emulated agents ({AGENT_RESOURCES}) in one process, tasks of "
          f"cpus:{TASK_CPUS};mem:{TASK_MEM:g}, up to {args.per_accept} per Accept, {args.accepts_in_flight} "
          f"Accepts in flight")
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="bench-launch-") as tmp:
        work = Path(tmp)
        plan = [("legacy", args.baseline_tasks), ("batched", args.tasks)]
        for mode, tasks in plan:
            if not tasks or (args.only and mode != args.only):
                continue
            print(f"\n{mode}: {tasks} tasks ({load()} before)")
            r = run_mode(mode, args, tasks, work)
            results[mode] = r
            print(f"  {r.tasks} tasks accept -> TASK_RUNNING in {r.seconds:.2f} s: {r.rate:.0f} tasks/s; latency "
                  f"p50 {r.p50 * 1000:.0f} ms, p99 {r.p99 * 1000:.0f} ms; {r.accepts} accepts "
                  f"({r.accept_errors} failed); {r.load}")
            print("  CPU, % of one core: " + ", ".join(f"{k} {v:.0f}" for k, v in r.cpu.items())
                  + f"; leader CPU per task {r.leader_ms_per_task:.2f} ms (1 core / that = "
                  f"{1000 / r.leader_ms_per_task:.0f} tasks/s if the leader had a core to itself); all these "
                  f"processes {r.total_ms_per_task:.2f} ms per task ({psutil.cpu_count()} cores / that = "
                  f"{psutil.cpu_count() * 1000 / r.total_ms_per_task:.0f} tasks/s on an otherwise idle machine)")
            print(f"  timeline: {r.timeline}")
            print(f"  agents: {r.notes}")
    if "legacy" in results and "batched" in results:
        print(f"\nratio batched / legacy (tasks/s): {results['batched'].rate / results['legacy'].rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
