"""Run the blocking and the asyncio driver behind one face, so one test drives both against FakeMaster.

Callbacks are recorded (`Recorder`); calls are made from the test thread through `Harness.call`, which
for the asyncio driver submits the coroutine to a loop running on its own thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from tessera.sdk import (
    AsyncScheduler,
    AsyncSchedulerDriver,
    FrameworkInfo,
    Offer,
    Scheduler,
    SchedulerDriver,
    TaskStatus,
)
from tessera.sdk.testing import FakeMaster

T = TypeVar("T")
WAIT = 10.0  # bound of every wait; a test that reaches it fails


class Recorder:
    """Thread-safe log of callbacks: (name, payload)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._cond = threading.Condition()
        self.on_offers: Callable[[Any, list[Offer]], Any] | None = None
        self.on_update: Callable[[Any, TaskStatus], Any] | None = None

    def add(self, name: str, payload: Any) -> None:
        with self._cond:
            self.events.append((name, payload))
            self._cond.notify_all()

    def of(self, name: str) -> list[Any]:
        with self._cond:
            return [p for n, p in self.events if n == name]

    def names(self) -> list[str]:
        with self._cond:
            return [n for n, _ in self.events]

    def wait_for(self, predicate: Callable[[], T], what: str, timeout: float = WAIT) -> T:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise TimeoutError(f"timed out waiting for {what}; callbacks so far: {self.events}")
            return predicate()

    def offers(self) -> list[Offer]:
        return [o for batch in self.of("offers") for o in batch]

    def statuses(self, task_id: str | None = None) -> list[TaskStatus]:
        return [s for s in self.of("update") if task_id is None or s.task_id == task_id]


class SyncRecording(Scheduler):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def subscribed(self, driver: SchedulerDriver, framework_id: str) -> None:
        self.rec.add("subscribed", framework_id)

    def became_active(self, driver: SchedulerDriver, lease_term: int) -> None:
        self.rec.add("became_active", lease_term)

    def standing_by(self, driver: SchedulerDriver, framework_id: str, lease_term: int) -> None:
        self.rec.add("standing_by", (framework_id, lease_term))

    def deposed(self, driver: SchedulerDriver, lease_term: int) -> None:
        self.rec.add("deposed", lease_term)

    def offers(self, driver: SchedulerDriver, offers: list[Offer]) -> None:
        self.rec.add("offers", offers)
        if self.rec.on_offers is not None:
            self.rec.on_offers(driver, offers)

    def rescinded(self, driver: SchedulerDriver, offer_id: str) -> None:
        self.rec.add("rescinded", offer_id)

    def update(self, driver: SchedulerDriver, status: TaskStatus) -> None:
        if self.rec.on_update is not None:
            self.rec.on_update(driver, status)
        self.rec.add("update", status)

    def message(self, driver: SchedulerDriver, agent_id: str, data: bytes) -> None:
        self.rec.add("message", (agent_id, data))

    def disconnected(self, driver: SchedulerDriver) -> None:
        self.rec.add("disconnected", None)

    def error(self, driver: SchedulerDriver, message: str) -> None:
        self.rec.add("error", message)


class AsyncRecording(AsyncScheduler):
    """Every callback is a coroutine, to exercise awaiting them."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    async def subscribed(self, driver: AsyncSchedulerDriver, framework_id: str) -> None:
        self.rec.add("subscribed", framework_id)

    async def became_active(self, driver: AsyncSchedulerDriver, lease_term: int) -> None:
        self.rec.add("became_active", lease_term)

    async def standing_by(self, driver: AsyncSchedulerDriver, framework_id: str, lease_term: int) -> None:
        self.rec.add("standing_by", (framework_id, lease_term))

    async def deposed(self, driver: AsyncSchedulerDriver, lease_term: int) -> None:
        self.rec.add("deposed", lease_term)

    async def offers(self, driver: AsyncSchedulerDriver, offers: list[Offer]) -> None:
        self.rec.add("offers", offers)
        if self.rec.on_offers is not None:
            await self.rec.on_offers(driver, offers)

    async def rescinded(self, driver: AsyncSchedulerDriver, offer_id: str) -> None:
        self.rec.add("rescinded", offer_id)

    async def update(self, driver: AsyncSchedulerDriver, status: TaskStatus) -> None:
        if self.rec.on_update is not None:
            await self.rec.on_update(driver, status)
        self.rec.add("update", status)

    async def message(self, driver: AsyncSchedulerDriver, agent_id: str, data: bytes) -> None:
        self.rec.add("message", (agent_id, data))

    async def disconnected(self, driver: AsyncSchedulerDriver) -> None:
        self.rec.add("disconnected", None)

    async def error(self, driver: AsyncSchedulerDriver, message: str) -> None:
        self.rec.add("error", message)


class Harness:
    kind = ""

    def __init__(self, fake: FakeMaster | None, info: FrameworkInfo | None = None, *,
                 masters: list[str] | None = None, **options: Any) -> None:
        """Against `fake` over its in-memory transport, or (fake None) real masters over gRPC."""
        self.fake = fake
        self.rec = Recorder()
        self.info = info or FrameworkInfo(name="test-fw")
        self.masters = masters if masters is not None else fake.addresses if fake is not None else []
        transport = fake.transport() if fake is not None else None
        self.options = {"transport": transport, "call_timeout": WAIT, **options}

    @property
    def driver(self) -> Any:
        raise NotImplementedError

    def start(self) -> Harness:
        raise NotImplementedError

    def call(self, name: str, *args: Any, **kw: Any) -> Any:
        raise NotImplementedError

    def kv(self, name: str, *args: Any, **kw: Any) -> Any:
        """A call of `driver.kv` (`get`, `put`, `delete`, `list`, `write`)."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def join(self, timeout: float = WAIT) -> bool:
        raise NotImplementedError

    def subscribed(self) -> str:
        return self.rec.wait_for(lambda: self.rec.of("subscribed"), "subscription")[-1]  # type: ignore[no-any-return]


