"""Limits on what one request, one principal and one peer may ask of a master (pure: no I/O, no clock).

Three kinds of limit, all refused before anything is proposed, so a refused request changes nothing:

**Size of a task** (constants, the same on every master; `check_task_size`, called by `decide` for every
launched task). A `TaskInfo` is replicated to every master inside a `TaskLaunched` event, kept in state
while the task lives and sent to the agent: its parts are capped like Mesos' practical limits (the
Linux `ARG_MAX` for a command line, a few hundred variables in an environment) and its whole size is
capped well under what one Raft entry may carry. Over a cap: `InvalidRequest` naming the field
(INVALID_ARGUMENT).

    MAX_COMMAND_LENGTH        4096 characters   command.value (a shell line or the program)
    MAX_ARGUMENTS             256               command.arguments (count)
    MAX_ARGUMENT_LENGTH       4096 characters   each argument
    MAX_ARGUMENTS_LENGTH      32 KiB            all arguments together
    MAX_ENVIRONMENT           256               command.environment (variables)
    MAX_ENVIRONMENT_LENGTH    32 KiB            all names and values together
    MAX_LABELS                64                labels (pairs)
    MAX_LABELS_LENGTH         16 KiB            all keys and values together
    MAX_RESOURCE_ENTRIES      64                resources: scalar entries plus port intervals
    MAX_URIS                  64                uris (artifacts fetched into the sandbox; core/uris.py)
    MAX_URI_LENGTH            4096 characters   each uris[].value
    MAX_OUTPUT_FILE           255 bytes         each uris[].output_file (a file name)
    MAX_TASK_LENGTH           64 KiB            the task as a whole (`task_length`)
    MAX_LAUNCH_LENGTH         512 KiB           all tasks of one Accept together (one Raft entry
                                                carries them; pysyncobj's entry cap is 1 MiB)

Agents and frameworks, whose info is replicated and copied into every offer: at most
`MAX_AGENT_ATTRIBUTES` (128) attributes and `MAX_AGENT_RESOURCE_ENTRIES` (1024) resource entries per
agent, `MAX_FRAMEWORK_ROLES` (128) roles per framework.

**Framework state** (constants; `check_state_key`, `check_state_value`, `check_state_write_size` by
`decide`, and the per-framework totals by `decide` and again by `apply`, since writes decided apart may
together pass them). A framework's key/value state lives in every master's memory and in every snapshot,
and each write travels in one Raft entry, so it is small by design — a place for a framework's own
records (app definitions, deployments, which task is which), not a database:

    MAX_STATE_KEY_LENGTH      512 bytes        a key, UTF-8 (no control characters)
    MAX_STATE_VALUE_LENGTH    64 KiB           a value, UTF-8 (a ZooKeeper znode allows 1 MiB; Marathon
                                               keeps one record per znode, far below)
    MAX_STATE_WRITE_LENGTH    512 KiB          keys and values of one WriteValues call (one Raft entry)
    MAX_STATE_WRITES          128              writes in one WriteValues call
    MAX_STATE_KEYS            10,000           keys per framework
    MAX_STATE_BYTES           4 MiB            keys and values per framework

Over a size cap: `InvalidRequest` naming the limit (INVALID_ARGUMENT); nothing is written. A future
version may raise these, never lower them: `apply` re-checks the per-framework totals, so a log written
under higher limits would not replay under lower ones.

**Failover timeout** (`MAX_FAILOVER_TIMEOUT`, one week, as Marathon's default): a framework that
disconnects is kept, with its tasks and reservations, at most a week; a longer timeout is
`InvalidRequest`. A week outlasts a weekend outage; anything longer is a framework that is never cleaned
up.

**Per principal and per peer** (`MasterLimits`, master flags `--limit NAME=VALUE`, defaults that work on
a laptop): live frameworks and tracked tasks per principal (decided from replicated state by `decide`),
calls per second per principal (a token bucket, `RateLimiter`), concurrent streams per peer certificate
and per principal (`StreamSlots`). Over a limit: `ResourceExhausted` (RESOURCE_EXHAUSTED). They are master
flags, not ACL fields, because they protect the master's capacity (threads, memory, the Raft log) whoever
calls — agents and certificate-only callers have no principal, and an insecure development master has no
ACL at all.

A stream holds one gRPC thread for its whole life, so the stream caps are derived from the server's
thread pool: `reserve` threads are never given to streams (unary calls such as an operator's GetState
always find one), and one peer or one principal may hold at most half of the rest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace

from tessera.control_plane.core.errors import InvalidRequest, ResourceExhausted
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import (
    AgentInfo,
    CommandInfo,
    FrameworkInfo,
    HealthCheck,
    HttpCheck,
    Labels,
    TaskInfo,
)

MAX_COMMAND_LENGTH = 4096
MAX_ARGUMENTS = 256
MAX_ARGUMENT_LENGTH = 4096
MAX_ARGUMENTS_LENGTH = 32 * 1024
MAX_ENVIRONMENT = 256
MAX_ENVIRONMENT_LENGTH = 32 * 1024
MAX_LABELS = 64
MAX_LABELS_LENGTH = 16 * 1024
MAX_RESOURCE_ENTRIES = 64
MAX_URIS = 64
MAX_URI_LENGTH = 4096
MAX_OUTPUT_FILE = 255
MAX_TASK_LENGTH = 64 * 1024
MAX_LAUNCH_LENGTH = 512 * 1024
MAX_FAILOVER_TIMEOUT = 7 * 24 * 3600.0
MAX_AGENT_ATTRIBUTES = 128
MAX_AGENT_RESOURCE_ENTRIES = 1024
MAX_FRAMEWORK_ROLES = 128
MAX_STATE_KEY_LENGTH = 512
MAX_STATE_VALUE_LENGTH = 64 * 1024
MAX_STATE_WRITE_LENGTH = 512 * 1024
MAX_STATE_WRITES = 128
MAX_STATE_KEYS = 10_000
MAX_STATE_BYTES = 4 * 1024 * 1024

_RESOURCE_ENTRY_LENGTH = 48  # what one resource entry costs in a serialized task, roughly (name, role, value)


def _pairs_length(pairs: Labels) -> int:
    return sum(len(k) + len(v) for k, v in pairs)


def _check_pairs(pairs: Labels, what: str, count: int, length: int) -> int:
    if len(pairs) > count:
        raise InvalidRequest(f"{what}: {len(pairs)} entries, at most {count}")
    total = _pairs_length(pairs)
    if total > length:
        raise InvalidRequest(f"{what}: {total} characters in all, at most {length}")
    return total


def check_command_size(command: CommandInfo, what: str) -> int:
    """The caps on a command's parts; returns its length in characters. (Types are checked elsewhere.)"""
    if len(command.value) > MAX_COMMAND_LENGTH:
        raise InvalidRequest(f"{what}.value: {len(command.value)} characters, at most {MAX_COMMAND_LENGTH}")
    if len(command.arguments) > MAX_ARGUMENTS:
        raise InvalidRequest(f"{what}.arguments: {len(command.arguments)} arguments, at most {MAX_ARGUMENTS}")
    arguments = 0
    for n, arg in enumerate(command.arguments):
        if len(arg) > MAX_ARGUMENT_LENGTH:
            raise InvalidRequest(f"{what}.arguments[{n}]: {len(arg)} characters, at most {MAX_ARGUMENT_LENGTH}")
        arguments += len(arg)
    if arguments > MAX_ARGUMENTS_LENGTH:
        raise InvalidRequest(f"{what}.arguments: {arguments} characters in all, at most {MAX_ARGUMENTS_LENGTH}")
    environment = _check_pairs(command.environment, f"{what}.environment", MAX_ENVIRONMENT, MAX_ENVIRONMENT_LENGTH)
    return (len(command.value) + arguments + environment + len(command.working_dir) + len(command.user)
            + 8 * (len(command.arguments) + len(command.environment)))


