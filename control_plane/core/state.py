"""The replicated master state: what every master holds after applying the log up to `seq`.

`ClusterState` is plain, mutable Python: dicts of small record objects, no locks, no threads, nothing that
cannot be pickled (Raft snapshots it). Only `apply` mutates it; everything else reads it.

What it holds:
- `seq`: the number of the last event recorded. Events are numbered 1, 2, 3... in apply order, identically
  on every master; `event_counts` counts them per type (the invariant checker recomputes `seq` from it).
- the cluster (`term`, `leader`, `masters`), `agents`, `frameworks` (with their lease, `core.leases`), live
  `offers`, `tasks` (with their unacknowledged status updates, so a new leader re-sends them), `roles`
  (weights and quota), `decline_filters`, and each framework's key/value state (`framework_state`, by
  framework id: `core.framework_state`; dropped when the framework is removed).
- bounded, FIFO-evicted memories that keep writes idempotent: `requests` (request id -> original
  `ApplyResult`), `completed_tasks` (terminal, fully acknowledged tasks, so retried updates and acks are
  recognised), `retired_offers` (why an offer is gone, so a stale offer is told apart from an unknown id).
  Their bounds are fields of the state itself, so every master evicts the same entries at the same seq.

Rules:
- Iteration order of dicts and sets is never part of a decision: whoever turns state into events sorts
  ids first (sets of strings iterate in a per-process hash order).
- A record's `used` / `offered` are caches of sums over tasks and offers, kept by `apply` and re-derived by
  `invariants.check_invariants`.
- Fields are appended with defaults, and a state pickled by an earlier version (a Raft dump or snapshot)
  loads with those defaults (`_restore_with_defaults`).

Also here: `ApplyResult` (stored in the de-dup table, so it lives with the state) and the value checks
shared by `decide` (validating requests) and `apply` (re-validating events, which may be garbage).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from enum import Enum
from typing import Literal, NamedTuple, TypeVar

from tessera.control_plane.core.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    TesseraError,
    error_from_code,
)
from tessera.control_plane.core.events import Event
from tessera.control_plane.core.lifecycle import is_terminal
from tessera.control_plane.core.resources import EMPTY, Resources, validate_role
from tessera.control_plane.core.uris import check_uris
from tessera.control_plane.core.values import (
    AgentInfo,
    AgentState,
    CommandInfo,
    FrameworkInfo,
    FrameworkState,
    Labels,
    Offer,
    RoleInfo,
    StatusSource,
    TaskInfo,
    TaskState,
    TaskStatus,
    slot_setters,
)
from tessera.control_plane.core.values import TaskKey as TaskKey  # re-exported: the state is keyed by it

# ---- limits --------------------------------------------------------------------------------------
MAX_ID_LENGTH = 255
MAX_TEXT_LENGTH = 4096
MAX_SECONDS = 1e9  # ~31 years: any duration above this is a mistake and would only lose float precision
MAX_TIME = 1e11  # unix seconds (year ~5138): absolute times above this are garbage
MAX_WEIGHT = 1e6
DEFAULT_REFUSE_SECONDS = 5.0  # Mesos' default decline filter
MAX_SHUTDOWN_DELAY = 3600.0  # a task's drain before its SIGTERM (TaskInfo.shutdown_delay_seconds): an hour at most
MAX_REFUSE_SECONDS = 365 * 24 * 3600.0  # Mesos caps filters at a year; longer requests are clamped
REQUEST_DEDUP_LIMIT = 50_000
COMPLETED_TASKS_LIMIT = 10_000
RETIRED_OFFERS_LIMIT = 10_000
STATUS_UUIDS_PER_TASK = 128  # agents retry the newest updates only; older uuids need not be remembered

_ID_RE = re.compile(r"^[\x21-\x7e]+\Z")  # printable ASCII without spaces: ids end up in URLs and file names

Outcome = Literal["applied", "rejected", "duplicate"]
_V = TypeVar("_V")


# ---- the result of applying one entry --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What applying one entry did.

    `events` are the (seq, event) pairs actually recorded: every effective event for 'applied', the one
    `Rejected` event for 'rejected', nothing for 'duplicate'. `first_seq..last_seq` is that range
    (empty, first_seq = last_seq + 1, when nothing was recorded); `last_seq` is always the state's seq
    after the entry, so a caller can read its own write. A 'duplicate' carries the original entry's
    seqs, error code and reason: check `ok`, not only `outcome`.
    """

    outcome: Outcome
    events: tuple[tuple[int, Event], ...] = ()
    first_seq: int = 0
    last_seq: int = 0
    error_code: str = ""
    reason: str = ""
    request_id: str = ""

    # One is made per entry on every master: the slots' own descriptors (bound once, below the class)
    # store the fields in 0.3 us where the dataclass's frozen __init__ (object.__setattr__ per field)
    # takes 0.55. Same parameters and defaults; still frozen; pickles as before.
    def __init__(self, outcome: Outcome, events: tuple[tuple[int, Event], ...] = (), first_seq: int = 0,
                 last_seq: int = 0, error_code: str = "", reason: str = "", request_id: str = "") -> None:
        _set_result_outcome(self, outcome)
        _set_result_events(self, events)
        _set_result_first_seq(self, first_seq)
        _set_result_last_seq(self, last_seq)
        _set_result_error_code(self, error_code)
        _set_result_reason(self, reason)
        _set_result_request_id(self, request_id)

    @property
    def ok(self) -> bool:
        """False when the entry (or, for a duplicate, the original) was rejected."""
        return not self.error_code

    def error(self) -> TesseraError | None:
        return None if self.ok else error_from_code(self.error_code, self.reason)

    def raise_for_error(self) -> None:
        err = self.error()
        if err is not None:
            raise err


