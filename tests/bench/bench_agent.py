"""Benchmark of the agent side (not a test). Three measurements, each against a baseline in the same run:

    python tests/bench/bench_agent.py [--launches 20] [--updates 2000] [--agents 100] [--tasks 200]
                                      [--skip-cluster] [--real-tasks 300] [--real-task-cpus 0.1] [--real-rounds 1]
                                      [--no-interpreter-baseline] [--no-single-baseline] [--only-real]

1. Launch: a `true` task through the real launcher (sandbox, isolation, supervisor process, exit file)
   from `launch()` until its exit is observed, against a plain `subprocess.run(["true"])`. Run with the
   isolator `auto` picks here and with rlimits, each with supervisors forked by the fork server and
   started as fresh interpreters.
2. Checkpoint: status updates written to agent.db (one transaction per update, synchronous=FULL, then the
   acknowledgement) against the pure status-update manager alone: what durability costs per update.
3. Cluster (unless --skip-cluster): a 3-master LocalCluster and `--agents` emulated agents in this
   process (tessera.agent.emulated): time until all are registered (and the spread of first registrations),
   then `--tasks` tasks run by the SDK's batch runner (`python -m tessera.sdk.examples.batch`) through the
   emulated agents: tasks/s end to end, against the same batch on one emulated agent.
   Note: the master serves each agent stream on one pool thread (`--grpc-workers`, 256 by default), so
   keep --agents well under that.
4. One real agent (`--real-tasks`, 0 = skip; `--only-real` runs just this): `true` tasks through the
   batch runner on one real agent, tasks/s from the first offer to the last acknowledged TASK_FINISHED,
   against one emulated agent (batched messages), the real agent with fresh-interpreter supervisors and
   the real agent speaking the single-message protocol (`--no-batch-messages`), each on a fresh cluster
   in the same run; with the CPU each process spent per task and per-stage latencies.
5. `--many-agents` emulated agents heartbeating against 3 masters: the leader's CPU and memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere in the repo

import psutil  # noqa: E402

from tessera.agent.checkpoint import Checkpoint  # noqa: E402
from tessera.agent.core.status_updates import PendingUpdate, StatusUpdateManager  # noqa: E402
from tessera.agent.executor.isolation import Isolator, RlimitIsolator, detect_isolator  # noqa: E402
from tessera.agent.executor.launcher import ProcessLauncher  # noqa: E402
from tessera.control_plane.core.resources import Resources  # noqa: E402
from tessera.control_plane.core.values import CommandInfo, TaskInfo, TaskState, TaskStatus  # noqa: E402


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    return (f"{platform.platform()}, python {platform.python_version()}, {psutil.cpu_count()} cpus, "
            f"{mem:.1f} GiB, load {os.getloadavg()[0]:.1f}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# ---- 1. launch ---------------------------------------------------------------------------------------


def bench_launch(isolator: Isolator, n: int, work: Path, fork_server: bool = True) -> list[float]:
    launcher = ProcessLauncher(work / f"{isolator.name}-{fork_server}", isolator, fork_server=fork_server)
    launcher.warm_up()
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
    launcher.close()
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


def run_batch(masters: list[str], tasks: int, log: Path, cpus: float = 0.1) -> float:
    """tasks/s from starting the batch runner to its summary line ("N succeeded, 0 failed, ...")."""
    cmd = [sys.executable, "-m", "tessera.sdk.examples.batch", "--masters", ",".join(masters), "--command", "true",
           "--count", str(tasks), "--cpus", str(cpus), "--mem", "16", "--give-up-after", "60"]
    start = time.perf_counter()
    elapsed = None
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if re.match(rb"^\d+ succeeded, 0 failed", line):
                elapsed = time.perf_counter() - start
                break  # a stuck interpreter exit must not hold the read
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # done, but stuck at interpreter exit: the figure stands
            proc.kill()
            proc.wait()
            print(f"  (the batch runner hung at exit after its summary and was killed; see {log})")
            code = 0
        out.write(proc.stdout.read())
    if code != 0 or elapsed is None:
        raise RuntimeError(f"the batch failed (exit {code}); see {log}")
    return tasks / elapsed


def bench_cluster(agents: int, tasks: int, work: Path) -> None:
    from tessera.agent.emulated import EmulatedAgents, EmulatedConfig
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


class CpuMeter:
    """CPU seconds (user + system) used by named processes between `start` and `stop`, their reaped
    children included (a fork server's supervisors and their tasks; the batch runner via this process)."""

    def __init__(self, processes: dict[str, int]) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in processes.items()}
        self.before: dict[str, float] = {}

    @staticmethod
    def _children_self() -> float:
        import resource

        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def _read(self) -> dict[str, float]:
        out = {"batch runner": self._children_self()}
        for name, proc in self.processes.items():
            try:
                t = proc.cpu_times()
                out[name] = t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                out[name] = float("nan")
        return out

    def start(self) -> None:
        self.before = self._read()

    def stop(self, tasks: int) -> str:
        after = self._read()
        parts = [f"{name} {(after[name] - self.before[name]) * 1000 / tasks:.1f}" for name in after]
        total = sum(after[name] - self.before[name] for name in after)
        return f"CPU ms per task: {', '.join(parts)}; total {total * 1000 / tasks:.1f}"