def task_length(task: TaskInfo) -> int:
    """About the size of the task serialized (characters of its strings plus a little per entry)."""
    command = task.command
    return (len(task.task_id) + len(task.name) + len(task.framework_id) + len(task.agent_id)
            + len(command.value) + sum(len(a) for a in command.arguments) + _pairs_length(command.environment)
            + len(command.working_dir) + len(command.user) + _pairs_length(task.labels)
            + 8 * (len(command.arguments) + len(command.environment) + len(task.labels))
            + _RESOURCE_ENTRY_LENGTH * resource_entries(task) + _container_length(task)
            + _health_check_length(task)
            + sum(8 + len(u.value) + len(u.output_file) for u in task.uris))


def _container_length(task: TaskInfo) -> int:
    container = task.container
    if container is None:
        return 0
    return (len(container.image) + len(container.network) + len(container.hostname)
            + sum(16 + len(m.protocol) for m in container.port_mappings)
            + sum(8 + len(v.container_path) + len(v.host_path) + len(v.mode) for v in container.volumes))


def _health_check_length(task: TaskInfo) -> int:
    check = task.health_check
    if not isinstance(check, HealthCheck):
        return 0  # none (or not one: refused by check_health_check)
    command = check.command if isinstance(check.command, CommandInfo) else None
    http = check.http if isinstance(check.http, HttpCheck) else None
    return (64 + (0 if command is None else len(command.value) + sum(8 + len(a) for a in command.arguments)
                  + _pairs_length(command.environment) + 8 * len(command.environment) + len(command.working_dir)
                  + len(command.user))
            + (0 if http is None else len(http.path) + len(http.scheme) + 4 * len(http.statuses)))


