"""Container tasks around `runc run`: what the launcher hands the supervisor, and the steps the supervisor
takes before and after the container (docs/containers.md).

The agent pulls the image (`images.ImageStore`, off its loop) and writes a `ContainerLaunch` into the
task's launch.json. The task's supervisor then, in its own process (so the agent's loop never waits on
a mount, a CNI plugin or runc, and a container outlives a `kill -9` of the agent like any task):
1. makes the task's root filesystem from the cached image (`images.prepare_rootfs`: an overlay, the
   image's layers read-only below, the task's writes in its run directory);
2. for the bridge network, attaches a new network namespace to the agent's CNI bridge with the task's
   port mappings (`network.CniNetwork.attach`), and learns the container's address;
3. writes the OCI runtime spec (`runtime_spec.build_spec`) into the bundle and runs
   `runc --root STATE run --keep --pid-file F --bundle BUNDLE ID` in the foreground: runc's exit status
   is the container's (death by signal N is 128 + N), its stdout and stderr are the task's files in the
   sandbox, and its own errors go to `runc.log` (JSON lines) in the run directory, where `runc_failure`
   finds them. The task is reported running once runc wrote the pid file (the container exists), not when
   runc started. `--keep` leaves the stopped container, and so its cgroup and OOM counters, until
   `teardown`: the supervisor reads how it ended first;
4. after the container ended, `teardown`: `runc delete --force`, CNI DEL and the namespace, the overlay.
   `teardown` is idempotent and works from the run directory alone, so the launcher calls it again when
   it releases the task (a supervisor killed before its own teardown leaves nothing behind).

Killing goes through the task's isolation cgroup like a command task's: the container's processes live
in a cgroup *below* it (`runtime_spec`), SIGTERM reaches them all (the container's PID 1 dies of it only
if it handles it, as in Docker), SIGKILL after the grace period.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tessera.agent.executor.images import Image, ImageConfig, ImagePullError, prepare_rootfs, release_rootfs
from tessera.agent.executor.isolation import IsolationSpec, Mount, parse_mountinfo
from tessera.agent.executor.network import container_id_for
from tessera.agent.executor.runtime_spec import ContainerPlan, SpecError, build_spec, container_argv
from tessera.control_plane.core.containers import hostname_of, network_of
from tessera.control_plane.core.values import ContainerSupport, TaskInfo

log = logging.getLogger(__name__)

BUNDLE_DIR = "bundle"  # in the run directory: config.json (rootfs is `ROOTFS_DIR`)
ROOTFS_DIR = "rootfs"
RUNC_LOG = "runc.log"
PID_FILE = "container.pid"  # runc writes the container's init pid here once it exists
CREATE_TIMEOUT = 60.0  # seconds to wait for runc to create the container before reporting it running
RUNC_TIMEOUT = 30.0  # seconds for `runc delete`


class ContainerError(Exception):
    """The container could not be started; `reason` reads well as a TASK_FAILED message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ContainerLaunch:
    """The container part of launch.json: everything the supervisor needs, nothing it must look up."""

    container_id: str
    runc: str
    state_root: str  # runc's --root: the agent's own, so two agents on one host never share state
    image_rootfs: str  # the image store's unpacked root filesystem (never written)
    image_digest: str
    image_reference: str
    plan: ContainerPlan  # `rootfs` and `netns_path` are filled in by the supervisor
    network_config: dict[str, Any] = field(default_factory=dict)  # NetworkConfig fields (bridge only)
    port_mappings: tuple[tuple[int, int, str], ...] = ()  # (container port, host port, protocol)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["port_mappings"] = [list(m) for m in self.port_mappings]
        return data

    @staticmethod
    def from_json(data: dict[str, Any]) -> ContainerLaunch:
        plan = dict(data["plan"])
        plan["image"] = ImageConfig(**{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in dict(plan.get("image") or {}).items()})
        plan["shell"] = bool(plan.get("shell"))
        for name in ("argv", "additional_gids"):
            plan[name] = tuple(plan.get(name) or ())
        plan["env"] = tuple((str(k), str(v)) for k, v in plan.get("env") or ())
        plan["volumes"] = tuple((str(h), str(c), str(m)) for h, c, m in plan.get("volumes") or ())
        return ContainerLaunch(
            container_id=str(data["container_id"]), runc=str(data["runc"]), state_root=str(data["state_root"]),
            image_rootfs=str(data["image_rootfs"]), image_digest=str(data.get("image_digest", "")),
            image_reference=str(data.get("image_reference", "")),
            plan=ContainerPlan(**plan), network_config=dict(data.get("network_config") or {}),
            port_mappings=tuple((int(c), int(h), str(p)) for c, h, p in data.get("port_mappings") or ()),
        )


