"""The OCI runtime spec of one container task: a pure function from what the agent knows to config.json.

`build_spec(ContainerPlan) -> dict` decides everything runc is told (docs/containers.md):
- Namespaces: pid, mount, uts and ipc always; network unless the task asked for the agent's network
  (`host`): a path to the namespace the CNI bridge plugin set up (`bridge`), or a new empty one (`none`,
  loopback only).
- The process: the task's shell command as it is, or its argv after the image's entrypoint (Docker's
  rule), or with no command the image's entrypoint + command; the image's environment with
  the task's on top plus TESSERA_* and MESOS_SANDBOX pointing at the sandbox mount, the working directory
  (the task's, relative to the sandbox mount; else the image's; else /), the task's user as numeric
  uid/gid, `noNewPrivileges`, Docker's default capability set for root (none for any other user), and
  a file-descriptor limit.
- Mounts: /proc, a tmpfs /dev with devpts, shm and mqueue, sysfs and the cgroup hierarchy read-only, the
  task's sandbox read-write at SANDBOX_MOUNT (stdout and stderr stay there, written by the supervisor),
  the host's resolv.conf read-only when given, then the volumes (bind, ro or rw) in the order given.
- cgroups: the container's processes go to a cgroup *below* the task's isolation cgroup (`cgroup_parent`),
  so the limits the command isolator set on that cgroup (cpu shares and quota, memory and swap) hold for
  the container unchanged, and its OOM counters are the ones the supervisor already reads. Without an
  isolation cgroup (rlimits), the spec carries the limits itself and runc makes the cgroup.
- Masked and read-only paths as runc's default spec has them; devices denied but the standard ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tessera.agent.executor.images import ImageConfig
from tessera.control_plane.core.containers import SANDBOX_MOUNT

__all__ = ["DEFAULT_CAPABILITIES", "ContainerPlan", "SpecError", "build_spec", "container_argv"]

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NOFILE_LIMIT = 1024  # the default open-file limit when the plan names none
CPU_SHARES_PER_CPU = 1024
CFS_PERIOD_US = 100_000
MIB = 1024 * 1024

# Docker's default set (moby's oci/caps/defaults.go lists the same fourteen).
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

_MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
)
_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


@dataclass(frozen=True)
class ContainerPlan:
    """Everything `build_spec` needs, decided by the agent and the supervisor (paths are the host's)."""

    rootfs: str
    sandbox: str  # the task's sandbox on the host, mounted at SANDBOX_MOUNT
    hostname: str
    uid: int
    gid: int
    image: ImageConfig = field(default_factory=ImageConfig)
    argv: tuple[str, ...] = ()  # the task's command; empty: the image's entrypoint + cmd
    shell: bool = False  # argv is `/bin/sh -c COMMAND`, run as it is; else Docker's rule (entrypoint + argv)
    env: tuple[tuple[str, str], ...] = ()  # the task's environment (over the image's)
    working_dir: str = ""  # relative to the sandbox mount; empty: the image's
    additional_gids: tuple[int, ...] = ()
    network: str = "bridge"  # bridge | host | none
    netns_path: str = ""  # bridge: the namespace the CNI plugins configured
    readonly_rootfs: bool = False
    volumes: tuple[tuple[str, str, str], ...] = ()  # (host path, container path, "ro" | "rw")
    resolv_conf: str = ""  # a host file to mount at /etc/resolv.conf (read-only); empty: none
    cgroup_parent: str = ""  # the isolation cgroup, relative to the hierarchy root; empty: none
    cgroup_name: str = "ctr"
    cpus: float = 0.0  # used only without a cgroup parent
    memory_limit_bytes: int = 0  # used only without a cgroup parent
    nofile: int = NOFILE_LIMIT  # RLIMIT_NOFILE (soft and hard); the agent keeps it within its own hard limit


class SpecError(ValueError):
    """The plan cannot become a runnable container (no command at all); the message says why."""


def process_args(plan: ContainerPlan) -> list[str]:
    """A shell command runs as it is; an argv replaces the image's Cmd after its Entrypoint (Docker's rule,
    `ImageConfig.process_args`); no command runs the image's Entrypoint + Cmd."""
    if plan.argv and plan.shell:
        return list(plan.argv)
    args = list(plan.image.process_args(plan.argv))
    if not args:
        raise SpecError("the task has no command and its image names none (no Entrypoint or Cmd)")
    return args


def _environment(plan: ContainerPlan) -> list[str]:
    env: dict[str, str] = {}
    for item in plan.image.env:
        name, sep, value = item.partition("=")
        if sep and name:
            env[name] = value
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(dict(plan.env))
    env.update({"HOME": env.get("HOME") or SANDBOX_MOUNT, "TESSERA_SANDBOX": SANDBOX_MOUNT,
                "MESOS_SANDBOX": SANDBOX_MOUNT, "HOSTNAME": plan.hostname})
    return [f"{k}={v}" for k, v in env.items()]


def _cwd(plan: ContainerPlan) -> str:
    if plan.working_dir:
        return f"{SANDBOX_MOUNT}/{plan.working_dir.strip('/')}".rstrip("/")
    if plan.image.working_dir.startswith("/"):
        return plan.image.working_dir
    return "/"


def _mounts(plan: ContainerPlan) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        {"destination": SANDBOX_MOUNT, "type": "bind", "source": plan.sandbox, "options": ["rbind", "rw"]},
    ]
    if plan.resolv_conf and plan.network != "none":
        mounts.append({"destination": "/etc/resolv.conf", "type": "bind", "source": plan.resolv_conf,
                       "options": ["rbind", "ro"]})
    for host_path, container_path, mode in plan.volumes:
        mounts.append({"destination": container_path, "type": "bind", "source": host_path,
                       "options": ["rbind", "ro" if mode == "ro" else "rw"]})
    return mounts


