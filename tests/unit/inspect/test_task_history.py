"""`tessera tasks --all` rebuilds every task, finished ones included, from the event log
(`eventlog.tasks.task_history`): the rows agree with the state a master holds, and outlive it."""

from __future__ import annotations

import pytest

from tessera.control_plane.core.values import TaskState
from tessera.control_plane.eventlog import MemoryEventStore
from tessera.control_plane.eventlog.records import EventRecord
from tessera.control_plane.eventlog.source import iter_records
from tessera.control_plane.eventlog.tasks import task_filter, task_history

from .workload import Leader, random_history


def known_tasks(leader: Leader) -> dict[tuple[str, str], TaskState]:
    live = leader.live
    return {(k.framework_id, k.task_id): t.state for k, t in (*live.tasks.items(), *live.completed_tasks.items())}


def test_every_task_the_state_holds_has_a_row_in_its_state(memory_history: tuple[MemoryEventStore, Leader]) -> None:
    store, leader = memory_history
    history = task_history(iter_records(store, task_filter()))
    rows = {(r.framework_id, r.task_id): r for r in history.rows}
    assert {k: r.state for k, r in rows.items()} == known_tasks(leader)
    finished = [r for r in history.rows if r.state is TaskState.TASK_FINISHED]
    assert finished and all(r.ended and r.ended_at >= r.launched_at > 0 and r.info is not None for r in finished)
    assert all(r.last_status is not None and r.last_status.exit_code == 0 for r in finished)
    killed = [r for r in history.rows if r.state is TaskState.TASK_KILLED]
    assert killed and all(r.kill_requested for r in killed)
    assert history.skipped == 0 and 0 < history.first_index < history.last_index <= store.last_seq()


@pytest.mark.parametrize("seed", range(12))
def test_rows_match_the_state_of_random_histories(seed: int) -> None:
    store = MemoryEventStore()
    leader = random_history(store, seed)
    assert store.flush()
    history = task_history(iter_records(store, task_filter()))
    rows = {(r.framework_id, r.task_id): r.state for r in history.rows}
    expected = known_tasks(leader)
    assert {k: v for k, v in rows.items() if k in expected} == expected
    store.close()


def test_tasks_the_state_forgot_are_still_rows(memory_history: tuple[MemoryEventStore, Leader]) -> None:
    store, leader = memory_history
    leader.live.completed_tasks.clear()  # what a master does once more tasks ended than it remembers
    rows = task_history(iter_records(store, task_filter())).rows
    assert len([r for r in rows if r.ended]) > len([t for t in leader.live.tasks.values() if t.terminal])


def test_a_pruned_launch_leaves_a_row_without_a_description(memory_history: tuple[MemoryEventStore, Leader]) -> None:
    store, _ = memory_history
    launches = [r for r in iter_records(store, task_filter()) if r.type == "TaskLaunched"]
    store.prune(before_seq=launches[0].seq + 1)
    rows = task_history(iter_records(store, task_filter())).rows
    first = next(r for r in rows if r.task_id == "t1a")
    assert first.info is None and first.launched_at == 0.0 and first.state is TaskState.TASK_FINISHED


def test_a_record_that_does_not_decode_is_skipped_and_counted() -> None:
    bad = EventRecord(seq=7, raft_index=1, position=0, type="TaskStatusUpdated", time=1.0, term=1, request_id="",
                      framework_id="f", agent_id="a", task_id="t", offer_id="", trace_id="", span_id="",
                      payload="{not json")
    history = task_history([bad])
    assert history.rows == () and history.skipped == 1 and history.first_index == history.last_index == 7
