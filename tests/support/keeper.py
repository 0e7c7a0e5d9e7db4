"""A test framework on the public SDK: `Keeper` launches the tasks handed to it (`launch`) on the first
offer that fits, records every status and every refusal, and lets a test wait for either."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

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


class Keeper(Scheduler):
    """Launches the tasks handed to it on the first offer that fits (and `accepts`), records every status."""

    def __init__(self) -> None:
        self.queue: list[TaskInfo] = []
        self.statuses: list[TaskStatus] = []
        self.refusals: list[str] = []
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def accepts(self, offer: Offer) -> bool:
        """Whether tasks may go on this offer's agent (all, unless a test says otherwise)."""
        return True

    def offers(self, driver: SchedulerDriver, offers: list[Offer]) -> None:
        with self.lock:
            pending, self.queue = self.queue, []
        for offer in offers:
            fitting = [t for t in pending if offer.fits(t.resources) and self.accepts(offer)]
            if fitting:
                task = fitting[0]
                pending.remove(task)
                try:
                    driver.launch(offer, [task], Filters(0.2))
                except InvalidRequest as exc:
                    with self.lock:
                        self.refusals.append(str(exc))
                        self.changed.notify_all()
                continue
            driver.decline([offer], Filters(0.2))
        with self.lock:
            self.queue.extend(pending)

    def update(self, driver: SchedulerDriver, status: TaskStatus) -> None:
        with self.lock:
            self.statuses.append(status)
            self.changed.notify_all()

    def wait(self, predicate: Callable[[], T | None], timeout: float = 90.0) -> T:
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                found = predicate()
                if found:
                    return found
                left = deadline - time.monotonic()
                assert left > 0, f"timed out; statuses: {[(s.task_id, s.state.name, s.message) for s in self.statuses]}"
                self.changed.wait(min(left, 0.5))

    def final(self, task_id: str, timeout: float = 90.0) -> TaskStatus:
        return self.wait(lambda: next((s for s in self.statuses if s.task_id == task_id and s.is_terminal), None),
                         timeout)


def launch(framework: tuple[Keeper, SchedulerDriver], task: TaskInfo) -> None:
    """Hand `task` to the keeper and ask for offers."""
    keeper, driver = framework
    with keeper.lock:
        keeper.queue.append(task)
    driver.revive()


K = TypeVar("K", bound=Keeper)


@contextmanager
def running(keeper: K, masters: Sequence[str], name: str) -> Iterator[tuple[K, SchedulerDriver]]:
    """`keeper` subscribed as framework `name` for the block; torn down after it."""
    driver = SchedulerDriver(keeper, FrameworkInfo(name=name, failover_timeout=60.0), list(masters))
    driver.start()
    try:
        yield keeper, driver
    finally:
        driver.teardown()
        driver.join(10)