@dataclass(frozen=True)
class Started:
    process: subprocess.Popen[bytes]
    ip_addresses: tuple[str, ...] = ()
    container_pid: int = 0  # the container's init process (0: runc ended before creating it)


def _network(launch: ContainerLaunch) -> Any:
    from tessera.agent.executor.network import CniNetwork, NetworkConfig

    config = dict(launch.network_config)
    config["plugin_dirs"] = tuple(config.get("plugin_dirs") or ())
    return CniNetwork(NetworkConfig(**config), host_rules=False)  # the agent set them up (`detect`)


def start(launch: ContainerLaunch, run_dir: Path, stdout: Any, stderr: Any,
          wait: Callable[[float], None] = time.sleep) -> Started:
    """Steps 1-3: the root filesystem, the network, the spec, `runc run` started (not waited for).
    `stdout`/`stderr` are what runc's (and so the container's) fds 1 and 2 become; `wait(seconds)` is
    how to spend the time until runc created the container (the supervisor pumps the task's output
    pipes meanwhile). Raises ContainerError; what was set up before the failure is for `teardown`."""
    plan = launch.plan
    image = Image(digest=launch.image_digest, reference=launch.image_reference, rootfs=Path(launch.image_rootfs),
                  config=plan.image)
    try:
        rootfs = prepare_rootfs(image, run_dir)
    except ImagePullError as exc:
        raise ContainerError(f"cannot make the container's root filesystem: {exc.reason}") from exc
    netns_path = ""
    addresses: tuple[str, ...] = ()
    if plan.network == "bridge":
        from tessera.agent.executor.network import NetworkError, PortMapping

        try:
            attachment = _network(launch).attach(
                launch.container_id, [PortMapping(c, h, p) for c, h, p in launch.port_mappings])
        except NetworkError as exc:
            raise ContainerError(f"cannot attach the container to its network: {exc.reason}") from exc
        netns_path, addresses = attachment.netns_path, tuple(attachment.ip_addresses)
    bundle = run_dir / BUNDLE_DIR
    try:
        spec = build_spec(_with(plan, rootfs=str(rootfs), netns_path=netns_path))
    except SpecError as exc:
        raise ContainerError(str(exc)) from exc
    try:
        bundle.mkdir(mode=0o700, exist_ok=True)
        _write_private(bundle / "config.json", json.dumps(spec, indent=1).encode())
    except OSError as exc:
        raise ContainerError(f"cannot write the container's runtime spec: {exc.strerror or exc}") from exc
    log_path, pid_path = run_dir / RUNC_LOG, run_dir / PID_FILE
    pid_path.unlink(missing_ok=True)
    argv = container_argv(launch.runc, launch.state_root, str(bundle), launch.container_id,
                          extra=("--log", str(log_path), "--log-format", "json"),
                          run_flags=("--keep", "--pid-file", str(pid_path)))
    try:
        process = subprocess.Popen(argv, cwd=str(bundle), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                   start_new_session=True, close_fds=True, env=runc_env())
    except OSError as exc:
        raise ContainerError(f"cannot run {launch.runc}: {exc.strerror or exc}") from exc
    return Started(process, addresses, _await_pid_file(process, pid_path, wait))


