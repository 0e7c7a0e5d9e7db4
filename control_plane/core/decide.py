"""decide: turn one command into the events that carry it out, or refuse it with a domain error.

`decide(state, command, ctx) -> tuple[Event, ...]` runs on the leader only. It reads `state` (never
mutates it), validates the command and returns the events to commit atomically in one entry. Every
value the events need that is not in the command (new ids, uuids, deadlines, refuse-until times) comes
from `ctx` and is written into the events, so `apply` decides nothing.

Errors (from `tessera.control_plane.core.errors`):
- `InvalidRequest`: malformed input: empty, oversized or non-ASCII ids, negative / NaN / infinite numbers,
  resources not in normal form, weight <= 0, a role the framework did not subscribe with, operations
  that do not make sense (a RESERVE with tasks, offers of one accept spread over agents or roles), a task
  over the size caps of `core.limits` (argument count and length, environment, labels, resources, the
  whole task, the tasks of one accept), a failover timeout above `MAX_FAILOVER_TIMEOUT` (one week), too
  many roles for a framework or attributes and resource entries for an agent.
- `NotFound`: an id that names nothing (agent, framework, task, offer, status uuid).
- `Conflict`: valid, but the state forbids it now: an offer that is gone (rescinded, declined, used,
  expired) or belongs to another framework, a duplicate task id, tasks that do not fit their offers,
  a stream id that is not current, an agent or framework in the wrong state.
- `ResourceExhausted`: a new framework or new tasks beyond the principal's limits (`ctx.limits`).

An empty tuple means "already done": the request is an idempotent retry (a status update already
recorded, a kill of a finished task, a rescind of an offer already gone). The caller replies success
without committing anything.

Master-generated task statuses (agent lost, removed, reregistered) get a fresh uuid from `ctx` so that
frameworks acknowledge them like agent updates, as in Mesos.

Events are emitted in the order `apply` needs them: offers are rescinded before the agent or framework
they belong to changes state, tasks reach terminal states before an agent is removed, offers are
accepted before the operations that use them.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import replace
from typing import Any

from tessera.control_plane.core import commands as c
from tessera.control_plane.core.context import Context
from tessera.control_plane.core.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from tessera.control_plane.core.events import (
    AgentDrainStarted,
    AgentRegistered,
    AgentRemoved,
    AgentReregistered,
    AgentUnreachable,
    Event,
    FrameworkDisconnected,
    FrameworkRemoved,
    FrameworkRevived,
    FrameworkSubscribed,
    FrameworkSuppressed,
    LeaderElected,
    MasterAdded,
    MasterRemoved,
    OfferAccepted,
    OfferDeclined,
    OfferIssued,
    OfferRescinded,
    QuotaSet,
    ResourcesReserved,
    ResourcesUnreserved,
    RoleWeightSet,
    TaskKillRequested,
    TaskLaunched,
    TaskStatusAcknowledged,
    TaskStatusUpdated,
)
from tessera.control_plane.core.lifecycle import can_transition, is_terminal
from tessera.control_plane.core.limits import (
    check_agent_size,
    check_framework_size,
    check_launch_size,
    check_principal_frameworks,
    check_principal_tasks,
)
from tessera.control_plane.core.resources import EMPTY, Resources
from tessera.control_plane.core.state import (
    DEFAULT_REFUSE_SECONDS,
    MAX_ID_LENGTH,
    MAX_REFUSE_SECONDS,
    MAX_TIME,
    MAX_WEIGHT,
    AgentRecord,
    ClusterState,
    FrameworkRecord,
    TaskKey,
    TaskRecord,
    check_agent_info,
    check_framework_info,
    check_id,
    check_labels,
    check_number,
    check_optional_id,
    check_quota,
    check_resources,
    check_role,
    check_roles,
    check_task_info,
    check_task_status,
    check_text,
    check_working_dir,
    total_with_reservations,
)
from tessera.control_plane.core.values import (
    AgentState,
    FrameworkState,
    Offer,
    StatusSource,
    TaskState,
    TaskStatus,
)

__all__ = ["decide"]

_Decider = Callable[[ClusterState, Any, Context], tuple[Event, ...]]


def decide(state: ClusterState, command: c.Command, ctx: Context) -> tuple[Event, ...]:
    """The events that carry out `command` now, or a domain error. Never mutates `state`."""
    decider = _DECIDERS.get(type(command))
    if decider is None:
        raise InvalidRequest(f"unknown command {type(command).__name__}")
    return decider(state, command, ctx)


# ---- lookups -------------------------------------------------------------------------------------
def _agent(state: ClusterState, agent_id: object) -> AgentRecord:
    aid = check_id(agent_id, "agent_id")
    agent = state.agents.get(aid)
    if agent is None:
        raise NotFound(f"agent {aid} is not known")
    return agent


def _framework(state: ClusterState, framework_id: object) -> FrameworkRecord:
    fid = check_id(framework_id, "framework_id")
    fw = state.frameworks.get(fid)
    if fw is None:
        raise NotFound(f"framework {fid} is not known")
    return fw


def _framework_call(state: ClusterState, framework_id: object, stream_id: object) -> FrameworkRecord:
    """The framework making a scheduler call: it must not be removed, and a given stream must be current."""
    fw = _framework(state, framework_id)
    sid = check_optional_id(stream_id, "stream_id")
    if fw.state is FrameworkState.FRAMEWORK_REMOVED:
        raise Conflict(f"framework {fw.framework_id} was removed ({fw.removed_reason or 'no reason'})")
    if sid and sid != fw.stream_id:
        raise Conflict(f"stream {sid} is not the current stream of framework {fw.framework_id}")
    return fw


def _live_offer(state: ClusterState, offer_id: str, framework_id: str) -> Offer:
    offer = state.offers.get(offer_id)
    if offer is None:
        why = state.retired_offers.get(offer_id)
        if why is not None:
            raise Conflict(f"offer {offer_id} is no longer valid: {why}")
        raise NotFound(f"offer {offer_id} is not known")
    if offer.framework_id != framework_id:
        raise Conflict(f"offer {offer_id} was made to another framework")
    return offer


def _offer_ids(value: object) -> tuple[str, ...]:
    if not isinstance(value, tuple) or not value:
        raise InvalidRequest("offer_ids: give at least one offer id")
    ids = tuple(check_id(o, "offer_ids") for o in value)
    if len(set(ids)) != len(ids):
        raise InvalidRequest("offer_ids: an offer is named twice")
    return ids


def _new_id(ctx: Context, prefix: str, taken: Container[str]) -> str:
    """A fresh id from the context; a collision is the id source's bug, refused rather than recorded."""
    new = ctx.new_id(prefix)
    check_id(new, f"new {prefix} id")
    if new in taken:
        raise Conflict(f"the id source returned {new!r}, which is already in use")
    return new


