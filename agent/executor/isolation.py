"""Isolation of tasks: cgroups v2, cgroups v1, or rlimits plus a memory watchdog.

Theory of operation. The agent (`Isolator.prepare`) creates the task's cgroups and writes its limits
before the task exists, and describes them in an `IsolationSpec` (plain JSON, stored in the checkpoint
and in the sandbox's launch file). The supervisor (`tessera.agent.executor.supervisor`) moves the task's
process into them between fork and exec (`enter`, so not one instruction of the task runs outside its
limits), runs the watchdog when the spec asks for one, and after the task ends asks `limitation` whether
a limit ended it (cgroup OOM counters, or the watchdog's record). The agent removes the cgroups
(`Isolator.cleanup`) once it has read the exit status.

- `CgroupsV2Isolator`: one cgroup per task under `<cgroup2 mount>/<agent's cgroup or root>/<root name>`;
  `cpu.weight` (from 1024 shares per cpu), `cpu.max` (cpus * period), `memory.max`, `memory.swap.max` 0,
  `memory.oom.group` 1 (an OOM kills the whole task, not one random process). OOM: `memory.events`.
- `CgroupsV1Isolator`: a cgroup per task in the cpu and memory hierarchies, under the agent's own cgroup
  in each (so limits imposed on the agent also bound its tasks); `cpu.shares` = 1024 * cpus,
  `cpu.cfs_quota_us` = cpus * `cpu.cfs_period_us`, `memory.limit_in_bytes` (and `memory.memsw.*` when
  swap accounting exists, so swapping cannot bypass the limit). OOM: `oom_kill` in `memory.oom_control`,
  or `memory.failcnt` with a SIGKILL death on older kernels.
- `RlimitIsolator`: no cgroup. RLIMIT_DATA at twice the memory limit is a backstop against runaway
  growth between two samples; the real limit is the supervisor's watchdog thread, which samples the RSS
  of the task's process tree every 0.1 s and kills the tree (SIGKILL to its session) once it exceeds the
  limit, recording why. CPU is not bounded in this mode (said by `describe`).

`detect_isolator(choice)` picks cgroups v2 when a cgroup2 hierarchy with the cpu and memory controllers
can be used, else v1 when the cpu and memory hierarchies are writable, else rlimits; a choice other than
"auto" that cannot be honoured is a ConfigError. Usability is established by creating (and removing) a
probe cgroup with a limit, not by looking at permissions.

This module is imported by the supervisor, so it stays light: no grpc, no agent runtime.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tessera.control_plane.core.resources import Resources

log = logging.getLogger(__name__)

MIB = 1024 * 1024
CPU_SHARES_PER_CPU = 1024
MIN_CPU_SHARES = 2
DEFAULT_CFS_PERIOD_US = 100_000
MIN_CFS_QUOTA_US = 1_000
RLIMIT_BACKSTOP_FACTOR = 2
WATCHDOG_INTERVAL = 0.1
_NAME_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class IsolationUnavailable(Exception):
    """The requested isolation cannot be used on this machine (message says why)."""


@dataclass(frozen=True)
class IsolationSpec:
    """What the supervisor must do for one task; JSON-able."""

    kind: str  # "cgroups_v2", "cgroups_v1", "rlimits"
    cgroups: tuple[str, ...] = ()  # directories whose cgroup.procs the task joins
    memory_cgroup: str = ""  # the cgroup that enforces memory and counts OOM kills
    memory_limit_bytes: int = 0  # 0: no memory limit
    rlimit_data_bytes: int = 0  # RLIMIT_DATA for the task (rlimits only)
    watchdog_rss_bytes: int = 0  # the watchdog's RSS limit (rlimits only)
    cpus: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["cgroups"] = list(self.cgroups)
        return data

    @staticmethod
    def from_json(data: dict[str, Any]) -> IsolationSpec:
        if not data:
            return IsolationSpec(kind="rlimits")
        return IsolationSpec(
            kind=str(data.get("kind", "rlimits")), cgroups=tuple(data.get("cgroups", ())),
            memory_cgroup=str(data.get("memory_cgroup", "")),
            memory_limit_bytes=int(data.get("memory_limit_bytes", 0)),
            rlimit_data_bytes=int(data.get("rlimit_data_bytes", 0)),
            watchdog_rss_bytes=int(data.get("watchdog_rss_bytes", 0)), cpus=float(data.get("cpus", 0.0)),
        )


def container_name(framework_id: str, task_id: str) -> str:
    """A file-system-safe, collision-free name for a task's cgroup."""
    import hashlib

    digest = hashlib.sha1(f"{framework_id}\0{task_id}".encode()).hexdigest()[:10]
    return f"{_NAME_SAFE.sub('_', task_id)[:80]}-{digest}"