def _await_pid_file(process: subprocess.Popen[bytes], pid_path: Path,
                    wait: Callable[[float], None] = time.sleep) -> int:
    """The container's init pid once runc created it (runc writes the pid file then), or 0 when runc
    ended first. Bounded by CREATE_TIMEOUT; a container still being created after that is reported
    running and waited for as usual."""
    deadline = time.monotonic() + CREATE_TIMEOUT
    delay = 0.002
    while time.monotonic() < deadline:
        try:
            text = pid_path.read_text().strip()
        except OSError:
            text = ""
        if text.isdigit():
            return int(text)
        if process.poll() is not None:
            return 0
        wait(delay)
        delay = min(delay * 2, 0.05)
    return 0


def _with(plan: ContainerPlan, **changes: Any) -> ContainerPlan:
    from dataclasses import replace

    return replace(plan, **changes)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def runc_env() -> dict[str, str]:
    """The environment runc runs with (`run`, `exec` of a health check, `delete`): a PATH, nothing else."""
    return {"PATH": os.environ.get("PATH") or "/usr/sbin:/usr/bin:/sbin:/bin"}


def runc_failure(run_dir: Path) -> str:
    """runc's own error, if it failed before or while starting the container (from runc.log)."""
    try:
        lines = (run_dir / RUNC_LOG).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            return str(entry.get("msg") or "")
    return ""


def failure_exit_code(message: str) -> int:
    """A shell's exit status for runc's start failures: 127 (not found), 126 (cannot execute), else 128."""
    if "executable file not found" in message or "no such file or directory" in message:
        return 127
    if "permission denied" in message:
        return 126
    return 128


def teardown(launch: ContainerLaunch, run_dir: Path) -> list[str]:
    """Step 4, idempotent: remove runc's state, the network, the root filesystem. Returns problems."""
    problems: list[str] = []
    try:
        done = subprocess.run([launch.runc, "--root", launch.state_root, "delete", "--force", launch.container_id],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=RUNC_TIMEOUT, env=runc_env())
        err = done.stderr.decode(errors="replace").strip()
        if done.returncode != 0 and "does not exist" not in err and "not exist" not in err:
            problems.append(f"runc delete: {err or done.returncode}")
    except (OSError, subprocess.TimeoutExpired) as exc:
        problems.append(f"runc delete: {exc}")
    remove_cgroup_parents(launch.plan.cgroup_parent)
    if launch.plan.network == "bridge":
        from tessera.agent.executor.network import NetworkError

        try:
            _network(launch).detach(launch.container_id)
        except NetworkError as exc:
            problems.append(exc.reason)
    try:
        release_rootfs(run_dir)
    except OSError as exc:
        problems.append(f"cannot remove the container's root filesystem: {exc}")
    return problems


# ---- cgroups: the container's below the task's isolation cgroup --------------------------------------


def hierarchy_path(directory: str, mounts: list[Mount]) -> str:
    """A cgroup directory as a path from its hierarchy's root (what runc's cgroupsPath names), or "" when
    it lies under no cgroup mount."""
    best: Mount | None = None
    for mount in mounts:
        if mount.fstype not in ("cgroup", "cgroup2"):
            continue
        point = mount.mountpoint.rstrip("/")
        if directory == point or directory.startswith(point + "/"):
            if best is None or len(point) > len(best.mountpoint.rstrip("/")):
                best = mount
    if best is None:
        return ""
    below = directory[len(best.mountpoint.rstrip("/")):].strip("/")
    root = best.root.rstrip("/")
    return f"{root}/{below}" if below else (root or "/")


def cgroup_parent_of(isolation: IsolationSpec, mountinfo: str | None = None) -> str:
    """Where runc nests the container's cgroup: the task's memory cgroup (cgroups v1 and v2); "" without."""
    if not isolation.memory_cgroup or not isolation.kind.startswith("cgroups"):
        return ""
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    return hierarchy_path(isolation.memory_cgroup, parse_mountinfo(text))