def _now(ctx: Context) -> float:
    return check_number(ctx.now, "ctx.now", maximum=MAX_TIME)


def _refuse_until(ctx: Context, refuse_seconds: object, *, default: float) -> float:
    seconds = check_number(refuse_seconds, "refuse_seconds", maximum=float("inf")) or default
    return _now(ctx) + min(seconds, MAX_REFUSE_SECONDS)


def _master_status(
    ctx: Context, task: TaskRecord, state: TaskState, reason: str, message: str
) -> TaskStatusUpdated:
    """A status the master generates for a task (agent lost, removed...), acknowledgeable like any other."""
    status = TaskStatus(
        task_id=task.task_id, state=state, message=message, reason=reason, source=StatusSource.SOURCE_MASTER,
        agent_id=task.agent_id, uuid=ctx.new_id("status"), timestamp=_now(ctx), framework_id=task.framework_id,
    )
    check_id(status.uuid, "new status uuid")
    return TaskStatusUpdated(task.task_id, task.framework_id, task.agent_id, status)


def _partition_aware(state: ClusterState, task: TaskRecord) -> bool:
    fw = state.frameworks.get(task.framework_id)
    return fw is not None and fw.state is not FrameworkState.FRAMEWORK_REMOVED and fw.info.partition_aware


def _rescind(offers: list[Offer], reason: str) -> list[Event]:
    return [OfferRescinded(o.offer_id, o.framework_id, o.agent_id, reason) for o in offers]


def _live_tasks(tasks: list[TaskRecord]) -> list[TaskRecord]:
    return [t for t in tasks if not t.terminal]


