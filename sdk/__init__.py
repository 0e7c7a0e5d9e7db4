"""Tessera's framework SDK: write a scheduler, connect it to the masters, test it without a cluster.

    from sdk import FrameworkInfo, Resources, Scheduler, SchedulerDriver, TaskInfo

    class Hello(Scheduler):
        def offers(self, driver, offers):
            need = Resources.of(cpus=0.1, mem=32)
            offer = next((o for o in offers if o.fits(need)), None)
            if offer is not None:
                driver.launch(offer, [TaskInfo(task_id="hello", resources=need, command="echo hello")])
            driver.decline([o for o in offers if o is not offer])

        def update(self, driver, status):
            if status.is_terminal:
                driver.stop()

    SchedulerDriver(Hello(), FrameworkInfo(name="hello"), ["127.0.0.1:5050"]).run()

Modules: `sdk.types` (values), `sdk.scheduler` (callbacks), `sdk.driver` / `sdk.aio` (the blocking and
asyncio drivers), `sdk.session` (the sans-IO session both drivers share), `sdk.errors` (the error tree),
`sdk.transport` (the transport port; `sdk.grpc_transport` is the real one), `sdk.testing` (`FakeMaster`),
`sdk.examples` (a batch runner and a service keeper) and `sdk.run` (`tessera run`).
"""

from __future__ import annotations

from sdk.aio import AsyncSchedulerDriver
from sdk.driver import SchedulerDriver
from sdk.errors import (
    Conflict,
    DriverStopped,
    InvalidRequest,
    NotFound,
    NotLeader,
    PermissionDenied,
    ServerError,
    TesseraError,
    Unauthenticated,
    Unavailable,
)
from sdk.scheduler import AsyncScheduler, Scheduler
from sdk.session import Backoff
from sdk.types import (
    DEFAULT_ROLE,
    Filters,
    FrameworkInfo,
    Launch,
    Offer,
    Operation,
    Reserve,
    Resources,
    TaskInfo,
    TaskSpec,
    TaskState,
    TaskStatus,
    Unreserve,
)

__all__ = [
    "AsyncScheduler",
    "AsyncSchedulerDriver",
    "Backoff",
    "Conflict",
    "DEFAULT_ROLE",
    "DriverStopped",
    "Filters",
    "FrameworkInfo",
    "InvalidRequest",
    "Launch",
    "NotFound",
    "NotLeader",
    "Offer",
    "Operation",
    "PermissionDenied",
    "Reserve",
    "Resources",
    "Scheduler",
    "SchedulerDriver",
    "ServerError",
    "TaskInfo",
    "TaskSpec",
    "TaskState",
    "TaskStatus",
    "TesseraError",
    "Unauthenticated",
    "Unavailable",
    "Unreserve",
]
