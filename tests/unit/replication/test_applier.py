"""The apply thread (``replication/_applier``) and how the pysyncobj consumer uses it for dumps and restores.

Batches are applied on one thread, in the order the tick thread queued them; outcomes queued with ``call``
come after the batches queued before them; a dump (``_ReplicatedLog._serialize``) and a restore wait until
everything queued is applied; the queue is bounded (the producer waits); stop applies what is queued.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from tessera.control_plane.replication._applier import DEFAULT_MAX_QUEUED_ENTRIES, Applier, PendingApply
from tessera.control_plane.replication._group_commit import ApplyFailure
from tessera.control_plane.replication.pysyncobj_node import SNAPSHOT_FORMAT, _ReplicatedLog

WAIT_S = 10.0


class RecordingMachine:
    """Appends every entry it applies; optionally holds each apply until ``gate`` is set."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.applied: list[tuple[int, bytes]] = []
        self.threads: set[str] = set()
        self.gate = gate
        self.started = threading.Event()
        self.restored: list[object] = []

    def apply_entries(self, raft_index: int, entries: list[bytes]) -> list[object]:
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT_S)
        self.threads.add(threading.current_thread().name)
        self.applied.extend((raft_index, e) for e in entries)
        return [len(self.applied)] * len(entries)

    def snapshot(self) -> object:
        return list(self.applied)

    def restore(self, snap: object) -> None:
        self.restored.append((snap, list(self.applied)))


@contextlib.contextmanager
def held(max_entries: int = DEFAULT_MAX_QUEUED_ENTRIES) -> Iterator[tuple[RecordingMachine, threading.Event, Applier]]:
    """A running applier over a machine whose every apply waits for ``gate``; released and stopped after."""
    gate = threading.Event()
    sm = RecordingMachine(gate)
    applier = Applier("t", sm, max_entries=max_entries)
    applier.start()
    try:
        yield sm, gate, applier
    finally:
        gate.set()
        applier.stop(WAIT_S)


def results_of(pending: PendingApply) -> object:
    got: list[object] = []
    done = threading.Event()

    def keep(payload: object) -> None:
        got.append(payload)
        done.set()

    pending.then(keep)
    assert done.wait(WAIT_S)
    return got[0]


def test_batches_are_applied_on_the_apply_thread_in_the_order_queued() -> None:
    sm = RecordingMachine()
    applier = Applier("t", sm)
    applier.start()
    try:
        pendings = [applier.apply(i, [f"e{i}-{j}".encode() for j in range(3)]) for i in range(1, 51)]
        assert results_of(pendings[-1]) == [150, 150, 150]
        assert applier.drain(WAIT_S)
    finally:
        applier.stop(WAIT_S)
    assert sm.applied == [(i, f"e{i}-{j}".encode()) for i in range(1, 51) for j in range(3)]
    assert sm.threads == {"t-apply"}
    assert results_of(pendings[0]) == [3, 3, 3]


def test_a_call_runs_after_the_batches_queued_before_it() -> None:
    order: list[str] = []
    with held() as (sm, gate, applier):
        applier.apply(1, [b"a"]).then(lambda _: order.append("batch 1"))
        applier.call(lambda: order.append("failure of batch 2"))
        applier.apply(3, [b"b"]).then(lambda _: order.append("batch 3"))
        assert order == []  # nothing ran on the queuing thread
        gate.set()
        assert applier.drain(WAIT_S)
    assert order == ["batch 1", "failure of batch 2", "batch 3"]


def test_drain_waits_until_every_queued_batch_is_applied() -> None:
    with held() as (sm, gate, applier):
        applier.apply(1, [b"a"])
        applier.apply(2, [b"b"])
        assert sm.started.wait(WAIT_S)
        assert not applier.drain(0.05)  # the first batch is held: not drained
        gate.set()
        assert applier.drain(WAIT_S)
        assert [e for _, e in sm.applied] == [b"a", b"b"]


def test_the_queue_is_bounded_the_producer_waits_for_room() -> None:
    with held(max_entries=2) as (sm, gate, applier):
        applier.apply(1, [b"a"])
        assert sm.started.wait(WAIT_S)  # batch 1 taken; the queue is empty again
        applier.apply(2, [b"b", b"c"])  # fills the queue
        producer = threading.Thread(target=applier.apply, args=(3, [b"d"]))
        producer.start()
        producer.join(0.2)
        assert producer.is_alive(), "a third batch must wait while the queue is full"
        gate.set()
        producer.join(WAIT_S)
        assert not producer.is_alive()
        assert applier.drain(WAIT_S)
        assert [e for _, e in sm.applied] == [b"a", b"b", b"c", b"d"]


def test_stop_applies_what_is_queued_and_later_batches_apply_inline() -> None:
    gate = threading.Event()
    sm = RecordingMachine(gate)
    applier = Applier("t", sm)
    applier.start()
    first = applier.apply(1, [b"a"])
    second = applier.apply(2, [b"b"])
    gate.set()
    applier.stop(WAIT_S)
    assert first.done and second.done
    third = applier.apply(3, [b"c"])  # after stop: applied on the caller's thread, at once
    assert third.done
    assert [e for _, e in sm.applied] == [b"a", b"b", b"c"]
    assert threading.current_thread().name in sm.threads


def test_a_raising_state_machine_becomes_a_failure_value_and_the_thread_goes_on() -> None:
    class Broken(RecordingMachine):
        def apply_entries(self, raft_index: int, entries: list[bytes]) -> list[object]:
            if entries == [b"boom"]:
                raise RuntimeError("boom")
            return super().apply_entries(raft_index, entries)

    sm = Broken()
    applier = Applier("t", sm)
    applier.start()
    try:
        failed = results_of(applier.apply(1, [b"boom"]))
        assert isinstance(failed, ApplyFailure) and "boom" in failed.message
        assert results_of(applier.apply(2, [b"ok"])) == [1]
    finally:
        applier.stop(WAIT_S)


def test_a_dump_is_taken_only_after_every_queued_batch_is_applied() -> None:
    snapshots: list[object] = []
    with held() as (sm, gate, applier):
        consumer = _ReplicatedLog(sm, applier)
        applier.apply(7, [b"a", b"b"])
        assert sm.started.wait(WAIT_S)
        dumper = threading.Thread(target=lambda: snapshots.append(consumer._serialize()))
        dumper.start()
        dumper.join(0.2)
        assert dumper.is_alive(), "the dump must wait for the batch being applied"
        gate.set()
        dumper.join(WAIT_S)
    assert snapshots == [{"format": SNAPSHOT_FORMAT, "state": [(7, b"a"), (7, b"b")]}]


def test_a_restore_lands_after_every_batch_queued_before_it() -> None:
    with held() as (sm, gate, applier):
        consumer = _ReplicatedLog(sm, applier)
        applier.apply(3, [b"old"])
        restorer = threading.Thread(target=consumer._deserialize, args=({"format": SNAPSHOT_FORMAT, "state": "snap"},))
        restorer.start()
        restorer.join(0.2)
        assert restorer.is_alive()
        gate.set()
        restorer.join(WAIT_S)
    assert sm.restored == [("snap", [(3, b"old")])]  # restored after the old batch, never under it
