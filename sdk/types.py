"""The values a scheduler works with: framework info, offers, tasks, statuses, filters and operations.

They are frozen dataclasses in the Mesos vocabulary and never protobuf, so a scheduler (and its unit
tests) never touches generated code. Resources are `tessera.control_plane.core.resources.Resources`, the very
type the master allocates with: `offer.resources - task.resources`, `offer.resources.contains(...)`,
`Resources.of(cpus=0.5, mem=64)` and `Resources.parse("cpus:1;mem:128")` all work as on the master.

Rules kept here:
- Values are immutable. Mappings (environment, labels, attributes) are stored as read-only views and
  left out of the hash, so every value stays hashable.
- A task's command is either a shell string (`"sleep 1 && echo done"`, run with `/bin/sh -c`) or an
  argv tuple (`("python3", "-c", "print(1)")`); a list given for argv is normalised to a tuple.
- `Filters.refuse_seconds` must be positive: on the wire 0 means "the master's default" (5 s), so the
  SDK does not let a caller believe 0 means "no filter".
- A `HealthCheck` is checked on its own when it is made (one kind, times, path, port numbers); what it
  needs of its task (a port the task holds or maps) the master checks at the launch.
- The framework's key/value state (`driver.kv`) is text: keys and values are `str`. A write's `version`
  is the compare of compare-and-set: None whatever the key's version is, 0 the key must be absent
  (put-if-absent), N its current version (`KvEntry.version`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeAlias

from tessera.control_plane.core import values as core_values
from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.health_checks import check_health_check, check_health_check_form
from tessera.control_plane.core.lifecycle import is_terminal
from tessera.control_plane.core.resources import Interval, Resources
from tessera.control_plane.core.state import MAX_SHUTDOWN_DELAY
from tessera.control_plane.core.values import (
    CommandURI,
    HealthCheckType,
    HttpCheck,
    NetworkInfo,
    PortMapping,
    TaskState,
    TcpCheck,
    Volume,
)

__all__ = [
    "ABSENT",
    "DEFAULT_ROLE",
    "KvDelete",
    "KvEntry",
    "KvPut",
    "KvWrite",
    "CommandURI",
    "ContainerInfo",
    "NetworkInfo",
    "PortMapping",
    "Volume",
    "FrameworkInfo",
    "Filters",
    "HealthCheck",
    "HealthCheckType",
    "HttpCheck",
    "TcpCheck",
    "Launch",
    "Offer",
    "Operation",
    "Reserve",
    "Resources",
    "TaskInfo",
    "TaskSpec",
    "TaskState",
    "TaskStatus",
    "Unreserve",
]

DEFAULT_ROLE = "default"
"""The role a framework subscribes with when it names none (Tessera has no Mesos `*` role)."""

_EMPTY: Mapping[str, str] = MappingProxyType({})


def _frozen_map(value: Mapping[str, str] | None, what: str) -> Mapping[str, str]:
    if not value:
        return _EMPTY
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidRequest(f"{what}: keys and values must be strings, got {k!r}={v!r}")
    return MappingProxyType(dict(value))


def _set(obj: object, name: str, value: object) -> None:
    # Normalising a field of a frozen dataclass in __post_init__ is the documented way to do it.
    object.__setattr__(obj, name, value)


@dataclass(frozen=True, kw_only=True)
class FrameworkInfo:
    """Who the framework is. `framework_id` is empty on a first subscription; set it to fail over
    from a previous run (the driver fills it in by itself when it reconnects).

    `failover_timeout` (seconds) is how long the master keeps the framework and its tasks after its
    connection breaks; Mesos defaults to 0 (tasks die with the connection), the SDK to one minute so a
    restarted or reconnecting scheduler keeps its tasks.

    `max_tasks_in_flight` (0 = no limit): the master offers this framework nothing while its unfinished
    tasks plus its outstanding offers number this many, and offers it again as tasks end, so a framework
    that keeps at most K tasks running needs no `suppress()`/`revive()` per freed slot. Each offer counts
    as one slot (a framework that launches several tasks from one offer can still exceed K).

    `min_offer` (empty = none): the smallest offer the framework can use, scalars by kind (e.g.
    `Resources.of(cpus=1, mem=32)`, what one of its tasks needs): the master makes it no offer with less
    of a kind named (Mesos' min_allocatable_resources). Without it an agent's leftover memory may be
    offered alone once its cpus are taken: an offer the framework can only decline."""

    name: str
    roles: tuple[str, ...] = (DEFAULT_ROLE,)
    principal: str = ""
    failover_timeout: float = 60.0
    partition_aware: bool = False
    user: str = ""
    hostname: str = ""
    framework_id: str = ""
    max_tasks_in_flight: int = 0
    min_offer: Resources = Resources()

    def __post_init__(self) -> None:
        if isinstance(self.roles, str):
            _set(self, "roles", (self.roles,))
        else:
            _set(self, "roles", tuple(self.roles))
        if not self.name:
            raise InvalidRequest("FrameworkInfo.name: must not be empty")
        if not self.roles:
            raise InvalidRequest("FrameworkInfo.roles: a framework needs at least one role")
        if not math.isfinite(self.failover_timeout) or self.failover_timeout < 0:
            raise InvalidRequest(f"FrameworkInfo.failover_timeout: must be >= 0, got {self.failover_timeout}")
        if self.max_tasks_in_flight < 0:
            raise InvalidRequest(f"FrameworkInfo.max_tasks_in_flight: must be >= 0 (0 = no limit), "
                                 f"got {self.max_tasks_in_flight}")
        if self.min_offer.ranges or any(role for (_, role), _ in self.min_offer.scalars):
            raise InvalidRequest("FrameworkInfo.min_offer: scalar quantities only (no ranges, no reservation role)")


@dataclass(frozen=True, kw_only=True)
class Offer:
    """Resources of one agent offered to this framework for one role, until used, declined or
    rescinded. `attributes` are the agent's (e.g. `{"rack": "r1"}`)."""

    offer_id: str
    agent_id: str
    resources: Resources
    hostname: str = ""
    role: str = ""
    framework_id: str = ""
    attributes: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)
    expires_at: float = 0.0  # unix seconds; 0 = never

    def __post_init__(self) -> None:
        _set(self, "attributes", _frozen_map(self.attributes, "Offer.attributes"))

    @property
    def cpus(self) -> float:
        return self.resources.scalar("cpus")

    @property
    def mem(self) -> float:
        """Memory in MiB."""
        return self.resources.scalar("mem")

    @property
    def disk(self) -> float:
        """Disk in MiB."""
        return self.resources.scalar("disk")

    @property
    def ports(self) -> tuple[Interval, ...]:
        """Offered port ranges, inclusive, merged across reservations."""
        out: list[Interval] = []
        for name, _, _, ranges in self.resources.items():
            if name == "ports":
                out.extend(ranges)
        return tuple(sorted(out))

    def fits(self, resources: Resources) -> bool:
        return self.resources.contains(resources)


