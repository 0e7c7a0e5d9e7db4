"""Tessera's framework SDK: write a scheduler, connect it to the masters, test it without a cluster.

A guide in six parts; the classes below are the reference. Import everything from `sdk` (`sdk.__all__`).

1. A scheduler is callbacks. Subclass `Scheduler` (or `AsyncScheduler`, whose callbacks may be
   `async def`) and override what you need: `subscribed`, `offers`, `rescinded`, `update`, `message`,
   `disconnected`, `error`. They run one at a time, in order, on the driver's callback thread (loop).

    from tessera.sdk import FrameworkInfo, Resources, Scheduler, SchedulerDriver, TaskInfo

    class Hello(Scheduler):
        def offers(self, driver, offers):
            need = Resources.of(cpus=0.1, mem=32)
            offer = next((o for o in offers if o.fits(need)), None)
            if offer is not None:
                driver.launch(offer, [TaskInfo(task_id="hello", resources=need, command="echo hello")])
            driver.decline([o for o in offers if o is not offer])

        def update(self, driver, status):
            if status.is_terminal:
                driver.teardown()   # done: end the framework (stop() would leave it registered)

    SchedulerDriver(Hello(), FrameworkInfo(name="hello"), ["127.0.0.1:5050"]).run()

2. The driver (`SchedulerDriver`, blocking; `AsyncSchedulerDriver`, asyncio) subscribes, follows the
   leader, reconnects with backoff (`Backoff`) and re-subscribes with the framework id, so the
   framework keeps its tasks across master failovers. Its calls: `launch`/`accept`, `decline`,
   `revive`, `suppress`, `kill`, `reconcile`, `acknowledge`, `message`, `teardown`.
   Ending: `teardown()` ends the framework (the master kills its tasks and forgets it) and stops the
   driver; `stop()` only disconnects: the framework and its tasks stay for `failover_timeout`, for a
   new driver with the same framework id to take over. A finished framework calls `teardown()`.

3. Errors (`TesseraError` and its subclasses, `tessera.sdk.errors`). A call that fails with a definite refusal
   (`tessera.sdk.errors.REFUSED`: `InvalidRequest`, `NotFound`, `Conflict`, `Unauthenticated`,
   `PermissionDenied`) was not applied. Any other failure — above all `Unavailable` after the call
   kept retrying for `call_timeout`, or a `ServerError` — may have been applied: settle it by
   reconciling, never by assuming it failed (a launch retried under a fresh task id would run twice):

    try:
        driver.launch(offer, tasks)
    except REFUSED:
        ...                                   # not applied: the tasks wait again; decline, revive
    except TesseraError:
        for status in driver.reconcile([t.task_id for t in tasks]):
            if status.state is TaskState.TASK_LOST and status.reason == "REASON_RECONCILIATION":
                ...                           # the master does not know it: not launched
            else:
                ...                           # launched: its updates follow as usual

4. Task states (`TaskState`, `TaskStatus`). Updates arrive in order per task and are acknowledged
   after `update()` returns. Do not rely on seeing every state: after a master or agent failover a task
   may go from TASK_STAGING straight to a terminal state (TASK_RUNNING skipped). `status.is_terminal`
   marks the end; anything else means the task is still alive.

5. Testing: `tessera.sdk.testing.FakeMaster` is an in-memory master (agents, offers, scripted task
   behaviours, failovers and fault injection such as `fail_next(AcceptCall, Unavailable(...),
   after_apply=True)`); pass `transport=fake.transport()` to either driver. See `help(tessera.sdk.testing)`.

6. Modules: `tessera.sdk.types` (values), `tessera.sdk.scheduler` (callbacks), `tessera.sdk.driver` / `tessera.sdk.aio` (the two
   drivers), `tessera.sdk.session` (the sans-IO session both drivers share), `tessera.sdk.errors` (the error tree),
   `tessera.sdk.transport` (the transport port; `tessera.sdk.grpc_transport` is the real one), `tessera.sdk.testing`
   (`FakeMaster`), `tessera.sdk.examples` (a batch runner and a service keeper), `tessera.sdk.run` (`tessera run`).
"""

from tessera.sdk.aio import AsyncSchedulerDriver
from tessera.sdk.driver import SchedulerDriver
from tessera.sdk.errors import (
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
from tessera.sdk.scheduler import AsyncScheduler, Scheduler
from tessera.sdk.session import Backoff
from tessera.sdk.types import (
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