def _fork_server_pid(agent_pid: int) -> int | None:
    for child in psutil.Process(agent_pid).children():
        try:
            if "tessera.agent.executor.forkserver" in " ".join(child.cmdline()):
                return int(child.pid)
        except psutil.Error:
            continue
    return None


def _stage_report(leader: object, data_dir: Path | None, since: float) -> list[str]:
    """Per-task latencies from the leader's event log, the agent's checkpoint and the sandbox files
    (event log only when `data_dir` is None: an emulated agent)."""
    import json
    import sqlite3
    from collections import defaultdict

    from tessera.agent.checkpoint import status_from_bytes

    at: dict[str, dict[str, float]] = defaultdict(dict)
    finished_uuid: dict[str, str] = {}
    for e in leader.list_events(limit=1000):  # type: ignore[attr-defined]
        if e.time < since or not e.task_id:
            continue
        key = e.type
        payload = json.loads(e.payload_json or "{}")
        if e.type == "TaskStatusUpdated":
            status = payload.get("status", {})
            key += ":" + str(status.get("state"))
            if status.get("state") == "TASK_FINISHED":
                finished_uuid[e.task_id] = str(status.get("uuid"))
        elif e.type == "TaskStatusAcknowledged" and payload.get("uuid") == finished_uuid.get(e.task_id):
            key += ":TASK_FINISHED"
        at[e.task_id].setdefault(key, e.time)
    from tessera.agent.executor.supervisor import read_json

    if data_dir is None:
        chain = [("TaskLaunched", ""), ("TaskStatusUpdated:TASK_STARTING", "leader decided STARTING"),
                 ("TaskStatusUpdated:TASK_RUNNING", "leader decided RUNNING"),
                 ("TaskStatusUpdated:TASK_FINISHED", "leader decided FINISHED"),
                 ("TaskStatusAcknowledged:TASK_FINISHED", "framework's ack decided")]
        return _stage_lines(at, chain)
    db = sqlite3.connect(str(data_dir / "agent.db"))
    try:
        for task_id, data in db.execute("SELECT task_id, status FROM updates ORDER BY seq"):
            status = status_from_bytes(data)
            at[task_id].setdefault("agent " + status.state.name, status.timestamp)
    finally:
        db.close()
    for launch in data_dir.glob("sandboxes/*/*/launch.json"):
        task_id = str((read_json(launch) or {}).get("task_id", ""))
        for name, key in (("supervisor.json", "started_at"), ("task.json", "started_at"),
                          ("exit_status.json", "finished_at")):
            found = read_json(launch.parent / name) or {}
            if key in found:
                at[task_id][name] = float(found[key])
    chain = [("TaskLaunched", "decided at the leader"), ("agent TASK_STARTING", "supervisor started (agent)"),
             ("supervisor.json", "supervisor running"), ("task.json", "task process started"),
             ("exit_status.json", "task exited, status written"), ("agent TASK_FINISHED", "agent recorded FINISHED"),
             ("TaskStatusUpdated:TASK_FINISHED", "leader decided the update"),
             ("TaskStatusAcknowledged:TASK_FINISHED", "framework's ack decided")]
    return _stage_lines(at, chain)


def _stage_lines(at: dict[str, dict[str, float]], chain: list[tuple[str, str]]) -> list[str]:
    lines = []
    whole = [t["TaskStatusAcknowledged:TASK_FINISHED"] - t["TaskLaunched"] for t in at.values()
             if "TaskLaunched" in t and "TaskStatusAcknowledged:TASK_FINISHED" in t]
    if whole:
        lines.append(f"    launch decided -> FINISHED acknowledged: p50 {pct(whole, 0.5) * 1000:.0f} ms, "
                     f"p90 {pct(whole, 0.9) * 1000:.0f} ms, of which:")
    for (a, _), (b, what) in zip(chain, chain[1:], strict=False):
        deltas = [t[b] - t[a] for t in at.values() if a in t and b in t]
        if deltas:
            lines.append(f"    -> {what:32s} p50 {pct(deltas, 0.5) * 1000:6.1f} ms  p90 {pct(deltas, 0.9) * 1000:6.1f} ms")
    return lines


