"""Benchmark of the replicated write path (not part of the test run).

    python tests/bench/bench_write_path.py [--duration 10] [--writers 1000] [--trials 10] [--rates 5000,10000]
                                           [--fsync on,off] [--apply-thread on,off] [--timeline]

In one run, on 3-process loopback quorums:
  (a) raw pysyncobj baseline: 100 small events per replicated call, 200 calls in flight, from the leader;
  (b) Tessera's write path (decide, group commit, apply, event log) with 1,000 concurrent writers, closed
      loop (each writer proposes its next write when the last one is answered: the saturation rate), with
      the CPU time each of the three masters spent per event over the measured window;
  (b') the same 1,000 writers open loop at each of `--rates` writes/s: commit latency at a given load;
  (c) failover: kill -9 of the leader of `tessera master` processes to the first committed write.
(b) and (b') run once per `--fsync` setting, in the order given: `on` is the default master (the journal
synced before acknowledging, events.db synchronous=FULL), `off` is `tessera master --unsafe-no-fsync`;
and within each, once per `--apply-thread` setting: `off` (the default master) applies committed entries on
pysyncobj's tick thread, `on` on the replicator's apply thread (`ReplicationConfig.apply_thread=True`).
`--timeline` prints, for each master, where its Raft tick thread and the apply spent the window
(`_timeline.py`).
Prints events/s, commit latency p50/p99, the ratio b/a, and failover min/median/max, with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import psutil  # noqa: E402

from tessera.control_plane.cli.up import free_ports  # noqa: E402
from tessera.v1 import operator_pb2, operator_pb2_grpc  # noqa: E402
from tests.bench import _timeline  # noqa: E402
from tests.support.cluster import LocalCluster  # noqa: E402

NODE = Path(__file__).with_name("_quorum_node.py")


def machine() -> str:
    return (f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}")


def run_quorum(mode: str, root: Path, args: argparse.Namespace, rate: float = 0.0, fsync: bool = True,
               apply_thread: bool = True) -> dict[str, Any]:
    """Start a 3-node quorum of `_quorum_node.py`; return the leader's figures, plus, in tessera mode,
    `cpu_ms_per_1k_events`: each node's CPU time over the measured window per 1,000 events (leader first)."""
    tag = ((f"{mode}-{int(rate)}" if rate else mode) + ("" if fsync else "-nofsync")
           + ("" if apply_thread else "-tickapply"))
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    outs = [root / f"{tag}-{i}.json" for i in range(3)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, addr in enumerate(addrs):
            cmd = [sys.executable, str(NODE), "--mode", mode, "--name", f"b{i}", "--self", addr,
                   "--peers", *[a for a in addrs if a != addr], "--data-dir", str(root / f"{tag}-{i}"),
                   "--out", str(outs[i]), "--duration", str(args.duration), "--warmup", str(args.warmup),
                   "--writers", str(args.writers), "--rate", str(rate), *([] if fsync else ["--no-fsync"]),
                   *([] if apply_thread or mode != "tessera" else ["--apply-on-tick-thread"]),
                   *(["--timeline"] if args.timeline and mode == "tessera" else [])]
            log = open(root / f"{tag}-{i}.log", "wb")
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                          start_new_session=True,
                                          env={**os.environ, "TESSERA_RAFT_PASSWORD": "bench-secret"}))
        limit = 60 + args.duration + args.warmup
        deadline = time.monotonic() + limit
        done = None
        cpu_start: list[float] | None = None
        cpu_end: list[float] | None = None
        while done is None:
            if cpu_start is None and any(Path(str(o) + ".window").exists() for o in outs):
                cpu_start = [cpu_seconds(p) for p in procs]
            if cpu_end is None and any(Path(str(o) + ".end").exists() for o in outs):
                cpu_end = [cpu_seconds(p) for p in procs]
            done = next((o for o in outs if o.exists() and o.stat().st_size), None)
            if done is None and (time.monotonic() > deadline or all(p.poll() is not None for p in procs)):
                logs = "\n".join((root / f"{tag}-{i}.log").read_text()[-2000:] for i in range(3))
                raise RuntimeError(f"no {mode} result (every node exited, or {limit:.0f} s passed):\n{logs}")
            time.sleep(0.02)
        result: dict[str, Any] = json.loads(done.read_text())
        if args.timeline and mode == "tessera":
            time.sleep(0.5)  # the followers write theirs on seeing the leader's .end
            result["timelines"] = [json.loads(Path(str(o) + ".timeline.json").read_text())
                                   for o in outs if Path(str(o) + ".timeline.json").exists()]
        if mode == "tessera" and cpu_start is not None and cpu_end is not None:
            leader = outs.index(done)
            order = [leader] + [i for i in range(3) if i != leader]
            events = float(result["applied_events_per_s"]) * float(result["seconds"])
            result["cpu_ms_per_1k_events"] = [(cpu_end[i] - cpu_start[i]) * 1e6 / max(events, 1.0) for i in order]
        return result
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


def cpu_seconds(proc: subprocess.Popen[bytes]) -> float:
    t = psutil.Process(proc.pid).cpu_times()
    return float(t.user + t.system)


