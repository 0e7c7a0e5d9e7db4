"""Agent configuration: the flags, what the machine has, and the checks that run before anything starts.

`AgentConfig` holds the flags as given (text, as an operator typed them). `resolve(config)` checks them
and returns a `ResolvedConfig` with parsed values: the resources to offer (`detect_resources`), the
attributes, the hostname, the sandbox directory. Every problem is a `ConfigError` whose message names
the flag, so `run_agent` can print one line and exit 2 instead of a traceback.

Resources (as in Mesos): cpus = logical CPUs; mem = total memory in MiB minus a reserve for the system
(1 GiB, or half of it on machines with less than 2 GiB); disk = size of the data dir's file system in
MiB minus a reserve (5 GiB, or half below 10 GiB); ports = [31000-32000]. `--resources` replaces any of
these by name and may add others ('gpus:1'). Zero, negative and unparseable quantities are refused.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tessera.agent.executor.fetcher import FetcherConfig
from tessera.agent.executor.output import MAX_KEEP, MIN_MAX_BYTES, LogRotation
from tessera.control_plane import wire
from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import Labels
from tessera.control_plane.tls import ClientSecurity, TlsConfigError

ISOLATION_CHOICES = ("auto", "cgroups_v2", "cgroups_v1", "rlimits")
# How task supervisors start: forked by the fork server (fast), or each as a fresh interpreter.
SUPERVISOR_START_CHOICES = ("fork-server", "interpreter")
CONTAINER_CHOICES = ("auto", "off")
DEFAULT_PORTS = (31000, 32000)
MIB = 1024 * 1024
_ATTRIBUTE_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")


class ConfigError(Exception):
    """A flag or the environment makes it impossible to start; the message names the flag."""


@dataclass(frozen=True)
class AgentConfig:
    masters: tuple[str, ...]
    data_dir: Path
    resources: str = ""  # override text, 'cpus:4;mem:8192;ports:[31000-32000]'
    attributes: str = ""  # 'rack:r1;zone:a'
    hostname: str = ""  # empty: this machine's hostname
    heartbeat_interval: float = 1.0  # until the master's Registered says otherwise
    work_dir: Path | None = None  # sandboxes; None: data_dir/sandboxes
    isolation: str = "auto"
    supervisor_start: str = "fork-server"
    emulated: bool = False  # benchmarks only: see tessera.agent.emulated
    usage_interval: float = 5.0  # seconds between Usage messages
    cgroups_root: str = "tessera"  # name of the cgroup that holds the task cgroups
    status_retry_initial: float = 1.0  # first re-send of an unacknowledged status update
    status_retry_max: float = 30.0
    # Announce BATCHED_MESSAGES: several status updates per message, run_tasks and acks from the master.
    # Off only against a master that predates the capability (docs/protocol.md, AgentLink step 8).
    batch_messages: bool = True
    reconnect_backoff_max: float = 5.0
    metrics_address: str | None = None  # HOST:PORT for Prometheus /metrics; None = off
    # Sandboxes of finished tasks are removed this many seconds after the task ended (0: at once), and
    # sooner, oldest first, when together they hold more than sandbox_gc_max_mib (0: no cap).
    sandbox_gc_delay: float = 3600.0
    sandbox_gc_max_mib: float = 10240.0
    tls_dir: Path | None = None  # ca.pem, cert.pem, key.pem of an agent certificate; None = plaintext
    token: str | None = None  # bearer token, needed only by a master without TLS that checks tokens
    # Container tasks (docs/containers.md): "auto" runs them when runc, the image tools and cgroups are
    # there (the agent says why not otherwise), "off" never.
    containers: str = "auto"
    runc: str = "runc"
    image_store_dir: Path | None = None  # None: data_dir/images
    image_store_max_mib: float = 2048.0
    insecure_registries: tuple[str, ...] = ()  # besides loopback ones: host[:port] reached over plain HTTP
    cni_bridge: str = "tessera0"
    cni_subnet: str = "10.213.64.0/24"
    cni_plugin_dirs: tuple[str, ...] = ("/usr/lib/cni", "/opt/cni/bin")
    allowed_volume_paths: tuple[str, ...] = ()  # host directories container volumes may come from
    # A task's stdout and stderr each rotate at log_max_mib, keeping log_files older files per stream, so
    # a task keeps at most (log_files + 1) * log_max_mib of each on disk (agent/executor/output.py).
    log_max_mib: float = 10.0
    log_files: int = 5
    # The fetcher (docs/fetcher.md): each URI brings at most fetcher_max_mib into the sandbox, a task's
    # URIs are fetched within fetcher_timeout seconds; downloads are cached in fetcher_cache_dir
    # (None: data_dir/fetcher-cache), least recently used out beyond fetcher_cache_max_mib (0: no cache).
    fetcher_max_mib: float = 1024.0
    fetcher_timeout: float = 300.0
    fetcher_cache_dir: Path | None = None
    fetcher_cache_max_mib: float = 2048.0
    # The file service (docs/files.md): HOST:PORT ("off": none); loopback and a free port by default.
    files_address: str = "127.0.0.1:0"
    acl_path: Path | None = None  # the masters' ACL: which principal may read which sandbox (needs tls_dir)

    def __post_init__(self) -> None:
        # Accept lists and plain strings for convenience; the value is a tuple.
        object.__setattr__(self, "masters", tuple(self.masters))
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.work_dir is not None:
            object.__setattr__(self, "work_dir", Path(self.work_dir))
        if self.image_store_dir is not None:
            object.__setattr__(self, "image_store_dir", Path(self.image_store_dir))
        if self.fetcher_cache_dir is not None:
            object.__setattr__(self, "fetcher_cache_dir", Path(self.fetcher_cache_dir))
        if self.acl_path is not None:
            object.__setattr__(self, "acl_path", Path(self.acl_path))
        for name in ("insecure_registries", "cni_plugin_dirs", "allowed_volume_paths"):
            object.__setattr__(self, name, tuple(getattr(self, name)))


@dataclass(frozen=True)
class ResolvedConfig:
    config: AgentConfig
    masters: tuple[str, ...]
    data_dir: Path
    work_dir: Path
    hostname: str
    resources: Resources
    attributes: Labels
    heartbeat_interval: float
    extra: dict[str, str] = field(default_factory=dict)
    security: ClientSecurity | None = None  # how to reach the masters (None: plaintext)
    log_rotation: LogRotation = field(default_factory=LogRotation)  # --log-max-mib, --log-files
    fetcher: FetcherConfig = field(default_factory=FetcherConfig)  # --fetcher-*


def parse_masters(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`tessera.control_plane.wire.parse_masters`, its error a ConfigError naming the flag."""
    try:
        return wire.parse_masters(text)
    except ValueError as exc:
        raise ConfigError(f"--masters: {exc}") from None