(_set_result_outcome, _set_result_events, _set_result_first_seq, _set_result_last_seq, _set_result_error_code,
 _set_result_reason, _set_result_request_id) = slot_setters(ApplyResult)


# What the state keeps of an applied entry's result, by request id, to answer a retry: an `ApplyResult`
# without its events. Made for every entry on every master, held by the tens of thousands (50,000 once
# full: the largest of the bounded memories) and pickled with every snapshot. The common case, an entry
# applied without error, is one int: `last_seq * APPLIED_SPAN + (last_seq - first_seq + 1)` (28 bytes,
# where the tuple and its two ints took 136: 316 -> ~210 bytes per remembered request with its key
# and the table's own entry, measured on a soak's log, docs/reliability.md). Any other result, and an
# applied entry that recorded APPLIED_SPAN events or more, is a plain tuple (outcome, first_seq,
# last_seq, error_code, reason): a frozen dataclass cost 3x more to make and 10x more to pickle, a
# NamedTuple 5x more to pickle. States pickled before the ints hold only tuples (or, older still,
# `ApplyResult`s): `remembered_result` reads all three.
Remembered = int | tuple[Outcome, int, int, str, str]
APPLIED_SPAN = 1024


def remembered(result: ApplyResult) -> Remembered:
    count = result.last_seq - result.first_seq + 1  # 0 for an entry that recorded no event
    if result.outcome == "applied" and not result.error_code and not result.reason and 0 <= count < APPLIED_SPAN:
        return result.last_seq * APPLIED_SPAN + count
    return (result.outcome, result.first_seq, result.last_seq, result.error_code, result.reason)


def remembered_result(value: Remembered | ApplyResult, request_id: str) -> ApplyResult:
    """The `ApplyResult` (without events) a remembered request answers with."""
    if isinstance(value, int):
        last_seq, count = divmod(value, APPLIED_SPAN)
        return ApplyResult("applied", (), last_seq - count + 1, last_seq, "", "", request_id)
    if isinstance(value, ApplyResult):  # restored from a Raft snapshot of an earlier version
        return value
    outcome, first_seq, last_seq, error_code, reason = value
    return ApplyResult(outcome, (), first_seq, last_seq, error_code, reason, request_id)


# ---- records -------------------------------------------------------------------------------------
@dataclass(slots=True)
class AgentRecord:
    info: AgentInfo
    state: AgentState
    registered_at: float
    total: Resources  # info.resources with the dynamic reservations applied
    reserved: Resources = EMPTY  # dynamic reservations (RESERVE operations), in reserved form
    used: Resources = EMPTY  # sum of its non-terminal tasks
    offered: Resources = EMPTY  # sum of its live offers
    task_keys: set[TaskKey] = field(default_factory=set)  # tasks in `ClusterState.tasks` on this agent
    offer_ids: set[str] = field(default_factory=set)
    draining: bool = False  # survives unreachability: a draining agent that comes back is still draining
    reregistered_at: float = 0.0
    unreachable_at: float = 0.0
    removed_reason: str = ""
    identity: str = ""  # the certificate name it registered with ("" without TLS); never changes

    def __setstate__(self, state: object) -> None:
        # a Raft snapshot of an earlier version has no `identity`: its agents registered without one
        self.identity = ""
        slots = state[1] if isinstance(state, tuple) else state
        if isinstance(slots, dict):
            for name, value in slots.items():
                setattr(self, name, value)

    @property
    def agent_id(self) -> str:
        return self.info.agent_id

    @property
    def reachable(self) -> bool:
        return self.state in (AgentState.AGENT_ACTIVE, AgentState.AGENT_DRAINING)


