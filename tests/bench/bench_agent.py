"""Benchmark of the agent side (not a test). Three measurements, each against a baseline in the same run:

    python tests/bench/bench_agent.py [--launches 20] [--updates 2000] [--agents 100] [--tasks 200]
                                      [--skip-cluster]

1. Launch: a `true` task through the real launcher (sandbox, isolation, supervisor process, exit file)
   from `launch()` until its exit is observed, against a plain `subprocess.run(["true"])`. Run with the
   isolator `auto` picks here and with rlimits.
2. Checkpoint: status updates written to agent.db (one transaction per update, synchronous=FULL, then the
   acknowledgement) against the pure status-update manager alone: what durability costs per update.
3. Cluster (unless --skip-cluster): a 3-master LocalCluster and `--agents` emulated agents in this
   process (agent.emulated): time until all are registered (and the spread of first registrations),
   then `--tasks` tasks run by the SDK's batch runner (`python -m sdk.examples.batch`) through the
   emulated agents: tasks/s end to end, against the same batch on one emulated agent.
   Note: the master serves each agent stream on one pool thread (`--grpc-workers`, 256 by default), so
   keep --agents well under that.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere in the repo

import psutil  # noqa: E402

from agent.checkpoint import Checkpoint  # noqa: E402
from agent.core.status_updates import PendingUpdate, StatusUpdateManager  # noqa: E402
from agent.executor.isolation import Isolator, RlimitIsolator, detect_isolator  # noqa: E402
from agent.executor.launcher import ProcessLauncher  # noqa: E402
from control_plane.core.resources import Resources  # noqa: E402
from control_plane.core.values import CommandInfo, TaskInfo, TaskState, TaskStatus  # noqa: E402


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    return (f"{platform.platform()}, python {platform.python_version()}, {psutil.cpu_count()} cpus, "
            f"{mem:.1f} GiB, load {os.getloadavg()[0]:.1f}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# ---- 1. launch ---------------------------------------------------------------------------------------


def bench_launch(isolator: Isolator, n: int, work: Path) -> list[float]:
    launcher = ProcessLauncher(work / isolator.name, isolator)
    times = []
    for i in range(n):
        info = TaskInfo(task_id=f"t{i}", framework_id="bench", resources=Resources.of(cpus=0.1, mem=64),
                        command=CommandInfo(shell=False, value="true"))
        start = time.perf_counter()
        handle = launcher.launch(info)
        deadline = time.monotonic() + 30
        while not launcher.observe(handle).ended:
            if time.monotonic() > deadline:
                raise TimeoutError("a `true` task did not end in 30 s")
            time.sleep(0.002)
        times.append(time.perf_counter() - start)
        launcher.release(handle)
    return times


def bench_plain(n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(["true"], check=True)
        times.append(time.perf_counter() - start)
    return times


# ---- 2. checkpoint --------------------------------------------------------------------------------


def statuses(n: int) -> list[TaskStatus]:
    return [TaskStatus(task_id=f"t{i % 100}", state=TaskState.TASK_RUNNING, uuid=str(uuid.uuid4()),
                       message="bench", timestamp=float(i)) for i in range(n)]


def bench_checkpoint(n: int, work: Path) -> float:
    cp = Checkpoint.open(work / "agent.db")
    for i in range(100):
        cp.add_task(TaskInfo(task_id=f"t{i}", framework_id="bench", command=CommandInfo(value="true")))
    items = statuses(n)
    manager = StatusUpdateManager()
    start = time.perf_counter()
    for k, status in enumerate(items):
        cp.record_update(status)
        manager.add(PendingUpdate(status), float(k))
        manager.due(float(k))
        manager.acknowledge(status.task_id, status.uuid, float(k))
        cp.acknowledge([status.uuid])
    elapsed = time.perf_counter() - start
    cp.close()
    return n / elapsed


def bench_manager(n: int) -> float:
    items = statuses(n)
    manager = StatusUpdateManager()
    start = time.perf_counter()
    for k, status in enumerate(items):
        manager.add(PendingUpdate(status), float(k))
        manager.due(float(k))
        manager.acknowledge(status.task_id, status.uuid, float(k))
    return n / (time.perf_counter() - start)


# ---- 3. cluster -----------------------------------------------------------------------------------


def run_batch(masters: list[str], tasks: int, log: Path) -> float:
    cmd = [sys.executable, "-m", "sdk.examples.batch", "--masters", ",".join(masters), "--command", "true",
           "--count", str(tasks), "--cpus", "0.1", "--mem", "16", "--give-up-after", "60"]
    start = time.perf_counter()
    with open(log, "ab") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the batch failed (exit {proc.returncode}); see {log}")
    return tasks / elapsed


def bench_cluster(agents: int, tasks: int, work: Path) -> None:
    from agent.emulated import EmulatedAgents, EmulatedConfig
    from tests.support.cluster import LocalCluster

    with LocalCluster(work / "cluster", n=3) as cluster:
        cluster.start_all()
        cluster.leader(timeout=60)
        masters = cluster.grpc_addresses()
        results: dict[int, float] = {}
        for count in (1, agents):
            config = EmulatedConfig(masters=tuple(masters), count=count, task_duration=0.05,
                                    hostname_prefix=f"bench{count}", resources="cpus:4;mem:4096;disk:10000",
                                    seed=1)
            start = time.perf_counter()
            with EmulatedAgents(config) as emulated:
                stats = emulated.wait_registered(timeout=120)
                registered = time.perf_counter() - start
                firsts = stats.first_registration_seconds
                print(f"  {count:5d} emulated agents registered in {registered:.2f} s "
                      f"(first registration p50 {pct(firsts, 0.5) * 1000:.0f} ms, p99 {pct(firsts, 0.99) * 1000:.0f} ms)")
                rate = run_batch(masters, tasks, work / f"batch-{count}.log")
                stats = emulated.stats()
                results[count] = rate
                print(f"        {tasks} batch tasks: {rate:.1f} tasks/s; updates sent {stats.updates_sent}, "
                      f"acked {stats.updates_acked}, streams ended {stats.reconnects}")
        print(f"  ratio {agents} agents / 1 agent (tasks/s): {results[agents] / results[1]:.2f}")


def bench_real_agent(tasks: int, work: Path) -> None:
    """One real agent (real supervisors and processes) launching `true` as fast as the batch runner
    accepts offers: accept -> acknowledged TASK_FINISHED, tasks/s, against the same batch on one
    emulated agent (no processes) in the same run."""
    from agent.emulated import EmulatedAgents, EmulatedConfig
    from tests.support.cluster import LocalCluster

    with LocalCluster(work / "real", n=3) as cluster:
        cluster.start_all()
        cluster.leader(timeout=60)
        masters = cluster.grpc_addresses()
        cluster.add_agent("cpus:2;mem:4096")
        cluster.wait_agents(1, timeout=60)
        real = run_batch(masters, tasks, work / "batch-real.log")
        print(f"  1 real agent:     {tasks} tasks of `true`: {real:.1f} tasks/s")
        cluster.kill(cluster.agents[0])
        config = EmulatedConfig(masters=tuple(masters), count=1, task_duration=0.0, hostname_prefix="cmp",
                                resources="cpus:2;mem:4096;disk:10000", seed=1)
        with EmulatedAgents(config) as emulated:
            emulated.wait_registered(timeout=60)
            emulated_rate = run_batch(masters, tasks, work / "batch-emulated.log")
        print(f"  1 emulated agent: {tasks} tasks:          {emulated_rate:.1f} tasks/s "
              f"(ratio real/emulated {real / emulated_rate:.2f})")


def bench_many_agents(count: int, seconds: float, work: Path) -> None:
    """`count` emulated agents registering and heartbeating every second against 3 masters: registration
    time, and the leader's CPU share and RSS while they heartbeat, against the same leader idle before."""
    import psutil

    from agent.emulated import EmulatedAgents, EmulatedConfig
    from tests.support.cluster import LocalCluster

    with LocalCluster(work / "many", n=3) as cluster:
        cluster.master_flags = ["--grpc-workers", str(count + 64), "--agent-timeout", "15"]
        cluster.start_all()
        leader = cluster.leader(timeout=60)
        assert leader.proc is not None
        proc = psutil.Process(leader.proc.pid)

        def sample(duration: float) -> tuple[float, float]:
            proc.cpu_percent(None)
            time.sleep(duration)
            return proc.cpu_percent(None), proc.memory_info().rss / 2**20

        idle_cpu, idle_rss = sample(min(5.0, seconds))
        config = EmulatedConfig(masters=tuple(cluster.grpc_addresses()), count=count, hostname_prefix="many",
                                heartbeat_interval=1.0, start_spread=2.0, seed=1)
        start = time.perf_counter()
        with EmulatedAgents(config) as emulated:
            emulated.wait_registered(timeout=300)
            registered = time.perf_counter() - start
            cpu, rss = sample(seconds)
            stats = emulated.stats()
        print(f"  {count} agents registered in {registered:.1f} s (dials spread over 2 s); streams ended "
              f"{stats.reconnects}")
        print(f"  leader while they heartbeat every 1 s: CPU {cpu:.0f} % of one core, RSS {rss:.0f} MiB "
              f"(idle before: CPU {idle_cpu:.0f} %, RSS {idle_rss:.0f} MiB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--launches", type=int, default=20)
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument("--many-agents", type=int, default=1000, help="emulated agents heartbeating (0 = skip)")
    parser.add_argument("--real-tasks", type=int, default=300, help="tasks for the one-real-agent run (0 = skip)")
    args = parser.parse_args()
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print("machine:", machine())
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        work = Path(tmp)
        print(f"\n1. launch of `true`, {args.launches} times, launch() -> exit observed")
        plain = bench_plain(args.launches)
        print(f"  plain subprocess.run:  p50 {pct(plain, 0.5) * 1000:7.1f} ms")
        for isolator in {detect_isolator("auto").name: detect_isolator("auto"), "rlimits": RlimitIsolator()}.values():
            times = bench_launch(isolator, args.launches, work)
            print(f"  launcher ({isolator.name:10s}): p50 {pct(times, 0.5) * 1000:7.1f} ms, "
                  f"p99 {pct(times, 0.99) * 1000:7.1f} ms, ratio to plain {statistics.median(times) / statistics.median(plain):.1f}x")
        print(f"\n2. status updates, {args.updates}: checkpointed (record + ack, synchronous=FULL) vs manager only")
        durable = bench_checkpoint(args.updates, work)
        memory = bench_manager(args.updates)
        print(f"  checkpoint + manager: {durable:10.0f} updates/s")
        print(f"  manager only:         {memory:10.0f} updates/s   ratio {memory / durable:.0f}x")
        if not args.skip_cluster:
            print(f"\n3. cluster: 3 masters, 1 then {args.agents} emulated agents, {args.tasks} tasks via the batch runner")
            bench_cluster(args.agents, args.tasks, work)
            if args.many_agents:
                print(f"\n5. {args.many_agents} emulated agents heartbeating against 3 masters")
                bench_many_agents(args.many_agents, 10.0, work)
            if args.real_tasks:
                print(f"\n4. one real agent: {args.real_tasks} tasks of `true` via the batch runner")
                bench_real_agent(args.real_tasks, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
