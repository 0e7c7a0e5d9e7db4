"""Benchmark of the agent's image store (not a test), against a real docker-registry on 127.0.0.1:

    python tests/bench/bench_image_store.py [--rounds 10]

Needs root (overlay mounts) and the Debian packages docker-registry, skopeo, umoci and busybox-static.
Measured in one run, each `--rounds` times, the busybox test image (tests/support/registry.py, one
~1 MB layer):
1. cold pull: `ImageStore.pull` into an empty store (skopeo copy + umoci unpack + record), against
   `skopeo copy` alone of the same image into an empty OCI layout (what the store adds on top);
2. cached pull: `pull` of an image the store has (no registry request);
3. per-task root filesystem: `prepare_rootfs` as an overlay mount, against the copy fallback, and
   `release_rootfs` of each.
The cached-image launch target of the container work (issue 16) is p50 <= 250 ms from launch to
TASK_RUNNING: steps 2 and 3 are the store's share of it.
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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere in the repo

import psutil  # noqa: E402

from tessera.agent.executor.images import ImageStore, release_rootfs  # noqa: E402
from tests.support.registry import Registry, push_busybox, require_tool  # noqa: E402


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    return f"{platform.platform()}, python {platform.python_version()}, {psutil.cpu_count()} cpus, {mem:.1f} GiB"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def summary(name: str, ms: list[float]) -> float:
    ordered = sorted(ms)
    p50 = statistics.median(ordered)
    print(f"  {name:<34} p50 {p50:8.2f} ms   min {ordered[0]:8.2f}   max {ordered[-1]:8.2f}   (n={len(ms)})")
    return p50


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (overlay mounts)", file=sys.stderr)
        return 2
    skopeo = require_tool("skopeo")
    print(f"command: python tests/bench/bench_image_store.py --rounds {args.rounds}")
    print(f"machine: {machine()}")
    with Registry() as registry, tempfile.TemporaryDirectory(prefix="tessera-bench-images-") as tmp:
        work = Path(tmp)
        push_busybox(registry, "bench/busybox:1")
        reference = f"{registry.host}/bench/busybox:1"

        cold, skopeo_only, cached = [], [], []
        for i in range(args.rounds):
            store = ImageStore(work / f"store-{i}")
            store.available()  # creating the layout is not part of a pull
            cold.append(timed(lambda store=store: store.pull(reference)))  # type: ignore[misc]
            cached.extend(timed(lambda store=store: store.pull(reference)) for _ in range(20))  # type: ignore[misc]
            layout = work / f"layout-{i}"
            skopeo_only.append(timed(lambda layout=layout: subprocess.run(  # type: ignore[misc]
                [skopeo, "--policy", str(registry.policy_path), "copy", "--quiet", "--src-tls-verify=false",
                 f"docker://{reference}", f"oci:{layout}:x"], check=True)))
        image = ImageStore(work / "store-0").pull(reference)

        overlay, copy, release_overlay, release_copy = [], [], [], []
        for i in range(args.rounds):
            task = work / f"task-{i}"
            overlay.append(timed(lambda task=task: ImageStore(work / "store-0").prepare_rootfs(image, task)))  # type: ignore[misc]
            release_overlay.append(timed(lambda task=task: release_rootfs(task)))  # type: ignore[misc]
            task = work / f"task,copy-{i}"  # a ',' in the path: overlayfs cannot take it, so the copy fallback
            copy.append(timed(lambda task=task: ImageStore(work / "store-0").prepare_rootfs(image, task)))  # type: ignore[misc]
            release_copy.append(timed(lambda task=task: release_rootfs(task)))  # type: ignore[misc]

        print(f"image: {reference} ({image.digest}, {image.size_bytes / 2**20:.1f} MiB in the store)")
        print("pull:")
        p_cold = summary("cold pull (skopeo+umoci+record)", cold)
        p_skopeo = summary("skopeo copy alone (baseline)", skopeo_only)
        summary("cached pull", cached)
        print(f"  cold pull / skopeo alone = {p_cold / p_skopeo:.2f}")
        print("per-task root filesystem:")
        p_overlay = summary("prepare_rootfs overlay", overlay)
        p_copy = summary("prepare_rootfs copy fallback", copy)
        summary("release_rootfs overlay", release_overlay)
        summary("release_rootfs copy", release_copy)
        print(f"  copy / overlay = {p_copy / p_overlay:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
