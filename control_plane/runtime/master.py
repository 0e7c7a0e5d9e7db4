"""The master: decides on the leader, commits through replication, serves reads from applied state.

Theory of operation
-------------------
A write is `propose(commands)`: on the leader, under the state lock, `decide` turns each command into
events (raising a domain error for bad input, before anything is replicated); the events become one
`Entry` stamped with the leader's term, address, clock, request id and trace context; the entry's bytes
go to the replicator, which group-commits concurrent proposals into one Raft call; once the entry is
applied on this master the caller gets the `ApplyResult`. A `Rejected` outcome (the decision became
stale in flight) is raised as the recorded domain error. An unknown outcome (leader change, timeout) is
`Unavailable`: the caller retries with the same request id and `apply` de-duplicates.

Leadership: when replication reports that this master became leader, it commits a `LeaderElected`
barrier (plus its own `MasterAdded` when the quorum does not know its gRPC address yet). Only after that
entry is applied — so every earlier entry is applied too — does it serve writes. Until then, and on
followers, writes raise `NotLeader` with the leader's gRPC address when the state knows it.

Followers announce their gRPC address to the leader once (so `quorum status` can ask every member).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

from opentelemetry import trace

from control_plane.codec import entry_to_bytes
from control_plane.core import commands as cmd
from control_plane.core import events as ev
from control_plane.core.apply import ApplyResult
from control_plane.core.context import Context
from control_plane.core.decide import decide
from control_plane.core.errors import (
    Conflict,
    InvalidRequest,
    NotLeader,
    TesseraError,
    Unavailable,
    error_from_code,
)
from control_plane.core.limits import MasterLimits
from control_plane.eventlog import EventStore
from control_plane.replication import Replicator
from control_plane.replication.errors import EntryTooLargeError, NotLeaderError, UnknownOutcomeError
from control_plane.runtime.statemachine import Applied, MasterStateMachine
from control_plane.tracing import (
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
    ) -> None:
        self.identity = identity
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
        self.replicator.on_leadership_change(self._on_leadership_change)

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.replicator.start()

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
    def _on_leadership_change(self, is_leader: bool, term: int) -> None:
        with self._lock:
            self._serving_term = 0
            self._leadership.notify_all()
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
                self._commit(commands + extra, request_id=request_id, traceparent="", term=term)
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
    def propose(
        self, commands: Sequence[cmd.Command], *, request_id: str = "", traceparent: str = ""
    ) -> ApplyResult:
        """Decide and commit `commands` atomically; raises a domain error or NotLeader."""
        if len(request_id) > MAX_REQUEST_ID:
            raise InvalidRequest(f"request_id is longer than {MAX_REQUEST_ID} characters")
        if not self.is_serving():
            raise NotLeader("this master is not the serving leader", self.leader_grpc_hint())
        request_id = request_id or new_id("req")
        with self.tracer.start_as_current_span("master.propose", context=context_from(traceparent),
                                               attributes=_propose_attributes(commands, request_id)):
            return self._commit(commands, request_id=request_id, traceparent=current_traceparent() or traceparent,
                                term=self.replicator.term())

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

    def propose_async(
        self, commands: Sequence[cmd.Command], *, request_id: str = "", traceparent: str = ""
    ) -> Future[Any]:
        """Decide now, commit in the background: the future resolves with the ApplyResult."""
        if not self.is_serving():
            raise NotLeader("this master is not the serving leader", self.leader_grpc_hint())
        request_id = request_id or new_id("req")
        term = self.replicator.term()
        if not self._tracing():  # the same, without spans nobody would record
            entry, prior = self._decide(commands, request_id, traceparent, term)
            if prior is not None:
                return _resolved(prior)
            data = entry_to_bytes(entry)
            self.sm.expect(data, entry, commit_info=False)
            return self.replicator.submit(data)
        with self.tracer.start_as_current_span("master.propose", context=context_from(traceparent),
                                               attributes=_propose_attributes(commands, request_id)):
            entry, prior = self._decide(commands, request_id, current_traceparent() or traceparent, term)
            if prior is not None:
                return _resolved(prior)
            data = entry_to_bytes(entry)
            self.sm.expect(data, entry)
            span = self.tracer.start_span("raft.commit", attributes={"raft.term": term, "tessera.entry_bytes": len(data)})
            fut = self.replicator.submit(data)
        fut.add_done_callback(lambda f: _end_commit_span(span, f, self.sm.commit_info.pop(request_id, None)))
        return fut

    def propose_each_async(
        self, commands: Sequence[cmd.Command], *, traceparent: str = ""
    ) -> Future[list[TesseraError | None]]:
        """Independent commands (status updates of different tasks, acknowledgements) committed together:
        each is decided on its own, and those that pass go into one entry. The future resolves with one
        outcome per command: None once it is committed, or the domain error that refused it — from
        `decide` at once, or, when `apply` rejected the shared entry (one of them went stale in
        flight), from committing that command alone afterwards. It fails (NotLeader, Unavailable) when a
        commit's outcome is unknown; every command must then be retried, which is safe because each is
        idempotent by itself (a status update by uuid, an acknowledgement by uuid). Raises NotLeader when
        this master does not serve."""
        if not self.is_serving():
            raise NotLeader("this master is not the serving leader", self.leader_grpc_hint())
        request_id = new_id("req")
        term = self.replicator.term()
        now = self.clock()
        ctx = Context(now=now, term=term, leader=self.identity.raft_address, new_id=new_id, limits=self.limits)
        outcomes: list[TesseraError | None] = [None] * len(commands)
        chosen: list[int] = []
        events: list[ev.Event] = []
        with self.tracer.start_as_current_span("master.propose", context=context_from(traceparent),
                                               attributes=_propose_attributes(commands, request_id)):
            with self.sm.lock:
                for i, c in enumerate(commands):
                    try:
                        decided = decide(self.sm.state, c, ctx)
                    except TesseraError as exc:
                        outcomes[i] = exc
                        continue
                    if decided:
                        chosen.append(i)
                        events.extend(decided)
            done: Future[list[TesseraError | None]] = Future()
            if not events:
                done.set_result(outcomes)
                return done
            entry = ev.Entry(term=term, leader=self.identity.raft_address, time=now, request_id=request_id,
                             traceparent=current_traceparent() or traceparent, events=tuple(events))
            data = entry_to_bytes(entry)
            self.sm.expect(data, entry)
            span = self.tracer.start_span("raft.commit", attributes={"raft.term": term, "tessera.entry_bytes": len(data)})
            fut = self.replicator.submit(data)

        def committed(f: Future[Any]) -> None:
            _end_commit_span(span, f, self.sm.commit_info.pop(request_id, None))
            try:
                result = self.wait_result(f)
            except (NotLeader, Unavailable) as exc:
                done.set_exception(exc)
                return
            except TesseraError:
                self._propose_alone([commands[i] for i in chosen], chosen, outcomes, done, traceparent)
                return
            except Exception as exc:  # noqa: BLE001 - the future must resolve whatever happened
                done.set_exception(exc)
                return
            del result
            done.set_result(outcomes)

        fut.add_done_callback(committed)
        return done

    def _propose_alone(self, commands: list[cmd.Command], positions: list[int], outcomes: list[TesseraError | None],
                       done: Future[list[TesseraError | None]], traceparent: str) -> None:
        """The shared entry of `propose_each_async` was rejected: commit each of its commands alone, so
        one stale command does not refuse the others. Runs on a thread of its own (it waits)."""
        def run() -> None:
            try:
                futures: list[Future[Any] | TesseraError] = []
                for c in commands:
                    try:
                        futures.append(self.propose_async([c], traceparent=traceparent))
                    except TesseraError as exc:
                        futures.append(exc)
                for position, f in zip(positions, futures, strict=True):
                    if isinstance(f, NotLeader):
                        raise f
                    if isinstance(f, TesseraError):
                        outcomes[position] = f
                        continue
                    try:
                        self.wait_result(f)
                    except (NotLeader, Unavailable):
                        raise
                    except TesseraError as exc:
                        outcomes[position] = exc
                done.set_result(outcomes)
            except Exception as exc:  # noqa: BLE001 - reported through the future
                done.set_exception(exc)

        threading.Thread(target=run, name="propose-alone", daemon=True).start()

    def _decide(self, commands: Sequence[cmd.Command], request_id: str, traceparent: str, term: int
                ) -> tuple[ev.Entry, ApplyResult | None]:
        return decide_entry(self.sm, commands, request_id=request_id, traceparent=traceparent, term=term,
                            leader=self.identity.raft_address, now=self.clock(), new_id=new_id, limits=self.limits)

    def _commit(self, commands: Sequence[cmd.Command], *, request_id: str, traceparent: str, term: int) -> ApplyResult:
        entry, prior = self._decide(commands, request_id, traceparent, term)
        if prior is not None:
            if not prior.ok:
                raise error_from_code(prior.error_code, prior.reason)
            return prior
        if not entry.events:
            # decide found it already done (an idempotent retry): nothing to replicate
            seq = self.read_state(lambda s: s.seq)
            return ApplyResult("applied", (), seq + 1, seq, "", "", request_id)
        data = entry_to_bytes(entry)
        self.sm.expect(data, entry)
        if not trace.get_current_span().get_span_context().is_valid:  # untraced (the leader barrier)
            try:
                return self.wait_result(self.replicator.submit(data))
            finally:
                self.sm.commit_info.pop(request_id, None)
        with self.tracer.start_as_current_span(
            "raft.commit", attributes={"raft.term": term, "tessera.entry_bytes": len(data)},
        ) as span:
            result = self.wait_result(self.replicator.submit(data))
            span.set_attribute("tessera.event_index", result.last_seq)
            _set_commit_info(span, self.sm.commit_info.pop(request_id, None))
            return result

    def wait_result(self, fut: Future[Any]) -> ApplyResult:
        try:
            result = fut.result(timeout=self.commit_timeout)
        except NotLeaderError as exc:
            raise NotLeader("leadership moved while committing", self.leader_grpc_hint()) from exc
        except EntryTooLargeError as exc:
            # refused before it was appended: nothing was written; the request itself is too large
            raise InvalidRequest(f"the request is too large to replicate ({exc})") from exc
        except UnknownOutcomeError as exc:
            raise Unavailable(f"outcome unknown ({exc}); retry with the same request id") from exc
        except TimeoutError as exc:
            raise Unavailable("commit timed out; retry with the same request id") from exc
        if not isinstance(result, ApplyResult):
            raise Unavailable(f"unexpected apply result {result!r}")
        if not result.ok:  # rejected now, or a duplicate of an entry that was rejected
            raise error_from_code(result.error_code, result.reason)
        return result

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


def _end_commit_span(span: trace.Span, fut: Future[Any], info: tuple[int, int] | None = None) -> None:
    try:
        _set_commit_info(span, info)
        error = None if not fut.cancelled() else "cancelled"
        if error is None and fut.exception() is not None:
            error = repr(fut.exception())
        if error is not None:
            span.set_status(trace.StatusCode.ERROR, error)
        elif isinstance(result := fut.result(), ApplyResult):
            span.set_attribute("tessera.event_index", result.last_seq)
    except Exception as exc:  # noqa: BLE001 - tracing never fails the caller
        log.debug("raft.commit span: %s", exc)
    finally:
        span.end()


def applied_listener(fn: Callable[[Applied], None]) -> Callable[[Sequence[Applied]], None]:
    def listener(batch: Sequence[Applied]) -> None:
        for a in batch:
            fn(a)
    return listener
