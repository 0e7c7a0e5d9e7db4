"""What the blocking and the asyncio drivers share: the subscription thread and the call builders.

`StreamRunner` is the I/O loop around a `Session` (tessera.sdk.session): it asks the session where to
subscribe, opens the stream through the transport, feeds every event to the session and hands the
resulting effects, in order, to the driver's dispatcher through `post`. It runs on its own thread in
both drivers because transports are blocking; the drivers differ only in how they dispatch callbacks
and wait for calls. Every touch of the session happens under the driver's lock.

`DriverBase` holds the session, the lock and the transport, and turns the public call arguments into
`tessera.sdk.protocol` calls; the two drivers add the retry loop (blocking or `async`) on top.
"""

from __future__ import annotations

import getpass
import logging
import random as _random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from tessera.control_plane import wire
from tessera.sdk.errors import DriverStopped, InvalidRequest, TesseraError, Unavailable
from tessera.sdk.protocol import (
    BATCHED_ACKNOWLEDGEMENTS,
    AcceptCall,
    AcknowledgeCall,
    AcknowledgeManyCall,
    CallHeader,
    DeclineCall,
    KillCall,
    MessageCall,
    ReconcileCall,
    ReviveCall,
    SuppressCall,
)
from tessera.sdk.session import (
    DEFAULT_BACKOFF,
    Attempt,
    Backoff,
    CallBudget,
    Effect,
    NotifyActive,
    NotifyDeposed,
    NotifyDisconnected,
    NotifyError,
    NotifyMessage,
    NotifyOffers,
    NotifyRescinded,
    NotifyStandby,
    NotifySubscribed,
    NotifyUpdate,
    Phase,
    Session,
)
from tessera.sdk.transport import EventStream, StreamEnded, Transport
from tessera.sdk.types import (
    Filters,
    FrameworkInfo,
    Launch,
    Offer,
    Operation,
    Reserve,
    TaskInfo,
    Unreserve,
    as_tuple,
)

log = logging.getLogger("tessera.sdk.driver")

MAX_ACKS_PER_CALL = 1000  # batched implicit acknowledgements in one call
OFFER_LINGER = 0.005  # seconds offers are held for more to come, then delivered in one callback (`OfferLinger`)

OfferRef = str | Offer
OfferRefs = OfferRef | Iterable[OfferRef]

# Which scheduler callback each effect goes to, and its arguments after the driver: the one dispatch
# table of both drivers.
CALLBACKS: dict[type, tuple[str, Callable[[Any], tuple[Any, ...]]]] = {
    NotifySubscribed: ("subscribed", lambda e: (e.framework_id,)),
    NotifyActive: ("became_active", lambda e: (e.lease_term,)),
    NotifyStandby: ("standing_by", lambda e: (e.framework_id, e.lease_term)),
    NotifyDeposed: ("deposed", lambda e: (e.lease_term,)),
    NotifyOffers: ("offers", lambda e: (list(e.offers),)),
    NotifyRescinded: ("rescinded", lambda e: (e.offer_id,)),
    NotifyUpdate: ("update", lambda e: (e.status,)),
    NotifyMessage: ("message", lambda e: (e.agent_id, e.data)),
    NotifyDisconnected: ("disconnected", lambda e: ()),
    NotifyError: ("error", lambda e: (e.message,)),
}


def callback_for(effect: Effect) -> tuple[str, tuple[Any, ...]]:
    """(scheduler method name, arguments after the driver) for an effect."""
    name, arguments = CALLBACKS[type(effect)]
    return name, arguments(effect)


def parse_masters(masters: Sequence[str] | str) -> list[str]:
    """'a:5050,b:5050' or ['a:5050', 'b:5050'] -> ['a:5050', 'b:5050'] (`tessera.control_plane.wire.parse_masters`)."""
    try:
        return list(wire.parse_masters(masters))
    except ValueError as exc:
        raise InvalidRequest(f"masters: {exc}") from None