# ---- cluster -------------------------------------------------------------------------------------
def _elect_leader(state: ClusterState, cmd: c.ElectLeader, ctx: Context) -> tuple[Event, ...]:
    if isinstance(cmd.term, bool) or not isinstance(cmd.term, int) or cmd.term < 1:
        raise InvalidRequest(f"term: must be a positive integer, got {cmd.term!r}")
    master = check_id(cmd.master, "master")
    grpc = check_text(cmd.grpc_address, "grpc_address", MAX_ID_LENGTH)
    name = check_text(cmd.name, "name", MAX_ID_LENGTH)
    if cmd.term < state.term:
        raise Conflict(f"term {cmd.term} is older than the current term {state.term}")
    if cmd.term == state.term:
        if master != state.leader:
            raise Conflict(f"term {cmd.term} already has a leader, {state.leader}")
        if (grpc, name) == (state.leader_grpc, state.leader_name):
            return ()
    return (LeaderElected(cmd.term, master, grpc, name),)


def _announce_master(state: ClusterState, cmd: c.AnnounceMaster, ctx: Context) -> tuple[Event, ...]:
    name = check_text(cmd.name, "name", MAX_ID_LENGTH)
    raft = check_id(cmd.raft_address, "raft_address")
    grpc = check_id(cmd.grpc_address, "grpc_address")
    if state.masters.get(raft) == (name, grpc):
        return ()
    return (MasterAdded(name, raft, grpc),)


def _remove_master(state: ClusterState, cmd: c.RemoveMaster, ctx: Context) -> tuple[Event, ...]:
    raft = check_id(cmd.raft_address, "raft_address")
    if raft not in state.masters:
        raise NotFound(f"master {raft} is not known")
    if raft == state.leader:
        raise Conflict(f"master {raft} is the leader; transfer leadership first")
    return (MasterRemoved(raft),)


# ---- policy --------------------------------------------------------------------------------------
def _set_role_weight(state: ClusterState, cmd: c.SetRoleWeight, ctx: Context) -> tuple[Event, ...]:
    role = check_role(cmd.role)
    weight = check_number(cmd.weight, "weight", positive=True, maximum=MAX_WEIGHT)
    return (RoleWeightSet(role, weight),)


def _set_quota(state: ClusterState, cmd: c.SetQuota, ctx: Context) -> tuple[Event, ...]:
    role = check_role(cmd.role)
    guarantee, limit = check_quota(cmd.guarantee, cmd.limit)
    return (QuotaSet(role, guarantee, limit),)


# ---- agents --------------------------------------------------------------------------------------
def _register_agent(state: ClusterState, cmd: c.RegisterAgent, ctx: Context) -> tuple[Event, ...]:
    info = check_agent_info(cmd.info)
    check_agent_size(info)
    if info.agent_id:
        raise InvalidRequest("info.agent_id: a new agent has no id yet; an agent with an id reregisters")
    identity = check_text(cmd.identity, "identity", MAX_ID_LENGTH)
    agent_id = _new_id(ctx, "agent", state.agents)
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
    agent = _agent(state, cmd.agent_id)
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
        key = _reported_key(state, agent, status, ambiguous_ok=True)
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
    for task in _live_tasks(state.tasks_on_agent(aid)):
        seen = reported.get(task.key)
        event: TaskStatusUpdated | None = None
        if seen is not None and seen.state != task.state and can_transition(task.state, seen.state):
            if seen.uuid and seen.uuid not in task.applied_uuids:
                # the agent's own update: recording it under its uuid makes the agent's retry a no-op
                timestamp = seen.timestamp or _now(ctx)
                event = TaskStatusUpdated(task.task_id, task.framework_id, aid, replace(
                    seen, agent_id=aid, framework_id=task.framework_id, timestamp=timestamp))
            else:
                event = _master_status(ctx, task, seen.state, "REASON_AGENT_REREGISTERED",
                                       f"agent {aid} reregistered and reports the task {seen.state.name}")
        elif seen is None or task.state is TaskState.TASK_UNREACHABLE:
            # the agent does not have it (or reports a state an unreachable task cannot take): it is gone
            if not _partition_aware(state, task):
                new_state = TaskState.TASK_LOST
            elif task.state is TaskState.TASK_STAGING:
                new_state = TaskState.TASK_DROPPED
            else:
                new_state = TaskState.TASK_GONE
            event = _master_status(ctx, task, new_state, "REASON_AGENT_REREGISTERED",
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
        *_rescind(state.offers_on_agent(aid), "agent reregistered"),
        *endings,
        AgentReregistered(aid, info, tuple(k.task_id for k in keys), tuple(k.framework_id for k in keys)),
        *resumed,
    )


