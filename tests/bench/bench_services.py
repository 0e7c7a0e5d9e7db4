"""Benchmark of long-running services (issue 18, item 7; not a test):

    python tests/bench/bench_services.py [--instances 500] [--agents 50] [--dns-samples 10] [--poll 0.5]
                                         [--health-delay 1] [--health-interval 5] [--quick]

On one machine: 3 `tessera master` processes (LocalCluster), `--agents` emulated agents in this process
(`tessera.agent.emulated`: real AgentLink, status updates and health checker; only the tasks and the
health probes are emulated, see its docstring), the service framework as its own process (`tessera
services`, the product path: apps reach it through `tessera service apply|scale|remove`, run as
processes too), and a `tessera dns` process following the cluster.

1. Baseline: an app of `--instances` instances without a health check: time from `tessera service apply`
   returning (the definition committed) to every instance TASK_RUNNING. Then it is removed.
2. The same app with a TCP health check (`--health-delay`, `--health-interval`): time to every instance
   running and healthy. Ratio 2/1: what health checking costs the whole path (the check's delay, one more
   status per instance through the agents, the masters' log and the framework).
3. A rolling update (a changed env) with minimumHealthCapacity 0.5 and maximumOverCapacity 0.2: time from
   the apply to every instance of the new version running and healthy and none of the old one left; the
   fewest ready instances at any point (from the event stream; must not go below half) and the most
   instances alive at once. Ratio 3/2.
4. DNS update latency: a small app `probe` scaled 1 -> 2 -> 1, `--dns-samples` times. For each change, from
   the commit of the status that makes the difference (the new instance's healthy TASK_RUNNING; the killed
   instance's first status that is not TASK_RUNNING), seen on an operator event stream (WatchEvents) of the
   leader, to the first answer of `tessera dns` (dnspython, UDP to 127.0.0.1, asked every 5 ms) that
   reflects it; median and p95. Beside it: one GetState of the cluster as the bench sees it (what the DNS
   server reads on each change).
5. Event-log entries per health change: over the run, the TaskStatusUpdated events of the health-checked
   apps that carry health, against the changes of health they record (one per change is the design: checks
   that find nothing new send nothing), with the checks the emulated agents ran, and all events by type.

Every time is measured by this process on one monotonic clock: the commit of an event is when the leader's
event stream delivered it here. The machine is shared (see docs/benchmarks.md): read the ratios first.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere in the repo

import dns.exception  # noqa: E402
import dns.message  # noqa: E402
import dns.query  # noqa: E402
import grpc  # noqa: E402

from tessera.v1 import operator_pb2, operator_pb2_grpc  # noqa: E402
from tests.bench.bench_agent import machine, pct  # noqa: E402

CLI = [sys.executable, "-m", "tessera.control_plane.cli.main"]


# ---- what the leader committed, as its event stream delivers it ------------------------------------------

@dataclass
class TaskView:
    state: str = ""
    healthy: bool | None = None
    kill_requested: bool = False
    ready_at: float | None = None  # monotonic time it last became ready
    left_running_at: float | None = None  # monotonic time of its first status that is not TASK_RUNNING after it ran


LIVE = {"TASK_STAGING", "TASK_STARTING", "TASK_RUNNING", "TASK_KILLING"}


@dataclass
class Follower:
    """Follows the leader's WatchEvents stream (TaskLaunched, TaskStatusUpdated, FrameworkStatePut) and keeps
    when each app definition was written, each task's state and health, when (this process's monotonic clock) each change arrived, and per app and version how many
    instances are alive (live), alive and not asked to be killed (kept), running, and ready (running and, for a
    health-checked app, healthy)."""

    address: str
    from_index: int
    health_checked: Callable[[str], bool]  # whether an app has a health check
    tasks: dict[str, TaskView] = field(default_factory=dict)
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (app, version, live|running|ready)
    health_statuses: Counter[str] = field(default_factory=Counter)  # per app: statuses carrying health
    health_changes: Counter[str] = field(default_factory=Counter)  # per app: changes of health they record
    status_events: Counter[str] = field(default_factory=Counter)  # per app: all TaskStatusUpdated
    # app -> (ready, alive, alive and not asked to be killed) after each event
    ready_trace: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)
    arrived: float = 0.0  # when the newest events arrived
    puts: list[tuple[str, float]] = field(default_factory=list)  # operators' writes of apps/<id>, when committed
    error: str = ""

    def start(self) -> None:
        self._channel = grpc.insecure_channel(self.address)
        stub = operator_pb2_grpc.OperatorStub(self._channel)
        self._stream = stub.WatchEvents(operator_pb2.WatchEventsRequest(
            from_index=self.from_index,
            filter=operator_pb2.EventFilter(types=["TaskLaunched", "TaskKillRequested", "TaskStatusUpdated", "FrameworkStatePut"])))
        threading.Thread(target=self._run, name="follower", daemon=True).start()

    def stop(self) -> None:
        self._stream.cancel()
        self._channel.close()

    def _run(self) -> None:
        try:
            for resp in self._stream:
                now = time.monotonic()
                with self.cond:
                    for e in resp.events:
                        self._apply(e, now)
                    self.arrived = now
                    self.cond.notify_all()
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.CANCELLED:
                self.error = f"event stream ended: {exc.code().name} {exc.details()}"
                with self.cond:
                    self.cond.notify_all()

    def _flags(self, app: str, view: TaskView) -> tuple[bool, bool, bool, bool]:
        running = view.state == "TASK_RUNNING"
        live = view.state in LIVE
        return (live, live and not view.kill_requested, running,
                running and (view.healthy is True or not self.health_checked(app)))

    def _apply(self, e: operator_pb2.EventRecord, now: float) -> None:
        payload = json.loads(e.payload_json or "{}")
        if e.type == "FrameworkStatePut":
            if str(payload.get("key", "")).startswith("apps/"):
                self.puts.append((payload["key"], now))
            return
        status = payload.get("status", {})
        task_id = e.task_id or status.get("task_id", "")
        app, _, rest = task_id.partition(".")
        version = rest.partition(".")[0]
        view = self.tasks.setdefault(task_id, TaskView())
        before = self._flags(app, view)
        if e.type == "TaskLaunched":
            view.state = view.state or "TASK_STAGING"
        elif e.type == "TaskKillRequested":
            view.kill_requested = True
        else:
            state, healthy = status.get("state", ""), status.get("healthy")
            self.status_events[app] += 1
            if healthy is not None:
                self.health_statuses[app] += 1
                if healthy != view.healthy:
                    self.health_changes[app] += 1
                view.healthy = healthy
            if view.state == "TASK_RUNNING" and state != "TASK_RUNNING" and view.left_running_at is None:
                view.left_running_at = now
            view.state = state
        after = self._flags(app, view)
        for what, was, now_is in zip(("live", "kept", "running", "ready"), before, after, strict=True):
            self.counts[(app, version, what)] += int(now_is) - int(was)
        if after[3] and not before[3]:
            view.ready_at = now
        self.ready_trace.setdefault(app, []).append(
            (self.count(app, "ready"), self.count(app, "live"), self.count(app, "kept")))

    def count(self, app: str, what: str, version: str | None = None, exclude: str | None = None) -> int:
        """Instances of `app` (of `version`, or of any but `exclude`) that are `what` (live, kept, running,
        ready)."""
        return sum(c for (a, v, w), c in self.counts.items()
                   if a == app and w == what and (version is None or v == version) and v != exclude)

    def apply(self, masters: list[str], app_id: str, doc: str, timeout: float) -> float:
        """`tessera service apply` the definition; the monotonic time its write was committed."""
        with self.cond:
            mark = len(self.puts)
        tessera(masters, "service", "apply", "-", stdin=doc)
        self.wait(lambda: any(k == f"apps/{app_id}" for k, _ in self.puts[mark:]), timeout, f"apps/{app_id} written")
        with self.cond:
            return next(t for k, t in self.puts[mark:] if k == f"apps/{app_id}")

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str,
             progress: Callable[[], str] | None = None) -> float:
        """Block until `predicate()` (called under the lock) holds; returns the monotonic time the events that
        made it hold arrived (now, if it held at once)."""
        deadline = time.monotonic() + timeout
        next_report = time.monotonic() + 15
        with self.cond:
            if predicate():
                return time.monotonic()
            while not predicate():
                if self.error:
                    raise RuntimeError(self.error)
                now = time.monotonic()
                if now >= deadline:
                    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}"
                                       + (f" ({progress()})" if progress else ""))
                if progress is not None and now >= next_report:
                    print(f"    ... {progress()}", flush=True)
                    next_report = now + 15
                self.cond.wait(min(1.0, deadline - now))
            return self.arrived


# ---- the product's commands ----------------------------------------------------------------------------

def tessera(masters: list[str], *args: str, stdin: str | None = None, timeout: float = 60) -> str:
    done = subprocess.run([*CLI, "--masters", ",".join(masters), *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"tessera {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def app_doc(app_id: str, instances: int, *, check: dict[str, float] | None, env: dict[str, str] | None = None,
            upgrade: tuple[float, float] = (0.5, 0.2)) -> str:
    doc: dict[str, Any] = {"id": app_id, "instances": instances, "cpus": 0.1, "mem": 32, "cmd": "sleep 100000",
                           "portDefinitions": [{"port": 0, "name": "http"}], "env": env or {},
                           "upgradeStrategy": {"minimumHealthCapacity": upgrade[0],
                                               "maximumOverCapacity": upgrade[1]}}
    if check is not None:
        doc["healthChecks"] = [{"protocol": "TCP", "portIndex": 0, "delaySeconds": check["delay"],
                                "intervalSeconds": check["interval"], "timeoutSeconds": min(1.0, check["interval"]),
                                "gracePeriodSeconds": check["grace"], "maxConsecutiveFailures": 3}]
    return json.dumps(doc)


def start_dns(masters: list[str], log: Path) -> tuple[subprocess.Popen[str], tuple[str, int]]:
    proc = subprocess.Popen([*CLI, "--masters", ",".join(masters), "dns", "--domain", "tessera"],
                            stdout=subprocess.PIPE, stderr=open(log, "ab"), text=True, start_new_session=True)
    line = proc.stdout.readline() if proc.stdout else ""
    found = re.match(r"dns: ([\d.]+):(\d+)", line)
    if not found:
        proc.kill()
        raise RuntimeError(f"tessera dns printed no address: {line!r}; see {log}")
    return proc, (found.group(1), int(found.group(2)))


def srv_targets(server: tuple[str, int], name: str) -> frozenset[tuple[str, int]]:
    answer = dns.query.udp(dns.message.make_query(name, "SRV"), server[0], port=server[1], timeout=1)
    return frozenset((str(r.target), int(r.port)) for rrset in answer.answer for r in rrset)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ---- the run -------------------------------------------------------------------------------------------

def run(args: argparse.Namespace, work: Path) -> None:
    from tessera.agent.emulated import EmulatedAgents, EmulatedConfig
    from tests.support.cluster import LocalCluster, spawn, wait_for

    check = {"delay": args.health_delay, "interval": args.health_interval, "grace": 10.0}
    with LocalCluster(work / "cluster", n=3) as cluster:
        cluster.start_all()
        leader = cluster.leader(timeout=60)
        masters = cluster.grpc_addresses()
        config = EmulatedConfig(masters=tuple(masters), count=args.agents, task_duration=None,
                                loopback_hostnames=True, batch_messages=True, seed=1,
                                resources="cpus:8;mem:8192;disk:10000;ports:[31000-31999]")
        with EmulatedAgents(config) as agents:
            agents.wait_registered(timeout=120)
            print(f"  {args.agents} emulated agents registered (cpus 8, mem 8192, 1,000 ports each)")
            services = spawn([*CLI, "services", "--masters", ",".join(masters), "--poll", str(args.poll)],
                             work / "services.log", {**os.environ, "PYTHONUNBUFFERED": "1"})
            dns_proc, dns_server = start_dns(masters, work / "dns.log")
            client = cluster.client()
            try:
                wait_for(lambda: tessera(masters, "service", "list") is not None, 60, interval=0.5,
                         what="`tessera services` registered")
                head = client.call(lambda s: s.ListEvents, operator_pb2.ListEventsRequest(limit=1, descending=True))
                first_index = int(head.last_index) + 1
                checked = {"web", "probe"}
                follower = Follower(leader.grpc, first_index, lambda app: app in checked)
                follower.start()
                print(f"  `tessera services` (poll {args.poll} s) and `tessera dns` at {dns_server[0]}:{dns_server[1]}")
                results = measure(args, masters, follower, dns_server, check)
                agent_stats = agents.stats()
                follower.stop()
                report_events(leader, first_index, follower, agent_stats, results)
                shown = json.loads(tessera(masters, "--json", "service", "list"))
                print("  `tessera service list` at the end: " + ", ".join(
                    f"{s['id']} wanted {s['wanted']} running {s['running']} healthy {s['healthy']} "
                    f"({s['deployment']})" for s in shown["services"]))
            finally:
                stop(dns_proc)
                services.kill()
                services.wait(10)
                client.close()
        errors = [line for line in (work / "services.log").read_text(errors="replace").splitlines()
                  if "WARNING" in line or "ERROR" in line or "failed" in line]
        if errors:
            print(f"  `tessera services` logged {len(errors)} warning(s); the first: {errors[0][:300]}")
            for kind, count in Counter(re.sub(r"[0-9a-f]{8,}|\d+", "N", line.split(": ", 1)[-1])[:100]
                                       for line in errors).most_common(5):
                print(f"    {count} x {kind}")


def measure(args: argparse.Namespace, masters: list[str], follower: Follower, dns_server: tuple[str, int],
            check: dict[str, float]) -> dict[str, float]:
    n = args.instances
    timeout = args.timeout
    results: dict[str, float] = {}
    f = follower

    def progress(app: str) -> Callable[[], str]:
        return lambda: (f"{app}: {f.count(app, 'live')} alive, {f.count(app, 'running')} running, "
                        f"{f.count(app, 'ready')} ready")

    rounds = args.rounds
    base_times: list[float] = []
    web_times: list[float] = []
    web_running: list[float] = []
    for r in range(rounds):
        # 1. baseline: no health check
        if r == 0:
            print(f"\n1+2. {n} instances without a health check (base), then with a TCP health check (web: delay "
                  f"{check['delay']:g} s, interval {check['interval']:g} s), {rounds} round(s); times from the "
                  "definition committed")
        start = f.apply(masters, "base", app_doc("base", n, check=None), timeout)
        done = f.wait(lambda: f.count("base", "running") >= n, timeout, "all base instances running", progress("base"))
        base_times.append(done - start)
        tessera(masters, "service", "remove", "base")
        f.wait(lambda: f.count("base", "live") == 0, timeout, "base removed", progress("base"))
        # 2. with a health check
        start = f.apply(masters, "web", app_doc("web", n, check=check), timeout)
        all_running = f.wait(lambda: f.count("web", "running") >= n, timeout, "all web instances running",
                             progress("web"))
        done = f.wait(lambda: f.count("web", "ready") >= n, timeout, "all web instances healthy", progress("web"))
        web_times.append(done - start)
        web_running.append(all_running - start)
        print(f"  round {r + 1}: base all running {base_times[-1]:.2f} s; web all running {web_running[-1]:.2f} s, "
              f"all healthy {web_times[-1]:.2f} s")
        if r < rounds - 1:
            tessera(masters, "service", "remove", "web")
            f.wait(lambda: f.count("web", "live") == 0, timeout, "web removed", progress("web"))
    results["base"], results["web"] = statistics.median(base_times), statistics.median(web_times)
    print(f"  median: {n} running without a check {results['base']:.2f} s ({n / results['base']:.0f} instances/s); "
          f"with the check all running {statistics.median(web_running):.2f} s, all running and healthy "
          f"{results['web']:.2f} s ({n / results['web']:.0f} instances/s)")
    print(f"  ratio healthy-with-checks / running-without (medians): {results['web'] / results['base']:.2f} "
          f"(the check's delay alone is {check['delay']:g} s of it)")

    # 3. rolling update
    print(f"\n3. rolling updates of the {n} (a changed env; minimumHealthCapacity 0.5, maximumOverCapacity 0.2), "
          f"{rounds} time(s)")
    floor, ceiling = math.ceil(0.5 * n), n + math.floor(0.2 * n)
    rolls: list[float] = []
    for r in range(rounds):
        with f.cond:
            old_version = next(t for t, v in f.tasks.items() if t.startswith("web.") and v.state == "TASK_RUNNING"
                               ).split(".")[1]
            trace_from = len(f.ready_trace.get("web", []))
        start = f.apply(masters, "web", app_doc("web", n, check=check, env={"RELEASE": str(r + 2)}), timeout)
        done = f.wait(lambda v=old_version: f.count("web", "ready", exclude=v) >= n  # type: ignore[misc]
                      and f.count("web", "live", version=v) == 0, timeout, "the rolling update",
                      lambda v=old_version: (f"{f.count('web', 'ready', exclude=v)} new ready, "  # type: ignore[misc]
                                             f"{f.count('web', 'live', version=v)} old alive"))
        rolls.append(done - start)
        with f.cond:
            during = f.ready_trace["web"][trace_from:]
        fewest = min(r for r, _, _ in during)
        most = max(live for _, live, _ in during)
        most_kept = max(kept for _, _, kept in during)
        print(f"  round {r + 1}: done in {rolls[-1]:.2f} s; fewest ready at any point {fewest} (minimum {floor}: "
              f"{'kept' if fewest >= floor else 'BROKEN'}); most alive and not asked to stop at once {most_kept} "
              f"(maximum {ceiling}: {'kept' if most_kept <= ceiling else 'BROKEN'}); most alive at once, those "
              f"being killed included, {most}")
    results["rolling"] = statistics.median(rolls)
    print(f"  median {results['rolling']:.2f} s ({n / results['rolling']:.0f} instances replaced/s); ratio rolling "
          f"update / first deployment with checks (medians): {results['rolling'] / results['web']:.2f}")

    # 4. DNS update latency
    print(f"\n4. DNS update latency: `probe` scaled 1 -> 2 -> 1, {args.dns_samples} times")
    f.apply(masters, "probe", app_doc("probe", 1, check=check), timeout)
    f.wait(lambda: f.count("probe", "ready") == 1, timeout, "one probe instance ready")
    name = "_probe._tcp.tessera"
    wait_for_dns(dns_server, name, lambda got: len(got) == 1, timeout)
    up: list[float] = []
    down: list[float] = []
    for _ in range(args.dns_samples):
        for wanted, samples in ((2, up), (1, down)):
            with f.cond:
                before = {t for t, v in f.tasks.items() if t.startswith("probe.") and v.state == "TASK_RUNNING"}
            # ask DNS from before the command runs: the change cannot be missed, however fast it is
            scale = subprocess.Popen([*CLI, "--masters", ",".join(masters), "service", "scale", "probe", str(wanted)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seen = wait_for_dns(dns_server, name, lambda got, w=wanted: len(got) == w, timeout)  # type: ignore[misc]
            if scale.wait(60) != 0:
                raise RuntimeError(f"tessera service scale probe {wanted}: exit {scale.returncode}")
            if wanted == 2:
                f.wait(lambda: f.count("probe", "ready") == 2, timeout, "the new probe instance ready")
                with f.cond:
                    committed = max(v.ready_at or 0.0 for t, v in f.tasks.items()
                                    if t.startswith("probe.") and t not in before)
            else:
                f.wait(lambda b=before: any(f.tasks[t].left_running_at is not None for t in b), timeout,  # type: ignore[misc]
                       "a probe instance stopping")
                with f.cond:
                    committed = min(f.tasks[t].left_running_at or math.inf for t in before)
            samples.append(seen - committed)
    every = up + down
    print(f"  scale-up (new instance's healthy status committed -> in DNS): median "
          f"{statistics.median(up) * 1000:.0f} ms, p95 {pct(up, 0.95) * 1000:.0f} ms")
    print(f"  kill (first non-RUNNING status committed -> gone from DNS):   median "
          f"{statistics.median(down) * 1000:.0f} ms, p95 {pct(down, 0.95) * 1000:.0f} ms")
    print(f"  all {len(every)} samples: median {statistics.median(every) * 1000:.0f} ms, p95 "
          f"{pct(every, 0.95) * 1000:.0f} ms, max {max(every) * 1000:.0f} ms")
    results["dns_median"] = statistics.median(every)
    state_reads = []
    with grpc.insecure_channel(masters[0]) as channel:
        stub = operator_pb2_grpc.OperatorStub(channel)
        for _ in range(5):
            t = time.monotonic()
            stub.GetState(operator_pb2.GetStateRequest(consistent=False), timeout=30)
            state_reads.append(time.monotonic() - t)
    print(f"  beside it: one GetState of this cluster ({n}+ tasks) read from this process: median "
          f"{statistics.median(state_reads) * 1000:.0f} ms (the DNS server reads one per change, polling every 0.1 s)")
    return results


def wait_for_dns(server: tuple[str, int], name: str, predicate: Callable[[frozenset[tuple[str, int]]], bool],
                 timeout: float) -> float:
    """Ask every 5 ms until the SRV answer satisfies `predicate`; the monotonic time of that answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate(srv_targets(server, name)):
                return time.monotonic()
        except dns.exception.Timeout:
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"DNS did not follow within {timeout} s")
        time.sleep(0.005)


