"""The invariant checker finds each kind of corruption (so a clean report means something)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tessera.control_plane.core import commands as c
from tessera.control_plane.core.invariants import check_invariants
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.state import ClusterState, TaskKey
from tessera.control_plane.core.values import AgentState, FrameworkState, Offer, TaskState

from .harness import Harness, task


def world() -> tuple[Harness, str, str, str]:
    h = Harness()
    aid = h.agent("cpus:4;mem:4096;ports:[31000-31009]")
    fid = h.framework(partition_aware=True)
    h.launched(fid, aid, task("t1", cpus=1, ports=[(31000, 31000)]))
    oid = h.offer(fid, aid, Resources.of(cpus=1, ports=[(31001, 31002)]))
    assert check_invariants(h.state) == []
    return h, aid, fid, oid


def _overcommit(s: ClusterState, aid: str, fid: str, oid: str) -> None:
    s.agents[aid].total = Resources.of(cpus=1)


def _offer_overlaps_task(s: ClusterState, aid: str, fid: str, oid: str) -> None:
    bad = Offer(oid, fid, aid, role="web", resources=Resources.of(cpus=1, ports=[(31000, 31001)]))
    s.offers[oid] = bad
    s.agents[aid].offered = s.frameworks[fid].offered = bad.resources


def _offer_on_unknown_agent(s: ClusterState, aid: str, fid: str, oid: str) -> None:
    s.offers[oid] = Offer(oid, fid, "agent-404", role="web", resources=s.offers[oid].resources)


def _used_mismatch(s: ClusterState, aid: str, fid: str, oid: str) -> None:
    s.agents[aid].used = Resources.of(cpus=3)


def _offered_mismatch(s: ClusterState, aid: str, fid: str, oid: str) -> None:
    s.frameworks[fid].offered = Resources.of(cpus=3)


def _seq_mismatch(s: ClusterState, aid: str, fid: str, oid: str) -> None:
    s.seq += 1


def _offer_to_removed_framework(s: ClusterState, aid: str, fid: str, oid: str) -> None:
    s.frameworks[fid].state = FrameworkState.FRAMEWORK_REMOVED
    s.frameworks[fid].stream_id = ""


def _offer_on_unreachable_agent(s: ClusterState, aid: str, fid: str, oid: str) -> None:
    s.agents[aid].state = AgentState.AGENT_UNREACHABLE


def _task_of_unknown_framework(s: ClusterState, aid: str, fid: str, oid: str) -> None:
    del s.frameworks[fid]


def _running_task_on_removed_agent(s: ClusterState, aid: str, fid: str, oid: str) -> None:
    s.offers.clear()
    s.agents[aid].offer_ids.clear()
    s.agents[aid].offered = s.frameworks[fid].offered = Resources()
    s.frameworks[fid].offer_ids.clear()
    s.agents[aid].state = AgentState.AGENT_REMOVED


def _unreachable_task_on_active_agent(s: ClusterState, aid: str, fid: str, oid: str) -> None:
    s.tasks[TaskKey(fid, "t1")].state = TaskState.TASK_UNREACHABLE


def _dangling_task_index(s: ClusterState, aid: str, fid: str, oid: str) -> None:
    s.agents[aid].task_keys.add(TaskKey(fid, "t-ghost"))


def _terminal_acknowledged_task_left_live(s: ClusterState, aid: str, fid: str, oid: str) -> None:
    s.tasks[TaskKey(fid, "t1")].state = TaskState.TASK_FINISHED
    s.agents[aid].used = s.frameworks[fid].used = Resources()


def _memory_over_bound(s: ClusterState, aid: str, fid: str, oid: str) -> None:
    s.retired_offers_limit = 0
    s.retired_offers["o"] = "x"


CORRUPTIONS: dict[str, tuple[Callable[[ClusterState, str, str, str], None], str]] = {
    "over-committed agent": (_overcommit, "over-committed"),
    "offer sharing a port with a task": (_offer_overlaps_task, "share range resources"),
    "offer on an unknown agent": (_offer_on_unknown_agent, "unknown agent"),
    "used is not the sum of tasks": (_used_mismatch, "used is"),
    "offered is not the sum of offers": (_offered_mismatch, "offered is"),
    "seq is not the number of events": (_seq_mismatch, "events were recorded"),
    "offer to a removed framework": (_offer_to_removed_framework, "FRAMEWORK_REMOVED"),
    "offer on an unreachable agent": (_offer_on_unreachable_agent, "AGENT_UNREACHABLE"),
    "task of an unknown framework": (_task_of_unknown_framework, "unknown framework"),
    "running task on a removed agent": (_running_task_on_removed_agent, "removed agent"),
    "unreachable task on an active agent": (_unreachable_task_on_active_agent, "reachable agent"),
    "index naming a task that is not live": (_dangling_task_index, "not live"),
    "acknowledged terminal task left live": (_terminal_acknowledged_task_left_live, "moved to completed"),
    "bounded memory over its bound": (_memory_over_bound, "over its bound"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_the_checker_reports_each_corruption(name: str) -> None:
    h, aid, fid, oid = world()
    corrupt, expected = CORRUPTIONS[name]
    corrupt(h.state, aid, fid, oid)
    problems = check_invariants(h.state)
    assert any(expected in p for p in problems), problems


def test_the_checker_never_raises_on_a_broken_state() -> None:
    h, aid, fid, oid = world()
    h.state.tasks[TaskKey(fid, "t1")] = None  # type: ignore[assignment]
    problems = check_invariants(h.state)
    assert problems and "malformed" in problems[-1]


def test_a_fresh_and_a_busy_state_are_clean() -> None:
    assert check_invariants(ClusterState()) == []
    h, aid, fid, oid = world()
    h.run(c.MarkAgentUnreachable(aid))
    assert check_invariants(h.state) == []
