"""Where a benchmark master's Raft tick thread and apply spend their time (`bench_write_path.py --timeline`).

Wraps, in one running `_quorum_node.py` master, the points of one pysyncobj tick: the tick itself
(`_onTick`), the poll that waits for messages, the journal sync (`os.fdatasync`, which `durability` uses),
the sends (AppendEntries and replies), and the state machine's `apply_entries` (on whichever thread runs it).
Counts wall and thread-CPU time of each over the measured window, so a tick reads as
receive (poll) -> journal append -> sync -> send -> commit -> apply, and the time the tick thread was
runnable but not running (waiting for the GIL or a core) is what is left of its wall time.
Not a test; only the benchmark imports it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


class Timeline:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.on = False
        self.c: dict[str, float] = {}
        self.started = 0.0
        self.tick_thread: int | None = None

    def add(self, key: str, value: float) -> None:
        if self.on:
            self.c[key] = self.c.get(key, 0.0) + value

    def start(self) -> None:
        self.c = {}
        self.started = time.perf_counter()
        self.cpu0 = time.process_time()
        self.on = True

    def stop(self) -> dict[str, Any]:
        self.on = False
        out = dict(self.c)
        out["window_s"] = time.perf_counter() - self.started
        out["process_cpu_s"] = time.process_time() - self.cpu0
        return out


def install(replicator: Any, state_machine: Any) -> Timeline:
    """Wrap the running replicator's SyncObj and the state machine (see the module docstring)."""
    tl = Timeline()
    so = replicator._syncobj
    tick = so._onTick

    def on_tick(timeToWait: float = 0.0) -> None:  # noqa: N803
        tl.tick_thread = threading.get_ident()
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            tick(timeToWait)
        finally:
            tl.add("tick_wall", time.perf_counter() - w0)
            tl.add("tick_cpu", time.thread_time() - c0)
            tl.add("ticks", 1)

    so._onTick = on_tick
    poller = so._poller
    poll = poller.poll

    def timed_poll(timeout: float) -> Any:
        w0 = time.perf_counter()
        try:
            return poll(timeout)
        finally:
            tl.add("poll_wall", time.perf_counter() - w0)

    poller.poll = timed_poll
    fdatasync = os.fdatasync

    def timed_sync(fd: int) -> None:
        w0 = time.perf_counter()
        try:
            fdatasync(fd)
        finally:
            tl.add("sync_wall" if threading.get_ident() == tl.tick_thread else "sync_wall_other", time.perf_counter() - w0)
            tl.add("syncs", 1)

    os.fdatasync = timed_sync
    transport = so._SyncObj__transport
    send = transport.send

    def timed_send(node: Any, message: Any) -> Any:
        w0 = time.perf_counter()
        try:
            return send(node, message)
        finally:
            tl.add("send_wall", time.perf_counter() - w0)
            if isinstance(message, dict):
                kind = message.get("type")
                tl.add(f"sent_{kind}", 1)
                if kind == "append_entries":
                    tl.add("sent_raft_entries", len(message.get("entries") or ()))

    transport.send = timed_send
    apply_entries = state_machine.apply_entries

    def timed_apply(raft_index: int, entries: list[bytes]) -> list[object]:
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            return apply_entries(raft_index, entries)
        finally:
            where = "tick" if threading.get_ident() == tl.tick_thread else "apply_thread"
            tl.add(f"apply_wall_{where}", time.perf_counter() - w0)
            tl.add(f"apply_cpu_{where}", time.thread_time() - c0)
            tl.add("applied_batches", 1)
            tl.add("applied_entries", len(entries))

    state_machine.apply_entries = timed_apply
    return tl


def run_for_window(tl: Timeline, out: str, is_leader: Any) -> None:
    """Measure between the leader's `.window` and `.end` marker files (any node of the same quorum), then
    write `<out>.timeline.json`. On its own thread."""
    me = Path(out)
    tag = me.name.rsplit("-", 1)[0]

    def marker(suffix: str) -> bool:
        return any(me.parent.glob(f"{tag}-[0-9].json{suffix}"))

    def body() -> None:
        while not marker(".window"):
            time.sleep(0.01)
        tl.start()
        while not marker(".end"):
            time.sleep(0.01)
        result = tl.stop()
        result["leader"] = bool(is_leader())
        Path(out + ".timeline.json").write_text(json.dumps(result))

    threading.Thread(target=body, daemon=True, name="bench-timeline").start()


def describe(t: dict[str, Any]) -> str:
    """One paragraph: the tick thread's time split, and the apply's, per second of the window."""
    w = t["window_s"] or 1.0
    ticks = t.get("ticks", 0.0) or 1.0
    tick_wall = t.get("tick_wall", 0.0)
    poll = t.get("poll_wall", 0.0)
    sync = t.get("sync_wall", 0.0)
    send = t.get("send_wall", 0.0)
    cpu = t.get("tick_cpu", 0.0)
    # tick thread wall = poll (idle, waiting for a message) + sync (disk) + CPU + runnable-not-running
    waiting = max(0.0, tick_wall - poll - sync - cpu)
    ae = t.get("sent_append_entries", 0.0) or 1.0
    return (
        f"{'leader' if t.get('leader') else 'follower'}: {t.get('ticks', 0) / w:,.0f} ticks/s, "
        f"{t.get('syncs', 0) / w:,.0f} journal syncs/s; tick thread per second of window: "
        f"poll (waiting for messages) {poll / w * 1e3:.0f} ms, journal sync {sync / w * 1e3:.0f} ms, "
        f"CPU {cpu / w * 1e3:.0f} ms (of it apply {t.get('apply_cpu_tick', 0.0) / w * 1e3:.0f} ms, "
        f"sends {send / w * 1e3:.0f} ms wall), runnable but not running (GIL/core) {waiting / w * 1e3:.0f} ms; "
        f"per tick {tick_wall / ticks * 1e3:.2f} ms; apply thread: {t.get('apply_wall_apply_thread', 0.0) / w * 1e3:.0f} ms "
        f"wall, {t.get('apply_cpu_apply_thread', 0.0) / w * 1e3:.0f} ms CPU per s; "
        f"{t.get('applied_entries', 0) / max(t.get('applied_batches', 0), 1):.0f} entries per applied batch; "
        f"{t.get('sent_append_entries', 0) / w:,.0f} AppendEntries/s carrying {t.get('sent_raft_entries', 0) / ae:.2f} "
        f"Raft entries each; process CPU {t['process_cpu_s'] / w * 1e3:.0f} ms per s"
    )