def failover_trial(root: Path) -> float:
    """Seconds from kill -9 of the leader to the first write committed by the new leader."""
    with LocalCluster(root, n=3) as cluster:
        cluster.start_all()
        leader = cluster.leader(timeout=30)
        client = cluster.client()
        for i in range(5):
            client.call(lambda s: s.SetWeight, operator_pb2.SetWeightRequest(role="warm", weight=1.0 + i))
        client.close()
        survivors = [m for m in cluster.masters if m is not leader]
        time.sleep(4.0)  # a leader dies in steady state, not right after its election
        first_ok: list[float] = []
        stop = threading.Event()
        t_kill = [0.0]

        def probe(address: str) -> None:
            with grpc.insecure_channel(address) as ch:
                stub = operator_pb2_grpc.OperatorStub(ch)
                i = 0
                while not stop.is_set():
                    t0 = time.monotonic()
                    try:
                        stub.SetWeight(operator_pb2.SetWeightRequest(role="probe", weight=1.0 + i % 5,
                                                                     request_id=f"{address}-{i}"), timeout=0.5)
                        if t_kill[0] and t0 >= t_kill[0]:
                            first_ok.append(time.monotonic())
                            stop.set()
                    except grpc.RpcError:
                        time.sleep(0.005)
                    i += 1

        threads = [threading.Thread(target=probe, args=(m.grpc,), daemon=True) for m in survivors]
        t_kill[0] = time.monotonic()
        os.kill(leader.proc.pid, signal.SIGKILL)
        for t in threads:
            t.start()
        stop.wait(30)
        stop.set()
        for t in threads:
            t.join(timeout=5)
        if not first_ok:
            raise RuntimeError("no write committed within 30 s of the kill:\n" + cluster.logs())
        return min(first_ok) - t_kill[0]


def run_write_path(root: Path, args: argparse.Namespace, raw: dict[str, Any], setting: str, applying: str) -> None:
    """(b) and (b') with fsync `setting` and the apply thread `applying` (each "on" or "off")."""
    fsync = setting == "on"
    apply_thread = applying == "on"
    what = f"fsync {setting}, apply thread {applying}"
    tes = run_quorum("tessera", root, args, fsync=fsync, apply_thread=apply_thread)
    print(f"(b) tessera write path, {what}, 3 masters, {tes['writers']} writers: "
          f"{tes['events_per_s']:,.0f} events/s (applied {tes['applied_events_per_s']:,.0f}/s), commit "
          f"latency p50 {tes['p50_ms']:.1f} ms p99 {tes['p99_ms']:.1f} ms, errors {tes['errors']}, "
          f"event log flushed {tes['event_log_flushed']} (last index {tes['event_log_last_seq']}), "
          f"load average {Path('/proc/loadavg').read_text().split()[0]}")
    print(f"    ratio b/a = {float(tes['events_per_s']) / float(raw['events_per_s']):.3f}")
    cpu = tes.get("cpu_ms_per_1k_events")
    if cpu:
        total = sum(cpu)
        print(f"    CPU per 1,000 events: leader {cpu[0]:.0f} ms, followers {cpu[1]:.0f} ms and "
              f"{cpu[2]:.0f} ms; the three together need {total:.0f} ms, so {os.cpu_count()} cores fully "
              f"used would carry at most {os.cpu_count() * 1e6 / total:,.0f} events/s; one core for the "
              f"leader alone {1e6 / cpu[0]:,.0f} events/s")
    for timeline in sorted(tes.get("timelines", []), key=lambda t: not t.get("leader")):
        print("    " + _timeline.describe(timeline))
    for rate in [float(r) for r in args.rates.split(",") if r.strip()]:
        ol = run_quorum("tessera", root, args, rate=rate, fsync=fsync, apply_thread=apply_thread)
        print(f"(b') open loop, {what}, {ol['writers']} writers offering {rate:,.0f} writes/s: "
              f"achieved {ol['events_per_s']:,.0f} events/s, commit latency p50 {ol['p50_ms']:.1f} ms "
              f"p99 {ol['p99_ms']:.1f} ms, errors {ol['errors']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--writers", type=int, default=1000)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--rates", default="5000,10000", help="open-loop offered rates for (b'), comma-separated")
    p.add_argument("--fsync", default="on,off", help="(b) and (b') with fsync on, off or both (in this order)")
    p.add_argument("--apply-thread", default="off",
                   help="(b) and (b') with the apply thread on, off or both (in this order)")
    p.add_argument("--timeline", action="store_true",
                   help="(b): print where each master's Raft tick thread and apply spent the window")
    p.add_argument("--skip", choices=["throughput", "failover"], default=None)
    args = p.parse_args()
    print(f"command: python tests/bench/bench_write_path.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"machine: {machine()}; load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        root = Path(tmp)
        if args.skip != "throughput":
            raw = run_quorum("raw", root, args)
            print(f"(a) raw pysyncobj, 3 nodes, batch {raw['batch']} x {raw['in_flight']} in flight: "
                  f"{raw['events_per_s']:,.0f} events/s, call latency p50 {raw['p50_ms']:.1f} ms "
                  f"p99 {raw['p99_ms']:.1f} ms")
            for setting in [f.strip() for f in args.fsync.split(",") if f.strip()]:
                for applying in [f.strip() for f in args.apply_thread.split(",") if f.strip()]:
                    run_write_path(root, args, raw, setting, applying)
        if args.skip != "failover":
            times = []
            for i in range(args.trials):
                trial_root = root / f"failover-{i}"
                trial_root.mkdir()
                times.append(failover_trial(trial_root))
                print(f"    failover trial {i + 1}: {times[-1]:.3f} s", flush=True)
            print(f"(c) failover, kill -9 leader -> first committed write, {len(times)} trials: "
                  f"min {min(times):.3f} s, median {statistics.median(times):.3f} s, max {max(times):.3f} s")


if __name__ == "__main__":
    main()
