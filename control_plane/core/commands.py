"""Commands: what callers ask the master to do, one frozen dataclass per request.

A command is an intention, not a fact: `decide(state, command, ctx)` validates it against the current state
and turns it into the events to commit (or raises a domain error). Commands are never logged; the events
they produce are.

Conventions:
- Ids are strings chosen by the master (agent, framework, offer, stream ids) or by the framework (task
  ids); the `decide` docstring says which errors each malformed or unknown id raises.
- `stream_id` on framework calls is optional: when given it must be the framework's current stream, so a
  call from a stale connection (the framework failed over meanwhile) is refused with `Conflict`.
- Numbers given as 0 mean "the default" where Mesos does so (`refuse_seconds`, `grace_period_seconds`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tessera.control_plane.core.resources import EMPTY, Resources
from tessera.control_plane.core.values import AgentInfo, FrameworkInfo, Offer, TaskInfo, TaskStatus


# ---- cluster -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ElectLeader:
    """The new leader's barrier: committed before it serves anything."""

    term: int
    master: str
    grpc_address: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class AnnounceMaster:
    name: str
    raft_address: str
    grpc_address: str


@dataclass(frozen=True, slots=True)
class RemoveMaster:
    raft_address: str


# ---- policy ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SetRoleWeight:
    role: str
    weight: float


@dataclass(frozen=True, slots=True)
class SetQuota:
    """Unreserved scalar quantities; an empty `limit` means no limit."""

    role: str
    guarantee: Resources = EMPTY
    limit: Resources = EMPTY


# ---- agents ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RegisterAgent:
    """A new agent (no id yet): decide mints its id. `identity` is the name the edge read from the agent's
    verified certificate ("" without TLS); the agent is bound to it for good."""

    info: AgentInfo
    identity: str = ""


@dataclass(frozen=True, slots=True)
class ReregisterAgent:
    """A known agent reconnects, reporting the latest status of every task it still has. `identity` (from
    the caller's verified certificate) must be the one the agent registered with."""

    agent_id: str
    info: AgentInfo
    tasks: tuple[TaskStatus, ...] = ()
    identity: str = ""


@dataclass(frozen=True, slots=True)
class MarkAgentUnreachable:
    agent_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RemoveAgent:
    agent_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DrainAgent:
    """Stop offering the agent and kill its tasks; the operator removes it once it is empty."""

    agent_id: str


@dataclass(frozen=True, slots=True)
class UndrainAgent:
    """Offer a draining agent again (an unreachable one that was draining comes back active); the tasks
    the drain killed stay ended. Undraining an agent that is not draining changes nothing."""

    agent_id: str


# ---- frameworks --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SubscribeFramework:
    """First subscription when `info.framework_id` is empty, else a resubscription (failover).

    The framework's lease (`core.leases`): `lease_term` is the term this instance held (0: none), which
    gets it back only while no other instance took the lease; `standby` waits (decide refuses with
    Conflict) while another instance is active, and takes over once the framework has been disconnected
    for `takeover_delay` seconds (the master's setting); a standby without a framework id names the
    framework by its (principal, name)."""

    info: FrameworkInfo
    standby: bool = False
    lease_term: int = 0
    takeover_delay: float = 0.0


@dataclass(frozen=True, slots=True)
class DisconnectFramework:
    """The framework's stream broke; its failover timeout starts. A non-empty `stream_id` that is no
    longer current makes this a no-op (the framework already reconnected on a new stream)."""

    framework_id: str
    stream_id: str = ""


@dataclass(frozen=True, slots=True)
class RemoveFramework:
    framework_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Teardown:
    """The framework removes itself."""

    framework_id: str
    stream_id: str = ""


@dataclass(frozen=True, slots=True)
class StateWrite:
    """One write of a `WriteFrameworkState`: put `value` at `key` (or delete `key`) if the key's version is
    `expected_version`: -1 whatever it is, 0 absent, N its current version."""

    key: str
    value: str = ""
    delete: bool = False
    expected_version: int = -1