@dataclass(frozen=True, kw_only=True)
class ContainerInfo:
    """Run a task in a container made from `image` (docs/containers.md).

    `image`: `[registry[:port]/]name[:tag][@sha256:digest]`. `network`: "bridge" (the agent's CNI bridge:
    the container gets its own address; publish ports with `port_mappings`, whose `host_port`s come from
    the offer's `ports`), "host" (the agent's network) or "none" (loopback only). `volumes` mount host
    directories the agent allows (`--allowed-volume-paths`). Lists are stored as tuples."""

    image: str
    network: str = "bridge"
    port_mappings: tuple[PortMapping, ...] = ()
    volumes: tuple[Volume, ...] = ()
    readonly_rootfs: bool = False
    hostname: str = ""  # empty: the task id

    def __post_init__(self) -> None:
        _set(self, "port_mappings", tuple(self.port_mappings))
        _set(self, "volumes", tuple(self.volumes))
        if not self.image:
            raise InvalidRequest("ContainerInfo.image: must not be empty")


DEFAULT_CHECK_TIMEOUT = 10.0  # seconds, or the interval when that is shorter


@dataclass(frozen=True, kw_only=True)
class HealthCheck:
    """How the agent checks a task's health (docs/health-checks.md): give one of `http`, `tcp` or `command`.

    `http`: `HttpCheck(port, path="/")`, healthy on 200-399 (or one of `statuses`); `tcp`: `TcpCheck(port)`,
    healthy when a connection opens; the port is one of the task's `ports` resources (the check goes to
    127.0.0.1 on the agent) or, for a container on the bridge network, a container port it maps (the check
    goes to the container's address). `command`: a shell string or an argv tuple, healthy on exit 0, run as
    the task's user in its sandbox (inside the container for a container task) with the task's environment
    and `env`.

    Times in seconds: the first check `delay` after the task started, one every `interval` (from start to
    start), each given at most `timeout` (default: 10, or the interval when shorter; never above the
    interval); failures before the first success within `grace_period` of the start are ignored;
    `consecutive_failures` failures in a row kill the task. Statuses carry `healthy` only when it changes
    (reason REASON_TASK_HEALTH_CHECK_STATUS_UPDATED); a task killed for failing its check ends TASK_KILLED
    with REASON_TASK_UNHEALTHY."""

    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    command: str | tuple[str, ...] = ""
    env: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)
    working_dir: str = ""  # of a command check, inside the sandbox (default: the task's)
    delay: float = 15.0
    interval: float = 10.0
    timeout: float | None = None
    grace_period: float = 10.0
    consecutive_failures: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.command, str):
            _set(self, "command", tuple(self.command))
        _set(self, "env", _frozen_map(self.env, "HealthCheck.env"))
        if self.timeout is None:
            interval = self.interval if isinstance(self.interval, (int, float)) else DEFAULT_CHECK_TIMEOUT
            _set(self, "timeout", min(DEFAULT_CHECK_TIMEOUT, float(interval)) if interval > 0
                 else DEFAULT_CHECK_TIMEOUT)
        given = [name for name in ("http", "tcp", "command") if getattr(self, name)]
        if len(given) != 1:
            raise InvalidRequest(f"HealthCheck: give one of http, tcp or command, got {' and '.join(given) or 'none'}")
        check_health_check_form(self.to_core(), "HealthCheck")

    @property
    def type(self) -> HealthCheckType:
        """HTTP, TCP or COMMAND: which of the three this check is."""
        return (HealthCheckType.HTTP if self.http is not None else HealthCheckType.TCP if self.tcp is not None
                else HealthCheckType.COMMAND)

    def command_info(self) -> core_values.CommandInfo | None:
        """A command check's command as the master and the agent take it (None for HTTP and TCP)."""
        if not self.command:
            return None
        env = tuple(self.env.items())
        if isinstance(self.command, str):
            return core_values.CommandInfo(shell=True, value=self.command, environment=env,
                                           working_dir=self.working_dir)
        return core_values.CommandInfo(shell=False, value=self.command[0], arguments=self.command[1:],
                                       environment=env, working_dir=self.working_dir)

    def to_core(self) -> core_values.HealthCheck:
        """The same check as the master's value (`tessera.control_plane.core.values.HealthCheck`)."""
        return core_values.HealthCheck(
            type=self.type, command=self.command_info(), http=self.http, tcp=self.tcp, delay_seconds=self.delay,
            interval_seconds=self.interval,
            timeout_seconds=self.timeout if self.timeout is not None else DEFAULT_CHECK_TIMEOUT,
            grace_period_seconds=self.grace_period, consecutive_failures=self.consecutive_failures)


