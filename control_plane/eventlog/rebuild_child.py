"""State snapshots rebuilt from the event log in a child process, so that a master never holds a second
state for them (`Snapshotter(..., builder=ChildRebuilder(path))`; the master uses it, tests and tools
may rebuild in-process).

Why: a rebuild decodes the previous snapshot (a whole `ClusterState`: hundreds of thousands of small
objects), replays up to `every` events onto it, pickles and compresses the result, and drops it all.
Done on a thread of the master, that transient state is allocated between the live state's own
allocations: CPython's small-object arenas are returned to the system only when entirely empty and
glibc's per-thread arenas keep freed memory, so every rebuild left memory behind, and more as the state
grew. In the hour-long soak the masters' anonymous RSS rose in a step at every snapshot crossing (every
10,000 events, about every 4.5 minutes): 99 -> 231 MiB; rebuilding the same 10,000 events again and again
on a thread of one process grew it from 24 to 145 MiB with 4 MiB of live Python objects left
(docs/reliability.md, "Soak"). A child process gives all of it back when it exits.

The child (`python -m tessera.control_plane.eventlog.rebuild_child DB TARGET EVERY PARENT_PID`) opens
the master's `events.db` read-only (`EventFile`: WAL readers never block the writer), lowers its own
priority, dies with its parent (PR_SET_PDEATHSIG), and writes the snapshots to store as frames on stdout
(`encode_frames`: seq, length, blob); the master's snapshotter thread stores them, so the event log keeps
one writer. The exit status says what happened: 0 done, `HISTORY_EXIT` the history cannot be rebuilt
(a hole, a prune: the message on stderr becomes a `HistoryUnavailable`), anything else a failure.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from tessera.control_plane.eventlog.errors import HistoryError, HistoryUnavailable
from tessera.control_plane.eventlog.replay import rebuild
from tessera.control_plane.eventlog.snapshots import decode_snapshot, encode_snapshot
from tessera.control_plane.eventlog.source import HistorySource

__all__ = ["HISTORY_EXIT", "ChildRebuilder", "RebuildCancelled", "build_snapshots", "decode_frames",
           "encode_frames"]

HISTORY_EXIT = 3
_FRAME = struct.Struct(">QQ")  # seq, length of the blob that follows


class RebuildCancelled(Exception):
    """`ChildRebuilder.cancel()` ended the child before it finished."""


def encode_frames(snapshots: Sequence[tuple[int, bytes]]) -> bytes:
    return b"".join(_FRAME.pack(seq, len(blob)) + blob for seq, blob in snapshots)


def decode_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (seq, blob) pairs of `encode_frames`; ValueError on a truncated or damaged stream."""
    out: list[tuple[int, bytes]] = []
    at = 0
    while at < len(data):
        if len(data) - at < _FRAME.size:
            raise ValueError(f"truncated frame header at byte {at}")
        seq, size = _FRAME.unpack_from(data, at)
        at += _FRAME.size
        if len(data) - at < size:
            raise ValueError(f"frame of snapshot {seq} truncated: {len(data) - at} of {size} bytes")
        out.append((seq, data[at:at + size]))
        at += size
    return out


class _Collect:
    def __init__(self) -> None:
        self.snapshots: list[tuple[int, bytes]] = []

    def put_snapshot(self, seq: int, blob: bytes) -> None:
        self.snapshots.append((seq, blob))


def build_snapshots(source: HistorySource, target: int, every: int) -> list[tuple[int, bytes]]:
    """The snapshots `background.ensure_snapshot(store, target, every)` would store, returned instead: those
    a replay passes on the way (every `every` events) and the one at the end of the entry holding
    `target`; none when that one is already stored."""
    snap = source.nearest_snapshot(target)
    if snap is not None and snap[0] == target and decode_snapshot(snap[1]) is not None:
        return []
    sink = _Collect()
    rebuilt = rebuild(source, target, sink=sink, every=every)
    if rebuilt.snapshot_seq != rebuilt.index and all(seq != rebuilt.index for seq, _ in sink.snapshots):
        sink.put_snapshot(rebuilt.index, encode_snapshot(rebuilt.state))
    return sink.snapshots


class ChildRebuilder:
    """Runs `build_snapshots` on the events.db at `db` in a child process (see the module docstring)."""

    def __init__(self, db: Path, *, python: str = sys.executable, timeout: float = 900.0) -> None:
        self.db = Path(db)
        self.python = python
        self.timeout = timeout
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._cancelled = False
        self.runs = 0  # children started, for tests and metrics

    def command(self, target: int, every: int) -> list[str]:
        return [self.python, "-m", "tessera.control_plane.eventlog.rebuild_child", str(self.db), str(target),
                str(every), str(os.getpid())]

    def build(self, target: int, every: int) -> list[tuple[int, bytes]]:
        with self._lock:
            if self._cancelled:
                raise RebuildCancelled("the rebuilder was cancelled")
            child = subprocess.Popen(self.command(target, every), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self._child = child
            self.runs += 1
        try:
            out, err = child.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise RuntimeError(f"snapshot rebuild up to {target} took more than {self.timeout:.0f} s") from None
        finally:
            with self._lock:
                self._child = None
        if self._cancelled:
            raise RebuildCancelled("the rebuilder was cancelled")
        message = err.decode("utf-8", "replace").strip().splitlines()
        if child.returncode == HISTORY_EXIT:
            raise HistoryUnavailable(message[-1] if message else f"history up to {target} is unavailable")
        if child.returncode != 0:
            tail = " | ".join(message[-3:]) or "no output"
            raise RuntimeError(f"snapshot rebuild child exited with {child.returncode}: {tail}")
        return decode_frames(out)

    def cancel(self) -> None:
        """End a child under way (and refuse new ones): `build` then raises `RebuildCancelled`."""
        with self._lock:
            self._cancelled = True
            child = self._child
        if child is not None and child.poll() is None:
            child.kill()


def _die_with_parent(parent: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        # PR_SET_PDEATHSIG: fires when the parent's *thread* that started this child ends; that is the
        # snapshotter's thread, which lives as long as the master (and cancels the child when stopped)
        libc.prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the child still ends when its work is done (a write to a closed pipe at worst)
    if os.getppid() != parent:
        os._exit(1)  # the parent died before prctl took effect


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 4:
        print("usage: python -m tessera.control_plane.eventlog.rebuild_child DB TARGET EVERY PARENT_PID",
              file=sys.stderr)
        return 2
    db, target, every, parent = Path(args[0]), int(args[1]), int(args[2]), int(args[3])
    _die_with_parent(parent)
    try:
        os.nice(10)  # a background job: the master's threads come first
    except OSError:
        pass
    from tessera.control_plane import legacy_names
    from tessera.control_plane.eventlog.eventfile import EventFile

    legacy_names.install()  # snapshots written before the tessera.* rename
    source = EventFile(db)
    try:
        snapshots = build_snapshots(source, target, every)
    except HistoryError as exc:
        print(str(exc), file=sys.stderr)
        return HISTORY_EXIT
    finally:
        source.close()
    sys.stdout.buffer.write(encode_frames(snapshots))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