@dataclass(slots=True)
class FrameworkRecord:
    """`used` / `offered` are scalar quantities only: ranges such as ports are meaningful per agent, and
    summing port 31000 of two agents would merge them into one."""

    info: FrameworkInfo
    state: FrameworkState
    stream_id: str
    subscribed_at: float
    failover_deadline: float = 0.0  # set while DISCONNECTED
    suppressed_roles: frozenset[str] = frozenset()
    used: Resources = EMPTY  # scalars of its non-terminal tasks
    offered: Resources = EMPTY  # scalars of its live offers
    task_ids: set[str] = field(default_factory=set)  # its live tasks: ids are scoped per framework
    offer_ids: set[str] = field(default_factory=set)
    removed_reason: str = ""
    lease_term: int = 0  # the term of its lease (core.leases); 0: subscribed before leases, never since
    by_name: bool = False  # created by a standby without an id: its (principal, name) names it
    disconnected_at: float = 0.0  # when it was last disconnected (`Entry.time`); the takeover delay runs from it

    def __setstate__(self, state: object) -> None:
        _restore_with_defaults(self, state)

    @property
    def framework_id(self) -> str:
        return self.info.framework_id


@dataclass(slots=True)
class TaskRecord:
    info: TaskInfo
    state: TaskState
    role: str  # the allocation role of the offers it was launched from
    launched_at: float
    last_status: TaskStatus | None = None
    unacknowledged: tuple[TaskStatus, ...] = ()  # in the order they were recorded
    applied_uuids: tuple[str, ...] = ()  # newest last, at most STATUS_UUIDS_PER_TASK
    kill_requested: bool = False
    kill_grace_period_seconds: float = 0.0

    @property
    def task_id(self) -> str:
        return self.info.task_id

    @property
    def key(self) -> TaskKey:
        return TaskKey(self.info.framework_id, self.info.task_id)

    @property
    def framework_id(self) -> str:
        return self.info.framework_id

    @property
    def agent_id(self) -> str:
        return self.info.agent_id

    @property
    def resources(self) -> Resources:
        return self.info.resources

    @property
    def terminal(self) -> bool:
        return is_terminal(self.state)


# Completed task records are held by the ten thousand (`COMPLETED_TASKS_LIMIT`), each with its own copies
# of what most of them share: the framework and agent ids, the role, the resources and command (a
# framework launches many tasks alike), the ids again in the last status. `compact_completed` makes
# equal values one object when a task is completed: 2.35 -> ~1 KB per record (measured on a soak's
# log, docs/reliability.md). Only identity changes, never a value: the state, its fingerprint and what
# every reader sees are the same, on every master, whatever each process shared before. The values go
# through `_share`, a table of at most _SHARED_LIMIT values keyed by type and repr (so 1 and 1.0, or
# True and 1, are never merged), emptied when full: bounded, and a value missed is only a copy kept.
_SHARED_LIMIT = 1024
_shared: dict[tuple[type, str], object] = {}


def _share(value: _V) -> _V:
    """An equal value of the same type and repr already held, or `value` itself (then held)."""
    key = (type(value), repr(value))
    found = _shared.get(key)
    if found is not None:
        return found  # type: ignore[return-value]
    if len(_shared) >= _SHARED_LIMIT:
        _shared.clear()
    _shared[key] = value
    return value


def _same(value: str, *candidates: str) -> str:
    """`value`, or the first candidate equal to it (the object the record already holds)."""
    for candidate in candidates:
        if candidate == value:
            return candidate
    return _share(value)


def compact_completed(task: TaskRecord) -> None:
    """Share what a completed task's record holds with other records (the comment above), in place."""
    info = task.info
    framework_id, agent_id = _share(info.framework_id), _share(info.agent_id)
    task.info = info = replace(info, framework_id=framework_id, agent_id=agent_id,
                               resources=_share(info.resources), command=_share(info.command))
    task.role = _share(task.role)
    status = task.last_status
    if status is not None:
        uuids = task.applied_uuids[-1:]
        task.last_status = replace(status, task_id=_same(status.task_id, info.task_id),
                                   agent_id=_same(status.agent_id, agent_id),
                                   framework_id=_same(status.framework_id, framework_id),
                                   uuid=_same(status.uuid, *uuids))


