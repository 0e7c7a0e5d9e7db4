"""The master: decides on the leader, commits through replication, serves reads from applied state.

Theory of operation
-------------------
Every write takes one path, `Master._write`: check that this master serves (NotLeader otherwise); under
the state lock `decide_entry` turns the commands into events (raising a domain error for bad input,
before anything is replicated) — or answers a request id already applied from the log; the events
become one `Entry` stamped with the leader's term, address, clock (the `clock` argument), request id
(minted by the `new_id` argument when the caller gave none) and trace context; the entry's bytes go to
the replicator, which group-commits concurrent proposals into one Raft call; the write's future (the
replicator's own) resolves with the `ApplyResult` once the entry is applied here. The public calls are shapes of that path:
`submit` (alias `propose_async`) returns the future; `propose` waits for it and raises a rejected
outcome (the decision became stale in flight) as the recorded domain error; `propose_redeciding`
decides again on Conflict; `propose_each_async` decides independent commands one by one, one entry per
trace context, and commits those of a rejected entry alone (by callbacks, no thread). An unknown
outcome (leader change, timeout) is `Unavailable`: the caller retries with the same request id and
`apply` de-duplicates.

Write observers (`add_write_observer`) see each write once, with its outcome and duration
(`WriteOutcome`): `propose` tells them on the waiting thread before it returns, `submit` by the first
callback of the future it returns (before any the caller adds). Tracing ends the write's
`master.propose` and `raft.commit` spans there, and metrics time every write (status updates and
acknowledgements included). A write nobody observes (no metrics, no recording tracer) builds no outcome.

Leadership: when replication reports that this master became leader, it commits a `LeaderElected`
barrier (plus its own `MasterAdded` when the quorum does not know its gRPC address yet). Only after that
entry is applied — so every earlier entry is applied too — does it serve writes. Until then, and on
followers, writes raise `NotLeader` with the leader's gRPC address when the state knows it.

Followers announce their gRPC address to the leader once (so `quorum status` can ask every member).
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from opentelemetry import trace

from tessera.control_plane.codec import entry_to_bytes
from tessera.control_plane.core import commands as cmd
from tessera.control_plane.core import events as ev
from tessera.control_plane.core.apply import ApplyResult
from tessera.control_plane.core.context import Context
from tessera.control_plane.core.decide import Follow, decide, decide_each
from tessera.control_plane.core.errors import (
    Conflict,
    InvalidRequest,
    NotLeader,
    TesseraError,
    Unavailable,
    error_from_code,
)
from tessera.control_plane.core.limits import MasterLimits
from tessera.control_plane.eventlog import EventStore
from tessera.control_plane.replication import Replicator
from tessera.control_plane.replication.errors import EntryTooLargeError, NotLeaderError, UnknownOutcomeError
from tessera.control_plane.runtime.statemachine import Applied, MasterStateMachine
from tessera.control_plane.tracing import (
    TASK_ID_ATTRIBUTE,
    RecordingCheck,
    context_from,
    current_traceparent,
    get_tracer,
)

log = logging.getLogger(__name__)

MAX_REQUEST_ID = 128


@dataclass(frozen=True)
class MasterIdentity:
    name: str
    raft_address: str
    grpc_address: str


# Ids are minted only by the serving leader. A random 64-bit prefix drawn once per process, plus a counter,
# makes them unique across masters and restarts without a random-number syscall per id (uuid4 was 15 % of
# the leader's CPU under load).
# Agent ids are different: an agent id is what an agent presents to take its place back after a
# reconnect, so each is 128 fresh random bits (nothing to count on from one id to the next); agents
# register rarely, so the syscall costs nothing.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)
_RANDOM_ID_PREFIXES = frozenset({"agent"})


def new_id(prefix: str) -> str:
    if prefix in _RANDOM_ID_PREFIXES:
        return f"{prefix}-{os.urandom(16).hex()}"
    return f"{prefix}-{_ID_PREFIX}{next(_ID_COUNTER):08x}"


def decide_entry(
    sm: MasterStateMachine, commands: Sequence[cmd.Command], *, request_id: str, traceparent: str, term: int,
    leader: str, now: float, new_id: Callable[[str], str], limits: MasterLimits | None = None,
) -> tuple[ev.Entry, ApplyResult | None]:
    """The entry a leader proposes for `commands`, or the recorded result when `request_id` was already
    applied: a retry (after a lost reply or a failover) is answered from replicated state, not decided
    again — deciding again would refuse it (its offer is used, its task id taken) although the first
    attempt succeeded. Raises the domain error `decide` raises. (Also driven by the deterministic
    simulation in tests/sim.)"""
    ctx = Context(now, term, leader, new_id, limits or MasterLimits())
    events: list[ev.Event] = []
    with sm.lock:
        prior = sm.state.result_for_request(request_id)
        if prior is None:
            for c in commands:
                events.extend(decide(sm.state, c, ctx))
    entry = ev.Entry(term, leader, now, request_id, traceparent, tuple(events))  # positional: per write
    return entry, (None if prior is None else replace(prior, outcome="duplicate"))


def decide_each_entry(
    sm: MasterStateMachine, commands: Sequence[cmd.Command], *, request_id: str, traceparent: str, term: int,
    leader: str, now: float, new_id: Callable[[str], str], limits: MasterLimits | None = None,
    follow: Follow | None = None,
) -> tuple[ev.Entry, list[TesseraError | None]]:
    """The entry of independent `commands`: each decided on its own (`decide_each`: a task's status
    updates in order); one outcome per command, the domain error that refused it or None, and the entry
    holds the events of those that passed, then those of `follow`'s commands that passed (`decide_each`)."""
    ctx = Context(now, term, leader, new_id, limits or MasterLimits())
    refused: list[TesseraError | None] = [None] * len(commands)
    events: list[ev.Event] = []
    with sm.lock:
        outcomes = decide_each(sm.state, commands, ctx, follow)
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, TesseraError):
            if i < len(refused):
                refused[i] = outcome
        else:
            events.extend(outcome)
    return ev.Entry(term, leader, now, request_id, traceparent, tuple(events)), refused


