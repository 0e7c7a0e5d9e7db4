"""The tasks service discovery publishes, read from the masters' state (docs/dns.md, docs/load-balancing.md).

A task is *ready* (`is_ready`) when it is TASK_RUNNING and, if it has a health check, its latest status
says healthy (a task not yet checked is not ready: a client is never sent to an instance the agent has not
seen healthy). A task being killed is TASK_KILLING from the moment its agent starts the kill, so it leaves
discovery at once, while it still runs: during its `shutdown_delay_seconds` it drains (the load balancer
and DNS drop it, connections already made finish) before its SIGTERM — the drain sequence of
docs/load-balancing.md. Its address is its agent's: where its host ports are published (a command task's `ports`
resources, a container's port mappings), reachable from outside the container networks. An agent's
address is its hostname when that is an IP address, else the host of its file-service address.

`endpoints_from_state` is the one conversion from a `GetStateResponse` that `tessera dns` and `tessera lb`
share; everything after it is pure (`dns_records`, `haproxy_config`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from tessera.v1 import common_pb2, operator_pb2

__all__ = ["Endpoint", "Port", "agent_address", "dns_label", "endpoints_from_state", "is_ready"]

_INVALID = re.compile(r"[^a-z0-9-]+")
MAX_PORTS_PER_RANGE = 64  # a command task holding a port range publishes at most this many of it


def dns_label(text: str) -> str:
    """`text` as one DNS label: lower case, runs of other characters as one '-', no '-' at either end,
    at most 63 characters ('x' when nothing is left)."""
    label = _INVALID.sub("-", text.lower()).strip("-")[:63].rstrip("-")
    return label or "x"


@dataclass(frozen=True)
class Port:
    number: int
    protocol: str = "tcp"
    name: str = ""


@dataclass(frozen=True)
class Endpoint:
    """One ready task as discovery sees it."""

    task_id: str
    service: str  # the task's name (else its id)
    framework: str  # the framework's name (else its id)
    address: str  # where its ports are published (its agent's address)
    ports: tuple[Port, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()


def agent_address(info: common_pb2.AgentInfo) -> str | None:
    """Where an agent's tasks publish their ports (see the module docstring), or None."""
    candidates = [info.hostname]
    files = getattr(info, "files_address", "")
    if files:
        candidates.append(files.rsplit(":", 1)[0].strip("[]"))
    for candidate in candidates:
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return None


def is_ready(view: operator_pb2.TaskView) -> bool:
    """Whether discovery publishes the task: TASK_RUNNING (not STAGING, STARTING, KILLING or ended) and,
    with a health check, seen healthy in its latest status."""
    if view.state != common_pb2.TASK_RUNNING:
        return False
    has_check = "health_check" in view.task.DESCRIPTOR.fields_by_name and view.task.HasField("health_check")
    status = view.last_status
    return not has_check or bool(status.HasField("healthy") and status.healthy)


def endpoints_from_state(state: operator_pb2.GetStateResponse) -> list[Endpoint]:
    """The ready tasks of a state, with their agent's address, published ports and labels."""
    agents = {a.agent_id: a.info for a in state.agents}
    frameworks = {f.framework_id: f.info.name or f.framework_id for f in state.frameworks}
    out: list[Endpoint] = []
    for view in state.tasks:
        task = view.task
        if not is_ready(view):
            continue
        info = agents.get(task.agent_id)
        address = agent_address(info) if info is not None else None
        if address is None:
            continue
        if task.HasField("container") and task.container.port_mappings:
            ports = [Port(m.host_port, m.protocol or "tcp", m.name) for m in task.container.port_mappings]
        else:
            ports = [Port(p, "tcp") for r in task.resources if r.name == "ports"
                     for span in r.ranges for p in range(span.begin, min(span.end, span.begin + MAX_PORTS_PER_RANGE - 1) + 1)]
        out.append(Endpoint(task_id=task.task_id, service=task.name or task.task_id,
                            framework=frameworks.get(task.framework_id, task.framework_id), address=address,
                            ports=tuple(ports), labels=tuple((lb.key, lb.value) for lb in task.labels)))
    return out
