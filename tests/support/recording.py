"""A framework for real-process tests: launches the tasks handed to it on the first offer that fits, records
every status update and every refused launch, and lets the test wait for what it expects (bounded)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from tessera.sdk import (
    Filters,
    FrameworkInfo,
    InvalidRequest,
    Offer,
    Scheduler,
    SchedulerDriver,
    TaskInfo,
    TaskStatus,
)

T = TypeVar("T")


class Recorder(Scheduler):
    """Launches queued tasks (`launch`) on offers that fit and that `accepts`; declines the rest, and an
    offer whose launch was refused (INVALID_ARGUMENT: the refusal is kept in `refusals`)."""

    def __init__(self, accepts: Callable[[Offer], bool] = lambda offer: True) -> None:
        self.accepts = accepts
        self.queue: list[TaskInfo] = []
        self.statuses: list[TaskStatus] = []
        self.refusals: list[str] = []
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def offers(self, driver: SchedulerDriver, offers: list[Offer]) -> None:
        with self.lock:
            pending, self.queue = self.queue, []
        for offer in offers:
            fitting = [t for t in pending if offer.fits(t.resources)] if self.accepts(offer) else []
            if not fitting:
                driver.decline([offer], Filters(0.2))
                continue
            pending.remove(fitting[0])
            try:
                driver.launch(offer, [fitting[0]], Filters(0.2))
            except InvalidRequest as exc:  # nothing was launched: give the offer back at once
                driver.decline([offer], Filters(0.2))
                with self.lock:
                    self.refusals.append(str(exc))
                    self.changed.notify_all()
        with self.lock:
            self.queue.extend(pending)

    def update(self, driver: SchedulerDriver, status: TaskStatus) -> None:
        with self.lock:
            self.statuses.append(status)
            self.changed.notify_all()

    def launch(self, driver: SchedulerDriver, task: TaskInfo) -> None:
        """Queue `task` for the next offer that fits, and ask for offers."""
        with self.lock:
            self.queue.append(task)
        driver.revive()

    def wait(self, predicate: Callable[[], T | None], timeout: float = 90.0) -> T:
        """The first true value of `predicate` (called under the lock, as statuses arrive); fails after
        `timeout` seconds listing the statuses so far."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                found = predicate()
                if found:
                    return found
                left = deadline - time.monotonic()
                assert left > 0, f"timed out; statuses: {self._shown()}"
                self.changed.wait(min(left, 0.5))

    def _shown(self) -> list[tuple[Any, ...]]:
        return [(s.task_id, s.state.name, s.healthy, s.reason, s.message) for s in self.statuses]

    def of(self, task_id: str) -> list[TaskStatus]:
        return [s for s in self.statuses if s.task_id == task_id]

    def final(self, task_id: str, timeout: float = 90.0) -> TaskStatus:
        return self.wait(lambda: next((s for s in self.of(task_id) if s.is_terminal), None), timeout)


def launch(framework: tuple[Recorder, SchedulerDriver], task: TaskInfo) -> None:
    """Hand `task` to the framework's recorder and ask for offers."""
    recorder, driver = framework
    recorder.launch(driver, task)


@contextmanager
def running(recorder: Recorder, masters: Sequence[str], name: str) -> Iterator[tuple[Recorder, SchedulerDriver]]:
    """`recorder` subscribed as framework `name` for the block; torn down after it."""
    driver = SchedulerDriver(recorder, FrameworkInfo(name=name, failover_timeout=60.0), list(masters))
    driver.start()
    try:
        yield recorder, driver
    finally:
        driver.teardown()
        driver.join(10)
