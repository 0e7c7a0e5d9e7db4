"""Prometheus metrics of an agent (`AgentMetrics`), served at `/metrics` (`tessera agent --metrics`).

Read at scrape time from plain callables the agent gives; names, the base collector and the endpoint
(registry, process collectors, HTTP server: `MetricsEndpoint`, the master's too) come from the neutral
`tessera.control_plane.metrics` package (nothing here imports `tessera.control_plane.runtime`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from typing import Any

from prometheus_client.core import Metric

from tessera.control_plane.core.values import TaskState
from tessera.control_plane.metrics.collector import SectionCollector
from tessera.control_plane.metrics.server import MetricsEndpoint
from tessera.control_plane.metrics.specs import (
    DEFAULT_HOST,
    RESOURCE_KINDS,
    family,
    known_states,
    single,
    state_label,
    tessera_version,
)

__all__ = ["AgentMetrics"]


class _AgentCollector(SectionCollector):
    def __init__(self, owner: AgentMetrics, version: str) -> None:
        super().__init__(version)
        self.owner = owner

    def _sections(self) -> Iterator[tuple[str, Callable[[], list[Metric]]]]:
        yield "info", self._info
        yield "resources", self._resources
        yield "tasks", self._tasks
        yield "status_updates", self._updates

    def _info(self) -> list[Metric]:
        o = self.owner
        info = family("tessera_agent_info")
        info.add_metric([o.hostname, o.isolator], 1)
        out: list[Metric] = [info]
        if o.connected is not None:
            out.append(single("tessera_agent_connected", 1 if o.connected() else 0))
        return out

    def _resources(self) -> list[Metric]:
        total, used = dict(self.owner.total()), dict(self.owner.used())
        out: list[Metric] = []
        for values, prefix in ((total, "tessera_agent_capacity"), (used, "tessera_agent_allocated")):
            for kind, suffix, factor in RESOURCE_KINDS:
                fam = family(f"{prefix}_{suffix}")
                fam.add_metric([], float(values.get(kind, 0.0)) * factor)
                out.append(fam)
        return out

    def _tasks(self) -> list[Metric]:
        counts: dict[str, int] = {state_label(s): 0 for s in known_states(TaskState)}
        for state, count in self.owner.tasks_by_state().items():
            label = state_label(state) if isinstance(state, Enum) else str(state).lower().removeprefix("task_")
            counts[label] = counts.get(label, 0) + int(count)
        fam = family("tessera_agent_tasks")
        for label in sorted(counts):
            fam.add_metric([label], counts[label])
        return [fam]

    def _updates(self) -> list[Metric]:
        o = self.owner
        out: list[Metric] = [single("tessera_agent_status_update_retries_total", o.status_update_retries())]
        if o.pending_status_updates is not None:
            out.append(single("tessera_agent_pending_status_updates", o.pending_status_updates()))
        return out


class AgentMetrics(MetricsEndpoint):
    """Metrics of one agent, read from plain callables at scrape time and served like the master's.

    Every callable runs on a scrape thread, not the agent's loop: it must be thread-safe and quick (read
    counters or a snapshot the loop keeps; never block on the loop or on the master).

    - `total()` / `used()`: scalar resources by kind in Tessera's units, e.g.
      `{"cpus": 4, "mem": 8192, "disk": 10240, "gpus": 0}` (mem and disk in MiB; exported in bytes).
      Kinds not given are exported as 0; other kinds are ignored. From a `Resources` bag:
      `lambda: {k: res.scalar(k) for k in ("cpus", "mem", "disk", "gpus")}`.
    - `tasks_by_state()`: counts keyed by `TaskState` (or its name, `"TASK_RUNNING"`); states not given
      are exported as 0.
    - `status_update_retries()`: a count that only grows (re-sends of unacknowledged updates since start).
    - `isolator`: the active isolator's name (`cgroups_v2`, `cgroups_v1`, `rlimits`), an info label.
    - optional: `hostname`, `pending_status_updates()`, `connected()`; families of callables not given are
      left out. The agent's id is deliberately not exported (the endpoint has no authentication).

    Wiring in the agent process (the `--metrics HOST:PORT` flag of `tessera agent`)::

        metrics = AgentMetrics(
            total=lambda: scalars(agent.total_resources), used=lambda: scalars(agent.used_resources()),
            tasks_by_state=agent.task_counts, status_update_retries=lambda: agent.updates.retries,
            isolator=isolator.name, hostname=config.hostname,
            address=config.metrics_address)
        metrics.start()   # raises OSError / ValueError: report it as a startup error (exit 2)
        ...
        metrics.stop()
    """

    def __init__(self, *, total: Callable[[], Mapping[str, float]], used: Callable[[], Mapping[str, float]],
                 tasks_by_state: Callable[[], Mapping[Any, int]], status_update_retries: Callable[[], int],
                 isolator: str, hostname: str = "",
                 pending_status_updates: Callable[[], int] | None = None,
                 connected: Callable[[], bool] | None = None,
                 address: str = f"{DEFAULT_HOST}:0", version: str | None = None) -> None:
        self.total = total
        self.used = used
        self.tasks_by_state = tasks_by_state
        self.status_update_retries = status_update_retries
        self.isolator = isolator
        self.hostname = hostname
        self.pending_status_updates = pending_status_updates
        self.connected = connected
        super().__init__(_AgentCollector(self, version or tessera_version()), address)
