"""The scheduler session as a state machine with no I/O: the one place where a driver decides things.

Both drivers (`SchedulerDriver`, blocking, and `AsyncSchedulerDriver`) are thin shells around a
`Session`: they open streams, read events, sleep and send calls, and ask the session what to do at
every step. The session contains no I/O whatsoever: no sockets, threads, clocks or randomness of its
own. Time comes in as `now` arguments, randomness through the `random` callable it is built with, and
decisions go out as return values (an `Attempt` to make, `Effect`s to carry out, a `CallDecision`).
It is not thread-safe; a shell serialises access with one lock.

Theory of operation
-------------------

    IDLE --start--> CONNECTING --SubscribedEvent--> SUBSCRIBED
                       ^ |  |                           |
                       | |  +--refused (domain error)--> FAILED <--ErrorEvent / gave up--+
                       | +--StandbyEvent--> STANDBY --SubscribedEvent--> SUBSCRIBED
                       +------- stream ended / silent / deposed (standby mode) --+
    any --stop / teardown--> STOPPED

- Subscribing. `next_attempt(now)` names the master to dial, how long to wait first, and the
  `FrameworkInfo` to subscribe with: it carries the framework id as soon as the master gave us one, so
  every re-subscription is a failover of the same framework (its tasks survive for `failover_timeout`).
- Choosing a master, and the wait: `tessera.control_plane.wire.DialPlan`, the one choice every client
  of the masters makes. A leader hint (the `tessera-leader` address a follower answers with, on the
  stream or on a call) is tried next and at once; otherwise the masters are tried in turn. Two
  immediate hops in a row are never made, so two masters with stale hints pointing at each other cannot
  spin. The wait is `Backoff.delay(n)` (exponential, capped, jittered downwards by up to `jitter` of its
  value so that many frameworks do not reconnect in step), `n` growing once per round of failed
  attempts over the masters. The first attempt ever, and the first hop to a hinted leader, wait 0. A
  subscription resets it; when its stream ends the next master is tried after the initial wait.
- Failure. A subscription refused with a domain error (the framework was removed, bad info, not
  allowed, a server bug) is final: FAILED, and the scheduler hears `error`. So is an `ErrorEvent`, and
  so is finding no master within `give_up_after` seconds (when set). Retryable errors (`NotLeader`,
  `Unavailable`), clean ends and silences only lead to reconnecting.
- Liveness. While subscribing, a stream that says nothing for `subscribe_timeout` is given up; once
  subscribed, one silent for `missed_heartbeats` heartbeat intervals is. The shell reads with
  `read_timeout()` and reports a silence with `on_silence`.
- Acknowledgements. With implicit acknowledgements an update with a uuid comes out as a
  `NotifyUpdate` carrying the `AcknowledgeCall` to send once the scheduler's callback has returned
  (not before: an update the scheduler did not process must not be acknowledged). Otherwise the
  scheduler acknowledges with `acknowledgement(status)`.
- Calls. `call_header(request_id)` gives the header of an attempt (only while subscribed). When an
  attempt fails, `on_call_error` says whether to send it again with the same request id: after
  `NotLeader` (and whether the stream must move to the hinted leader first), after `Unavailable`, and
  after a `Conflict` that only says the call went out on a stream that has since been replaced.
- Call budgets. `CallBudget(now, call_timeout, rpc_timeout)` is the arithmetic of one call's retry loop,
  shared by the blocking and the asyncio driver: how long the next attempt may take, how long the
  caller may still wait for a subscription, and (`retry_after`) whether an attempt that failed is sent
  again — the session said so and the wait fits before the deadline.
- Leader moves learnt from calls. A call answered `NotLeader` by the master we are subscribed with
  means the stream is stale too: the shell drops it (`CallDecision.reconnect`), and until the new
  subscription no call goes out (`call_header` is None), so calls cannot spin against the old master.
- Teardown. Between `begin_teardown` and `end_teardown`, the stream ending, an `ErrorEvent` or a
  re-subscription refused because the framework is gone all mean the teardown went through: the
  session stops quietly (`torn_down`) instead of failing.
- The framework lease (docs/protocol.md). Every subscription presents the lease term this instance
  holds (`LeaseClaim`), so after a stream broke it gets the framework back only while no other instance
  took it. A session built with `standby` waits while another instance is active: the master answers
  `StandbyEvent` (phase STANDBY, the scheduler hears `standing_by`) and later `SubscribedEvent` when this
  instance takes over. `became_active` follows the `subscribed` of every subscription at a term this
  instance did not hold before (the first one, each takeover), never a reconnection at the same term (nor
  from a master without leases, whose subscriptions carry no term).
  Deposed — an `ErrorEvent` carrying a lease term, a `StandbyEvent` with a term other than the one
  held, or (not standby) a subscription refused with `Deposed` — the scheduler hears `deposed`; in
  standby mode the session waits as a standby again, otherwise it fails as for any ErrorEvent.
- Offers. The session remembers outstanding offers (so a task can be placed by offer id alone) and
  forgets them when they are rescinded, used, declined, or when the stream breaks (a master rescinds
  every offer of a disconnected framework).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import TypeAlias

from tessera.control_plane import wire
from tessera.sdk.errors import (
    Conflict,
    Deposed,
    DriverStopped,
    InvalidRequest,
    NotLeader,
    TesseraError,
    Unavailable,
)
from tessera.sdk.protocol import (
    AcknowledgeCall,
    CallHeader,
    ErrorEvent,
    Event,
    HeartbeatEvent,
    LeaseClaim,
    MessageEvent,
    OffersEvent,
    RescindEvent,
    StandbyEvent,
    SubscribedEvent,
    UpdateEvent,
)
from tessera.sdk.types import FrameworkInfo, Offer, TaskStatus


class Phase(Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    STANDBY = "standby"  # a standby subscription, waiting for the framework's lease
    SUBSCRIBED = "subscribed"
    STOPPED = "stopped"
    FAILED = "failed"


class Backoff(wire.Backoff):
    """The one backoff policy of `tessera.control_plane.wire` (exponential, downward jitter: `delay(n)` lies in
    `[nominal(n) * (1 - jitter), nominal(n)]` with `nominal(n) = min(maximum, initial * multiplier**n)`);
    a nonsensical one is an `InvalidRequest`."""

    __slots__ = ()

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None


DEFAULT_BACKOFF = Backoff()


# ---- outputs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """Subscribe at `address` after waiting `delay` seconds, with `info`, claiming the lease as `lease` says."""

    address: str
    delay: float
    info: FrameworkInfo
    lease: LeaseClaim = LeaseClaim()


@dataclass(frozen=True)
class NotifySubscribed:
    framework_id: str


@dataclass(frozen=True)
class NotifyActive:
    """This instance holds the framework's lease at a term it did not hold before."""

    lease_term: int