class StateEntry(NamedTuple):
    """One key of a framework's key/value state: its `value`, its `version` (the seq of the event that put
    it) and its `size` (bytes of key and value in UTF-8, what the per-framework limit counts)."""

    version: int
    value: str
    size: int


@dataclass(slots=True)
class StateTable:
    """A framework's key/value state: its entries by key and their total size (keys and values, bytes)."""

    entries: dict[str, StateEntry] = field(default_factory=dict)
    size: int = 0

    def __setstate__(self, state: object) -> None:
        _restore_with_defaults(self, state)


def _restore_with_defaults(obj: object, state: object) -> None:
    """Unpickle a record written before fields were appended to its class: the fields the pickle has are
    restored, the others take their defaults. (A slots dataclass pickles as `(None, {slot: value})`, a
    plain one as its `__dict__`; either would leave a newer field unset.)"""
    slots = state[1] if isinstance(state, tuple) else state
    values = slots if isinstance(slots, dict) else {}
    if isinstance(state, tuple) and isinstance(state[0], dict):
        values = {**state[0], **values}
    for f in fields(obj):  # type: ignore[arg-type]
        if f.name in values:
            value = values[f.name]
        elif f.default_factory is not MISSING:
            value = f.default_factory()
        elif f.default is not MISSING:
            value = f.default
        else:
            raise TypeError(f"{type(obj).__name__}: pickled state lacks the required field {f.name!r}")
        object.__setattr__(obj, f.name, value)


@dataclass(frozen=True, slots=True)
class Totals:
    """Scalar resource sums over reachable agents (ranges are per agent and do not add up across
    agents); `free` counts only agents that can be offered (ACTIVE)."""

    total: Resources
    used: Resources
    offered: Resources
    free: Resources