def memory_limit_bytes(resources: Resources) -> int:
    return int(resources.scalar("mem") * MIB)


def memory_limit_message(limit_bytes: int, detail: str = "") -> str:
    mib = limit_bytes / MIB
    text = f"memory limit of {mib:g} MiB exceeded; the task was killed"
    return f"{text} ({detail})" if detail else text


# ---- supervisor side: join, watch, ask -------------------------------------------------------------


def enter(spec: IsolationSpec) -> None:
    """Run in the task's process between fork and exec: join the cgroups, set the rlimits."""
    pid = str(os.getpid())
    for directory in spec.cgroups:
        with open(os.path.join(directory, "cgroup.procs"), "w") as f:
            f.write(pid)
    if spec.rlimit_data_bytes > 0:
        resource.setrlimit(resource.RLIMIT_DATA, (spec.rlimit_data_bytes, spec.rlimit_data_bytes))


def _read_counters(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                out[parts[0]] = int(parts[1])
    except OSError:
        pass
    return out


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cgroup_oom_killed(spec: IsolationSpec, died_by_sigkill: bool) -> bool:
    """Did the kernel OOM-kill something in the task's memory cgroup?"""
    if not spec.memory_cgroup:
        return False
    directory = Path(spec.memory_cgroup)
    if spec.kind == "cgroups_v2":
        events = _read_counters(directory / "memory.events")
        return events.get("oom_kill", 0) > 0 or events.get("oom_group_kill", 0) > 0
    # cgroups v1 counts an OOM kill in the victim's own cgroup only (v2 propagates it up): a container's
    # runtime nests one below the task's, so look there too.
    controls = [_read_counters(Path(d) / "memory.oom_control") for d, _, _ in os.walk(directory)]
    if any("oom_kill" in control for control in controls):
        return any(control.get("oom_kill", 0) > 0 for control in controls)
    # Kernels before 4.13 do not count OOM kills: hitting the limit and dying by SIGKILL is the sign.
    failcnt = _read_int(directory / "memory.failcnt") or 0
    return died_by_sigkill and failcnt > 0


def cgroup_pids(directory: str) -> list[int]:
    """The processes in a cgroup and in the cgroups below it (a container's runtime nests its own)."""
    pids: list[int] = []
    for current, subdirs, _ in os.walk(directory):
        try:
            text = Path(current, "cgroup.procs").read_text()
        except OSError:
            subdirs.clear()
            continue
        pids.extend(int(p) for p in text.split() if p.isdigit())
    return pids


def kill_cgroup(directory: str) -> None:
    """SIGKILL every process left in a cgroup (cgroup.kill when the kernel has it)."""
    kill_file = Path(directory, "cgroup.kill")
    if kill_file.exists():
        try:
            kill_file.write_text("1")
            return
        except OSError:
            pass
    for pid in cgroup_pids(directory):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:
            log.warning("cannot kill pid %d left in %s", pid, directory)


class MemoryWatchdog:
    """Samples the RSS of a process tree; kills it (via `kill`) when it exceeds `limit_bytes`.

    Runs in the supervisor, which outlives the agent, so the limit holds while the agent is down."""

    def __init__(self, root_pid: int, limit_bytes: int, kill: Callable[[], None],
                 interval: float = WATCHDOG_INTERVAL) -> None:
        self.root_pid = root_pid
        self.limit_bytes = limit_bytes
        self.kill = kill
        self.interval = interval
        self.tripped = ""  # the message, once the limit was exceeded
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def sample(self) -> int:
        import psutil

        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.sample()
            self.peak_rss = max(self.peak_rss, rss)
            if rss > self.limit_bytes:
                self.tripped = memory_limit_message(
                    self.limit_bytes, f"resident set reached {rss / MIB:.1f} MiB")
                self.kill()
                return
            self._stop.wait(self.interval)


# ---- agent side ------------------------------------------------------------------------------------


class Isolator:
    """Creates and removes the isolation of tasks. Subclasses: one per mechanism."""

    name = "none"

    def prepare(self, container: str, resources: Resources) -> IsolationSpec:
        raise NotImplementedError

    def cleanup(self, spec: IsolationSpec) -> None:
        """Remove what `prepare` made. Processes still inside are killed first."""
        cleanup(spec)

    def describe(self) -> str:
        return self.name


class RlimitIsolator(Isolator):
    name = "rlimits"

    def prepare(self, container: str, resources: Resources) -> IsolationSpec:
        limit = memory_limit_bytes(resources)
        return IsolationSpec(
            kind=self.name, memory_limit_bytes=limit,
            rlimit_data_bytes=limit * RLIMIT_BACKSTOP_FACTOR if limit else 0,
            watchdog_rss_bytes=limit, cpus=resources.scalar("cpus"),
        )

    def describe(self) -> str:
        return "rlimits (RLIMIT_DATA backstop + RSS watchdog; cpu not bounded)"


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def cleanup(spec: IsolationSpec, timeout: float = 2.0) -> None:
    """Remove the cgroups of `spec` (whatever isolator made them), killing what is still inside."""
    deadline = time.monotonic() + timeout
    for directory in spec.cgroups:
        _remove_cgroup(Path(directory), deadline)


def _remove_cgroup(directory: Path, deadline: float) -> None:
    """rmdir `directory`, the cgroups below it first (a container runtime killed before it removed its
    own), killing what is left inside until `deadline`."""
    try:
        below = sorted((Path(p) for p, _, _ in os.walk(directory) if Path(p) != directory),
                       key=lambda p: len(p.parts), reverse=True)
    except OSError:
        below = []
    for child in below:
        _remove_one_cgroup(child, deadline)
    _remove_one_cgroup(directory, deadline)


def _remove_one_cgroup(directory: Path, deadline: float) -> None:
    while True:
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                log.warning("cannot remove cgroup %s: %s", directory, exc)
                return
            kill_cgroup(str(directory))
            time.sleep(0.02)


@dataclass
class CgroupsV1Isolator(Isolator):
    cpu_base: Path
    memory_base: Path
    name: str = field(default="cgroups_v1", init=False)

    def prepare(self, container: str, resources: Resources) -> IsolationSpec:
        cpus = resources.scalar("cpus")
        limit = memory_limit_bytes(resources)
        cpu_dir = self.cpu_base / container
        mem_dir = self.memory_base / container
        cpu_dir.mkdir(parents=True, exist_ok=True)
        mem_dir.mkdir(parents=True, exist_ok=True)
        try:
            if cpus > 0:
                _write(cpu_dir / "cpu.shares", str(max(MIN_CPU_SHARES, int(CPU_SHARES_PER_CPU * cpus))))
                period = _read_int(cpu_dir / "cpu.cfs_period_us") or DEFAULT_CFS_PERIOD_US
                if (cpu_dir / "cpu.cfs_quota_us").exists():
                    _write(cpu_dir / "cpu.cfs_quota_us", str(max(MIN_CFS_QUOTA_US, int(cpus * period))))
            if limit > 0:
                _write(mem_dir / "memory.limit_in_bytes", str(limit))
                memsw = mem_dir / "memory.memsw.limit_in_bytes"
                if memsw.exists():  # only after memory.limit_in_bytes: memsw must never be below it
                    _write(memsw, str(limit))
        except OSError:
            self.cleanup(IsolationSpec(kind=self.name, cgroups=(str(cpu_dir), str(mem_dir))))
            raise
        return IsolationSpec(kind=self.name, cgroups=(str(cpu_dir), str(mem_dir)),
                             memory_cgroup=str(mem_dir), memory_limit_bytes=limit, cpus=cpus)

    def describe(self) -> str:
        return f"cgroups_v1 (cpu: {self.cpu_base}, memory: {self.memory_base})"


@dataclass
class CgroupsV2Isolator(Isolator):
    base: Path
    name: str = field(default="cgroups_v2", init=False)

    def prepare(self, container: str, resources: Resources) -> IsolationSpec:
        cpus = resources.scalar("cpus")
        limit = memory_limit_bytes(resources)
        directory = self.base / container
        directory.mkdir(parents=True, exist_ok=True)
        try:
            if cpus > 0:
                shares = max(MIN_CPU_SHARES, int(CPU_SHARES_PER_CPU * cpus))
                # The kernel's own conversion from v1 shares [2, 262144] to v2 weight [1, 10000].
                weight = 1 + ((shares - 2) * 9999) // 262142
                _write(directory / "cpu.weight", str(max(1, min(10000, weight))))
                _write(directory / "cpu.max",
                       f"{max(MIN_CFS_QUOTA_US, int(cpus * DEFAULT_CFS_PERIOD_US))} {DEFAULT_CFS_PERIOD_US}")
            if limit > 0:
                _write(directory / "memory.max", str(limit))
                if (directory / "memory.swap.max").exists():
                    _write(directory / "memory.swap.max", "0")
                if (directory / "memory.oom.group").exists():
                    _write(directory / "memory.oom.group", "1")
        except OSError:
            self.cleanup(IsolationSpec(kind=self.name, cgroups=(str(directory),)))
            raise
        return IsolationSpec(kind=self.name, cgroups=(str(directory),), memory_cgroup=str(directory),
                             memory_limit_bytes=limit, cpus=cpus)

    def describe(self) -> str:
        return f"cgroups_v2 ({self.base})"


# ---- discovery --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    root: str  # the part of the hierarchy this mount shows
    mountpoint: str
    fstype: str
    options: frozenset[str]


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab and backslash as octal."""
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")


def parse_mountinfo(text: str) -> list[Mount]:
    mounts: list[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        mounts.append(Mount(root=_unescape(fields[3]), mountpoint=_unescape(fields[4]), fstype=rfields[0],
                            options=frozenset(rfields[2].split(","))))
    return mounts


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """'/proc/self/cgroup' -> {controller: path}; the v2 hierarchy is under the key ''."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            out[""] = path
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


def _path_in_mount(mount: Mount, cgroup_path: str) -> Path:
    """Where `cgroup_path` (relative to the hierarchy root) appears under `mount`."""
    root = mount.root.rstrip("/")
    if root and root != "/" and (cgroup_path == root or cgroup_path.startswith(root + "/")):
        cgroup_path = cgroup_path[len(root):]
    elif root and root != "/":
        cgroup_path = "/"  # the agent's cgroup is not visible in this mount: use what is
    return Path(mount.mountpoint) / cgroup_path.lstrip("/")


@dataclass(frozen=True)
class CgroupLayout:
    v2_mount: Mount | None
    v2_self: str
    v1_cpu: Mount | None
    v1_memory: Mount | None
    v1_self: dict[str, str]

    def v1_bases(self, root_name: str) -> tuple[Path, Path] | None:
        if self.v1_cpu is None or self.v1_memory is None:
            return None
        cpu = _path_in_mount(self.v1_cpu, self.v1_self.get("cpu", "/")) / root_name
        mem = _path_in_mount(self.v1_memory, self.v1_self.get("memory", "/")) / root_name
        return cpu, mem

    def v2_candidates(self, root_name: str) -> list[tuple[Path, Path]]:
        """(mount point, base) pairs to try, nested under the agent's own cgroup first."""
        if self.v2_mount is None:
            return []
        mountpoint = Path(self.v2_mount.mountpoint)
        own = _path_in_mount(self.v2_mount, self.v2_self or "/")
        out = [(mountpoint, own / root_name)]
        if own != mountpoint:
            out.append((mountpoint, mountpoint / root_name))
        return out


def discover(mountinfo: str | None = None, proc_cgroup: str | None = None) -> CgroupLayout:
    mountinfo = mountinfo if mountinfo is not None else _read("/proc/self/mountinfo")
    proc_cgroup = proc_cgroup if proc_cgroup is not None else _read("/proc/self/cgroup")
    mounts = parse_mountinfo(mountinfo)
    selfmap = parse_proc_cgroup(proc_cgroup)
    v2 = next((m for m in mounts if m.fstype == "cgroup2"), None)
    cpu = next((m for m in mounts if m.fstype == "cgroup" and "cpu" in m.options), None)
    mem = next((m for m in mounts if m.fstype == "cgroup" and "memory" in m.options), None)
    return CgroupLayout(v2_mount=v2, v2_self=selfmap.get("", "/"), v1_cpu=cpu, v1_memory=mem, v1_self=selfmap)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _enable_v2_controllers(mountpoint: Path, base: Path) -> None:
    """Make cpu and memory available to children of `base`, enabling them on every level on the way."""
    available = set((mountpoint / "cgroup.controllers").read_text().split())
    if not {"cpu", "memory"} <= available:
        raise IsolationUnavailable(f"cgroup2 at {mountpoint} lacks the cpu or memory controller "
                                   f"(has: {' '.join(sorted(available)) or 'none'})")
    chain = [base, *base.parents]
    levels = [p for p in reversed(chain) if p == mountpoint or mountpoint in p.parents]
    for level in levels:
        level.mkdir(exist_ok=True)
        enabled = set((level / "cgroup.subtree_control").read_text().split())
        missing = {"cpu", "memory"} - enabled
        if missing:
            (level / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(missing)))