@dataclass(frozen=True, kw_only=True)
class TaskInfo:
    """A task to launch (and, once launched, what was launched).

    `command` is a shell string or an argv tuple; a container task (`container`) may leave it empty to
    run its image's entrypoint and command. `agent_id` may stay empty: `accept`/`launch` fill
    it in from the offers the task is launched on. `kill_grace_period` (seconds) is the time between
    SIGTERM and SIGKILL when the task is killed; 0 means the agent's default. `shutdown_delay` (seconds,
    Nomad's `shutdown_delay`) comes before that: a killed task is TASK_KILLING and out of service
    discovery at once, and gets its SIGTERM only after this delay (docs/load-balancing.md). `uris` are fetched into
    the task's sandbox before it starts (docs/fetcher.md): `CommandURI` values, or plain URL strings for
    a file kept as downloaded."""

    task_id: str
    resources: Resources
    command: str | tuple[str, ...] = ""
    name: str = ""
    agent_id: str = ""
    env: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)
    kill_grace_period: float = 0.0
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)
    working_dir: str = ""
    user: str = ""
    container: ContainerInfo | None = None
    uris: tuple[CommandURI, ...] = ()
    health_check: HealthCheck | None = None
    shutdown_delay: float = 0.0

    def __post_init__(self) -> None:
        _set(self, "uris", tuple(CommandURI(u) if isinstance(u, str) else u for u in self.uris))
        if not isinstance(self.command, str):
            _set(self, "command", tuple(self.command))
        _set(self, "env", _frozen_map(self.env, f"task {self.task_id}: env"))
        _set(self, "labels", _frozen_map(self.labels, f"task {self.task_id}: labels"))
        if not self.task_id:
            raise InvalidRequest("TaskInfo.task_id: must not be empty")
        if not self.command and self.container is None:
            raise InvalidRequest(f"task {self.task_id}: command: nothing to run")
        if not math.isfinite(self.kill_grace_period) or self.kill_grace_period < 0:
            raise InvalidRequest(f"task {self.task_id}: kill_grace_period must be >= 0")
        if not math.isfinite(self.shutdown_delay) or not 0 <= self.shutdown_delay <= MAX_SHUTDOWN_DELAY:
            raise InvalidRequest(f"task {self.task_id}: shutdown_delay must be between 0 and {MAX_SHUTDOWN_DELAY:g}")

    @property
    def shell(self) -> bool:
        """True when `command` is a shell string run with `/bin/sh -c`."""
        return isinstance(self.command, str)

    def on_agent(self, agent_id: str) -> TaskInfo:
        """The same task, placed on `agent_id`."""
        return TaskInfo(
            task_id=self.task_id, resources=self.resources, command=self.command, name=self.name,
            agent_id=agent_id, env=self.env, kill_grace_period=self.kill_grace_period, labels=self.labels,
            working_dir=self.working_dir, user=self.user, container=self.container, uris=self.uris,
            health_check=self.health_check, shutdown_delay=self.shutdown_delay,
        )

    def check_health_check(self) -> None:
        """What the master checks of this task's health check against the task (a port it holds or
        maps, the user); raises InvalidRequest. `tessera.sdk.testing.FakeMaster` checks launches with it."""
        if self.health_check is None:
            return
        c = self.container
        container = (None if c is None else
                     core_values.ContainerInfo(image=c.image, network=c.network, port_mappings=c.port_mappings))
        task = core_values.TaskInfo(task_id=self.task_id, resources=self.resources,
                                    command=core_values.CommandInfo(user=self.user), container=container,
                                    health_check=self.health_check.to_core())
        check_health_check(task, f"task {self.task_id}")


