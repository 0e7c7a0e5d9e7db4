"""Group-commit throughput of ``RaftReplicator`` on a loopback quorum of real processes.

    python -m tessera.control_plane.replication.bench --nodes 3 --submitters 1000 --seconds 10

The driver starts one process per node (127.0.0.1, free ports, a temporary data directory), waits
for the leader's result file, then stops every node by PID. The leader's process runs the load:

* ``--mode threads``: N threads, each ``submit(entry).result()`` in a loop (a thread-per-request
  server such as a gRPC thread pool);
* ``--mode window``: one thread keeps N submissions outstanding with completion callbacks (an
  asyncio-style server).

It prints one JSON line with entries/s, latency percentiles (threads mode), batches and failures.
A measuring tool, not a test: nothing here asserts on timing. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .config import GroupCommitConfig, ReplicationConfig
from .errors import ReplicationError
from .raft import RaftReplicator


class _CountingStateMachine:
    def __init__(self) -> None:
        self.count = 0
        self.batches = 0

    def apply_entries(self, raft_index: int, entries: list[bytes]) -> list[object]:
        self.batches += 1
        start = self.count
        self.count += len(entries)
        return list(range(start + 1, self.count + 1))

    def snapshot(self) -> object:
        return (self.count, self.batches)

    def restore(self, snap: object) -> None:
        self.count, self.batches = snap  # type: ignore[misc]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_threads(node: RaftReplicator, n: int, seconds: float, payload: bytes) -> dict[str, object]:
    stop_at = time.monotonic() + seconds
    latencies: list[list[float]] = [[] for _ in range(n)]
    errors: dict[str, int] = {}
    lock = threading.Lock()

    def worker(i: int) -> None:
        mine = latencies[i]
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                node.submit(payload).result(timeout=30)
            except ReplicationError as exc:
                with lock:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            mine.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    elapsed = time.monotonic() - t0
    flat = sorted(x for lst in latencies for x in lst)
    done = len(flat)

    def pct(p: float) -> float:
        return round(flat[min(done - 1, int(p * done))] * 1000, 2) if done else 0.0

    return {"acked": done, "elapsed_s": round(elapsed, 2), "entries_per_s": round(done / elapsed),
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "errors": errors}


def _run_window(node: RaftReplicator, window: int, seconds: float, payload: bytes) -> dict[str, object]:
    slots = threading.Semaphore(window)
    counts = {"ok": 0, "err": 0}
    lock = threading.Lock()

    def done(fut: object) -> None:
        ok = fut.exception() is None  # type: ignore[attr-defined]
        with lock:
            counts["ok" if ok else "err"] += 1
        slots.release()

    t0 = time.monotonic()
    stop_at = t0 + seconds
    while time.monotonic() < stop_at:
        if not slots.acquire(timeout=1.0):
            continue
        node.submit(payload).add_done_callback(done)
    for _ in range(window):  # drain: wait for every outstanding submission (bounded)
        slots.acquire(timeout=30)
    elapsed = time.monotonic() - t0
    return {"acked": counts["ok"], "elapsed_s": round(elapsed, 2),
            "entries_per_s": round(counts["ok"] / elapsed), "errors": {"any": counts["err"]}}


def _node_main(args: argparse.Namespace) -> int:
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    addresses = args.addresses.split(",")
    me = addresses[args.node]
    group = GroupCommitConfig(linger_s=args.linger_ms / 1000, max_batches_in_flight=args.in_flight)
    cfg = ReplicationConfig(self_address=me, peers=tuple(a for a in addresses if a != me),
                            data_dir=Path(args.data_dir) / f"node{args.node}",
                            password=os.environ.get("TESSERA_RAFT_PASSWORD") or None,
                            group_commit=group)
    sm = _CountingStateMachine()
    node = RaftReplicator(cfg, sm)
    node.start()
    deadline = time.monotonic() + args.seconds + 90  # a node never outlives its driver by much
    try:
        while node.leader() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not node.is_leader():
            while time.monotonic() < deadline:
                time.sleep(0.2)
            return 0
        payload = b"e" * args.entry_bytes
        node.submit(payload).result(timeout=10)
        if args.mode == "threads":
            result = _run_threads(node, args.submitters, args.seconds, payload)
        else:
            result = _run_window(node, args.submitters, args.seconds, payload)
        result.update(mode=args.mode, submitters=args.submitters, nodes=len(addresses),
                      entry_bytes=args.entry_bytes, password=args.encrypt,
                      linger_ms=args.linger_ms, in_flight=args.in_flight,
                      switch_interval=sys.getswitchinterval(),
                      batches=sm.batches, avg_batch=round(sm.count / max(1, sm.batches), 1),
                      term=node.term())
        tmp = Path(args.result_file + ".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(args.result_file)
        while time.monotonic() < deadline:
            time.sleep(0.2)
        return 0
    finally:
        node.stop()


def _driver_main(args: argparse.Namespace) -> int:
    addresses = [f"127.0.0.1:{_free_port()}" for _ in range(args.nodes)]
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        result_file = os.path.join(tmp, "result.json")
        procs = []
        env = {k: v for k, v in os.environ.items() if k != "TESSERA_RAFT_PASSWORD"}
        if args.encrypt:  # to the nodes in their environment, never on a command line
            env["TESSERA_RAFT_PASSWORD"] = secrets.token_urlsafe(32)
        for i in range(args.nodes):
            cmd = [sys.executable, "-m", "tessera.control_plane.replication.bench", "--node", str(i),
                   "--addresses", ",".join(addresses), "--data-dir", tmp, "--result-file", result_file,
                   "--seconds", str(args.seconds), "--submitters", str(args.submitters),
                   "--mode", args.mode, "--entry-bytes", str(args.entry_bytes),
                   "--linger-ms", str(args.linger_ms), "--in-flight", str(args.in_flight)]
            if args.encrypt:
                cmd += ["--encrypt"]
            if args.switch_interval is not None:
                cmd += ["--switch-interval", str(args.switch_interval)]
            procs.append(subprocess.Popen(cmd, env=env))
        try:
            deadline = time.monotonic() + args.seconds + 60
            while not os.path.exists(result_file) and time.monotonic() < deadline:
                if all(p.poll() is not None for p in procs):
                    break
                time.sleep(0.2)
            if not os.path.exists(result_file):
                print(json.dumps({"error": "no result from the leader"}))
                return 1
            print(Path(result_file).read_text())
            return 0
        finally:
            for p in procs:
                if p.poll() is None:
                    os.kill(p.pid, signal.SIGKILL)
            for p in procs:
                p.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--submitters", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--mode", choices=("threads", "window"), default="threads")
    parser.add_argument("--entry-bytes", type=int, default=64)
    parser.add_argument("--linger-ms", type=float, default=2.0)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--encrypt", action="store_true", help="encrypt the Raft port with a random password")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval() in the node processes (default: Python's 5 ms)")
    # Internal: a node process started by the driver.
    parser.add_argument("--node", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--addresses", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return _node_main(args) if args.node is not None else _driver_main(args)


if __name__ == "__main__":
    sys.exit(main())