def _probe(isolator: Isolator) -> None:
    """Create a probe cgroup with a limit and remove it; raises when that is not possible."""
    probe = f"probe-{os.getpid()}-{time.monotonic_ns()}"
    spec = isolator.prepare(probe, Resources.of(cpus=0.1, mem=32))
    isolator.cleanup(spec)


def try_cgroups_v2(layout: CgroupLayout, root_name: str) -> CgroupsV2Isolator:
    if layout.v2_mount is None:
        raise IsolationUnavailable("no cgroup2 hierarchy is mounted")
    errors = []
    for mountpoint, base in layout.v2_candidates(root_name):
        try:
            _enable_v2_controllers(mountpoint, base)
            isolator = CgroupsV2Isolator(base=base)
            _probe(isolator)
            return isolator
        except (OSError, IsolationUnavailable) as exc:
            errors.append(f"{base}: {exc}")
    raise IsolationUnavailable("cgroups v2 unusable: " + "; ".join(errors))


def try_cgroups_v1(layout: CgroupLayout, root_name: str) -> CgroupsV1Isolator:
    bases = layout.v1_bases(root_name)
    if bases is None:
        raise IsolationUnavailable("the cgroup v1 cpu and memory hierarchies are not both mounted")
    cpu_base, mem_base = bases
    try:
        cpu_base.mkdir(parents=True, exist_ok=True)
        mem_base.mkdir(parents=True, exist_ok=True)
        isolator = CgroupsV1Isolator(cpu_base=cpu_base, memory_base=mem_base)
        _probe(isolator)
        return isolator
    except OSError as exc:
        raise IsolationUnavailable(f"cgroups v1 unusable under {cpu_base} and {mem_base}: {exc}") from exc


def detect_isolator(choice: str = "auto", root_name: str = "tessera",
                    layout: CgroupLayout | None = None) -> Isolator:
    """The isolator for `choice` (auto, cgroups_v2, cgroups_v1, rlimits); ConfigError when a named one
    cannot be used here."""
    from tessera.agent.config import ConfigError

    layout = layout or discover()
    if choice == "rlimits":
        return RlimitIsolator()
    if choice == "cgroups_v2":
        try:
            return try_cgroups_v2(layout, root_name)
        except IsolationUnavailable as exc:
            raise ConfigError(f"--isolation cgroups_v2: {exc}") from exc
    if choice == "cgroups_v1":
        try:
            return try_cgroups_v1(layout, root_name)
        except IsolationUnavailable as exc:
            raise ConfigError(f"--isolation cgroups_v1: {exc}") from exc
    if choice != "auto":
        raise ConfigError(f"--isolation: unknown choice {choice!r}")
    reasons = []
    for attempt in (try_cgroups_v2, try_cgroups_v1):
        try:
            return attempt(layout, root_name)
        except IsolationUnavailable as exc:
            reasons.append(str(exc))
    log.info("using rlimits: %s", "; ".join(reasons))
    return RlimitIsolator()
