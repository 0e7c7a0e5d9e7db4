"""The engine-independent machinery: group-commit batching bounds, in-flight limit, deadlines,
shutdown outcomes, the never-raising apply guard, and leadership notification ordering."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from tessera.control_plane.replication import (
    GroupCommitConfig,
    NotLeaderError,
    ReplicationError,
    ReplicatorStoppedError,
    StateMachineError,
    UnknownOutcomeError,
)
from tessera.control_plane.replication._group_commit import (
    ENTRY_OVERHEAD_BYTES,
    ApplyFailure,
    Batch,
    GroupCommitter,
    guarded_apply,
)
from tessera.control_plane.replication._notifier import LeadershipNotifier

from .harness import ListStateMachine, wait_until

pytestmark = pytest.mark.timeout(30)


class FakeEngine:
    """Records proposed batches; completes them automatically (echo results) or on demand."""

    def __init__(self, auto: bool = True) -> None:
        self.auto = auto
        self.batches: list[Batch] = []
        self.refusal: ReplicationError | None = None
        self.raise_on_propose = False
        self.committer: GroupCommitter | None = None

    def propose(self, batch: Batch) -> None:
        if self.raise_on_propose:
            raise RuntimeError("engine down")
        self.batches.append(batch)
        if self.auto:
            self.complete(batch)

    def complete(self, batch: Batch, payload: object | None = None) -> None:
        assert self.committer is not None
        self.committer.post(batch, list(batch.entries) if payload is None else payload)

    def refuse(self) -> ReplicationError | None:
        return self.refusal


def make(settings: GroupCommitConfig, auto: bool = True) -> tuple[GroupCommitter, FakeEngine]:
    engine = FakeEngine(auto)
    committer = GroupCommitter("test", settings, engine.propose, engine.refuse)
    engine.committer = committer
    committer.start()
    return committer, engine


@pytest.fixture
def stack() -> Iterator[list[GroupCommitter]]:
    started: list[GroupCommitter] = []
    yield started
    for c in started:
        c.close_intake(5)
        c.shutdown(5)


def test_batches_respect_entry_and_byte_bounds_and_keep_fifo_order(stack: list[GroupCommitter]) -> None:
    per_big = 10 + ENTRY_OVERHEAD_BYTES
    settings = GroupCommitConfig(linger_s=0, max_batches_in_flight=1, max_batch_entries=12,
                                 max_batch_bytes=10 * per_big)
    committer, engine = make(settings, auto=False)
    stack.append(committer)
    gate = committer.submit(b"gate")
    wait_until(lambda: len(engine.batches) == 1, 5, "gate batch proposed")
    small = [f"s{i:02d}".encode() for i in range(20)]  # 3 bytes each
    big = [bytes([65 + i]) * 10 for i in range(21)]       # 10 bytes each
    futures = [committer.submit(e) for e in small + big]
    # With the only slot busy everything accumulates, so the split below is deterministic.
    while not futures[-1].done():
        proposed_so_far = len(engine.batches)
        engine.complete(engine.batches[-1])
        wait_until(lambda n=proposed_so_far: len(engine.batches) > n or futures[-1].done(), 5, "next batch")
    assert gate.result(timeout=5) == b"gate"
    assert [f.result(timeout=5) for f in futures] == small + big  # each future got its own entry back
    proposed = [e for b in engine.batches[1:] for e in b.entries]
    assert proposed == small + big
    # 12 small (count bound), 8 small + 4 big (count bound), 10 big (byte bound), the last 7 big.
    assert [len(b.entries) for b in engine.batches] == [1, 12, 12, 10, 7]
    for b in engine.batches:
        assert sum(len(e) + ENTRY_OVERHEAD_BYTES for e in b.entries) <= settings.max_batch_bytes


def test_in_flight_limit_makes_waiting_entries_accumulate(stack: list[GroupCommitter]) -> None:
    committer, engine = make(GroupCommitConfig(linger_s=0, max_batches_in_flight=1), auto=False)
    stack.append(committer)
    first = committer.submit(b"first")
    wait_until(lambda: len(engine.batches) == 1, 5, "first batch proposed")
    rest = [committer.submit(f"r{i}".encode()) for i in range(50)]
    # No slot: nothing more is proposed until the first batch completes.
    assert len(engine.batches) == 1
    engine.complete(engine.batches[0])
    assert first.result(timeout=5) == b"first"
    wait_until(lambda: len(engine.batches) == 2, 5, "second batch proposed")
    assert len(engine.batches[1].entries) == 50  # everything that waited goes in one call
    engine.complete(engine.batches[1])
    assert [f.result(timeout=5) for f in rest] == [f"r{i}".encode() for i in range(50)]


def test_a_batch_without_outcome_times_out_as_unknown_and_frees_its_slot(stack: list[GroupCommitter]) -> None:
    committer, engine = make(GroupCommitConfig(linger_s=0, max_batches_in_flight=1, commit_timeout_s=0.2), auto=False)
    stack.append(committer)
    lost = committer.submit(b"lost")
    with pytest.raises(UnknownOutcomeError) as info:
        lost.result(timeout=5)
    assert info.value.reason == "TIMEOUT"
    engine.auto = True
    assert committer.submit(b"next").result(timeout=5) == b"next"
    engine.complete(engine.batches[0])  # a late outcome for the expired batch is ignored
    assert isinstance(lost.exception(timeout=1), UnknownOutcomeError)


def test_queue_full_refuses_new_entries(stack: list[GroupCommitter]) -> None:
    committer, engine = make(GroupCommitConfig(linger_s=0, max_batches_in_flight=1, max_pending_entries=3),
                             auto=False)
    stack.append(committer)
    committer.submit(b"in-flight")
    wait_until(lambda: len(engine.batches) == 1, 5, "first batch proposed")
    waiting = [committer.submit(b"w") for _ in range(3)]
    refused = committer.submit(b"one-too-many")
    assert refused.done()
    with pytest.raises(UnknownOutcomeError) as info:
        refused.result(timeout=1)
    assert info.value.reason == "QUEUE_FULL"
    assert not any(f.done() for f in waiting)


def test_refusal_is_checked_at_submit_and_again_before_proposing(stack: list[GroupCommitter]) -> None:
    committer, engine = make(GroupCommitConfig(linger_s=0, max_batches_in_flight=1), auto=False)
    stack.append(committer)
    committer.submit(b"a")
    wait_until(lambda: len(engine.batches) == 1, 5, "first batch proposed")
    queued = committer.submit(b"b")  # accepted while leader, waits for the slot
    engine.refusal = NotLeaderError("127.0.0.1:9")
    immediate = committer.submit(b"c")
    assert immediate.done() and isinstance(immediate.exception(), NotLeaderError)
    engine.complete(engine.batches[0])
    with pytest.raises(NotLeaderError) as info:
        queued.result(timeout=5)
    assert info.value.leader_hint == "127.0.0.1:9"
    assert len(engine.batches) == 1  # "b" was never proposed


def test_shutdown_separates_never_proposed_from_maybe_applied(stack: list[GroupCommitter]) -> None:
    committer, engine = make(GroupCommitConfig(linger_s=0, max_batches_in_flight=1), auto=False)
    proposed = committer.submit(b"proposed")
    wait_until(lambda: len(engine.batches) == 1, 5, "first batch proposed")
    waiting = committer.submit(b"waiting")
    committer.close_intake(5)
    with pytest.raises(ReplicatorStoppedError):
        waiting.result(timeout=1)
    with pytest.raises(ReplicatorStoppedError):
        committer.submit(b"after-close").result(timeout=1)
    committer.shutdown(5)
    with pytest.raises(UnknownOutcomeError) as info:
        proposed.result(timeout=1)
    assert info.value.reason == "STOPPED"


def test_outcomes_posted_before_shutdown_are_delivered(stack: list[GroupCommitter]) -> None:
    committer, engine = make(GroupCommitConfig(linger_s=0), auto=False)
    fut = committer.submit(b"x")
    wait_until(lambda: len(engine.batches) == 1, 5, "batch proposed")
    committer.close_intake(5)
    engine.complete(engine.batches[0])
    committer.shutdown(5)
    assert fut.result(timeout=1) == b"x"


def test_failures_map_to_errors_per_entry(stack: list[GroupCommitter]) -> None:
    committer, engine = make(GroupCommitConfig(linger_s=0), auto=False)
    stack.append(committer)
    payloads: list[object] = [ApplyFailure("bad"), UnknownOutcomeError("LEADER_CHANGED"), ["too", "many"]]
    expected = [StateMachineError, UnknownOutcomeError, StateMachineError]
    for payload, error in zip(payloads, expected, strict=True):
        fut = committer.submit(b"e")
        wait_until(lambda fut=fut: engine.batches and engine.batches[-1].futures[0] is fut, 5, "batch proposed")
        engine.complete(engine.batches[-1], payload)
        with pytest.raises(error):
            fut.result(timeout=5)
    engine.raise_on_propose = True
    with pytest.raises(UnknownOutcomeError) as info:
        committer.submit(b"e").result(timeout=5)
    assert info.value.reason == "PROPOSE_FAILED"


def test_a_submitted_entry_cannot_be_cancelled(stack: list[GroupCommitter]) -> None:
    committer, engine = make(GroupCommitConfig(linger_s=0), auto=False)
    stack.append(committer)
    fut = committer.submit(b"x")
    assert not fut.cancel()
    wait_until(lambda: len(engine.batches) == 1, 5, "batch proposed")
    engine.complete(engine.batches[0])
    assert fut.result(timeout=5) == b"x"


def test_guarded_apply_never_raises() -> None:
    sm = ListStateMachine()
    assert guarded_apply(sm, 7, [b"a", b"b"]) == [1, 2]
    failure = guarded_apply(sm, 8, [b"boom"])
    assert isinstance(failure, ApplyFailure) and "RuntimeError" in failure.message
    assert isinstance(guarded_apply(sm, 9, [b"short"]), ApplyFailure)

    class TupleResults:
        def apply_entries(self, raft_index: int, entries: list[bytes]) -> tuple[object, ...]:
            return tuple(entries)

    assert guarded_apply(TupleResults(), 1, [b"x"]) == [b"x"]  # type: ignore[arg-type]


def test_notifier_orders_collapses_and_isolates_callbacks() -> None:
    notifier = LeadershipNotifier("test", term_source=lambda: 42)
    seen: list[tuple[bool, int]] = []
    late: list[tuple[bool, int]] = []

    def bad(is_leader: bool, term: int) -> None:
        raise RuntimeError("subscriber bug")

    notifier.register(bad)
    notifier.register(lambda leader, term: seen.append((leader, term)))
    notifier.publish(True, 3)
    notifier.publish(True, 3)    # duplicate: collapsed
    notifier.publish(False, 4)
    notifier.publish(True, None)  # term unknown at the source: filled in from term_source
    notifier.register(lambda leader, term: late.append((leader, term)))
    notifier.request_stop()
    t = threading.Thread(target=notifier.run, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive()
    assert seen == [(True, 3), (False, 4), (True, 42)]
    assert late == [(True, 42)]


def test_future_type_is_a_standard_future(stack: list[GroupCommitter]) -> None:
    committer, _ = make(GroupCommitConfig())
    stack.append(committer)
    fut = committer.submit(b"x")
    assert isinstance(fut, Future)
    assert fut.result(timeout=5) == b"x"
