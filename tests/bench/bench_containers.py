"""Benchmark of container tasks on one agent (not a test): launch -> running, cold pull, containers/s.

    python tests/bench/bench_containers.py [--rounds 20] [--burst 40]

Everything is the agent's real machinery (the launcher, the fork server, the supervisor, runc, the image
store, the CNI plugins), driven the way the agent loop drives it, without a master: what a container adds
to a task's start is on this side. Needs root and the Debian packages .ci/run installs. Prints:
- launch -> running p50/p90: from `prepare` (sandbox, isolation, the container's launch) to the moment
  the launcher observes the task started (the supervisor writes task.json once runc created the
  container: what the agent reports as TASK_RUNNING), for a command task (the baseline, same run) and a
  container of a cached image on the none, host and bridge networks; the ratio container/command;
- a cold pull of the busybox test image from a registry on 127.0.0.1 (fresh store) and a cached pull;
- containers/s: a burst of N containers started together (`start_many`, as one agent turn does),
  until every one runs and until every one ended and was released, on the none and bridge networks,
  and the same burst of command tasks as the baseline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tessera.agent.executor import containers  # noqa: E402
from tessera.agent.executor.images import Image, ImageStore  # noqa: E402
from tessera.agent.executor.isolation import detect_isolator  # noqa: E402
from tessera.agent.executor.launcher import LaunchHandle, ProcessLauncher  # noqa: E402
from tessera.agent.executor.network import DEFAULT_PLUGIN_DIRS  # noqa: E402
from tessera.control_plane.core.resources import Resources  # noqa: E402
from tessera.control_plane.core.values import CommandInfo, ContainerInfo, TaskInfo  # noqa: E402
from tests.support.cni_host import HostState, clean_leftovers  # noqa: E402
from tests.support.registry import Registry, push_busybox  # noqa: E402

BRIDGE = "tsrbench0"
SUBNET = "10.213.245.0/24"


def task(task_id: str, command: str, network: str | None) -> TaskInfo:
    container = ContainerInfo(image="bench/busybox:1", network=network) if network else None
    return TaskInfo(task_id=task_id, framework_id="bench", resources=Resources.of(cpus=0.05, mem=32),
                    command=CommandInfo(shell=True, value=command), container=container)


def wait_started(launcher: ProcessLauncher, handle: LaunchHandle, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not launcher.observe(handle).started:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{handle.task_id} did not start: {launcher.observe(handle)}")
        time.sleep(0.001)


def wait_ended(launcher: ProcessLauncher, handle: LaunchHandle, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not launcher.observe(handle).ended:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{handle.task_id} did not end")
        time.sleep(0.005)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def launch_to_running(launcher: ProcessLauncher, image: Image, network: str | None, rounds: int) -> list[float]:
    times = []
    for n in range(rounds):
        info = task(f"lat-{network or 'cmd'}-{n}", "sleep 30", network)
        started = time.perf_counter()
        handle = launcher.prepare(info, image if network else None)
        handle = launcher.start(info, handle)
        wait_started(launcher, handle)
        times.append(time.perf_counter() - started)
        launcher.kill(handle, 0.0)
        wait_ended(launcher, handle)
        launcher.release(handle)
    return times


def burst(launcher: ProcessLauncher, image: Image, network: str | None, count: int) -> tuple[float, float]:
    """(seconds until all run, seconds until all ended and were released) for `count` tasks started together."""
    infos = [task(f"burst-{network or 'cmd'}-{n}-{time.monotonic_ns()}", "true", network) for n in range(count)]
    began = time.perf_counter()
    prepared = [(info, launcher.prepare(info, image if network else None)) for info in infos]
    handles = [h for h in launcher.start_many(prepared) if isinstance(h, LaunchHandle)]
    assert len(handles) == count, "some launches failed"
    for handle in handles:
        obs = launcher.observe(handle)
        while not (obs.started or obs.ended):
            time.sleep(0.002)
            obs = launcher.observe(handle)
    running = time.perf_counter() - began
    for handle in handles:
        wait_ended(launcher, handle)
        launcher.release(handle)
    return running, time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--burst", type=int, default=40)
    args = parser.parse_args()
    assert os.geteuid() == 0, "needs root (runc, mounts, CNI)"
    print(f"command: python tests/bench/bench_containers.py --rounds {args.rounds} --burst {args.burst}")
    print(f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}")
    before = HostState.capture()
    clean_leftovers(BRIDGE, [SUBNET])
    try:
        with Registry() as registry, tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
            push_busybox(registry, "bench/busybox:1")
            root = Path(tmp)
            reference = f"{registry.host}/bench/busybox:1"
            cold = []
            for n in range(5):
                store = ImageStore(root / f"cold-{n}")
                t0 = time.perf_counter()
                store.pull(reference)
                cold.append(time.perf_counter() - t0)
            store = ImageStore(root / "images")
            image = store.pull(reference)
            t0 = time.perf_counter()
            for _ in range(100):
                store.pull(reference)
            cached = (time.perf_counter() - t0) / 100
            print(f"cold pull (fresh store, 5 runs): median {statistics.median(cold) * 1000:.0f} ms, "
                  f"min {min(cold) * 1000:.0f} ms; cached pull {cached * 1000:.2f} ms")

            work = root / "work"
            work.mkdir()
            isolator = detect_isolator("auto", root_name=f"tessera-bench-{os.getpid()}")
            runtime = containers.detect(root, network={"state_dir": str(root / "cni"), "bridge": BRIDGE,
                                                       "subnet": SUBNET, "plugin_dirs": DEFAULT_PLUGIN_DIRS},
                                        isolation_kind=isolator.name)
            assert isinstance(runtime, containers.ContainerRuntime), runtime
            launcher = ProcessLauncher(work, isolator, containers=runtime)
            launcher.warm_up()
            try:
                launch_to_running(launcher, image, None, 2)  # warm the fork server and caches
                launch_to_running(launcher, image, "none", 2)
                baseline = launch_to_running(launcher, image, None, args.rounds)
                b50 = statistics.median(baseline)
                print(f"launch -> running, command task (baseline): p50 {b50 * 1000:.1f} ms, "
                      f"p90 {percentile(baseline, 0.9) * 1000:.1f} ms")
                for network in ("none", "host", "bridge"):
                    times = launch_to_running(launcher, image, network, args.rounds)
                    p50 = statistics.median(times)
                    print(f"launch -> running, container ({network} network, cached image): p50 "
                          f"{p50 * 1000:.1f} ms, p90 {percentile(times, 0.9) * 1000:.1f} ms, "
                          f"{p50 / b50:.1f}x the command task")
                for network in (None, "none", "bridge"):
                    running, ended = burst(launcher, image, network, args.burst)
                    what = f"container ({network} network)" if network else "command task (baseline)"
                    print(f"burst of {args.burst}, {what}: all running after {running:.2f} s "
                          f"({args.burst / running:.1f}/s); all ended and released after {ended:.2f} s "
                          f"({args.burst / ended:.1f}/s)")
            finally:
                launcher.close()
    finally:
        clean_leftovers(BRIDGE, [SUBNET])
        before.restore()
    return 0


if __name__ == "__main__":
    sys.exit(main())
