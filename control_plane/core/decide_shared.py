"""What several of `decide`'s topics share (see `core/decide.py`): the lookups of the records a command
names, and the values a decision takes from the context (new ids, the time, refuse-until times,
master-generated task statuses).
"""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Any

from tessera.control_plane.core.context import Context
from tessera.control_plane.core.errors import Conflict, Deposed, InvalidRequest, NotFound
from tessera.control_plane.core.events import Event, OfferRescinded, TaskStatusUpdated
from tessera.control_plane.core.state import (
    MAX_REFUSE_SECONDS,
    MAX_TIME,
    ClusterState,
    FrameworkRecord,
    TaskRecord,
    check_id,
    check_number,
    check_optional_id,
)
from tessera.control_plane.core.state import (
    known_agent as known_agent,  # the topic modules take their lookups from here
)
from tessera.control_plane.core.state import (
    known_framework as known_framework,
)
from tessera.control_plane.core.values import FrameworkState, Offer, StatusSource, TaskState, TaskStatus

Decider = Callable[[ClusterState, Any, Context], tuple[Event, ...]]


def calling_framework(state: ClusterState, framework_id: object, stream_id: object) -> FrameworkRecord:
    """The framework making a scheduler call: it must not be removed, and a given stream must be current
    (`Deposed` otherwise: the stream-id fence of the framework's lease, `core.leases`)."""
    fw = known_framework(state, framework_id)
    sid = check_optional_id(stream_id, "stream_id")
    if fw.state is FrameworkState.FRAMEWORK_REMOVED:
        raise Conflict(f"framework {fw.framework_id} was removed ({fw.removed_reason or 'no reason'})")
    if sid and sid != fw.stream_id:
        raise Deposed(f"stream {sid} is not the current stream of framework {fw.framework_id}: it no longer "
                      f"holds the framework, whose lease is at term {fw.lease_term} (another instance took "
                      "over, or this one reconnected on a newer stream)", lease_term=fw.lease_term)
    return fw


def live_offer(state: ClusterState, offer_id: str, framework_id: str) -> Offer:
    offer = state.offers.get(offer_id)
    if offer is None:
        why = state.retired_offers.get(offer_id)
        if why is not None:
            raise Conflict(f"offer {offer_id} is no longer valid: {why}")
        raise NotFound(f"offer {offer_id} is not known")
    if offer.framework_id != framework_id:
        raise Conflict(f"offer {offer_id} was made to another framework")
    return offer


def check_offer_ids(value: object) -> tuple[str, ...]:
    if not isinstance(value, tuple) or not value:
        raise InvalidRequest("offer_ids: give at least one offer id")
    ids = tuple(check_id(o, "offer_ids") for o in value)
    if len(set(ids)) != len(ids):
        raise InvalidRequest("offer_ids: an offer is named twice")
    return ids


def new_id(ctx: Context, prefix: str, taken: Container[str]) -> str:
    """A fresh id from the context; a collision is the id source's bug, refused rather than recorded."""
    new = ctx.new_id(prefix)
    check_id(new, f"new {prefix} id")
    if new in taken:
        raise Conflict(f"the id source returned {new!r}, which is already in use")
    return new


def context_time(ctx: Context) -> float:
    return check_number(ctx.now, "ctx.now", maximum=MAX_TIME)


def refuse_until(ctx: Context, refuse_seconds: object, *, default: float) -> float:
    seconds = check_number(refuse_seconds, "refuse_seconds", maximum=float("inf")) or default
    return context_time(ctx) + min(seconds, MAX_REFUSE_SECONDS)


def master_status(
    ctx: Context, task: TaskRecord, state: TaskState, reason: str, message: str
) -> TaskStatusUpdated:
    """A status the master generates for a task (agent lost, removed...), acknowledgeable like any other."""
    status = TaskStatus(
        task_id=task.task_id, state=state, message=message, reason=reason, source=StatusSource.SOURCE_MASTER,
        agent_id=task.agent_id, uuid=ctx.new_id("status"), timestamp=context_time(ctx), framework_id=task.framework_id,
    )
    check_id(status.uuid, "new status uuid")
    return TaskStatusUpdated(task.task_id, task.framework_id, task.agent_id, status)


def partition_aware(state: ClusterState, task: TaskRecord) -> bool:
    fw = state.frameworks.get(task.framework_id)
    return fw is not None and fw.state is not FrameworkState.FRAMEWORK_REMOVED and fw.info.partition_aware


def rescind(offers: list[Offer], reason: str) -> list[Event]:
    return [OfferRescinded(o.offer_id, o.framework_id, o.agent_id, reason) for o in offers]


def live_tasks(tasks: list[TaskRecord]) -> list[TaskRecord]:
    return [t for t in tasks if not t.terminal]


def principal_frameworks(state: ClusterState, principal: str) -> list[FrameworkRecord]:
    """The frameworks of `principal` that are not removed."""
    return [fw for fw in state.frameworks.values()
            if fw.info.principal == principal and fw.state is not FrameworkState.FRAMEWORK_REMOVED]