@dataclass(frozen=True, slots=True)
class WriteFrameworkState:
    """Writes to the framework's key/value state, applied together or not at all; each names another key.
    `stream_id` is required: only the instance holding the framework's lease writes — except for an
    operator's write (`by_operator`, Operator.WriteFrameworkState, action `configure`: how operators hand a
    framework its desired state), which is not fenced by the lease but keeps compare-and-set; `operator`
    names the operator's principal for the event log."""

    framework_id: str
    writes: tuple[StateWrite, ...]
    stream_id: str = ""
    by_operator: bool = False
    operator: str = ""


@dataclass(frozen=True, slots=True)
class Suppress:
    """Stop offers to these roles of the framework (empty = all its roles)."""

    framework_id: str
    roles: tuple[str, ...] = ()
    stream_id: str = ""


@dataclass(frozen=True, slots=True)
class Revive:
    """Resume offers to these roles (empty = all) and clear the framework's decline filters."""

    framework_id: str
    roles: tuple[str, ...] = ()
    stream_id: str = ""


# ---- offers ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class IssueOffers:
    """Offers computed by the allocator. An empty `offer_id` gets a fresh one; empty `hostname` and
    `attributes` are filled from the agent."""

    offers: tuple[Offer, ...]


@dataclass(frozen=True, slots=True)
class Decline:
    framework_id: str
    offer_ids: tuple[str, ...]
    refuse_seconds: float = 0.0  # 0 = the default, 5 s
    stream_id: str = ""


@dataclass(frozen=True, slots=True)
class RescindOffer:
    offer_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ExpireOffers:
    """Rescind every offer whose `expires_at` (non-zero) is at or before `ctx.now`."""


OperationType = Literal["LAUNCH", "RESERVE", "UNRESERVE"]


@dataclass(frozen=True, slots=True)
class Operation:
    """One step of an Accept: LAUNCH `tasks`, or RESERVE / UNRESERVE `resources` (given in their
    reserved form, i.e. with the offer's role as reservation role)."""

    type: OperationType
    tasks: tuple[TaskInfo, ...] = ()
    resources: Resources = EMPTY


@dataclass(frozen=True, slots=True)
class Accept:
    """Use offers (all on one agent, one role): operations run in order on the pooled resources;
    whatever they leave unused goes back to the pool. `refuse_seconds` > 0 also filters the agent."""

    framework_id: str
    offer_ids: tuple[str, ...]
    operations: tuple[Operation, ...] = ()
    refuse_seconds: float = 0.0
    stream_id: str = ""


# ---- tasks -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Kill:
    framework_id: str
    task_id: str
    grace_period_seconds: float = 0.0  # 0 = the task's own kill_grace_period_seconds
    stream_id: str = ""


@dataclass(frozen=True, slots=True)
class OperatorKill:
    """An operator kills a task. Task ids are scoped per framework: an empty `framework_id` names the one
    framework whose live task (else whose task, live or ended) uses `task_id`; several is `InvalidRequest`
    naming them. The kill itself is a framework's `Kill`: an ended task is a no-op."""

    task_id: str
    framework_id: str = ""
    grace_period_seconds: float = 0.0  # 0 = the task's own kill_grace_period_seconds


@dataclass(frozen=True, slots=True)
class UpdateStatus:
    """A status update from an agent; `status.uuid` identifies it for de-duplication and acks. `identity`
    (from the sender's verified certificate) must be the one the task's agent registered with."""

    status: TaskStatus
    identity: str = ""


@dataclass(frozen=True, slots=True)
class Acknowledge:
    framework_id: str
    task_id: str
    uuid: str
    stream_id: str = ""


@dataclass(frozen=True, slots=True)
class ExpireFrameworks:
    """Remove every disconnected framework whose failover deadline is at or before `ctx.now`."""


Command = (
    ElectLeader | AnnounceMaster | RemoveMaster
    | SetRoleWeight | SetQuota
    | RegisterAgent | ReregisterAgent | MarkAgentUnreachable | RemoveAgent | DrainAgent | UndrainAgent
    | SubscribeFramework | DisconnectFramework | RemoveFramework | Teardown | Suppress | Revive
    | WriteFrameworkState
    | IssueOffers | Decline | RescindOffer | ExpireOffers | Accept
    | Kill | OperatorKill | UpdateStatus | Acknowledge | ExpireFrameworks
)
