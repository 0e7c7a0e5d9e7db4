"""What the master checks of a container task before it records the launch (docs/containers.md).

Pure: the task, and what the chosen agent reported about itself, in; `InvalidRequest` (INVALID_ARGUMENT)
naming the field out. Nothing is recorded for a refused launch, and the agent never sees it. What only
the agent can tell (its runtime works, the image exists, a host path exists) ends the task there.

Rules:
- `image` parses as an OCI/Docker reference (`core.images.parse_image_reference`).
- `network` is bridge (also when empty), host or none; port mappings only on the bridge network.
- A port mapping's host port lies inside the task's own `ports` resources (so two tasks on one agent
  never share a host port: that is the ports resource's job); container ports 1..65535; tcp or udp;
  no host port mapped twice for one protocol.
- A volume's paths are absolute, without `..` or NUL; its container path is not `/`, not one of the
  kernel filesystems the runtime mounts (`/proc`, `/sys`, `/dev`) and not over the sandbox mount
  (`SANDBOX_MOUNT`); its host path lies under one of the agent's allowed volume paths (none by default,
  so no volumes until the operator allows some); mode ro or rw.
- `hostname` is one RFC 1123 name of at most 63 characters per label (empty: the task id).
"""

from __future__ import annotations

import re

from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.images import parse_image_reference
from tessera.control_plane.core.values import CONTAINER_NETWORKS, AgentInfo, ContainerInfo, TaskInfo

__all__ = ["SANDBOX_MOUNT", "check_container", "hostname_of", "network_of"]

SANDBOX_MOUNT = "/tessera/sandbox"  # where a container sees its task's sandbox (also $TESSERA_SANDBOX)
_RESERVED_MOUNTS = ("/proc", "/sys", "/dev", SANDBOX_MOUNT)
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
MAX_HOSTNAME = 253
MAX_MAPPINGS = 64
MAX_VOLUMES = 64


def network_of(container: ContainerInfo) -> str:
    """The container's network: an empty name (the wire's default) is the bridge."""
    return container.network or "bridge"


def hostname_of(task: TaskInfo) -> str:
    """The container's hostname: the one asked for, else the task id (cut to the 64 bytes the kernel keeps)."""
    container = task.container
    if container is not None and container.hostname:
        return container.hostname
    return task.task_id.encode()[:64].decode(errors="ignore")


def _absolute(path: object, what: str) -> str:
    if not isinstance(path, str) or not path:
        raise InvalidRequest(f"{what}: must be an absolute path")
    if "\0" in path:
        raise InvalidRequest(f"{what}: must not contain NUL bytes")
    if not path.startswith("/"):
        raise InvalidRequest(f"{what}: must be an absolute path, got the relative path {path!r}")
    if ".." in path.split("/"):
        raise InvalidRequest(f"{what}: must not contain '..', got {path!r}")
    return "/" + "/".join(p for p in path.split("/") if p and p != ".")


def _under(path: str, base: str) -> bool:
    return base == "/" or path == base or path.startswith(base.rstrip("/") + "/")


def check_container(task: TaskInfo, agent: AgentInfo | None, what: str) -> None:
    """Refuse (InvalidRequest) a container task the runtime could not run as asked; a command task passes."""
    container = task.container
    if container is None:
        return
    if not isinstance(container, ContainerInfo):
        raise InvalidRequest(f"{what}.container: must be a ContainerInfo")
    try:
        parse_image_reference(container.image)
    except ValueError as exc:
        raise InvalidRequest(f"{what}.container.image: {exc}") from None
    network = network_of(container)
    if network not in CONTAINER_NETWORKS:
        raise InvalidRequest(f"{what}.container.network: must be one of {', '.join(CONTAINER_NETWORKS)}, "
                             f"got {container.network!r}")
    _check_port_mappings(task, container, network, what)
    _check_volumes(container, agent, what)
    if not isinstance(container.readonly_rootfs, bool):
        raise InvalidRequest(f"{what}.container.readonly_rootfs: must be a bool")
    if container.hostname:
        name = container.hostname
        if len(name) > MAX_HOSTNAME or not all(_LABEL.match(label) for label in name.split(".")):
            raise InvalidRequest(f"{what}.container.hostname: not a valid host name: {name!r} (letters, digits "
                                 "and '-' in dot-separated labels of at most 63 characters)")


def _check_port_mappings(task: TaskInfo, container: ContainerInfo, network: str, what: str) -> None:
    mappings = container.port_mappings
    if not mappings:
        return
    if network != "bridge":
        raise InvalidRequest(f"{what}.container.port_mappings: only a bridge network publishes ports "
                             f"(this container's network is {network})")
    if len(mappings) > MAX_MAPPINGS:
        raise InvalidRequest(f"{what}.container.port_mappings: at most {MAX_MAPPINGS}")
    ports = [interval for (name, _role), intervals in task.resources.ranges if name == "ports"
             for interval in intervals]
    seen: set[tuple[int, str]] = set()
    for i, m in enumerate(mappings):
        where = f"{what}.container.port_mappings[{i}]"
        protocol = m.protocol or "tcp"
        if protocol not in ("tcp", "udp"):
            raise InvalidRequest(f"{where}.protocol: must be tcp or udp, got {m.protocol!r}")
        for name, port in (("container_port", m.container_port), ("host_port", m.host_port)):
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise InvalidRequest(f"{where}.{name}: must be a port number from 1 to 65535, got {port!r}")
        if not any(b <= m.host_port <= e for b, e in ports):
            held = ", ".join(f"{b}-{e}" if b != e else str(b) for b, e in ports) or "none"
            raise InvalidRequest(f"{where}.host_port: {m.host_port} is not one of the task's ports resources "
                                 f"({held}); take host ports from the offer's ports")
        if m.name and not _LABEL.match(m.name):
            raise InvalidRequest(f"{where}.name: not a DNS label: {m.name!r} (letters, digits and '-', at most 63)")
        if (m.host_port, protocol) in seen:
            raise InvalidRequest(f"{where}.host_port: {m.host_port}/{protocol} is mapped twice")
        seen.add((m.host_port, protocol))


def _check_volumes(container: ContainerInfo, agent: AgentInfo | None, what: str) -> None:
    volumes = container.volumes
    if not volumes:
        return
    if len(volumes) > MAX_VOLUMES:
        raise InvalidRequest(f"{what}.container.volumes: at most {MAX_VOLUMES}")
    allowed = [p for p in (agent.containers.volume_paths if agent is not None else ()) if p.startswith("/")]
    targets: set[str] = set()
    for i, v in enumerate(volumes):
        where = f"{what}.container.volumes[{i}]"
        target = _absolute(v.container_path, f"{where}.container_path")
        if target == "/":
            raise InvalidRequest(f"{where}.container_path: cannot mount over the container's root")
        for reserved in _RESERVED_MOUNTS:
            if _under(target, reserved):
                raise InvalidRequest(f"{where}.container_path: {target} is over {reserved}, which the runtime "
                                     "mounts itself")
        if target in targets:
            raise InvalidRequest(f"{where}.container_path: {target} is mounted twice")
        targets.add(target)
        source = _absolute(v.host_path, f"{where}.host_path")
        if not any(_under(source, base) for base in allowed):
            shown = ", ".join(allowed) or "none: the agent allows no volumes (--allowed-volume-paths)"
            raise InvalidRequest(f"{where}.host_path: {source} is not under the agent's allowed volume paths "
                                 f"({shown})")
        if (v.mode or "rw") not in ("ro", "rw"):
            raise InvalidRequest(f"{where}.mode: must be ro or rw, got {v.mode!r}")
