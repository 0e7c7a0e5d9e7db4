"""Leader duties, the shell: threads, streams, clocks and protobuf around `tessera.control_plane.runtime.duties`.

What to do is decided by the pure functions of `tessera.control_plane.runtime.duties` (`tick`, `react`,
`offer_proposals`, `coalesce`, `elected`), which the whole-cluster simulation runs too. This module keeps
only what they cannot: the soft state that lives on threads (open agent and framework streams, heartbeat
arrival times, per-agent usage samples), the ticker and reactor threads, `time.monotonic()`, proposing
through the `Master`, and turning the duties' values into protobuf messages on the right stream. Soft
state is rebuilt after a failover; its *consequences* are always commands proposed through the log.

Theory of operation
-------------------
- Reactions after commit (rule 3): the state machine calls `on_applied` on the apply thread for every
  applied batch; that only enqueues. The reactor thread asks `duties.react` what the batch justifies and
  delivers it. A follower enqueues nothing (it is not serving), so it never acts. What one reaction sends
  to one stream keeps its order; consecutive RunTasks to an agent with the BATCHED_MESSAGES capability go
  as one `run_tasks` message, consecutive updates to a framework that subscribed with BATCHED_UPDATES as
  one `updates` event (`duties.coalesce`).
- The ticker thread, while serving, builds the `SoftState` view, asks `duties.tick` what is due and does
  it, every `tick` seconds, or `allocation_batch` seconds after a reaction wanted an allocation (a task
  ended, an offer was declined...: what it freed is offered again at once, the frees of one window in
  one pass; `duties.tick` still decides whether the round runs): proposals go out asynchronously (a duty is not proposed again while its proposal is in flight),
  allocation rounds run the allocator and propose `duties.offer_proposals` of its offers, re-sent updates
  go to their streams.
- Becoming leader: `duties.elected` (offers issued under an older leader are rescinded), then allocation
  starts afresh. Losing leadership: every open stream is ended with UNAVAILABLE and the new leader's
  address, so agents and frameworks reconnect there.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tessera.control_plane.codec import to_proto
from tessera.control_plane.core import commands as cmd
from tessera.control_plane.core.errors import TesseraError
from tessera.control_plane.core.values import TaskKey, TaskStatus
from tessera.control_plane.runtime import duties
from tessera.control_plane.runtime.duties import (  # re-exported: the shell's callers import them from here
    MAX_PER_MESSAGE,
    OFFERS_PER_ENTRY,
    LeaderSettings,
)
from tessera.control_plane.runtime.master import Master
from tessera.control_plane.runtime.statemachine import Applied
from tessera.v1 import agent_pb2, common_pb2, scheduler_pb2

log = logging.getLogger(__name__)

__all__ = ["CLOSE", "MAX_PER_MESSAGE", "OFFERS_PER_ENTRY", "AgentSession", "FrameworkSession", "LeaderDuties",
           "LeaderSettings", "default_allocator", "leadership_transition"]

CLOSE = object()  # sentinel: end the stream


def leadership_transition(served: int, term: int) -> tuple[bool, bool]:
    """(deposed, elected): what to run when the serving term goes from `served` to `term` (0: not
    serving). Losing and regaining leadership between two ticks is a new term: the old term's streams
    are closed and the new one starts afresh, as after any leader change."""
    return served != 0 and served != term, term != 0 and term != served


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


Snapshot = Callable[..., Any]  # (state, now, *, ended=None, pending=()) -> allocation snapshot; under the state lock
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
        self._ledger = duties.Ledger()  # pending duty proposals, timers (guarded by self._lock)
        self._reactions: queue.Queue[Sequence[Applied] | None] = queue.Queue()
        self._stop = threading.Event()
        self._wake = threading.Event()  # an allocation pass is wanted: tick now, not at the next period
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
        self._wake.set()
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

    def attach_framework(self, framework_id: str, stream_id: str, *, batched_updates: bool = False,
                         lease_term: int = 0, lease_moved: bool = False) -> FrameworkSession:
        """The framework's new stream; an older one is ended with an Error that says why: its instance was
        deposed (`lease_moved`: another instance took the lease, now at `lease_term`, which the Error
        carries), or a newer connection of the same instance took over."""
        session = FrameworkSession(framework_id, stream_id, batched_updates=batched_updates)
        with self._lock:
            old = self.frameworks.get(framework_id)
            self.frameworks[framework_id] = session
        if old is not None:
            if lease_moved:
                error = scheduler_pb2.Error(message=f"another instance took over the framework's lease (term "
                                                    f"{lease_term}); this one was deposed", lease_term=lease_term)
            else:
                error = scheduler_pb2.Error(message="a newer connection of this framework took over")
            old.send(scheduler_pb2.SchedulerEvent(error=error))
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
        """Something was freed or added: the ticker runs an allocation pass after `allocation_batch`
        seconds (the frees of that window go into one pass), not at its next period."""
        with self._lock:
            self._ledger.allocation_wanted = True
        self._wake.set()

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
                self.deliver(duties.react(batch, self.term(), self._principal_of))
                self._forget_sent(duties.acknowledged(batch))
            except Exception:  # noqa: BLE001 - a reaction bug must not stop the reactor
                log.exception("reaction failed")

    def _forget_sent(self, acknowledged: list[tuple[str, str]]) -> None:
        """Acknowledged updates are never re-sent: stop timing them (else every update ever sent stays in
        `last_update_sent`, copied at every tick). Under the lock, as every change of that dict: the
        ticker copies it (`_soft_state`), and a change during the copy raised "dictionary changed size
        during iteration" (seen in bench_web's runs, "leader duty failed")."""
        with self._lock:
            for framework_id, uuid in acknowledged:
                session = self.frameworks.get(framework_id)
                if session is not None:
                    session.last_update_sent.pop(uuid, None)

    def _principal_of(self, framework_id: str) -> str:
        """The principal framework `framework_id` was recorded under (it never changes); "" if unknown."""
        def read(state: Any) -> str:
            framework = state.frameworks.get(framework_id)
            return framework.info.principal if framework is not None else ""

        return str(self.master.read_state(read))

    def deliver(self, outbound: Iterable[duties.Outbound]) -> None:
        """Send what the duties decided, each stream's messages in order, coalesced where it allows."""
        to_agents: dict[str, list[duties.ToAgent]] = {}
        to_frameworks: dict[str, list[duties.ToFramework]] = {}
        for item in outbound:
            if isinstance(item, duties.WantAllocation):
                self.want_allocation()
            elif isinstance(item, duties.RunTask | duties.KillTask | duties.ShutdownAgent):
                to_agents.setdefault(item.agent_id, []).append(item)
            else:
                to_frameworks.setdefault(item.framework_id, []).append(item)
        for agent_id, messages in to_agents.items():
            self._send_to_agent(agent_id, messages)
        for framework_id, items in to_frameworks.items():
            self._send_to_framework(framework_id, items)

    def _send_to_agent(self, agent_id: str, messages: list[duties.ToAgent]) -> None:
        session = self.agents.get(agent_id)
        if session is None:
            return  # a disconnected agent learns its tasks' fate when it reregisters
        for group in duties.coalesce(messages, lambda m: isinstance(m, duties.RunTask), session.batched):
            session.send(_agent_message(group))

    def _send_to_framework(self, framework_id: str, items: list[duties.ToFramework]) -> None:
        session = self.frameworks.get(framework_id)
        if session is None:
            return
        now = time.monotonic()
        for group in duties.coalesce(items, lambda m: isinstance(m, duties.SendUpdate), session.batched_updates):
            sent = [item.status.uuid for item in group if isinstance(item, duties.SendUpdate) and item.status.uuid]
            if sent:
                with self._lock:  # see `_forget_sent`
                    session.last_update_sent.update(dict.fromkeys(sent, now))
            if isinstance(group[0], duties.RemoveFramework):
                session.send(scheduler_pb2.SchedulerEvent(error=scheduler_pb2.Error(
                    message=f"framework removed: {group[0].reason}")))
                session.close()
            else:
                session.send(_framework_event(group))

    def send_update(self, framework_id: str, status: TaskStatus) -> None:
        self._send_to_framework(framework_id, [duties.SendUpdate(framework_id, status)])

    def resend_unacknowledged(self, session: FrameworkSession) -> None:
        """Send the oldest unacknowledged update of each of the framework's tasks (they live in
        replicated state, so nothing is lost across a failover)."""
        updates = self.master.read_state(lambda s: duties.unacknowledged(s, session.framework_id))
        self._send_to_framework(session.framework_id, updates)

    def send_outstanding_offers(self, session: FrameworkSession) -> None:
        offers = self.master.read_state(lambda s: duties.outstanding_offers(s, session.framework_id))
        self._send_to_framework(session.framework_id, offers)

    # ---- time-driven duties ------------------------------------------------------------------------
    def _tick_loop(self) -> None:
        served = 0  # the term these duties last served in
        while not self._stop.is_set():
            term = self.master.serving_term()
            deposed, elected = leadership_transition(served, term)
            if deposed:
                self._on_deposed()
            if elected:
                self._on_serving()
            served = term
            if term != 0:
                try:
                    self._tick(time.monotonic())
                except Exception:  # noqa: BLE001 - a duty failing once must not stop the ticker
                    log.exception("leader duty failed")
            if self._wake.wait(self.settings.tick):
                self._stop.wait(self.settings.allocation_batch)  # gather this window's frees into one pass
            self._wake.clear()

    def _soft_state(self, now: float) -> duties.SoftState:
        with self._lock:
            last_seen = dict(self.agent_last_seen)
            last_seen.update((aid, s.last_seen) for aid, s in self.agents.items())
            update_sent = {uuid: t for s in self.frameworks.values() for uuid, t in s.last_update_sent.items()}
            return self._ledger.view(now, last_seen=last_seen, frameworks=list(self.frameworks),
                                     update_sent=update_sent)

    def _tick(self, now: float) -> None:
        soft = self._soft_state(now)
        todo = self.master.read_state(lambda s: duties.tick(soft, s, now, self.settings))
        with self._lock:
            self._ledger.record(todo, now)
        self._do(todo)

    def _do(self, todo: Iterable[duties.Command]) -> None:
        for item in todo:
            if isinstance(item, duties.Propose):
                self._propose(item)
            elif isinstance(item, duties.AllocationRound):
                self._allocation_round()
            elif isinstance(item, duties.SendUpdate):
                self._send_to_framework(item.framework_id, [item])

    def _on_serving(self) -> None:
        with self._lock:
            self._ledger.serving(time.monotonic())
        log.info("leader duties started (term %d)", self.term())
        todo = self.master.read_state(duties.elected)
        with self._lock:
            self._ledger.record(todo, time.monotonic())
        self._do(todo)

    def _on_deposed(self) -> None:
        log.info("no longer the serving leader: closing agent and framework streams")
        with self._lock:
            self._ledger.deposed()
            self.agent_last_seen.clear()  # soft state: a later term starts with the re-registration grace
        self._close_all()

    def offers_for_ended(self, state: Any, ended: Mapping[TaskKey, str]) -> Sequence[cmd.Command]:
        """The allocation of what a batch of status updates frees, decided into that batch's entry
        (`core.decide.decide_each`'s `follow`; it runs under the state lock): the allocator's own round
        (weighted DRF, quota, filters, suppression, in-flight limits) over the agents of the `ended`
        tasks, as their state will be once the updates apply. The freed resources are offered with the
        commit that frees them, one commit earlier than by the next allocation round, which still runs
        for the rest. Only frameworks with a stream open on this leader are offered so: one that is
        (re)subscribing — after a failover, or a reconnection — gets no offer its subscription has not
        rescinded (the entry would be stale), and waits for the next round."""
        if not self.settings.offers_with_frees or self._allocator is None or not self.master.is_serving():
            return ()
        with self._lock:
            streaming = {fid for fid, session in self.frameworks.items() if not session.closed}
        if not streaming:
            return ()
        snapshot_fn, allocate_fn = self._allocator
        now = time.time()
        with self._lock:
            pending = self._ledger.pending_offers()
        offers = tuple(o for o in allocate_fn(snapshot_fn(state, now, ended=ended, pending=pending), now)
                       if o.framework_id in streaming)
        return (cmd.IssueOffers(offers=offers),) if offers else ()

    def _allocation_round(self) -> None:
        if self._allocator is None:
            return
        snapshot_fn, allocate_fn = self._allocator
        started = time.perf_counter()
        now = time.time()
        started_ns = time.time_ns()
        with self._lock:
            pending = self._ledger.pending_offers()  # an earlier round's offers, still committing
        snapshot = self.master.read_state(lambda s: snapshot_fn(s, now, pending=pending))
        offers = duties.offers_not_held(allocate_fn(snapshot, now), self.master.frameworks_offers_held())
        self.last_allocation_seconds = time.perf_counter() - started
        if offers:  # a span for rounds that offered something (idle rounds would flood the span store)
            span = self.master.tracer.start_span("allocation.round", start_time=started_ns, attributes={
                "tessera.offers": len(offers), "tessera.agents_considered": len(getattr(snapshot, "agents", ())),
            })
            span.end()
        self.allocation_rounds += 1
        proposals = duties.offer_proposals(offers)
        with self._lock:
            self._ledger.record(proposals, time.monotonic())
        self._do(proposals)

    # ---- proposing -----------------------------------------------------------------------------------
    def _propose(self, proposal: duties.Propose) -> None:
        """Propose one duty's entry; its key stays pending until the outcome. Per-agent and per-framework
        duties go in the background (one slow commit must not hold back the rest of the tick); the others
        (expiry, stale offers, offer entries) commit on the ticker thread through `Master.propose`, which
        replicates nothing when `decide` finds nothing to do (an idle expiry round)."""
        key = proposal.key
        if key[0] not in _BACKGROUND:
            try:
                self.master.propose(list(proposal.commands))
            except TesseraError as exc:
                log.info("%s %s not committed: %s", key[0], key[1], exc)
            finally:
                with self._lock:
                    self._ledger.done(key)
            return

        def done(fut: Any) -> None:
            with self._lock:
                self._ledger.done(key)
            exc = fut.exception()
            if exc is not None:
                log.info("%s %s not committed: %s", key[0], key[1], exc)

        try:
            fut = self.master.propose_async(list(proposal.commands))
        except TesseraError as exc:
            with self._lock:
                self._ledger.done(key)
            log.info("%s %s not proposed: %s", key[0], key[1], exc)
            return
        fut.add_done_callback(done)


