"""What a `FakeMaster` keeps, and the plumbing every part of it shares.

`_FakeState` owns the fake's records (agents, frameworks with their lease and key/value state, waiting
standby subscriptions, tasks keyed by (framework id, task id), outstanding and retired offers, answered
request ids, pending faults), the observation lists a test reads
(`calls`, `subscribe_requests`, `acknowledged`, `messages`), the manual clock and the one lock: every
method of every layer above (offers, tasks, faults, protocol, views) runs under `_cond` and calls
`_changed()` after a change, which is what `wait_for` waits on.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tessera.control_plane.core.resources import EMPTY
from tessera.sdk.errors import TesseraError
from tessera.sdk.protocol import Call, CallHeader, CallResult
from tessera.sdk.testing.transport import FakeStream
from tessera.sdk.testing.values import Behaviour
from tessera.sdk.types import FrameworkInfo, Offer, Resources, TaskInfo, TaskState, TaskStatus

T = TypeVar("T")
DEFAULT_REFUSE_SECONDS = 5.0



@dataclass
class _Agent:
    agent_id: str
    hostname: str
    total: Resources
    attributes: dict[str, str]
    used: Resources = EMPTY
    removed: bool = False


@dataclass
class _Task:
    info: TaskInfo
    framework_id: str
    state: TaskState = TaskState.TASK_STAGING
    statuses: list[TaskStatus] = field(default_factory=list)
    kill_requested: bool = False


@dataclass
class _Framework:
    framework_id: str
    info: FrameworkInfo
    stream_id: str = ""
    stream: FakeStream | None = None
    suppressed: set[str] = field(default_factory=set)
    refused: dict[str, float] = field(default_factory=dict)  # agent id -> refused until (fake time)
    removed: str | None = None
    unacked: dict[str, TaskStatus] = field(default_factory=dict)  # uuid -> status, in order
    subscriptions: int = 0
    lease_term: int = 0  # the term of the framework's lease (core.leases)
    by_name: bool = False  # created by a standby without an id: found by (principal, name)
    disconnected_at: float = 0.0  # fake time its active stream last ended
    kv: dict[str, tuple[int, str]] = field(default_factory=dict)  # its key/value state: key -> (version, value)


@dataclass
class _Standby:
    """A standby subscription waiting for a framework's lease."""

    stream: FakeStream
    info: FrameworkInfo
    address: str
    told_term: int


@dataclass
class _Fault:
    kind: type[Any]
    error: TesseraError
    after_apply: bool


class _FakeState:
    """The records, the clock and the lock of a `FakeMaster` (its constructor is this one)."""

    def __init__(self, addresses: Sequence[str] = ("fake-master:5050",), *, auto_offer: bool = True,
                 behaviour: Behaviour | None = None, auto_kill: bool = True, heartbeat_interval: float = 0.0,
                 start_time: float = 1_000.0, batched_acknowledgements: bool = True,
                 takeover_delay: float = 1.0) -> None:
        if not addresses:
            raise ValueError("a fake master needs at least one address")
        self.addresses: list[str] = list(addresses)
        self.leader = self.addresses[0]
        self.auto_offer = auto_offer
        self.behaviour = behaviour
        self.auto_kill = auto_kill
        self.heartbeat_interval = heartbeat_interval
        self.batched_acknowledgements = batched_acknowledgements  # accepts AcknowledgeManyCall, says so
        self.takeover_delay = takeover_delay  # fake seconds a framework is disconnected before a standby takes it
        self._now = start_time
        self._cond = threading.Condition(threading.RLock())
        self._ids = itertools.count(1)
        self._down: set[str] = set()
        self._agents: dict[str, _Agent] = {}
        self._frameworks: dict[str, _Framework] = {}
        self._tasks: dict[tuple[str, str], _Task] = {}  # by (framework id, task id)
        self._offers: dict[str, Offer] = {}
        self._retired: dict[str, str] = {}  # offer id -> why it is gone
        self._requests: dict[str, CallResult] = {}
        self._faults: list[_Fault] = []
        self._standbys: list[_Standby] = []  # waiting standby subscriptions, oldest first
        self._versions = itertools.count(1)  # the fake's event numbers: framework-state versions
        self.calls: list[tuple[str, CallHeader, Call]] = []
        self.subscribe_requests: list[tuple[str, FrameworkInfo]] = []
        self.acknowledged: list[str] = []  # uuids, in order
        self.messages: list[tuple[str, str, bytes]] = []  # (framework id, agent id, data)

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def _changed(self) -> None:
        self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
        """Wait until `predicate()` is truthy (evaluated under the fake's lock after each change) and
        return its value; TimeoutError after `timeout` seconds."""
        with self._cond:
            value = predicate()
            if not value:
                self._cond.wait_for(predicate, timeout)
                value = predicate()
            if not value:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            return value

    @property
    def now(self) -> float:
        return self._now
