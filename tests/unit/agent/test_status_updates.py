"""The status-update manager: ordering per task, retries with backoff, acknowledgements, duplicates."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.agent.core.status_updates import AckOutcome, PendingUpdate, RetryPolicy, StatusUpdateManager
from tessera.control_plane.core.values import TaskKey, TaskState, TaskStatus

S = TaskState


def K(task_id: str, framework_id: str = "") -> TaskKey:  # noqa: N802 - a short name for the streams' key
    return TaskKey(framework_id, task_id)


def update(task_id: str, uuid: str, state: TaskState = S.TASK_RUNNING) -> PendingUpdate:
    return PendingUpdate(TaskStatus(task_id=task_id, state=state, uuid=uuid))


def uuids(updates: list[PendingUpdate]) -> list[str]:
    return [u.uuid for u in updates]


def test_only_the_head_of_each_task_stream_is_sent() -> None:
    m = StatusUpdateManager()
    m.add(update("a", "a1", S.TASK_STARTING), now=0)
    m.add(update("a", "a2", S.TASK_RUNNING), now=0)
    m.add(update("b", "b1", S.TASK_STARTING), now=0)
    assert sorted(uuids(m.due(0))) == ["a1", "b1"]
    assert m.due(0) == []  # sent: nothing more is due until a retry or an ack


def test_whole_streams_sends_every_pending_update_of_a_due_stream_oldest_first_once() -> None:
    m = StatusUpdateManager(RetryPolicy(initial=1.0))
    m.add(update("a", "a1", S.TASK_STARTING), now=0)
    m.add(update("a", "a2", S.TASK_RUNNING), now=0)
    m.add(update("b", "b1", S.TASK_STARTING), now=0)
    assert uuids(m.due(0, whole_streams=True)) == ["a1", "a2", "b1"]
    m.add(update("a", "a3", S.TASK_FINISHED), now=0.5)
    assert m.due(0.5, whole_streams=True) == []  # queued behind what is in flight: not due before a retry
    assert uuids(m.due(1.0, whole_streams=True)) == ["a1", "a2", "a3", "b1"]  # the retry: whole again
    assert m.retries == 4  # the metric counts every update sent again
    assert m.acknowledge(K("a"), "a2", now=1.5).removed == ("a1", "a2")
    assert uuids(m.due(1.5, whole_streams=True)) == ["a3"]  # what the ack left is due at once


def test_acknowledging_the_head_makes_the_next_update_due_at_once() -> None:
    m = StatusUpdateManager()
    for i in range(3):
        m.add(update("a", f"a{i}"), now=0)
    assert uuids(m.due(0)) == ["a0"]
    result = m.acknowledge(K("a"), "a0", now=5)
    assert result.outcome is AckOutcome.ACKED and result.removed == ("a0",)
    assert uuids(m.due(5)) == ["a1"]
    m.acknowledge(K("a"), "a1", now=6)
    assert uuids(m.due(6)) == ["a2"]
    m.acknowledge(K("a"), "a2", now=7)
    assert len(m) == 0 and m.next_due() is None and not m.has_pending(K("a"))


def test_unacknowledged_head_is_resent_with_doubling_backoff_up_to_the_cap() -> None:
    m = StatusUpdateManager(RetryPolicy(initial=1.0, factor=2.0, maximum=5.0))
    m.add(update("a", "a1"), now=100)
    sends = []
    now = 100.0
    while len(sends) < 6:
        if m.due(now):
            sends.append(now)
        now = round(now + 0.5, 3)
    assert [round(b - a, 3) for a, b in zip(sends, sends[1:], strict=False)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_next_due_is_the_earliest_retry() -> None:
    m = StatusUpdateManager(RetryPolicy(initial=2.0))
    m.add(update("a", "a1"), now=0)
    assert m.next_due() == 0
    m.due(0)
    assert m.next_due() == 2.0
    m.add(update("b", "b1"), now=1)
    assert m.next_due() == 1


def test_reset_resends_every_head_at_once_with_a_fresh_backoff() -> None:
    m = StatusUpdateManager(RetryPolicy(initial=1.0, maximum=60))
    m.add(update("a", "a1"), now=0)
    m.add(update("b", "b1"), now=0)
    for t in (0, 1, 3, 7):
        m.due(t)
    assert m.due(8) == []
    m.reset(now=8)
    assert sorted(uuids(m.due(8))) == ["a1", "b1"]
    assert m.next_due() == 9.0  # backoff restarted from the initial delay


def test_duplicate_acknowledgement_is_recognised_and_changes_nothing() -> None:
    m = StatusUpdateManager()
    m.add(update("a", "a1"), now=0)
    m.add(update("a", "a2"), now=0)
    m.due(0)
    assert m.acknowledge(K("a"), "a1", now=1).outcome is AckOutcome.ACKED
    again = m.acknowledge(K("a"), "a1", now=1)
    assert again.outcome is AckOutcome.DUPLICATE and again.removed == ()
    assert uuids(m.pending(K("a"))) == ["a2"]


def test_acknowledgement_of_an_unknown_uuid_changes_nothing() -> None:
    m = StatusUpdateManager()
    m.add(update("a", "a1"), now=0)
    assert m.acknowledge(K("a"), "zzz", now=1).outcome is AckOutcome.UNKNOWN
    assert m.acknowledge(K("b"), "a1", now=1).outcome is AckOutcome.UNKNOWN  # right uuid, wrong task
    assert uuids(m.pending()) == ["a1"]


def test_acknowledging_a_later_update_also_retires_the_older_ones() -> None:
    m = StatusUpdateManager()
    for i in range(4):
        m.add(update("a", f"a{i}"), now=0)
    result = m.acknowledge(K("a"), "a2", now=1)
    assert result.outcome is AckOutcome.ACKED and result.removed == ("a0", "a1", "a2")
    assert uuids(m.due(1)) == ["a3"]


def test_supersede_drops_older_updates_and_keeps_the_reported_one_pending() -> None:
    m = StatusUpdateManager()
    for uuid, state in (("a1", S.TASK_STARTING), ("a2", S.TASK_RUNNING), ("a3", S.TASK_FINISHED)):
        m.add(update("a", uuid, state), now=0)
    assert m.supersede(K("a"), "a3", now=2) == ("a1", "a2")
    assert uuids(m.pending(K("a"))) == ["a3"]
    assert uuids(m.due(2)) == ["a3"]
    assert m.supersede(K("a"), "a3", now=2) == ()  # already the head
    assert m.supersede(K("a"), "nope", now=2) == ()
    assert m.acknowledge(K("a"), "a1", now=3).outcome is AckOutcome.DUPLICATE


def test_adding_an_update_twice_or_without_uuid_is_refused() -> None:
    m = StatusUpdateManager()
    m.add(update("a", "a1"), now=0)
    with pytest.raises(ValueError):
        m.add(update("a", "a1"), now=0)
    with pytest.raises(ValueError):
        m.add(update("a", ""), now=0)
    m.acknowledge(K("a"), "a1", now=0)
    with pytest.raises(ValueError):
        m.add(update("a", "a1"), now=0)  # an acknowledged uuid is never reused


def test_drop_task_forgets_its_stream() -> None:
    m = StatusUpdateManager()
    m.add(update("a", "a1"), now=0)
    m.add(update("a", "a2"), now=0)
    m.add(update("b", "b1"), now=0)
    assert m.drop_task(K("a")) == ("a1", "a2")
    assert uuids(m.pending()) == ["b1"]
    assert m.drop_task(K("a")) == ()


def test_recover_restores_streams_in_checkpoint_order() -> None:
    m = StatusUpdateManager()
    m.recover([update("a", "a1"), update("b", "b1"), update("a", "a2")], now=50)
    assert uuids(m.pending(K("a"))) == ["a1", "a2"]
    assert sorted(uuids(m.due(50))) == ["a1", "b1"]
    assert m.latest(K("a")) is not None and m.latest(K("a")).uuid == "a2"
    assert m.head(K("a")) is not None and m.head(K("a")).uuid == "a1"


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(initial=0)
    with pytest.raises(ValueError):
        RetryPolicy(initial=5, maximum=1)
    assert RetryPolicy().delay(0) == 0.0
    assert RetryPolicy(initial=1, maximum=10).delay(10_000) == 10


# ---- a property: whatever the interleaving, each task's updates are delivered in order, once each ----

ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from("abc")),
        st.tuples(st.just("send"), st.just("")),
        st.tuples(st.just("ack_head"), st.sampled_from("abc")),
        st.tuples(st.just("ack_dup"), st.sampled_from("abc")),
        st.tuples(st.just("reset"), st.just("")),
        st.tuples(st.just("wait"), st.just("")),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_per_task_delivery_order_is_the_order_of_adding(script: list[tuple[str, str]]) -> None:
    m = StatusUpdateManager(RetryPolicy(initial=1.0, maximum=4.0))
    now = 0.0
    added: dict[str, list[str]] = {t: [] for t in "abc"}
    acked: dict[str, list[str]] = {t: [] for t in "abc"}
    sent_heads: dict[str, list[str]] = {t: [] for t in "abc"}
    counter = 0
    for op, task in script:
        if op == "add":
            counter += 1
            uuid = f"{task}{counter}"
            m.add(update(task, uuid), now)
            added[task].append(uuid)
        elif op == "send":
            for u in m.due(now):
                sent_heads[u.task_id].append(u.uuid)
        elif op == "ack_head":
            head = m.head(K(task))
            if head is not None:
                acked[task].extend(m.acknowledge(K(task), head.uuid, now).removed)
        elif op == "ack_dup":
            if acked[task]:
                assert m.acknowledge(K(task), acked[task][-1], now).outcome is AckOutcome.DUPLICATE
        elif op == "reset":
            m.reset(now)
        else:
            now += 1.5
    for t in "abc":
        # acknowledged updates are a prefix of what was added, in order, each once
        assert acked[t] == added[t][: len(acked[t])]
        assert uuids(m.pending(K(t))) == added[t][len(acked[t]):]
        # what was sent was always the oldest unacknowledged update at that time: never out of order
        order = {u: i for i, u in enumerate(added[t])}
        positions = [order[u] for u in sent_heads[t]]
        assert positions == sorted(positions)