# duty kinds proposed without waiting for the commit: offer entries too (the ticker's other duties do not
# wait for them; the next allocation round may run while they commit when
# `LeaderSettings.allocation_rounds_in_flight` > 1, over `Ledger.pending_offers`)
_BACKGROUND = frozenset({"agent", "framework", "offers"})


def _agent_message(group: tuple[duties.ToAgent, ...]) -> agent_pb2.MasterMessage:
    """One agent message for a group of `duties.coalesce` (a run of RunTasks or one other message)."""
    first = group[0]
    if isinstance(first, duties.RunTask):
        runs = [agent_pb2.RunTask(task=to_proto(m.task, common_pb2.TaskInfo), traceparent=m.traceparent,
                                  principal=m.principal)
                for m in group if isinstance(m, duties.RunTask)]
        if len(runs) == 1:
            return agent_pb2.MasterMessage(term=first.term, run_task=runs[0])
        return agent_pb2.MasterMessage(term=first.term, run_tasks=agent_pb2.RunTasks(tasks=runs))
    if isinstance(first, duties.KillTask):
        return agent_pb2.MasterMessage(term=first.term, kill_task=agent_pb2.KillTask(
            task_id=first.task_id, framework_id=first.framework_id,
            grace_period_seconds=first.grace_period_seconds))
    return agent_pb2.MasterMessage(term=first.term, shutdown=agent_pb2.Shutdown(reason=first.reason))


