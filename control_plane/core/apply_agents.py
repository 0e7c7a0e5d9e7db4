"""apply of agent events: registration, reregistration, unreachable, removal, drain, undrain."""

from __future__ import annotations

from tessera.control_plane.core.apply_tx import (
    Handler,
    Tx,
    all_killed,
    check_reason,
    drop_filters,
    known_agent,
    no_offers,
)
from tessera.control_plane.core.errors import Conflict, InvalidRequest
from tessera.control_plane.core.events import (
    AgentDrainStarted,
    AgentRegistered,
    AgentRemoved,
    AgentReregistered,
    AgentUndrained,
    AgentUnreachable,
)
from tessera.control_plane.core.state import (
    MAX_ID_LENGTH,
    AgentRecord,
    ClusterState,
    TaskKey,
    check_agent_info,
    check_id,
    check_text,
    total_with_reservations,
)
from tessera.control_plane.core.values import AgentState, TaskState


def _agent_registered(state: ClusterState, e: AgentRegistered, tx: Tx) -> bool:
    aid = check_id(e.agent_id, "agent_id")
    info = check_agent_info(e.info)
    if info.agent_id != aid:
        raise InvalidRequest(f"info.agent_id {info.agent_id!r} is not the event's agent_id {aid}")
    if aid in state.agents:
        raise Conflict(f"agent {aid} is already registered")
    identity = check_text(e.identity, "identity", MAX_ID_LENGTH)
    tx.put(state.agents, aid, AgentRecord(
        info=info, state=AgentState.AGENT_ACTIVE, registered_at=tx.time, total=info.resources, identity=identity,
    ))
    return True


def _agent_reregistered(state: ClusterState, e: AgentReregistered, tx: Tx) -> bool:
    agent = known_agent(state, e.agent_id)
    aid = agent.agent_id
    info = check_agent_info(e.info)
    if info.agent_id != aid:
        raise InvalidRequest(f"info.agent_id {info.agent_id!r} is not the event's agent_id {aid}")
    if not isinstance(e.task_ids, tuple) or not isinstance(e.task_framework_ids, tuple):
        raise InvalidRequest("task_ids, task_framework_ids: must be tuples of ids")
    for task_id in e.task_ids:
        check_id(task_id, "task_ids")
    for framework_id in e.task_framework_ids:
        check_id(framework_id, "task_framework_ids")
    if e.task_framework_ids and len(e.task_framework_ids) != len(e.task_ids):
        raise InvalidRequest("task_framework_ids: one framework id per task id")
    if agent.state is AgentState.AGENT_REMOVED:
        raise Conflict(f"agent {aid} was removed")
    no_offers(f"agent {aid}", agent.offer_ids)
    # decide ended every live task the agent did not report; one still live and not reported was
    # launched after the reregistration was decided (both in flight at once): the agent never had it.
    # Entries written before task ids were scoped per framework list bare ids (`task_ids`), unique then.
    reported = {TaskKey(f, t) for f, t in zip(e.task_framework_ids, e.task_ids, strict=False)}
    legacy = set() if e.task_framework_ids else set(e.task_ids)
    for key in sorted(agent.task_keys):
        if key not in reported and key.task_id not in legacy and not state.tasks[key].terminal:
            raise Conflict(f"task {key.task_id} of framework {key.framework_id} was launched on agent {aid} "
                           "after its reregistration was decided; decide it again")
    total = total_with_reservations(info.resources, agent.reserved)
    if not total.contains(agent.used):
        raise Conflict(f"agent {aid} reports fewer resources ({info.resources}) than its tasks use")
    tx.assign(agent, "info", info)
    tx.assign(agent, "total", total)
    tx.assign(agent, "state", AgentState.AGENT_DRAINING if agent.draining else AgentState.AGENT_ACTIVE)
    tx.assign(agent, "reregistered_at", tx.time)

    def nothing_left_unreachable() -> None:
        for key in sorted(agent.task_keys):
            if state.tasks[key].state is TaskState.TASK_UNREACHABLE:
                raise Conflict(f"task {key.task_id} of framework {key.framework_id} would stay unreachable "
                               f"on reregistered agent {aid}")

    tx.post_checks.append(nothing_left_unreachable)
    return True


def _agent_unreachable(state: ClusterState, e: AgentUnreachable, tx: Tx) -> bool:
    agent = known_agent(state, e.agent_id)
    check_reason(e.reason)
    if not agent.reachable:
        raise Conflict(f"agent {agent.agent_id} is already {agent.state.name}")
    no_offers(f"agent {agent.agent_id}", agent.offer_ids)
    for key in sorted(agent.task_keys):
        task = state.tasks[key]
        if not task.terminal and task.state is not TaskState.TASK_UNREACHABLE:
            raise Conflict(f"task {key.task_id} of framework {key.framework_id} on agent {agent.agent_id} is "
                           f"still {task.state.name}")
    tx.assign(agent, "state", AgentState.AGENT_UNREACHABLE)
    tx.assign(agent, "unreachable_at", tx.time)
    return True


def _agent_removed(state: ClusterState, e: AgentRemoved, tx: Tx) -> bool:
    agent = known_agent(state, e.agent_id)
    reason = check_reason(e.reason)
    if agent.state is AgentState.AGENT_REMOVED:
        raise Conflict(f"agent {agent.agent_id} is already removed")
    no_offers(f"agent {agent.agent_id}", agent.offer_ids)
    for key in sorted(agent.task_keys):
        if not state.tasks[key].terminal:
            raise Conflict(f"task {key.task_id} of framework {key.framework_id} on agent {agent.agent_id} "
                           "has not ended")
    tx.assign(agent, "state", AgentState.AGENT_REMOVED)
    tx.assign(agent, "removed_reason", reason)
    tx.assign(agent, "draining", False)
    drop_filters(state, tx, agent_id=agent.agent_id)
    return True


def _agent_drain_started(state: ClusterState, e: AgentDrainStarted, tx: Tx) -> bool:
    agent = known_agent(state, e.agent_id)
    if agent.state is not AgentState.AGENT_ACTIVE:
        raise Conflict(f"agent {agent.agent_id} is {agent.state.name}; only an active agent can drain")
    no_offers(f"agent {agent.agent_id}", agent.offer_ids)
    tx.assign(agent, "state", AgentState.AGENT_DRAINING)
    tx.assign(agent, "draining", True)
    tx.post_checks.append(lambda: all_killed(state, agent.task_keys, f"agent {agent.agent_id}'s drain"))
    return True


def _agent_undrained(state: ClusterState, e: AgentUndrained, tx: Tx) -> bool:
    """The draining flag goes; a reachable agent is ACTIVE again (an unreachable one comes back ACTIVE
    when it reregisters)."""
    agent = known_agent(state, e.agent_id)
    if not agent.draining:
        raise Conflict(f"agent {agent.agent_id} is {agent.state.name} and not draining; nothing to undrain")
    tx.assign(agent, "draining", False)
    if agent.state is AgentState.AGENT_DRAINING:
        tx.assign(agent, "state", AgentState.AGENT_ACTIVE)
    return True


HANDLERS: dict[type, Handler] = {
    AgentRegistered: _agent_registered,
    AgentReregistered: _agent_reregistered,
    AgentUnreachable: _agent_unreachable,
    AgentRemoved: _agent_removed,
    AgentDrainStarted: _agent_drain_started,
    AgentUndrained: _agent_undrained,
}
