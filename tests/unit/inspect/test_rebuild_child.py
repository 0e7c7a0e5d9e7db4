"""Snapshots rebuilt in a child process (`eventlog/rebuild_child.py`): what the child builds is what an
in-process rebuild stores, a hole is a `HistoryUnavailable`, the snapshotter stores what its builder
returns on its own thread, and stop() ends a child under way."""

from __future__ import annotations

import sqlite3
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from tessera.control_plane.eventlog import SqliteEventStore
from tessera.control_plane.eventlog.background import Snapshotter
from tessera.control_plane.eventlog.errors import HistoryUnavailable
from tessera.control_plane.eventlog.rebuild_child import (
    ChildRebuilder,
    RebuildCancelled,
    build_snapshots,
    decode_frames,
    encode_frames,
)
from tessera.control_plane.eventlog.replay import rebuild
from tessera.control_plane.eventlog.snapshots import decode_snapshot

from .workload import realistic_history

pytestmark = pytest.mark.timeout(120)


def wait_until(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_frames_round_trip_and_a_truncated_stream_is_an_error() -> None:
    snaps = [(10, b"abc"), (20, b""), (2**40, bytes(range(256)) * 3)]
    data = encode_frames(snaps)
    assert decode_frames(data) == snaps
    assert decode_frames(b"") == []
    with pytest.raises(ValueError, match="truncated"):
        decode_frames(data[:-1])
    with pytest.raises(ValueError, match="truncated frame header"):
        decode_frames(data + b"\x00" * 5)


@pytest.fixture
def history(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = SqliteEventStore(tmp_path / "events.db")
    leader = realistic_history(store)
    assert store.flush()
    yield store, leader
    store.close()


def test_the_child_builds_the_snapshots_an_in_process_rebuild_stores(history) -> None:  # type: ignore[no-untyped-def]
    store, leader = history
    target = max(leader.fingerprints)
    in_process = build_snapshots(store, target, every=30)
    # the snapshots passed every 30 events and the one at the target, each the live state at its seq
    assert [seq for seq, _ in in_process][-1] == target and len(in_process) >= target // 30
    builder = ChildRebuilder(store.path)
    from_child = builder.build(target, 30)
    assert builder.runs == 1
    assert [seq for seq, _ in from_child] == [seq for seq, _ in in_process]
    for seq, blob in from_child:
        state = decode_snapshot(blob)
        assert state is not None and state.seq == seq
        assert state.fingerprint() == leader.fingerprints[seq]
    # stored, the next rebuild starts from them; a target already stored needs no child work at all
    for seq, blob in from_child:
        store.put_snapshot(seq, blob)
    assert store.flush()
    assert rebuild(store, target).snapshot_seq == target
    assert builder.build(target, 30) == []


def test_a_hole_in_the_log_is_history_unavailable_from_the_child(history) -> None:  # type: ignore[no-untyped-def]
    store, leader = history
    target = max(leader.fingerprints)
    conn = sqlite3.connect(store.path)
    conn.execute("DELETE FROM events WHERE seq BETWEEN 5 AND 9")  # as after an installed Raft snapshot
    conn.commit()
    conn.close()
    with pytest.raises(HistoryUnavailable, match="missing"):
        ChildRebuilder(store.path).build(target, 30)


def test_a_failing_child_is_an_error_with_its_output(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited with .*no such file"):
        ChildRebuilder(tmp_path / "absent.db").build(10, 10)


def test_the_snapshotter_stores_what_its_builder_returns_on_its_own_thread(history) -> None:  # type: ignore[no-untyped-def]
    store, leader = history
    builder = ChildRebuilder(store.path)
    stored: list[tuple[str, int]] = []
    original = store.put_snapshot

    def spy(seq: int, blob: bytes) -> None:
        stored.append((threading.current_thread().name, seq))
        original(seq, blob)

    store.put_snapshot = spy  # type: ignore[method-assign]
    live = Snapshotter(store, every=30, live_budget_s=0.0, builder=builder)  # never pickles the live state
    live.observe(0)
    live.observe(store.last_seq())  # a crossing, no state given: rebuilt
    wait_until(lambda: live.taken == 1)
    live.stop()
    assert live.last_error is None and builder.runs == 1 and live.captured == 0
    assert stored and {name for name, _ in stored} == {"tessera-snapshotter"}
    assert store.flush()  # put_snapshot queues for the writer thread
    snap = store.nearest_snapshot(store.last_seq())
    assert snap is not None and snap[0] == store.last_seq()
    state = decode_snapshot(snap[1])
    assert state is not None and state.fingerprint() == leader.fingerprints[snap[0]]


def test_stop_ends_a_child_under_way_and_the_snapshotter_thread(tmp_path: Path, history) -> None:  # type: ignore[no-untyped-def]
    store, _ = history
    started = tmp_path / "started"
    slow = tmp_path / "slow-python"  # stands in for the interpreter: a child that never finishes by itself
    slow.write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 300\n")
    slow.chmod(slow.stat().st_mode | stat.S_IXUSR)
    builder = ChildRebuilder(store.path, python=str(slow))
    live = Snapshotter(store, every=30, live_budget_s=0.0, builder=builder)
    live.observe(0)
    live.observe(store.last_seq())
    wait_until(started.exists)
    began = time.monotonic()
    live.stop(timeout=30)
    assert time.monotonic() - began < 25, "stop() waited for the child instead of ending it"
    assert live._thread is not None and not live._thread.is_alive()
    assert live.taken == 0 and live.last_error is None  # abandoned, not failed
    with pytest.raises(RebuildCancelled):
        builder.build(store.last_seq(), 30)


def test_the_child_command_runs_this_interpreter_on_the_store_file(tmp_path: Path) -> None:
    cmd = ChildRebuilder(tmp_path / "events.db").command(123, 45)
    assert cmd[:3] == [sys.executable, "-m", "tessera.control_plane.eventlog.rebuild_child"]
    assert cmd[3:6] == [str(tmp_path / "events.db"), "123", "45"]