@dataclass(frozen=True)
class NotifyStandby:
    framework_id: str
    lease_term: int


@dataclass(frozen=True)
class NotifyDeposed:
    """Another instance took the framework's lease, now at `lease_term`."""

    lease_term: int


@dataclass(frozen=True)
class NotifyOffers:
    offers: tuple[Offer, ...]


@dataclass(frozen=True)
class NotifyRescinded:
    offer_id: str


@dataclass(frozen=True)
class NotifyUpdate:
    status: TaskStatus
    acknowledge: AcknowledgeCall | None  # send after the callback returned normally


@dataclass(frozen=True)
class NotifyMessage:
    agent_id: str
    data: bytes


@dataclass(frozen=True)
class NotifyDisconnected:
    pass


@dataclass(frozen=True)
class NotifyError:
    """Final: the driver stops after the scheduler heard it."""

    message: str


Effect: TypeAlias = (
    NotifySubscribed | NotifyActive | NotifyStandby | NotifyDeposed | NotifyOffers | NotifyRescinded | NotifyUpdate
    | NotifyMessage | NotifyDisconnected | NotifyError
)


# Effects that deliver held offers before them: what changes the subscription the offers belong to.
# Anything else (status updates, framework messages, a driver's own queued functions) may pass ahead of a
# held offer: it says nothing about offers, and a scheduler cannot tell it from one that came first.
_FLUSH_HELD_OFFERS = (NotifySubscribed, NotifyActive, NotifyStandby, NotifyDeposed, NotifyDisconnected, NotifyError)


