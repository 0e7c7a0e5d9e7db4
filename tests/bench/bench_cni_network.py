"""Benchmark of container network attach and detach with the real CNI plugins (not a test; needs root).

    python tests/bench/bench_cni_network.py [--cycles 30] [--held 50] [--workers 4]

Uses its own bridge `tsrbench0` on 10.213.247.0/24 and a temporary state dir, and removes everything it
created at the end (and leftovers of an interrupted run at the start), like the integration tests.

Measured in one run, each an attach followed by a detach of a fresh container id:
- `no ports` and `1 port`: serial cycles on an otherwise empty network;
- `1 port, N held`: the same with N other containers (each with a published port) attached meanwhile,
  because every iptables call of the plugins reads the whole nat table;
- `1 port, W workers`: W threads doing cycles at once (containers/s one agent can attach);
- `what-if: no ipMasq`: the bridge plugin without its per-container masquerade chain (not the agent's
  configuration: it shows what that chain costs).
For each: attach and detach p50/p90, cycles per second, the CPU time the plugins and the tools they run
spent per cycle (which, unlike the latencies, does not depend on what else the machine runs; cores /
that CPU bounds the cycles per second), and the p50 of each step (namespace, plugin executions), from
`CniNetwork.timings`.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]

from tessera.agent.executor import network as cni  # noqa: E402
from tests.support.cni_host import HostState, clean_leftovers, missing_requirements  # noqa: E402

PREFIX, BRIDGE, SUBNET = "tsrbench", "tsrbench0", "10.213.247.0/24"


def _q(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes: the plugins, iptables, ip."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def _variant(no_masq: bool) -> Iterator[None]:
    original = cni.network_config_list
    if no_masq:
        def without_masq(config: cni.NetworkConfig) -> dict[str, Any]:
            conf = original(config)
            conf["plugins"][0]["ipMasq"] = False
            return conf
        cni.network_config_list = without_masq  # type: ignore[assignment]
    try:
        yield
    finally:
        cni.network_config_list = original  # type: ignore[assignment]


def measure(label: str, net: cni.CniNetwork, *, cycles: int, ports: bool, workers: int = 1,
            held: int = 0, no_masq: bool = False) -> None:
    port = iter(range(40000, 50000))
    with _variant(no_masq):
        for i in range(held):
            net.attach(f"held{i}", [cni.PortMapping(8080, next(port))])
        net.timings.clear()

        def cycle(i: int) -> tuple[float, float]:
            mappings = [cni.PortMapping(8080, next(port))] if ports else []
            started = time.monotonic()
            net.attach(f"c{i}", mappings)
            attached = time.monotonic()
            net.detach(f"c{i}")
            return attached - started, time.monotonic() - attached

        begun = time.monotonic()
        cpu_before = _children_cpu()
        if workers == 1:
            results = [cycle(i) for i in range(cycles)]
        else:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(cycle, range(cycles)))
        wall = time.monotonic() - begun
        cpu = (_children_cpu() - cpu_before) / cycles
        steps: dict[str, list[float]] = defaultdict(list)
        for t in net.timings:
            steps[f"{t.plugin} {t.command}"].append(t.seconds)
        for i in range(held):
            net.detach(f"held{i}")
    attach = [r[0] for r in results]
    detach = [r[1] for r in results]
    print(f"{label:<28} attach p50 {_q(attach, .5):5.0f} ms p90 {_q(attach, .9):5.0f} | detach p50 "
          f"{_q(detach, .5):5.0f} ms p90 {_q(detach, .9):5.0f} | {cycles / wall:5.1f} cycles/s | CPU of the "
          f"plugins and tools {cpu * 1000:4.0f} ms a cycle")
    print(" " * 29 + "steps p50 ms: " + ", ".join(f"{k} {statistics.median(v) * 1000:.0f}" for k, v in steps.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--held", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    problems = missing_requirements()
    if problems:
        print("needs: " + "; ".join(problems), file=sys.stderr)
        return 2
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"$ python tests/bench/bench_cni_network.py --cycles {args.cycles} --held {args.held} "
          f"--workers {args.workers}")
    print(f"machine: {os.cpu_count()} cores, {mem_gib:.1f} GiB, {platform.platform()}, load average "
          f"{os.getloadavg()[0]:.2f} at start")
    before = HostState.capture()
    clean_leftovers(PREFIX, [SUBNET])
    runs: list[tuple[str, Callable[[cni.CniNetwork], None]]] = [
        ("no ports", lambda n: measure("no ports", n, cycles=args.cycles, ports=False)),
        ("1 port", lambda n: measure("1 port", n, cycles=args.cycles, ports=True)),
        (f"1 port, {args.held} held", lambda n: measure(f"1 port, {args.held} held", n, cycles=args.cycles,
                                                         ports=True, held=args.held)),
        (f"1 port, {args.workers} workers", lambda n: measure(f"1 port, {args.workers} workers", n,
                                                              cycles=args.cycles, ports=True, workers=args.workers)),
        ("what-if: no ipMasq, 1 port", lambda n: measure("what-if: no ipMasq, 1 port", n, cycles=args.cycles,
                                                          ports=True, no_masq=True)),
        ("what-if: no ipMasq, no ports", lambda n: measure("what-if: no ipMasq, no ports", n, cycles=args.cycles,
                                                            ports=False, no_masq=True)),
    ]
    try:
        with tempfile.TemporaryDirectory(prefix="tsrbench-") as state:
            net = cni.CniNetwork(cni.NetworkConfig(state_dir=state, bridge=BRIDGE, subnet=SUBNET))
            net.attach("warmup")  # creates the bridge and the shared chains once
            net.detach("warmup")
            for _, run in runs:
                run(net)
    finally:
        clean_leftovers(PREFIX, [SUBNET])
        before.restore()
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
