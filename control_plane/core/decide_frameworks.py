"""decide of framework commands: subscription, disconnection, removal (by the operator, by teardown, or
when the failover timeout expires), suppress and revive.
"""

from __future__ import annotations

from dataclasses import replace

from tessera.control_plane.core import commands as c
from tessera.control_plane.core import leases
from tessera.control_plane.core.context import Context
from tessera.control_plane.core.decide_shared import (
    Decider,
    calling_framework,
    context_time,
    known_framework,
    live_tasks,
    new_id,
    principal_frameworks,
    rescind,
)
from tessera.control_plane.core.errors import Conflict, InvalidRequest
from tessera.control_plane.core.events import (
    Event,
    FrameworkDisconnected,
    FrameworkRemoved,
    FrameworkRevived,
    FrameworkSubscribed,
    FrameworkSuppressed,
    TaskKillRequested,
)
from tessera.control_plane.core.limits import check_framework_size, check_principal_frameworks
from tessera.control_plane.core.state import (
    ClusterState,
    FrameworkRecord,
    check_framework_info,
    check_optional_id,
    check_roles,
    check_text,
)
from tessera.control_plane.core.values import FrameworkState


def _subscribe_framework(state: ClusterState, cmd: c.SubscribeFramework, ctx: Context) -> tuple[Event, ...]:
    """A subscription, as the framework's lease allows it (`core.leases`): a new framework, the lease
    taken over or resumed; a standby that must wait is refused with Conflict (the Scheduler API asks
    `leases.claim` first and holds its stream open instead)."""
    info = check_framework_info(cmd.info)
    check_framework_size(info)
    granted = leases.claim(state, info, standby=cmd.standby, lease_term=cmd.lease_term, now=context_time(ctx),
                           takeover_delay=cmd.takeover_delay)
    if isinstance(granted, leases.Wait):
        raise Conflict(f"framework {granted.framework_id} is active under lease term {granted.lease_term}; "
                       "a standby waits until it is gone")
    taken_streams = {fw.stream_id for fw in state.frameworks.values()}
    fw = granted.framework
    if fw is None:
        check_principal_frameworks(info.principal, len(principal_frameworks(state, info.principal)), ctx.limits)
        framework_id = new_id(ctx, "framework", state.frameworks)
        stream_id = new_id(ctx, "stream", taken_streams)
        return (FrameworkSubscribed(framework_id, replace(info, framework_id=framework_id), stream_id, False,
                                    granted.lease_term, False, granted.by_name),)
    stream_id = new_id(ctx, "stream", taken_streams)
    return (
        *rescind(state.offers_of_framework(fw.framework_id), "framework resubscribed"),
        FrameworkSubscribed(fw.framework_id, replace(info, framework_id=fw.framework_id), stream_id, True,
                            granted.lease_term, granted.outcome is leases.Outcome.TAKE_OVER),
    )


def _disconnect_framework(
    state: ClusterState, cmd: c.DisconnectFramework, ctx: Context
) -> tuple[Event, ...]:
    fw = known_framework(state, cmd.framework_id)
    stream_id = check_optional_id(cmd.stream_id, "stream_id")
    if fw.state is FrameworkState.FRAMEWORK_REMOVED:
        raise Conflict(f"framework {fw.framework_id} was removed")
    if fw.state is FrameworkState.FRAMEWORK_DISCONNECTED or (stream_id and stream_id != fw.stream_id):
        return ()  # already disconnected, or an old stream closing after the framework reconnected
    deadline = context_time(ctx) + fw.info.failover_timeout_seconds
    return (
        *rescind(state.offers_of_framework(fw.framework_id), "framework disconnected"),
        FrameworkDisconnected(fw.framework_id, deadline, fw.stream_id),
    )


def _removal(state: ClusterState, fw: FrameworkRecord, reason: str) -> list[Event]:
    """Rescind the framework's offers, ask for its live tasks to be killed, remove it."""
    kills: list[Event] = [
        TaskKillRequested(t.task_id, t.framework_id, t.agent_id, t.info.kill_grace_period_seconds)
        for t in live_tasks(state.tasks_of_framework(fw.framework_id))
    ]
    return [
        *rescind(state.offers_of_framework(fw.framework_id), "framework removed"),
        *kills,
        FrameworkRemoved(fw.framework_id, reason),
    ]


def _remove_framework(state: ClusterState, cmd: c.RemoveFramework, ctx: Context) -> tuple[Event, ...]:
    fw = known_framework(state, cmd.framework_id)
    reason = check_text(cmd.reason, "reason")
    if fw.state is FrameworkState.FRAMEWORK_REMOVED:
        return ()
    return tuple(_removal(state, fw, reason or "removed by operator"))


def _teardown(state: ClusterState, cmd: c.Teardown, ctx: Context) -> tuple[Event, ...]:
    fw = known_framework(state, cmd.framework_id)
    if fw.state is FrameworkState.FRAMEWORK_REMOVED:
        return ()
    calling_framework(state, cmd.framework_id, cmd.stream_id)
    return tuple(_removal(state, fw, "teardown requested by the framework"))


def _call_roles(fw: FrameworkRecord, roles: object) -> tuple[str, ...]:
    """Roles named in a scheduler call, which must be the framework's own; empty means all of them."""
    named = check_roles(roles)
    unknown = [r for r in named if r not in fw.info.roles]
    if unknown:
        raise InvalidRequest(f"roles: framework {fw.framework_id} is not subscribed to {', '.join(unknown)}")
    return named or fw.info.roles


def _suppress(state: ClusterState, cmd: c.Suppress, ctx: Context) -> tuple[Event, ...]:
    fw = calling_framework(state, cmd.framework_id, cmd.stream_id)
    roles = _call_roles(fw, cmd.roles)
    if set(roles) <= fw.suppressed_roles:
        return ()
    return (FrameworkSuppressed(fw.framework_id, roles),)


def _revive(state: ClusterState, cmd: c.Revive, ctx: Context) -> tuple[Event, ...]:
    fw = calling_framework(state, cmd.framework_id, cmd.stream_id)
    roles = _call_roles(fw, cmd.roles)
    has_filters = any(key[0] == fw.framework_id for key in state.decline_filters)
    if not (set(roles) & fw.suppressed_roles) and not has_filters:
        return ()
    return (FrameworkRevived(fw.framework_id, roles),)


def _expire_frameworks(state: ClusterState, cmd: c.ExpireFrameworks, ctx: Context) -> tuple[Event, ...]:
    now = context_time(ctx)
    events: list[Event] = []
    for _, fw in sorted(state.frameworks.items()):
        if fw.state is FrameworkState.FRAMEWORK_DISCONNECTED and fw.failover_deadline <= now:
            events.extend(_removal(state, fw, "failover timeout expired"))
    return tuple(events)


DECIDERS: dict[type, Decider] = {
    c.SubscribeFramework: _subscribe_framework,
    c.DisconnectFramework: _disconnect_framework,
    c.RemoveFramework: _remove_framework,
    c.Teardown: _teardown,
    c.Suppress: _suppress,
    c.Revive: _revive,
    c.ExpireFrameworks: _expire_frameworks,
}