def report_events(leader: Any, first_index: int, follower: Follower, agent_stats: Any,
                  results: dict[str, float]) -> None:
    print("\n5. event log during the run")
    with follower.cond:
        statuses = dict(follower.health_statuses)
        changes = dict(follower.health_changes)
        all_status = dict(follower.status_events)
    total_statuses = sum(statuses.get(a, 0) for a in ("web", "probe"))
    total_changes = sum(changes.get(a, 0) for a in ("web", "probe"))
    print(f"  health-checked apps: {total_changes} changes of health, {total_statuses} TaskStatusUpdated events "
          f"carrying health: {total_statuses / max(1, total_changes):.2f} entries per health change")
    print(f"  emulated health checks run: {agent_stats.health_checks}; health statuses the agents sent: "
          f"{agent_stats.health_changes} ({agent_stats.health_checks / max(1, agent_stats.health_changes):.1f} "
          "checks per status)")
    print("  TaskStatusUpdated per app: " + ", ".join(f"{a} {c}" for a, c in sorted(all_status.items())))
    events = leader.list_events(from_index=first_index, limit=200)  # pages under gRPC's 4 MiB: big state writes
    by_type = Counter(e.type for e in events)
    size = Counter[str]()
    for e in events:
        size[e.type] += len(e.payload_json)
    print(f"  all events: {len(events)}; by type: " + ", ".join(
        f"{t} {c} ({size[t] / 2**20:.1f} MiB)" if size[t] > 2**20 else f"{t} {c}" for t, c in by_type.most_common()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--dns-samples", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="times stages 1-3 are measured (medians printed)")
    parser.add_argument("--poll", type=float, default=0.5, help="`tessera services --poll` (its default)")
    parser.add_argument("--health-delay", type=float, default=1.0)
    parser.add_argument("--health-interval", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for each stage")
    parser.add_argument("--keep", type=Path, default=None,
                        help="a directory to keep the processes' logs and data in (default: a temporary one)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 20 instances on 4 agents, 1 round, 2 DNS samples")
    args = parser.parse_args()
    if args.quick:
        args.instances, args.agents, args.dns_samples, args.rounds, args.timeout = 20, 4, 2, 1, 180.0
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print("machine:", machine())
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        run(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-services-") as tmp:
            run(args, Path(tmp))
    print(f"\nload after the run: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