def _namespaces(plan: ContainerPlan) -> list[dict[str, str]]:
    spaces = [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
    if plan.network == "bridge":
        if not plan.netns_path:
            raise SpecError("a bridge-network container needs the network namespace its plugins set up")
        spaces.append({"type": "network", "path": plan.netns_path})
    elif plan.network == "none":
        spaces.append({"type": "network"})
    return spaces


def _resources(plan: ContainerPlan) -> dict[str, Any]:
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if plan.cgroup_parent:
        return resources  # the isolation cgroup above holds the limits
    if plan.memory_limit_bytes > 0:
        resources["memory"] = {"limit": plan.memory_limit_bytes}
    if plan.cpus > 0:
        resources["cpu"] = {"shares": max(2, int(CPU_SHARES_PER_CPU * plan.cpus)),
                            "quota": max(1000, int(plan.cpus * CFS_PERIOD_US)), "period": CFS_PERIOD_US}
    return resources


def build_spec(plan: ContainerPlan) -> dict[str, Any]:
    """config.json for runc (OCI runtime spec 1.0). Raises SpecError when there is nothing to run."""
    caps = list(DEFAULT_CAPABILITIES) if plan.uid == 0 else []
    cgroups_path = (f"{plan.cgroup_parent.rstrip('/')}/{plan.cgroup_name}" if plan.cgroup_parent
                    else "")
    linux: dict[str, Any] = {
        "namespaces": _namespaces(plan),
        "resources": _resources(plan),
        "maskedPaths": list(_MASKED_PATHS),
        "readonlyPaths": list(_READONLY_PATHS),
    }
    if cgroups_path:
        linux["cgroupsPath"] = cgroups_path
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": plan.uid, "gid": plan.gid, "additionalGids": list(plan.additional_gids)},
            "args": process_args(plan),
            "env": _environment(plan),
            "cwd": _cwd(plan),
            "capabilities": {"bounding": list(DEFAULT_CAPABILITIES), "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": plan.nofile, "soft": plan.nofile}],
            "noNewPrivileges": True,
        },
        "root": {"path": plan.rootfs, "readonly": plan.readonly_rootfs},
        "hostname": plan.hostname,
        "mounts": _mounts(plan),
        "linux": linux,
    }


def container_argv(runc: str, state_root: str, bundle: str, container_id: str,
                   extra: Sequence[str] = (), run_flags: Sequence[str] = ()) -> list[str]:
    """The command that runs the container in the foreground: its exit status is the task's. `extra`
    are runc's global flags, `run_flags` those of `runc run`."""
    return [runc, "--root", state_root, *extra, "run", *run_flags, "--bundle", bundle, container_id]
