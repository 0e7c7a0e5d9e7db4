"""Benchmark of the web UI's HTTP API (not a test): time to first byte of every page and API call, with
10,000 tasks in the state and 1,000,000 events in the log, against a baseline (an empty cluster) measured
in the same run.

    python tests/bench/bench_web.py [--tasks 10000] [--events 1000000] [--requests 20] [--quick]

Set-up, per cluster: one in-process master (`tests.support.inprocess.InProcessMaster`: the real master,
gRPC servers and state machine over the in-memory Raft twin) with a SQLite event log (`events.db`, as a
master keeps it), scripted agents and a scripted framework over gRPC, and the web server of
`control_plane/web/` on 127.0.0.1. The tasks are launched through the real write path: Accepts of
`--per-accept` tasks each; the scripted agents report the tasks they are sent one by one
STARTING then RUNNING (a batch of RunTasks they leave STAGING). The log is then
filled up to `--events` with synthetic event rows appended to the same events.db after the real ones
(`EventStore.append`): writing a million events through Raft would take this machine minutes and measure
the write path, not the reads. Only reads run while the bench measures; the history points asked for
(`/api/v1/state?at`, `/api/v1/diff`) are inside the real part of the log, whose events replay.

History rows: "asked again" repeats one point (the master keeps the answer written out); "new points"
asks a point not asked before on every request, as a time-travel slider does (25 events on or back from
the last, a diff's `to` moving on, a diff whose two ends both move, a point given as a time `@unix`, the
last real points where all the tasks live), and "far points" jumps around the whole real part (a cold
start from a stored snapshot or a checkpoint each time). The loaded cluster's line also gives the
master's resident memory after the requests and the state snapshots its log holds (count, total size).
`--quick` is a smoke run (500 tasks, 20,000 events, 5 requests a row). Before measuring, the process's
cyclic garbage collector is set as `tessera master` sets it once started (`runtime.gcpolicy.tune_gc`);
`--default-gc` keeps CPython's defaults (then every rebuild of a past state also walks the states the
master keeps: about three times the CPU of a decode).

Time to first byte: from sending the request to the response's status line and headers (http.client's
`getresponse()`), one connection per request; the median and p95 of `--requests` requests, and the time
to the whole body. The target of issue 19 is < 200 ms for every page and call.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere in the repo

import grpc  # noqa: E402

from tessera.control_plane.codec import resources_to_proto  # noqa: E402
from tessera.control_plane.core.limits import MasterLimits  # noqa: E402
from tessera.control_plane.core.resources import Resources  # noqa: E402
from tessera.control_plane.eventlog import EventRecord, SqliteEventStore  # noqa: E402
from tessera.control_plane.runtime.gcpolicy import tune_gc  # noqa: E402
from tessera.control_plane.web.server import WebServer  # noqa: E402
from tessera.v1 import common_pb2, scheduler_pb2  # noqa: E402
from tests.support.cluster import wait_for  # noqa: E402
from tests.support.inprocess import FAST, InProcessMaster  # noqa: E402
from tests.support.scripted import ScriptedAgent, ScriptedFramework  # noqa: E402
from tests.support.web import static_dir  # noqa: E402

TARGET_MS = 200.0


def launch_many(fw: ScriptedFramework, agents: list[ScriptedAgent], n: int, per_accept: int) -> None:
    """`n` tasks through Accepts of at most `per_accept` tasks each."""
    launched = 0
    while launched < n:
        offer = wait_for(lambda: next(iter(list(fw.offers.values())), None), 900, what="an offer")
        with fw.lock:
            fw.offers.pop(offer.offer_id, None)
        have = {r.name: r.scalar for r in offer.resources}
        count = min(per_accept, n - launched, int(have.get("cpus", 0) / 0.01 + 1e-6), int(have.get("mem", 0)))
        if count <= 0:
            continue
        tasks = []
        for i in range(launched, launched + count):
            task = common_pb2.TaskInfo(task_id=f"task-{i:05d}", name=f"job-{i % 50}", agent_id=offer.agent_id,
                                       command=common_pb2.CommandInfo(shell=True, value="sleep 3600"))
            resources_to_proto(Resources.parse("cpus:0.01;mem:1"), task.resources)
            tasks.append(task)
        try:
            fw.stub.Accept(scheduler_pb2.AcceptRequest(header=fw.header(), offer_ids=[offer.offer_id], operations=[
                scheduler_pb2.Operation(type=scheduler_pb2.Operation.LAUNCH, tasks=tasks)]), timeout=60)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.FAILED_PRECONDITION:  # a stale offer: take the next one
                raise
            print(f"  refused: {err.details()}", file=sys.stderr, flush=True)
            continue
        launched += count
        if launched % 1000 < count:
            print(f"  launched {launched}", file=sys.stderr, flush=True)


def fill(store: SqliteEventStore, total: int) -> None:
    """Synthetic event rows after the real ones, up to `total` (shaped like bench_eventlog's)."""
    types = ("TaskStatusUpdated", "OffersIssued", "TaskStatusAcknowledged", "OfferDeclined")
    start = store.last_seq() + 1
    # times after the real events' (a log's times never go back), all in the past
    last = store.list(from_seq=start - 1, limit=1) if start > 1 else []
    base = float(last[0].time) if last else time.time() - 60
    step = max(0.0, min(1e-3, (time.time() - 1 - base) / max(1, total - start + 1)))
    batch: list[EventRecord] = []
    for seq in range(start, total + 1):
        batch.append(EventRecord(
            seq=seq, raft_index=10**6 + seq // 8, position=seq % 8, type=types[seq % len(types)],
            time=base + (seq - start + 1) * step, term=1, request_id=f"req-{seq // 8:08d}", framework_id="fw-filler",
            agent_id=f"agent-{seq % 200:04d}", task_id=f"filler-{seq // 3:09d}", offer_id="", trace_id="",
            span_id="", payload=json.dumps({"seq": seq, "status": {"state": "TASK_RUNNING"}})))
        if len(batch) == 5000:
            store.append(batch)
            batch = []
    if batch:
        store.append(batch)
    if not store.flush(timeout=1200.0):
        raise RuntimeError("the event log did not flush")


def ttfb(url: str, path: str) -> tuple[float, float, int]:
    """(ms to the status line and headers, ms to the whole body, status)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=120)
    try:
        start = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        first = time.perf_counter()
        if path.startswith("/api/v1/events/stream"):
            resp.fp.readline()  # type: ignore[union-attr]  # the first event: a stream has no end
        else:
            resp.read()
        return (first - start) * 1000, (time.perf_counter() - start) * 1000, resp.status
    finally:
        conn.close()


Target = str | Callable[[int], str]  # a path, or the path of request i (0 is the warm-up): a new point each time


def measure(url: str, paths: dict[str, Target], requests: int) -> dict[str, tuple[float, float, float, int]]:
    out = {}
    for name, path in paths.items():
        print(f"  {name}", file=sys.stderr, flush=True)
        at = path if callable(path) else (lambda i, p=path: p)
        ttfb(url, at(0))  # warm: the first request of a path pays imports and caches
        samples = [ttfb(url, at(i)) for i in range(1, requests + 1)]
        firsts = sorted(s[0] for s in samples)
        out[name] = (statistics.median(firsts), firsts[int(0.95 * (len(firsts) - 1))],
                     statistics.median(s[1] for s in samples), samples[-1][2])
    return out


def cluster(root: Path, tasks: int, events: int, per_accept: int, requests: int,
            gc_as_master: bool = True, delta_every: int = 0) -> tuple[dict, dict]:  # type: ignore[type-arg]
    root.mkdir(parents=True, exist_ok=True)
    store = SqliteEventStore(root / "events.db")
    # one principal (none: an insecure master) holds every task: lift its limit of 10,000 tracked tasks;
    # agents and the framework are given a minute to answer (FAST's 1 s loses agents on a loaded machine,
    # and their tasks with them: the set-up then waits for offers that never come)
    node = InProcessMaster(events=store, settings=dataclasses.replace(
        FAST, offer_timeout=3600.0, agent_timeout=60.0, reregistration_timeout=60.0,
        framework_reconnect_timeout=60.0), limits=MasterLimits(tasks_per_principal=1_000_000),
        delta_every=delta_every)
    with node:
        n_agents = max(1, tasks // 2000)
        agents = [ScriptedAgent(node.channel, hostname=f"node-{i}", resources="cpus:64;mem:65536",
                                final_state=common_pb2.TASK_RUNNING).start()
                  for i in range(n_agents)]
        for a in agents:
            assert a.registered.wait(30)
        fw = ScriptedFramework(node.channel, name="bench").start()
        assert fw.subscribed.wait(30)
        print(f"cluster: {tasks} tasks, {events} events", file=sys.stderr, flush=True)
        started = time.perf_counter()
        if tasks:
            launch_many(fw, agents, tasks, per_accept)
            wait_for(lambda: node.master.read_state(lambda s: len(s.tasks) + len(s.completed_tasks)) >= tasks, 600,
                     interval=0.5, what="every task in the state")
        store.flush(timeout=600.0)  # the store writes in the background: what it holds now is the real part
        real_last = store.last_seq()
        launched_s = time.perf_counter() - started
        writer = node.sm.deltas
        deltas = ""
        if writer is not None:  # the delta writer follows the log (its duty): let it reach the real part's end
            waited = time.perf_counter()
            writer.wait_done(real_last, 1800.0)
            deltas = (f"{writer.deltas} deltas + {writer.fulls} full, {writer.bytes_written / 1e6:.1f} MB, "
                      f"{writer.cpu_s:.1f} s CPU ({writer.encode_s:.1f} s encoding) for {writer.replayed} events, "
                      f"waited {time.perf_counter() - waited:.0f} s after the launch")
        started = time.perf_counter()
        if events > real_last:
            fill(store, events)
        filled_s = time.perf_counter() - started
        if gc_as_master:  # as `tessera master` does once started (runtime/process.py, runtime/gcpolicy.py)
            tune_gc()
        static = static_dir()
        server = WebServer(node.server.operator, "127.0.0.1", 0, insecure=True, ssl_context=None,
                           static_dir=static).start()
        try:
            ref = quote(f"{fw.framework_id}/task-{tasks // 2:05d}", safe="") if tasks else "none"
            mid = max(1, real_last // 2)
            # the times of real events spread over the real part of the log (a time picks the last event at
            # or before it: the entry holding that event)
            times = [float(found[0].time) for found in (store.list(from_seq=max(1, real_last * k // 41), limit=1)
                                                        for k in range(1, 41)) if found]

            def near(n: int) -> int:  # a point inside the real part of the log
                return max(1, min(real_last, n))

            paths = {
                "page /": "/", "page /tasks": "/tasks", "page /tasks/{ref}": f"/tasks/{ref}",
                "static app.js": "/static/app.js",
                "cluster": "/api/v1/cluster", "agents": "/api/v1/agents", "frameworks": "/api/v1/frameworks",
                "tasks (newest 100)": "/api/v1/tasks",
                "tasks sort=id offset=5000": "/api/v1/tasks?sort=id&offset=5000",
                "tasks state=running q=job-7": "/api/v1/tasks?state=running&q=job-7",
                "task detail": f"/api/v1/tasks/{ref}", "task timeline": f"/api/v1/tasks/{ref}/timeline",
                "events (newest 100)": "/api/v1/events",
                "events after=middle": f"/api/v1/events?after={max(0, store.last_seq() // 2)}",
                "events type+task filter": f"/api/v1/events?after=0&type=TaskLaunched&task=task-{tasks // 2:05d}",
                "events stream from=last-10": f"/api/v1/events/stream?from={max(1, store.last_seq() - 10)}",
                f"state at={mid} (asked again)": f"/api/v1/state?at={mid}",
                f"diff from=1 to={mid} (asked again)": f"/api/v1/diff?from=1&to={mid}",
                # a slider: every request a point not asked before, 25 events on (or back) from the last
                "state at=new points, +25 each": lambda i: f"/api/v1/state?at={near(mid + 25 * i)}",
                "state at=new points, -25 each": lambda i: f"/api/v1/state?at={near(mid - 25 * i)}",
                "diff from=mid-1000 to=new points":
                    lambda i: f"/api/v1/diff?from={near(mid - 1000)}&to={near(mid + 7 + 25 * i)}",
                "diff from=new points to=new points":
                    lambda i: f"/api/v1/diff?from={near(mid // 2 - 31 * i)}&to={near(mid + mid // 2 + 37 * i)}",
                "state at=@time, new points": lambda i: f"/api/v1/state?at=@{times[(7 * i) % len(times)]:.6f}",
                # (not the last real entry: the synthetic rows after it would glue onto it)
                "state at=near the end (all tasks)": lambda i: f"/api/v1/state?at={near(real_last - 200 - 3 * i)}",
                "state at=far points (cold)": lambda i: f"/api/v1/state?at={near((real_last * (i % 7 + 1)) // 9 + i)}",
                "services": "/api/v1/services",
            }
            results = measure(server.url, paths, requests)
            rss_mb = _rss_mb()
        finally:
            server.stop()
            fw.close()
            for a in agents:
                a.close()
        info = {"tasks": tasks, "events": store.last_seq(), "real events": real_last,
                "set-up launch s": round(launched_s, 1), "set-up fill s": round(filled_s, 1),
                "db MB": round((root / "events.db").stat().st_size / 1e6, 1), "master RSS MB": rss_mb,
                "snapshots": _snapshots(store), **({"delta writer": deltas} if deltas else {})}
        return info, results


def _rss_mb() -> float:
    """The resident memory of this process now (the in-process master, its web server and the bench)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _snapshots(store: SqliteEventStore) -> str:
    """How many state snapshots the log holds and their total size."""
    seqs, size, at = [], 0, store.last_seq()
    while (snap := store.nearest_snapshot(at)) is not None:
        seqs.append(snap[0])
        size += len(snap[1])
        at = snap[0] - 1
    return f"{len(seqs)} ({size / 1e6:.1f} MB)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--per-accept", type=int, default=500)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--default-gc", action="store_true",
                        help="keep CPython's collector settings (a master process runs tune_gc once started)")
    parser.add_argument("--delta-every", type=int, default=0,
                        help="the master writes delta snapshots of its history every N events (0: none, as "
                             "`tessera master` now)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 500 tasks, 20,000 events, 5 requests each")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.events, args.requests = 500, 20_000, 5
    print(f"$ python tests/bench/bench_web.py --tasks {args.tasks} --events {args.events} --requests {args.requests}"
          f"{' --default-gc' if args.default_gc else ''}{f' --delta-every {args.delta_every}' if args.delta_every else ''}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        base_info, base = cluster(Path(tmp) / "base", 0, 0, args.per_accept, args.requests, not args.default_gc)
        big_info, big = cluster(Path(tmp) / "big", args.tasks, args.events, args.per_accept, args.requests,
                                not args.default_gc, args.delta_every)
    print(f"baseline: {base_info}\nloaded:   {big_info}")
    print(f"{'request':34} {'base p50':>9} {'loaded p50':>11} {'loaded p95':>11} {'body p50':>9} {'status':>6}  "
          f"< {TARGET_MS:g} ms")
    worst = 0.0
    for name, (p50, p95, body, status) in big.items():
        key = name if name in base else next((k for k in base if k.split()[0] == name.split()[0]), None)
        b = base.get(key, (float("nan"),))[0] if key else float("nan")
        worst = max(worst, p95)
        print(f"{name:34} {b:8.1f}  {p50:10.1f}  {p95:10.1f}  {body:8.1f}  {status:>6}  "
              f"{'yes' if p95 < TARGET_MS else 'NO'}")
    print(f"worst p95 time to first byte with the load: {worst:.1f} ms")


if __name__ == "__main__":
    main()