def parse_attributes(text: str) -> Labels:
    """'rack:r1;zone:a' -> (('rack', 'r1'), ('zone', 'a')), in the order given."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        key, sep, value = part.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(f"--attributes: cannot parse {part!r}: expected NAME:VALUE")
        if not _ATTRIBUTE_KEY_RE.match(key):
            raise ConfigError(f"--attributes: invalid attribute name {key!r}")
        if key in out:
            raise ConfigError(f"--attributes: attribute {key!r} is given twice")
        if len(value) > 255:
            raise ConfigError(f"--attributes: value of {key!r} is longer than 255 characters")
        out[key] = value
    return tuple(out.items())


def _mem_mib() -> float:
    total = psutil.virtual_memory().total // MIB
    reserve = 1024 if total >= 2048 else total // 2
    return float(max(total - reserve, 1))


def _disk_mib(path: Path) -> float:
    total = shutil.disk_usage(path).total // MIB
    reserve = 5120 if total >= 10240 else total // 2
    return float(max(total - reserve, 1))


def parse_resources_flag(text: str) -> Resources:
    """Parse `--resources`, refusing zero, negative and unparseable quantities with the flag's name."""
    parsed = Resources()
    seen: set[str] = set()
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        try:
            one = Resources.parse(part)
        except InvalidRequest as exc:
            raise ConfigError(f"--resources: {exc.message}") from exc
        if one.is_empty():
            raise ConfigError(f"--resources: {part!r} is zero; leave the resource out instead")
        name = next(iter(one.names()))
        if name in seen:
            raise ConfigError(f"--resources: {name} is given twice")
        seen.add(name)
        parsed = parsed + one
    return parsed