# ---- the state -------------------------------------------------------------------------------------
@dataclass
class ClusterState:
    seq: int = 0
    time: float = 0.0  # `Entry.time` of the last applied entry
    term: int = 0
    leader: str = ""
    leader_grpc: str = ""
    leader_name: str = ""
    masters: dict[str, tuple[str, str]] = field(default_factory=dict)  # raft address -> (name, grpc)
    agents: dict[str, AgentRecord] = field(default_factory=dict)
    frameworks: dict[str, FrameworkRecord] = field(default_factory=dict)
    offers: dict[str, Offer] = field(default_factory=dict)
    tasks: dict[TaskKey, TaskRecord] = field(default_factory=dict)  # by (framework id, task id)
    roles: dict[str, RoleInfo] = field(default_factory=dict)
    decline_filters: dict[tuple[str, str], float] = field(default_factory=dict)  # (fw, agent) -> until
    # FIFO memories: OrderedDict because evicting the oldest of a plain dict is O(n) once many were deleted
    requests: OrderedDict[str, Remembered] = field(default_factory=OrderedDict)
    completed_tasks: OrderedDict[TaskKey, TaskRecord] = field(default_factory=OrderedDict)
    retired_offers: OrderedDict[str, str] = field(default_factory=OrderedDict)  # offer id -> why it is gone
    event_counts: dict[str, int] = field(default_factory=dict)
    request_limit: int = REQUEST_DEDUP_LIMIT
    completed_tasks_limit: int = COMPLETED_TASKS_LIMIT
    retired_offers_limit: int = RETIRED_OFFERS_LIMIT
    framework_state: dict[str, StateTable] = field(default_factory=dict)  # framework id -> its key/value state

    def __setstate__(self, state: object) -> None:
        _restore_with_defaults(self, state)

    # ---- agents ------------------------------------------------------------------------------------
    def agent_total(self, agent_id: str) -> Resources:
        return self.agents[agent_id].total

    def agent_free(self, agent_id: str) -> Resources:
        """What can still be offered on the agent: total - used - offered (empty unless ACTIVE)."""
        agent = self.agents[agent_id]
        if agent.state is not AgentState.AGENT_ACTIVE:
            return EMPTY
        return agent.total - agent.used - agent.offered

    def totals(self) -> Totals:
        total = used = offered = free = EMPTY
        for agent_id in sorted(self.agents):
            agent = self.agents[agent_id]
            if not agent.reachable:
                continue
            total, used = total + scalar_part(agent.total), used + scalar_part(agent.used)
            offered = offered + scalar_part(agent.offered)
            free = free + scalar_part(self.agent_free(agent_id))
        return Totals(total=total, used=used, offered=offered, free=free)

    def tasks_on_agent(self, agent_id: str) -> list[TaskRecord]:
        agent = self.agents.get(agent_id)
        return [] if agent is None else [self.tasks[k] for k in sorted(agent.task_keys)]

    def offers_on_agent(self, agent_id: str) -> list[Offer]:
        agent = self.agents.get(agent_id)
        return [] if agent is None else [self.offers[o] for o in sorted(agent.offer_ids)]

    def agent_drained(self, agent_id: str) -> bool:
        """A draining agent with no task left that is not terminal: the operator may remove it."""
        agent = self.agents[agent_id]
        return agent.draining and all(self.tasks[k].terminal for k in agent.task_keys)

    # ---- frameworks ----------------------------------------------------------------------------------
    def tasks_of_framework(self, framework_id: str) -> list[TaskRecord]:
        fw = self.frameworks.get(framework_id)
        return [] if fw is None else [self.tasks[TaskKey(framework_id, t)] for t in sorted(fw.task_ids)]

    def offers_of_framework(self, framework_id: str) -> list[Offer]:
        fw = self.frameworks.get(framework_id)
        return [] if fw is None else [self.offers[o] for o in sorted(fw.offer_ids)]

    def refused_until(self, framework_id: str, agent_id: str) -> float:
        return self.decline_filters.get((framework_id, agent_id), 0.0)

    def is_filtered(self, framework_id: str, agent_id: str, now: float) -> bool:
        """True while a decline filter keeps `agent_id` from being offered to `framework_id`."""
        return self.refused_until(framework_id, agent_id) > now

    # ---- tasks -----------------------------------------------------------------------------------------
    def find_task(self, framework_id: str, task_id: str) -> TaskRecord | None:
        """A framework's live task, or a completed one the state still remembers."""
        key = TaskKey(framework_id, task_id)
        return self.tasks.get(key) or self.completed_tasks.get(key)

    def tasks_named(self, task_id: str) -> list[TaskRecord]:
        """Every task with this id, live or remembered, of any framework, by framework id. For operator
        lookups by a bare task id (a scan: never on a hot path, never for a framework's own calls)."""
        found = {k: t for k, t in self.completed_tasks.items() if k.task_id == task_id}
        found.update((k, t) for k, t in self.tasks.items() if k.task_id == task_id)
        return [found[k] for k in sorted(found)]

    def unacknowledged_updates(self, framework_id: str | None = None) -> list[TaskStatus]:
        """Status updates waiting for the framework's ack, by (framework id, task id) then in recorded
        order (a new leader re-sends exactly these)."""
        if framework_id is None:
            keys: list[TaskKey] = sorted(self.tasks)
        else:
            fw = self.frameworks.get(framework_id)
            keys = [] if fw is None else [TaskKey(framework_id, t) for t in sorted(fw.task_ids)]
        return [s for k in keys for s in self.tasks[k].unacknowledged]

    # ---- roles -----------------------------------------------------------------------------------------
    def role(self, role: str) -> RoleInfo:
        """The role's policy; roles nobody configured have weight 1 and no quota."""
        return self.roles.get(role) or RoleInfo(role=role)

    def role_allocations(self) -> dict[str, Resources]:
        """Per allocation role: scalar resources used by non-terminal tasks plus offered."""
        out: dict[str, Resources] = {}
        for key in sorted(self.tasks):
            task = self.tasks[key]
            if not task.terminal:
                out[task.role] = out.get(task.role, EMPTY) + scalar_part(task.resources)
        for offer_id in sorted(self.offers):
            offer = self.offers[offer_id]
            out[offer.role] = out.get(offer.role, EMPTY) + scalar_part(offer.resources)
        return out

    # ---- idempotence -----------------------------------------------------------------------------------
    def result_for_request(self, request_id: str) -> ApplyResult | None:
        """The result recorded for `request_id`, if it is still remembered: a retried request is answered
        from here without deciding again."""
        value = self.requests.get(request_id) if request_id else None
        return None if value is None else remembered_result(value, request_id)

    # ---- comparison ------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A hash of the whole state, independent of dict and set order: equal states, equal prints."""
        return hashlib.sha256(repr(_canonical(self)).encode()).hexdigest()


def upgrade_task_keys(state: ClusterState) -> ClusterState:
    """Bring a state pickled before task ids were scoped per framework (tasks keyed by the bare task id,
    agents listing bare ids) to the current shape, in place; a current state is returned unchanged.
    Old states held globally unique ids, so each bare id names exactly one task."""
    if not any(isinstance(k, str) for k in (*state.tasks, *state.completed_tasks)):
        return state
    state.tasks = {TaskKey(t.framework_id, t.task_id): t for t in state.tasks.values()}
    state.completed_tasks = OrderedDict(
        (TaskKey(t.framework_id, t.task_id), t) for t in state.completed_tasks.values())
    by_id = {k.task_id: k for k in state.tasks}
    for agent in state.agents.values():
        agent.task_keys = {by_id[t] if isinstance(t, str) else t for t in agent.task_keys}
    return state


