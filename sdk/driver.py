"""The blocking scheduler driver: `SchedulerDriver`.

    driver = SchedulerDriver(MyScheduler(), FrameworkInfo(name="batch"), ["m1:5050", "m2:5050"])
    driver.run()            # or: driver.start(); ...; driver.join(); and driver.stop() from anywhere

Without masters (`SchedulerDriver(MyScheduler(), FrameworkInfo(name="batch"))`) the driver finds them as
every Tessera client does: TESSERA_MASTERS, else the `.tessera/cluster.json` `tessera up` wrote in this
directory or a parent, else 127.0.0.1:5050; giving up (`give_up_after`) says which it used.

Threads: one keeps the subscription (connect, read, reconnect: `tessera.sdk._shell.StreamRunner`), one runs the
scheduler's callbacks, one at a time and in order. Calls (`launch`, `decline`, `kill`...) block the
calling thread until the master answered; they may be made from callbacks or from any other thread.

Pipelined launches: `launch_async`/`accept_async` return a `concurrent.futures.Future` at once and send
the Accept from a pool of `accepts_in_flight` senders (64 by default), so a callback that got many offers
has several Accepts under way instead of waiting one round trip per offer. Accepts start in the order
they were made; each retries and fails exactly as `accept` does (the future's exception is the error
`accept` would have raised; `DriverStopped` once the driver stopped). A later call may overtake an Accept
still in flight: wait for its future when the order matters (a `kill` of a task it launches). The
future's callbacks run on a sender thread; `call_soon(fn, *args)` runs `fn(*args)` on the callback
thread instead, after the callbacks already queued, so a scheduler keeps all its state on one thread.
A call made while the driver is reconnecting waits for the new subscription, and a call that fails with
`NotLeader`/`Unavailable` (or on a stream replaced meanwhile) is sent again with the same request id
until `call_timeout` runs out; other errors are raised at once as `tessera.sdk.errors` classes.

`stop()` closes the connection and leaves the framework registered: the master keeps its tasks for
`failover_timeout`, and a new driver built with the same framework id takes them over. `teardown()`
ends the framework (the master kills its tasks) and stops the driver.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, cast

from tessera.sdk._shell import (
    MAX_ACKS_PER_CALL,
    OFFER_LINGER,
    DriverBase,
    OfferRefs,
    StreamRunner,
    callback_for,
)
from tessera.sdk.errors import DriverStopped, TesseraError
from tessera.sdk.kv import KeyValueState
from tessera.sdk.protocol import (
    AcceptCall,
    AcknowledgeCall,
    AcknowledgeManyCall,
    Call,
    CallResult,
    TeardownCall,
)
from tessera.sdk.scheduler import Scheduler
from tessera.sdk.session import Effect, NotifyError, NotifyUpdate, OfferLinger
from tessera.sdk.types import Filters, FrameworkInfo, Launch, Operation, TaskInfo, TaskStatus

log = logging.getLogger("tessera.sdk.driver")

ACK_SENDERS = 1  # batched acknowledgement calls under way at once (one keeps them in order)
# pipelined Accepts (`launch_async`) under way at once, by default: above the agents one offers callback
# names on a large cluster (at 32, 44 agents' Accepts waited a whole Accept for a sender: docs/benchmarks.md)
ACCEPTS_IN_FLIGHT = 64


class _Soon:
    """A function for the callback thread (`SchedulerDriver.call_soon`)."""

    __slots__ = ("fn", "args")

    def __init__(self, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args


class SchedulerDriver(DriverBase):
    """Connects a `Scheduler` to the masters. See the module docstring; keyword arguments:

    - `transport`: how to reach masters (default: gRPC; `tessera.sdk.testing.FakeMaster.transport()` in tests)
    - `implicit_acknowledgements` (True): acknowledge each update after `update()` returned; when
      False the scheduler calls `driver.acknowledge(status)` itself
    - `batch_acknowledgements` (True): implicit acknowledgements waiting to be sent go out together, in
      one call, to a master that accepts that (BATCHED_ACKNOWLEDGEMENTS); one call per update otherwise
    - `call_timeout` (30 s): how long one call may keep retrying; `rpc_timeout` (10 s) bounds one attempt
    - `give_up_after` (None = never): stop with `error()` when no subscription succeeds for that long
    - `masters` None (the default): found as every client finds them (see the module docstring)
    - `standby` (False): one of several instances of the framework: while another instance is active,
      wait as a standby (`Scheduler.standing_by`) and take over when it is gone (`became_active`); a
      standby with no `framework_id` joins the framework of its principal with its name (docs/protocol.md)
    - `accepts_in_flight` (64): how many `launch_async`/`accept_async` Accepts are under way at once
    - `offer_linger` (0.005 s): offers arriving within this time of the first are delivered together, in
      one `offers()` callback (`tessera.sdk.session.OfferLinger`; updates are not held); 0: each as it comes
    - `backoff`, `subscribe_timeout`, `random`, `request_ids`: reconnection tuning and test hooks
    """

    def __init__(self, scheduler: Scheduler, framework: FrameworkInfo, masters: Sequence[str] | str | None = None,
                 *, accepts_in_flight: int = ACCEPTS_IN_FLIGHT, offer_linger: float = OFFER_LINGER,
                 **options: Any) -> None:
        if accepts_in_flight < 1:
            raise ValueError("accepts_in_flight must be at least 1")
        self._linger = OfferLinger(offer_linger)  # only the callback thread touches it
        super().__init__(framework, masters, **options)
        self.scheduler = scheduler
        self.kv = KeyValueState(self._call)  # the framework's key/value state (tessera.sdk.kv)
        self._effects: queue.Queue[Sequence[Effect | _Soon] | None] = queue.Queue()
        self._runner = StreamRunner(self._session, self._transport, self._lock, self._effects.put)
        self._dispatcher = threading.Thread(target=self._dispatch, name="tessera-callbacks", daemon=True)
        self._started = False
        self._stopped = threading.Event()
        self._stop_pending = False
        self._done = threading.Event()
        # Implicit acknowledgements go out from a small pool, so the callback thread does not wait one
        # round trip per update (sequential acks capped a framework near 40 tasks/s); the master accepts
        # acknowledgements of a task's updates in any order.
        self._acks = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tessera-acks")
        # Batched: acknowledgements wait in `_ack_queue`; one pool task at a time drains it, sending
        # everything waiting (up to MAX_ACKS_PER_CALL) in one call, so a busy framework sends few large
        # calls, an idle one sends each acknowledgement at once, and they reach the master in order.
        self._ack_queue: list[AcknowledgeCall] = []
        self._ack_senders = 0
        self._ack_lock = threading.Lock()
        # Pipelined Accepts: a FIFO pool, so they start in the order they were made.
        self._accepts = ThreadPoolExecutor(max_workers=accepts_in_flight, thread_name_prefix="tessera-accepts")

    # ---- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> SchedulerDriver:
        """Subscribe in the background and start delivering callbacks; returns at once."""
        with self._lock:
            if self._started:
                raise DriverStopped("a driver starts once; build a new one to subscribe again")
            self._started = True
        self._dispatcher.start()
        self._runner.start()
        return self

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the driver stopped (by `stop`, `teardown` or a final `error`); False on timeout."""
        if threading.current_thread() is self._dispatcher:
            raise RuntimeError("join() from a callback would wait for itself; call stop() and return")
        return self._done.wait(timeout)

    def run(self) -> None:
        """`start()` then `join()`; Ctrl-C stops the driver (the framework stays for failover)."""
        self.start()
        try:
            while not self.join(0.5):
                pass
        except KeyboardInterrupt:
            self.stop()
            raise

    def stop(self) -> None:
        """Disconnect; no callback is delivered after this returns (except the one running now).

        Called from a callback, it takes effect when that callback returns, so the update being
        handled is still acknowledged and calls made before returning still go out."""
        if threading.current_thread() is self._dispatcher:
            self._stop_pending = True
            return
        self._shut()

    def _shut(self) -> None:
        with self._lock:
            self._session.stop()
            self._lock.notify_all()
        self._stopped.set()
        self._runner.stop()
        self._effects.put(None)
        self._accepts.shutdown(wait=False, cancel_futures=True)
        if not self._started:
            self._done.set()

    def __enter__(self) -> SchedulerDriver:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        if threading.current_thread() is not self._dispatcher:
            self.join(10.0)

    # ---- callbacks ------------------------------------------------------------------------------------
    def _next_effects(self) -> Sequence[Effect | _Soon] | None:
        """The next effects to deliver, held offers included once due (`OfferLinger`); None: stop."""
        while True:
            deadline = self._linger.deadline
            if deadline is None:
                effects = self._effects.get()
            else:
                try:
                    effects = self._effects.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    return cast(list[Effect], self._linger.due(time.monotonic()))
            if effects is None:
                return None
            out = self._linger.take(effects, time.monotonic())
            if out:
                return cast(list[Effect | _Soon], out)

    def _dispatch(self) -> None:
        try:
            while True:
                effects = self._next_effects()
                if effects is None:
                    return
                for effect in effects:
                    if isinstance(effect, _Soon):
                        if not self._stopped.is_set():
                            self._run_soon(effect)
                        continue
                    if isinstance(effect, NotifyError):
                        self._deliver(effect)
                        return
                    if self._stopped.is_set():
                        break
                    self._deliver(effect)
                    if self._stop_pending:
                        self._acks.shutdown(wait=True)  # acknowledgements under way go out first
                        self._shut()
                        break
        finally:
            self._stopped.set()
            with self._lock:
                self._session.stop()
                self._lock.notify_all()
            self._acks.shutdown(wait=True, cancel_futures=False)
            self._accepts.shutdown(wait=False, cancel_futures=True)
            self._runner.stop()
            self._runner.join(5.0)
            self._close_transport()
            self._done.set()

    def _deliver(self, effect: Effect) -> None:
        name, arguments = callback_for(effect)
        try:
            getattr(self.scheduler, name)(self, *arguments)
        except Exception:  # noqa: BLE001 - a scheduler bug must not kill the driver (documented)
            log.exception("scheduler callback %s raised", name)
            return  # and its update is not acknowledged
        if isinstance(effect, NotifyUpdate) and effect.acknowledge is not None:
            self._acknowledge_later(effect.acknowledge)

    def _run_soon(self, soon: _Soon) -> None:
        try:
            soon.fn(*soon.args)
        except Exception:  # noqa: BLE001 - like a callback: logged, the driver goes on
            log.exception("call_soon function %r raised", soon.fn)

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        """Run `fn(*args)` on the callback thread, after the callbacks already queued (never at the same
        time as a callback). An exception it raises is logged. Nothing runs once the driver stopped."""
        self._effects.put([_Soon(fn, args)])

    def _acknowledge_later(self, ack: AcknowledgeCall) -> None:
        if self._batched_acks_allowed():
            self._queue_acknowledgement(ack)
        elif self._stop_pending:
            self._send_acknowledgement(ack)  # before the stop takes effect
        else:
            try:
                self._acks.submit(self._send_acknowledgement, ack)
            except RuntimeError:  # the pool is shut down: the driver is stopping
                self._send_acknowledgement(ack)

    def _queue_acknowledgement(self, ack: AcknowledgeCall) -> None:
        with self._ack_lock:
            self._ack_queue.append(ack)
            if self._ack_senders >= ACK_SENDERS:
                return  # a sender under way takes it with the next call
            self._ack_senders += 1
        if self._stop_pending:
            self._drain_acknowledgements()  # before the stop takes effect
            return
        try:
            self._acks.submit(self._drain_acknowledgements)
        except RuntimeError:  # the pool is shut down: the driver is stopping
            self._drain_acknowledgements()

    def _drain_acknowledgements(self) -> None:
        """Send what waits, in calls of up to MAX_ACKS_PER_CALL, until nothing does."""
        while True:
            with self._ack_lock:
                acks, self._ack_queue = self._ack_queue[:MAX_ACKS_PER_CALL], self._ack_queue[MAX_ACKS_PER_CALL:]
                if not acks:
                    self._ack_senders -= 1
                    return
            for call in self._ack_calls(acks):
                self._send_acknowledgement(call)

    def _send_acknowledgement(self, ack: AcknowledgeCall | AcknowledgeManyCall) -> None:
        try:
            self._call(ack)
        except TesseraError as exc:
            self._ack_failed(ack, exc)

    # ---- calls ----------------------------------------------------------------------------------------
    def _call(self, call: Call) -> CallResult:
        what = type(call).__name__.removesuffix("Call").lower()
        with self._lock:
            if not self._started:
                raise DriverStopped(f"{what}: start the driver first")
        request_id = self._new_request_id()
        budget = self._budget(time.monotonic())
        while True:
            with self._lock:
                target = self._header_or_none(request_id)
                while target is None:
                    remaining = budget.remaining(time.monotonic())
                    if remaining <= 0:
                        raise self._not_subscribed(what)
                    self._lock.wait(remaining)
                    target = self._header_or_none(request_id)
            address, header = target
            try:
                return self._transport.call(address, header, call, budget.attempt_timeout(time.monotonic()))
            except TesseraError as err:
                with self._lock:
                    decision = self._session.on_call_error(err, header.stream_id, budget.attempt)
                if not budget.retry_after(decision, time.monotonic()):
                    raise
                log.debug("%s attempt %d failed (%s); retrying", what, budget.attempt, err)
                if decision.reconnect:
                    self._runner.kick()
                if decision.delay > 0:
                    self._stopped.wait(decision.delay)

    def accept(self, offers: OfferRefs, operations: Iterable[Operation | TaskInfo] = (),
               filters: Filters | None = None) -> None:
        """Use offers (ids or `Offer`s, all on one agent): `Launch`, `Reserve`, `Unreserve` operations,
        or bare `TaskInfo`s (launched together). What is left returns to the pool, refused to this
        framework for `filters.refuse_seconds` when filters are given."""
        call = self._accept_call(offers, operations, filters)
        self._call(call)
        with self._lock:
            self._session.forget_offers(call.offer_ids)

    def launch(self, offers: OfferRefs, tasks: Iterable[TaskInfo], filters: Filters | None = None) -> None:
        """`accept(offers, [Launch(tasks)], filters)`."""
        self.accept(offers, [Launch(tuple(tasks))], filters)

    def accept_async(self, offers: OfferRefs, operations: Iterable[Operation | TaskInfo] = (),
                     filters: Filters | None = None) -> Future[None]:
        """`accept` without waiting: the Accept goes out from the pipeline (see the module docstring) and
        the returned future ends with its outcome, None or the error `accept` would raise. A request that
        is wrong in itself (`InvalidRequest`) is raised here, at once."""
        call = self._accept_call(offers, operations, filters)
        with self._lock:
            if not self._started:
                raise DriverStopped("accept: start the driver first")
        try:
            return self._accepts.submit(self._accept_now, call)
        except RuntimeError:  # the pool is shut down: the driver stopped
            failed: Future[None] = Future()
            failed.set_exception(DriverStopped(self._session.failure or "the driver is stopped"))
            return failed

    def launch_async(self, offers: OfferRefs, tasks: Iterable[TaskInfo],
                     filters: Filters | None = None) -> Future[None]:
        """`accept_async(offers, [Launch(tasks)], filters)`."""
        return self.accept_async(offers, [Launch(tuple(tasks))], filters)

    def _accept_now(self, call: AcceptCall) -> None:
        self._call(call)
        with self._lock:
            self._session.forget_offers(call.offer_ids)

    def decline(self, offers: OfferRefs, filters: Filters | None = None) -> None:
        """Give offers back; their agents are not offered again for `filters.refuse_seconds`
        (the master's default, 5 s, without filters)."""
        call = self._decline_call(offers, filters)
        self._call(call)
        with self._lock:
            self._session.forget_offers(call.offer_ids)

    def revive(self, roles: Sequence[str] | str = ()) -> None:
        """Ask for offers again (all roles when none named) and clear decline filters."""
        self._call(self._revive_call(roles))

    def suppress(self, roles: Sequence[str] | str = ()) -> None:
        """Stop receiving offers (all roles when none named) until `revive`."""
        self._call(self._suppress_call(roles))

    def kill(self, task_id: str, grace: float | None = None) -> None:
        """Kill a task: SIGTERM, `grace` seconds (default: the task's own), SIGKILL."""
        self._call(self._kill_call(task_id, grace))

    def reconcile(self, task_ids: Sequence[str] | str = ()) -> list[TaskStatus]:
        """The master's latest status of the named tasks (explicit), or of all the framework's tasks
        (implicit, when none are named). A task the master does not know comes back TASK_LOST.
        These statuses are answers, not updates: they are not delivered to `update()`."""
        return list(cast(tuple[TaskStatus, ...], self._call(self._reconcile_call(task_ids))))

    def acknowledge(self, status: TaskStatus) -> None:
        """Acknowledge an update (only with `implicit_acknowledgements=False`)."""
        with self._lock:
            ack = self._session.acknowledgement(status)
        if ack is not None:
            self._call(ack)

    def message(self, agent_id: str, data: bytes) -> None:
        """Send a framework message to an agent."""
        self._call(self._message_call(agent_id, data))

    def teardown(self) -> None:
        """End the framework: the master kills its tasks and forgets it. Stops the driver."""
        with self._lock:
            self._session.begin_teardown()
        try:
            self._call(TeardownCall())
        except BaseException as exc:
            if not self._teardown_settled(exc):
                raise
        else:
            self._teardown_settled(None)
        self.stop()
