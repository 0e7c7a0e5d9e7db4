"""Test a scheduler without a cluster: `FakeMaster`, an in-memory master that speaks the Scheduler protocol.

    from tessera.sdk import FrameworkInfo, Resources, SchedulerDriver, TaskState
    from tessera.sdk.testing import FakeMaster, runs_and_finishes

    def test_my_scheduler_runs_its_task():
        fake = FakeMaster(behaviour=runs_and_finishes)
        fake.add_agent("cpus:2;mem:1024", attributes={"rack": "r1"})
        driver = SchedulerDriver(MyScheduler(), FrameworkInfo(name="mine"), fake.addresses,
                                 transport=fake.transport())
        with driver:
            fake.wait_for(lambda: fake.tasks_in(TaskState.TASK_FINISHED), what="a finished task")
        assert fake.acknowledged          # updates were acknowledged

(`tests/unit/sdk/test_fake_master.py` runs a complete example of this kind.)

What it does, following docs/protocol.md and the master's validation rules (`tessera.control_plane.core.decide`;
`tests/unit/sdk/test_master_contract.py` runs the same refusal cases against the fake and a real master):

- Agents: `add_agent(resources, hostname=, attributes=)`, `remove_agent` (its tasks become TASK_LOST).
- Offers: with `auto_offer=True` (default) every change that frees resources or revives a framework
  immediately offers each agent's free resources, whole, to the first subscribed framework that is not
  suppressed for one of its roles and has not declined that agent within the refuse time; one offer per
  agent at a time. With `auto_offer=False`, offers go out when the test calls `send_offers()` (or
  `send_offers([agent_id])` for some agents only).
- Calls: accept (LAUNCH, RESERVE, UNRESERVE), decline with filters, revive, suppress, kill, acknowledge,
  reconcile (explicit and implicit; unknown tasks are TASK_LOST), teardown, message (recorded in
  `messages`; today's master answers UNIMPLEMENTED, command tasks having no executor), with the master's
  error classes (stale offer -> Conflict, unknown id -> NotFound, malformed -> InvalidRequest, stale
  stream id -> Conflict). A request id seen before returns the first answer without applying again.
- Tasks: launched tasks start in TASK_STAGING; `behaviour(task)` (if given) scripts the states each
  task goes through as soon as it is launched; `update(task_id, state, ...)` injects any status
  update later. Task ids are scoped per framework, as on the real master: two frameworks may each
  launch a `web-1`; `update`, `task` and `tasks` then take `framework_id=` (a bare id that several
  frameworks use is refused with `ValueError` naming them). Updates carry uuids and stay unacknowledged until the framework acknowledges them; they
  are sent again when it re-subscribes, as the real master does. `kill` answers TASK_KILLED at once
  (`auto_kill=False` to only record the request).
- Faults: `drop_stream()` breaks a framework's connection (its offers are void; it keeps its tasks),
  `failover(new_leader)` moves leadership to another of `addresses` (streams end with NotLeader and the
  new leader's hint; calls to the old one are redirected), `set_down(address)` makes a master
  unreachable, `remove_framework` sends an Error event, `fail_next(CallType, error, after_apply=)`
  makes the next such call fail (before or after it took effect, to test idempotent retries).
- Time is a manual clock: `advance(seconds)` ages decline filters (and re-offers what expired).
  Heartbeats are sent only by `heartbeat()`; with `heartbeat_interval=0` (default) the driver does not
  watch for silence.
- Observing: `calls` (every call attempt with its header), `subscribe_requests`, `acknowledged`,
  `tasks()`, `task(id)`, `framework()`, `agents()`, `offers()`, and `wait_for(predicate)`, which waits
  (bounded) on the fake's own change notifications instead of sleeping.

`FakeGrpcServer(fake)` serves the same fake over real gRPC on 127.0.0.1 for tests of the gRPC transport
and the command line (one server per master address; the fake decides which one leads).

The fake is thread-safe: drivers call it from their threads while the test drives it from its own.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, TypeVar

import grpc

from tessera.control_plane.core.lifecycle import is_terminal
from tessera.control_plane.core.resources import EMPTY
from tessera.control_plane.wire import LEADER_METADATA_KEY
from tessera.sdk._convert import call_from_proto, event_to_proto, info_from_proto, status_to_proto
from tessera.sdk.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    NotLeader,
    TesseraError,
    Unavailable,
    status_for_error,
)
from tessera.sdk.protocol import (
    BATCHED_ACKNOWLEDGEMENTS,
    AcceptCall,
    AcknowledgeCall,
    AcknowledgeManyCall,
    Call,
    CallHeader,
    CallResult,
    DeclineCall,
    ErrorEvent,
    Event,
    HeartbeatEvent,
    KillCall,
    MessageCall,
    MessageEvent,
    OffersEvent,
    ReconcileCall,
    RescindEvent,
    ReviveCall,
    SubscribedEvent,
    SuppressCall,
    TeardownCall,
    UpdateEvent,
)
from tessera.sdk.transport import StreamEnded
from tessera.sdk.types import (
    FrameworkInfo,
    Launch,
    Offer,
    Reserve,
    Resources,
    TaskInfo,
    TaskState,
    TaskStatus,
)
from tessera.v1 import scheduler_pb2, scheduler_pb2_grpc

__all__ = [
    "AgentView",
    "Behaviour",
    "FakeGrpcServer",
    "FakeMaster",
    "FakeStream",
    "FakeTransport",
    "FrameworkView",
    "StatusStep",
    "TaskView",
    "runs_and_finishes",
]

T = TypeVar("T")
DEFAULT_REFUSE_SECONDS = 5.0


@dataclass(frozen=True)
class StatusStep:
    """One scripted status of a task (see `FakeMaster(behaviour=...)`)."""

    state: TaskState
    exit_code: int | None = None
    message: str = ""
    reason: str = ""


Behaviour = Callable[[TaskInfo], Iterable[TaskState | StatusStep]]


def runs_and_finishes(task: TaskInfo) -> list[TaskState | StatusStep]:
    """A behaviour: every task starts, runs and exits 0."""
    return [TaskState.TASK_STARTING, TaskState.TASK_RUNNING,
            StatusStep(TaskState.TASK_FINISHED, exit_code=0, message="command exited with status 0")]


# ---- views (what a test reads) -------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentView:
    agent_id: str
    hostname: str
    resources: Resources
    attributes: Mapping[str, str]
    used: Resources
    offered: Resources
    removed: bool


@dataclass(frozen=True)
class TaskView:
    info: TaskInfo
    framework_id: str
    agent_id: str
    state: TaskState
    statuses: tuple[TaskStatus, ...]
    kill_requested: bool


@dataclass(frozen=True)
class FrameworkView:
    framework_id: str
    info: FrameworkInfo
    connected: bool
    stream_id: str
    suppressed_roles: frozenset[str]
    refused_agents: Mapping[str, float]
    removed: str | None
    unacknowledged: tuple[TaskStatus, ...]
    subscriptions: int


# ---- records (what the fake keeps) ----------------------------------------------------------------------


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


@dataclass
class _Fault:
    kind: type[Any]
    error: TesseraError
    after_apply: bool


class _End:
    def __init__(self, error: TesseraError | None) -> None:
        self.error = error


# ---- the in-memory transport ------------------------------------------------------------------------------


class FakeStream:
    """A subscription stream of the fake (implements `tessera.sdk.transport.EventStream`)."""

    def __init__(self, master: FakeMaster, address: str) -> None:
        self._master = master
        self.address = address
        self.framework_id: str | None = None
        self._queue: queue.Queue[Event | _End] = queue.Queue()
        self._ended: _End | None = None
        self.closed = False  # no more events will be pushed

    def push(self, event: Event) -> None:
        if not self.closed:
            self._queue.put(event)

    def end(self, error: TesseraError | None) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put(_End(error))

    def next(self, timeout: float | None) -> Event | None:
        if self._ended is not None:
            raise StreamEnded(self._ended.error)
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, _End):
            self._ended = item
            raise StreamEnded(item.error)
        return item

    def cancel(self) -> None:
        self._master._stream_closed_by_client(self)
        self.end(None)


class FakeTransport:
    """The in-memory `tessera.sdk.transport.Transport` of a `FakeMaster`."""

    def __init__(self, master: FakeMaster) -> None:
        self.master = master

    def subscribe(self, address: str, info: FrameworkInfo) -> FakeStream:
        return self.master._subscribe(address, info)

    def call(self, address: str, header: CallHeader, call: Call, timeout: float) -> CallResult:
        return self.master._handle(address, header, call)

    def close(self) -> None:
        pass


# ---- the fake master ----------------------------------------------------------------------------------------


class FakeMaster:
    """An in-memory Tessera master for unit tests of a scheduler (see the module docstring for all of it).

        fake = FakeMaster(behaviour=runs_and_finishes)   # every task runs, then finishes
        fake.add_agent("cpus:2;mem:1024")
        driver = SchedulerDriver(MyScheduler(), FrameworkInfo(name="mine"), fake.addresses,
                                 transport=fake.transport())

    - `addresses`: the masters it pretends to be (the first leads; `failover()` moves the lead).
    - `auto_offer` (True): offer free resources as soon as they are free; False: `send_offers()`.
    - `behaviour(task)`: the states each launched task goes through; None leaves tasks STAGING until
      `update(task_id, state)`.
    - `auto_kill` (True): `kill` answers TASK_KILLED at once; False only records it.
    - `heartbeat_interval` (0: none): what the fake tells the driver; heartbeats go out on `heartbeat()`.
    - `start_time`: its manual clock (`advance(seconds)`); `batched_acknowledgements`: offer the capability.

    Faults: `fail_next(CallType, error, after_apply=)`, `drop_stream()`, `failover()`, `set_down()`,
    `remove_framework()`, `remove_agent()`, `rescind()`. Observing: `calls`, `calls_of(CallType)`,
    `acknowledged`, `tasks()`, `task(id)`, `tasks_in(*states)`, `framework()`, `offers()`, `wait_for()`.
    Thread-safe: drivers call it from their threads while the test drives it from its own.
    """

    def __init__(self, addresses: Sequence[str] = ("fake-master:5050",), *, auto_offer: bool = True,
                 behaviour: Behaviour | None = None, auto_kill: bool = True, heartbeat_interval: float = 0.0,
                 start_time: float = 1_000.0, batched_acknowledgements: bool = True) -> None:
        if not addresses:
            raise ValueError("a fake master needs at least one address")
        self.addresses: list[str] = list(addresses)
        self.leader = self.addresses[0]
        self.auto_offer = auto_offer
        self.behaviour = behaviour
        self.auto_kill = auto_kill
        self.heartbeat_interval = heartbeat_interval
        self.batched_acknowledgements = batched_acknowledgements  # accepts AcknowledgeManyCall, says so
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
        self.calls: list[tuple[str, CallHeader, Call]] = []
        self.subscribe_requests: list[tuple[str, FrameworkInfo]] = []
        self.acknowledged: list[str] = []  # uuids, in order
        self.messages: list[tuple[str, str, bytes]] = []  # (framework id, agent id, data)

    # ---- plumbing -----------------------------------------------------------------------------------------
    def transport(self) -> FakeTransport:
        return FakeTransport(self)

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

    def advance(self, seconds: float) -> None:
        """Move the fake's clock forward (decline filters expire; expired agents are offered again)."""
        with self._cond:
            self._now += seconds
            self._allocate_if_auto()
            self._changed()

    # ---- agents -------------------------------------------------------------------------------------------
    def add_agent(self, resources: Resources | str, *, hostname: str | None = None,
                  attributes: Mapping[str, str] | None = None) -> str:
        """Register an agent; returns its id. `resources` as `Resources` or 'cpus:4;mem:4096'."""
        total = Resources.parse(resources) if isinstance(resources, str) else resources
        with self._cond:
            agent_id = self._new_id("agent")
            self._agents[agent_id] = _Agent(agent_id, hostname or f"host-{agent_id}", total,
                                            dict(attributes or {}))
            self._allocate_if_auto()
            self._changed()
            return agent_id

    def remove_agent(self, agent_id: str) -> None:
        """The agent is gone: its offers are rescinded and its live tasks become TASK_LOST."""
        with self._cond:
            agent = self._agents[agent_id]
            agent.removed = True
            for offer in [o for o in self._offers.values() if o.agent_id == agent_id]:
                self._rescind(offer.offer_id, "agent removed")
            for task in self._tasks.values():
                if task.info.agent_id == agent_id and not is_terminal(task.state):
                    self._update(task, TaskState.TASK_LOST, reason="REASON_AGENT_REMOVED",
                                 message=f"agent {agent_id} was removed")
            self._changed()

    # ---- offers ---------------------------------------------------------------------------------------------
    def send_offers(self, agent_ids: Iterable[str] | None = None) -> list[Offer]:
        """Offer every agent's free resources now (what `auto_offer` does after every change), or only
        those of `agent_ids`."""
        with self._cond:
            sent = self._allocate(None if agent_ids is None else set(agent_ids))
            self._changed()
            return sent

    def rescind(self, offer_id: str, reason: str = "rescinded") -> None:
        with self._cond:
            if offer_id not in self._offers:
                raise NotFound(f"offer {offer_id} is not outstanding")
            self._rescind(offer_id, reason)
            self._allocate_if_auto()
            self._changed()

    def _rescind(self, offer_id: str, reason: str) -> None:
        offer = self._retire(offer_id, reason)
        fw = self._frameworks.get(offer.framework_id)
        if fw is not None and fw.stream is not None:
            fw.stream.push(RescindEvent(offer_id))

    def _retire(self, offer_id: str, reason: str) -> Offer:
        offer = self._offers.pop(offer_id)
        self._retired[offer_id] = reason
        return offer

    def _retire_offers_of(self, framework_id: str, reason: str) -> None:
        for offer in [o for o in self._offers.values() if o.framework_id == framework_id]:
            self._retire(offer.offer_id, reason)

    def _allocate_if_auto(self) -> None:
        if self.auto_offer:
            self._allocate()

    def _allocate(self, only: set[str] | None = None) -> list[Offer]:
        sent: dict[str, list[Offer]] = {}
        busy = {o.agent_id for o in self._offers.values()}
        for fw in self._frameworks.values():
            if fw.stream is None or fw.removed is not None:
                continue
            for agent in self._agents.values():
                if agent.removed or agent.agent_id in busy or (only is not None and agent.agent_id not in only):
                    continue
                if fw.refused.get(agent.agent_id, float("-inf")) > self._now:
                    continue
                free = agent.total - agent.used
                for role in fw.info.roles:
                    if role in fw.suppressed:
                        continue
                    resources = free.allocatable_to(role)
                    if not resources:
                        continue
                    offer = Offer(offer_id=self._new_id("offer"), agent_id=agent.agent_id, resources=resources,
                                  hostname=agent.hostname, role=role, framework_id=fw.framework_id,
                                  attributes=agent.attributes)
                    self._offers[offer.offer_id] = offer
                    busy.add(agent.agent_id)
                    sent.setdefault(fw.framework_id, []).append(offer)
                    break
        for fid, offers in sent.items():
            stream = self._frameworks[fid].stream
            assert stream is not None
            stream.push(OffersEvent(tuple(offers)))
        return [o for offers in sent.values() for o in offers]

    # ---- tasks -----------------------------------------------------------------------------------------------
    def _find(self, task_id: str, framework_id: str | None) -> _Task | None:
        """The task `task_id` of `framework_id`, or of the only framework with such a task when None."""
        if framework_id is not None:
            return self._tasks.get((framework_id, task_id))
        found = [t for (_, tid), t in sorted(self._tasks.items()) if tid == task_id]
        if len(found) > 1:
            raise ValueError(f"task id {task_id} is used by frameworks "
                             f"{', '.join(t.framework_id for t in found)}: pass framework_id")
        return found[0] if found else None

    def update(self, task_id: str, state: TaskState, *, message: str = "", reason: str = "",
               exit_code: int | None = None, framework_id: str | None = None) -> TaskStatus:
        """Report a status update of a task, as its agent would."""
        with self._cond:
            task = self._find(task_id, framework_id)
            if task is None:
                raise NotFound(f"task {task_id} is not known")
            if is_terminal(task.state):
                raise Conflict(f"task {task_id} is already {task.state.name}")
            status = self._update(task, state, message=message, reason=reason, exit_code=exit_code)
            self._changed()
            return status

    def _update(self, task: _Task, state: TaskState, *, message: str = "", reason: str = "",
                exit_code: int | None = None) -> TaskStatus:
        status = TaskStatus(task_id=task.info.task_id, state=state, message=message, reason=reason,
                            exit_code=exit_code, agent_id=task.info.agent_id, uuid=self._new_id("uuid"),
                            timestamp=self._now, framework_id=task.framework_id)
        was_live = not is_terminal(task.state)
        task.state = state
        task.statuses.append(status)
        if was_live and is_terminal(state):
            agent = self._agents.get(task.info.agent_id)
            if agent is not None and not agent.removed:
                agent.used = agent.used - task.info.resources
        fw = self._frameworks[task.framework_id]
        if fw.removed is None:
            fw.unacked[status.uuid] = status
            if fw.stream is not None:
                fw.stream.push(UpdateEvent(status))
        if is_terminal(state):
            self._allocate_if_auto()
        return status

    def _run_behaviour(self, task: _Task) -> None:
        if self.behaviour is None:
            return
        for step in self.behaviour(task.info):
            if is_terminal(task.state):
                break
            s = step if isinstance(step, StatusStep) else StatusStep(step)
            self._update(task, s.state, message=s.message, reason=s.reason, exit_code=s.exit_code)

    # ---- frameworks and faults ----------------------------------------------------------------------------
    def send_message(self, framework_id: str, agent_id: str, data: bytes) -> None:
        with self._cond:
            stream = self._frameworks[framework_id].stream
            if stream is None:
                raise Conflict(f"framework {framework_id} is not connected")
            stream.push(MessageEvent(agent_id, data))

    def heartbeat(self) -> None:
        """Send a heartbeat on every open stream."""
        with self._cond:
            for fw in self._frameworks.values():
                if fw.stream is not None:
                    fw.stream.push(HeartbeatEvent())

    def drop_stream(self, framework_id: str | None = None, error: TesseraError | None = None) -> None:
        """Break the connection of one framework (all when None): its stream ends with `error`
        (default: Unavailable), its offers are void, it keeps its tasks and may re-subscribe."""
        with self._cond:
            for fw in self._frameworks.values():
                if framework_id not in (None, fw.framework_id) or fw.stream is None:
                    continue
                stream, fw.stream = fw.stream, None
                self._retire_offers_of(fw.framework_id, "framework disconnected")
                stream.end(error if error is not None else Unavailable("connection to the master lost"))
            self._changed()

    def failover(self, new_leader: str | None = None) -> str:
        """Another master leads: every stream ends with NotLeader naming it, offers are void, calls to
        the old leader are redirected. Returns the new leader's address."""
        with self._cond:
            if new_leader is None:
                i = self.addresses.index(self.leader)
                new_leader = self.addresses[(i + 1) % len(self.addresses)]
            if new_leader not in self.addresses:
                raise ValueError(f"{new_leader} is not one of {self.addresses}")
            old, self.leader = self.leader, new_leader
            self.drop_stream(error=NotLeader(f"{old} stopped leading", new_leader))
            return new_leader

    def set_down(self, address: str, down: bool = True) -> None:
        """Make a master unreachable (calls and subscriptions fail with Unavailable) or reachable."""
        with self._cond:
            if down:
                self._down.add(address)
                for fw in self._frameworks.values():
                    if fw.stream is not None and fw.stream.address == address:
                        self.drop_stream(fw.framework_id)
            else:
                self._down.discard(address)
            self._changed()

    def add_address(self, address: str, *, leader: bool = False) -> None:
        with self._cond:
            if address not in self.addresses:
                self.addresses.append(address)
            if leader:
                self.leader = address

    def remove_framework(self, framework_id: str, message: str = "removed by the operator") -> None:
        """Remove a framework: its live tasks are killed, it gets an Error event, its stream ends, and a
        re-subscription with its id is refused (Conflict)."""
        with self._cond:
            fw = self._frameworks[framework_id]
            self._remove(fw, message)
            if fw.stream is not None:
                stream, fw.stream = fw.stream, None
                stream.push(ErrorEvent(message))
                stream.end(None)
            self._changed()

    def _remove(self, fw: _Framework, why: str) -> None:
        fw.removed = why
        self._retire_offers_of(fw.framework_id, "framework removed")
        for task in self._tasks.values():
            if task.framework_id == fw.framework_id and not is_terminal(task.state):
                task.kill_requested = True
                self._update(task, TaskState.TASK_KILLED, message="framework removed")
        fw.unacked.clear()
        self._allocate_if_auto()

    def fail_next(self, kind: type[Any], error: TesseraError, *, after_apply: bool = False) -> None:
        """The next call of type `kind` (e.g. `AcceptCall`) fails with `error`, before it is applied or
        (`after_apply=True`: the answer is lost) after."""
        with self._cond:
            self._faults.append(_Fault(kind, error, after_apply))

    # ---- views ---------------------------------------------------------------------------------------------
    def agents(self) -> list[AgentView]:
        with self._cond:
            return [self._agent_view(a) for a in self._agents.values()]

    def _agent_view(self, a: _Agent) -> AgentView:
        offered = EMPTY
        for o in self._offers.values():
            if o.agent_id == a.agent_id:
                offered = offered + o.resources
        return AgentView(a.agent_id, a.hostname, a.total, dict(a.attributes), a.used, offered, a.removed)

    def tasks(self, framework_id: str | None = None) -> dict[str, TaskView]:
        """Tasks by task id: of one framework, or of every framework (`ValueError` when two share an id)."""
        with self._cond:
            out: dict[str, TaskView] = {}
            for (fid, tid), t in self._tasks.items():
                if framework_id is not None and fid != framework_id:
                    continue
                if tid in out:
                    raise ValueError(f"task id {tid} is used by frameworks {out[tid].framework_id}, {fid}: "
                                     "pass framework_id")
                out[tid] = self._task_view(t)
            return out

    def task(self, task_id: str, framework_id: str | None = None) -> TaskView:
        with self._cond:
            task = self._find(task_id, framework_id)
            if task is None:
                raise KeyError(task_id)
            return self._task_view(task)

    def tasks_in(self, *states: TaskState) -> list[TaskView]:
        """Tasks whose current state is one of `states`."""
        with self._cond:
            return [self._task_view(t) for t in self._tasks.values() if t.state in states]

    def live_tasks(self) -> list[TaskView]:
        with self._cond:
            return [self._task_view(t) for t in self._tasks.values() if not is_terminal(t.state)]

    @staticmethod
    def _task_view(t: _Task) -> TaskView:
        return TaskView(t.info, t.framework_id, t.info.agent_id, t.state, tuple(t.statuses), t.kill_requested)

    def framework(self, framework_id: str | None = None) -> FrameworkView:
        """A framework's view (the only one when `framework_id` is None)."""
        with self._cond:
            if framework_id is None:
                if len(self._frameworks) != 1:
                    raise LookupError(f"{len(self._frameworks)} frameworks; name one")
                fw = next(iter(self._frameworks.values()))
            else:
                fw = self._frameworks[framework_id]
            return FrameworkView(fw.framework_id, fw.info, fw.stream is not None, fw.stream_id,
                                 frozenset(fw.suppressed), dict(fw.refused), fw.removed,
                                 tuple(fw.unacked.values()), fw.subscriptions)

    def frameworks(self) -> list[str]:
        with self._cond:
            return list(self._frameworks)

    def offers(self) -> list[Offer]:
        """Outstanding offers."""
        with self._cond:
            return list(self._offers.values())

    def calls_of(self, kind: type[T]) -> list[T]:
        """Every call attempt of one type (`AcceptCall`, `DeclineCall`...), retries included."""
        with self._cond:
            return [c for _, _, c in self.calls if isinstance(c, kind)]

    # ---- the protocol: subscribe -------------------------------------------------------------------------
    def _check_address(self, address: str) -> TesseraError | None:
        if address in self._down or address not in self.addresses:
            return Unavailable(f"{address}: connection refused")
        if address != self.leader:
            return NotLeader(f"{address} is not the leader", self.leader)
        return None

    def _subscribe(self, address: str, info: FrameworkInfo) -> FakeStream:
        with self._cond:
            self.subscribe_requests.append((address, info))
            stream = FakeStream(self, address)
            try:
                error = self._check_address(address)
                if error is not None:
                    raise error
                fw = self._framework_to_subscribe(info)
            except TesseraError as exc:
                stream.end(exc)
                self._changed()
                return stream
            if fw.stream is not None:
                old, fw.stream = fw.stream, None
                old.end(None)  # a newer connection of the same framework takes over
            self._retire_offers_of(fw.framework_id, "framework resubscribed")
            fw.info = replace(info, framework_id=fw.framework_id)
            fw.stream_id = self._new_id("stream")
            fw.stream = stream
            fw.subscriptions += 1
            stream.framework_id = fw.framework_id
            stream.push(SubscribedEvent(fw.framework_id, fw.stream_id, self.heartbeat_interval, address,
                                        (BATCHED_ACKNOWLEDGEMENTS,) if self.batched_acknowledgements else ()))
            for status in fw.unacked.values():
                stream.push(UpdateEvent(status))
            self._allocate_if_auto()
            self._changed()
            return stream

    def _framework_to_subscribe(self, info: FrameworkInfo) -> _Framework:
        if not info.name or not info.roles:
            raise InvalidRequest("info: a framework needs a name and at least one role")
        if not info.framework_id:
            fw = _Framework(self._new_id("framework"), info)
            self._frameworks[fw.framework_id] = fw
            return fw
        fw_or_none = self._frameworks.get(info.framework_id)
        if fw_or_none is None:
            raise NotFound(f"framework {info.framework_id} is not known")
        if fw_or_none.removed is not None:
            raise Conflict(f"framework {info.framework_id} was removed ({fw_or_none.removed}); subscribe anew")
        if info.principal != fw_or_none.info.principal:
            raise Conflict(f"framework {info.framework_id} subscribed as principal {fw_or_none.info.principal!r}")
        return fw_or_none

    def _stream_closed_by_client(self, stream: FakeStream) -> None:
        with self._cond:
            if stream.framework_id is None:
                return
            fw = self._frameworks.get(stream.framework_id)
            if fw is not None and fw.stream is stream:
                fw.stream = None
                self._retire_offers_of(fw.framework_id, "framework disconnected")
            self._changed()

    # ---- the protocol: calls -------------------------------------------------------------------------------
    def _handle(self, address: str, header: CallHeader, call: Call) -> CallResult:
        with self._cond:
            self.calls.append((address, header, call))
            self._changed()
            error = self._check_address(address)
            if error is not None:
                raise error
            fault = next((f for f in self._faults if isinstance(call, f.kind)), None)
            if fault is not None:
                self._faults.remove(fault)
                if not fault.after_apply:
                    raise fault.error
            if header.request_id and header.request_id in self._requests:
                result = self._requests[header.request_id]  # a retry: answer, apply nothing
            else:
                result = self._apply(header, call)
                if header.request_id:
                    self._requests[header.request_id] = result
            self._changed()
            if fault is not None:
                raise fault.error
            return result

    def _framework_call(self, header: CallHeader) -> _Framework:
        fw = self._frameworks.get(header.framework_id)
        if fw is None:
            raise NotFound(f"framework {header.framework_id!r} is not known")
        if fw.removed is not None:
            raise Conflict(f"framework {fw.framework_id} was removed ({fw.removed})")
        if header.stream_id and header.stream_id != fw.stream_id:
            raise Conflict(f"stream {header.stream_id} is not the current stream of framework {fw.framework_id}")
        return fw

    def _roles(self, fw: _Framework, roles: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [r for r in roles if r not in fw.info.roles]
        if unknown:
            raise InvalidRequest(f"roles: framework {fw.framework_id} is not subscribed to {', '.join(unknown)}")
        return roles or fw.info.roles

    def _live_offer(self, fw: _Framework, offer_id: str) -> Offer:
        offer = self._offers.get(offer_id)
        if offer is None:
            if offer_id in self._retired:
                raise Conflict(f"offer {offer_id} is no longer valid: {self._retired[offer_id]}")
            raise NotFound(f"offer {offer_id} is not known")
        if offer.framework_id != fw.framework_id:
            raise Conflict(f"offer {offer_id} was made to another framework")
        return offer

    def _offers_of_call(self, fw: _Framework, offer_ids: tuple[str, ...]) -> list[Offer]:
        if not offer_ids:
            raise InvalidRequest("offer_ids: give at least one offer id")
        if len(set(offer_ids)) != len(offer_ids):
            raise InvalidRequest("offer_ids: an offer is named twice")
        return [self._live_offer(fw, oid) for oid in offer_ids]

    def _apply(self, header: CallHeader, call: Call) -> CallResult:
        fw = self._framework_call(header)
        if isinstance(call, AcceptCall):
            self._accept(fw, call)
        elif isinstance(call, DeclineCall):
            offers = self._offers_of_call(fw, call.offer_ids)
            seconds = call.filters.refuse_seconds if call.filters is not None else DEFAULT_REFUSE_SECONDS
            for offer in offers:
                self._retire(offer.offer_id, "declined")
                fw.refused[offer.agent_id] = self._now + seconds
            self._allocate_if_auto()
        elif isinstance(call, ReviveCall):
            fw.suppressed -= set(self._roles(fw, call.roles))
            fw.refused.clear()
            self._allocate_if_auto()
        elif isinstance(call, SuppressCall):
            fw.suppressed |= set(self._roles(fw, call.roles))
        elif isinstance(call, KillCall):
            self._kill(fw, call)
        elif isinstance(call, AcknowledgeCall):
            self._acknowledge(fw, call)
        elif isinstance(call, AcknowledgeManyCall):
            if not self.batched_acknowledgements:
                raise InvalidRequest("task_id: must not be empty")  # what a master without the capability says
            for ack in call.acks:
                try:
                    self._acknowledge(fw, ack)
                except NotFound:
                    pass  # refused alone, as the master does; the others still count
        elif isinstance(call, ReconcileCall):
            return self._reconcile(fw, call)
        elif isinstance(call, TeardownCall):
            self._remove(fw, "teardown requested by the framework")
            if fw.stream is not None:
                stream, fw.stream = fw.stream, None
                stream.end(None)
        elif isinstance(call, MessageCall):
            agent = self._agents.get(call.agent_id)
            if agent is None:
                raise NotFound(f"agent {call.agent_id} is not known")
            self.messages.append((fw.framework_id, call.agent_id, call.data))
        return ()

    def _accept(self, fw: _Framework, call: AcceptCall) -> None:
        if fw.stream is None:
            raise Conflict(f"framework {fw.framework_id} is not connected")
        offers = self._offers_of_call(fw, call.offer_ids)
        if len({o.agent_id for o in offers}) != 1:
            raise InvalidRequest("offer_ids: the offers of one accept must be on one agent")
        if len({o.role for o in offers}) != 1:
            raise InvalidRequest("offer_ids: the offers of one accept must be for one role")
        agent = self._agents[offers[0].agent_id]
        role = offers[0].role
        pool = EMPTY
        for offer in offers:
            pool = pool + offer.resources
        total = agent.total
        launched: list[TaskInfo] = []
        # Validate everything first: an accept applies whole or not at all.
        for n, op in enumerate(call.operations):
            if isinstance(op, Launch):
                for task in op.tasks:
                    tid = task.task_id
                    if task.agent_id not in ("", agent.agent_id):
                        raise InvalidRequest(f"task {tid}: agent_id {task.agent_id} is not the offers' agent")
                    if (fw.framework_id, tid) in self._tasks or any(t.task_id == tid for t in launched):
                        raise Conflict(f"task id {tid} is already used by this framework")
                    if not pool.contains(task.resources):
                        raise Conflict(f"task {tid} needs {task.resources}; its offers have {pool} left")
                    pool = pool - task.resources
                    launched.append(task.on_agent(agent.agent_id))
            else:
                res = op.resources
                if res.roles() != {role}:
                    raise InvalidRequest(f"operations[{n}].resources: must all be reserved to the role {role}")
                flat = res.flatten()
                if isinstance(op, Reserve):
                    if not pool.contains(flat):
                        raise Conflict(f"operations[{n}]: {flat} is not unreserved in the offers")
                    pool, total = pool - flat + res, total - flat + res
                else:
                    if not pool.contains(res):
                        raise Conflict(f"operations[{n}]: {res} is not in the offers")
                    pool, total = pool - res + flat, total - res + flat
        for offer in offers:
            self._retire(offer.offer_id, "used")
        agent.total = total
        if call.filters is not None:
            fw.refused[agent.agent_id] = self._now + call.filters.refuse_seconds
        records = []
        for info in launched:
            record = _Task(info, fw.framework_id)
            record.statuses.append(TaskStatus(task_id=info.task_id, state=TaskState.TASK_STAGING,
                                              agent_id=agent.agent_id, framework_id=fw.framework_id,
                                              timestamp=self._now))
            self._tasks[(fw.framework_id, info.task_id)] = record
            agent.used = agent.used + info.resources
            records.append(record)
        for record in records:
            self._run_behaviour(record)
        self._allocate_if_auto()

    def _kill(self, fw: _Framework, call: KillCall) -> None:
        task = self._tasks.get((fw.framework_id, call.task_id))
        if task is None:
            raise NotFound(f"framework {fw.framework_id} has no task {call.task_id}")
        if is_terminal(task.state):
            return
        task.kill_requested = True
        if self.auto_kill:
            self._update(task, TaskState.TASK_KILLED, message="task killed (signal SIGTERM)", exit_code=143)

    def _acknowledge(self, fw: _Framework, call: AcknowledgeCall) -> None:
        task = self._tasks.get((fw.framework_id, call.task_id))
        if task is None:
            raise NotFound(f"framework {fw.framework_id} has no task {call.task_id}")
        if call.uuid in fw.unacked:
            del fw.unacked[call.uuid]
            self.acknowledged.append(call.uuid)
        elif call.uuid not in self.acknowledged:
            raise NotFound(f"task {call.task_id} has no status update {call.uuid}")

    def _reconcile(self, fw: _Framework, call: ReconcileCall) -> CallResult:
        ids = call.task_ids or tuple(tid for fid, tid in self._tasks if fid == fw.framework_id)
        out = []
        for tid in ids:
            task = self._tasks.get((fw.framework_id, tid))
            if task is None:
                out.append(TaskStatus(task_id=tid, state=TaskState.TASK_LOST, reason="REASON_RECONCILIATION",
                                      message="the master does not know this task",
                                      framework_id=fw.framework_id))
            else:
                out.append(task.statuses[-1])
        return tuple(out)


# ---- the same fake over gRPC ------------------------------------------------------------------------------


def _abort(context: grpc.ServicerContext, exc: TesseraError) -> None:
    # The codes and metadata a master sends (tessera.sdk.errors.status_for_error, the inverse of the SDK's mapping).
    status, details, hint = status_for_error(exc)
    if hint:
        context.set_trailing_metadata(((LEADER_METADATA_KEY, hint),))
    context.abort(getattr(grpc.StatusCode, status, grpc.StatusCode.INTERNAL), details)


_RESPONSES: dict[str, Callable[[CallResult], Any]] = {
    "Accept": lambda r: scheduler_pb2.AcceptResponse(),
    "Decline": lambda r: scheduler_pb2.DeclineResponse(),
    "Revive": lambda r: scheduler_pb2.ReviveResponse(),
    "Suppress": lambda r: scheduler_pb2.SuppressResponse(),
    "Kill": lambda r: scheduler_pb2.KillResponse(),
    "Acknowledge": lambda r: scheduler_pb2.AcknowledgeResponse(),
    "Reconcile": lambda r: scheduler_pb2.ReconcileResponse(statuses=[status_to_proto(s) for s in r]),
    "Teardown": lambda r: scheduler_pb2.TeardownResponse(),
    "Message": lambda r: scheduler_pb2.MessageResponse(),
}


class _FakeSchedulerService(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, fake: FakeMaster, address: str) -> None:
        self.fake = fake
        self.address = address

    def Subscribe(self, request: scheduler_pb2.SubscribeRequest, context: grpc.ServicerContext) -> Any:
        try:
            info = info_from_proto(request.info)
        except TesseraError as exc:
            _abort(context, exc)
            return
        stream = self.fake._subscribe(self.address, info)
        context.add_callback(stream.cancel)
        while context.is_active():
            try:
                event = stream.next(0.1)
            except StreamEnded as ended:
                if ended.error is not None:
                    _abort(context, ended.error)
                return
            if event is not None:
                yield event_to_proto(event)

    def _unary(self, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            header, call = call_from_proto(request)
            result = self.fake._handle(self.address, header, call)
        except TesseraError as exc:
            _abort(context, exc)
            return None
        return _RESPONSES[method](result)

    def Accept(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Accept", request, context)

    def Decline(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Decline", request, context)

    def Revive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Revive", request, context)

    def Suppress(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Suppress", request, context)

    def Kill(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Kill", request, context)

    def Acknowledge(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Acknowledge", request, context)

    def Reconcile(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Reconcile", request, context)

    def Teardown(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Teardown", request, context)

    def Message(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Message", request, context)


class FakeGrpcServer:
    """Serve `fake` over gRPC on a free 127.0.0.1 port, as one more master address of the fake.

        with FakeGrpcServer(fake, leader=True) as server:
            ... SchedulerDriver(..., [server.address]) ...
    """

    def __init__(self, fake: FakeMaster, *, leader: bool = True, host: str = "127.0.0.1") -> None:
        self.fake = fake
        self._server = grpc.server(ThreadPoolExecutor(max_workers=16, thread_name_prefix="fake-master"))
        port = self._server.add_insecure_port(f"{host}:0")
        if port == 0:
            raise OSError(f"cannot bind a port on {host}")
        self.address = f"{host}:{port}"
        scheduler_pb2_grpc.add_SchedulerServicer_to_server(_FakeSchedulerService(fake, self.address), self._server)
        fake.add_address(self.address, leader=leader)

    def start(self) -> FakeGrpcServer:
        self._server.start()
        return self

    def stop(self, grace: float = 0.0) -> None:
        self._server.stop(grace).wait(grace + 2.0)

    def __enter__(self) -> FakeGrpcServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