def _canonical(value: object) -> object:
    """A nested tuple form of `value` whose repr does not depend on dict/set order or hash seeds."""
    if isinstance(value, Enum):
        return (type(value).__name__, value.value)
    if isinstance(value, float):
        return value.hex()
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return ("dict", tuple(sorted(((repr(_canonical(k)), _canonical(v)) for k, v in value.items()),
                                     key=lambda kv: kv[0])))
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted(repr(_canonical(v)) for v in value)))
    if isinstance(value, (tuple, list)):
        return tuple(_canonical(v) for v in value)
    if is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, tuple(_canonical(getattr(value, f.name)) for f in fields(value)))
    return ("?", repr(value))


def scalar_part(resources: Resources) -> Resources:
    """The scalar quantities of a bag, without its ranges (for sums across agents)."""
    return Resources(scalars=resources.scalars) if resources.ranges else resources


# ---- value checks shared by decide and apply ------------------------------------------------------
def check_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{what}: must be a non-empty id")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidRequest(f"{what}: longer than {MAX_ID_LENGTH} characters")
    if not _ID_RE.match(value):
        raise InvalidRequest(f"{what}: only printable ASCII without spaces, got {value!r}")
    return value


def check_optional_id(value: object, what: str) -> str:
    if value == "":
        return ""
    return check_id(value, what)


def check_text(value: object, what: str, limit: int = MAX_TEXT_LENGTH) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{what}: must be a string")
    if len(value) > limit:
        raise InvalidRequest(f"{what}: longer than {limit} characters")
    return value