class WriteOutcome(NamedTuple):
    """One write as write observers see it, once its outcome is known.

    `result` is the `ApplyResult` when the entry was applied (or answered from an earlier attempt);
    `error` is the domain error when the write did not succeed: refused by `decide` or the serving
    check (then `result` is None), rejected by `apply` (then both are set), or of unknown outcome
    (NotLeader, Unavailable). `seconds` runs from the call to the outcome (perf_counter). `spans` are
    the write's open spans, innermost first (raft.commit, master.propose); empty when untraced — the
    tracing observer ends them."""

    commands: tuple[cmd.Command, ...]
    request_id: str
    seconds: float
    result: ApplyResult | None = None
    error: TesseraError | None = None
    spans: tuple[trace.Span, ...] = ()


WriteObserver = Callable[[WriteOutcome], None]


class _Write:
    """One write in flight: what its outcome will report, told to the observers exactly once."""

    __slots__ = ("master", "commands", "request_id", "started", "spans")

    def __init__(self, master: Master, commands: tuple[cmd.Command, ...], request_id: str, started: float) -> None:
        self.master = master
        self.commands = commands
        self.request_id = request_id
        self.started = started
        self.spans: list[trace.Span] = []  # master.propose last; raft.commit put before it

    def observed(self) -> bool:
        """False when nobody would see this write: no observer but tracing, and no span to end (then no
        outcome is built: the untraced write path pays nothing for the hook)."""
        return bool(self.spans) or len(self.master._observers) > 1

    def observe(self, result: ApplyResult | None, error: TesseraError | None) -> None:
        if not self.observed():
            return
        outcome = WriteOutcome(self.commands, self.request_id, time.perf_counter() - self.started,
                               result, error, tuple(self.spans))
        for observer in self.master._observers:
            try:
                observer(outcome)
            except Exception:  # noqa: BLE001 - an observer never fails a write
                log.exception("write observer failed")

    def observe_future(self, fut: Future[Any]) -> None:
        """A done callback: observe the outcome the write's future settled with."""
        if self.observed():
            self.observe(*self.master._settle(fut))