def _master_pids(cluster: Any, leader: Any) -> dict[str, int]:
    followers = [m for m in cluster.masters if m is not leader and m.proc is not None]
    return {"leader": leader.proc.pid, **{f"follower{i + 1}": m.proc.pid for i, m in enumerate(followers)}}


def _real_agent_run(tasks: int, work: Path, task_cpus: float, supervisor_start: str, batch: bool = True) -> float:
    """A fresh 3-master cluster and one real agent whose supervisors start the given way, speaking the
    batched protocol (BATCHED_MESSAGES) or not: tasks/s."""
    name = f"{supervisor_start}{'' if batch else '-single'}"
    from tests.support.cluster import AgentProc, LocalCluster

    class Cluster(LocalCluster):
        def start_agent(self, a: AgentProc) -> None:
            # the stock agent command, plus --supervisor-start
            assert not a.alive
            cmd = [sys.executable, "-m", "tessera.control_plane.cli.main", "agent", "--masters",
                   ",".join(self.grpc_addresses()), "--data-dir", str(a.data_dir), "--resources", a.resources,
                   "--hostname", a.name, "--supervisor-start", supervisor_start]
            if not batch:
                cmd.append("--no-batch-messages")
            with open(a.log_path, "ab") as out:
                a.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                          env={**os.environ, "PYTHONUNBUFFERED": "1"})

    with Cluster(work / f"real-{name}", n=3) as cluster:
        cluster.start_all()
        leader = cluster.leader(timeout=60)
        agent = cluster.add_agent("cpus:2;mem:4096")
        cluster.wait_agents(1, timeout=60)
        assert agent.proc is not None
        zygote = _fork_server_pid(agent.proc.pid)
        if zygote is None:  # the agent reaps its supervisors: their times (and their tasks') are its children's
            procs = {**_master_pids(cluster, leader), "agent+supervisors+tasks": agent.proc.pid}
        else:
            procs = {**_master_pids(cluster, leader), "agent": agent.proc.pid, "fork server+supervisors+tasks": zygote}
        meter = CpuMeter(procs)
        since = time.time()
        meter.start()
        rate = run_batch(cluster.grpc_addresses(), tasks, work / f"batch-real-{name}.log", cpus=task_cpus)
        cpu = meter.stop(tasks)
        protocol = "batched messages" if batch else "single messages"
        print(f"  1 real agent, supervisors by {supervisor_start}, {protocol}: {rate:6.1f} tasks/s "
              f"(load {os.getloadavg()[0]:.1f})")
        print(f"    {cpu}")
        print("    per-task latency of each stage:")
        for line in _stage_report(leader, agent.data_dir, since):
            print(line)
        return rate


def bench_real_agent(tasks: int, work: Path, task_cpus: float = 0.1, interpreter_baseline: bool = True,
                     rounds: int = 1, single_baseline: bool = True) -> None:
    """One real agent (real supervisors and processes) launching `true` as fast as the batch runner
    accepts offers: accept -> acknowledged TASK_FINISHED, tasks/s. Baselines in the same run, each on a
    fresh cluster: the same batch on one emulated agent (no processes: what the masters and the framework
    allow; it speaks the batched protocol, as the real agent does by default), the real agent with a fresh
    interpreter per supervisor (`--supervisor-start interpreter`), and the real agent with the fork server
    speaking the single-message protocol (`--no-batch-messages`).
    Prints where the time goes (per-task latency of each stage) and the CPU each process spent per task:
    on a 2-core machine their sum bounds the rate. With `rounds` > 1 the three runs alternate that many
    times (the machine is shared: alternating spreads other load over all three) and medians are printed."""
    results: dict[str, list[float]] = {"emulated": [], "interpreter": [], "fork-server-single": [], "fork-server": []}
    for i in range(rounds):
        if rounds > 1:
            print(f"  round {i + 1} of {rounds}")
        _real_agent_round(tasks, work / f"round-{i + 1}", task_cpus, interpreter_baseline, single_baseline, results)
    if rounds > 1:
        medians = {k: statistics.median(v) for k, v in results.items() if v}
        print("  medians (tasks/s): " + ", ".join(f"{k} {v:.1f}" for k, v in medians.items()))
        forked, emulated = medians["fork-server"], medians["emulated"]
        line = f"  median ratios: fork server / emulated {forked / emulated:.2f}"
        if "interpreter" in medians:
            line += f", fork server / fresh interpreter {forked / medians['interpreter']:.2f}"
        if "fork-server-single" in medians:
            line += f", batched / single messages {forked / medians['fork-server-single']:.2f}"
        print(line)


