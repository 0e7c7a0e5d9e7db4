"""decide of agent commands: registration and reregistration (with the certificate check that only the
identity an agent registered with may speak for it), unreachable, removal, drain and undrain.
"""

from __future__ import annotations

from dataclasses import replace

from tessera.control_plane.core import commands as c
from tessera.control_plane.core.context import Context
from tessera.control_plane.core.decide_shared import (
    Decider,
    context_time,
    known_agent,
    live_tasks,
    master_status,
    new_id,
    partition_aware,
    rescind,
)
from tessera.control_plane.core.errors import Conflict, InvalidRequest, PermissionDenied
from tessera.control_plane.core.events import (
    AgentDrainStarted,
    AgentRegistered,
    AgentRemoved,
    AgentReregistered,
    AgentUndrained,
    AgentUnreachable,
    Event,
    TaskKillRequested,
    TaskStatusUpdated,
)
from tessera.control_plane.core.lifecycle import can_transition, is_terminal
from tessera.control_plane.core.limits import check_agent_size
from tessera.control_plane.core.resources import EMPTY
from tessera.control_plane.core.state import (
    MAX_ID_LENGTH,
    AgentRecord,
    ClusterState,
    TaskKey,
    check_agent_info,
    check_task_status,
    check_text,
    total_with_reservations,
)
from tessera.control_plane.core.values import AgentState, TaskState, TaskStatus


def _register_agent(state: ClusterState, cmd: c.RegisterAgent, ctx: Context) -> tuple[Event, ...]:
    info = check_agent_info(cmd.info)
    check_agent_size(info)
    if info.agent_id:
        raise InvalidRequest("info.agent_id: a new agent has no id yet; an agent with an id reregisters")
    identity = check_text(cmd.identity, "identity", MAX_ID_LENGTH)
    agent_id = new_id(ctx, "agent", state.agents)
    return (AgentRegistered(agent_id, replace(info, agent_id=agent_id), identity),)


def check_agent_identity(agent: AgentRecord, identity: object, doing: str) -> None:
    """Only the certificate an agent registered with may speak for it (an empty identity: registered
    without TLS, in development mode, and then only an empty identity matches). Raises PermissionDenied.
    Also used by the agent link for what is answered without deciding (a retried registration)."""
    if check_text(identity, "identity", MAX_ID_LENGTH) != agent.identity:
        raise PermissionDenied(f"{doing} for agent {agent.agent_id}: it registered with another certificate "
                               "identity (urn:tessera:agent:<name>)")


def _reregister_agent(state: ClusterState, cmd: c.ReregisterAgent, ctx: Context) -> tuple[Event, ...]:
    """Rescind the agent's offers; tasks it no longer has end (LOST, or for partition-aware frameworks
    DROPPED if never started / GONE); tasks it reports take the reported state. Tasks the master already
    holds terminal are left alone: the shell kills them on the agent."""
    agent = known_agent(state, cmd.agent_id)
    aid = agent.agent_id
    check_agent_identity(agent, cmd.identity, "reregistration")
    if agent.state is AgentState.AGENT_REMOVED:
        raise Conflict(f"agent {aid} was removed ({agent.removed_reason or 'no reason'}); register anew")
    info = check_agent_info(cmd.info)
    check_agent_size(info)
    if info.agent_id not in ("", aid):
        raise InvalidRequest(f"info.agent_id: {info.agent_id} does not match agent_id {aid}")
    info = replace(info, agent_id=aid)
    if not isinstance(cmd.tasks, tuple):
        raise InvalidRequest("tasks: must be a tuple of task statuses")
    reported: dict[TaskKey, TaskStatus] = {}
    for status in cmd.tasks:
        check_task_status(status, "tasks[]")
        if status.agent_id not in ("", aid):
            raise InvalidRequest(f"tasks: task {status.task_id} is reported for agent {status.agent_id}")
        if status.state is TaskState.TASK_UNREACHABLE:
            raise InvalidRequest(f"tasks: an agent cannot report task {status.task_id} unreachable")
        key = reported_key(state, agent, status, ambiguous_ok=True)
        if key is None:
            # a bare id the master does not hold on this agent, or holds for several frameworks (an agent
            # of an earlier version cannot run both): not recognised, and the shell has it killed
            continue
        if key in reported:
            raise InvalidRequest(f"tasks: task {status.task_id} is reported twice")
        reported[key] = status

    endings: list[Event] = []  # before AgentReregistered: they free resources
    resumed: list[Event] = []  # after it: the agent is reachable again
    released = EMPTY
    for task in live_tasks(state.tasks_on_agent(aid)):
        seen = reported.get(task.key)
        event: TaskStatusUpdated | None = None
        if seen is not None and seen.state != task.state and can_transition(task.state, seen.state):
            if seen.uuid and seen.uuid not in task.applied_uuids:
                # the agent's own update: recording it under its uuid makes the agent's retry a no-op
                timestamp = seen.timestamp or context_time(ctx)
                event = TaskStatusUpdated(task.task_id, task.framework_id, aid, replace(
                    seen, agent_id=aid, framework_id=task.framework_id, timestamp=timestamp))
            else:
                event = master_status(ctx, task, seen.state, "REASON_AGENT_REREGISTERED",
                                       f"agent {aid} reregistered and reports the task {seen.state.name}")
        elif seen is None or task.state is TaskState.TASK_UNREACHABLE:
            # the agent does not have it (or reports a state an unreachable task cannot take): it is gone
            if not partition_aware(state, task):
                new_state = TaskState.TASK_LOST
            elif task.state is TaskState.TASK_STAGING:
                new_state = TaskState.TASK_DROPPED
            else:
                new_state = TaskState.TASK_GONE
            event = master_status(ctx, task, new_state, "REASON_AGENT_REREGISTERED",
                                   f"agent {aid} reregistered without the task")
        if event is None:
            continue
        if is_terminal(event.status.state):
            endings.append(event)
            released = released + task.resources
        else:
            resumed.append(event)

    total = total_with_reservations(info.resources, agent.reserved)
    if not total.contains(agent.used - released):
        raise Conflict(f"agent {aid} reports fewer resources ({info.resources}) than its tasks use")
    keys = sorted(reported)
    return (
        *rescind(state.offers_on_agent(aid), "agent reregistered"),
        *endings,
        AgentReregistered(aid, info, tuple(k.task_id for k in keys), tuple(k.framework_id for k in keys)),
        *resumed,
    )