def found_masters(masters: Sequence[str] | str | None) -> wire.FoundMasters:
    """The driver's masters: those given, else found as every client finds them
    (`tessera.control_plane.tls.find_masters`: TESSERA_MASTERS, ./.tessera/cluster.json, 127.0.0.1:5050)."""
    if masters is not None:
        return wire.FoundMasters(tuple(parse_masters(masters)), "the driver's masters argument")
    from tessera.control_plane.tls import find_masters

    try:
        return find_masters(None, flag_name="masters")
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def _complete_info(info: FrameworkInfo) -> FrameworkInfo:
    """Fill in the user and hostname the framework runs as, as Mesos drivers do."""
    user, hostname = info.user, info.hostname
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry (some containers): leave it to the master
            user = ""
    if not hostname:
        hostname = socket.gethostname()
    return replace(info, user=user, hostname=hostname)


class StreamRunner:
    """Keeps a subscription alive on a thread until stopped or the session fails."""

    def __init__(self, session: Session, transport: Transport, lock: threading.Condition,
                 post: Callable[[list[Effect]], None], *, on_change: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, name: str = "tessera-stream") -> None:
        self._session = session
        self._transport = transport
        self._lock = lock
        self._post = post
        self._on_change = on_change
        self._clock = clock
        self._stopping = threading.Event()
        self._stream: EventStream | None = None
        self._stream_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop reconnecting and close the current stream (the session must be stopped already)."""
        self._stopping.set()
        self._cancel_stream()

    def kick(self) -> None:
        """Drop the current stream so that the session subscribes again (to a leader it just learnt)."""
        self._cancel_stream()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is threading.current_thread() or not self._thread.is_alive():
            return not self._thread.is_alive()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _cancel_stream(self) -> None:
        with self._stream_lock:
            stream = self._stream
        if stream is not None:
            stream.cancel()

    def _emit(self, effects: list[Effect]) -> None:
        # Wake callers waiting for a subscription directly, not through the callback queue: a callback
        # that makes a call and waits for the re-subscription must not wait behind itself.
        with self._lock:
            self._lock.notify_all()
        if self._on_change is not None:
            self._on_change()
        if effects:
            self._post(effects)

    def _run(self) -> None:
        try:
            with self._lock:
                self._session.start(self._clock())
            while not self._stopping.is_set():
                with self._lock:
                    if not self._session.active:
                        break
                    attempt = self._session.next_attempt(self._clock())
                if isinstance(attempt, NotifyError):
                    self._emit([attempt])
                    break
                if attempt.delay > 0 and self._stopping.wait(attempt.delay):
                    break
                self._follow(attempt)
        except Exception:  # noqa: BLE001 - a bug here must not leave the driver hanging silently
            log.exception("the subscription loop failed")
            with self._lock:
                failed = self._session.active
                self._session.stop()
            if failed:
                self._emit([NotifyError("the driver's subscription loop failed; see the log")])
        finally:
            with self._lock:
                self._lock.notify_all()
            if self._on_change is not None:
                self._on_change()

    def _follow(self, attempt: Attempt) -> None:
        log.debug("subscribing at %s (framework id %r)", attempt.address, attempt.info.framework_id)
        try:
            stream = self._transport.subscribe(attempt.address, attempt.info, lease=attempt.lease)
        except TesseraError as exc:
            with self._lock:
                effects = self._session.on_stream_ended(exc, self._clock())
            self._emit(effects)
            return
        with self._stream_lock:
            self._stream = stream
        if self._stopping.is_set():
            stream.cancel()
        try:
            self._read(stream)
        finally:
            with self._stream_lock:
                self._stream = None

    def _read(self, stream: EventStream) -> None:
        while True:
            with self._lock:
                timeout = self._session.read_timeout()
            try:
                event = stream.next(timeout)
            except StreamEnded as ended:
                with self._lock:
                    effects = self._session.on_stream_ended(ended.error, self._clock())
                if ended.error is not None:
                    log.info("stream ended: %s: %s", type(ended.error).__name__, ended.error)
                self._emit(effects)
                return
            if event is None:
                stream.cancel()
                with self._lock:
                    effects = self._session.on_silence(self._clock())
                log.info("no event from the master within %s s; reconnecting", timeout)
                self._emit(effects)
                return
            with self._lock:
                effects = self._session.on_event(event, self._clock())
                over = not self._session.active
            self._emit(effects)
            if over:
                stream.cancel()
                return


class DriverBase:
    """State and call builders shared by `SchedulerDriver` and `AsyncSchedulerDriver`."""

    def __init__(
        self,
        framework: FrameworkInfo,
        masters: Sequence[str] | str | None = None,
        *,
        transport: Transport | None = None,
        implicit_acknowledgements: bool = True,
        backoff: Backoff = DEFAULT_BACKOFF,
        call_timeout: float = 30.0,
        rpc_timeout: float = 10.0,
        give_up_after: float | None = None,
        subscribe_timeout: float = 15.0,
        random: Callable[[], float] | None = None,
        request_ids: Callable[[], str] | None = None,
        batch_acknowledgements: bool = True,
        masters_source: str | None = None,
        standby: bool = False,
    ) -> None:
        if not call_timeout > 0 or not rpc_timeout > 0:
            raise InvalidRequest("call_timeout and rpc_timeout must be positive")
        self._lock = threading.Condition()
        found = found_masters(masters)
        self._session = Session(
            _complete_info(framework), list(found.addresses), random=random or _random.random,
            implicit_acknowledgements=implicit_acknowledgements, backoff=backoff,
            give_up_after=give_up_after, subscribe_timeout=subscribe_timeout, standby=standby,
            masters_source=masters_source or found.source,
        )
        if transport is None:
            from tessera.control_plane.tls import TlsConfigError
            from tessera.sdk.grpc_transport import GrpcTransport

            try:
                transport = GrpcTransport.from_env()  # mTLS and a token when TESSERA_TLS_DIR/TESSERA_TOKEN say so
            except TlsConfigError as exc:
                raise InvalidRequest(str(exc)) from exc
            self._owns_transport = True
        else:
            self._owns_transport = False
        self._transport = transport
        self.call_timeout = call_timeout
        self.rpc_timeout = rpc_timeout
        self._new_request_id = request_ids or (lambda: uuid.uuid4().hex)
        self._batch_acks = batch_acknowledgements

    # ---- what the driver knows ----------------------------------------------------------------------
    @property
    def framework_id(self) -> str | None:
        """The framework's id once the master gave one (kept across reconnections)."""
        with self._lock:
            return self._session.framework_id or None

    @property
    def master(self) -> str | None:
        """The address of the master the driver is subscribed with, if any."""
        with self._lock:
            return self._session.master if self._session.phase is Phase.SUBSCRIBED else None

    @property
    def is_subscribed(self) -> bool:
        with self._lock:
            return self._session.phase is Phase.SUBSCRIBED

    @property
    def lease_term(self) -> int | None:
        """The term this instance holds the framework's lease at while it is active (subscribed), else None."""
        with self._lock:
            return self._session.lease_term if self._session.phase is Phase.SUBSCRIBED else None

    @property
    def is_standby(self) -> bool:
        """True while this instance waits as a standby for the framework's lease."""
        with self._lock:
            return self._session.phase is Phase.STANDBY

    @property
    def failure(self) -> str | None:
        """Why the driver ended on its own (framework removed or refused, no master), if it did."""
        with self._lock:
            return self._session.failure

    def outstanding_offers(self) -> tuple[Offer, ...]:
        """Offers received and not yet used, declined or rescinded."""
        with self._lock:
            return self._session.outstanding_offers()

    # ---- shared pieces of the call loops --------------------------------------------------------------
    def _header_or_none(self, request_id: str) -> tuple[str, CallHeader] | None:
        """(address, header) for an attempt now; None while (re)subscribing. Raises DriverStopped."""
        session = self._session
        if not session.active:
            raise DriverStopped(session.failure or "the driver is stopped")
        header = session.call_header(request_id)
        if header is None or session.master is None:
            return None
        return session.master, header

    def _batched_acks_allowed(self) -> bool:
        """Implicit acknowledgements may go out several per call: asked for, and the master offers it."""
        if not self._batch_acks:
            return False
        with self._lock:
            return BATCHED_ACKNOWLEDGEMENTS in self._session.master_capabilities

    def _not_subscribed(self, what: str) -> Unavailable:
        return Unavailable(f"{what}: not subscribed with a master within {self.call_timeout:g} s")

    def _budget(self, now: float) -> CallBudget:
        return CallBudget(now, self.call_timeout, self.rpc_timeout)

    def _ack_calls(self, acks: list[AcknowledgeCall]) -> list[AcknowledgeCall | AcknowledgeManyCall]:
        """The calls that send these waiting acknowledgements: one call for all, or (one left, or a master
        without BATCHED_ACKNOWLEDGEMENTS after a failover) one call each."""
        if len(acks) == 1 or not self._batched_acks_allowed():
            return list(acks)
        return [AcknowledgeManyCall(tuple(acks))]

    @staticmethod
    def _ack_failed(call: AcknowledgeCall | AcknowledgeManyCall, exc: TesseraError) -> None:
        what = (f"update {call.uuid} of task {call.task_id}" if isinstance(call, AcknowledgeCall)
                else f"{len(call.acks)} updates")
        if isinstance(exc, DriverStopped):
            log.debug("%s not acknowledged: the driver stopped", what)
        else:
            # Not fatal: the master re-sends unacknowledged updates after the next subscription.
            log.warning("acknowledging %s failed: %s", what, exc)

    def _teardown_settled(self, error: BaseException | None) -> bool:
        with self._lock:
            return self._session.settle_teardown(error)

    # ---- call builders --------------------------------------------------------------------------------
    def _offer_ids(self, offers: OfferRefs) -> tuple[tuple[str, ...], str]:
        """The offer ids named, and the agent they are on when known ('' otherwise)."""
        refs: list[OfferRef] = [offers] if isinstance(offers, (str, Offer)) else list(offers)
        ids: list[str] = []
        agents: set[str] = set()
        with self._lock:
            for ref in refs:
                if isinstance(ref, Offer):
                    ids.append(ref.offer_id)
                    agents.add(ref.agent_id)
                elif isinstance(ref, str):
                    ids.append(ref)
                    known = self._session.offer(ref)
                    agents.add(known.agent_id if known is not None else "")
                else:
                    raise InvalidRequest(f"offer_ids: expected offer ids or Offers, got {ref!r}")
        if not ids:
            raise InvalidRequest("offer_ids: give at least one offer")
        agent = agents.pop() if len(agents) == 1 else ""
        return tuple(ids), agent

    def _accept_call(self, offers: OfferRefs, operations: Iterable[Operation | TaskInfo],
                     filters: Filters | None) -> AcceptCall:
        offer_ids, agent_id = self._offer_ids(offers)
        ops: list[Operation] = []
        loose: list[TaskInfo] = []
        launch_at: int | None = None
        for op in operations:
            if isinstance(op, TaskInfo):
                if launch_at is None:
                    launch_at = len(ops)
                loose.append(op)
            elif isinstance(op, (Launch, Reserve, Unreserve)):
                ops.append(op)
            else:
                raise InvalidRequest(f"operations: expected Launch, Reserve, Unreserve or TaskInfo, got {op!r}")
        if launch_at is not None:
            ops.insert(launch_at, Launch(tuple(loose)))
        if agent_id:
            ops = [Launch(tuple(t if t.agent_id else t.on_agent(agent_id) for t in op.tasks))
                   if isinstance(op, Launch) else op for op in ops]
        return AcceptCall(offer_ids, tuple(ops), filters)

    def _decline_call(self, offers: OfferRefs, filters: Filters | None) -> DeclineCall:
        return DeclineCall(self._offer_ids(offers)[0], filters)

    @staticmethod
    def _kill_call(task_id: str, grace: float | None) -> KillCall:
        if not task_id:
            raise InvalidRequest("kill: task_id must not be empty")
        if grace is not None and not (grace >= 0 and grace != float("inf")):
            raise InvalidRequest(f"kill: grace must be a non-negative number of seconds, got {grace}")
        return KillCall(task_id, grace or 0.0)

    @staticmethod
    def _revive_call(roles: Sequence[str] | str) -> ReviveCall:
        return ReviveCall(as_tuple(roles))

    @staticmethod
    def _suppress_call(roles: Sequence[str] | str) -> SuppressCall:
        return SuppressCall(as_tuple(roles))

    @staticmethod
    def _reconcile_call(task_ids: Sequence[str] | str) -> ReconcileCall:
        return ReconcileCall(as_tuple(task_ids))

    @staticmethod
    def _message_call(agent_id: str, data: bytes) -> MessageCall:
        if not agent_id:
            raise InvalidRequest("message: agent_id must not be empty")
        return MessageCall(agent_id, bytes(data))

    def _close_transport(self) -> None:
        if self._owns_transport:
            self._transport.close()
