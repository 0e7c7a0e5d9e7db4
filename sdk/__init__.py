"""Tessera's framework SDK: write a scheduler, connect it to the masters, test it without a cluster.

A framework is the program that decides what runs on a Tessera cluster. The masters offer it the
free resources of agents; it answers by launching tasks on those offers (or declining them) and
follows each task's status updates to the end. With this SDK a framework is a `Scheduler` (the
callbacks you write: `subscribed`, `offers`, `update`, ...) and a driver (`SchedulerDriver`, or
`AsyncSchedulerDriver` for asyncio) that holds the connection to the masters, follows the leader,
reconnects and makes your calls (`launch`, `decline`, `kill`, `reconcile`, `teardown`, ...):

    from tessera.sdk import FrameworkInfo, Resources, Scheduler, SchedulerDriver, TaskInfo

    class Hello(Scheduler):
        launched = False

        def offers(self, driver, offers):
            need = Resources.of(cpus=0.1, mem=32)
            for offer in offers:
                if not self.launched and offer.fits(need):
                    driver.launch(offer, [TaskInfo(task_id="hello", resources=need, command="echo hello")])
                    self.launched = True
                else:
                    driver.decline(offer)   # give back what we do not use

        def update(self, driver, status):
            if status.is_terminal:
                driver.teardown()   # done: end the framework (stop() would leave it registered)

    SchedulerDriver(Hello(), FrameworkInfo(name="hello"), ["127.0.0.1:5050"]).run()

Frameworks keep their own records in the masters' replicated log, not in ZooKeeper: `driver.kv` is the
framework's key/value state (get, put with compare-and-set on a version, delete, list by prefix;
`tessera.sdk.kv`). Several instances of one framework can run: built with `standby=True`, a driver waits
while another instance is active and takes over when it is gone (`became_active`, `deposed`).

Three things every framework meets (sdk/README.md explains each):
- `teardown()` ends the framework; `stop()` only disconnects, and the master keeps the framework and
  its tasks for `failover_timeout`, for a new driver to take over.
- A call refused with one of `tessera.sdk.errors.REFUSED` was not applied; any other failure (a call
  that ran out of time, `Unavailable`) may have been: settle it with `driver.reconcile(task_ids)`.
- Updates arrive in order, but not every state: after a failover TASK_RUNNING can be skipped.

Where to look next:
- sdk/README.md: the guide in full (the driver's behaviour, the settle pattern, the public names).
- `tessera.sdk.testing`: `FakeMaster`, an in-process master with fault injection for unit tests of
  a framework (`transport=fake.transport()` plugs it into either driver).
- `tessera.sdk.examples`: a batch runner and a service keeper, runnable (`python -m ...`) and tested.

The names, all imported from `tessera.sdk` (`__all__`); each is documented on its module's page
(`help(tessera.sdk.types)`, ...), which this page leaves out so that it stays a guide:
- `tessera.sdk.scheduler`: `Scheduler`, `AsyncScheduler`. `tessera.sdk.driver`: `SchedulerDriver`;
  `tessera.sdk.aio`: `AsyncSchedulerDriver`; `tessera.sdk.session`: `Backoff` (reconnection backoff).
- `tessera.sdk.types` (frozen values): `FrameworkInfo`, `Offer`, `TaskInfo` (= `TaskSpec`), `TaskStatus`,
  `TaskState`, `Filters`, `Launch`, `Reserve`, `Unreserve`, `Operation`, `Resources`, `DEFAULT_ROLE`;
  for container tasks `ContainerInfo`, `PortMapping`, `Volume`, and `NetworkInfo` (in statuses); for
  health checks `HealthCheck` with `HttpCheck` or `TcpCheck` (its kind a `HealthCheckType`;
  `TaskInfo.health_check`, `TaskStatus.healthy`); for the framework's state
  `driver.kv` `KvEntry`, `KvPut`, `KvDelete` and `ABSENT`; `CommandURI` for artifacts fetched into a task's sandbox
  (`TaskInfo.uris`).
- `tessera.sdk.errors` (the error tree): `TesseraError`, `InvalidRequest`, `NotFound`, `Conflict`
  (with `VersionConflict` and `Deposed`), `NotLeader`, `Unauthenticated`, `PermissionDenied`,
  `Unavailable`, `ServerError`, `DriverStopped`.
"""

import typing as _typing

from tessera.sdk.aio import AsyncSchedulerDriver
from tessera.sdk.driver import SchedulerDriver
from tessera.sdk.errors import (
    Conflict,
    Deposed,
    DriverStopped,
    InvalidRequest,
    NotFound,
    NotLeader,
    PermissionDenied,
    ServerError,
    TesseraError,
    Unauthenticated,
    Unavailable,
    VersionConflict,
)
from tessera.sdk.scheduler import AsyncScheduler, Scheduler
from tessera.sdk.session import Backoff
from tessera.sdk.types import (
    ABSENT,
    DEFAULT_ROLE,
    CommandURI,
    ContainerInfo,
    Filters,
    FrameworkInfo,
    HealthCheck,
    HealthCheckType,
    HttpCheck,
    KvDelete,
    KvEntry,
    KvPut,
    Launch,
    NetworkInfo,
    Offer,
    Operation,
    PortMapping,
    Reserve,
    Resources,
    TaskInfo,
    TaskSpec,
    TaskState,
    TaskStatus,
    TcpCheck,
    Unreserve,
    Volume,
)

__all__ = [
    "ABSENT",
    "AsyncScheduler",
    "AsyncSchedulerDriver",
    "Backoff",
    "CommandURI",
    "Conflict",
    "ContainerInfo",
    "DEFAULT_ROLE",
    "Deposed",
    "DriverStopped",
    "Filters",
    "FrameworkInfo",
    "HealthCheck",
    "HealthCheckType",
    "HttpCheck",
    "InvalidRequest",
    "KvDelete",
    "KvEntry",
    "KvPut",
    "Launch",
    "NetworkInfo",
    "NotFound",
    "NotLeader",
    "Offer",
    "Operation",
    "PermissionDenied",
    "PortMapping",
    "Reserve",
    "Resources",
    "Scheduler",
    "SchedulerDriver",
    "ServerError",
    "TaskInfo",
    "TaskSpec",
    "TaskState",
    "TaskStatus",
    "TcpCheck",
    "TesseraError",
    "Unauthenticated",
    "Unavailable",
    "Unreserve",
    "VersionConflict",
    "Volume",
]

# `from tessera.sdk import X` and `tessera.sdk.X` work for every name of `__all__`, but the package's
# namespace does not hold them: the module `__getattr__` below serves them. That keeps
# `help(tessera.sdk)` the guide above instead of the guide followed by 2,000 lines of every class's
# inherited members (pydoc documents each class a package holds, and `TaskState` alone brings all of
# `int`); each class's reference stays on its module's page. Type checkers read the imports above.
_PUBLIC = {name: globals().pop(name) for name in __all__}

if not _typing.TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """The public names of the SDK (`__all__`), each from the module that defines it."""
        try:
            return _PUBLIC[name]
        except KeyError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