def reported_key(state: ClusterState, agent: AgentRecord, status: TaskStatus, *,
                  ambiguous_ok: bool = False) -> TaskKey | None:
    """The task an agent's status is about. Task ids are scoped per framework, so the status names its
    framework; an agent of an earlier version sends a bare id, which names the one task of that id the
    master holds on this agent (None when it holds none; several of them: None when `ambiguous_ok`,
    else an error)."""
    if status.framework_id:
        return TaskKey(status.framework_id, status.task_id)
    found = [k for k in agent.task_keys if k.task_id == status.task_id]
    if len(found) > 1 and ambiguous_ok:
        return None
    if len(found) > 1:
        raise InvalidRequest(f"task {status.task_id}: status.framework_id is needed, several frameworks run "
                             f"a task of that id on agent {agent.agent_id}")
    return found[0] if found else None


def _mark_agent_unreachable(
    state: ClusterState, cmd: c.MarkAgentUnreachable, ctx: Context
) -> tuple[Event, ...]:
    agent = known_agent(state, cmd.agent_id)
    reason = check_text(cmd.reason, "reason")
    if agent.state is AgentState.AGENT_UNREACHABLE:
        return ()
    if agent.state is AgentState.AGENT_REMOVED:
        raise Conflict(f"agent {agent.agent_id} was removed")
    statuses: list[Event] = []
    for task in live_tasks(state.tasks_on_agent(agent.agent_id)):
        new_state = TaskState.TASK_UNREACHABLE if partition_aware(state, task) else TaskState.TASK_LOST
        statuses.append(master_status(ctx, task, new_state, "REASON_AGENT_UNREACHABLE",
                                       reason or f"agent {agent.agent_id} is unreachable"))
    return (
        *rescind(state.offers_on_agent(agent.agent_id), "agent unreachable"),
        *statuses,
        AgentUnreachable(agent.agent_id, reason),
    )


def _remove_agent(state: ClusterState, cmd: c.RemoveAgent, ctx: Context) -> tuple[Event, ...]:
    agent = known_agent(state, cmd.agent_id)
    reason = check_text(cmd.reason, "reason")
    if agent.state is AgentState.AGENT_REMOVED:
        return ()
    statuses: list[Event] = []
    for task in live_tasks(state.tasks_on_agent(agent.agent_id)):
        new_state = TaskState.TASK_GONE if partition_aware(state, task) else TaskState.TASK_LOST
        statuses.append(master_status(ctx, task, new_state, "REASON_AGENT_REMOVED",
                                       reason or f"agent {agent.agent_id} was removed"))
    return (
        *rescind(state.offers_on_agent(agent.agent_id), "agent removed"),
        *statuses,
        AgentRemoved(agent.agent_id, reason),
    )


def _drain_agent(state: ClusterState, cmd: c.DrainAgent, ctx: Context) -> tuple[Event, ...]:
    agent = known_agent(state, cmd.agent_id)
    if agent.state is AgentState.AGENT_DRAINING:
        return ()
    if agent.state is not AgentState.AGENT_ACTIVE:
        raise Conflict(f"agent {agent.agent_id} is {agent.state.name}; only an active agent can be drained")
    kills: list[Event] = [
        TaskKillRequested(t.task_id, t.framework_id, t.agent_id, t.info.kill_grace_period_seconds)
        for t in live_tasks(state.tasks_on_agent(agent.agent_id))
    ]
    return (
        *rescind(state.offers_on_agent(agent.agent_id), "agent draining"),
        AgentDrainStarted(agent.agent_id),
        *kills,
    )


def _undrain_agent(state: ClusterState, cmd: c.UndrainAgent, ctx: Context) -> tuple[Event, ...]:
    """Offer a draining agent again: the drain's kills were sent and stand (its tasks end anyway), only
    new offers resume. An agent that is not draining is left as it is; a removed one cannot come back."""
    agent = known_agent(state, cmd.agent_id)
    if agent.state is AgentState.AGENT_REMOVED:
        raise Conflict(f"agent {agent.agent_id} was removed ({agent.removed_reason or 'no reason'}); it cannot be "
                       "undrained")
    if not agent.draining:
        return ()
    return (AgentUndrained(agent.agent_id),)


DECIDERS: dict[type, Decider] = {
    c.RegisterAgent: _register_agent,
    c.ReregisterAgent: _reregister_agent,
    c.MarkAgentUnreachable: _mark_agent_unreachable,
    c.RemoveAgent: _remove_agent,
    c.DrainAgent: _drain_agent,
    c.UndrainAgent: _undrain_agent,
}