def check_number(value: object, what: str, *, positive: bool = False, maximum: float = MAX_SECONDS) -> float:
    """A finite, non-negative (or strictly positive) number no larger than `maximum`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{what}: must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidRequest(f"{what}: must be finite, got {value!r}")
    if value < 0 or (positive and value <= 0):
        raise InvalidRequest(f"{what}: must be {'positive' if positive else 'non-negative'}, got {value!r}")
    if value > maximum:
        raise InvalidRequest(f"{what}: at most {maximum:g}, got {value!r}")
    return float(value)


def check_role(value: object, what: str = "role") -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{what}: must be a non-empty role name")
    try:
        return validate_role(value)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{what}: {exc.message}") from exc


def check_roles(value: object, what: str = "roles") -> tuple[str, ...]:
    if not isinstance(value, tuple):
        raise InvalidRequest(f"{what}: must be a tuple of role names")
    roles = tuple(check_role(r, what) for r in value)
    if len(set(roles)) != len(roles):
        raise InvalidRequest(f"{what}: a role is named twice")
    return roles


def check_resources(value: object, what: str, *, allow_empty: bool = True) -> Resources:
    """A well-formed `Resources` in normal form (a bag built by hand from raw tuples is re-validated, so
    negative, NaN, zero or overlapping quantities are refused here whatever built them)."""
    if not isinstance(value, Resources):
        raise InvalidRequest(f"{what}: must be Resources, got {type(value).__name__}")
    try:
        rebuilt = Resources.from_items(value.items())
    except InvalidRequest as exc:
        raise InvalidRequest(f"{what}: {exc.message}") from exc
    except Exception as exc:  # a malformed hand-built bag (wrong tuple shapes, wrong types)
        raise InvalidRequest(f"{what}: malformed resources ({type(exc).__name__})") from exc
    if rebuilt != value:
        raise InvalidRequest(f"{what}: not in normal form (zero, unsorted or overlapping entries)")
    if not allow_empty and not value:
        raise InvalidRequest(f"{what}: must not be empty")
    return value


def check_labels(value: object, what: str) -> Labels:
    if not isinstance(value, tuple) or not all(
        isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], str) for p in value
    ):
        raise InvalidRequest(f"{what}: must be a tuple of (key, value) string pairs")
    if sum(len(k) + len(v) for k, v in value) > MAX_TEXT_LENGTH * 4:
        raise InvalidRequest(f"{what}: too large")
    return value


def check_task_state(value: object, what: str = "state") -> TaskState:
    if not isinstance(value, TaskState) or value is TaskState.TASK_STATE_UNKNOWN:
        raise InvalidRequest(f"{what}: must be a known task state, got {value!r}")
    return value


def check_agent_info(info: object) -> AgentInfo:
    if not isinstance(info, AgentInfo):
        raise InvalidRequest("info: must be an AgentInfo")
    check_optional_id(info.agent_id, "info.agent_id")
    check_text(info.hostname, "info.hostname", MAX_ID_LENGTH)
    if not info.hostname:
        raise InvalidRequest("info.hostname: must not be empty")
    check_resources(info.resources, "info.resources")
    check_labels(info.attributes, "info.attributes")
    check_text(info.isolator, "info.isolator", MAX_ID_LENGTH)
    check_text(info.version, "info.version", MAX_ID_LENGTH)
    check_text(info.files_address, "info.files_address", MAX_ID_LENGTH)
    return info


def check_framework_info(info: object) -> FrameworkInfo:
    if not isinstance(info, FrameworkInfo):
        raise InvalidRequest("info: must be a FrameworkInfo")
    check_optional_id(info.framework_id, "info.framework_id")
    check_text(info.name, "info.name", MAX_ID_LENGTH)
    if not info.name:
        raise InvalidRequest("info.name: must not be empty")
    check_text(info.principal, "info.principal", MAX_ID_LENGTH)
    if not check_roles(info.roles, "info.roles"):
        raise InvalidRequest("info.roles: a framework needs at least one role")
    check_number(info.failover_timeout_seconds, "info.failover_timeout_seconds")
    if not isinstance(info.partition_aware, bool):
        raise InvalidRequest("info.partition_aware: must be a bool")
    check_text(info.user, "info.user", MAX_ID_LENGTH)
    check_text(info.hostname, "info.hostname", MAX_ID_LENGTH)
    check_count(info.max_tasks_in_flight, "info.max_tasks_in_flight", MAX_TASKS_IN_FLIGHT)
    check_resources(info.min_offer, "info.min_offer")
    if info.min_offer.ranges or any(role for (_, role), _ in info.min_offer.scalars):
        raise InvalidRequest("info.min_offer: scalar quantities only (no ranges, no reservation role)")
    return info


MAX_TASKS_IN_FLIGHT = 2**31 - 1  # the wire type is int32


def check_count(value: object, what: str, maximum: int) -> int:
    """A whole number from 0 to `maximum` (a bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{what}: must be a whole number, got {value!r}")
    if value < 0:
        raise InvalidRequest(f"{what}: must be non-negative (0 = no limit), got {value}")
    if value > maximum:
        raise InvalidRequest(f"{what}: at most {maximum}, got {value}")
    return value


def check_working_dir(value: str, what: str) -> str:
    """A task's working directory: empty (its sandbox) or a relative path inside its sandbox.

    Purely syntactic, so it can be decided before launch: an absolute path, a `..` component (even
    one that would stay inside) or a NUL byte is refused. Symlinks are the agent's to refuse: only the
    sandbox on disk can tell (the task's supervisor enters the directory without following any)."""
    if not value:
        return value
    if "\0" in value:
        raise InvalidRequest(f"{what}: must not contain NUL bytes")
    if value.startswith("/"):
        raise InvalidRequest(f"{what}: must be relative to the task's sandbox, got the absolute path {value!r}")
    if ".." in value.split("/"):
        raise InvalidRequest(f"{what}: must stay inside the task's sandbox ('..' is not allowed), got {value!r}")
    return value


def check_command_info(command: object, what: str, *, required: bool = True) -> CommandInfo:
    """A task's command; `required=False` (a container task, whose image has a command) allows none."""
    if not isinstance(command, CommandInfo):
        raise InvalidRequest(f"{what}: must be a CommandInfo")
    if not isinstance(command.shell, bool):
        raise InvalidRequest(f"{what}.shell: must be a bool")
    check_text(command.value, f"{what}.value")
    if not command.value and (required or command.arguments):
        raise InvalidRequest(f"{what}.value: a task needs a command")
    if not isinstance(command.arguments, tuple):
        raise InvalidRequest(f"{what}.arguments: must be a tuple of strings")
    for arg in command.arguments:
        check_text(arg, f"{what}.arguments")
    check_labels(command.environment, f"{what}.environment")
    check_text(command.working_dir, f"{what}.working_dir")
    check_text(command.user, f"{what}.user", MAX_ID_LENGTH)
    return command


def check_task_info(task: object, what: str = "task") -> TaskInfo:
    if not isinstance(task, TaskInfo):
        raise InvalidRequest(f"{what}: must be a TaskInfo")
    check_id(task.task_id, f"{what}.task_id")
    check_text(task.name, f"{what}.name", MAX_ID_LENGTH)
    check_optional_id(task.framework_id, f"{what}.framework_id")
    check_optional_id(task.agent_id, f"{what}.agent_id")
    check_resources(task.resources, f"{what}.resources", allow_empty=False)
    check_command_info(task.command, f"{what}.command", required=task.container is None)
    check_number(task.kill_grace_period_seconds, f"{what}.kill_grace_period_seconds")
    check_number(task.shutdown_delay_seconds, f"{what}.shutdown_delay_seconds", maximum=MAX_SHUTDOWN_DELAY)
    check_labels(task.labels, f"{what}.labels")
    check_uris(task, what)
    return task


MAX_STATUS_DATA = 4096  # bytes of task output a status may carry (it lives in replicated state)


def check_task_status(status: object, what: str = "status") -> TaskStatus:
    if not isinstance(status, TaskStatus):
        raise InvalidRequest(f"{what}: must be a TaskStatus")
    check_id(status.task_id, f"{what}.task_id")
    check_task_state(status.state, f"{what}.state")
    check_text(status.message, f"{what}.message")
    check_text(status.reason, f"{what}.reason", MAX_ID_LENGTH)
    check_optional_id(status.agent_id, f"{what}.agent_id")
    check_optional_id(status.framework_id, f"{what}.framework_id")
    check_optional_id(status.uuid, f"{what}.uuid")
    if isinstance(status.timestamp, bool) or not isinstance(status.timestamp, (int, float)) or not (
        math.isfinite(status.timestamp)
    ):
        raise InvalidRequest(f"{what}.timestamp: must be a finite number")
    if not isinstance(status.source, StatusSource):
        raise InvalidRequest(f"{what}.source: must be a StatusSource")
    if status.exit_code is not None and (
        isinstance(status.exit_code, bool) or not isinstance(status.exit_code, int)
    ):
        raise InvalidRequest(f"{what}.exit_code: must be an integer or None")
    if not isinstance(status.data, bytes) or len(status.data) > MAX_STATUS_DATA:
        raise InvalidRequest(f"{what}.data: at most {MAX_STATUS_DATA} bytes")
    if status.healthy is not None and not isinstance(status.healthy, bool):
        raise InvalidRequest(f"{what}.healthy: must be a bool or None")
    return status


def check_quota(guarantee: object, limit: object) -> tuple[Resources, Resources]:
    """Quota is unreserved scalar quantities; an empty limit means none; a limit covers the guarantee."""
    checked = []
    for value, what in ((guarantee, "guarantee"), (limit, "limit")):
        res = check_resources(value, what)
        if res.ranges:
            raise InvalidRequest(f"{what}: quota applies to scalar resources only (no ranges)")
        if res.roles() - {""}:
            raise InvalidRequest(f"{what}: quota is given in unreserved quantities (no reservation roles)")
        checked.append(res)
    if checked[1] and not checked[1].contains(checked[0]):
        raise InvalidRequest("limit: must be at least the guarantee")
    return checked[0], checked[1]


def check_term(value: object, what: str = "term") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest(f"{what}: must be a non-negative integer, got {value!r}")
    return value


def total_with_reservations(resources: Resources, reserved: Resources) -> Resources:
    """An agent's total: what it reports, with the master's dynamic reservations carved out of the
    unreserved part. Raises Conflict when the reported resources can no longer hold them."""
    flat = reserved.flatten()
    if not resources.filter_role("").contains(flat):
        raise Conflict(f"the agent's unreserved resources no longer hold its reservations ({reserved})")
    return resources - flat + reserved


def known_agent(state: ClusterState, agent_id: object) -> AgentRecord:
    """The agent `agent_id` names (NotFound when the state has none): for decide and apply alike."""
    aid = check_id(agent_id, "agent_id")
    agent = state.agents.get(aid)
    if agent is None:
        raise NotFound(f"agent {aid} is not known")
    return agent


def known_framework(state: ClusterState, framework_id: object) -> FrameworkRecord:
    """The framework `framework_id` names (NotFound when the state has none)."""
    fid = check_id(framework_id, "framework_id")
    fw = state.frameworks.get(fid)
    if fw is None:
        raise NotFound(f"framework {fid} is not known")
    return fw


def check_offer_parties(state: ClusterState, offer: Offer, framework_id: object,
                        agent_id: object) -> tuple[FrameworkRecord, AgentRecord, str, Resources]:
    """Who an offer is between and what it holds, checked alike when the leader decides to issue it and
    when every master applies it: a connected framework subscribed to the offer's role and not suppressing
    it, an active agent, resources allocatable to that role. Returns (framework, agent, role, resources)."""
    fw = known_framework(state, framework_id)
    agent = known_agent(state, agent_id)
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
    return fw, agent, role, resources