class _Gather:
    """The future of `propose_each_async`: resolves with `outcomes` once every part it expects finished,
    or fails with the first failure. Starts with one part open, closed by `seal` once all are expected."""

    def __init__(self, outcomes: list[TesseraError | None]) -> None:
        self.outcomes = outcomes
        self.done: Future[list[TesseraError | None]] = Future()
        self._lock = threading.Lock()
        self._open = 1
        self._error: BaseException | None = None

    def expect(self) -> None:
        with self._lock:
            self._open += 1

    def finish(self, position: int | None = None, error: TesseraError | None = None) -> None:
        with self._lock:
            if position is not None:
                self.outcomes[position] = error
            self._open -= 1
            if self._open:
                return
        if self._error is not None:
            self.done.set_exception(self._error)
        else:
            self.done.set_result(self.outcomes)

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = error
        self.finish()

    seal = finish


class Master:
    """One master process's control plane, independent of gRPC (the servicers call this)."""

    def __init__(
        self,
        identity: MasterIdentity,
        state_machine: MasterStateMachine,
        replicator: Replicator,
        events: EventStore,
        *,
        commit_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        announce: Callable[[str, MasterIdentity], None] | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        limits: MasterLimits | None = None,
        new_id: Callable[[str], str] = new_id,
    ) -> None:
        self.identity = identity
        self.new_id = new_id  # the id source `decide` mints ids from (module `new_id`; tests pass sequential ids)
        self.limits = limits or MasterLimits()  # per-principal limits `decide` applies (--limit flags)
        self.sm = state_machine
        self.replicator = replicator
        self.events = events
        self.commit_timeout = commit_timeout
        self.clock = clock
        self._announce = announce
        self._serving_term = 0  # term in which this master finished its barrier; 0 = not serving
        self._lock = threading.Lock()
        self._leadership = threading.Condition(self._lock)
        self._stopped = threading.Event()
        self._announced_to: str = ""
        self._barrier_thread: threading.Thread | None = None
        self.tracer_provider = tracer_provider
        self.tracer = get_tracer(__name__, tracer_provider)  # the global provider when None
        self._tracing = RecordingCheck(self.tracer)
        self._observers: list[WriteObserver] = [self._trace_write]  # tracing first: it ends the write's spans
        self._leadership_observers: list[Callable[[], None]] = []
        self._offers_held: Counter[str] = Counter()  # framework ids: no new offers while a subscription is decided
        self.replicator.on_leadership_change(self._on_leadership_change)

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.replicator.start()

    def hand_over_leadership(self, timeout: float) -> str | None:
        """Before a planned stop (SIGTERM, Ctrl-C): a leader hands its leadership to a caught-up follower
        (Raft's TimeoutNow, ``Replicator.transfer_leadership``), which stands at once, without a pre-vote
        and in one term, instead of the others waiting out an election timeout without heartbeats as
        after a crash. Returns the new leader's Raft address; None when this master does not lead or no
        other master was seen leading within `timeout` (then the others elect after their timeout)."""
        if self._stopped.is_set() or not self.replicator.is_leader():
            return None
        term = self.replicator.term()
        try:
            leader = self.replicator.transfer_leadership().result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            log.info("stopping as leader of term %d without handing leadership over: no other master was seen "
                     "leading within %.1f s", term, timeout)
            return None
        except Exception as exc:  # noqa: BLE001 - a stop goes on either way
            log.info("stopping as leader of term %d without handing leadership over: %s", term, exc)
            return None
        log.info("handed leadership of term %d over to %s before stopping", term, leader)
        return leader

    @contextmanager
    def offers_held(self, framework_id: str) -> Iterator[None]:
        """No allocation round offers to `framework_id` inside this block (`frameworks_offers_held`): a
        resubscription rescinds every offer the framework has when it is decided, and an offer committed
        between that decision and the commit makes the entry stale (`Conflict`); with new offers held, the
        one decided again covers all of them."""
        with self._lock:
            self._offers_held[framework_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._offers_held[framework_id] -= 1
                if self._offers_held[framework_id] <= 0:
                    del self._offers_held[framework_id]

    def frameworks_offers_held(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._offers_held)

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            self._serving_term = 0
            self._leadership.notify_all()
        self.replicator.stop()
        flush = getattr(self.tracer_provider, "force_flush", None)
        if flush is not None:
            try:
                flush(2000)  # the spans still batched, before the span store closes
            except Exception as exc:  # noqa: BLE001
                log.debug("flushing spans: %s", exc)
        self.sm.close()  # nothing applies any more: the snapshotter stops before its store closes
        self.events.close()

    # ---- leadership ------------------------------------------------------------------------------
    def add_leadership_observer(self, observer: Callable[[], None]) -> None:
        """Call `observer()` after every change of this master's leadership: Raft leadership gained or lost
        (off the Raft thread), and once the LeaderElected barrier is applied and it serves. It reads
        `is_serving()` itself; it must be quick and not raise."""
        with self._lock:
            self._leadership_observers = [*self._leadership_observers, observer]

    def _tell_leadership_observers(self) -> None:
        for observer in self._leadership_observers:
            try:
                observer()
            except Exception:  # noqa: BLE001 - an observer never breaks the leadership change
                log.exception("leadership observer failed")

    def _on_leadership_change(self, is_leader: bool, term: int) -> None:
        with self._lock:
            self._serving_term = 0
            self._leadership.notify_all()
        self._tell_leadership_observers()
        if is_leader and not self._stopped.is_set():
            t = threading.Thread(target=self._become_leader, args=(term,), name="leader-barrier", daemon=True)
            self._barrier_thread = t
            t.start()

    def _become_leader(self, term: int) -> None:
        """Commit the LeaderElected barrier, retrying while this master still leads in `term`."""
        request_id = f"leader-{self.identity.raft_address}-{term}"
        commands: list[cmd.Command] = [cmd.ElectLeader(
            term=term, master=self.identity.raft_address,
            grpc_address=self.identity.grpc_address, name=self.identity.name,
        )]
        deadline = time.monotonic() + 30.0
        while not self._stopped.is_set() and time.monotonic() < deadline:
            if not self.replicator.is_leader() or self.replicator.term() != term:
                return
            with self.sm.lock:
                known = self.sm.state.masters.get(self.identity.raft_address)
            extra: list[cmd.Command] = []
            if known is None or tuple(known) != (self.identity.name, self.identity.grpc_address):
                extra.append(cmd.AnnounceMaster(
                    name=self.identity.name, raft_address=self.identity.raft_address,
                    grpc_address=self.identity.grpc_address,
                ))
            try:
                self._wait(*self._write(commands + extra, request_id, "", term=term, traced=False)[:2])
            except (Unavailable, NotLeader) as exc:
                log.info("leader barrier for term %d not committed yet: %s", term, exc)
                time.sleep(0.05)
                continue
            except TesseraError as exc:
                log.error("leader barrier for term %d rejected: %s", term, exc)
                return
            with self._lock:
                if self.replicator.is_leader() and self.replicator.term() == term:
                    self._serving_term = term
                    self._leadership.notify_all()
                    log.info("serving as leader in term %d", term)
            self._tell_leadership_observers()
            return

    def is_serving(self) -> bool:
        with self._lock:
            return self._serving_term != 0 and self._serving_term == self.replicator.term()

    def serving_term(self) -> int:
        """The term this master serves as leader in, 0 when it does not."""
        with self._lock:
            term = self._serving_term
        return term if term != 0 and term == self.replicator.term() else 0

    def wait_serving(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not (self._serving_term and self._serving_term == self.replicator.term()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._leadership.wait(min(remaining, 0.05))
            return True

    def leader_grpc_hint(self) -> str | None:
        """The gRPC address of the leader as this master knows it (None when unknown)."""
        if self.is_serving():
            return self.identity.grpc_address
        leader_raft = self.replicator.leader()
        if leader_raft is None:
            return None
        with self.sm.lock:
            state = self.sm.state
            known = state.masters.get(leader_raft)
            if known is not None:
                return str(known[1])
            if state.leader == leader_raft and state.leader_grpc:
                return str(state.leader_grpc)
        return None

    def maybe_announce(self) -> None:
        """Followers: tell the leader our gRPC address once, so quorum status can reach us."""
        if self._announce is None or self.is_serving():
            return
        with self.sm.lock:
            known = self.sm.state.masters.get(self.identity.raft_address)
        if known is not None and tuple(known) == (self.identity.name, self.identity.grpc_address):
            return
        hint = self.leader_grpc_hint()
        if hint and hint != self._announced_to:
            try:
                self._announce(hint, self.identity)
                self._announced_to = hint
            except Exception as exc:  # noqa: BLE001 - retried on the next tick
                log.debug("announce to %s failed: %s", hint, exc)

    # ---- writes ----------------------------------------------------------------------------------
    # One path: `_write` checks that this master serves, decides the entry, opens the spans, submits the
    # entry's bytes, and settles the future once the outcome is known, telling every write observer. The
    # public calls are shapes of it: `submit` (the future), `propose` (blocking), `propose_redeciding`
    # (blocking, decided again on Conflict), `propose_each_async` (independent commands, one entry per
    # trace context). Nothing else builds entries, starts write spans or times writes.
    def add_write_observer(self, observer: WriteObserver) -> None:
        """Call `observer(outcome)` once for every write this master proposes, when its outcome is known
        (on the thread that learned it: keep it quick and never raising)."""
        with self._lock:
            self._observers = [*self._observers, observer]  # copied on change: writes iterate without a lock

    def remove_write_observer(self, observer: WriteObserver) -> None:
        with self._lock:
            self._observers = [o for o in self._observers if o != observer]

    def submit(
        self, commands: Sequence[cmd.Command], *, request_id: str = "", traceparent: str = ""
    ) -> Future[ApplyResult]:
        """Decide now, commit in the background. Raises the domain error `decide` raises, or NotLeader;
        the future resolves with the `ApplyResult` once applied here (a rejected one carries its error
        code), or fails with the replicator's error (`wait_result` translates it: NotLeader, Unavailable
        when the outcome is unknown — retry with the same request id —, InvalidRequest when too large)."""
        fut, write, _ = self._write(commands, request_id, traceparent)
        if write.observed():
            fut.add_done_callback(write.observe_future)  # before any caller's callback
        return fut

    propose_async = submit  # the name the servicers and the leader duties call

    def propose(
        self, commands: Sequence[cmd.Command], *, request_id: str = "", traceparent: str = ""
    ) -> ApplyResult:
        """Decide and commit `commands` atomically; raises a domain error or NotLeader."""
        return self._wait(*self._write(commands, request_id, traceparent)[:2])

    def _wait(self, fut: Future[Any], write: _Write) -> ApplyResult:
        """The blocking shape: wait for the write's outcome, tell the observers (on this thread, before
        returning), raise it when it is an error."""
        try:
            result = self._await(fut)
        except TesseraError as exc:
            write.observe(None, exc)
            raise
        error = None if result.ok else error_from_code(result.error_code, result.reason)
        write.observe(result, error)
        if error is not None:  # rejected now, or a duplicate of an entry that was rejected
            raise error
        return result

    def propose_redeciding(
        self, commands: Sequence[cmd.Command], *, request_id: str = "", traceparent: str = "", attempts: int = 3
    ) -> ApplyResult:
        """`propose`, decided again (at most `attempts` times in all) when `apply` refused the entry with
        `Conflict`. For commands whose events cover everything of a kind at decide time (a reregistration
        ends the tasks the agent did not report and rescinds its offers; a removal or a drain kills every
        live task): a launch or an offer committed between the decision and its commit makes the entry
        stale, and deciding it again covers that too. The retries carry no request id: the refused first
        attempt is recorded under it."""
        for attempt in range(attempts - 1):
            try:
                return self.propose(commands, request_id=request_id if attempt == 0 else "",
                                    traceparent=traceparent)
            except Conflict:
                continue
        return self.propose(commands, request_id=request_id if attempts <= 1 else "", traceparent=traceparent)

    def propose_each_async(
        self, commands: Sequence[cmd.Command], *, traceparent: str = "", traceparents: Sequence[str] | None = None,
        follow: Follow | None = None,
    ) -> Future[list[TesseraError | None]]:
        """Independent commands (status updates of different tasks, acknowledgements) committed together:
        each is decided on its own, and those that pass go into one entry per trace context (`traceparents`,
        one per command, or `traceparent` for all), so each command's events are recorded under its own
        trace; the entries are submitted together and group commit replicates them in one Raft call. The
        future resolves with one outcome per command: None once it is committed, or the domain error that
        refused it — from `decide` at once, or, when `apply` rejected its entry (one of them went stale in
        flight), from committing that command alone afterwards. It fails (NotLeader, Unavailable) when a
        commit's outcome is unknown; every command must then be retried, which is safe because each is
        idempotent by itself (a status update by uuid, an acknowledgement by uuid). Raises NotLeader when
        this master does not serve. `follow`: commands each entry also carries after those (the offers of
        what its updates free: `core.decide.decide_each`); their refusals are dropped."""
        if traceparents is not None and len(traceparents) != len(commands):
            raise ValueError(f"{len(traceparents)} traceparents for {len(commands)} commands")
        term = self._serving_or_raise()
        groups: dict[str, list[int]] = {}
        for i in range(len(commands)):
            groups.setdefault(traceparent if traceparents is None else traceparents[i], []).append(i)
        outcomes: list[TesseraError | None] = [None] * len(commands)
        gather = _Gather(outcomes)
        for tp, positions in groups.items():
            fut, write, refused = self._write([commands[i] for i in positions], "", tp, term=term, each=True,
                                              follow=follow)
            if write.observed():
                fut.add_done_callback(write.observe_future)
            for position, refusal in zip(positions, refused, strict=True):
                outcomes[position] = refusal
            chosen = [p for p, refusal in zip(positions, refused, strict=True) if refusal is None]
            gather.expect()
            fut.add_done_callback(functools.partial(self._each_committed, commands, chosen, tp, gather))
        gather.seal()
        return gather.done

    def _each_committed(self, commands: Sequence[cmd.Command], chosen: list[int], traceparent: str,
                        gather: _Gather, fut: Future[ApplyResult]) -> None:
        """One entry of `propose_each_async` settled: when `apply` rejected it, commit each of its commands
        alone (callbacks, no thread), so one stale command does not refuse the others."""
        result, error = self._settle(fut)
        if isinstance(error, (NotLeader, Unavailable)):
            gather.fail(error)
            return
        if result is not None and result.ok:
            gather.finish()
            return
        for position in chosen:
            gather.expect()
            try:
                alone = self.submit([commands[position]], traceparent=traceparent)
            except NotLeader as exc:
                gather.fail(exc)
                continue
            except TesseraError as exc:
                gather.finish(position, exc)
                continue
            alone.add_done_callback(functools.partial(self._alone_committed, position, gather))
        gather.finish()

    def _alone_committed(self, position: int, gather: _Gather, fut: Future[ApplyResult]) -> None:
        error = self._settle(fut)[1]
        if isinstance(error, (NotLeader, Unavailable)):
            gather.fail(error)
        else:
            gather.finish(position, error)

    def _serving_or_raise(self) -> int:
        """The term this master serves in; raises NotLeader when it does not serve."""
        term = self.serving_term()
        if not term:
            raise NotLeader("this master is not the serving leader", self.leader_grpc_hint())
        return term

    def _write(self, commands: Sequence[cmd.Command], request_id: str, traceparent: str, *, term: int = 0,
               each: bool = False, traced: bool = True, follow: Follow | None = None,
               ) -> tuple[Future[Any], _Write, list[TesseraError | None]]:
        """The write pipeline: decide the entry, submit it, settle the future and tell the observers.
        `term` 0 checks that this master serves (NotLeader otherwise); the leader barrier passes the term
        it is committed in. `each`: decide every command on its own; the refused ones are returned (one
        outcome per command) and left out of the entry instead of refusing the write. Returns the
        replicator's future (or a resolved one), the write (whose outcome the caller has observed, once),
        and the refusals."""
        started = time.perf_counter()
        write = _Write(self, tuple(commands), request_id, started)
        try:
            if len(request_id) > MAX_REQUEST_ID:
                raise InvalidRequest(f"request_id is longer than {MAX_REQUEST_ID} characters")
            term = term or self._serving_or_raise()
            write.request_id = request_id = request_id or self.new_id("req")
            if traced and self._tracing():
                write.spans.append(self.tracer.start_span(
                    "master.propose", context=context_from(traceparent),
                    attributes=_propose_attributes(commands, request_id)))
            with (trace.use_span(write.spans[0], end_on_exit=False, record_exception=False,
                                 set_status_on_exception=False)  # the tracing observer records the outcome
                  if write.spans else nullcontext()):
                if write.spans:
                    traceparent = current_traceparent() or traceparent
                now = self.clock()
                refused: list[TesseraError | None] = []
                if each:
                    entry, refused = decide_each_entry(
                        self.sm, commands, request_id=request_id, traceparent=traceparent, term=term,
                        leader=self.identity.raft_address, now=now, new_id=self.new_id, limits=self.limits,
                        follow=follow)
                    prior = None
                else:
                    entry, prior = decide_entry(
                        self.sm, commands, request_id=request_id, traceparent=traceparent, term=term,
                        leader=self.identity.raft_address, now=now, new_id=self.new_id, limits=self.limits)
                if prior is not None:
                    return _resolved(prior), write, refused
                if not entry.events:
                    # decide found it already done (an idempotent retry) or refused every command: nothing
                    # to replicate; what made it done is applied here, hence committed
                    seq = self.read_state(lambda s: s.seq)
                    return _resolved(ApplyResult("applied", (), seq + 1, seq, "", "", request_id)), write, refused
                data = entry_to_bytes(entry)
                self.sm.expect(data, entry, commit_info=bool(write.spans))
                if write.spans:
                    write.spans.insert(0, self.tracer.start_span(
                        "raft.commit", attributes={"raft.term": term, "tessera.entry_bytes": len(data)}))
                fut = self.replicator.submit(data)
        except TesseraError as exc:
            write.observe(None, exc)
            raise
        except BaseException:
            for span in write.spans:  # a bug, not an outcome: no observer sees it, but no span is left open
                span.end()
            raise
        return fut, write, refused

    def _trace_write(self, outcome: WriteOutcome) -> None:
        """The tracing observer: end the write's spans (raft.commit first) with where it landed."""
        if not outcome.spans:
            return
        info = self.sm.commit_info.pop(outcome.request_id, None)
        last = len(outcome.spans) - 1
        for i, span in enumerate(outcome.spans):  # raft.commit (when submitted), then master.propose
            try:
                if outcome.error is not None:
                    span.set_status(trace.StatusCode.ERROR, repr(outcome.error))
                    if i == last:
                        span.record_exception(outcome.error)
                elif outcome.result is not None and i < last:
                    span.set_attribute("tessera.event_index", outcome.result.last_seq)
                    _set_commit_info(span, info)
            except Exception as exc:  # noqa: BLE001 - tracing never fails the caller
                log.debug("write span: %s", exc)
            finally:
                span.end()

    def wait_result(self, fut: Future[Any]) -> ApplyResult:
        """Wait for a write's future (or a replicator's) and return its `ApplyResult`; raises the
        recorded domain error of a rejected entry, or the domain error the future's failure means."""
        result = self._await(fut)
        if not result.ok:  # rejected now, or a duplicate of an entry that was rejected
            raise error_from_code(result.error_code, result.reason)
        return result

    def _await(self, fut: Future[Any]) -> ApplyResult:
        """The `ApplyResult` `fut` resolves with, rejected or not; a failure as its domain error."""
        try:
            result = fut.result(timeout=self.commit_timeout)
        except TimeoutError as exc:
            raise Unavailable("commit timed out; retry with the same request id") from exc
        except TesseraError:
            raise
        except Exception as exc:  # noqa: BLE001 - translated once, here
            raise self._domain_error(exc) from exc
        if not isinstance(result, ApplyResult):
            raise Unavailable(f"unexpected apply result {result!r}")
        return result

    def _settle(self, fut: Future[Any]) -> tuple[ApplyResult | None, TesseraError | None]:
        """A finished future's outcome: the result (applied or rejected) and the domain error, if any."""
        try:
            result = self._await(fut)
        except TesseraError as exc:
            return None, exc
        return result, None if result.ok else error_from_code(result.error_code, result.reason)

    def _domain_error(self, exc: BaseException) -> TesseraError:
        """The domain error a failed replicator future means."""
        if isinstance(exc, TesseraError):
            return exc
        if isinstance(exc, NotLeaderError):
            return NotLeader("leadership moved while committing", self.leader_grpc_hint())
        if isinstance(exc, EntryTooLargeError):
            # refused before it was appended: nothing was written; the request itself is too large
            return InvalidRequest(f"the request is too large to replicate ({exc})")
        if isinstance(exc, UnknownOutcomeError):
            return Unavailable(f"outcome unknown ({exc}); retry with the same request id")
        return Unavailable(f"commit failed ({exc!r}); retry with the same request id")

    # ---- reads -----------------------------------------------------------------------------------
    def read_state(self, fn: Callable[[Any], Any]) -> Any:
        """Run `fn(state)` under the apply lock (a consistent, possibly stale, local view)."""
        with self.sm.lock:
            return fn(self.sm.state)

    def barrier(self) -> None:
        """Make the next local read reflect every write committed before this call (leader only)."""
        if not self.is_serving():
            raise NotLeader("consistent reads go to the leader", self.leader_grpc_hint())
        self.wait_result(self.replicator.submit(entry_to_bytes(ev.Entry(
            term=self.replicator.term(), leader=self.identity.raft_address, time=self.clock(),
        ))))


def _propose_attributes(commands: Sequence[cmd.Command], request_id: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "tessera.commands": [type(c).__name__ for c in commands], "tessera.request_id": request_id,
    }
    task_ids: list[str] = []
    for c in commands:
        if isinstance(c, cmd.Accept):
            task_ids.extend(t.task_id for op in c.operations for t in op.tasks)
        elif isinstance(c, cmd.Kill):
            task_ids.append(c.task_id)
        elif isinstance(c, cmd.UpdateStatus):
            task_ids.append(c.status.task_id)
    if task_ids:
        attributes[TASK_ID_ATTRIBUTE] = task_ids[0]
        if len(task_ids) > 1:
            attributes["tessera.task_ids"] = task_ids
    return attributes


def _set_commit_info(span: trace.Span, info: tuple[int, int] | None) -> None:
    if info is not None:
        span.set_attribute("raft.index", info[0])
        span.set_attribute("tessera.batch_entries", info[1])


def _resolved(value: Any) -> Future[Any]:
    done: Future[Any] = Future()
    done.set_result(value)
    return done


def applied_listener(fn: Callable[[Applied], None]) -> Callable[[Sequence[Applied]], None]:
    def listener(batch: Sequence[Applied]) -> None:
        for a in batch:
            fn(a)
    return listener