def remove_cgroup_parents(cgroup_parent: str, mountinfo: str | None = None) -> None:
    """rmdir the (now empty) task cgroup runc made in the hierarchies the isolator does not use (pids,
    devices, freezer, ...), so a container leaves no empty cgroups behind. Non-empty or missing: left."""
    if not cgroup_parent:
        return
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    for mount in parse_mountinfo(text):
        if mount.fstype not in ("cgroup", "cgroup2"):
            continue
        root = mount.root.rstrip("/")
        if root and not (cgroup_parent == root or cgroup_parent.startswith(root + "/")):
            continue
        directory = Path(mount.mountpoint) / cgroup_parent[len(root):].strip("/")
        if directory == Path(mount.mountpoint):
            continue
        try:
            directory.rmdir()
        except OSError:
            pass


# ---- the agent's side: can it run containers, and the launch of one task ------------------------------


@dataclass(frozen=True)
class ContainerRuntime:
    """An agent's container support, found once at start (`detect`)."""

    runc: str
    version: str  # e.g. "runc 1.1.5"
    state_root: str
    network_config: dict[str, Any] | None  # NetworkConfig fields; None: no bridge network
    network_unavailable: str = ""  # why there is no bridge network
    volume_paths: tuple[str, ...] = ()
    resolv_conf: str = "/etc/resolv.conf"

    def support(self) -> ContainerSupport:
        network = ""
        if self.network_config is not None:
            network = (f"cni bridge {self.network_config.get('bridge')} {self.network_config.get('subnet')}")
        return ContainerSupport(runtime=self.version, network=network, unavailable=self.network_unavailable,
                                volume_paths=self.volume_paths)

    def launch_for(self, info: TaskInfo, image: Image, sandbox: str, uid: int, gid: int,
                   isolation: IsolationSpec) -> ContainerLaunch:
        """The container part of `info`'s launch.json. Raises ContainerError for what only this agent can
        refuse (a bridge network it has not, a volume outside its allowed paths)."""
        container = info.container
        assert container is not None
        network = network_of(container)
        if network == "bridge" and self.network_config is None:
            raise ContainerError(f"this agent has no bridge network ({self.network_unavailable or 'not set up'}); "
                                 "use the host or none network")
        volumes = []
        for v in container.volumes:
            if not any(v.host_path == base or v.host_path.startswith(base.rstrip("/") + "/")
                       for base in self.volume_paths):
                raise ContainerError(f"volume {v.host_path}: not under this agent's allowed volume paths "
                                     f"({', '.join(self.volume_paths) or 'none'})")
            if not os.path.isdir(v.host_path) and not os.path.isfile(v.host_path):
                raise ContainerError(f"volume {v.host_path}: no such file or directory on this agent")
            volumes.append((v.host_path, v.container_path, v.mode or "rw"))
        command = info.command
        if command.value:
            argv: tuple[str, ...] = (("/bin/sh", "-c", command.value) if command.shell
                                     else (command.value, *command.arguments))
        else:
            argv = ()
        env = (("TESSERA_TASK_ID", info.task_id), ("TESSERA_FRAMEWORK_ID", info.framework_id),
               ("TESSERA_AGENT_ID", info.agent_id), *command.environment)
        plan = ContainerPlan(
            rootfs="", sandbox=sandbox, hostname=hostname_of(info), uid=uid, gid=gid, image=image.config,
            argv=argv, shell=command.shell and bool(command.value), env=env, working_dir=command.working_dir, network=network,
            readonly_rootfs=container.readonly_rootfs, volumes=tuple(volumes),
            resolv_conf=self.resolv_conf if os.path.isfile(self.resolv_conf) else "",
            cgroup_parent=cgroup_parent_of(isolation), cpus=isolation.cpus or info.resources.scalar("cpus"),
            memory_limit_bytes=isolation.memory_limit_bytes or int(info.resources.scalar("mem") * 1024 * 1024),
            nofile=_nofile_limit(),
        )
        return ContainerLaunch(
            container_id=container_id_for(info.framework_id, info.task_id), runc=self.runc,
            state_root=self.state_root, image_rootfs=str(image.rootfs), image_digest=image.digest,
            image_reference=image.reference, plan=plan,
            network_config=dict(self.network_config or {}) if network == "bridge" else {},
            port_mappings=tuple((m.container_port, m.host_port, m.protocol or "tcp") for m in container.port_mappings),
        )


