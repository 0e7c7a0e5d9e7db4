"""decide of task commands: kills (a framework's and an operator's), agents' status updates, frameworks'
acknowledgements."""

from __future__ import annotations

from dataclasses import replace

from tessera.control_plane.core import commands as c
from tessera.control_plane.core.context import Context
from tessera.control_plane.core.decide_agents import check_agent_identity, reported_key
from tessera.control_plane.core.decide_shared import Decider, calling_framework, context_time, known_agent
from tessera.control_plane.core.errors import Conflict, InvalidRequest, NotFound
from tessera.control_plane.core.events import (
    Event,
    TaskKillRequested,
    TaskStatusAcknowledged,
    TaskStatusUpdated,
)
from tessera.control_plane.core.lifecycle import can_transition, is_terminal
from tessera.control_plane.core.state import (
    ClusterState,
    TaskKey,
    check_id,
    check_number,
    check_optional_id,
    check_task_status,
)
from tessera.control_plane.core.values import TaskState


def _kill(state: ClusterState, cmd: c.Kill, ctx: Context) -> tuple[Event, ...]:
    fw = calling_framework(state, cmd.framework_id, cmd.stream_id)
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


def task_framework(state: ClusterState, task_id: str, framework_id: str = "") -> str:
    """The framework of the task an operator names: `framework_id` when given, else the one framework
    whose live task uses `task_id`, else the one whose task (ended, still remembered) uses it. NotFound
    when no framework's does; InvalidRequest naming them when several do (task ids are per framework)."""
    tid = check_id(task_id, "task_id")
    fid = check_optional_id(framework_id, "framework_id")
    if fid:
        return fid
    live = sorted({k.framework_id for k, t in state.tasks.items() if k.task_id == tid and not t.terminal})
    named = live or sorted({k.framework_id for k in (*state.tasks, *state.completed_tasks) if k.task_id == tid})
    if not named:
        raise NotFound(f"no framework has a task {tid}")
    if len(named) > 1:
        raise InvalidRequest(f"task id {tid} is used by frameworks {', '.join(named)}: name one as "
                             f"FRAMEWORK_ID/{tid}")
    return named[0]


def _operator_kill(state: ClusterState, cmd: c.OperatorKill, ctx: Context) -> tuple[Event, ...]:
    fid = task_framework(state, cmd.task_id, cmd.framework_id)
    task = state.find_task(fid, cmd.task_id)
    if task is not None and task.terminal:  # ended (its framework may be gone since): nothing to kill
        return ()
    return _kill(state, c.Kill(framework_id=fid, task_id=cmd.task_id,
                               grace_period_seconds=cmd.grace_period_seconds), ctx)


def _update_status(state: ClusterState, cmd: c.UpdateStatus, ctx: Context) -> tuple[Event, ...]:
    """An agent's update. Already recorded (same uuid) or about a task the master already holds terminal:
    nothing to do (the agent gets its ack; the master's terminal state stands)."""
    return decide_update_after(state, cmd, ctx, {})


class EarlierUpdate:
    """What the updates decided before this one in the same entry made of a task: its state and the uuids
    they record (`decide_update_after`)."""

    __slots__ = ("state", "uuids")

    def __init__(self, state: TaskState, uuids: frozenset[str]) -> None:
        self.state = state
        self.uuids = uuids


def decide_update_after(state: ClusterState, cmd: c.UpdateStatus, ctx: Context,
                        earlier: dict[TaskKey, EarlierUpdate]) -> tuple[Event, ...]:
    """`_update_status` for an update that follows, in the same entry, the updates of its task already
    decided (`earlier`, which this records into): `apply` applies them in order, so this one is checked
    against the state they leave — an agent sends a task's whole pending stream (STARTING, RUNNING,
    FINISHED) in one message, and the master records it in one entry instead of one commit per update."""
    status = check_task_status(cmd.status)
    if not status.uuid:
        raise InvalidRequest("status.uuid: an agent's status update needs a uuid")
    if status.state is TaskState.TASK_UNREACHABLE:
        raise InvalidRequest("status.state: only the master marks tasks unreachable")
    tid = status.task_id
    key: TaskKey | None = TaskKey(status.framework_id, tid)
    if not status.framework_id:  # an agent of an earlier version: the one task of that id on the agent
        sender = state.agents.get(status.agent_id) if status.agent_id else None
        key = None if sender is None else reported_key(state, sender, status)
    task = None if key is None else state.find_task(*key)
    if task is None:
        raise NotFound(f"task {tid} of framework {status.framework_id or '(not named)'} is not known")
    owner = state.agents.get(task.agent_id)
    if owner is not None:
        check_agent_identity(owner, cmd.identity, f"a status update of task {tid}")
    if status.agent_id and status.agent_id != task.agent_id:
        raise Conflict(f"task {tid} runs on agent {task.agent_id}, not {status.agent_id}")
    task_key = TaskKey(task.framework_id, tid)
    before = earlier.get(task_key)
    current = task.state if before is None else before.state
    if status.uuid in task.applied_uuids or (before is not None and status.uuid in before.uuids) \
            or task.terminal or is_terminal(current):
        return ()
    agent = known_agent(state, task.agent_id)
    if not agent.reachable:
        raise Conflict(f"agent {agent.agent_id} is {agent.state.name}; it must reregister first")
    if not can_transition(current, status.state):
        raise Conflict(f"task {tid} is {current.name} and cannot become {status.state.name}")
    status = replace(status, agent_id=task.agent_id, framework_id=task.framework_id,
                     timestamp=status.timestamp or context_time(ctx))
    earlier[task_key] = EarlierUpdate(status.state, (frozenset() if before is None else before.uuids) | {status.uuid})
    return (TaskStatusUpdated(tid, task.framework_id, task.agent_id, status),)


def _acknowledge(state: ClusterState, cmd: c.Acknowledge, ctx: Context) -> tuple[Event, ...]:
    fw = calling_framework(state, cmd.framework_id, cmd.stream_id)
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


DECIDERS: dict[type, Decider] = {
    c.Kill: _kill,
    c.OperatorKill: _operator_kill,
    c.UpdateStatus: _update_status,
    c.Acknowledge: _acknowledge,
}
