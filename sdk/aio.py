"""The asyncio scheduler driver: `AsyncSchedulerDriver`, the same session as `SchedulerDriver`.

    driver = AsyncSchedulerDriver(MyScheduler(), FrameworkInfo(name="svc"), ["m1:5050"])
    await driver.run()      # or: await driver.start(); ...; await driver.join(); await driver.stop()

Callbacks (`AsyncScheduler`) run on the event loop, one at a time and in order; each may be a coroutine
(awaited before the next event is delivered) or a plain function. Calls are coroutines with the same
retry rules as the blocking driver. The subscription itself is kept by the shared `StreamRunner` thread
(transports are blocking); it hands events to the loop with `call_soon_threadsafe`, and transport calls
run in the loop's default executor, so nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Iterable, Sequence
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
from tessera.sdk.kv import AsyncKeyValueState
from tessera.sdk.protocol import AcknowledgeCall, AcknowledgeManyCall, Call, CallResult, TeardownCall
from tessera.sdk.scheduler import AsyncScheduler
from tessera.sdk.session import Effect, NotifyError, NotifyUpdate, OfferLinger
from tessera.sdk.types import Filters, FrameworkInfo, Launch, Operation, TaskInfo, TaskStatus

log = logging.getLogger("tessera.sdk.driver")


class AsyncSchedulerDriver(DriverBase):
    """Connects an `AsyncScheduler` to the masters; takes the options of `SchedulerDriver`."""

    def __init__(self, scheduler: AsyncScheduler, framework: FrameworkInfo,
                 masters: Sequence[str] | str | None = None, *, offer_linger: float = OFFER_LINGER,
                 **options: Any) -> None:
        self._linger = OfferLinger(offer_linger)  # offers arriving together, one callback (only the loop touches it)
        super().__init__(framework, masters, **options)
        self.scheduler = scheduler
        self.kv = AsyncKeyValueState(self._call)  # the framework's key/value state (tessera.sdk.kv)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._effects: asyncio.Queue[list[Effect] | None] | None = None
        self._runner: StreamRunner | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._stopped = threading.Event()
        self._stop_pending = False
        self._stop_requested: asyncio.Event | None = None
        # Batched implicit acknowledgements (see SchedulerDriver): queued after each callback, sent by
        # one task at a time, everything waiting in one call.
        self._ack_queue: list[AcknowledgeCall] = []
        self._ack_task: asyncio.Task[None] | None = None

    # ---- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> AsyncSchedulerDriver:
        """Subscribe in the background and start delivering callbacks; returns at once."""
        if self._loop is not None:
            raise DriverStopped("a driver starts once; build a new one to subscribe again")
        loop = self._loop = asyncio.get_running_loop()
        effects: asyncio.Queue[list[Effect] | None] = asyncio.Queue()
        self._effects = effects
        self._changed = asyncio.Event()
        self._stop_requested = asyncio.Event()

        # The runner thread may outlive a loop that was closed under it: then there is no one to tell.
        def post(items: list[Effect]) -> None:
            try:
                loop.call_soon_threadsafe(effects.put_nowait, items)
            except RuntimeError:
                pass

        def changed() -> None:
            try:
                loop.call_soon_threadsafe(self._wake)
            except RuntimeError:
                pass

        self._runner = StreamRunner(self._session, self._transport, self._lock, post, on_change=changed)
        self._task = loop.create_task(self._dispatch(), name="tessera-callbacks")
        self._runner.start()
        return self

    async def join(self) -> None:
        """Wait until the driver stopped (by `stop`, `teardown` or a final `error`)."""
        if self._task is None:
            raise DriverStopped("start the driver first")
        if self._task is asyncio.current_task():
            raise RuntimeError("join() from a callback would wait for itself; call stop() and return")
        await asyncio.shield(self._task)

    async def run(self) -> None:
        await self.start()
        await self.join()

    async def stop(self) -> None:
        """Disconnect; no callback is delivered after this returns (except the one running now).

        Called from a callback, it takes effect when that callback returns (see `SchedulerDriver.stop`)."""
        if self._task is not None and asyncio.current_task() is self._task:
            self._stop_pending = True
            return
        self._shut()

    def _shut(self) -> None:
        with self._lock:
            self._session.stop()
            self._lock.notify_all()
        self._stopped.set()
        if self._runner is not None:
            self._runner.stop()
        if self._effects is not None:
            self._effects.put_nowait(None)
        if self._stop_requested is not None:
            self._stop_requested.set()
        self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    # ---- callbacks ------------------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        assert self._effects is not None and self._runner is not None
        try:
            while True:
                effects = await self._next_effects(self._effects)
                if effects is None:
                    return
                for effect in effects:
                    if isinstance(effect, NotifyError):
                        await self._deliver(effect)
                        return
                    if self._stopped.is_set():
                        break
                    await self._deliver(effect)
                    if self._stop_pending:
                        await self._acknowledgements_sent()  # before the stop takes effect
                        self._shut()
                        break
        finally:
            self._stopped.set()
            with self._lock:
                self._session.stop()
                self._lock.notify_all()
            self._wake()
            self._runner.stop()
            await asyncio.get_running_loop().run_in_executor(None, self._runner.join, 5.0)
            if self._ack_task is not None:
                await asyncio.wait([self._ack_task], timeout=5.0)  # ends at once: the session is stopped
            self._close_transport()

    async def _next_effects(self, queue: asyncio.Queue[list[Effect] | None]) -> list[Effect] | None:
        """The next effects to deliver, held offers included once due (`OfferLinger`); None: stop."""
        loop = asyncio.get_running_loop()
        while True:
            deadline = self._linger.deadline
            if deadline is None:
                effects = await queue.get()
            else:
                try:
                    effects = await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    return cast(list[Effect], self._linger.due(loop.time()))
            if effects is None:
                return None
            out = self._linger.take(effects, loop.time())
            if out:
                return cast(list[Effect], out)

    async def _deliver(self, effect: Effect) -> None:
        name, arguments = callback_for(effect)
        try:
            result = getattr(self.scheduler, name)(self, *arguments)
            if inspect.isawaitable(result):
                await result
        except Exception:  # noqa: BLE001 - a scheduler bug must not kill the driver (documented)
            log.exception("scheduler callback %s raised", name)
            return  # and its update is not acknowledged
        if isinstance(effect, NotifyUpdate) and effect.acknowledge is not None:
            if self._batched_acks_allowed():
                self._ack_queue.append(effect.acknowledge)
                if self._ack_task is None or self._ack_task.done():
                    self._ack_task = asyncio.get_running_loop().create_task(self._drain_acknowledgements())
            else:
                await self._send_acknowledgement(effect.acknowledge)

    async def _drain_acknowledgements(self) -> None:
        while self._ack_queue:
            acks, self._ack_queue = self._ack_queue[:MAX_ACKS_PER_CALL], self._ack_queue[MAX_ACKS_PER_CALL:]
            for call in self._ack_calls(acks):
                await self._send_acknowledgement(call)

    async def _acknowledgements_sent(self) -> None:
        if self._ack_task is not None and not self._ack_task.done():
            await asyncio.shield(self._ack_task)

    async def _send_acknowledgement(self, ack: AcknowledgeCall | AcknowledgeManyCall) -> None:
        try:
            await self._call(ack)
        except TesseraError as exc:
            self._ack_failed(ack, exc)

    # ---- calls ----------------------------------------------------------------------------------------
    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up at once when the driver is stopped."""
        assert self._stop_requested is not None
        try:
            await asyncio.wait_for(self._stop_requested.wait(), seconds)
        except TimeoutError:
            pass

    async def _call(self, call: Call) -> CallResult:
        what = type(call).__name__.removesuffix("Call").lower()
        if self._loop is None or self._runner is None:
            raise DriverStopped(f"{what}: start the driver first")
        loop = asyncio.get_running_loop()
        request_id = self._new_request_id()
        budget = self._budget(loop.time())
        while True:
            while True:
                changed = self._changed
                with self._lock:
                    target = self._header_or_none(request_id)
                if target is not None:
                    break
                remaining = budget.remaining(loop.time())
                if remaining <= 0 or changed is None:
                    raise self._not_subscribed(what)
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except TimeoutError:
                    pass
            address, header = target
            timeout = budget.attempt_timeout(loop.time())
            try:
                return await loop.run_in_executor(None, self._transport.call, address, header, call, timeout)
            except TesseraError as err:
                with self._lock:
                    decision = self._session.on_call_error(err, header.stream_id, budget.attempt)
                if not budget.retry_after(decision, loop.time()):
                    raise
                log.debug("%s attempt %d failed (%s); retrying", what, budget.attempt, err)
                if decision.reconnect:
                    self._runner.kick()
                if decision.delay > 0:
                    await self._pause(decision.delay)

    async def accept(self, offers: OfferRefs, operations: Iterable[Operation | TaskInfo] = (),
                     filters: Filters | None = None) -> None:
        """See `SchedulerDriver.accept`."""
        call = self._accept_call(offers, operations, filters)
        await self._call(call)
        with self._lock:
            self._session.forget_offers(call.offer_ids)

    async def launch(self, offers: OfferRefs, tasks: Iterable[TaskInfo], filters: Filters | None = None) -> None:
        await self.accept(offers, [Launch(tuple(tasks))], filters)

    async def decline(self, offers: OfferRefs, filters: Filters | None = None) -> None:
        call = self._decline_call(offers, filters)
        await self._call(call)
        with self._lock:
            self._session.forget_offers(call.offer_ids)

    async def revive(self, roles: Sequence[str] | str = ()) -> None:
        await self._call(self._revive_call(roles))

    async def suppress(self, roles: Sequence[str] | str = ()) -> None:
        await self._call(self._suppress_call(roles))

    async def kill(self, task_id: str, grace: float | None = None) -> None:
        await self._call(self._kill_call(task_id, grace))

    async def reconcile(self, task_ids: Sequence[str] | str = ()) -> list[TaskStatus]:
        """See `SchedulerDriver.reconcile`."""
        return list(cast(tuple[TaskStatus, ...], await self._call(self._reconcile_call(task_ids))))

    async def acknowledge(self, status: TaskStatus) -> None:
        with self._lock:
            ack = self._session.acknowledgement(status)
        if ack is not None:
            await self._call(ack)

    async def message(self, agent_id: str, data: bytes) -> None:
        await self._call(self._message_call(agent_id, data))

    async def teardown(self) -> None:
        """End the framework (the master kills its tasks) and stop the driver."""
        with self._lock:
            self._session.begin_teardown()
        try:
            await self._call(TeardownCall())
        except BaseException as exc:
            if not self._teardown_settled(exc):
                raise
        else:
            self._teardown_settled(None)
        await self.stop()