def resource_entries(task: TaskInfo) -> int:
    return _entries(task.resources)


def _entries(resources: Resources) -> int:
    return len(resources.scalars) + sum(len(intervals) for _, intervals in resources.ranges)


def check_task_size(task: TaskInfo, what: str) -> int:
    """Every cap on one task (see the module doc); returns `task_length(task)`."""
    check_command_size(task.command, f"{what}.command")
    check = task.health_check
    if isinstance(check, HealthCheck) and isinstance(check.command, CommandInfo):
        check_command_size(check.command, f"{what}.health_check.command")
    _check_pairs(task.labels, f"{what}.labels", MAX_LABELS, MAX_LABELS_LENGTH)
    entries = resource_entries(task)
    if entries > MAX_RESOURCE_ENTRIES:
        raise InvalidRequest(f"{what}.resources: {entries} entries (scalars and port ranges), "
                             f"at most {MAX_RESOURCE_ENTRIES}")
    length = task_length(task)
    if length > MAX_TASK_LENGTH:
        raise InvalidRequest(f"{what}: about {length} bytes serialized, at most {MAX_TASK_LENGTH}")
    return length


def check_launch_size(tasks: Iterable[tuple[str, TaskInfo]], what: str) -> None:
    """All tasks of one Accept, as (field name, task): each within its caps, and together within
    `MAX_LAUNCH_LENGTH`."""
    total = 0
    for name, task in tasks:
        total += check_task_size(task, name)
        if total > MAX_LAUNCH_LENGTH:
            raise InvalidRequest(f"{what}: the tasks of one accept are about {total} bytes or more, at most "
                                 f"{MAX_LAUNCH_LENGTH}; launch them in several accepts")


def check_framework_size(info: FrameworkInfo) -> None:
    """A subscribing framework: its failover timeout and role count."""
    if info.failover_timeout_seconds > MAX_FAILOVER_TIMEOUT:
        raise InvalidRequest(f"info.failover_timeout_seconds: at most {MAX_FAILOVER_TIMEOUT:g} seconds (one week), "
                             f"got {info.failover_timeout_seconds!r}")
    if len(info.roles) > MAX_FRAMEWORK_ROLES:
        raise InvalidRequest(f"info.roles: {len(info.roles)} roles, at most {MAX_FRAMEWORK_ROLES}")


def check_agent_size(info: AgentInfo) -> None:
    """A (re)registering agent: its attribute and resource counts."""
    if len(info.attributes) > MAX_AGENT_ATTRIBUTES:
        raise InvalidRequest(f"info.attributes: {len(info.attributes)} entries, at most {MAX_AGENT_ATTRIBUTES}")
    entries = _entries(info.resources)
    if entries > MAX_AGENT_RESOURCE_ENTRIES:
        raise InvalidRequest(f"info.resources: {entries} entries (scalars and port ranges), "
                             f"at most {MAX_AGENT_RESOURCE_ENTRIES}")


def utf8_length(text: str, what: str = "text") -> int:
    """Bytes of `text` in UTF-8 (what the framework-state limits count); InvalidRequest for a string that
    is not text (a lone surrogate cannot be encoded, nor sent over gRPC)."""
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRequest(f"{what}: not valid text (a lone surrogate)") from None


