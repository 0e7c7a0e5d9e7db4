"""Domain values shared by events, commands and state: tasks, frameworks, agents, offers.

These mirror the messages of proto/tessera/v1/common.proto field for field (same names, same enum
numbers) so that `tessera.control_plane.codec` can convert between them generically; protobuf itself never
enters the core. All values are frozen; maps are tuples of (key, value) pairs so they stay hashable
and their order is part of the value (deterministic on every master).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from enum import IntEnum
from types import MappingProxyType
from typing import Any, NamedTuple

from tessera.control_plane.core.resources import EMPTY, Resources

Labels = tuple[tuple[str, str], ...]

# Field metadata for a field that is `optional` on the wire and whose default is not the wire's zero: the
# codec always writes it (a 0 stays a 0) and reads an unset field as the default here (Mesos' proto2
# defaults, e.g. `HealthCheck.delay_seconds` [15]).
WIRE_OPTIONAL = MappingProxyType({"wire_optional": True})


class TaskKey(NamedTuple):
    """A task's identity: task ids are chosen by frameworks and scoped per framework, as in Mesos, so
    two frameworks may each run a `web-1` (even on one agent). A NamedTuple: hashable, ordered by
    framework then task, cheap to pickle, and equal to the plain `(framework_id, task_id)` tuple."""

    framework_id: str
    task_id: str

    def __str__(self) -> str:
        return f"{self.framework_id}/{self.task_id}"


class TaskState(IntEnum):
    TASK_STATE_UNKNOWN = 0
    TASK_STAGING = 1
    TASK_STARTING = 2
    TASK_RUNNING = 3
    TASK_KILLING = 4
    TASK_FINISHED = 5
    TASK_FAILED = 6
    TASK_KILLED = 7
    TASK_LOST = 8
    TASK_ERROR = 9
    TASK_DROPPED = 10
    TASK_UNREACHABLE = 11
    TASK_GONE = 12


class StatusSource(IntEnum):
    SOURCE_UNKNOWN = 0
    SOURCE_MASTER = 1
    SOURCE_AGENT = 2
    SOURCE_EXECUTOR = 3


class AgentState(IntEnum):
    AGENT_STATE_UNKNOWN = 0
    AGENT_ACTIVE = 1
    AGENT_UNREACHABLE = 2
    AGENT_DRAINING = 3
    AGENT_REMOVED = 4


class FrameworkState(IntEnum):
    FRAMEWORK_STATE_UNKNOWN = 0
    FRAMEWORK_CONNECTED = 1
    FRAMEWORK_DISCONNECTED = 2
    FRAMEWORK_REMOVED = 3


@dataclass(frozen=True, slots=True)
class CommandInfo:
    shell: bool = True
    value: str = ""
    arguments: tuple[str, ...] = ()
    environment: Labels = ()
    working_dir: str = ""
    user: str = ""


@dataclass(frozen=True, slots=True)
class PortMapping:
    """`host_port` (one of the task's `ports` resources) forwards to `container_port`."""

    container_port: int = 0
    host_port: int = 0
    protocol: str = "tcp"  # "tcp" or "udp"
    name: str = ""  # optional: DNS SRV `_<name>._<protocol>.<task name>.<domain>` (docs/dns.md)


@dataclass(frozen=True, slots=True)
class Volume:
    """A host directory (under the agent's allowed volume paths) mounted into the container."""

    container_path: str = ""
    host_path: str = ""
    mode: str = "rw"  # "ro" or "rw"


CONTAINER_NETWORKS = ("bridge", "host", "none")


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """Run the task in a container of `image` (docs/containers.md); the task's command, when given,
    replaces the image's entrypoint and command."""

    image: str = ""
    network: str = "bridge"  # one of CONTAINER_NETWORKS
    port_mappings: tuple[PortMapping, ...] = ()
    volumes: tuple[Volume, ...] = ()
    readonly_rootfs: bool = False
    hostname: str = ""  # empty: the task id


class HealthCheckType(IntEnum):
    TYPE_UNKNOWN = 0
    COMMAND = 1
    HTTP = 2
    TCP = 3


@dataclass(frozen=True, slots=True)
class HttpCheck:
    """GET `scheme://<task>:<port><path>`; healthy when the status is one of `statuses` (empty: 200-399)."""

    port: int = 0
    path: str = "/"
    scheme: str = "http"
    statuses: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class TcpCheck:
    """Healthy when a TCP connection to `<task>:<port>` opens."""

    port: int = 0


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """A task's health check (Mesos' HealthCheck; docs/health-checks.md): `type` says which of `command`,
    `http` and `tcp` it is. Times in seconds; the defaults are Mesos' except `timeout_seconds`, which may
    not exceed the interval here (Mesos: 20 s)."""

    type: HealthCheckType = HealthCheckType.TYPE_UNKNOWN
    command: CommandInfo | None = None
    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    delay_seconds: float = field(default=15.0, metadata=WIRE_OPTIONAL)
    interval_seconds: float = field(default=10.0, metadata=WIRE_OPTIONAL)
    timeout_seconds: float = field(default=10.0, metadata=WIRE_OPTIONAL)
    grace_period_seconds: float = field(default=10.0, metadata=WIRE_OPTIONAL)
    consecutive_failures: int = field(default=3, metadata=WIRE_OPTIONAL)


@dataclass(frozen=True, slots=True)
class CommandURI:
    """An artifact the agent fetches into the task's sandbox before the task starts (docs/fetcher.md).

    Every default is the usual choice (proto3 bools default to false): kept as downloaded, not
    executable, named after the URL's last path component, served from the agent's cache when it has
    the URL (`no_cache` fetches anew). `core.uris.check_uris` says what the master accepts."""

    value: str = ""  # http://, https:// or file://
    extract: bool = False  # unpack an archive (.tar, .tar.gz, .tgz, .zip) instead of keeping it
    executable: bool = False  # chmod 0755 (not with extract)
    output_file: str = ""  # a plain name in the sandbox; empty: the URL's file name
    no_cache: bool = False  # fetch anew even when the agent's cache has this URL


@dataclass(frozen=True, slots=True)
class TaskInfo:
    task_id: str
    name: str = ""
    framework_id: str = ""
    agent_id: str = ""
    resources: Resources = EMPTY
    command: CommandInfo = field(default_factory=CommandInfo)
    kill_grace_period_seconds: float = 0.0
    labels: Labels = ()
    container: ContainerInfo | None = None  # None: a command task on the agent's host
    uris: tuple[CommandURI, ...] = ()  # fetched into the sandbox before the task starts
    health_check: HealthCheck | None = None  # None: not health-checked
    shutdown_delay_seconds: float = 0.0  # between TASK_KILLING and SIGTERM: the task leaves discovery first


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    """Where a container task can be reached (Mesos's NetworkInfo)."""

    name: str = ""
    ip_addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TaskStatus:
    task_id: str
    state: TaskState
    message: str = ""
    reason: str = ""
    source: StatusSource = StatusSource.SOURCE_UNKNOWN
    agent_id: str = ""
    uuid: str = ""  # empty: generated by the master, nothing to acknowledge
    timestamp: float = 0.0
    exit_code: int | None = None
    framework_id: str = ""
    data: bytes = b""  # terminal statuses from agents: the tail of the task's stdout (MAX_STATUS_DATA bytes)
    network: NetworkInfo | None = None  # a container task's addresses, from TASK_RUNNING on
    # A health-checked task's health, on the TASK_RUNNING updates that report a change of it (and False on
    # the end of a task killed for failing its check); None: this update says nothing about health.
    healthy: bool | None = None


@dataclass(frozen=True, slots=True)
class FrameworkInfo:
    framework_id: str = ""
    name: str = ""
    principal: str = ""
    roles: tuple[str, ...] = ()
    failover_timeout_seconds: float = 0.0
    partition_aware: bool = False
    user: str = ""
    hostname: str = ""
    # Offer-side cap on work in flight, honoured by the allocator (see allocation.allocator); 0 = none.
    max_tasks_in_flight: int = 0
    # The smallest offer it can use (Mesos' min_allocatable_resources): no offer with less of a kind named
    # here is made to it (see allocation.allocator). Scalars by kind name, no reservation role; EMPTY = none.
    min_offer: Resources = EMPTY


@dataclass(frozen=True, slots=True)
class ContainerSupport:
    """What an agent can do with container tasks: no `runtime`, no containers (`unavailable` says why)."""

    runtime: str = ""
    network: str = ""  # the bridge network it offers; empty: host and none networks only
    unavailable: str = ""
    volume_paths: tuple[str, ...] = ()  # host directories volumes may come from (--allowed-volume-paths)


@dataclass(frozen=True, slots=True)
class AgentInfo:
    agent_id: str = ""
    hostname: str = ""
    resources: Resources = EMPTY
    attributes: Labels = ()
    isolator: str = ""
    version: str = ""
    containers: ContainerSupport = field(default_factory=ContainerSupport)
    files_address: str = ""  # HOST:PORT of its file service (docs/files.md); "" = it serves none


@dataclass(frozen=True, slots=True)
class Offer:
    offer_id: str
    framework_id: str
    agent_id: str
    hostname: str = ""
    role: str = ""
    resources: Resources = EMPTY
    attributes: Labels = ()
    expires_at: float = 0.0  # unix seconds; 0 = never


@dataclass(frozen=True, slots=True)
class RoleInfo:
    role: str
    weight: float = 1.0
    quota_guarantee: Resources = EMPTY
    quota_limit: Resources = EMPTY


def slot_setters(cls: type) -> tuple[Any, ...]:
    """The `__set__` of each field's slot of the slots dataclass `cls`, in field order: a hand-written
    `__init__` of a frozen class made per event stores through them (a C call) instead of the
    dataclass's `object.__setattr__` per field, which looks the name up each time (Entry, ApplyResult)."""
    return tuple(vars(cls)[f.name].__set__ for f in fields(cls))


def _tolerate_older_pickles(cls: type) -> None:
    """Unpickle a value written before fields were appended to its class: the missing trailing fields
    take their defaults. (A slots dataclass pickles its field values as a list and by default leaves any
    field past the list's end unset, so a snapshot from an earlier release would load broken values.)"""
    plan = [(f.name, f.default, f.default_factory) for f in fields(cls)]
    setters, complete = slot_setters(cls), len(plan)

    def __setstate__(self: object, state: list[object] | tuple[object, ...]) -> None:
        if len(state) == complete:  # this layout (a snapshot's every value): through the slots' C setters,
            for set_slot, value in zip(setters, state, strict=True):  # 1.6x faster to decode a snapshot
                set_slot(self, value)
            return
        for i, (name, default, factory) in enumerate(plan):
            if i < len(state):
                value = state[i]
            elif factory is not MISSING:
                value = factory()
            elif default is not MISSING:
                value = default
            else:
                raise TypeError(f"{cls.__name__}: pickled state lacks the required field {name!r}")
            object.__setattr__(self, name, value)

    cls.__setstate__ = __setstate__  # type: ignore[attr-defined]


for _cls in (CommandInfo, PortMapping, Volume, ContainerInfo, HttpCheck, TcpCheck, HealthCheck, TaskInfo, NetworkInfo,
             TaskStatus, FrameworkInfo, ContainerSupport, AgentInfo, Offer, RoleInfo):
    _tolerate_older_pickles(_cls)