def _reported_key(state: ClusterState, agent: AgentRecord, status: TaskStatus, *,
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
    agent = _agent(state, cmd.agent_id)
    reason = check_text(cmd.reason, "reason")
    if agent.state is AgentState.AGENT_UNREACHABLE:
        return ()
    if agent.state is AgentState.AGENT_REMOVED:
        raise Conflict(f"agent {agent.agent_id} was removed")
    statuses: list[Event] = []
    for task in _live_tasks(state.tasks_on_agent(agent.agent_id)):
        new_state = TaskState.TASK_UNREACHABLE if _partition_aware(state, task) else TaskState.TASK_LOST
        statuses.append(_master_status(ctx, task, new_state, "REASON_AGENT_UNREACHABLE",
                                       reason or f"agent {agent.agent_id} is unreachable"))
    return (
        *_rescind(state.offers_on_agent(agent.agent_id), "agent unreachable"),
        *statuses,
        AgentUnreachable(agent.agent_id, reason),
    )


def _remove_agent(state: ClusterState, cmd: c.RemoveAgent, ctx: Context) -> tuple[Event, ...]:
    agent = _agent(state, cmd.agent_id)
    reason = check_text(cmd.reason, "reason")
    if agent.state is AgentState.AGENT_REMOVED:
        return ()
    statuses: list[Event] = []
    for task in _live_tasks(state.tasks_on_agent(agent.agent_id)):
        new_state = TaskState.TASK_GONE if _partition_aware(state, task) else TaskState.TASK_LOST
        statuses.append(_master_status(ctx, task, new_state, "REASON_AGENT_REMOVED",
                                       reason or f"agent {agent.agent_id} was removed"))
    return (
        *_rescind(state.offers_on_agent(agent.agent_id), "agent removed"),
        *statuses,
        AgentRemoved(agent.agent_id, reason),
    )


def _drain_agent(state: ClusterState, cmd: c.DrainAgent, ctx: Context) -> tuple[Event, ...]:
    agent = _agent(state, cmd.agent_id)
    if agent.state is AgentState.AGENT_DRAINING:
        return ()
    if agent.state is not AgentState.AGENT_ACTIVE:
        raise Conflict(f"agent {agent.agent_id} is {agent.state.name}; only an active agent can be drained")
    kills: list[Event] = [
        TaskKillRequested(t.task_id, t.framework_id, t.agent_id, t.info.kill_grace_period_seconds)
        for t in _live_tasks(state.tasks_on_agent(agent.agent_id))
    ]
    return (
        *_rescind(state.offers_on_agent(agent.agent_id), "agent draining"),
        AgentDrainStarted(agent.agent_id),
        *kills,
    )


# ---- frameworks ----------------------------------------------------------------------------------
def _principal_frameworks(state: ClusterState, principal: str) -> list[FrameworkRecord]:
    """The frameworks of `principal` that are not removed."""
    return [fw for fw in state.frameworks.values()
            if fw.info.principal == principal and fw.state is not FrameworkState.FRAMEWORK_REMOVED]


def _subscribe_framework(state: ClusterState, cmd: c.SubscribeFramework, ctx: Context) -> tuple[Event, ...]:
    info = check_framework_info(cmd.info)
    check_framework_size(info)
    taken_streams = {fw.stream_id for fw in state.frameworks.values()}
    if not info.framework_id:
        check_principal_frameworks(info.principal, len(_principal_frameworks(state, info.principal)), ctx.limits)
        framework_id = _new_id(ctx, "framework", state.frameworks)
        stream_id = _new_id(ctx, "stream", taken_streams)
        return (FrameworkSubscribed(framework_id, replace(info, framework_id=framework_id), stream_id, False),)
    fw = _framework(state, info.framework_id)
    if fw.state is FrameworkState.FRAMEWORK_REMOVED:
        raise Conflict(f"framework {fw.framework_id} was removed ({fw.removed_reason}); subscribe anew")
    if info.principal != fw.info.principal:
        raise Conflict(f"framework {fw.framework_id} subscribed as principal {fw.info.principal!r}")
    stream_id = _new_id(ctx, "stream", taken_streams)
    return (
        *_rescind(state.offers_of_framework(fw.framework_id), "framework resubscribed"),
        FrameworkSubscribed(fw.framework_id, info, stream_id, True),
    )


def _disconnect_framework(
    state: ClusterState, cmd: c.DisconnectFramework, ctx: Context
) -> tuple[Event, ...]:
    fw = _framework(state, cmd.framework_id)
    stream_id = check_optional_id(cmd.stream_id, "stream_id")
    if fw.state is FrameworkState.FRAMEWORK_REMOVED:
        raise Conflict(f"framework {fw.framework_id} was removed")
    if fw.state is FrameworkState.FRAMEWORK_DISCONNECTED or (stream_id and stream_id != fw.stream_id):
        return ()  # already disconnected, or an old stream closing after the framework reconnected
    deadline = _now(ctx) + fw.info.failover_timeout_seconds
    return (
        *_rescind(state.offers_of_framework(fw.framework_id), "framework disconnected"),
        FrameworkDisconnected(fw.framework_id, deadline, fw.stream_id),
    )


def _removal(state: ClusterState, fw: FrameworkRecord, reason: str) -> list[Event]:
    """Rescind the framework's offers, ask for its live tasks to be killed, remove it."""
    kills: list[Event] = [
        TaskKillRequested(t.task_id, t.framework_id, t.agent_id, t.info.kill_grace_period_seconds)
        for t in _live_tasks(state.tasks_of_framework(fw.framework_id))
    ]
    return [
        *_rescind(state.offers_of_framework(fw.framework_id), "framework removed"),
        *kills,
        FrameworkRemoved(fw.framework_id, reason),
    ]


def _remove_framework(state: ClusterState, cmd: c.RemoveFramework, ctx: Context) -> tuple[Event, ...]:
    fw = _framework(state, cmd.framework_id)
    reason = check_text(cmd.reason, "reason")
    if fw.state is FrameworkState.FRAMEWORK_REMOVED:
        return ()
    return tuple(_removal(state, fw, reason or "removed by operator"))


def _teardown(state: ClusterState, cmd: c.Teardown, ctx: Context) -> tuple[Event, ...]:
    fw = _framework(state, cmd.framework_id)
    if fw.state is FrameworkState.FRAMEWORK_REMOVED:
        return ()
    _framework_call(state, cmd.framework_id, cmd.stream_id)
    return tuple(_removal(state, fw, "teardown requested by the framework"))


def _call_roles(fw: FrameworkRecord, roles: object) -> tuple[str, ...]:
    """Roles named in a scheduler call, which must be the framework's own; empty means all of them."""
    named = check_roles(roles)
    unknown = [r for r in named if r not in fw.info.roles]
    if unknown:
        raise InvalidRequest(f"roles: framework {fw.framework_id} is not subscribed to {', '.join(unknown)}")
    return named or fw.info.roles


def _suppress(state: ClusterState, cmd: c.Suppress, ctx: Context) -> tuple[Event, ...]:
    fw = _framework_call(state, cmd.framework_id, cmd.stream_id)
    roles = _call_roles(fw, cmd.roles)
    if set(roles) <= fw.suppressed_roles:
        return ()
    return (FrameworkSuppressed(fw.framework_id, roles),)


def _revive(state: ClusterState, cmd: c.Revive, ctx: Context) -> tuple[Event, ...]:
    fw = _framework_call(state, cmd.framework_id, cmd.stream_id)
    roles = _call_roles(fw, cmd.roles)
    has_filters = any(key[0] == fw.framework_id for key in state.decline_filters)
    if not (set(roles) & fw.suppressed_roles) and not has_filters:
        return ()
    return (FrameworkRevived(fw.framework_id, roles),)


# ---- offers ----------------------------------------------------------------------------------------
def _issue_offers(state: ClusterState, cmd: c.IssueOffers, ctx: Context) -> tuple[Event, ...]:
    if not isinstance(cmd.offers, tuple):
        raise InvalidRequest("offers: must be a tuple of offers")
    now = _now(ctx)
    free: dict[str, Resources] = {}
    new_ids: set[str] = set()
    events: list[Event] = []
    for offer in cmd.offers:
        if not isinstance(offer, Offer):
            raise InvalidRequest("offers: must be a tuple of offers")
        if offer.offer_id:
            offer_id = check_id(offer.offer_id, "offer_id")
            if offer_id in state.offers or offer_id in state.retired_offers or offer_id in new_ids:
                raise Conflict(f"offer id {offer_id} is already used")
        else:
            offer_id = _new_id(ctx, "offer", new_ids)
            if offer_id in state.offers or offer_id in state.retired_offers:
                raise Conflict(f"the id source returned {offer_id!r}, which is already in use")
        new_ids.add(offer_id)
        fw = _framework(state, offer.framework_id)
        agent = _agent(state, offer.agent_id)
        fid, aid = fw.framework_id, agent.agent_id
        if fw.state is not FrameworkState.FRAMEWORK_CONNECTED:
            raise Conflict(f"framework {fid} is {fw.state.name}; only connected frameworks get offers")
        if agent.state is not AgentState.AGENT_ACTIVE:
            raise Conflict(f"agent {aid} is {agent.state.name}; only active agents are offered")
        role = check_role(offer.role, "offer.role")
        if role not in fw.info.roles:
            raise InvalidRequest(f"offer.role: framework {fid} is not subscribed to role {role}")
        if role in fw.suppressed_roles:
            raise Conflict(f"framework {fid} suppressed offers for role {role}")
        resources = check_resources(offer.resources, "offer.resources", allow_empty=False)
        if resources.allocatable_to(role) != resources:
            raise InvalidRequest(f"offer.resources: contain resources reserved to a role other than {role}")
        expires_at = check_number(offer.expires_at, "offer.expires_at", maximum=MAX_TIME)
        if expires_at and expires_at <= now:
            raise InvalidRequest(f"offer.expires_at: {expires_at} is not in the future")
        if state.is_filtered(fid, aid, now):
            raise Conflict(f"framework {fid} declined agent {aid} until {state.refused_until(fid, aid)}")
        available = free[aid] if aid in free else state.agent_free(aid)
        if not available.contains(resources):
            raise Conflict(f"offer of {resources} does not fit what is free on agent {aid} ({available})")
        free[aid] = available - resources
        hostname = check_text(offer.hostname, "offer.hostname", MAX_ID_LENGTH) or agent.info.hostname
        attributes = check_labels(offer.attributes, "offer.attributes") or agent.info.attributes
        issued = replace(offer, offer_id=offer_id, framework_id=fid, agent_id=aid, hostname=hostname,
                         role=role, attributes=attributes, expires_at=expires_at)
        events.append(OfferIssued(offer_id, fid, aid, issued))
    return tuple(events)


def _decline(state: ClusterState, cmd: c.Decline, ctx: Context) -> tuple[Event, ...]:
    fw = _framework_call(state, cmd.framework_id, cmd.stream_id)
    offers = [_live_offer(state, oid, fw.framework_id) for oid in _offer_ids(cmd.offer_ids)]
    until = _refuse_until(ctx, cmd.refuse_seconds, default=DEFAULT_REFUSE_SECONDS)
    return tuple(OfferDeclined(o.offer_id, o.framework_id, o.agent_id, until) for o in offers)


def _rescind_offer(state: ClusterState, cmd: c.RescindOffer, ctx: Context) -> tuple[Event, ...]:
    offer_id = check_id(cmd.offer_id, "offer_id")
    reason = check_text(cmd.reason, "reason")
    offer = state.offers.get(offer_id)
    if offer is None:
        if offer_id in state.retired_offers:
            return ()
        raise NotFound(f"offer {offer_id} is not known")
    return (OfferRescinded(offer_id, offer.framework_id, offer.agent_id, reason or "rescinded"),)


def _expire_offers(state: ClusterState, cmd: c.ExpireOffers, ctx: Context) -> tuple[Event, ...]:
    now = _now(ctx)
    return tuple(
        OfferRescinded(o.offer_id, o.framework_id, o.agent_id, "offer expired")
        for _, o in sorted(state.offers.items())
        if o.expires_at and o.expires_at <= now
    )


def _accept(state: ClusterState, cmd: c.Accept, ctx: Context) -> tuple[Event, ...]:
    fw = _framework_call(state, cmd.framework_id, cmd.stream_id)
    fid = fw.framework_id
    if fw.state is not FrameworkState.FRAMEWORK_CONNECTED:
        raise Conflict(f"framework {fid} is {fw.state.name}")
    operations = cmd.operations if isinstance(cmd.operations, tuple) else ()
    launching = [(f"operations[{n}].tasks[{i}]", task) for n, op in enumerate(operations)
                 if isinstance(op, c.Operation) and op.type == "LAUNCH" and isinstance(op.tasks, tuple)
                 for i, task in enumerate(op.tasks)]
    if launching:
        # the size caps first: an oversized task is refused whatever its offers, ids and resources
        check_launch_size(((what, check_task_info(task, what)) for what, task in launching), "operations")
        tracked = sum(len(f.task_ids) for f in _principal_frameworks(state, fw.info.principal))
        check_principal_tasks(fw.info.principal, tracked, len(launching), ctx.limits)
    offers = [_live_offer(state, oid, fid) for oid in _offer_ids(cmd.offer_ids)]
    if len({o.agent_id for o in offers}) != 1:
        raise InvalidRequest("offer_ids: the offers of one accept must be on one agent")
    if len({o.role for o in offers}) != 1:
        raise InvalidRequest("offer_ids: the offers of one accept must be for one role")
    aid, role = offers[0].agent_id, offers[0].role
    agent = _agent(state, aid)
    if not isinstance(cmd.operations, tuple):
        raise InvalidRequest("operations: must be a tuple of operations")
    refuse_seconds = check_number(cmd.refuse_seconds, "refuse_seconds", maximum=float("inf"))

    pool = EMPTY
    for offer in offers:
        pool = pool + offer.resources
    events: list[Event] = [OfferAccepted(o.offer_id, fid, aid) for o in offers]
    launched: set[str] = set()  # task ids are scoped per framework: only the framework's own are checked
    for n, op in enumerate(cmd.operations):
        what = f"operations[{n}]"
        if not isinstance(op, c.Operation):
            raise InvalidRequest(f"{what}: must be an Operation")
        if op.type in ("RESERVE", "UNRESERVE"):
            if op.tasks:
                raise InvalidRequest(f"{what}: a {op.type} names resources, not tasks")
            res = check_resources(op.resources, f"{what}.resources", allow_empty=False)
            if res.roles() != {role}:
                raise InvalidRequest(f"{what}.resources: must all be reserved to the offers' role {role}")
            flat = res.flatten()
            if op.type == "RESERVE":
                if not pool.contains(flat):
                    raise Conflict(f"{what}: {flat} is not unreserved in the offers")
                pool = pool - flat + res
                events.append(ResourcesReserved(aid, fid, role, res))
            else:
                if not pool.contains(res):
                    raise Conflict(f"{what}: {res} is not in the offers")
                if not agent.reserved.contains(res):
                    raise Conflict(f"{what}: only dynamic reservations can be unreserved")
                pool = pool - res + flat
                events.append(ResourcesUnreserved(aid, fid, role, res))
        elif op.type == "LAUNCH":
            if op.resources:
                raise InvalidRequest(f"{what}: a LAUNCH names tasks; resources go in each task")
            if not isinstance(op.tasks, tuple) or not op.tasks:
                raise InvalidRequest(f"{what}: a LAUNCH needs at least one task")
            for task in op.tasks:
                check_task_info(task, f"{what}.tasks[]")
                check_working_dir(task.command.working_dir, f"task {task.task_id}: command.working_dir")
                tid = task.task_id
                if task.framework_id not in ("", fid):
                    raise InvalidRequest(f"task {tid}: framework_id {task.framework_id} is not {fid}")
                if task.agent_id not in ("", aid):
                    raise InvalidRequest(f"task {tid}: agent_id {task.agent_id} is not the offers' agent {aid}")
                if tid in launched or (fid, tid) in state.tasks or (fid, tid) in state.completed_tasks:
                    raise Conflict(f"task id {tid} is already used by this framework")
                if not pool.contains(task.resources):
                    raise Conflict(f"task {tid} needs {task.resources}; its offers have {pool} left")
                pool = pool - task.resources
                launched.add(tid)
                events.append(TaskLaunched(tid, fid, aid, replace(task, framework_id=fid, agent_id=aid)))
        else:
            raise InvalidRequest(f"{what}: unknown operation type {op.type!r}")
    if refuse_seconds > 0:
        until = _refuse_until(ctx, refuse_seconds, default=DEFAULT_REFUSE_SECONDS)
        events.extend(OfferDeclined(o.offer_id, fid, aid, until) for o in offers)
    return tuple(events)


# ---- tasks -----------------------------------------------------------------------------------------
def _kill(state: ClusterState, cmd: c.Kill, ctx: Context) -> tuple[Event, ...]:
    fw = _framework_call(state, cmd.framework_id, cmd.stream_id)
    tid = check_id(cmd.task_id, "task_id")
    grace = check_number(cmd.grace_period_seconds, "grace_period_seconds")
    key = TaskKey(fw.framework_id, tid)
    task = state.tasks.get(key)
    if task is None:
        if key in state.completed_tasks:
            return ()
        raise NotFound(f"framework {fw.framework_id} has no task {tid}")
    if task.terminal:
        return ()
    grace = grace or task.info.kill_grace_period_seconds
    return (TaskKillRequested(tid, task.framework_id, task.agent_id, grace),)


def _update_status(state: ClusterState, cmd: c.UpdateStatus, ctx: Context) -> tuple[Event, ...]:
    """An agent's update. Already recorded (same uuid) or about a task the master already holds terminal:
    nothing to do (the agent gets its ack; the master's terminal state stands)."""
    status = check_task_status(cmd.status)
    if not status.uuid:
        raise InvalidRequest("status.uuid: an agent's status update needs a uuid")
    if status.state is TaskState.TASK_UNREACHABLE:
        raise InvalidRequest("status.state: only the master marks tasks unreachable")
    tid = status.task_id
    key: TaskKey | None = TaskKey(status.framework_id, tid)
    if not status.framework_id:  # an agent of an earlier version: the one task of that id on the agent
        sender = state.agents.get(status.agent_id) if status.agent_id else None
        key = None if sender is None else _reported_key(state, sender, status)
    task = None if key is None else state.find_task(*key)
    if task is None:
        raise NotFound(f"task {tid} of framework {status.framework_id or '(not named)'} is not known")
    owner = state.agents.get(task.agent_id)
    if owner is not None:
        check_agent_identity(owner, cmd.identity, f"a status update of task {tid}")
    if status.agent_id and status.agent_id != task.agent_id:
        raise Conflict(f"task {tid} runs on agent {task.agent_id}, not {status.agent_id}")
    if status.uuid in task.applied_uuids or task.terminal:
        return ()
    agent = _agent(state, task.agent_id)
    if not agent.reachable:
        raise Conflict(f"agent {agent.agent_id} is {agent.state.name}; it must reregister first")
    if not can_transition(task.state, status.state):
        raise Conflict(f"task {tid} is {task.state.name} and cannot become {status.state.name}")
    status = replace(status, agent_id=task.agent_id, framework_id=task.framework_id,
                     timestamp=status.timestamp or _now(ctx))
    return (TaskStatusUpdated(tid, task.framework_id, task.agent_id, status),)


def _acknowledge(state: ClusterState, cmd: c.Acknowledge, ctx: Context) -> tuple[Event, ...]:
    fw = _framework_call(state, cmd.framework_id, cmd.stream_id)
    tid = check_id(cmd.task_id, "task_id")
    uuid = check_id(cmd.uuid, "uuid")
    task = state.find_task(fw.framework_id, tid)
    if task is None:
        raise NotFound(f"framework {fw.framework_id} has no task {tid}")
    if any(s.uuid == uuid for s in task.unacknowledged):
        return (TaskStatusAcknowledged(tid, task.framework_id, task.agent_id, uuid),)
    if uuid in task.applied_uuids:
        return ()  # acknowledged before: a retry
    raise NotFound(f"task {tid} has no status update {uuid}")


def _expire_frameworks(state: ClusterState, cmd: c.ExpireFrameworks, ctx: Context) -> tuple[Event, ...]:
    now = _now(ctx)
    events: list[Event] = []
    for _, fw in sorted(state.frameworks.items()):
        if fw.state is FrameworkState.FRAMEWORK_DISCONNECTED and fw.failover_deadline <= now:
            events.extend(_removal(state, fw, "failover timeout expired"))
    return tuple(events)


_DECIDERS: dict[type, _Decider] = {
    c.ElectLeader: _elect_leader,
    c.AnnounceMaster: _announce_master,
    c.RemoveMaster: _remove_master,
    c.SetRoleWeight: _set_role_weight,
    c.SetQuota: _set_quota,
    c.RegisterAgent: _register_agent,
    c.ReregisterAgent: _reregister_agent,
    c.MarkAgentUnreachable: _mark_agent_unreachable,
    c.RemoveAgent: _remove_agent,
    c.DrainAgent: _drain_agent,
    c.SubscribeFramework: _subscribe_framework,
    c.DisconnectFramework: _disconnect_framework,
    c.RemoveFramework: _remove_framework,
    c.Teardown: _teardown,
    c.Suppress: _suppress,
    c.Revive: _revive,
    c.IssueOffers: _issue_offers,
    c.Decline: _decline,
    c.RescindOffer: _rescind_offer,
    c.ExpireOffers: _expire_offers,
    c.Accept: _accept,
    c.Kill: _kill,
    c.UpdateStatus: _update_status,
    c.Acknowledge: _acknowledge,
    c.ExpireFrameworks: _expire_frameworks,
}