def check_state_key(key: object, what: str = "key") -> str:
    """A framework-state key: a non-empty string of at most MAX_STATE_KEY_LENGTH bytes in UTF-8, without
    control characters (keys are printed by `tessera framework state` and sorted by code point)."""
    if not isinstance(key, str) or not key:
        raise InvalidRequest(f"{what}: must be a non-empty string")
    length = utf8_length(key, what)
    if length > MAX_STATE_KEY_LENGTH:
        raise InvalidRequest(f"{what}: {length} bytes, over the limit of {MAX_STATE_KEY_LENGTH} bytes per key "
                             "(MAX_STATE_KEY_LENGTH)")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in key):
        raise InvalidRequest(f"{what}: control characters are not allowed, got {key!r}")
    return key


def check_state_value(value: object, what: str = "value") -> int:
    """A framework-state value: text of at most MAX_STATE_VALUE_LENGTH bytes in UTF-8; returns its length."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{what}: must be a string (text; store binary data as base64)")
    length = utf8_length(value, what)
    if length > MAX_STATE_VALUE_LENGTH:
        raise InvalidRequest(f"{what}: {length} bytes, over the limit of {MAX_STATE_VALUE_LENGTH} bytes per value "
                             "(MAX_STATE_VALUE_LENGTH)")
    return length


def check_state_write_size(count: int, length: int) -> None:
    """One WriteValues call: `count` writes of `length` bytes of keys and values in all."""
    if count > MAX_STATE_WRITES:
        raise InvalidRequest(f"writes: {count} writes, over the limit of {MAX_STATE_WRITES} per call (MAX_STATE_WRITES)")
    if length > MAX_STATE_WRITE_LENGTH:
        raise InvalidRequest(f"writes: {length} bytes of keys and values, over the limit of {MAX_STATE_WRITE_LENGTH} "
                             "bytes per call (MAX_STATE_WRITE_LENGTH); write them in several calls")


def check_state_totals(framework_id: str, keys: int, size: int) -> None:
    """A framework's state after a write: `keys` keys of `size` bytes (keys and values) in all."""
    if keys > MAX_STATE_KEYS:
        raise InvalidRequest(f"framework {framework_id}: {keys} keys, over the limit of {MAX_STATE_KEYS} keys per "
                             "framework (MAX_STATE_KEYS); delete some first")
    if size > MAX_STATE_BYTES:
        raise InvalidRequest(f"framework {framework_id}: {size} bytes of keys and values, over the limit of "
                             f"{MAX_STATE_BYTES} bytes per framework (MAX_STATE_BYTES); delete some first")


# ---- per principal and per peer ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MasterLimits:
    """What one principal or one peer may hold or do; the master's `--limit NAME=VALUE` flags.

    `streams_per_peer` / `streams_per_principal` of 0 mean "derived from the gRPC thread pool"
    (`stream_caps`)."""

    frameworks_per_principal: int = 100  # frameworks not removed
    tasks_per_principal: int = 10_000  # tasks the master tracks (not yet completed) over its frameworks
    requests_per_second: float = 1000.0  # calls per principal, sustained
    request_burst: int = 2000  # calls per principal at once
    streams_per_peer: int = 0  # concurrent streams of one client certificate
    streams_per_principal: int = 0  # concurrent streams of one principal
    agent_register_timeout: float = 10.0  # seconds an agent stream may stay silent before its Register


_POSITIVE_INT = {"frameworks_per_principal", "tasks_per_principal", "request_burst"}
_NON_NEGATIVE_INT = {"streams_per_peer", "streams_per_principal"}


def parse_limits(items: Iterable[str], base: MasterLimits | None = None) -> MasterLimits:
    """`NAME=VALUE` items over `base` (the defaults); InvalidRequest names the offending item."""
    known = {f.name for f in fields(MasterLimits)}
    values: dict[str, float | int] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in known:
            raise InvalidRequest(f"--limit {item!r}: expected NAME=VALUE, NAME one of {', '.join(sorted(known))}")
        try:
            number = float(text)
        except ValueError:
            raise InvalidRequest(f"--limit {item!r}: {text!r} is not a number") from None
        if name in _POSITIVE_INT | _NON_NEGATIVE_INT:
            if not number.is_integer() or number < (0 if name in _NON_NEGATIVE_INT else 1):
                raise InvalidRequest(f"--limit {item!r}: must be a whole number "
                                     f"{'>= 0' if name in _NON_NEGATIVE_INT else '>= 1'}")
            values[name] = int(number)
        else:
            if not math.isfinite(number) or number <= 0:
                raise InvalidRequest(f"--limit {item!r}: must be a positive number")
            values[name] = number
    return replace(base or MasterLimits(), **values)  # type: ignore[arg-type]