def _real_agent_round(tasks: int, work: Path, task_cpus: float, interpreter_baseline: bool, single_baseline: bool,
                      results: dict[str, list[float]]) -> None:
    from tessera.agent.emulated import EmulatedAgents, EmulatedConfig
    from tests.support.cluster import LocalCluster

    with LocalCluster(work / "emulated", n=3) as cluster:
        cluster.start_all()
        leader = cluster.leader(timeout=60)
        config = EmulatedConfig(masters=tuple(cluster.grpc_addresses()), count=1, task_duration=0.0,
                                hostname_prefix="cmp", resources="cpus:2;mem:4096;disk:10000", seed=1,
                                batch_messages=True)
        with EmulatedAgents(config) as emulated:
            emulated.wait_registered(timeout=60)
            meter = CpuMeter(_master_pids(cluster, leader))
            since = time.time()
            meter.start()
            emulated_rate = run_batch(cluster.grpc_addresses(), tasks, work / "batch-emulated.log", cpus=task_cpus)
            cpu = meter.stop(tasks)
        print(f"  1 emulated agent:                    {emulated_rate:6.1f} tasks/s (load {os.getloadavg()[0]:.1f})")
        print(f"    {cpu} (the emulated agent runs in this process, not counted)")
        print("    per-task latency of each stage:")
        for line in _stage_report(leader, None, since):
            print(line)
    interpreter = _real_agent_run(tasks, work, task_cpus, "interpreter") if interpreter_baseline else None
    single = _real_agent_run(tasks, work, task_cpus, "fork-server", batch=False) if single_baseline else None
    forked = _real_agent_run(tasks, work, task_cpus, "fork-server")
    results["emulated"].append(emulated_rate)
    if single:
        results["fork-server-single"].append(single)
    results["fork-server"].append(forked)
    if interpreter:
        results["interpreter"].append(interpreter)
    ratios = f"ratio to the emulated agent {forked / emulated_rate:.2f}"
    if interpreter:
        ratios += f", to fresh-interpreter supervisors {forked / interpreter:.2f}"
    if single:
        ratios += f", to single messages {forked / single:.2f}"
    print(f"  {tasks} tasks of `true` ({task_cpus:g} cpus each, {int(2 / task_cpus)} at a time): "
          f"fork server, batched {ratios}")


def bench_many_agents(count: int, seconds: float, work: Path) -> None:
    """`count` emulated agents registering and heartbeating every second against 3 masters: registration
    time, and the leader's CPU share and RSS while they heartbeat, against the same leader idle before."""
    import psutil

    from tessera.agent.emulated import EmulatedAgents, EmulatedConfig
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
    parser.add_argument("--real-task-cpus", type=float, default=0.1,
                        help="cpus of each task in the one-real-agent run (the agent has 2: 0.1 = 20 at a time)")
    parser.add_argument("--only-real", action="store_true", help="run only the one-real-agent section")
    parser.add_argument("--real-rounds", type=int, default=1,
                        help="alternate the one-real-agent runs (emulated, interpreter, fork server) this many times")
    parser.add_argument("--no-interpreter-baseline", action="store_true",
                        help="skip the one-real-agent run with fresh-interpreter supervisors")
    parser.add_argument("--no-single-baseline", action="store_true",
                        help="skip the one-real-agent run with the single-message protocol (--no-batch-messages)")
    args = parser.parse_args()
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print("machine:", machine())
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        work = Path(tmp)

        def real_agent() -> None:
            print(f"\n4. one real agent: {args.real_tasks} tasks of `true` via the batch runner")
            bench_real_agent(args.real_tasks, work, args.real_task_cpus,
                             interpreter_baseline=not args.no_interpreter_baseline, rounds=args.real_rounds,
                             single_baseline=not args.no_single_baseline)

        if args.only_real:
            real_agent()
            return 0
        print(f"\n1. launch of `true`, {args.launches} times, launch() -> exit observed")
        plain = bench_plain(args.launches)
        print(f"  plain subprocess.run:  p50 {pct(plain, 0.5) * 1000:7.1f} ms")
        for isolator in {detect_isolator("auto").name: detect_isolator("auto"), "rlimits": RlimitIsolator()}.values():
            for fork_server in (True, False):
                times = bench_launch(isolator, args.launches, work, fork_server)
                how = "fork server" if fork_server else "interpreter"
                print(f"  launcher ({isolator.name:10s}, {how:11s}): p50 {pct(times, 0.5) * 1000:7.1f} ms, "
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
                real_agent()
    return 0


if __name__ == "__main__":
    sys.exit(main())
