"""apply of framework events: subscription (with the framework's lease, `core.leases`), disconnection,
removal (which drops the framework's key/value state), suppress and revive."""

from __future__ import annotations

from tessera.control_plane.core import leases
from tessera.control_plane.core.apply_tx import (
    Handler,
    Tx,
    all_killed,
    check_reason,
    complete_task,
    drop_filters,
    known_framework,
    no_offers,
)
from tessera.control_plane.core.errors import Conflict, InvalidRequest, NotFound
from tessera.control_plane.core.events import (
    FrameworkDisconnected,
    FrameworkRemoved,
    FrameworkRevived,
    FrameworkSubscribed,
    FrameworkSuppressed,
)
from tessera.control_plane.core.state import (
    MAX_TIME,
    ClusterState,
    FrameworkRecord,
    TaskKey,
    check_framework_info,
    check_id,
    check_number,
    check_roles,
)
from tessera.control_plane.core.values import FrameworkState


def _framework_subscribed(state: ClusterState, e: FrameworkSubscribed, tx: Tx) -> bool:
    fid = check_id(e.framework_id, "framework_id")
    info = check_framework_info(e.info)
    if info.framework_id != fid:
        raise InvalidRequest(f"info.framework_id {info.framework_id!r} is not the event's framework_id {fid}")
    stream_id = check_id(e.stream_id, "stream_id")
    if not isinstance(e.resubscribed, bool):
        raise InvalidRequest("resubscribed: must be a bool")
    if not isinstance(e.by_name, bool):
        raise InvalidRequest("by_name: must be a bool")
    fw = state.frameworks.get(fid)
    if not e.resubscribed:
        if fw is not None:
            raise Conflict(f"framework {fid} already exists")
        leases.check_subscription_term(None, e.lease_term, e.lease_moved)
        if e.by_name:
            other = leases.named_framework(state, info.principal, info.name)
            if other is not None:  # two standbys created one each at once: the later is decided again
                raise Conflict(f"framework {other.framework_id} already has the name {info.name!r} for principal "
                               f"{info.principal!r}")
        tx.put(state.frameworks, fid, FrameworkRecord(
            info=info, state=FrameworkState.FRAMEWORK_CONNECTED, stream_id=stream_id, subscribed_at=tx.time,
            lease_term=e.lease_term, by_name=e.by_name,
        ))
        return True
    if fw is None:
        raise NotFound(f"framework {fid} is not known")
    if fw.state is FrameworkState.FRAMEWORK_REMOVED:
        raise Conflict(f"framework {fid} was removed")
    if info.principal != fw.info.principal:
        raise Conflict(f"framework {fid} subscribed as principal {fw.info.principal!r}")
    if e.by_name:
        raise InvalidRequest("by_name: only a new framework is created by name")
    leases.check_subscription_term(fw, e.lease_term, e.lease_moved)
    if fw.by_name and info.name != fw.info.name:
        raise InvalidRequest(f"info.name: framework {fid} is found by its name {fw.info.name!r}, which stays")
    no_offers(f"framework {fid}", fw.offer_ids)
    tx.assign(fw, "info", info)
    tx.assign(fw, "state", FrameworkState.FRAMEWORK_CONNECTED)
    tx.assign(fw, "stream_id", stream_id)
    tx.assign(fw, "failover_deadline", 0.0)
    tx.assign(fw, "suppressed_roles", fw.suppressed_roles & frozenset(info.roles))
    if e.lease_term:
        tx.assign(fw, "lease_term", e.lease_term)
    return True


def _framework_disconnected(state: ClusterState, e: FrameworkDisconnected, tx: Tx) -> bool:
    fw = known_framework(state, e.framework_id)
    deadline = check_number(e.failover_deadline, "failover_deadline", maximum=MAX_TIME)
    if fw.state is not FrameworkState.FRAMEWORK_CONNECTED:
        raise Conflict(f"framework {fw.framework_id} is {fw.state.name}")
    if e.stream_id and e.stream_id != fw.stream_id:
        # decided for a stream that has since been replaced by a resubscription: stale
        raise Conflict(f"framework {fw.framework_id} resubscribed on a newer stream")
    no_offers(f"framework {fw.framework_id}", fw.offer_ids)
    tx.assign(fw, "state", FrameworkState.FRAMEWORK_DISCONNECTED)
    tx.assign(fw, "failover_deadline", deadline)
    tx.assign(fw, "stream_id", "")
    tx.assign(fw, "disconnected_at", tx.time)  # the takeover delay of its lease runs from here
    return True


def _framework_removed(state: ClusterState, e: FrameworkRemoved, tx: Tx) -> bool:
    fw = known_framework(state, e.framework_id)
    reason = check_reason(e.reason)
    if fw.state is FrameworkState.FRAMEWORK_REMOVED:
        raise Conflict(f"framework {fw.framework_id} is already removed")
    no_offers(f"framework {fw.framework_id}", fw.offer_ids)
    fid = fw.framework_id
    all_killed(state, [TaskKey(fid, t) for t in fw.task_ids], f"framework {fid}'s removal")
    tx.assign(fw, "state", FrameworkState.FRAMEWORK_REMOVED)
    tx.assign(fw, "removed_reason", reason)
    tx.assign(fw, "stream_id", "")
    tx.assign(fw, "failover_deadline", 0.0)
    for task_id in sorted(fw.task_ids):
        task = state.tasks[TaskKey(fid, task_id)]
        if task.unacknowledged:  # nobody is left to acknowledge them
            tx.assign(task, "unacknowledged", ())
        if task.terminal:
            complete_task(state, task, tx)
    drop_filters(state, tx, framework_id=fw.framework_id)
    if fid in state.framework_state:  # its key/value state goes with it
        tx.pop(state.framework_state, fid)
    return True


def _framework_roles(fw: FrameworkRecord, roles: object) -> frozenset[str]:
    named = check_roles(roles)
    unknown = [r for r in named if r not in fw.info.roles]
    if unknown:
        raise InvalidRequest(f"roles: framework {fw.framework_id} is not subscribed to {', '.join(unknown)}")
    return frozenset(named or fw.info.roles)


def _framework_suppressed(state: ClusterState, e: FrameworkSuppressed, tx: Tx) -> bool:
    fw = known_framework(state, e.framework_id)
    if fw.state is FrameworkState.FRAMEWORK_REMOVED:
        raise Conflict(f"framework {fw.framework_id} was removed")
    tx.assign(fw, "suppressed_roles", fw.suppressed_roles | _framework_roles(fw, e.roles))
    return True


def _framework_revived(state: ClusterState, e: FrameworkRevived, tx: Tx) -> bool:
    fw = known_framework(state, e.framework_id)
    if fw.state is FrameworkState.FRAMEWORK_REMOVED:
        raise Conflict(f"framework {fw.framework_id} was removed")
    tx.assign(fw, "suppressed_roles", fw.suppressed_roles - _framework_roles(fw, e.roles))
    drop_filters(state, tx, framework_id=fw.framework_id)
    return True


HANDLERS: dict[type, Handler] = {
    FrameworkSubscribed: _framework_subscribed,
    FrameworkDisconnected: _framework_disconnected,
    FrameworkRemoved: _framework_removed,
    FrameworkSuppressed: _framework_suppressed,
    FrameworkRevived: _framework_revived,
}
