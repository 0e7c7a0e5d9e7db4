"""Benchmark of following a task's output (not a test): latency and throughput of the agent's file service,
each against a local baseline in the same run (docs/benchmarks.md).

    python tests/bench/bench_logs.py [--lines 400] [--interval 0.02] [--sparse-interval 0.25] [--mib 256]

On a one-master cluster with one real agent (127.0.0.1):

1. Latency. A task writes `--lines` lines, each with the wall time it was written, one every `--interval`
   seconds (a busy task), then as many one every `--sparse-interval` (a quiet one: the follower has backed
   off to its longest poll). Followed from the agent (`tessera.sdk.files`, as `tessera logs -f` does) and
   through the master's proxy, and, as the baseline, by `tail -F` on the same file (inotify, no network):
   the delay from each write to the line's arrival, p50 and p99.
2. Throughput. A task writes `--mib` MiB to stdout and ends; its stdout is then read from offset 0 by a
   follow (to the end: the task is over) and by `read_range` (what `tessera sandbox cat` does), from the
   agent and through the master, and by `tessera logs TASK > /dev/null` (the whole CLI), against `cat FILE
   > /dev/null` of the same file: MiB/s and the ratio to cat.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere in the repo

from tessera.sdk.files import SandboxFiles  # noqa: E402
from tessera.v1 import operator_pb2  # noqa: E402
from tests.bench.bench_agent import machine, pct  # noqa: E402
from tests.support.cluster import LocalCluster, wait_for  # noqa: E402

TESSERA = [sys.executable, "-m", "tessera.control_plane.cli.main"]
MIB = 1 << 20


def run_task(c: LocalCluster, name: str, command: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    """`tessera run` in the background; (process, FRAMEWORK_ID/TASK_ID, its sandbox on this machine)."""
    proc = subprocess.Popen([*TESSERA, "run", "--masters", ",".join(c.grpc_addresses()), "--name", name, "--",
                             command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def find() -> str | None:
        client = c.client()
        try:
            st = client.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True))
        finally:
            client.close()
        ids = {f.framework_id for f in st.frameworks if f.info.name == name}
        found = next((t for t in st.tasks if t.task.framework_id in ids), None)
        return f"{found.task.framework_id}/{found.task.task_id}" if found else None

    ref = wait_for(find, timeout=60, what=f"task {name}")
    framework_id, task_id = ref.split("/")
    sandbox = c.agents[0].data_dir / "sandboxes" / framework_id / task_id / "sandbox"
    return proc, ref, sandbox


def delays_of(lines: list[tuple[bytes, float]]) -> list[float]:
    out = []
    for line, arrived in lines:
        parts = line.split()
        if len(parts) == 2:
            out.append(arrived - float(parts[1]))
    return out


def follow_lines(files: SandboxFiles, ref: str) -> list[tuple[bytes, float]]:
    got: list[tuple[bytes, float]] = []
    pending = b""
    for chunk in files.task(ref).follow("stdout"):
        now = time.time()
        pending += chunk.data
        *complete, pending = pending.split(b"\n")
        got += [(line, now) for line in complete]
    return got


def tail_lines(path: Path, count: int) -> list[tuple[bytes, float]]:
    tail = subprocess.Popen(["tail", "-n", "+1", "-F", str(path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    got = []
    assert tail.stdout is not None
    try:
        for line in iter(tail.stdout.readline, b""):
            got.append((line.rstrip(b"\n"), time.time()))
            if len(got) >= count:
                break
    finally:
        tail.kill()
        tail.wait()
    return got


def latency(c: LocalCluster, args: argparse.Namespace) -> None:
    program = (f"import time\nfor i in range({args.lines}):\n print(i, f'{{time.time():.6f}}', flush=True)\n"
               f" time.sleep({args.interval} if i < {args.lines // 2} else {args.sparse_interval})\n")
    script = c.root / "writer.py"
    script.write_text(program)
    os.chmod(script, 0o644)
    proc, ref, sandbox = run_task(c, "bench-latency", f"python3 {shlex.quote(str(script))}")
    results: dict[str, list[tuple[bytes, float]]] = {}

    def direct() -> None:
        results["agent"] = follow_lines(SandboxFiles(c.grpc_addresses()), ref)

    def proxied() -> None:
        results["master proxy"] = follow_lines(SandboxFiles(c.grpc_addresses(), via_master=True), ref)

    def tail() -> None:
        wait_for(lambda: (sandbox / "stdout").exists(), timeout=30, what="stdout")
        results["tail -F (baseline)"] = tail_lines(sandbox / "stdout", args.lines)

    threads = [threading.Thread(target=fn) for fn in (direct, proxied, tail)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    proc.wait(timeout=60)
    half = args.lines // 2
    print(f"\n1. latency, {args.lines} lines: the first half every {args.interval * 1000:.0f} ms, the second every "
          f"{args.sparse_interval * 1000:.0f} ms (delay from the task's write to the line's arrival)")
    print(f"   {'follower':<22} {'busy p50':>9} {'busy p99':>9} {'quiet p50':>10} {'quiet p99':>10} lines")
    for name, lines in results.items():
        numbered = {int(line.split()[0]): (line, at) for line, at in lines if len(line.split()) == 2}
        busy = delays_of([numbered[i] for i in sorted(numbered) if i < half])[5:]  # the first: the backlog at start
        quiet = delays_of([numbered[i] for i in sorted(numbered) if i >= half])[1:]
        print(f"   {name:<22} {statistics.median(busy) * 1000:>7.1f}ms {pct(busy, 0.99) * 1000:>7.1f}ms "
              f"{statistics.median(quiet) * 1000:>8.1f}ms {pct(quiet, 0.99) * 1000:>8.1f}ms {len(numbered)}")


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def throughput(c: LocalCluster, args: argparse.Namespace) -> None:
    proc, ref, sandbox = run_task(c, "bench-bulk", f"head -c {args.mib * MIB} /dev/urandom | base64 -w 100")
    proc.wait(timeout=600)
    path = sandbox / "stdout"
    size = path.stat().st_size
    direct, proxied = SandboxFiles(c.grpc_addresses()), SandboxFiles(c.grpc_addresses(), via_master=True)

    def drain_follow(files: SandboxFiles) -> None:
        got = sum(len(chunk.data) for chunk in files.task(ref).follow("stdout"))
        assert got == size, (got, size)

    def drain_read(files: SandboxFiles) -> None:
        got = sum(len(data) for data in files.task(ref).read_range("stdout", 0))
        assert got == size, (got, size)

    def cli() -> None:
        with open(os.devnull, "wb") as null:
            subprocess.run([*TESSERA, "--masters", ",".join(c.grpc_addresses()), "logs", ref], stdout=null, check=True)

    def cat() -> None:
        with open(os.devnull, "wb") as null:
            subprocess.run(["cat", str(path)], stdout=null, check=True)

    cat()  # warm the page cache for everyone
    rows = [("cat FILE > /dev/null (baseline)", min(timed(cat) for _ in range(3)))]
    rows += [("follow, from the agent", timed(lambda: drain_follow(direct))),
             ("follow, through the master", timed(lambda: drain_follow(proxied))),
             ("read_range (sandbox cat), agent", timed(lambda: drain_read(direct))),
             ("read_range, through the master", timed(lambda: drain_read(proxied))),
             ("tessera logs TASK > /dev/null", timed(cli))]
    base = rows[0][1]
    print(f"\n2. throughput, stdout of {size / MIB:.0f} MiB (page cache warm)")
    for name, seconds in rows:
        print(f"   {name:<34} {size / MIB / seconds:>8.0f} MiB/s  {seconds:>6.2f} s  {seconds / base:>6.1f}x cat")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=400)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--sparse-interval", type=float, default=0.25)
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()
    print(f"$ python tests/bench/bench_logs.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"machine: {machine()}")
    if shutil.which("tail") is None or shutil.which("python3") is None:
        raise SystemExit("needs tail and python3 on PATH")
    root = Path(tempfile.mkdtemp(prefix="tessera-bench-logs-"))
    try:
        with LocalCluster(root, n=1) as c:
            c.master_flags = ["--allocation-interval", "0.2"]
            c.start_all()
            c.leader()
            c.add_agent("cpus:4;mem:4096")
            c.wait_agents(1)
            latency(c, args)
            throughput(c, args)
            c.stop_all(signal.SIGKILL)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