CONTAINER_NOFILE = 65536  # what a container may open, at most the agent's own hard limit


def _nofile_limit() -> int:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return CONTAINER_NOFILE if hard == resource.RLIM_INFINITY else min(CONTAINER_NOFILE, hard)


def runc_version(runc: str) -> str:
    """'runc 1.1.5' from `runc --version`; raises OSError when it cannot run."""
    done = subprocess.run([runc, "--version"], capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise OSError(done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}")
    first = done.stdout.decode(errors="replace").splitlines()[0] if done.stdout else ""
    version = first.replace("runc version", "").strip()
    return f"runc {version}" if version else "runc"


def detect(data_dir: Path, *, runc: str = "runc", network: dict[str, Any] | None = None,
           volume_paths: tuple[str, ...] = (), isolation_kind: str = "") -> ContainerRuntime | str:
    """This agent's container runtime, or why it has none (not root, no runc, no cgroups). `network`:
    the NetworkConfig fields for the bridge (None: no bridge network wanted)."""
    import shutil

    if os.geteuid() != 0:
        return "the agent does not run as root (runc and the CNI plugins need root)"
    found = shutil.which(runc)
    if found is None:
        return f"{runc} not found on PATH (install the runc package)"
    try:
        version = runc_version(found)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{found} does not run: {exc}"
    if not isolation_kind.startswith("cgroups"):
        return f"containers need cgroups isolation; this agent isolates with {isolation_kind or 'nothing'}"
    state_root = data_dir / "runc"  # not under the sandboxes: their GC must never see it
    state_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    network_config: dict[str, Any] | None = None
    unavailable = ""
    if network is not None:
        from tessera.agent.executor.network import CniNetwork, NetworkConfig, NetworkError

        try:
            cni = CniNetwork(NetworkConfig(**network))
            unavailable = cni.available() or ""
            if not unavailable:
                cni.prepare_host()  # the guard and masquerade rules, once: supervisors do not check them
        except ValueError as exc:
            unavailable = str(exc)
        except NetworkError as exc:
            unavailable = exc.reason
        if not unavailable:
            network_config = dict(network)
            network_config["plugin_dirs"] = list(network.get("plugin_dirs") or ())
    else:
        unavailable = "no bridge network configured"
    return ContainerRuntime(runc=found, version=version, state_root=str(state_root),
                            network_config=network_config, network_unavailable=unavailable,
                            volume_paths=volume_paths)


def cleanup_orphans(runtime: ContainerRuntime, live_container_ids: set[str]) -> list[str]:
    """At agent start: remove what containers of tasks that are not live left behind (a supervisor
    killed before its teardown) — runc's state under the agent's own state root and the CNI namespaces
    and rules with the agent's own prefix. Returns the container ids cleaned."""
    cleaned: set[str] = set()
    try:
        names = [p.name for p in Path(runtime.state_root).iterdir() if p.is_dir()]
    except OSError:
        names = []
    for name in names:
        if name in live_container_ids:
            continue
        done = subprocess.run([runtime.runc, "--root", runtime.state_root, "delete", "--force", name],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=RUNC_TIMEOUT, env=runc_env())
        if done.returncode == 0:
            cleaned.add(name)
        else:
            log.warning("cannot remove the leftover container %s: %s", name,
                        done.stderr.decode(errors="replace").strip())
    if runtime.network_config is not None:
        from tessera.agent.executor.network import CniNetwork, NetworkConfig

        config = dict(runtime.network_config)
        config["plugin_dirs"] = tuple(config.get("plugin_dirs") or ())
        cleaned.update(CniNetwork(NetworkConfig(**config)).cleanup_orphans(live_container_ids))
    return sorted(cleaned)
