"""apply of task events: launched (from the pool of offers accepted in the same entry), kill requested,
status updated, status acknowledged.
"""

from __future__ import annotations

from tessera.control_plane.core.apply_tx import Handler, Tx, complete_task, known_agent, known_framework
from tessera.control_plane.core.errors import Conflict, InvalidRequest, NotFound
from tessera.control_plane.core.events import (
    TaskKillRequested,
    TaskLaunched,
    TaskStatusAcknowledged,
    TaskStatusUpdated,
)
from tessera.control_plane.core.lifecycle import can_transition, is_terminal
from tessera.control_plane.core.state import (
    STATUS_UUIDS_PER_TASK,
    ClusterState,
    TaskKey,
    TaskRecord,
    check_id,
    check_number,
    check_task_info,
    check_task_status,
    scalar_part,
)
from tessera.control_plane.core.values import AgentState, FrameworkState, TaskState


def _task(state: ClusterState, task_id: object, framework_id: object, agent_id: object) -> TaskRecord:
    """The live task the event names: task ids are scoped per framework, so (framework, task) is the key."""
    tid = check_id(task_id, "task_id")
    fid = check_id(framework_id, "framework_id")
    task = state.tasks.get(TaskKey(fid, tid))
    if task is None:
        raise NotFound(f"framework {fid} has no task {tid}")
    if task.agent_id != agent_id:
        raise Conflict(f"task {tid} of framework {fid} runs on agent {task.agent_id}")
    return task


def _task_launched(state: ClusterState, e: TaskLaunched, tx: Tx) -> bool:
    tid = check_id(e.task_id, "task_id")
    task = check_task_info(e.task)
    if (task.task_id, task.framework_id, task.agent_id) != (tid, e.framework_id, e.agent_id):
        raise InvalidRequest(f"task {tid}: the task's ids do not match the event's")
    fw = known_framework(state, e.framework_id)
    key = TaskKey(fw.framework_id, tid)
    if key in state.tasks or key in state.completed_tasks:
        raise Conflict(f"task id {tid} is already used by this framework")
    agent = known_agent(state, e.agent_id)
    if fw.state is not FrameworkState.FRAMEWORK_CONNECTED:
        raise Conflict(f"framework {fw.framework_id} is {fw.state.name}")
    if agent.state is not AgentState.AGENT_ACTIVE:
        raise Conflict(f"agent {agent.agent_id} is {agent.state.name}")
    pool = tx.pools.get((fw.framework_id, agent.agent_id))
    if pool is None:
        raise Conflict(f"task {tid}: a launch needs an offer on agent {agent.agent_id} accepted in the same entry")
    resources = task.resources
    if not pool[1].contains(resources) or not state.agent_free(agent.agent_id).contains(resources):
        raise Conflict(f"task {tid} needs {resources}; its offers have {pool[1]} left")
    pool[1] = pool[1] - resources
    tx.put(state.tasks, key, TaskRecord(info=task, state=TaskState.TASK_STAGING, role=pool[0],
                                        launched_at=tx.time))
    tx.assign(agent, "used", agent.used + resources)
    tx.add(agent.task_keys, key)
    tx.assign(fw, "used", fw.used + scalar_part(resources))
    tx.add(fw.task_ids, tid)
    return True


def _task_kill_requested(state: ClusterState, e: TaskKillRequested, tx: Tx) -> bool:
    task = _task(state, e.task_id, e.framework_id, e.agent_id)
    grace = check_number(e.grace_period_seconds, "grace_period_seconds")
    if task.terminal:
        raise Conflict(f"task {task.task_id} already ended ({task.state.name})")
    tx.assign(task, "kill_requested", True)
    tx.assign(task, "kill_grace_period_seconds", grace)
    return True