class OfferLinger:
    """Offers that come within `linger` seconds of each other, delivered in one `offers()` callback
    (sans-IO: the driver gives the clock and waits until `deadline`).

    A master may send a framework the offers of one moment in several messages (one per agent message
    when it offers what a batch of status updates frees in that batch's own commit); delivered one
    callback each, a scheduler that accepts each callback's offers of one agent together would still
    send one Accept per message. Held, they go out together `linger` seconds after the first of them
    arrived: status updates, framework messages (and whatever else a driver queues) are delivered
    meanwhile, in order; a rescind of a held offer removes it (the scheduler never hears of either); a
    change of the subscription (subscribed, active, standby, deposed, disconnected, error) delivers the
    held offers first. `linger` 0 passes everything through as it comes."""

    def __init__(self, linger: float) -> None:
        if linger < 0:
            raise ValueError("offer linger must be >= 0")
        self.linger = linger
        self._held: list[Offer] = []
        self.deadline: float | None = None  # when the held offers are due; None: nothing held

    def add(self, effect: object, now: float) -> list[object]:
        """What to deliver now, in order, given one more effect (offers may be held instead)."""
        if self.linger <= 0:
            return [effect]
        if isinstance(effect, NotifyOffers):
            if not self._held:
                self.deadline = now + self.linger
            self._held.extend(effect.offers)
            return []
        if isinstance(effect, NotifyRescinded) and any(o.offer_id == effect.offer_id for o in self._held):
            self._held = [o for o in self._held if o.offer_id != effect.offer_id]
            if not self._held:
                self.deadline = None
            return []
        if not isinstance(effect, _FLUSH_HELD_OFFERS) or not self._held:
            return [effect]
        return [*self.flush(), effect]

    def take(self, effects: Iterable[object], now: float) -> list[object]:
        """`add` each of a batch of effects, then `due`: what to deliver now, in order."""
        out = [kept for effect in effects for kept in self.add(effect, now)]
        out.extend(self.due(now))
        return out

    def due(self, now: float) -> list[object]:
        """The held offers, once their time came (else nothing)."""
        if self.deadline is None or now < self.deadline:
            return []
        return self.flush()

    def flush(self) -> list[object]:
        """The held offers now, as one effect (nothing when none are held)."""
        held, self._held, self.deadline = self._held, [], None
        return [NotifyOffers(tuple(held))] if held else []


@dataclass(frozen=True)
class CallDecision:
    """What to do after a call attempt failed: send it again (same request id) after `delay` seconds,
    moving the stream to the hinted leader first when `reconnect`; or give the error to the caller."""

    retry: bool
    delay: float = 0.0
    reconnect: bool = False


@dataclass
class CallBudget:
    """One call's retry loop, as arithmetic (times are the shell's clock readings, passed in)."""

    started: float
    call_timeout: float
    rpc_timeout: float
    attempt: int = 0  # 0-based number of the attempt about to be (or being) made

    @property
    def deadline(self) -> float:
        return self.started + self.call_timeout

    def remaining(self, now: float) -> float:
        """How long the caller may still wait (for a subscription, or a backoff) before giving up."""
        return self.deadline - now

    def attempt_timeout(self, now: float) -> float:
        """The timeout of the attempt made at `now`: `rpc_timeout`, cut to what is left of the call."""
        return max(0.001, min(self.rpc_timeout, self.deadline - now))

    def retry_after(self, decision: CallDecision, now: float) -> bool:
        """After a failed attempt: True to wait `decision.delay` and send again (counting the attempt),
        False to give the error to the caller (not retryable, or the wait would pass the deadline)."""
        if not decision.retry or now + decision.delay >= self.deadline:
            return False
        self.attempt += 1
        return True


# ---- the session --------------------------------------------------------------------------------------


