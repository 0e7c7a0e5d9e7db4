"""decide of Accept: the operations a framework runs on its offers, launching tasks (and reserving or
unreserving resources) on one agent, in one role.

The validation of each launched task is `check_launched_task`; the size caps of the whole launch and
the principal's task limit are checked first (`core/limits.py`), before the offers.
"""

from __future__ import annotations

from dataclasses import replace

from tessera.control_plane.core import commands as c
from tessera.control_plane.core.containers import check_container
from tessera.control_plane.core.context import Context
from tessera.control_plane.core.decide_shared import (
    Decider,
    calling_framework,
    check_offer_ids,
    known_agent,
    live_offer,
    principal_frameworks,
    refuse_until,
)
from tessera.control_plane.core.errors import Conflict, InvalidRequest
from tessera.control_plane.core.events import (
    Event,
    OfferAccepted,
    OfferDeclined,
    ResourcesReserved,
    ResourcesUnreserved,
    TaskLaunched,
)
from tessera.control_plane.core.health_checks import check_health_check
from tessera.control_plane.core.limits import check_launch_size, check_principal_tasks
from tessera.control_plane.core.resources import EMPTY
from tessera.control_plane.core.state import (
    DEFAULT_REFUSE_SECONDS,
    ClusterState,
    check_number,
    check_resources,
    check_task_info,
    check_working_dir,
)
from tessera.control_plane.core.values import AgentInfo, FrameworkState


def _accept(state: ClusterState, cmd: c.Accept, ctx: Context) -> tuple[Event, ...]:
    fw = calling_framework(state, cmd.framework_id, cmd.stream_id)
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
        tracked = sum(len(f.task_ids) for f in principal_frameworks(state, fw.info.principal))
        check_principal_tasks(fw.info.principal, tracked, len(launching), ctx.limits)
    offers = [live_offer(state, oid, fid) for oid in check_offer_ids(cmd.offer_ids)]
    if len({o.agent_id for o in offers}) != 1:
        raise InvalidRequest("offer_ids: the offers of one accept must be on one agent")
    if len({o.role for o in offers}) != 1:
        raise InvalidRequest("offer_ids: the offers of one accept must be for one role")
    aid, role = offers[0].agent_id, offers[0].role
    agent = known_agent(state, aid)
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
                check_launched_task(task, what, fid, aid, agent.info)
                tid = task.task_id
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
        until = refuse_until(ctx, refuse_seconds, default=DEFAULT_REFUSE_SECONDS)
        events.extend(OfferDeclined(o.offer_id, fid, aid, until) for o in offers)
    return tuple(events)


def check_launched_task(task: object, what: str, framework_id: str, agent_id: str,
                        agent: AgentInfo | None = None) -> None:
    """The launch validation of one task of a LAUNCH (`what` names the operation), given the framework
    and the agent of the accepted offers: the task's form and its working directory, and that the ids it
    names are those. Raises InvalidRequest. What depends on the other tasks and the offers (a task id
    used twice, the fit in the offers' resources) `_accept` checks after it."""
    task = check_task_info(task, f"{what}.tasks[]")
    check_working_dir(task.command.working_dir, f"task {task.task_id}: command.working_dir")
    tid = task.task_id
    if task.framework_id not in ("", framework_id):
        raise InvalidRequest(f"task {tid}: framework_id {task.framework_id} is not {framework_id}")
    if task.agent_id not in ("", agent_id):
        raise InvalidRequest(f"task {tid}: agent_id {task.agent_id} is not the offers' agent {agent_id}")
    check_container(task, agent, f"task {tid}")
    check_health_check(task, f"task {tid}")


DECIDERS: dict[type, Decider] = {
    c.Accept: _accept,
}
