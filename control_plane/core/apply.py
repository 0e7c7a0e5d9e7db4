"""apply: the only code that changes master state, run on every master for every committed entry.

Theory of operation
-------------------
`apply(state, entry) -> ApplyResult` is deterministic and total:

- Deterministic: its outcome depends on `state` and `entry` only. It reads no clock (`entry.time` is the
  leader's clock, recorded in the entry), draws no random numbers, does no I/O, and never lets dict or set
  iteration order leak into the state or into recorded text. Every master computes the same state and
  numbers the same events the same way.
- Total: it never raises. An exception inside a replicated method would freeze the Raft cluster, so
  every failure, including a bug in a handler, becomes a recorded `Rejected` outcome.

An entry is atomic. Its events are applied in order by one small handler per event type; each handler
first re-checks the event's preconditions against the state as the earlier events of the same entry
left it, then mutates through an undo log (`_Tx`). When any handler refuses (a decision that became
stale in flight, e.g. its offer was rescinded meanwhile, or a garbage event), the undo log is rolled back
in reverse and the entry becomes one recorded `Rejected(reason, code)` event with its own seq. The undo
log makes a rejected entry cost what it touched, instead of a copy of the whole state per entry.

After the events, handlers' post-checks run (conditions about the entry as a whole, e.g. that no task
is left unreachable on an agent that reregistered); a failing post-check rejects the entry the same way.

Numbering and idempotence:
- Recorded events get consecutive seqs after `state.seq`. Some events are idempotent repeats that change
  nothing and are not recorded (no seq): a status update whose uuid the task already applied, an
  acknowledgement already applied, a rescind of an offer already gone. An ignorable unknown event (from a
  newer master) has no effect but is recorded, so masters of every version number the log alike; a
  non-ignorable one rejects the entry.
- An entry with a non-empty `request_id` already seen returns the original result as 'duplicate' and
  records nothing. The table of request ids is bounded (FIFO), and so are the memories of completed
  tasks and retired offers; they are trimmed only after an entry succeeds, so rollback never has to
  restore evicted items.
- Entries from a term older than the state's (a deposed leader) are rejected.

Within one entry, accepted offers form a pool per (framework, agent): RESERVE / UNRESERVE transform it
and each launched task must fit it, exactly as `decide` checked; a launch needs an offer accepted earlier
in the same entry. An `OfferDeclined` for an offer accepted earlier in the entry records the decline
filter of an Accept with `refuse_seconds`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tessera.control_plane.core.errors import Conflict, InvalidRequest, NotFound, TesseraError
from tessera.control_plane.core.events import (
    AgentDrainStarted,
    AgentRegistered,
    AgentRemoved,
    AgentReregistered,
    AgentUnreachable,
    Entry,
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
    Rejected,
    ResourcesReserved,
    ResourcesUnreserved,
    RoleWeightSet,
    TaskKillRequested,
    TaskLaunched,
    TaskStatusAcknowledged,
    TaskStatusUpdated,
    UnknownEvent,
)
from tessera.control_plane.core.lifecycle import can_transition, is_terminal
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.state import (
    MAX_ID_LENGTH,
    MAX_TEXT_LENGTH,
    MAX_TIME,
    MAX_WEIGHT,
    STATUS_UUIDS_PER_TASK,
    AgentRecord,
    ApplyResult,
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
    check_term,
    check_text,
    remembered,
    remembered_result,
    scalar_part,
    total_with_reservations,
)
from tessera.control_plane.core.values import AgentState, FrameworkState, Offer, RoleInfo, TaskState

__all__ = ["ApplyResult", "apply", "replay"]

_MISSING: Any = object()
_ATTR, _ITEM, _ADDED, _DISCARDED = range(4)
INTERNAL_ERROR = "Internal"  # code of a rejection caused by a bug in apply (maps to Conflict for callers)


class _Tx:
    """Scratch of one entry: its time, the undo log, offer pools and post-checks."""

    __slots__ = ("time", "log", "pools", "accepted", "post_checks")

    def __init__(self, time: float) -> None:
        self.time = time
        self.log: list[tuple[int, Any, Any, Any]] = []
        self.pools: dict[tuple[str, str], list[Any]] = {}  # (fw, agent) -> [role, Resources left]
        self.accepted: dict[str, tuple[str, str]] = {}  # offer id -> (fw, agent), accepted in this entry
        self.post_checks: list[Callable[[], None]] = []

    def assign(self, obj: Any, name: str, value: Any) -> None:
        self.log.append((_ATTR, obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def put(self, mapping: dict[Any, Any], key: Any, value: Any) -> None:
        self.log.append((_ITEM, mapping, key, mapping.get(key, _MISSING)))
        mapping[key] = value

    def pop(self, mapping: dict[Any, Any], key: Any) -> Any:
        value = mapping.pop(key)
        self.log.append((_ITEM, mapping, key, value))
        return value

    def add(self, members: set[Any], item: Any) -> None:
        if item not in members:
            members.add(item)
            self.log.append((_ADDED, members, item, None))

    def discard(self, members: set[Any], item: Any) -> None:
        if item in members:
            members.remove(item)
            self.log.append((_DISCARDED, members, item, None))

    def rollback(self) -> None:
        for kind, target, key, old in reversed(self.log):
            if kind == _ATTR:
                setattr(target, key, old)
            elif kind == _ITEM:
                if old is _MISSING:
                    target.pop(key, None)
                else:
                    target[key] = old
            elif kind == _ADDED:
                target.discard(key)
            else:
                target.add(key)
        self.log.clear()


# ---- entry point -----------------------------------------------------------------------------------
def apply(state: ClusterState, entry: Entry) -> ApplyResult:
    """Apply one committed entry to `state` (see the module docstring). Never raises."""
    try:
        return _apply(state, entry)
    except Exception as exc:  # noqa: BLE001 - last line of defence: apply must stay total
        return ApplyResult(
            outcome="rejected", events=(), first_seq=state.seq + 1, last_seq=state.seq,
            error_code=INTERNAL_ERROR, reason=_truncate(f"internal error in apply: {exc!r}"),
            request_id="",
        )


def replay(entries: Iterable[Entry], state: ClusterState | None = None) -> ClusterState:
    """Apply `entries` in order to `state` (a fresh one by default) and return it."""
    state = ClusterState() if state is None else state
    for entry in entries:
        apply(state, entry)
    return state


def _apply(state: ClusterState, entry: Entry) -> ApplyResult:
    if not isinstance(entry, Entry):
        return _reject(state, None, "", InvalidRequest.code, f"not a log entry: {type(entry).__name__}")
    request_id = entry.request_id
    if not isinstance(request_id, str) or len(request_id) > MAX_ID_LENGTH:
        return _reject(state, None, "", InvalidRequest.code, "request_id: must be a string of at most "
                       f"{MAX_ID_LENGTH} characters")
    if request_id and request_id in state.requests:
        prior = remembered_result(state.requests[request_id], request_id)
        return ApplyResult("duplicate", (), prior.first_seq, prior.last_seq, prior.error_code,
                           prior.reason, request_id)
    time = entry.time
    if type(time) is not float and (isinstance(time, bool) or not isinstance(time, (int, float))):
        return _reject(state, None, request_id, InvalidRequest.code, f"entry time {time!r} is not a number")
    if not math.isfinite(time):
        return _reject(state, None, request_id, InvalidRequest.code, f"entry time {time!r} is not a number")
    term = entry.term
    if type(term) is not int or term < 0:  # check_term's rule, without a call for the common case
        try:
            term = check_term(term, "entry term")
        except TesseraError as exc:
            return _reject(state, time, request_id, exc.code, exc.message)
    if term < state.term:
        return _reject(state, time, request_id, Conflict.code,
                       f"entry from term {term}, older than the current term {state.term}")
    events = entry.events
    if not isinstance(events, (tuple, list)):
        return _reject(state, time, request_id, InvalidRequest.code, "entry events: must be a sequence")

    tx = _Tx(float(time))
    recorded: list[Event] = []
    position = -1  # which event failed, for the reason; -1: the entry's post-checks
    try:
        for position, event in enumerate(events):  # noqa: B007 - read in the except clauses
            handler = _HANDLERS.get(type(event))
            if handler is None:
                raise InvalidRequest(f"unknown event type {type(event).__name__}")
            if handler(state, event, tx):
                recorded.append(event)
        position = -1
        for check in tx.post_checks:
            check()
    except TesseraError as exc:
        tx.rollback()
        return _reject(state, time, request_id, exc.code, f"{_step(events, position)}: {exc.message}")
    except Exception as exc:  # noqa: BLE001 - a handler bug must become a rejection, not a frozen cluster
        tx.rollback()
        return _reject(state, time, request_id, INTERNAL_ERROR,
                       f"internal error in {_step(events, position)}: {exc!r}")

    first = state.seq + 1
    if len(recorded) == 1:  # most entries
        numbered: tuple[tuple[int, Event], ...] = ((first, recorded[0]),)
    else:
        numbered = tuple(zip(range(first, first + len(recorded)), recorded, strict=True))
    state.seq += len(recorded)
    state.time = float(time)
    counts = state.event_counts
    for event in recorded:
        name = type(event).__name__
        counts[name] = counts.get(name, 0) + 1
    if len(state.completed_tasks) > state.completed_tasks_limit:  # checked inline: this runs per entry
        _trim(state.completed_tasks, state.completed_tasks_limit)
    if len(state.retired_offers) > state.retired_offers_limit:
        _trim(state.retired_offers, state.retired_offers_limit)
    result = ApplyResult("applied", numbered, first, state.seq, "", "", request_id)
    _remember(state, request_id, result)
    return result


def _step(events: Sequence[object], position: int) -> str:
    if position < 0:
        return "the entry's post-checks"
    return f"event {position} ({type(events[position]).__name__})"


def _reject(state: ClusterState, time: float | None, request_id: str, code: str, reason: str) -> ApplyResult:
    """Record the entry as one Rejected event (the state is otherwise unchanged)."""
    rejected = Rejected(reason=_truncate(reason), code=code)
    state.seq += 1
    if time is not None:
        state.time = float(time)
    state.event_counts["Rejected"] = state.event_counts.get("Rejected", 0) + 1
    result = ApplyResult("rejected", ((state.seq, rejected),), state.seq, state.seq, code, rejected.reason,
                         request_id)
    _remember(state, request_id, result)
    return result


def _remember(state: ClusterState, request_id: str, result: ApplyResult) -> None:
    if not request_id:
        return
    # stored without its events: the table is snapshotted, and a duplicate answers without them anyway
    state.requests[request_id] = remembered(result)
    if len(state.requests) > state.request_limit:
        _trim(state.requests, state.request_limit)


def _trim(memory: OrderedDict[Any, Any], limit: int) -> None:
    while len(memory) > max(limit, 0):
        memory.popitem(last=False)


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_TEXT_LENGTH else text[: MAX_TEXT_LENGTH - 1] + "…"


# ---- shared checks and mutations -------------------------------------------------------------------
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


def _gone_offer(state: ClusterState, offer_id: str) -> TesseraError:
    why = state.retired_offers.get(offer_id)
    if why is not None:
        return Conflict(f"offer {offer_id} is no longer valid: {why}")
    return NotFound(f"offer {offer_id} is not known")


def _live_offer(state: ClusterState, offer_id: object, framework_id: object, agent_id: object) -> Offer:
    oid = check_id(offer_id, "offer_id")
    offer = state.offers.get(oid)
    if offer is None:
        raise _gone_offer(state, oid)
    if offer.framework_id != framework_id or offer.agent_id != agent_id:
        raise Conflict(f"offer {oid} is for framework {offer.framework_id} on agent {offer.agent_id}")
    return offer


def _retire_offer(state: ClusterState, offer: Offer, why: str, tx: _Tx) -> None:
    agent = state.agents[offer.agent_id]
    fw = state.frameworks[offer.framework_id]
    tx.pop(state.offers, offer.offer_id)
    tx.assign(agent, "offered", agent.offered - offer.resources)
    tx.discard(agent.offer_ids, offer.offer_id)
    tx.assign(fw, "offered", fw.offered - scalar_part(offer.resources))
    tx.discard(fw.offer_ids, offer.offer_id)
    tx.put(state.retired_offers, offer.offer_id, why)


def _no_offers(what: str, offer_ids: set[str]) -> None:
    if offer_ids:
        raise Conflict(f"{what} still has offers ({', '.join(sorted(offer_ids))}); rescind them first")


def _drop_filters(state: ClusterState, tx: _Tx, *, framework_id: str = "", agent_id: str = "") -> None:
    for key in [k for k in state.decline_filters if k[0] == framework_id or k[1] == agent_id]:
        tx.pop(state.decline_filters, key)  # dict order is insertion order: the same on every master


def _complete(state: ClusterState, task: TaskRecord, tx: _Tx) -> None:
    """A terminal task with nothing left to acknowledge leaves the live tables for `completed_tasks`."""
    key = task.key
    tx.pop(state.tasks, key)
    agent = state.agents.get(task.agent_id)
    if agent is not None:
        tx.discard(agent.task_keys, key)
    fw = state.frameworks.get(task.framework_id)
    if fw is not None:
        tx.discard(fw.task_ids, key.task_id)
    tx.put(state.completed_tasks, key, task)


def _reason(value: object) -> str:
    return check_text(value, "reason")


# ---- cluster ---------------------------------------------------------------------------------------
def _leader_elected(state: ClusterState, e: LeaderElected, tx: _Tx) -> bool:
    term = check_term(e.term)
    if term < 1:
        raise InvalidRequest("term: a leader is elected in term 1 or later")
    master = check_id(e.master, "master")
    grpc = check_text(e.grpc_address, "grpc_address", MAX_ID_LENGTH)
    name = check_text(e.name, "name", MAX_ID_LENGTH)
    if term < state.term:
        raise Conflict(f"term {term} is older than the current term {state.term}")
    if term == state.term and state.leader and master != state.leader:
        raise Conflict(f"term {term} already has a leader, {state.leader}")
    tx.assign(state, "term", term)
    tx.assign(state, "leader", master)
    tx.assign(state, "leader_grpc", grpc)
    tx.assign(state, "leader_name", name)
    return True


def _master_added(state: ClusterState, e: MasterAdded, tx: _Tx) -> bool:
    name = check_text(e.name, "name", MAX_ID_LENGTH)
    raft = check_id(e.raft_address, "raft_address")
    grpc = check_id(e.grpc_address, "grpc_address")
    tx.put(state.masters, raft, (name, grpc))
    return True


def _master_removed(state: ClusterState, e: MasterRemoved, tx: _Tx) -> bool:
    raft = check_id(e.raft_address, "raft_address")
    if raft not in state.masters:
        raise NotFound(f"master {raft} is not known")
    tx.pop(state.masters, raft)
    return True


# ---- agents ----------------------------------------------------------------------------------------
def _agent_registered(state: ClusterState, e: AgentRegistered, tx: _Tx) -> bool:
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


def _agent_reregistered(state: ClusterState, e: AgentReregistered, tx: _Tx) -> bool:
    agent = _agent(state, e.agent_id)
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
    _no_offers(f"agent {aid}", agent.offer_ids)
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


def _agent_unreachable(state: ClusterState, e: AgentUnreachable, tx: _Tx) -> bool:
    agent = _agent(state, e.agent_id)
    _reason(e.reason)
    if not agent.reachable:
        raise Conflict(f"agent {agent.agent_id} is already {agent.state.name}")
    _no_offers(f"agent {agent.agent_id}", agent.offer_ids)
    for key in sorted(agent.task_keys):
        task = state.tasks[key]
        if not task.terminal and task.state is not TaskState.TASK_UNREACHABLE:
            raise Conflict(f"task {key.task_id} of framework {key.framework_id} on agent {agent.agent_id} is "
                           f"still {task.state.name}")
    tx.assign(agent, "state", AgentState.AGENT_UNREACHABLE)
    tx.assign(agent, "unreachable_at", tx.time)
    return True


def _agent_removed(state: ClusterState, e: AgentRemoved, tx: _Tx) -> bool:
    agent = _agent(state, e.agent_id)
    reason = _reason(e.reason)
    if agent.state is AgentState.AGENT_REMOVED:
        raise Conflict(f"agent {agent.agent_id} is already removed")
    _no_offers(f"agent {agent.agent_id}", agent.offer_ids)
    for key in sorted(agent.task_keys):
        if not state.tasks[key].terminal:
            raise Conflict(f"task {key.task_id} of framework {key.framework_id} on agent {agent.agent_id} "
                           "has not ended")
    tx.assign(agent, "state", AgentState.AGENT_REMOVED)
    tx.assign(agent, "removed_reason", reason)
    tx.assign(agent, "draining", False)
    _drop_filters(state, tx, agent_id=agent.agent_id)
    return True


def _agent_drain_started(state: ClusterState, e: AgentDrainStarted, tx: _Tx) -> bool:
    agent = _agent(state, e.agent_id)
    if agent.state is not AgentState.AGENT_ACTIVE:
        raise Conflict(f"agent {agent.agent_id} is {agent.state.name}; only an active agent can drain")
    _no_offers(f"agent {agent.agent_id}", agent.offer_ids)
    tx.assign(agent, "state", AgentState.AGENT_DRAINING)
    tx.assign(agent, "draining", True)
    tx.post_checks.append(lambda: _all_killed(state, agent.task_keys, f"agent {agent.agent_id}'s drain"))
    return True


def _all_killed(state: ClusterState, keys: Iterable[TaskKey], what: str) -> None:
    """A removal or drain was decided with a kill for every live task; one without a kill was launched
    after it was decided (both in flight at once) and would be left running: decide it again."""
    for key in sorted(keys):
        task = state.tasks[key]
        if not task.terminal and not task.kill_requested:
            raise Conflict(f"task {key.task_id} of framework {key.framework_id} was launched after {what} "
                           "was decided; decide it again")


# ---- frameworks ------------------------------------------------------------------------------------
def _framework_subscribed(state: ClusterState, e: FrameworkSubscribed, tx: _Tx) -> bool:
    fid = check_id(e.framework_id, "framework_id")
    info = check_framework_info(e.info)
    if info.framework_id != fid:
        raise InvalidRequest(f"info.framework_id {info.framework_id!r} is not the event's framework_id {fid}")
    stream_id = check_id(e.stream_id, "stream_id")
    if not isinstance(e.resubscribed, bool):
        raise InvalidRequest("resubscribed: must be a bool")
    fw = state.frameworks.get(fid)
    if not e.resubscribed:
        if fw is not None:
            raise Conflict(f"framework {fid} already exists")
        tx.put(state.frameworks, fid, FrameworkRecord(
            info=info, state=FrameworkState.FRAMEWORK_CONNECTED, stream_id=stream_id, subscribed_at=tx.time,
        ))
        return True
    if fw is None:
        raise NotFound(f"framework {fid} is not known")
    if fw.state is FrameworkState.FRAMEWORK_REMOVED:
        raise Conflict(f"framework {fid} was removed")
    if info.principal != fw.info.principal:
        raise Conflict(f"framework {fid} subscribed as principal {fw.info.principal!r}")
    _no_offers(f"framework {fid}", fw.offer_ids)
    tx.assign(fw, "info", info)
    tx.assign(fw, "state", FrameworkState.FRAMEWORK_CONNECTED)
    tx.assign(fw, "stream_id", stream_id)
    tx.assign(fw, "failover_deadline", 0.0)
    tx.assign(fw, "suppressed_roles", fw.suppressed_roles & frozenset(info.roles))
    return True


def _framework_disconnected(state: ClusterState, e: FrameworkDisconnected, tx: _Tx) -> bool:
    fw = _framework(state, e.framework_id)
    deadline = check_number(e.failover_deadline, "failover_deadline", maximum=MAX_TIME)
    if fw.state is not FrameworkState.FRAMEWORK_CONNECTED:
        raise Conflict(f"framework {fw.framework_id} is {fw.state.name}")
    if e.stream_id and e.stream_id != fw.stream_id:
        # decided for a stream that has since been replaced by a resubscription: stale
        raise Conflict(f"framework {fw.framework_id} resubscribed on a newer stream")
    _no_offers(f"framework {fw.framework_id}", fw.offer_ids)
    tx.assign(fw, "state", FrameworkState.FRAMEWORK_DISCONNECTED)
    tx.assign(fw, "failover_deadline", deadline)
    tx.assign(fw, "stream_id", "")
    return True


def _framework_removed(state: ClusterState, e: FrameworkRemoved, tx: _Tx) -> bool:
    fw = _framework(state, e.framework_id)
    reason = _reason(e.reason)
    if fw.state is FrameworkState.FRAMEWORK_REMOVED:
        raise Conflict(f"framework {fw.framework_id} is already removed")
    _no_offers(f"framework {fw.framework_id}", fw.offer_ids)
    fid = fw.framework_id
    _all_killed(state, [TaskKey(fid, t) for t in fw.task_ids], f"framework {fid}'s removal")
    tx.assign(fw, "state", FrameworkState.FRAMEWORK_REMOVED)
    tx.assign(fw, "removed_reason", reason)
    tx.assign(fw, "stream_id", "")
    tx.assign(fw, "failover_deadline", 0.0)
    for task_id in sorted(fw.task_ids):
        task = state.tasks[TaskKey(fid, task_id)]
        if task.unacknowledged:  # nobody is left to acknowledge them
            tx.assign(task, "unacknowledged", ())
        if task.terminal:
            _complete(state, task, tx)
    _drop_filters(state, tx, framework_id=fw.framework_id)
    return True


def _framework_roles(fw: FrameworkRecord, roles: object) -> frozenset[str]:
    named = check_roles(roles)
    unknown = [r for r in named if r not in fw.info.roles]
    if unknown:
        raise InvalidRequest(f"roles: framework {fw.framework_id} is not subscribed to {', '.join(unknown)}")
    return frozenset(named or fw.info.roles)


def _framework_suppressed(state: ClusterState, e: FrameworkSuppressed, tx: _Tx) -> bool:
    fw = _framework(state, e.framework_id)
    if fw.state is FrameworkState.FRAMEWORK_REMOVED:
        raise Conflict(f"framework {fw.framework_id} was removed")
    tx.assign(fw, "suppressed_roles", fw.suppressed_roles | _framework_roles(fw, e.roles))
    return True


def _framework_revived(state: ClusterState, e: FrameworkRevived, tx: _Tx) -> bool:
    fw = _framework(state, e.framework_id)
    if fw.state is FrameworkState.FRAMEWORK_REMOVED:
        raise Conflict(f"framework {fw.framework_id} was removed")
    tx.assign(fw, "suppressed_roles", fw.suppressed_roles - _framework_roles(fw, e.roles))
    _drop_filters(state, tx, framework_id=fw.framework_id)
    return True


# ---- offers ----------------------------------------------------------------------------------------
def _offer_issued(state: ClusterState, e: OfferIssued, tx: _Tx) -> bool:
    oid = check_id(e.offer_id, "offer_id")
    offer = e.offer
    if not isinstance(offer, Offer):
        raise InvalidRequest("offer: must be an Offer")
    if (offer.offer_id, offer.framework_id, offer.agent_id) != (oid, e.framework_id, e.agent_id):
        raise InvalidRequest(f"offer {oid}: the offer's ids do not match the event's")
    if oid in state.offers or oid in state.retired_offers:
        raise Conflict(f"offer id {oid} is already used")
    fw = _framework(state, e.framework_id)
    agent = _agent(state, e.agent_id)
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
    check_number(offer.expires_at, "offer.expires_at", maximum=MAX_TIME)
    check_text(offer.hostname, "offer.hostname", MAX_ID_LENGTH)
    check_labels(offer.attributes, "offer.attributes")
    key = (fid, aid)
    until = state.decline_filters.get(key)
    if until is not None:
        if until > tx.time:
            raise Conflict(f"framework {fid} declined agent {aid} until {until}")
        tx.pop(state.decline_filters, key)  # expired: forget it
    if not state.agent_free(aid).contains(resources):
        raise Conflict(f"offer {oid} of {resources} does not fit what is free on agent {aid}")
    tx.put(state.offers, oid, offer)
    tx.assign(agent, "offered", agent.offered + resources)
    tx.add(agent.offer_ids, oid)
    tx.assign(fw, "offered", fw.offered + scalar_part(resources))
    tx.add(fw.offer_ids, oid)
    return True


def _offer_declined(state: ClusterState, e: OfferDeclined, tx: _Tx) -> bool:
    oid = check_id(e.offer_id, "offer_id")
    fid = check_id(e.framework_id, "framework_id")
    aid = check_id(e.agent_id, "agent_id")
    until = check_number(e.refuse_until, "refuse_until", maximum=MAX_TIME)
    offer = state.offers.get(oid)
    if offer is not None:
        offer = _live_offer(state, oid, fid, aid)
        _retire_offer(state, offer, "declined", tx)
    elif tx.accepted.get(oid) != (fid, aid):  # not the filter of an Accept earlier in this entry
        raise _gone_offer(state, oid)
    key = (fid, aid)
    if until > tx.time and until > state.decline_filters.get(key, 0.0):
        tx.put(state.decline_filters, key, until)
    return True


def _offer_rescinded(state: ClusterState, e: OfferRescinded, tx: _Tx) -> bool:
    oid = check_id(e.offer_id, "offer_id")
    reason = _reason(e.reason)
    if oid not in state.offers:
        if oid in state.retired_offers:
            return False  # already gone (used, declined, rescinded): nothing to rescind
        raise NotFound(f"offer {oid} is not known")
    offer = _live_offer(state, oid, e.framework_id, e.agent_id)
    _retire_offer(state, offer, f"rescinded: {reason}" if reason else "rescinded", tx)
    return True


def _offer_accepted(state: ClusterState, e: OfferAccepted, tx: _Tx) -> bool:
    offer = _live_offer(state, e.offer_id, e.framework_id, e.agent_id)
    fw = state.frameworks[offer.framework_id]
    if fw.state is not FrameworkState.FRAMEWORK_CONNECTED:
        raise Conflict(f"framework {fw.framework_id} is {fw.state.name}")
    key = (offer.framework_id, offer.agent_id)
    pool = tx.pools.get(key)
    if pool is None:
        tx.pools[key] = [offer.role, offer.resources]
    elif pool[0] != offer.role:
        raise InvalidRequest("the offers of one accept must be for one role")
    else:
        pool[1] = pool[1] + offer.resources
    _retire_offer(state, offer, "accepted", tx)
    tx.accepted[offer.offer_id] = key
    return True


# ---- tasks -----------------------------------------------------------------------------------------
def _task_launched(state: ClusterState, e: TaskLaunched, tx: _Tx) -> bool:
    tid = check_id(e.task_id, "task_id")
    task = check_task_info(e.task)
    if (task.task_id, task.framework_id, task.agent_id) != (tid, e.framework_id, e.agent_id):
        raise InvalidRequest(f"task {tid}: the task's ids do not match the event's")
    fw = _framework(state, e.framework_id)
    key = TaskKey(fw.framework_id, tid)
    if key in state.tasks or key in state.completed_tasks:
        raise Conflict(f"task id {tid} is already used by this framework")
    agent = _agent(state, e.agent_id)
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


def _task_kill_requested(state: ClusterState, e: TaskKillRequested, tx: _Tx) -> bool:
    task = _task(state, e.task_id, e.framework_id, e.agent_id)
    grace = check_number(e.grace_period_seconds, "grace_period_seconds")
    if task.terminal:
        raise Conflict(f"task {task.task_id} already ended ({task.state.name})")
    tx.assign(task, "kill_requested", True)
    tx.assign(task, "kill_grace_period_seconds", grace)
    return True


def _task_status_updated(state: ClusterState, e: TaskStatusUpdated, tx: _Tx) -> bool:
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
            _complete(state, task, tx)
    return True


def _task_status_acknowledged(state: ClusterState, e: TaskStatusAcknowledged, tx: _Tx) -> bool:
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
        _complete(state, task, tx)
    return True


# ---- policy ----------------------------------------------------------------------------------------
def _role_weight_set(state: ClusterState, e: RoleWeightSet, tx: _Tx) -> bool:
    role = check_role(e.role)
    weight = check_number(e.weight, "weight", positive=True, maximum=MAX_WEIGHT)
    current = state.roles.get(role)
    if current is None:
        tx.put(state.roles, role, RoleInfo(role, weight))
    else:
        tx.put(state.roles, role, RoleInfo(role, weight, current.quota_guarantee, current.quota_limit))
    return True


def _quota_set(state: ClusterState, e: QuotaSet, tx: _Tx) -> bool:
    role = check_role(e.role)
    guarantee, limit = check_quota(e.guarantee, e.limit)
    current = state.roles.get(role)
    tx.put(state.roles, role, RoleInfo(role, current.weight if current else 1.0, guarantee, limit))
    return True


def _reservation(state: ClusterState, e: ResourcesReserved | ResourcesUnreserved) -> tuple[
    AgentRecord, str, Resources
]:
    agent = _agent(state, e.agent_id)
    check_optional_id(e.framework_id, "framework_id")
    role = check_role(e.role)
    resources = check_resources(e.resources, "resources", allow_empty=False)
    if resources.roles() != {role}:
        raise InvalidRequest(f"resources: must all be reserved to role {role}")
    if agent.state is not AgentState.AGENT_ACTIVE:
        raise Conflict(f"agent {agent.agent_id} is {agent.state.name}")
    return agent, role, resources


def _take_from_pool(state: ClusterState, e: ResourcesReserved | ResourcesUnreserved, tx: _Tx, role: str,
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


def _resources_reserved(state: ClusterState, e: ResourcesReserved, tx: _Tx) -> bool:
    agent, role, resources = _reservation(state, e)
    flat = resources.flatten()
    _take_from_pool(state, e, tx, role, flat, resources)
    tx.assign(agent, "total", agent.total - flat + resources)
    tx.assign(agent, "reserved", agent.reserved + resources)
    return True


def _resources_unreserved(state: ClusterState, e: ResourcesUnreserved, tx: _Tx) -> bool:
    agent, role, resources = _reservation(state, e)
    if not agent.reserved.contains(resources):
        raise Conflict(f"{resources} is not dynamically reserved on agent {agent.agent_id}")
    flat = resources.flatten()
    _take_from_pool(state, e, tx, role, resources, flat)
    tx.assign(agent, "total", agent.total - resources + flat)
    tx.assign(agent, "reserved", agent.reserved - resources)
    return True


# ---- outcome and unknown ---------------------------------------------------------------------------
def _rejected(state: ClusterState, e: Rejected, tx: _Tx) -> bool:
    check_text(e.reason, "reason")
    check_text(e.code, "code", MAX_ID_LENGTH)
    return True  # a recorded outcome: no effect on state


def _unknown(state: ClusterState, e: UnknownEvent, tx: _Tx) -> bool:
    if e.ignorable is not True:
        raise InvalidRequest(f"event type {e.type_number} is unknown to this master and not ignorable")
    return True  # recorded without effect so that every master version numbers the log alike


_Handler = Callable[[ClusterState, Any, _Tx], bool]

_HANDLERS: dict[type, _Handler] = {
    LeaderElected: _leader_elected,
    MasterAdded: _master_added,
    MasterRemoved: _master_removed,
    AgentRegistered: _agent_registered,
    AgentReregistered: _agent_reregistered,
    AgentUnreachable: _agent_unreachable,
    AgentRemoved: _agent_removed,
    AgentDrainStarted: _agent_drain_started,
    FrameworkSubscribed: _framework_subscribed,
    FrameworkDisconnected: _framework_disconnected,
    FrameworkRemoved: _framework_removed,
    FrameworkSuppressed: _framework_suppressed,
    FrameworkRevived: _framework_revived,
    OfferIssued: _offer_issued,
    OfferDeclined: _offer_declined,
    OfferRescinded: _offer_rescinded,
    OfferAccepted: _offer_accepted,
    TaskLaunched: _task_launched,
    TaskKillRequested: _task_kill_requested,
    TaskStatusUpdated: _task_status_updated,
    TaskStatusAcknowledged: _task_status_acknowledged,
    RoleWeightSet: _role_weight_set,
    QuotaSet: _quota_set,
    ResourcesReserved: _resources_reserved,
    ResourcesUnreserved: _resources_unreserved,
    Rejected: _rejected,
    UnknownEvent: _unknown,
}
