"""The Scheduler protocol (docs/protocol.md) as SDK values, independent of any transport.

Events are what the master sends on the subscription stream; calls are the unary requests a framework
makes. A transport (`tessera.sdk.transport`) moves these values: the gRPC transport converts them to and from
`tessera.v1.scheduler_pb2`, the in-memory transport of `tessera.sdk.testing` hands them to a fake master as
they are. Every call travels with a `CallHeader`; retries of one logical call reuse its `request_id`,
which is what makes them idempotent on the master.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from tessera.sdk.types import Filters, KvEntry, KvWrite, Offer, Operation, TaskStatus

# ---- events (master -> framework) -------------------------------------------------------------------


@dataclass(frozen=True)
class SubscribedEvent:
    framework_id: str
    stream_id: str
    heartbeat_interval_seconds: float = 0.0
    master: str = ""
    capabilities: tuple[str, ...] = ()  # what the master accepts beyond the first protocol
    lease_term: int = 0  # the term this instance holds the framework's lease at (0: a master without leases)


@dataclass(frozen=True)
class StandbyEvent:
    """A standby subscription waits: another instance holds `framework_id`'s lease at `lease_term`."""

    framework_id: str
    lease_term: int
    heartbeat_interval_seconds: float = 0.0
    master: str = ""


@dataclass(frozen=True)
class OffersEvent:
    offers: tuple[Offer, ...]


@dataclass(frozen=True)
class RescindEvent:
    offer_id: str


@dataclass(frozen=True)
class UpdateEvent:
    status: TaskStatus


@dataclass(frozen=True)
class MessageEvent:
    agent_id: str
    data: bytes


@dataclass(frozen=True)
class HeartbeatEvent:
    pass


@dataclass(frozen=True)
class ErrorEvent:
    """The master removed the framework, or (`lease_term` not 0) another instance took its lease, now at
    that term, and this one was deposed; the stream ends after it."""

    message: str
    lease_term: int = 0


Event: TypeAlias = (
    SubscribedEvent | StandbyEvent | OffersEvent | RescindEvent | UpdateEvent | MessageEvent | HeartbeatEvent
    | ErrorEvent
)


@dataclass(frozen=True)
class LeaseClaim:
    """What a subscription asks of the framework's lease: `standby` waits while another instance is
    active; `term` is the term this instance held (0: none), which gets it back only while no other
    instance took the lease since."""

    standby: bool = False
    term: int = 0


NO_CLAIM = LeaseClaim()

# ---- calls (framework -> master) --------------------------------------------------------------------


@dataclass(frozen=True)
class CallHeader:
    framework_id: str
    stream_id: str
    request_id: str


@dataclass(frozen=True)
class AcceptCall:
    offer_ids: tuple[str, ...]
    operations: tuple[Operation, ...]
    filters: Filters | None = None


@dataclass(frozen=True)
class DeclineCall:
    offer_ids: tuple[str, ...]
    filters: Filters | None = None


@dataclass(frozen=True)
class ReviveCall:
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class SuppressCall:
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class KillCall:
    task_id: str
    grace_period_seconds: float = 0.0  # 0 = the task's own


@dataclass(frozen=True)
class AcknowledgeCall:
    task_id: str
    agent_id: str
    uuid: str


@dataclass(frozen=True)
class AcknowledgeManyCall:
    """Several acknowledgements in one call (masters with the BATCHED_ACKNOWLEDGEMENTS capability);
    each is recorded as if sent alone."""

    acks: tuple[AcknowledgeCall, ...]


@dataclass(frozen=True)
class ReconcileCall:
    task_ids: tuple[str, ...] = ()  # empty = every task of the framework


@dataclass(frozen=True)
class TeardownCall:
    pass


@dataclass(frozen=True)
class MessageCall:
    agent_id: str
    data: bytes


@dataclass(frozen=True)
class GetValueCall:
    key: str


@dataclass(frozen=True)
class ListValuesCall:
    prefix: str = ""
    start_after: str = ""
    limit: int = 0  # 0 = the master's default page (100)
    keys_only: bool = False


@dataclass(frozen=True)
class WriteValuesCall:
    """Writes applied together or not at all (one log entry)."""

    writes: tuple[KvWrite, ...]


Call: TypeAlias = (
    AcceptCall | DeclineCall | ReviveCall | SuppressCall | KillCall | AcknowledgeCall | AcknowledgeManyCall
    | ReconcileCall | TeardownCall | MessageCall | GetValueCall | ListValuesCall | WriteValuesCall
)

BATCHED_UPDATES = "BATCHED_UPDATES"  # a framework's capability: several updates in one stream message
BATCHED_ACKNOWLEDGEMENTS = "BATCHED_ACKNOWLEDGEMENTS"  # a master's capability: AcknowledgeManyCall

@dataclass(frozen=True)
class KvPage:
    """What a `ListValuesCall` returns: entries in key order; `more`: keys with the prefix follow."""

    entries: tuple[KvEntry, ...]
    more: bool = False


CallResult: TypeAlias = tuple[TaskStatus, ...] | tuple[KvEntry, ...] | tuple[int, ...] | KvPage
"""What a call returns: the statuses for `ReconcileCall`; the entry found (none or one) for `GetValueCall`;
a `KvPage` for `ListValuesCall`; each write's new version (0 for a delete) for `WriteValuesCall`; nothing
(an empty tuple) for the others."""