def _framework_event(group: tuple[duties.ToFramework, ...]) -> scheduler_pb2.SchedulerEvent:
    """One scheduler event for a group of `duties.coalesce` (a run of updates or one other message)."""
    first = group[0]
    if isinstance(first, duties.SendUpdate):
        updates = [scheduler_pb2.Update(status=to_proto(m.status, common_pb2.TaskStatus))
                   for m in group if isinstance(m, duties.SendUpdate)]
        if len(updates) == 1:
            return scheduler_pb2.SchedulerEvent(update=updates[0])
        return scheduler_pb2.SchedulerEvent(updates=scheduler_pb2.Updates(updates=updates))
    if isinstance(first, duties.SendRescind):
        return scheduler_pb2.SchedulerEvent(rescind=scheduler_pb2.Rescind(offer_id=first.offer_id))
    if isinstance(first, duties.SendOffers):
        return scheduler_pb2.SchedulerEvent(offers=scheduler_pb2.Offers(
            offers=[to_proto(o, common_pb2.Offer) for o in first.offers]))
    raise TypeError(f"not a framework message: {first!r}")


def default_allocator(settings: LeaderSettings) -> tuple[Snapshot, Allocate]:
    """The weighted-DRF allocator of `tessera.control_plane.allocation`, bound to these settings."""
    from tessera.control_plane.allocation import allocate, snapshot_from_state
    from tessera.control_plane.runtime.master import new_id

    def allocate_fn(snapshot: Any, now: float) -> Sequence[Any]:
        return allocate(snapshot, new_id=new_id, now=now, offer_timeout=settings.offer_timeout)

    return snapshot_from_state, allocate_fn
