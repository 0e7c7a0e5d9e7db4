"""An opt-in memory probe for a long-running master: tracemalloc snapshots taken periodically, to name the
Python allocations that grow (the soak's RSS finding, docs/reliability.md "Soak").

    TESSERA_TRACEMALLOC=/tmp/probe tessera master ...      # a snapshot every 60 s into /tmp/probe
    TESSERA_TRACEMALLOC_EVERY=30                           # seconds between snapshots (default 60)
    TESSERA_TRACEMALLOC_FRAMES=10                          # frames kept per allocation (default 10)
    python -m tessera.control_plane.runtime.memprobe /tmp/probe/m1-1234-0001.tracemalloc \\
        /tmp/probe/m1-1234-0012.tracemalloc                 # the top growth by traceback between two

Unset (the default), `start_from_env` reads one environment variable and returns None: no thread, no
tracing, nothing else. Set, tracemalloc runs from then on (it slows every allocation down, about 2x in
CPU, and holds its traces in memory: a debugging tool, not for production) and a daemon thread writes
`DIR/<name>-<pid>-<nnnn>.tracemalloc` (a `tracemalloc.Snapshot`) and appends one line per snapshot to
`DIR/<name>-<pid>.gc` with what the process holds outside the traces: RssAnon/RssFile from
/proc/self/status, the traced size and peak, the collector's counts and per-generation statistics, the
number of objects the collector tracks, and the memory C code allocates without tracemalloc seeing it
(`c_heap`): glibc's malloc totals over all its arenas and SQLite's own count of what it holds (page
caches, prepared statements) — where RssAnon grows while the traces do not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["MemProbe", "c_heap", "proc_status_kib", "start_from_env", "top_growth"]

ENV_DIR = "TESSERA_TRACEMALLOC"
ENV_EVERY = "TESSERA_TRACEMALLOC_EVERY"
ENV_FRAMES = "TESSERA_TRACEMALLOC_FRAMES"


def proc_status_kib(text: str, keys: Sequence[str] = ("VmRSS", "RssAnon", "RssFile", "RssShmem")) -> dict[str, int]:
    """The `keys` of a /proc/PID/status text, in KiB (missing keys are left out)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in keys:
            fields = rest.split()
            if fields and fields[0].isdigit():
                out[name] = int(fields[0])
    return out


class _MallInfo2(ctypes.Structure):
    # glibc >= 2.33 `struct mallinfo2` (malloc.h): every field a size_t, summed over all arenas
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _library(name: str) -> ctypes.CDLL | None:
    found = ctypes.util.find_library(name)
    try:
        return ctypes.CDLL(found) if found else None
    except OSError:
        return None


def c_heap() -> dict[str, int]:
    """What C code holds, in KiB, where it can be read (keys left out elsewhere, e.g. not glibc):
    `malloc_heap` (bytes glibc's arenas took from the system), `malloc_in_use` and `malloc_free` (of those,
    in use and free in its bins), `malloc_mmap` (large blocks mapped one by one), `sqlite` (what SQLite
    holds now, all connections of the process: `sqlite3_memory_used`, the library the sqlite3 module uses)."""
    out: dict[str, int] = {}
    libc = _library("c")
    if libc is not None and hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        out.update(malloc_heap=info.arena >> 10, malloc_in_use=info.uordblks >> 10,
                   malloc_free=info.fordblks >> 10, malloc_mmap=info.hblkhd >> 10)
    sqlite = _library("sqlite3")
    if sqlite is not None and hasattr(sqlite, "sqlite3_memory_used"):
        sqlite.sqlite3_memory_used.restype = ctypes.c_int64
        out["sqlite"] = int(sqlite.sqlite3_memory_used()) >> 10
    return out


class MemProbe:
    """Writes a tracemalloc snapshot and a line of collector statistics every `every` seconds."""

    def __init__(self, directory: Path, name: str, every: float = 60.0, frames: int = 10) -> None:
        self.directory = directory
        self.prefix = f"{name}-{os.getpid()}"
        self.every = every
        self.frames = frames
        self.taken = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memprobe", daemon=True)

    def start(self) -> MemProbe:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not tracemalloc.is_tracing():
            tracemalloc.start(self.frames)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.take()
            except Exception as exc:  # noqa: BLE001 - a debugging aid never stops the master
                print(f"memprobe: {exc!r}", file=sys.stderr)

    def take(self) -> Path:
        """One snapshot now; returns its path."""
        self.taken += 1
        path = self.directory / f"{self.prefix}-{self.taken:04d}.tracemalloc"
        snapshot = tracemalloc.take_snapshot()
        snapshot.dump(str(path))
        current, peak = tracemalloc.get_traced_memory()
        try:
            status = proc_status_kib(Path("/proc/self/status").read_text())
        except OSError:
            status = {}
        line = {"t": round(time.time(), 1), "snapshot": path.name, "traced": current, "peak": peak,
                "tracemalloc_overhead": tracemalloc.get_tracemalloc_memory(), "status_kib": status,
                "gc_count": gc.get_count(), "gc_threshold": gc.get_threshold(), "gc_stats": gc.get_stats(),
                "gc_tracked": len(gc.get_objects()), "gc_frozen": gc.get_freeze_count(), "gc_garbage": len(gc.garbage),
                "c_heap_kib": c_heap()}
        with open(self.directory / f"{self.prefix}.gc", "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        return path


def start_from_env(name: str, env: Mapping[str, str] = os.environ) -> MemProbe | None:
    """A started `MemProbe` when TESSERA_TRACEMALLOC names a directory, else None (and nothing else done)."""
    directory = env.get(ENV_DIR)
    if not directory:
        return None
    every = float(env.get(ENV_EVERY) or 60.0)
    frames = int(env.get(ENV_FRAMES) or 10)
    return MemProbe(Path(directory), name, every=every, frames=frames).start()


def top_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, limit: int = 15,
               key: str = "traceback") -> list[str]:
    """The `limit` largest size differences between two snapshots, grouped by `key`, as text."""
    lines = []
    for stat in after.compare_to(before, key)[:limit]:
        lines.append(f"{stat.size_diff / 2**20:+8.2f} MiB  {stat.size / 2**20:8.2f} MiB  {stat.count_diff:+9d} blocks")
        for frame in stat.traceback.format()[-2 * min(len(stat.traceback), 8):]:
            lines.append(f"      {frame}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m tessera.control_plane.runtime.memprobe BEFORE.tracemalloc AFTER.tracemalloc",
              file=sys.stderr)
        return 2
    before, after = (tracemalloc.Snapshot.load(a) for a in args)
    print(f"traced: {sum(s.size for s in before.statistics('filename')) / 2**20:.1f} MiB -> "
          f"{sum(s.size for s in after.statistics('filename')) / 2**20:.1f} MiB")
    print("\n".join(top_growth(before, after)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
