"""runtime.reconcile: a framework's Reconcile answered from replicated state, as a pure function."""

from __future__ import annotations

import pytest

from tessera.control_plane.core.errors import Conflict, NotFound
from tessera.control_plane.core.values import TaskState
from tessera.control_plane.runtime.reconcile import reconcile
from tests.unit.core.harness import Harness, task


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_no_task_named_answers_every_live_task_of_the_framework_by_id(h: Harness) -> None:
    agent = h.agent()
    fw = h.framework()
    h.launched(fw, agent, task("b", cpus=0.5), task("a", cpus=0.5))
    h.status("a", TaskState.TASK_RUNNING, uuid="u-a")
    answer = reconcile(h.state, fw, "", ())
    assert [s.task_id for s in answer] == ["a", "b"]
    assert answer[0].state is TaskState.TASK_RUNNING and answer[0].uuid == "u-a"  # its last recorded status
    # none recorded yet: made from its state, marked as reconciliation's
    assert answer[1].state is TaskState.TASK_STAGING and answer[1].reason == "REASON_RECONCILIATION"
    assert answer[1].agent_id == agent and answer[1].framework_id == fw


def test_a_task_the_master_does_not_know_is_lost(h: Harness) -> None:
    fw = h.framework()
    (status,) = reconcile(h.state, fw, "", ("ghost",))
    assert status.state is TaskState.TASK_LOST and status.reason == "REASON_RECONCILIATION"
    assert status.framework_id == fw and status.task_id == "ghost"


def test_task_ids_are_looked_up_under_the_calling_framework_only(h: Harness) -> None:
    agent = h.agent()
    owner, other = h.framework(), h.framework(principal="bob")
    h.launched(owner, agent, task("shared", cpus=0.5))
    (status,) = reconcile(h.state, other, "", ("shared",))
    assert status.state is TaskState.TASK_LOST


def test_an_unknown_framework_or_a_stale_stream_is_refused(h: Harness) -> None:
    fw = h.framework()
    with pytest.raises(NotFound):
        reconcile(h.state, "fw-404", "", ())
    with pytest.raises(Conflict):
        reconcile(h.state, fw, "not-its-stream", ())
    assert reconcile(h.state, fw, h.state.frameworks[fw].stream_id, ()) == []