def detect_resources(override_text: str = "", data_dir: Path | str | None = None) -> Resources:
    """What this machine offers: detected cpus, mem, disk, ports, with `override_text` taking precedence
    name by name. `data_dir` is where disk is measured (the current directory when None)."""
    overrides = parse_resources_flag(override_text)
    given = overrides.names()
    items: list[tuple[str, str, float, tuple[tuple[int, int], ...]]] = []
    if "cpus" not in given:
        items.append(("cpus", "", float(psutil.cpu_count(logical=True) or 1), ()))
    if "mem" not in given:
        items.append(("mem", "", _mem_mib(), ()))
    if "disk" not in given:
        items.append(("disk", "", _disk_mib(Path(data_dir) if data_dir is not None else Path.cwd()), ()))
    if "ports" not in given:
        items.append(("ports", "", 0.0, (DEFAULT_PORTS,)))
    return Resources.from_items(items) + overrides


def _check_writable(path: Path, flag: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{flag}: {path} is not a writable directory ({exc.strerror or exc})") from exc


def resolve(config: AgentConfig) -> ResolvedConfig:
    """Check every flag and the data dir; raise ConfigError naming the first bad one."""
    masters = parse_masters(config.masters)
    if config.isolation not in ISOLATION_CHOICES:
        raise ConfigError(f"--isolation: expected one of {', '.join(ISOLATION_CHOICES)}, got {config.isolation!r}")
    if config.supervisor_start not in SUPERVISOR_START_CHOICES:
        raise ConfigError(f"--supervisor-start: expected one of {', '.join(SUPERVISOR_START_CHOICES)}, "
                          f"got {config.supervisor_start!r}")
    for flag, value in (("--heartbeat-interval", config.heartbeat_interval),
                        ("usage_interval", config.usage_interval),
                        ("status_retry_initial", config.status_retry_initial),
                        ("status_retry_max", config.status_retry_max),
                        ("reconnect_backoff_max", config.reconnect_backoff_max)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < 86400):
            raise ConfigError(f"{flag}: expected a positive number of seconds, got {value!r}")
    for flag, value in (("--sandbox-gc-delay", config.sandbox_gc_delay),
                        ("--sandbox-gc-max-mib", config.sandbox_gc_max_mib)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < 1e9):
            raise ConfigError(f"{flag}: expected a non-negative number, got {value!r}")
    if config.status_retry_max < config.status_retry_initial:
        raise ConfigError("status_retry_max: must not be smaller than status_retry_initial")
    if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z", config.cgroups_root):
        raise ConfigError(f"cgroups_root: not a plain directory name: {config.cgroups_root!r}")
    hostname = config.hostname or socket.gethostname()
    if not hostname or len(hostname) > 255 or any(c.isspace() for c in hostname):
        raise ConfigError(f"--hostname: invalid hostname {hostname!r}")
    attributes = parse_attributes(config.attributes)
    data_dir = config.data_dir.expanduser().absolute()
    _check_writable(data_dir, "--data-dir")
    work_dir = (config.work_dir.expanduser().absolute() if config.work_dir is not None
                else data_dir / "sandboxes")
    _check_writable(work_dir, "--work-dir")
    resources = detect_resources(config.resources, data_dir)
    if not os.access(data_dir, os.W_OK):  # e.g. a read-only bind mount that still let mkdir pass
        raise ConfigError(f"--data-dir: {data_dir} is not writable")
    try:
        security = ClientSecurity.from_options(config.tls_dir, config.token)
    except TlsConfigError as exc:
        raise ConfigError(str(exc)) from exc
    check_container_flags(config)
    check_files_flags(config)
    return ResolvedConfig(
        config=config, masters=masters, data_dir=data_dir, work_dir=work_dir, hostname=hostname,
        resources=resources, attributes=attributes, heartbeat_interval=float(config.heartbeat_interval),
        security=security, log_rotation=log_rotation_of(config), fetcher=fetcher_of(config, data_dir),
    )


def _number(flag: str, value: object, low: float, high: float, low_open: bool = False) -> float:
    """`value` as a float within [low, high] (low excluded when `low_open`); ConfigError naming `flag`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{flag}: expected a number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        raise ConfigError(f"{flag}: expected a number {'above' if low_open else 'from'} {low:g} up to {high:g}, "
                          f"got {value!r}")
    return float(value)


def log_rotation_of(config: AgentConfig) -> LogRotation:
    """--log-max-mib (4 KiB at least) and --log-files (0 to 1000) as the supervisors' policy."""
    size = _number("--log-max-mib", config.log_max_mib, MIN_MAX_BYTES / MIB, 1024 * 1024)
    if isinstance(config.log_files, bool) or not isinstance(config.log_files, int) or not 0 <= config.log_files <= MAX_KEEP:
        raise ConfigError(f"--log-files: expected a whole number from 0 to {MAX_KEEP}, got {config.log_files!r}")
    return LogRotation(max_bytes=int(size * MIB), keep=config.log_files)


def fetcher_of(config: AgentConfig, data_dir: Path) -> FetcherConfig:
    """The --fetcher-* flags; the cache directory is made (root's, 0700) unless the cache is off."""
    max_mib = _number("--fetcher-max-mib", config.fetcher_max_mib, 0, 1024 * 1024, low_open=True)
    timeout = _number("--fetcher-timeout", config.fetcher_timeout, 0, 86400, low_open=True)
    cache_mib = _number("--fetcher-cache-max-mib", config.fetcher_cache_max_mib, 0, 1024 * 1024 * 1024)
    cache_dir = ""
    if cache_mib > 0:
        path = (config.fetcher_cache_dir.expanduser().absolute() if config.fetcher_cache_dir is not None
                else data_dir / "fetcher-cache")
        _check_writable(path, "--fetcher-cache-dir")
        os.chmod(path, 0o700)
        cache_dir = str(path)
    return FetcherConfig(max_bytes=int(max_mib * MIB), timeout=timeout, cache_dir=cache_dir,
                         cache_max_bytes=int(cache_mib * MIB))


def check_container_flags(config: AgentConfig) -> None:
    """The container flags, before anything starts: a bad one is a ConfigError naming it."""
    if config.containers not in CONTAINER_CHOICES:
        raise ConfigError(f"--containers: expected one of {', '.join(CONTAINER_CHOICES)}, got {config.containers!r}")
    if isinstance(config.image_store_max_mib, bool) or not 0 < config.image_store_max_mib < 1e9:
        raise ConfigError(f"--image-store-max-mib: expected a positive number, got {config.image_store_max_mib!r}")
    from tessera.agent.executor.network import NetworkConfig

    try:
        NetworkConfig(state_dir="/", bridge=config.cni_bridge, subnet=config.cni_subnet,
                      plugin_dirs=config.cni_plugin_dirs)
    except ValueError as exc:
        flag = "--cni-bridge" if "bridge" in str(exc) else "--cni-subnet" if "subnet" in str(exc) else "--cni-plugin-dir"
        raise ConfigError(f"{flag}: {exc}") from None
    for path in config.allowed_volume_paths:
        if not path.startswith("/") or ".." in path.split("/"):
            raise ConfigError(f"--allowed-volume-paths: {path!r} is not an absolute path without '..'")
    for registry in config.insecure_registries:
        if not re.match(r"^[A-Za-z0-9.\-]+(:\d{1,5})?\Z", registry):
            raise ConfigError(f"--insecure-registry: expected HOST or HOST:PORT, got {registry!r}")


def check_files_flags(config: AgentConfig) -> None:
    """`--files-address` (HOST:PORT, port 0 for a free one, or "off") and `--acl` (needs `--tls-dir`)."""
    address = config.files_address
    if address != "off":
        try:
            wire.split_address(address)
        except ValueError:
            raise ConfigError(f"--files-address: expected HOST:PORT (port 0: a free one) or off, got {address!r}") from None
    if config.acl_path is not None and config.tls_dir is None:
        raise ConfigError("--acl needs --tls-dir: the client certificate is what tells operators, frameworks and "
                          "masters apart")
