"""Leader duties: the soft state and the reactions that only the serving leader has.

What lives here is soft (rule 7 of the core): open agent and framework streams, heartbeat arrival
times, per-agent usage samples, allocation scratch. It is rebuilt after a failover; its *consequences*
(an agent marked unreachable, offers issued or rescinded, a framework disconnected) are always
commands proposed through the log, never direct state changes.

Theory of operation
-------------------
- Reactions after commit (rule 3): the state machine calls `on_applied` on the apply thread for every
  applied batch; that only enqueues. The reactor thread then sends what the committed events justify:
  `RunTask`/`KillTask`/`Shutdown` to agents, `Offers`/`Rescind`/`Update`/`Error` to frameworks. A
  follower enqueues nothing (it is not serving), so it never acts. What one reaction sends to one
  stream keeps its order; consecutive RunTasks to an agent with the BATCHED_MESSAGES capability go as
  one `run_tasks` message, consecutive updates to a framework that subscribed with BATCHED_UPDATES as
  one `updates` event.
- The ticker thread, while serving, proposes the time-driven commands: agents silent for longer than
  `agent_timeout` become unreachable (a new leader first grants `reregistration_timeout`); frameworks
  whose stream did not come back to this leader are disconnected (starting their failover timeout);
  expired frameworks are removed; expired offers rescinded; an allocation round runs every
  `allocation_interval` and right after resources free up; unacknowledged status updates are re-sent.
- Becoming leader: offers issued under an older leader are rescinded (their frameworks may never have
  seen them), then allocation starts afresh. Losing leadership: every open stream is ended with
  UNAVAILABLE and the new leader's address, so agents and frameworks reconnect there.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from control_plane.codec import to_proto
from control_plane.core import commands as cmd
from control_plane.core import events as ev
from control_plane.core.errors import TesseraError
from control_plane.core.values import AgentState, FrameworkState, TaskStatus
from control_plane.runtime.master import Master
from control_plane.runtime.statemachine import Applied
from tessera.v1 import agent_pb2, common_pb2, scheduler_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaderSettings:
    agent_heartbeat_interval: float = 1.0  # what agents are told to use
    agent_timeout: float = 10.0  # silent this long -> AgentUnreachable
    reregistration_timeout: float = 10.0  # grace after a leader change before timing an agent
    framework_heartbeat_interval: float = 5.0
    framework_reconnect_timeout: float = 5.0  # after a leader change, before a missing framework is disconnected
    allocation_interval: float = 1.0
    offer_timeout: float | None = 60.0  # None = offers never expire
    status_update_retry: float = 10.0  # re-send unacknowledged updates to a framework this often
    tick: float = 0.1


CLOSE = object()  # sentinel: end the stream


def leadership_transition(served: int, term: int) -> tuple[bool, bool]:
    """(deposed, elected): what to run when the serving term goes from `served` to `term` (0: not
    serving). Losing and regaining leadership between two ticks is a new term: the old term's streams
    are closed and the new one starts afresh, as after any leader change."""
    return served != 0 and served != term, term != 0 and term != served
OFFERS_PER_ENTRY = 100  # offers committed per log entry (an offer encodes to a few hundred bytes)
MAX_PER_MESSAGE = 500  # RunTasks or updates in one batched message (each a few hundred bytes)


@dataclass
class AgentSession:
    agent_id: str
    out: queue.Queue[Any] = field(default_factory=queue.Queue)
    last_seen: float = field(default_factory=time.monotonic)
    closed: bool = False
    batched: bool = False  # the agent understands run_tasks and acks (BATCHED_MESSAGES)
    identity: str = ""  # the name in the agent's verified certificate ("" without TLS)

    def send(self, msg: Any) -> None:
        if not self.closed:
            self.out.put(msg)

    def close(self) -> None:
        self.closed = True
        self.out.put(CLOSE)


@dataclass
class FrameworkSession:
    framework_id: str
    stream_id: str
    out: queue.Queue[Any] = field(default_factory=queue.Queue)
    closed: bool = False
    last_update_sent: dict[str, float] = field(default_factory=dict)  # status uuid -> monotonic time
    batched_updates: bool = False  # the framework understands `updates` events (BATCHED_UPDATES)

    def send(self, event: scheduler_pb2.SchedulerEvent) -> None:
        if not self.closed:
            self.out.put(event)

    def close(self) -> None:
        self.closed = True
        self.out.put(CLOSE)


# Events after which an allocation round may find something new to offer.
_FREES_RESOURCES = (
    ev.AgentRegistered, ev.AgentReregistered, ev.FrameworkSubscribed, ev.FrameworkRevived,
    ev.OfferDeclined, ev.OfferRescinded, ev.ResourcesUnreserved, ev.ResourcesReserved, ev.RoleWeightSet,
    ev.QuotaSet,
)

Snapshot = Callable[[Any, float], Any]  # (state, now) -> allocation snapshot; runs under the state lock
Allocate = Callable[[Any, float], Sequence[Any]]  # (snapshot, now) -> offers; runs outside it


class LeaderDuties:
    def __init__(self, master: Master, settings: LeaderSettings | None = None,
                 allocator: tuple[Snapshot, Allocate] | None = None) -> None:
        self.master = master
        self.settings = settings or LeaderSettings()
        self._allocator = allocator
        self._lock = threading.Lock()
        self.agents: dict[str, AgentSession] = {}
        self.frameworks: dict[str, FrameworkSession] = {}
        self.usage: dict[str, agent_pb2.Usage] = {}
        # agent id -> monotonic time of its last message to this leader; kept when its stream breaks so a
        # restarting agent has the whole agent_timeout to come back before it is marked unreachable
        self.agent_last_seen: dict[str, float] = {}
        self._reactions: queue.Queue[Sequence[Applied] | None] = queue.Queue()
        self._stop = threading.Event()
        self._allocation_wanted = threading.Event()
        self._serving_since: float | None = None
        self._pending: set[tuple[str, str]] = set()  # (kind, id) proposals in flight, not to repeat
        self._threads: list[threading.Thread] = []
        self.allocation_rounds = 0
        self.last_allocation_seconds = 0.0
        master.sm.add_listener(self.on_applied)

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        for target, name in ((self._react_loop, "leader-reactor"), (self._tick_loop, "leader-ticker")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._reactions.put(None)
        self._close_all()
        for t in self._threads:
            t.join(timeout=5)

    # ---- sessions --------------------------------------------------------------------------------
    def attach_agent(self, agent_id: str, *, batched: bool = False, identity: str = "") -> AgentSession:
        session = AgentSession(agent_id, batched=batched, identity=identity)
        with self._lock:
            old = self.agents.get(agent_id)
            self.agents[agent_id] = session
        if old is not None:
            old.close()  # a newer connection of the same agent takes over
        return session

    def detach_agent(self, session: AgentSession) -> None:
        with self._lock:
            if self.agents.get(session.agent_id) is session:
                del self.agents[session.agent_id]
                self.agent_last_seen[session.agent_id] = max(
                    session.last_seen, self.agent_last_seen.get(session.agent_id, 0.0))
        session.closed = True

    def attach_framework(self, framework_id: str, stream_id: str, *, batched_updates: bool = False
                         ) -> FrameworkSession:
        session = FrameworkSession(framework_id, stream_id, batched_updates=batched_updates)
        with self._lock:
            old = self.frameworks.get(framework_id)
            self.frameworks[framework_id] = session
        if old is not None:
            old.send(scheduler_pb2.SchedulerEvent(error=scheduler_pb2.Error(
                message="a newer connection of this framework took over")))
            old.close()
        return session

    def detach_framework(self, session: FrameworkSession) -> bool:
        """True when `session` was still the framework's current one (so the framework is now gone)."""
        with self._lock:
            current = self.frameworks.get(session.framework_id) is session
            if current:
                del self.frameworks[session.framework_id]
        session.closed = True
        return current

    def _close_all(self) -> None:
        with self._lock:
            sessions: list[AgentSession | FrameworkSession] = [*self.agents.values(), *self.frameworks.values()]
            self.agents.clear()
            self.frameworks.clear()
        for s in sessions:
            s.close()

    def term(self) -> int:
        return self.master.replicator.term()

    def want_allocation(self) -> None:
        self._allocation_wanted.set()

    # ---- reactions after commit --------------------------------------------------------------------
    def on_applied(self, batch: Sequence[Applied]) -> None:
        """Apply thread: hand off only."""
        if self.master.is_serving():
            self._reactions.put(batch)

    def _react_loop(self) -> None:
        while not self._stop.is_set():
            batch = self._reactions.get()
            if batch is None:
                return
            try:
                self._react(batch)
            except Exception:  # noqa: BLE001 - a reaction bug must not stop the reactor
                log.exception("reaction failed")

    def _react(self, batch: Sequence[Applied]) -> None:
        term = self.term()
        offers: dict[str, list[common_pb2.Offer]] = {}
        # what this reaction sends, per stream and in order (coalesced when the stream allows it)
        to_agents: dict[str, list[agent_pb2.MasterMessage]] = {}
        to_frameworks: dict[str, list[scheduler_pb2.SchedulerEvent | TaskStatus]] = {}
        for applied in batch:
            traceparent = applied.entry.traceparent
            for _, event in applied.result.events:
                if isinstance(event, _FREES_RESOURCES):
                    self._allocation_wanted.set()
                if isinstance(event, ev.TaskLaunched):
                    to_agents.setdefault(event.agent_id, []).append(agent_pb2.MasterMessage(
                        term=term, run_task=agent_pb2.RunTask(
                            task=to_proto(event.task, common_pb2.TaskInfo), traceparent=traceparent)))
                elif isinstance(event, ev.TaskKillRequested):
                    to_agents.setdefault(event.agent_id, []).append(agent_pb2.MasterMessage(
                        term=term, kill_task=agent_pb2.KillTask(
                            task_id=event.task_id, framework_id=event.framework_id,
                            grace_period_seconds=event.grace_period_seconds)))
                elif isinstance(event, ev.AgentRemoved):
                    to_agents.setdefault(event.agent_id, []).append(agent_pb2.MasterMessage(
                        term=term, shutdown=agent_pb2.Shutdown(reason=event.reason)))
                elif isinstance(event, ev.TaskStatusUpdated):
                    if event.status.state >= 5:  # terminal states free resources
                        self._allocation_wanted.set()
                    to_frameworks.setdefault(event.framework_id, []).append(event.status)
                elif isinstance(event, ev.OfferIssued):
                    offers.setdefault(event.framework_id, []).append(to_proto(event.offer, common_pb2.Offer))
                elif isinstance(event, ev.OfferRescinded):
                    to_frameworks.setdefault(event.framework_id, []).append(scheduler_pb2.SchedulerEvent(
                        rescind=scheduler_pb2.Rescind(offer_id=event.offer_id)))
                elif isinstance(event, ev.FrameworkRemoved):
                    self._send_to_framework(event.framework_id, to_frameworks.pop(event.framework_id, []))
                    session = self.frameworks.get(event.framework_id)
                    if session is not None:
                        session.send(scheduler_pb2.SchedulerEvent(error=scheduler_pb2.Error(
                            message=f"framework removed: {event.reason}")))
                        session.close()
        for agent_id, messages in to_agents.items():
            self._send_to_agent(agent_id, messages)
        for framework_id, items in to_frameworks.items():
            self._send_to_framework(framework_id, items)
        for framework_id, offered in offers.items():
            self._to_framework(framework_id, scheduler_pb2.SchedulerEvent(offers=scheduler_pb2.Offers(offers=offered)))

    def _send_to_agent(self, agent_id: str, messages: list[agent_pb2.MasterMessage]) -> None:
        session = self.agents.get(agent_id)
        if session is None:
            return  # a disconnected agent learns its tasks' fate when it reregisters
        runs: list[agent_pb2.RunTask] = []

        def flush() -> None:
            if len(runs) == 1:
                session.send(agent_pb2.MasterMessage(term=messages[0].term, run_task=runs[0]))
            elif runs:
                session.send(agent_pb2.MasterMessage(term=messages[0].term, run_tasks=agent_pb2.RunTasks(tasks=runs)))
            runs.clear()

        for msg in messages:
            if session.batched and msg.WhichOneof("kind") == "run_task":
                runs.append(msg.run_task)
                if len(runs) >= MAX_PER_MESSAGE:
                    flush()
            else:
                flush()
                session.send(msg)
        flush()

    def _send_to_framework(self, framework_id: str, items: list[scheduler_pb2.SchedulerEvent | TaskStatus]) -> None:
        session = self.frameworks.get(framework_id)
        if session is None:
            return
        updates: list[scheduler_pb2.Update] = []

        def flush() -> None:
            if len(updates) == 1:
                session.send(scheduler_pb2.SchedulerEvent(update=updates[0]))
            elif updates:
                session.send(scheduler_pb2.SchedulerEvent(updates=scheduler_pb2.Updates(updates=updates)))
            updates.clear()

        now = time.monotonic()
        for item in items:
            if isinstance(item, TaskStatus):
                if item.uuid:
                    session.last_update_sent[item.uuid] = now
                updates.append(scheduler_pb2.Update(status=to_proto(item, common_pb2.TaskStatus)))
                if not session.batched_updates or len(updates) >= MAX_PER_MESSAGE:
                    flush()
            else:
                flush()
                session.send(item)
        flush()

    def _to_framework(self, framework_id: str, event: scheduler_pb2.SchedulerEvent) -> None:
        session = self.frameworks.get(framework_id)
        if session is not None:
            session.send(event)

    def send_update(self, framework_id: str, status: TaskStatus) -> None:
        session = self.frameworks.get(framework_id)
        if session is None:
            return
        if status.uuid:
            session.last_update_sent[status.uuid] = time.monotonic()
        session.send(scheduler_pb2.SchedulerEvent(update=scheduler_pb2.Update(
            status=to_proto(status, common_pb2.TaskStatus))))

    def resend_unacknowledged(self, session: FrameworkSession, *, only_due: bool = False) -> None:
        """Send the oldest unacknowledged update of each of the framework's tasks (they live in
        replicated state, so nothing is lost across a failover)."""
        now = time.monotonic()
        due: list[TaskStatus] = self.master.read_state(lambda s: [
            t.unacknowledged[0] for t in s.tasks_of_framework(session.framework_id) if t.unacknowledged
        ])
        for status in due:
            sent = session.last_update_sent.get(status.uuid)
            if only_due and sent is not None and now - sent < self.settings.status_update_retry:
                continue
            self.send_update(session.framework_id, status)

    def send_outstanding_offers(self, session: FrameworkSession) -> None:
        items = self.master.read_state(lambda s: [
            to_proto(o, common_pb2.Offer) for o in s.offers_of_framework(session.framework_id)])
        if items:
            session.send(scheduler_pb2.SchedulerEvent(offers=scheduler_pb2.Offers(offers=items)))

    # ---- time-driven duties ------------------------------------------------------------------------
    def _tick_loop(self) -> None:
        last_alloc = 0.0
        last_slow = 0.0
        served = 0  # the term these duties last served in
        while not self._stop.is_set():
            term = self.master.serving_term()
            deposed, elected = leadership_transition(served, term)
            if deposed:
                self._on_deposed()
            if elected:
                self._on_serving()
            served = term
            serving = term != 0
            if serving:
                now = time.monotonic()
                try:
                    self._check_agents(now)
                    if now - last_slow >= 1.0:
                        last_slow = now
                        self._check_frameworks(now)
                        self._expire()
                        self._resend_updates()
                    if self._allocator is not None and (
                        self._allocation_wanted.is_set() or now - last_alloc >= self.settings.allocation_interval
                    ):
                        self._allocation_wanted.clear()
                        last_alloc = now
                        self._allocation_round()
                except Exception:  # noqa: BLE001 - a duty failing once must not stop the ticker
                    log.exception("leader duty failed")
            self._stop.wait(self.settings.tick)

    def _on_serving(self) -> None:
        self._serving_since = time.monotonic()
        log.info("leader duties started (term %d)", self.term())
        stale = self.master.read_state(lambda s: sorted(s.offers))
        if stale:
            self._propose_quietly([cmd.RescindOffer(offer_id=o, reason="leader changed") for o in stale],
                                  "rescind stale offers")
        self._allocation_wanted.set()

    def _on_deposed(self) -> None:
        log.info("no longer the serving leader: closing agent and framework streams")
        self._serving_since = None
        self.agent_last_seen.clear()  # soft state: a later term starts with the re-registration grace
        self._close_all()

    def _grace_over(self, now: float, grace: float) -> bool:
        return self._serving_since is not None and now - self._serving_since >= grace

    def _check_agents(self, now: float) -> None:
        timeout = self.settings.agent_timeout
        agents = self.master.read_state(lambda s: [
            aid for aid, a in s.agents.items() if a.state in (AgentState.AGENT_ACTIVE, AgentState.AGENT_DRAINING)])
        for agent_id in agents:
            session = self.agents.get(agent_id)
            if session is not None:
                silent = now - session.last_seen
            elif agent_id in self.agent_last_seen:
                silent = now - self.agent_last_seen[agent_id]  # its stream broke: it may be restarting
            elif self._grace_over(now, self.settings.reregistration_timeout):
                # never heard from since this leader took over, and the re-registration grace is over
                silent = now - (self._serving_since or now) - self.settings.reregistration_timeout + timeout
            else:
                continue
            if silent > timeout and ("agent", agent_id) not in self._pending:
                self._propose_async([cmd.MarkAgentUnreachable(
                    agent_id=agent_id, reason=f"no heartbeat for {silent:.1f} s")], ("agent", agent_id))

    def _check_frameworks(self, now: float) -> None:
        if not self._grace_over(now, self.settings.framework_reconnect_timeout):
            return
        connected = self.master.read_state(lambda s: [
            (fid, f.stream_id) for fid, f in s.frameworks.items() if f.state is FrameworkState.FRAMEWORK_CONNECTED])
        for framework_id, stream_id in connected:
            if framework_id not in self.frameworks and ("framework", framework_id) not in self._pending:
                self._propose_async([cmd.DisconnectFramework(framework_id=framework_id, stream_id=stream_id)],
                                    ("framework", framework_id))

    def _expire(self) -> None:
        self._propose_quietly([cmd.ExpireFrameworks(), cmd.ExpireOffers()], "expiry")

    def _resend_updates(self) -> None:
        for session in list(self.frameworks.values()):
            self.resend_unacknowledged(session, only_due=True)

    def _allocation_round(self) -> None:
        assert self._allocator is not None
        snapshot_fn, allocate_fn = self._allocator
        started = time.perf_counter()
        now = time.time()
        started_ns = time.time_ns()
        snapshot = self.master.read_state(lambda s: snapshot_fn(s, now))
        offers = allocate_fn(snapshot, now)
        self.last_allocation_seconds = time.perf_counter() - started
        if offers:  # a span for rounds that offered something (idle rounds would flood the span store)
            span = self.master.tracer.start_span("allocation.round", start_time=started_ns, attributes={
                "tessera.offers": len(offers), "tessera.agents_considered": len(getattr(snapshot, "agents", ())),
            })
            span.end()
        self.allocation_rounds += 1
        # One entry per chunk keeps each replicated call well under pysyncobj's 64 KiB batch bound; the
        # allocator's offers are disjoint, so chunks commit independently.
        for start in range(0, len(offers), OFFERS_PER_ENTRY):
            self._propose_quietly([cmd.IssueOffers(offers=tuple(offers[start:start + OFFERS_PER_ENTRY]))],
                                  "allocation")

    # ---- proposing -----------------------------------------------------------------------------------
    def _propose_quietly(self, commands: Iterable[cmd.Command], what: str) -> None:
        try:
            self.master.propose(list(commands))
        except TesseraError as exc:
            log.info("%s not committed: %s", what, exc)

    def _propose_async(self, commands: list[cmd.Command], key: tuple[str, str]) -> None:
        self._pending.add(key)
        try:
            fut = self.master.propose_async(commands)
        except TesseraError as exc:
            self._pending.discard(key)
            log.info("%s %s not proposed: %s", key[0], key[1], exc)
            return
        fut.add_done_callback(lambda _f: self._pending.discard(key))


def default_allocator(settings: LeaderSettings) -> tuple[Snapshot, Allocate]:
    """The weighted-DRF allocator of `control_plane.allocation`, bound to these settings."""
    from control_plane.allocation import allocate, snapshot_from_state
    from control_plane.runtime.master import new_id

    def allocate_fn(snapshot: Any, now: float) -> Sequence[Any]:
        return allocate(snapshot, new_id=new_id, now=now, offer_timeout=settings.offer_timeout)

    return snapshot_from_state, allocate_fn