class SyncHarness(Harness):
    kind = "sync"

    def __init__(self, fake: FakeMaster | None, info: FrameworkInfo | None = None, **options: Any) -> None:
        super().__init__(fake, info, **options)
        self._driver = SchedulerDriver(SyncRecording(self.rec), self.info, self.masters, **self.options)

    @property
    def driver(self) -> SchedulerDriver:
        return self._driver

    def start(self) -> SyncHarness:
        self._driver.start()
        return self

    def call(self, name: str, *args: Any, **kw: Any) -> Any:
        return getattr(self._driver, name)(*args, **kw)

    def kv(self, name: str, *args: Any, **kw: Any) -> Any:
        return getattr(self._driver.kv, name)(*args, **kw)

    def stop(self) -> None:
        self._driver.stop()
        assert self._driver.join(WAIT)

    def join(self, timeout: float = WAIT) -> bool:
        return self._driver.join(timeout)


class AsyncHarness(Harness):
    kind = "async"

    def __init__(self, fake: FakeMaster | None, info: FrameworkInfo | None = None, **options: Any) -> None:
        super().__init__(fake, info, **options)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._driver = AsyncSchedulerDriver(AsyncRecording(self.rec), self.info, self.masters, **self.options)

    @property
    def driver(self) -> AsyncSchedulerDriver:
        return self._driver

    def _run(self, coro: Any, timeout: float = WAIT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> AsyncHarness:
        self._run(self._driver.start())
        return self

    def call(self, name: str, *args: Any, **kw: Any) -> Any:
        return self._run(getattr(self._driver, name)(*args, **kw))

    def kv(self, name: str, *args: Any, **kw: Any) -> Any:
        return self._run(getattr(self._driver.kv, name)(*args, **kw))

    def stop(self) -> None:
        self._run(self._driver.stop())
        assert self.join()

    def join(self, timeout: float = WAIT) -> bool:
        try:
            self._run(self._driver.join(), timeout)
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT)


Action = tuple[Any, ...]  # (driver method name, *arguments)


def on_offers(h: Harness, plan: Callable[[list[Offer]], list[Action]]) -> None:
    """Make calls from inside the offers callback (awaited ones for the asyncio driver)."""
    if h.kind == "sync":
        def sync_cb(driver: Any, offers: list[Offer]) -> None:
            for name, *args in plan(offers):
                getattr(driver, name)(*args)
        h.rec.on_offers = sync_cb
    else:
        async def async_cb(driver: Any, offers: list[Offer]) -> None:
            for name, *args in plan(offers):
                await getattr(driver, name)(*args)
        h.rec.on_offers = async_cb


def on_update(h: Harness, plan: Callable[[TaskStatus], list[Action]]) -> None:
    """Make calls from inside the update callback (before it is recorded)."""
    if h.kind == "sync":
        def sync_cb(driver: Any, status: TaskStatus) -> None:
            for name, *args in plan(status):
                getattr(driver, name)(*args)
        h.rec.on_update = sync_cb
    else:
        async def async_cb(driver: Any, status: TaskStatus) -> None:
            for name, *args in plan(status):
                await getattr(driver, name)(*args)
        h.rec.on_update = async_cb
