"""The state section's arithmetic agrees with the core's own read helpers (`ClusterState.totals`,
`role_allocations`) on a state with agents in every state, reservations, terminal tasks and offers."""

from __future__ import annotations

from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.state import AgentRecord, ClusterState, TaskKey, TaskRecord, scalar_part
from tessera.control_plane.core.values import (
    AgentInfo,
    AgentState,
    CommandInfo,
    Offer,
    RoleInfo,
    TaskInfo,
    TaskState,
)
from tessera.control_plane.metrics.specs import RESOURCE_KINDS
from tessera.control_plane.runtime.metrics import _capture_state, _state_numbers


def _state() -> ClusterState:
    s = ClusterState()
    total = Resources.parse("cpus:8;mem:16384;disk:1000;gpus:1;ports:[31000-32000]")
    reserved = Resources.parse("cpus:2;mem:1024", role="db")
    used = Resources.parse("cpus:1.5;mem:512")
    offered = Resources.parse("cpus:0.25;mem:128")
    for i, agent_state in enumerate([AgentState.AGENT_ACTIVE, AgentState.AGENT_ACTIVE, AgentState.AGENT_DRAINING,
                                     AgentState.AGENT_UNREACHABLE, AgentState.AGENT_REMOVED]):
        s.agents[f"a{i}"] = AgentRecord(
            info=AgentInfo(agent_id=f"a{i}", hostname=f"h{i}", resources=total + reserved), state=agent_state,
            registered_at=0.0, total=total + reserved, used=used, offered=offered if i % 2 else Resources())
    for i, (task_state, role) in enumerate([(TaskState.TASK_RUNNING, "web"), (TaskState.TASK_STAGING, "db"),
                                            (TaskState.TASK_FINISHED, "web"), (TaskState.TASK_KILLING, "web")]):
        s.tasks[TaskKey("f", f"t{i}")] = TaskRecord(
            info=TaskInfo(task_id=f"t{i}", name="t", framework_id="f", agent_id="a0",
                          resources=Resources.parse("cpus:0.5;mem:100;ports:[31000-31001]"),
                          command=CommandInfo(value="true")),
            state=task_state, role=role, launched_at=0.0)
    s.offers["o1"] = Offer(offer_id="o1", framework_id="f", agent_id="a1", role="web", resources=offered)
    s.roles["web"] = RoleInfo(role="web", weight=3.0, quota_guarantee=Resources.parse("cpus:1"),
                              quota_limit=Resources.parse("cpus:4;mem:4096"))
    return s


def test_pool_totals_match_the_core_for_every_kind() -> None:
    s = _state()
    n = _state_numbers(_capture_state(s))
    core = s.totals()
    for kind, _, _ in RESOURCE_KINDS:
        for typ, bag in (("total", core.total), ("used", core.used), ("offered", core.offered), ("free", core.free)):
            assert n.totals.get((typ, kind), 0) == bag.milli(kind), (typ, kind)


def test_role_allocations_match_the_core() -> None:
    s = _state()
    n = _state_numbers(_capture_state(s))
    for role, bag in s.role_allocations().items():
        for kind, _, _ in RESOURCE_KINDS:
            both = sum(n.role_alloc.get((role, typ, kind), 0) for typ in ("used", "offered"))
            assert both == scalar_part(bag).milli(kind), (role, kind)
    assert n.role_weight == {"web": 3.0, "db": 1.0}
    assert n.role_quota[("web", "limit", "mem")] == 4096 * 1000
    assert ("db", "limit", "cpus") not in n.role_quota


def test_states_are_counted_by_label() -> None:
    n = _state_numbers(_capture_state(_state()))
    assert n.agents == {"active": 2, "draining": 1, "unreachable": 1, "removed": 1}
    assert n.tasks == {"running": 1, "staging": 1, "finished": 1, "killing": 1}
    assert n.offers == 1