class Session:
    def __init__(
        self,
        info: FrameworkInfo,
        masters: Sequence[str],
        *,
        random: Callable[[], float],
        implicit_acknowledgements: bool = True,
        backoff: Backoff = DEFAULT_BACKOFF,
        give_up_after: float | None = None,
        subscribe_timeout: float = 15.0,
        missed_heartbeats: float = 3.0,
        masters_source: str = "",
        standby: bool = False,
    ) -> None:
        masters = list(dict.fromkeys(m for m in masters if m))
        if not masters:
            raise InvalidRequest("masters: give at least one master address")
        if give_up_after is not None and not give_up_after > 0:
            raise InvalidRequest(f"give_up_after: must be positive, got {give_up_after}")
        if not subscribe_timeout > 0 or not missed_heartbeats > 0:
            raise InvalidRequest("subscribe_timeout and missed_heartbeats must be positive")
        self.info = info
        self.implicit_acknowledgements = implicit_acknowledgements
        self.backoff = backoff
        self.give_up_after = give_up_after
        self.subscribe_timeout = subscribe_timeout
        self.missed_heartbeats = missed_heartbeats
        self.masters_source = masters_source  # where the masters came from, for the give-up message
        self.standby = standby
        self._random = random

        self.phase = Phase.IDLE
        self.framework_id = info.framework_id
        self.stream_id = ""
        self.master: str | None = None  # the address of the current subscription
        self.heartbeat_interval = 0.0
        self.master_capabilities: frozenset[str] = frozenset()  # what the subscribed master accepts
        self.failure: str | None = None  # why the session FAILED
        self.subscriptions = 0  # how many times a subscription succeeded
        self.lease_term = 0  # the term this instance holds (or held, while reconnecting) the lease at; 0: none
        self._active_term: int | None = None  # the term `became_active` was last told (None: not active)

        self._offers: dict[str, Offer] = {}
        self._plan = wire.DialPlan(masters, backoff)
        self.masters = self._plan.addresses  # grows with the masters leader hints name
        self._hint: str | None = None  # the leader named since the last attempt
        self._last_address: str | None = None  # None: no attempt yet
        self._last_healthy = False  # the last attempt ended a subscription (rather than failing)
        self._down_since: float | None = None
        self._tearing_down = False
        self._moving = False  # a call learnt of a new leader: no call goes out until we re-subscribed
        self.torn_down = False  # the master removed the framework at our request

    # ---- lifecycle ------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """True until the session is stopped or failed."""
        return self.phase not in (Phase.STOPPED, Phase.FAILED)

    def start(self, now: float) -> None:
        if self.phase is not Phase.IDLE:
            raise RuntimeError(f"a session starts once; it is {self.phase.value}")
        self.phase = Phase.CONNECTING
        self._down_since = now

    def stop(self) -> None:
        """The user stopped the driver, or the framework tore itself down."""
        if self.active:
            self.phase = Phase.STOPPED
        self._offers.clear()

    def begin_teardown(self) -> None:
        """A teardown is on its way: the stream ending (or an ErrorEvent) is then expected, not a failure."""
        self._tearing_down = True

    def end_teardown(self, done: bool) -> None:
        """The teardown call returned (`done`) or failed for good (the framework may still exist)."""
        self._tearing_down = False
        if done:
            self.stop()

    def settle_teardown(self, error: BaseException | None) -> bool:
        """The teardown call returned (`error` None) or raised `error`: True when the framework is gone
        (a `DriverStopped` raised because the stream ended as the teardown went through counts), False
        when the caller must see the error (the framework may still exist)."""
        done = error is None or (isinstance(error, DriverStopped) and self.torn_down)
        self.end_teardown(done)
        return done

    def subscribe_info(self) -> FrameworkInfo:
        return replace(self.info, framework_id=self.framework_id)

    def next_attempt(self, now: float) -> Attempt | NotifyError:
        """Where and when to subscribe next; a `NotifyError` when it is time to give up (FAILED)."""
        if self.phase is not Phase.CONNECTING:
            raise RuntimeError(f"next_attempt while {self.phase.value}")
        if self.give_up_after is not None and self._down_since is not None:
            waited = now - self._down_since
            if waited >= self.give_up_after:
                message = f"no master answered at {', '.join(self.masters)} within {self.give_up_after:g} s"
                if self.masters_source:
                    message += f" (masters from {self.masters_source})"
                self._fail(message)
                return NotifyError(message)
        if self._last_address is None:
            dial = self._plan.first()
        else:
            dial = self._plan.after(self._last_address, healthy=self._last_healthy, leader_hint=self._hint,
                                    fraction=self._random())
        self._hint = None
        delay = dial.delay
        if self.give_up_after is not None and self._down_since is not None:
            # Make the last attempt at the deadline rather than sleeping past it.
            delay = min(delay, max(0.0, self._down_since + self.give_up_after - now))
        self._last_address = dial.address
        self._last_healthy = False
        return Attempt(dial.address, delay, self.subscribe_info(), LeaseClaim(self.standby, self.lease_term))

    def read_timeout(self) -> float | None:
        """How long the shell may wait for the next event before reporting `on_silence`."""
        if self.phase is Phase.CONNECTING:
            return self.subscribe_timeout
        if self.phase in (Phase.SUBSCRIBED, Phase.STANDBY) and self.heartbeat_interval > 0:
            return self.heartbeat_interval * self.missed_heartbeats
        return None

    # ---- the stream -----------------------------------------------------------------------------------
    def on_event(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, SubscribedEvent):
            if self.phase not in (Phase.CONNECTING, Phase.STANDBY):
                return []
            self.phase = Phase.SUBSCRIBED
            self.framework_id = event.framework_id
            self.stream_id = event.stream_id
            self.heartbeat_interval = max(0.0, event.heartbeat_interval_seconds)
            self.master_capabilities = frozenset(event.capabilities)
            self.master = self._last_address
            self.subscriptions += 1
            self._down_since = None
            self.lease_term = event.lease_term
            effects: list[Effect] = [NotifySubscribed(event.framework_id)]
            if event.lease_term and self._active_term != event.lease_term:  # 0: a master without leases
                self._active_term = event.lease_term
                effects.append(NotifyActive(event.lease_term))
            return effects
        if isinstance(event, StandbyEvent):
            if self.phase not in (Phase.CONNECTING, Phase.STANDBY):
                return []
            self.phase = Phase.STANDBY
            self.framework_id = event.framework_id
            self.heartbeat_interval = max(0.0, event.heartbeat_interval_seconds)
            self._down_since = None
            deposed = self.lease_term != 0 and event.lease_term != self.lease_term
            self.lease_term = 0  # a standby: it claims the lease anew when it may
            self._active_term = None
            standing_by: list[Effect] = [NotifyDeposed(event.lease_term)] if deposed else []
            return [*standing_by, NotifyStandby(event.framework_id, event.lease_term)]
        if self.phase is not Phase.SUBSCRIBED:
            return []  # nothing is meaningful before Subscribed, or after we stopped listening
        if isinstance(event, OffersEvent):
            for offer in event.offers:
                self._offers[offer.offer_id] = offer
            return [NotifyOffers(event.offers)] if event.offers else []
        if isinstance(event, RescindEvent):
            self._offers.pop(event.offer_id, None)
            return [NotifyRescinded(event.offer_id)]
        if isinstance(event, UpdateEvent):
            status = event.status
            ack = None
            if self.implicit_acknowledgements and status.uuid:
                ack = AcknowledgeCall(status.task_id, status.agent_id, status.uuid)
            return [NotifyUpdate(status, ack)]
        if isinstance(event, MessageEvent):
            return [NotifyMessage(event.agent_id, event.data)]
        if isinstance(event, HeartbeatEvent):
            return []
        if isinstance(event, ErrorEvent):
            self._offers.clear()
            if self._tearing_down:
                self.torn_down = True
                self.stop()
                return [NotifyDisconnected()]
            if event.lease_term:
                self.lease_term = 0
                self._active_term = None
                if self.standby:  # wait as a standby again: the stream ends next, and we subscribe anew
                    self.phase = Phase.CONNECTING
                    self._last_healthy = True
                    self._down_since = now
                    return [NotifyDisconnected(), NotifyDeposed(event.lease_term)]
                return [NotifyDeposed(event.lease_term),
                        *self._fail(f"the master ended the framework: {event.message}", disconnected=True)]
            return self._fail(f"the master ended the framework: {event.message}", disconnected=True)
        raise TypeError(f"not a scheduler event: {event!r}")

    def on_stream_ended(self, error: TesseraError | None, now: float) -> list[Effect]:
        """The stream is over (`error` None: closed cleanly, or cancelled by the shell)."""
        if not self.active or self.phase is Phase.IDLE:
            return []
        was_subscribed = self.phase is Phase.SUBSCRIBED
        self._offers.clear()
        self._moving = False
        if not was_subscribed and error is not None and not isinstance(error, (NotLeader, Unavailable)):
            if self._tearing_down:
                # Refused because the teardown we asked for went through (its answer may have been lost).
                self.torn_down = True
                self.stop()
                return []
            refused = self._fail(f"the master refused the subscription: {type(error).__name__}: {error}")
            if isinstance(error, Deposed):  # our term is over: another instance holds the lease
                self.lease_term = 0
                self._active_term = None
                return [NotifyDeposed(error.lease_term or 0), *refused]
            return refused
        if isinstance(error, NotLeader) and error.leader_hint:
            self._learn(error.leader_hint)
        self.phase = Phase.CONNECTING
        if was_subscribed:
            self._last_healthy = True
            self._down_since = now
            return [NotifyDisconnected()]
        return []

    def on_silence(self, now: float) -> list[Effect]:
        """Nothing arrived within `read_timeout()`; the shell has cancelled the stream."""
        waited = self.read_timeout()
        return self.on_stream_ended(Unavailable(f"no word from the master for {waited or 0:g} s"), now)

    def _fail(self, message: str, *, disconnected: bool = False) -> list[Effect]:
        self.phase = Phase.FAILED
        self.failure = message
        return [NotifyDisconnected(), NotifyError(message)] if disconnected else [NotifyError(message)]

    def _learn(self, hint: str) -> None:
        self._hint = hint
        self._plan.learn(hint)  # a master added to the quorum after we started

    # ---- calls ----------------------------------------------------------------------------------------
    def call_header(self, request_id: str) -> CallHeader | None:
        """The header of an attempt of a call, or None while not subscribed."""
        if self.phase is not Phase.SUBSCRIBED or self._moving:
            return None
        return CallHeader(self.framework_id, self.stream_id, request_id)

    def on_call_error(self, error: TesseraError, sent_stream_id: str, attempt: int) -> CallDecision:
        """Attempt number `attempt` (0-based) of a call, sent on `sent_stream_id`, failed with `error`."""
        if not self.active:
            return CallDecision(False)
        if isinstance(error, NotLeader):
            hint = error.leader_hint
            move = bool(hint) and hint != self.master and self.phase is Phase.SUBSCRIBED and not self._moving
            if hint:
                self._learn(hint)
            if move:
                self._moving = True  # the shell drops the stream; calls wait for the new subscription
                return CallDecision(True, 0.0, reconnect=True)
            return CallDecision(True, self.backoff.delay(attempt, self._random()))
        if isinstance(error, Unavailable):
            return CallDecision(True, self.backoff.delay(attempt, self._random()))
        if isinstance(error, Conflict) and sent_stream_id != self.stream_id:
            return CallDecision(True, 0.0)  # sent on a stream that was replaced since: resend on the new one
        return CallDecision(False)

    def acknowledgement(self, status: TaskStatus) -> AcknowledgeCall | None:
        """The call acknowledging `status` explicitly (None: nothing to acknowledge)."""
        if self.implicit_acknowledgements:
            raise InvalidRequest("acknowledge: this driver acknowledges updates itself; "
                                 "create it with implicit_acknowledgements=False to do it explicitly")
        if not status.uuid:
            return None
        return AcknowledgeCall(status.task_id, status.agent_id, status.uuid)

    # ---- offers ---------------------------------------------------------------------------------------
    def offer(self, offer_id: str) -> Offer | None:
        return self._offers.get(offer_id)

    def outstanding_offers(self) -> tuple[Offer, ...]:
        return tuple(self._offers.values())

    def forget_offers(self, offer_ids: Iterable[str]) -> None:
        for offer_id in offer_ids:
            self._offers.pop(offer_id, None)