def check_principal_frameworks(principal: str, live: int, limits: MasterLimits) -> None:
    """A new framework of `principal`, which has `live` frameworks not removed."""
    if live >= limits.frameworks_per_principal:
        raise ResourceExhausted(f"principal {principal or '(none)'} has {live} frameworks, at most "
                                f"{limits.frameworks_per_principal}; tear one down first")


def check_principal_tasks(principal: str, tracked: int, launching: int, limits: MasterLimits) -> None:
    """`launching` new tasks for `principal`, whose frameworks have `tracked` tasks the master tracks."""
    if tracked + launching > limits.tasks_per_principal:
        raise ResourceExhausted(f"principal {principal or '(none)'} has {tracked} tasks; {launching} more would "
                                f"exceed {limits.tasks_per_principal}")


@dataclass(frozen=True, slots=True)
class StreamCaps:
    total: int  # streams of everyone together (the pool minus its reserve)
    per_peer: int
    per_principal: int


def stream_caps(pool_threads: int, limits: MasterLimits) -> StreamCaps:
    """Caps for a server with `pool_threads` gRPC threads: `reserve` threads stay for unary calls."""
    if pool_threads < 2:
        raise InvalidRequest(f"a gRPC pool of {pool_threads} threads leaves none for unary calls")
    reserve = max(1, min(32, pool_threads // 4))
    total = pool_threads - reserve
    default = max(1, total // 2)
    per_peer = limits.streams_per_peer or default
    per_principal = limits.streams_per_principal or default
    for name, value in (("streams_per_peer", per_peer), ("streams_per_principal", per_principal)):
        if value > total:
            raise InvalidRequest(f"--limit {name}={value}: at most {total} with {pool_threads} gRPC threads "
                                 f"({reserve} are kept for unary calls); raise --grpc-workers")
    return StreamCaps(total, per_peer, per_principal)


class StreamSlots:
    """Counts the open streams of each peer and principal against `StreamCaps` (not thread-safe: the
    shell holds a lock around it). `acquire` raises ResourceExhausted naming the cap that was hit."""

    def __init__(self, caps: StreamCaps) -> None:
        self.caps = caps
        self.total = 0
        self.by_peer: dict[str, int] = {}
        self.by_principal: dict[str, int] = {}

    def acquire(self, peer: str, principal: str | None) -> None:
        if self.by_peer.get(peer, 0) >= self.caps.per_peer:
            raise ResourceExhausted(f"this client certificate has {self.caps.per_peer} streams open, the most "
                                    "one peer may hold; close one first")
        if principal is not None and self.by_principal.get(principal, 0) >= self.caps.per_principal:
            raise ResourceExhausted(f"principal {principal} has {self.caps.per_principal} streams open, the "
                                    "most one principal may hold; close one first")
        if self.total >= self.caps.total:
            raise ResourceExhausted(f"this master serves {self.caps.total} streams, its limit; retry later")
        self.total += 1
        self.by_peer[peer] = self.by_peer.get(peer, 0) + 1
        if principal is not None:
            self.by_principal[principal] = self.by_principal.get(principal, 0) + 1

    def release(self, peer: str, principal: str | None) -> None:
        self.total = max(0, self.total - 1)
        _decrement(self.by_peer, peer)
        if principal is not None:
            _decrement(self.by_principal, principal)

    def counts(self) -> Mapping[str, int]:
        return {"total": self.total, "peers": len(self.by_peer), "principals": len(self.by_principal)}


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class RateLimiter:
    """A token bucket per key: `rate` calls per second sustained, `burst` at once. `now` is an input
    (seconds, monotonic); `take` raises ResourceExhausted when the key's bucket is empty."""

    def __init__(self, rate: float, burst: int) -> None:
        if not (math.isfinite(rate) and rate > 0) or burst < 1:
            raise InvalidRequest("a rate limit needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str, now: float) -> None:
        tokens, at = self.buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate)
        if tokens < 1.0:
            self.buckets[key] = (tokens, now)
            raise ResourceExhausted(f"principal {key} makes more than {self.rate:g} calls per second "
                                    f"(bursts of {self.burst}); slow down and retry")
        self.buckets[key] = (tokens - 1.0, now)
