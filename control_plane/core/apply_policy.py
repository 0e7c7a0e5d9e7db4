"""apply of policy events: role weights, quota, and reservations (which change free resources, or those
of the offers accepted earlier in the same entry).
"""

from __future__ import annotations

from tessera.control_plane.core.apply_tx import Handler, Tx, known_agent
from tessera.control_plane.core.errors import Conflict, InvalidRequest
from tessera.control_plane.core.events import QuotaSet, ResourcesReserved, ResourcesUnreserved, RoleWeightSet
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.state import (
    MAX_WEIGHT,
    AgentRecord,
    ClusterState,
    check_number,
    check_optional_id,
    check_quota,
    check_resources,
    check_role,
)
from tessera.control_plane.core.values import AgentState, RoleInfo


def _role_weight_set(state: ClusterState, e: RoleWeightSet, tx: Tx) -> bool:
    role = check_role(e.role)
    weight = check_number(e.weight, "weight", positive=True, maximum=MAX_WEIGHT)
    current = state.roles.get(role)
    if current is None:
        tx.put(state.roles, role, RoleInfo(role, weight))
    else:
        tx.put(state.roles, role, RoleInfo(role, weight, current.quota_guarantee, current.quota_limit))
    return True


def _quota_set(state: ClusterState, e: QuotaSet, tx: Tx) -> bool:
    role = check_role(e.role)
    guarantee, limit = check_quota(e.guarantee, e.limit)
    current = state.roles.get(role)
    tx.put(state.roles, role, RoleInfo(role, current.weight if current else 1.0, guarantee, limit))
    return True


def _reservation(state: ClusterState, e: ResourcesReserved | ResourcesUnreserved) -> tuple[
    AgentRecord, str, Resources
]:
    agent = known_agent(state, e.agent_id)
    check_optional_id(e.framework_id, "framework_id")
    role = check_role(e.role)
    resources = check_resources(e.resources, "resources", allow_empty=False)
    if resources.roles() != {role}:
        raise InvalidRequest(f"resources: must all be reserved to role {role}")
    if agent.state is not AgentState.AGENT_ACTIVE:
        raise Conflict(f"agent {agent.agent_id} is {agent.state.name}")
    return agent, role, resources


def _take_from_pool(state: ClusterState, e: ResourcesReserved | ResourcesUnreserved, tx: Tx, role: str,
                    take: Resources, give: Resources) -> None:
    """Reservations change resources that are free: those of offers accepted in this entry (the pool of
    the Accept) or, without an Accept, resources nobody uses or is offered."""
    pool = tx.pools.get((e.framework_id, e.agent_id))
    if pool is not None:
        if pool[0] != role:
            raise InvalidRequest(f"role {role} is not the role {pool[0]} of the accepted offers")
        if not pool[1].contains(take):
            raise Conflict(f"{take} is not in the accepted offers")
        pool[1] = pool[1] - take + give
    elif not state.agent_free(e.agent_id).contains(take):
        raise Conflict(f"{take} is not free on agent {e.agent_id}")


def _resources_reserved(state: ClusterState, e: ResourcesReserved, tx: Tx) -> bool:
    agent, role, resources = _reservation(state, e)
    flat = resources.flatten()
    _take_from_pool(state, e, tx, role, flat, resources)
    tx.assign(agent, "total", agent.total - flat + resources)
    tx.assign(agent, "reserved", agent.reserved + resources)
    return True


def _resources_unreserved(state: ClusterState, e: ResourcesUnreserved, tx: Tx) -> bool:
    agent, role, resources = _reservation(state, e)
    if not agent.reserved.contains(resources):
        raise Conflict(f"{resources} is not dynamically reserved on agent {agent.agent_id}")
    flat = resources.flatten()
    _take_from_pool(state, e, tx, role, resources, flat)
    tx.assign(agent, "total", agent.total - resources + flat)
    tx.assign(agent, "reserved", agent.reserved - resources)
    return True


HANDLERS: dict[type, Handler] = {
    RoleWeightSet: _role_weight_set,
    QuotaSet: _quota_set,
    ResourcesReserved: _resources_reserved,
    ResourcesUnreserved: _resources_unreserved,
}
