"""What a framework implements: the scheduler callbacks.

Subclass `Scheduler` (for `SchedulerDriver`) or `AsyncScheduler` (for `AsyncSchedulerDriver`) and
override the callbacks you need; every one is a no-op by default. A driver calls them one at a time, in
the order the master sent the events, on one thread (or one asyncio task), so a scheduler needs no
locks of its own for state it only touches from callbacks.

- `subscribed(driver, framework_id)`: after every successful (re-)subscription. The id stays the same
  across reconnections; persist it if a restarted process should fail over to the same framework.
- `became_active(driver, lease_term)`: right after `subscribed`, when this instance holds the framework's
  lease at a term it did not hold before: its first subscription, and each time it takes the framework
  over (a standby whose active instance is gone). Load what the framework keeps in `driver.kv` here. Not
  called again when it only reconnects (a leader change) at the same term.
- `standing_by(driver, framework_id, lease_term)`: a driver built with `standby=True` waits: another
  instance holds the framework's lease at `lease_term`. Calls wait until it becomes active.
- `deposed(driver, lease_term)`: another instance took the framework's lease (now at `lease_term`); this
  one's calls are refused (`Deposed`) from now on. Forget what it held as active; a standby driver waits
  as a standby again (`standing_by` follows), any other ends with `error`.
- `offers(driver, offers)`: use them (`driver.launch`/`accept`) or decline them; an offer neither used
  nor declined holds its resources until it is rescinded.
- `rescinded(driver, offer_id)`: that offer is gone (used elsewhere, expired, agent lost).
- `update(driver, status)`: a task changed state. With implicit acknowledgements (the default) the
  driver acknowledges it when this callback returns normally; if it raises, the update is not
  acknowledged and the master sends it again after the next re-subscription.
- `message(driver, agent_id, data)`: a framework message from an agent.
- `disconnected(driver)`: the stream to the master broke; the driver is reconnecting. Outstanding
  offers are void.
- `error(driver, message)`: final: the master removed the framework or refused it, or no master
  answered in time. The driver stops after this callback.

An exception escaping a callback is logged with its traceback and does not stop the driver.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from tessera.sdk.types import Offer, TaskStatus

if TYPE_CHECKING:
    from tessera.sdk.aio import AsyncSchedulerDriver
    from tessera.sdk.driver import SchedulerDriver


class Scheduler:
    """Callbacks of a framework driven by the blocking `SchedulerDriver`."""

    def subscribed(self, driver: SchedulerDriver, framework_id: str) -> None:
        pass

    def became_active(self, driver: SchedulerDriver, lease_term: int) -> None:
        pass

    def standing_by(self, driver: SchedulerDriver, framework_id: str, lease_term: int) -> None:
        pass

    def deposed(self, driver: SchedulerDriver, lease_term: int) -> None:
        pass

    def offers(self, driver: SchedulerDriver, offers: list[Offer]) -> None:
        pass

    def rescinded(self, driver: SchedulerDriver, offer_id: str) -> None:
        pass

    def update(self, driver: SchedulerDriver, status: TaskStatus) -> None:
        pass

    def message(self, driver: SchedulerDriver, agent_id: str, data: bytes) -> None:
        pass

    def disconnected(self, driver: SchedulerDriver) -> None:
        pass

    def error(self, driver: SchedulerDriver, message: str) -> None:
        pass


class AsyncScheduler:
    """Callbacks of a framework driven by `AsyncSchedulerDriver`: each may be `async def` (it is
    awaited before the next event is delivered) or a plain method."""

    def subscribed(self, driver: AsyncSchedulerDriver, framework_id: str) -> Awaitable[None] | None:
        return None

    def became_active(self, driver: AsyncSchedulerDriver, lease_term: int) -> Awaitable[None] | None:
        return None

    def standing_by(self, driver: AsyncSchedulerDriver, framework_id: str, lease_term: int
                    ) -> Awaitable[None] | None:
        return None

    def deposed(self, driver: AsyncSchedulerDriver, lease_term: int) -> Awaitable[None] | None:
        return None

    def offers(self, driver: AsyncSchedulerDriver, offers: list[Offer]) -> Awaitable[None] | None:
        return None

    def rescinded(self, driver: AsyncSchedulerDriver, offer_id: str) -> Awaitable[None] | None:
        return None

    def update(self, driver: AsyncSchedulerDriver, status: TaskStatus) -> Awaitable[None] | None:
        return None

    def message(self, driver: AsyncSchedulerDriver, agent_id: str, data: bytes) -> Awaitable[None] | None:
        return None

    def disconnected(self, driver: AsyncSchedulerDriver) -> Awaitable[None] | None:
        return None

    def error(self, driver: AsyncSchedulerDriver, message: str) -> Awaitable[None] | None:
        return None