TaskSpec: TypeAlias = TaskInfo
"""Another name for `TaskInfo`, for code that calls what it asks for a spec."""


@dataclass(frozen=True, kw_only=True)
class TaskStatus:
    """One status update of a task. `uuid` is empty for statuses the master answers from its state
    (reconciliation): those are not acknowledged. `exit_code` is set when the process ended."""

    task_id: str
    state: TaskState
    message: str = ""
    reason: str = ""
    exit_code: int | None = None
    agent_id: str = ""
    uuid: str = ""
    timestamp: float = 0.0
    framework_id: str = ""
    data: bytes = b""  # terminal statuses from agents: the tail of the task's stdout (at most 4 KiB)
    network: NetworkInfo | None = None  # a container task's network and addresses (from TASK_RUNNING on)
    # A health-checked task's health, on the updates that report a change of it (reason
    # REASON_TASK_HEALTH_CHECK_STATUS_UPDATED) and, False, on the end of a task killed for failing its check.
    healthy: bool | None = None

    @property
    def is_terminal(self) -> bool:
        return is_terminal(self.state)


@dataclass(frozen=True)
class Filters:
    """Do not offer the declined (or left-over) resources of those agents again for `refuse_seconds`."""

    refuse_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.refuse_seconds) or self.refuse_seconds <= 0:
            raise InvalidRequest(f"Filters.refuse_seconds: must be a positive number, got {self.refuse_seconds}")


@dataclass(frozen=True)
class Launch:
    """Launch these tasks on the accepted offers (they must fit, together, in what is offered)."""

    tasks: tuple[TaskInfo, ...]

    def __post_init__(self) -> None:
        _set(self, "tasks", tuple(self.tasks))
        if not self.tasks:
            raise InvalidRequest("Launch: give at least one task")


@dataclass(frozen=True)
class Reserve:
    """Reserve offered unreserved resources to the offers' role (`resources` carry that role)."""

    resources: Resources


@dataclass(frozen=True)
class Unreserve:
    """Give reserved resources (`resources` carry the role) back to the unreserved pool."""

    resources: Resources


Operation: TypeAlias = Launch | Reserve | Unreserve


def as_tuple(values: Sequence[str] | str) -> tuple[str, ...]:
    """A single id or a sequence of ids, as a tuple (a bare string is one id, not its characters)."""
    return (values,) if isinstance(values, str) else tuple(values)


# ---- the framework's key/value state (driver.kv) ----------------------------------------------------------

ABSENT = 0
"""The `version` a write expects of a key that must not exist yet: put-if-absent."""


def _check_version(version: int | None, what: str) -> None:
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise InvalidRequest(f"{what}.version: None (any), 0 (absent) or a version, got {version!r}")


def _check_text(value: object, what: str) -> None:
    if not isinstance(value, str):
        raise InvalidRequest(f"{what}: must be text (a str), got {type(value).__name__}")


@dataclass(frozen=True)
class KvEntry:
    """One key of the framework's state: its `value` and `version` (the index of the event in the master's
    log that put it: it only grows, and a key deleted and put again gets a new one)."""

    key: str
    value: str
    version: int


@dataclass(frozen=True)
class KvPut:
    """Put `value` at `key` if the key is at `version` (None: whatever it is; `ABSENT`: it must not exist)."""

    key: str
    value: str
    version: int | None = None

    def __post_init__(self) -> None:
        _check_text(self.key, "KvPut.key")
        _check_text(self.value, "KvPut.value")
        _check_version(self.version, "KvPut")


@dataclass(frozen=True)
class KvDelete:
    """Delete `key` if it is at `version` (None: whatever it is; deleting an absent key is no error)."""

    key: str
    version: int | None = None

    def __post_init__(self) -> None:
        _check_text(self.key, "KvDelete.key")
        _check_version(self.version, "KvDelete")


KvWrite: TypeAlias = KvPut | KvDelete
