"""Prometheus metrics of a master (`MasterMetrics`), served at `/metrics`.

What this module owns: the master's collector and its two histograms. The metric names, the endpoint
(registry, process collectors, HTTP server: `MetricsEndpoint`) and the base collector are shared with the
agent and live in `tessera.control_plane.metrics` (the agent's collector is `tessera.agent.metrics`).

Rules kept here:
- Read at scrape time, not on the hot path. State-derived numbers (resources, agents, frameworks, tasks,
  offers, roles, event counts) are computed by a collector when Prometheus scrapes. Under the master's
  state lock (`Master.read_state`), which the apply thread also needs, it only copies references to
  immutable values (15-30 ms at 10k agents and 50k tasks on the 2-core development machine, where
  summing under the lock took ~160 ms); the sums, the Raft status, the event-log marks and the
  exposition are all done outside the lock. Nothing is recomputed on the apply thread.
- Only two things are observed as they happen, and cheaply: the duration of each successful write
  (a write observer, `Master.add_write_observer`, registered at construction and removed by `close`:
  every write of the master's one write pipeline, status updates and acknowledgements included) and the
  duration of each allocation round (polled from `LeaderDuties.last_allocation_seconds`
  and `allocation_rounds`; no hook in leader.py). The poll runs every half tick, and the ticker runs at
  most one round per tick, so the histogram sees every round unless the ticker outruns the poller;
  `tessera_allocator_rounds_total` is read from the duties themselves and is always exact.
- Names, units, labels and the failing-section rule: see `tessera.control_plane.metrics`.

Wiring (the master process does this when `--metrics HOST:PORT` is given)::

    metrics = MasterMetrics(master, duties, address="127.0.0.1:9100")
    metrics.start()          # binds; raises OSError (port in use) or ValueError (bad address)
    ...                      # metrics.port is the bound port (useful with port 0)
    metrics.stop()           # stops the server and the poller, joins their threads, removes the write observer
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import Metric

from tessera.control_plane.core.lifecycle import is_terminal
from tessera.control_plane.core.values import AgentState, FrameworkState, RoleInfo, TaskState
from tessera.control_plane.metrics.collector import SectionCollector
from tessera.control_plane.metrics.server import MetricsEndpoint
from tessera.control_plane.metrics.specs import (
    ALLOCATION_BUCKETS,
    COMMIT_BUCKETS,
    DEFAULT_HOST,
    RESOURCE_KINDS,
    SPECS,
    family,
    known_states,
    single,
    state_label,
    tessera_version,
)

if TYPE_CHECKING:
    from tessera.control_plane.core.state import ClusterState
    from tessera.control_plane.runtime.leader import LeaderDuties
    from tessera.control_plane.runtime.master import Master, WriteOutcome

__all__ = ["MasterMetrics"]


@dataclass
class _StateNumbers:
    """What the collector exports from one capture of the state: plain numbers only."""

    totals: dict[tuple[str, str], int] = field(default_factory=dict)  # (type, kind) -> milli
    role_alloc: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (role, type, kind) -> milli
    role_quota: dict[tuple[str, str, str], int] = field(default_factory=dict)
    role_weight: dict[str, float] = field(default_factory=dict)
    agents: dict[str, int] = field(default_factory=dict)
    frameworks: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, int] = field(default_factory=dict)
    offers: int = 0
    unacknowledged: int = 0
    event_index: int = 0
    event_counts: dict[str, int] = field(default_factory=dict)


_KIND_NAMES = frozenset(kind for kind, _, _ in RESOURCE_KINDS)


def _add_scalars(out: dict[Any, int], key: tuple[str, ...], resources: Any, sign: int = 1) -> None:
    """Add the exported scalar kinds of a Resources bag (every reservation role) into `out`."""
    for (name, _role), milli in resources.scalars:
        if name in _KIND_NAMES:
            k = (*key, name)
            out[k] = out.get(k, 0) + sign * milli


@dataclass(frozen=True)
class _StateCapture:
    """The parts of the state the metrics need, copied under the state lock. Only references to
    immutable values (enums, Resources, frozen infos) and ints: reading them later, outside the lock, is
    a consistent view of one moment."""

    agents: list[tuple[AgentState, Any, Any, Any]]  # (state, total, used, offered)
    frameworks: list[tuple[FrameworkState, tuple[str, ...]]]  # (state, roles)
    tasks: list[tuple[TaskState, str, Any, int]]  # (state, role, resources, unacknowledged updates)
    offers: list[tuple[str, Any]]  # (role, resources)
    roles: dict[str, RoleInfo]
    seq: int
    event_counts: dict[str, int]


def _capture_state(state: ClusterState) -> _StateCapture:
    """Runs under the state lock, which the apply thread needs: copy references, compute nothing."""
    return _StateCapture(
        agents=[(a.state, a.total, a.used, a.offered) for a in state.agents.values()],
        frameworks=[(f.state, f.info.roles) for f in state.frameworks.values()],
        tasks=[(t.state, t.role, t.info.resources, len(t.unacknowledged)) for t in state.tasks.values()],
        offers=[(o.role, o.resources) for o in state.offers.values()],
        roles=dict(state.roles),
        seq=state.seq,
        event_counts=dict(state.event_counts),
    )


_REACHABLE = (AgentState.AGENT_ACTIVE, AgentState.AGENT_DRAINING)


def _state_numbers(c: _StateCapture) -> _StateNumbers:
    """Sums in integer milli-units (exact, as the core keeps them), outside the lock. The pool counts
    reachable agents only and `free` active ones only, as `ClusterState.totals` does."""
    n = _StateNumbers()
    agent_states: dict[AgentState, int] = {}
    for agent_state, total, used, offered in c.agents:
        agent_states[agent_state] = agent_states.get(agent_state, 0) + 1
        if agent_state not in _REACHABLE:
            continue
        _add_scalars(n.totals, ("total",), total)
        _add_scalars(n.totals, ("used",), used)
        _add_scalars(n.totals, ("offered",), offered)
        if agent_state is AgentState.AGENT_ACTIVE:  # free = total - used - offered, exact in milli-units
            _add_scalars(n.totals, ("free",), total)
            _add_scalars(n.totals, ("free",), used, sign=-1)
            _add_scalars(n.totals, ("free",), offered, sign=-1)
    n.agents = {state_label(k): v for k, v in agent_states.items()}
    roles: set[str] = set(c.roles)
    for fw_state, fw_roles in c.frameworks:
        label = state_label(fw_state)
        n.frameworks[label] = n.frameworks.get(label, 0) + 1
        if fw_state is not FrameworkState.FRAMEWORK_REMOVED:
            roles.update(fw_roles)
    task_states: dict[TaskState, int] = {}
    for task_state, role, resources, unacknowledged in c.tasks:
        task_states[task_state] = task_states.get(task_state, 0) + 1
        n.unacknowledged += unacknowledged
        if not is_terminal(task_state):
            roles.add(role)
            _add_scalars(n.role_alloc, (role, "used"), resources)
    n.tasks = {state_label(k): v for k, v in task_states.items()}
    for role, resources in c.offers:
        roles.add(role)
        _add_scalars(n.role_alloc, (role, "offered"), resources)
    n.offers = len(c.offers)
    for role in roles:
        info = c.roles.get(role) or RoleInfo(role=role)
        n.role_weight[role] = info.weight
        _add_scalars(n.role_quota, (role, "guarantee"), info.quota_guarantee)
        if info.quota_limit:
            _add_scalars(n.role_quota, (role, "limit"), info.quota_limit)
    n.event_index = c.seq
    n.event_counts = c.event_counts
    return n


# (the key in `_StateNumbers.totals`, the family prefix): one family per measure and resource kind
_POOL_FAMILIES = (("total", "tessera_master_capacity"), ("used", "tessera_master_allocated"),
                  ("offered", "tessera_master_offered"), ("free", "tessera_master_free"))
# (the table, its key, the family prefix, whether every role gets a sample, 0 when it has none)
_ROLE_FAMILIES: tuple[tuple[Callable[[_StateNumbers], dict[tuple[str, str, str], int]], str, str, bool], ...] = (
    (lambda n: n.role_alloc, "used", "tessera_master_role_allocated", True),
    (lambda n: n.role_alloc, "offered", "tessera_master_role_offered", True),
    (lambda n: n.role_quota, "guarantee", "tessera_master_role_quota_guarantee", True),
    (lambda n: n.role_quota, "limit", "tessera_master_role_quota_limit", False),
)


class _MasterCollector(SectionCollector):
    def __init__(self, master: Master, duties: LeaderDuties | None, version: str) -> None:
        super().__init__(version)
        self.master = master
        self.duties = duties

    def _sections(self) -> Iterator[tuple[str, Callable[[], list[Metric]]]]:
        yield "master", self._master
        yield "state", self._state
        yield "raft", self._raft
        yield "eventlog", self._eventlog
        if self.duties is not None:
            yield "leader", self._leader

    def _master(self) -> list[Metric]:
        ident = self.master.identity
        info = family("tessera_master_info")
        info.add_metric([ident.name, ident.raft_address, ident.grpc_address], 1)
        return [info, single("tessera_master_is_leader", 1 if self.master.is_serving() else 0)]

    def _state(self) -> list[Metric]:
        n = _state_numbers(self.master.read_state(_capture_state))
        out: list[Metric] = []
        for typ, prefix in _POOL_FAMILIES:
            for kind, suffix, factor in RESOURCE_KINDS:
                fam = family(f"{prefix}_{suffix}")
                fam.add_metric([], n.totals.get((typ, kind), 0) / 1000 * factor)
                out.append(fam)
        for values, typ, prefix, always in _ROLE_FAMILIES:
            for kind, suffix, factor in RESOURCE_KINDS:
                fam = family(f"{prefix}_{suffix}")
                for role in sorted(n.role_weight):
                    milli = values(n).get((role, typ, kind))
                    if milli is not None or always:
                        fam.add_metric([role], (milli or 0) / 1000 * factor)
                out.append(fam)
        weight = family("tessera_master_role_weight")
        for role in sorted(n.role_weight):
            weight.add_metric([role], n.role_weight[role])
        out.append(weight)
        for name, enum_type, counts in (("tessera_master_agents", AgentState, n.agents),
                                        ("tessera_master_frameworks", FrameworkState, n.frameworks),
                                        ("tessera_master_tasks", TaskState, n.tasks)):
            fam = family(name)
            for value in known_states(enum_type):
                fam.add_metric([state_label(value)], counts.get(state_label(value), 0))
            out.append(fam)
        out.append(single("tessera_master_offers", n.offers))
        out.append(single("tessera_master_unacknowledged_status_updates", n.unacknowledged))
        out.append(single("tessera_master_event_index", n.event_index))
        events = family("tessera_master_events_total")
        for typ in sorted(n.event_counts):
            events.add_metric([typ], n.event_counts[typ])
        out.append(events)
        return out

    def _raft(self) -> list[Metric]:
        status = self.master.replicator.status()
        return [
            single("tessera_raft_term", status.term),
            single("tessera_raft_commit_index", status.commit_index),
            single("tessera_raft_applied_index", status.last_applied),
            single("tessera_raft_log_entries", status.log_len),
            single("tessera_raft_has_quorum", 1 if status.has_quorum else 0),
            single("tessera_raft_is_leader", 1 if status.is_leader else 0),
            single("tessera_raft_members", len(status.members)),
            single("tessera_raft_members_connected", sum(1 for m in status.members if m.connected)),
        ]

    def _eventlog(self) -> list[Metric]:
        store = self.master.events
        out: list[Metric] = [
            single("tessera_eventlog_last_index", store.last_seq()),
            single("tessera_eventlog_first_index", store.first_seq()),
            single("tessera_eventlog_backlog_records", store.backlog()),
        ]
        dropped = getattr(store, "dropped_records", None)  # the queued stores count them; the port does not
        if isinstance(dropped, int):
            out.append(single("tessera_eventlog_dropped_records_total", dropped))
        return out

    def _leader(self) -> list[Metric]:
        duties = self.duties
        assert duties is not None
        return [
            single("tessera_master_connected_agents", len(duties.agents)),
            single("tessera_master_connected_frameworks", len(duties.frameworks)),
            single("tessera_allocator_rounds_total", duties.allocation_rounds),
        ]


class MasterMetrics(MetricsEndpoint):
    """Metrics of one master: a scrape-time collector over its state, Raft and event log, plus the
    commit-latency and allocation-round histograms. See the module docstring for the wiring."""

    def __init__(self, master: Master, duties: LeaderDuties | None = None, *,
                 address: str = f"{DEFAULT_HOST}:0", version: str | None = None,
                 poll_interval: float | None = None) -> None:
        super().__init__(_MasterCollector(master, duties, version or tessera_version()), address)
        self.master = master
        self.duties = duties
        self.commit_duration = Histogram(
            "tessera_master_commit_duration_seconds", SPECS["tessera_master_commit_duration_seconds"].help,
            buckets=COMMIT_BUCKETS, registry=self.registry)
        self.propose_errors = Counter(
            "tessera_master_propose_errors", SPECS["tessera_master_propose_errors_total"].help,
            labelnames=("error",), registry=self.registry)
        self.allocation_duration = Histogram(
            "tessera_allocator_round_duration_seconds",
            SPECS["tessera_allocator_round_duration_seconds"].help,
            buckets=ALLOCATION_BUCKETS, registry=self.registry)
        tick = duties.settings.tick if duties is not None else 0.1
        self.poll_interval = poll_interval if poll_interval is not None else min(max(tick / 2, 0.005), 0.5)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.master.add_write_observer(self._observe_write)

    # ---- hot-path observations ---------------------------------------------------------------------
    def _observe_write(self, outcome: WriteOutcome) -> None:
        if outcome.error is not None:
            self.propose_errors.labels(type(outcome.error).__name__).inc()
        else:
            self.commit_duration.observe(outcome.seconds)

    def _poll_allocation(self) -> None:
        duties = self.duties
        assert duties is not None
        seen = duties.allocation_rounds
        while not self._stop.wait(self.poll_interval):
            rounds = duties.allocation_rounds
            if rounds != seen:
                seconds = duties.last_allocation_seconds
                seen = rounds
                if math.isfinite(seconds) and seconds >= 0:
                    self.allocation_duration.observe(seconds)

    # ---- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind and serve; start the allocation poller. OSError when the port is taken."""
        super().start()
        if self.duties is not None:
            self._stop.clear()
            self._poller = threading.Thread(target=self._poll_allocation, name="metrics-allocation-poll",
                                            daemon=True)
            self._poller.start()

    def stop(self) -> None:
        """Stop serving, join every thread this started and remove the write observer. Idempotent."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
            self._poller = None
        super().stop()
        self.close()

    def close(self) -> None:
        """Remove the write observer from the master (stop() calls it)."""
        self.master.remove_write_observer(self._observe_write)
