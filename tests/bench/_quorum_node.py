"""One node of a benchmark quorum (a child process of bench_write_path.py; not a test).

--mode raw      plain pysyncobj with the settings of ARCHITECTURE.md: the baseline (a). The leader keeps
                `--in-flight` replicated calls of `--batch` small events each in flight.
--mode tessera  Tessera's own write path (b): MasterStateMachine + RaftReplicator + SqliteEventStore +
                Master. The leader runs `--writers` concurrent asyncio writers, each proposing one
                SetRoleWeight command at a time (decide, group commit, apply, event log): closed loop
                by default; with `--rate R` open loop, the writers together start R writes per second
                on a fixed schedule and latency counts from the scheduled start (no coordinated
                omission).
The leader writes `--out`.window and `--out`.end when its measured window starts and ends (so the parent can sample every
node's CPU time over it),
 and its figures as JSON to --out at the end; followers run until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import threading
import time
from pathlib import Path


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def run_raw(args: argparse.Namespace) -> None:
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class RawLog(SyncObj):
        def __init__(self, conf: SyncObjConf) -> None:
            super().__init__(args.self, args.peers, conf)
            self.count = 0

        @replicated
        def append(self, events: list[bytes]) -> int:
            self.count += len(events)
            return self.count

    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    conf = SyncObjConf(
        journalFile=str(data / "raw.journal"), fullDumpFile=str(data / "raw.dump"),
        appendEntriesUseBatch=False, raftMinTimeout=0.3, raftMaxTimeout=0.6, appendEntriesPeriod=0.05,
        connectionTimeout=3600.0, leaderFallbackTimeout=1.5, commandsWaitLeader=False,
        password=os.environ.get("TESSERA_RAFT_PASSWORD") or None,
    )
    node = RawLog(conf)
    deadline = time.monotonic() + 30
    while node._getLeader() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not node._isLeader():
        while True:
            time.sleep(1)
    time.sleep(0.5)
    # distinct events (identical ones would be pickled once and referenced 100 times)
    template = '{"type":"RoleWeightSet","role":"bench-%d","weight":2.0,"request_id":"req-%032d"}'
    counter = [0]

    def next_batch() -> list[bytes]:
        start = counter[0]
        counter[0] += args.batch
        return [(template % (i % 50, i)).encode() for i in range(start, start + args.batch)]
    sem = threading.BoundedSemaphore(args.in_flight)
    latencies: list[float] = []
    done = [0]
    failed = [0]
    lock = threading.Lock()

    def submit() -> None:
        t0 = time.perf_counter()

        def cb(result: object, err: int) -> None:
            with lock:
                if err == 0:
                    latencies.append(time.perf_counter() - t0)
                    done[0] += 1
                else:
                    failed[0] += 1
            sem.release()

        node.append(next_batch(), callback=cb)

    warm_end = time.monotonic() + args.warmup
    while time.monotonic() < warm_end:
        sem.acquire()
        submit()
    with lock:
        latencies.clear()
        done[0] = 0
    start = time.perf_counter()
    end = time.monotonic() + args.duration
    while time.monotonic() < end:
        sem.acquire()
        submit()
    elapsed = time.perf_counter() - start
    with lock:
        calls, lat = done[0], list(latencies)
    result = {
        "mode": "raw", "calls": calls, "events": calls * args.batch, "seconds": elapsed,
        "events_per_s": calls * args.batch / elapsed, "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000, "failed_calls": failed[0],
        "batch": args.batch, "in_flight": args.in_flight,
    }
    Path(args.out).write_text(json.dumps(result))
    while True:
        time.sleep(1)


def run_tessera(args: argparse.Namespace) -> None:
    from tessera.control_plane.core import commands as cmd
    from tessera.control_plane.eventlog import SqliteEventStore
    from tessera.control_plane.replication import RaftReplicator, ReplicationConfig
    from tessera.control_plane.runtime.gcpolicy import tune_gc
    from tessera.control_plane.runtime.master import Master, MasterIdentity
    from tessera.control_plane.runtime.statemachine import MasterStateMachine

    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    fsync = not args.no_fsync  # as `tessera master` (with and without --unsafe-no-fsync) builds them
    events = SqliteEventStore(data / "events.db", durable=fsync)
    sm = MasterStateMachine(events)
    replicator = RaftReplicator(ReplicationConfig(
        self_address=args.self, peers=tuple(args.peers), data_dir=data / "raft",
        password=os.environ.get("TESSERA_RAFT_PASSWORD") or None, fsync=fsync,
        apply_thread=not args.apply_on_tick_thread,  # the bench says which, whatever the default
    ), sm, before_dump=events.flush)
    master = Master(MasterIdentity(args.name, args.self, "127.0.0.1:0"), sm, replicator, events)
    master.start()
    deadline = time.monotonic() + 30
    while replicator.leader() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    tune_gc()  # as `tessera master` does once started
    if args.timeline:
        import _timeline  # beside this script

        _timeline.run_for_window(_timeline.install(replicator, sm), args.out, replicator.is_leader)
    if not master.wait_serving(5):
        while True:
            time.sleep(1)

    async def load() -> dict[str, object]:
        loop = asyncio.get_running_loop()
        # Completions arrive on the replication thread; hand them to the loop in batches (one wake-up
        # per burst rather than one per write), as an efficient async server would.
        completed: list[tuple[asyncio.Future[object], object]] = []
        lock = threading.Lock()

        def drain() -> None:
            with lock:
                items = completed[:]
                completed.clear()
            for waiter, value in items:
                if not waiter.done():
                    waiter.set_result(value)

        def on_done(waiter: asyncio.Future[object], fut: object) -> None:
            try:
                value = fut.result()  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 - delivered to the writer as a value
                value = exc
            with lock:
                first = not completed
                completed.append((waiter, value))
            if first:
                loop.call_soon_threadsafe(drain)

        latencies: list[float] = []
        counts = {"ok": 0, "err": 0}
        measuring = [False]
        stop = [False]

        interval = args.writers / args.rate if args.rate else 0.0
        rng = random.Random(7)

        async def writer(i: int) -> None:
            n = 0
            scheduled = loop.time() + rng.random() * interval
            while not stop[0]:
                if interval:
                    delay = scheduled - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    # latency counts from when the write was due, not from when the writer got to it
                    t0 = time.perf_counter() - max(0.0, loop.time() - scheduled)
                    scheduled += interval
                else:
                    t0 = time.perf_counter()
                waiter: asyncio.Future[object] = loop.create_future()
                fut = master.propose_async([cmd.SetRoleWeight(role=f"role-{i % 50}", weight=1.0 + (n % 7))])
                fut.add_done_callback(lambda f, w=waiter: on_done(w, f))
                result = await waiter
                ok = getattr(result, "outcome", "") == "applied"
                if measuring[0]:
                    if ok:
                        counts["ok"] += 1
                        latencies.append(time.perf_counter() - t0)
                    else:
                        counts["err"] += 1
                n += 1

        tasks = [asyncio.create_task(writer(i)) for i in range(args.writers)]
        await asyncio.sleep(args.warmup)
        measuring[0] = True
        Path(args.out + ".window").write_text("started")
        seq0 = sm.state.seq
        start = time.perf_counter()
        await asyncio.sleep(args.duration)
        elapsed = time.perf_counter() - start
        measuring[0] = False
        seq1 = sm.state.seq
        Path(args.out + ".end").write_text("ended")
        stop[0] = True
        await asyncio.gather(*tasks, return_exceptions=True)
        flushed = events.flush(timeout=30)
        return {
            "mode": "tessera", "writes": counts["ok"], "errors": counts["err"], "seconds": elapsed,
            "events_per_s": counts["ok"] / elapsed, "applied_events_per_s": (seq1 - seq0) / elapsed,
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "writers": args.writers, "offered_rate": args.rate, "event_log_flushed": flushed, "event_log_last_seq": events.last_seq(),
            "leader_cpu_s": sum(os.times()[:2]),
        }

    result = asyncio.run(load())
    Path(args.out).write_text(json.dumps(result))
    while True:
        time.sleep(1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["raw", "tessera"], required=True)
    p.add_argument("--name", default="b")
    p.add_argument("--self", required=True)
    p.add_argument("--peers", nargs="*", default=[])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--in-flight", type=int, default=200)
    p.add_argument("--writers", type=int, default=1000)
    p.add_argument("--no-fsync", action="store_true", help="tessera mode: as `tessera master --unsafe-no-fsync`")
    p.add_argument("--apply-on-tick-thread", action="store_true",
                   help="tessera mode: apply on pysyncobj's tick thread (ReplicationConfig.apply_thread=False)")
    p.add_argument("--timeline", action="store_true",
                   help="tessera mode: write <out>.timeline.json, where the tick thread and apply spent the window")
    p.add_argument("--rate", type=float, default=0.0, help="open loop: writes started per second (0: closed loop)")
    args = p.parse_args()
    (run_raw if args.mode == "raw" else run_tessera)(args)


if __name__ == "__main__":
    main()