def _task_status_updated(state: ClusterState, e: TaskStatusUpdated, tx: Tx) -> bool:
    tid = check_id(e.task_id, "task_id")
    status = check_task_status(e.status)
    if status.task_id != tid:
        raise InvalidRequest(f"status.task_id {status.task_id} is not the event's task_id {tid}")
    if status.framework_id not in ("", e.framework_id) or status.agent_id not in ("", e.agent_id):
        raise InvalidRequest(f"task {tid}: the status's ids do not match the event's")
    uuid = status.uuid
    fid = check_id(e.framework_id, "framework_id")
    key = TaskKey(fid, tid)
    task = state.tasks.get(key)
    if task is None:
        done = state.completed_tasks.get(key)
        if done is not None and uuid and uuid in done.applied_uuids:
            return False  # a retried update of a task that has ended and been acknowledged
        if done is not None:
            raise Conflict(f"task {tid} already ended ({done.state.name})")
        raise NotFound(f"framework {fid} has no task {tid}")
    if uuid and uuid in task.applied_uuids:
        return False  # a retried update: recorded once
    task = _task(state, tid, e.framework_id, e.agent_id)
    new = status.state
    if not can_transition(task.state, new):
        raise Conflict(f"task {tid} is {task.state.name} and cannot become {new.name}")
    agent = state.agents[task.agent_id]
    if not is_terminal(new) and (
        (agent.state is AgentState.AGENT_UNREACHABLE and new is not TaskState.TASK_UNREACHABLE)
        or agent.state is AgentState.AGENT_REMOVED
    ):
        raise Conflict(f"task {tid} cannot become {new.name}: agent {agent.agent_id} is {agent.state.name}")
    fw = state.frameworks[task.framework_id]
    tx.assign(task, "state", new)
    tx.assign(task, "last_status", status)
    if uuid:
        tx.assign(task, "applied_uuids", (*task.applied_uuids, uuid)[-STATUS_UUIDS_PER_TASK:])
        if fw.state is not FrameworkState.FRAMEWORK_REMOVED:
            tx.assign(task, "unacknowledged", (*task.unacknowledged, status))
    if is_terminal(new):
        tx.assign(agent, "used", agent.used - task.resources)
        tx.assign(fw, "used", fw.used - scalar_part(task.resources))
        if not task.unacknowledged:
            complete_task(state, task, tx)
    return True


def _task_status_acknowledged(state: ClusterState, e: TaskStatusAcknowledged, tx: Tx) -> bool:
    tid = check_id(e.task_id, "task_id")
    uuid = check_id(e.uuid, "uuid")
    fw = state.frameworks.get(e.framework_id) if isinstance(e.framework_id, str) else None
    if fw is not None and fw.state is FrameworkState.FRAMEWORK_REMOVED:
        # decided before a removal committed ahead of it: the removal dropped what was left to
        # acknowledge, so this acknowledgement records nothing and must not be answered as if it had
        raise Conflict(f"framework {fw.framework_id} was removed")
    fid = check_id(e.framework_id, "framework_id")
    key = TaskKey(fid, tid)
    if key not in state.tasks:
        done = state.completed_tasks.get(key)
        if done is not None and uuid in done.applied_uuids:
            return False  # acknowledged before the task was completed: a retry
        raise NotFound(f"framework {fid} has no task {tid}")
    task = _task(state, tid, e.framework_id, e.agent_id)
    remaining = tuple(s for s in task.unacknowledged if s.uuid != uuid)
    if len(remaining) == len(task.unacknowledged):
        if uuid in task.applied_uuids:
            return False  # acknowledged before: a retry
        raise NotFound(f"task {tid} has no status update {uuid}")
    tx.assign(task, "unacknowledged", remaining)
    if task.terminal and not remaining:
        complete_task(state, task, tx)
    return True


HANDLERS: dict[type, Handler] = {
    TaskLaunched: _task_launched,
    TaskKillRequested: _task_kill_requested,
    TaskStatusUpdated: _task_status_updated,
    TaskStatusAcknowledged: _task_status_acknowledged,
}
