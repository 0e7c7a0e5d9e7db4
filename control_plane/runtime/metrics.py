"""Prometheus metrics of masters (`MasterMetrics`) and agents (`AgentMetrics`), each served at `/metrics`.

What this module owns: the metric names (the `MASTER_METRICS` / `AGENT_METRICS` tables are the single list
of what is exported; `ops/prometheus/alerts.yml` is checked against them), the collectors, and one small
HTTP server per process (`MetricsServer`) bound to its own HOST:PORT, 127.0.0.1 by default.

Rules kept here:
- Read at scrape time, not on the hot path. State-derived numbers (resources, agents, frameworks, tasks,
  offers, roles, event counts) are computed by a collector when Prometheus scrapes. Under the master's
  state lock (`Master.read_state`), which the apply thread also needs, it only copies references to
  immutable values (15-30 ms at 10k agents and 50k tasks on the 2-core development machine, where
  summing under the lock took ~160 ms); the sums, the Raft status, the event-log marks and the
  exposition are all done outside the lock. Nothing is recomputed on the apply thread.
- Only two things are observed as they happen, and cheaply: the duration of each successful write
  (a write observer, `Master.add_write_observer`, registered at construction and removed by `close`:
  every write of the master's one write pipeline, status updates and acknowledgements included) and the duration of each allocation round (polled from `LeaderDuties.last_allocation_seconds`
  and `allocation_rounds`; no hook in leader.py). The poll runs every half tick, and the ticker runs at
  most one round per tick, so the histogram sees every round unless the ticker outruns the poller;
  `tessera_allocator_rounds_total` is read from the duties themselves and is always exact.
- Names follow `tessera_<subsystem>_<name>_<unit>`: base units (seconds, bytes; `mem` and `disk` are
  MiB in resources and exported as bytes = MiB x 2^20), `_total` on counters, dimensions as labels, and
  no unbounded labels (no task, offer or framework ids). State labels are the enum names without their
  prefix, in lower case (`TASK_RUNNING` -> `running`).
- A section that fails to collect is skipped, logged and counted in
  `tessera_metrics_collect_errors_total{section}`; a scrape never fails as a whole.

Wiring (the master process does this when `--metrics HOST:PORT` is given)::

    metrics = MasterMetrics(master, duties, address="127.0.0.1:9100")
    metrics.start()          # binds; raises OSError (port in use) or ValueError (bad address)
    ...                      # metrics.port is the bound port (useful with port 0)
    metrics.stop()           # stops the server and the poller, joins their threads, removes the observer
"""

from __future__ import annotations

import logging
import math
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, Literal
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import make_wsgi_app
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from control_plane.core.lifecycle import is_terminal
from control_plane.core.values import AgentState, FrameworkState, RoleInfo, TaskState

if TYPE_CHECKING:
    from control_plane.core.state import ClusterState
    from control_plane.runtime.leader import LeaderDuties
    from control_plane.runtime.master import Master, WriteOutcome

log = logging.getLogger(__name__)

__all__ = [
    "AGENT_METRICS",
    "MASTER_METRICS",
    "METRIC_NAMES",
    "AgentMetrics",
    "MasterMetrics",
    "MetricSpec",
    "MetricsServer",
    "parse_address",
    "sample_names",
]

MIB = 2**20
DEFAULT_HOST = "127.0.0.1"
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ALLOCATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                      1.0, 2.5, 5.0)

# Resource kinds exported, with the factor from Tessera's unit to the exported base unit.
RESOURCE_KINDS: tuple[tuple[str, str, float], ...] = (
    ("cpus", "cpus", 1.0),
    ("mem", "mem_bytes", float(MIB)),
    ("disk", "disk_bytes", float(MIB)),
    ("gpus", "gpus", 1.0),
)


# ---- the names ---------------------------------------------------------------------------------------
Kind = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric family. `name` is what a PromQL query uses (counters end in `_total`;
    a histogram also exposes `name_bucket`, `name_sum` and `name_count`)."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()


def _resource_specs(prefix: str, what: str, labels: tuple[str, ...], types: str) -> list[MetricSpec]:
    unit_note = {"cpus": "CPUs", "mem_bytes": "memory, bytes", "disk_bytes": "disk, bytes", "gpus": "GPUs"}
    return [MetricSpec(f"{prefix}_{suffix}", "gauge", f"{what} ({unit_note[suffix]}); type is {types}.", labels)
            for _, suffix, _ in RESOURCE_KINDS]


_COMMON: tuple[MetricSpec, ...] = (
    MetricSpec("tessera_build_info", "gauge", "Always 1; the Tessera version in a label.", ("version",)),
    MetricSpec("tessera_metrics_collect_errors_total", "counter",
               "Scrapes in which a section of the metrics could not be collected (it was left out).",
               ("section",)),
)

MASTER_METRICS: tuple[MetricSpec, ...] = (
    *_COMMON,
    MetricSpec("tessera_master_info", "gauge", "Always 1; this master's identity in labels.",
               ("name", "raft_address", "grpc_address")),
    MetricSpec("tessera_master_is_leader", "gauge",
               "1 while this master is the serving leader (its LeaderElected barrier is applied), else 0."),
    *_resource_specs("tessera_master_resources", "Scalar resources over reachable agents", ("type",),
                     "total, used (non-terminal tasks), offered (live offers) or free (offerable, active "
                     "agents only)"),
    *_resource_specs("tessera_master_role_resources", "Resources allocated to a role", ("role", "type"),
                     "used (non-terminal tasks launched from the role's offers) or offered"),
    *_resource_specs("tessera_master_role_quota", "Quota of a role", ("role", "type"),
                     "guarantee or limit (limit only when one is set)"),
    MetricSpec("tessera_master_role_weight", "gauge", "DRF weight of a role (1 unless set).", ("role",)),
    MetricSpec("tessera_master_agents", "gauge", "Agents known to the replicated state, by state.", ("state",)),
    MetricSpec("tessera_master_frameworks", "gauge", "Frameworks known to the replicated state, by state.",
               ("state",)),
    MetricSpec("tessera_master_tasks", "gauge",
               "Tasks in the live task table, by state: every non-terminal task, and terminal ones until "
               "their last status update is acknowledged.", ("state",)),
    MetricSpec("tessera_master_offers", "gauge", "Outstanding (live) offers."),
    MetricSpec("tessera_master_unacknowledged_status_updates", "gauge",
               "Status updates recorded but not yet acknowledged by their framework."),
    MetricSpec("tessera_master_connected_agents", "gauge",
               "Agent streams open on this master (leader soft state; 0 on followers)."),
    MetricSpec("tessera_master_connected_frameworks", "gauge",
               "Framework streams open on this master (leader soft state; 0 on followers)."),
    MetricSpec("tessera_master_event_index", "gauge", "Index (seq) of the last event applied on this master."),
    MetricSpec("tessera_master_events_total", "counter",
               "Events applied to the replicated state since the cluster was created, by event type "
               "(replicated: the same on every master once applied).", ("type",)),
    MetricSpec("tessera_master_commit_duration_seconds", "histogram",
               "Successful writes on this master (every write: requests, status updates, acknowledgements, "
               "leader duties): decide, group commit through Raft and local apply."),
    MetricSpec("tessera_master_propose_errors_total", "counter",
               "Writes that failed, by error class (NotLeader, Unavailable, InvalidRequest...).",
               ("error",)),
    MetricSpec("tessera_allocator_round_duration_seconds", "histogram",
               "Allocation rounds on this master (snapshot under the state lock plus the allocator)."),
    MetricSpec("tessera_allocator_rounds_total", "counter", "Allocation rounds run by this master process."),
    MetricSpec("tessera_raft_term", "gauge", "Current Raft term as this master knows it."),
    MetricSpec("tessera_raft_commit_index", "gauge", "Raft commit index as this master knows it."),
    MetricSpec("tessera_raft_applied_index", "gauge", "Last Raft index applied on this master."),
    MetricSpec("tessera_raft_log_entries", "gauge", "Raft entries retained in the log since the last compaction."),
    MetricSpec("tessera_raft_has_quorum", "gauge",
               "1 when a majority of voting members is connected from this master's point of view."),
    MetricSpec("tessera_raft_is_leader", "gauge",
               "1 when Raft says this master leads (it serves once its barrier is applied)."),
    MetricSpec("tessera_raft_members", "gauge", "Voting members of the quorum, this master included."),
    MetricSpec("tessera_raft_members_connected", "gauge",
               "Members with a live Raft connection from this master, this master included."),
    MetricSpec("tessera_eventlog_last_index", "gauge", "Highest event index stored in this master's event log."),
    MetricSpec("tessera_eventlog_first_index", "gauge", "First event index the event log still keeps."),
    MetricSpec("tessera_eventlog_backlog_records", "gauge",
               "Records (events, spans, snapshots) queued for the event-log writer and not stored yet."),
    MetricSpec("tessera_eventlog_dropped_records_total", "counter",
               "Records the event-log writer could not store since this master started (history has holes)."),
)

AGENT_METRICS: tuple[MetricSpec, ...] = (
    *_COMMON,
    # no agent id anywhere in the agent's metrics: the endpoint is unauthenticated, and an agent id is what
    # an agent presents to take its place back after a reconnect
    MetricSpec("tessera_agent_info", "gauge", "Always 1; the agent's hostname and active isolator in labels.",
               ("hostname", "isolator")),
    *_resource_specs("tessera_agent_resources", "Resources of this agent", ("type",),
                     "total (reported to the master) or used (by its non-terminal tasks)"),
    MetricSpec("tessera_agent_tasks", "gauge", "Tasks this agent knows, by state.", ("state",)),
    MetricSpec("tessera_agent_status_update_retries_total", "counter",
               "Status updates the agent re-sent because no acknowledgement came in time."),
    MetricSpec("tessera_agent_pending_status_updates", "gauge",
               "Status updates checkpointed and not yet acknowledged by the master (when wired)."),
    MetricSpec("tessera_agent_connected", "gauge", "1 while registered with a serving leader (when wired)."),
)


def sample_names(specs: Iterable[MetricSpec]) -> frozenset[str]:
    """Every series name the specs expose, as PromQL sees them (histograms with their suffixes)."""
    out: set[str] = set()
    for spec in specs:
        if spec.kind == "histogram":
            out.update(f"{spec.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            out.add(spec.name)
    return frozenset(out)


METRIC_NAMES: frozenset[str] = sample_names(MASTER_METRICS) | sample_names(AGENT_METRICS)

_SPECS = {spec.name: spec for spec in (*MASTER_METRICS, *AGENT_METRICS)}


def _family(name: str) -> GaugeMetricFamily | CounterMetricFamily:
    spec = _SPECS[name]
    if spec.kind == "gauge":
        return GaugeMetricFamily(name, spec.help, labels=spec.labels or None)
    if spec.kind == "counter":
        return CounterMetricFamily(name, spec.help, labels=spec.labels or None)
    raise ValueError(f"{name} is a {spec.kind}; build it with prometheus_client directly")


def _single(name: str, value: float) -> GaugeMetricFamily | CounterMetricFamily:
    fam = _family(name)
    fam.add_metric([], value)
    return fam


def state_label(value: Enum) -> str:
    """`TASK_RUNNING` -> `running`, `AGENT_ACTIVE` -> `active`, `FRAMEWORK_CONNECTED` -> `connected`."""
    name = value.name
    for prefix in ("TASK_", "AGENT_", "FRAMEWORK_"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return name.lower()


def _known(enum_type: type[Enum]) -> list[Enum]:
    return [v for v in enum_type if not v.name.endswith("_UNKNOWN")]


def tessera_version() -> str:
    try:
        from importlib.metadata import version

        return version("tessera")
    except Exception:  # noqa: BLE001 - running from a tree that is not installed
        return "unknown"


# ---- the HTTP server ---------------------------------------------------------------------------------
def parse_address(address: str) -> tuple[str, int]:
    """'HOST:PORT' (IPv6 as '[::1]:PORT') -> (host, port); port 0 picks a free port. Raises ValueError."""
    host, sep, port_text = address.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port out of range in {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


class _QuietHandler(WSGIRequestHandler):
    timeout = 10.0  # a stalled client cannot hold a request thread (and so `stop`) for long

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass  # one line per scrape would drown the master's log


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = False  # request threads are joined by server_close: nothing outlives `stop`
    block_on_close = True
    allow_reuse_address = True


class MetricsServer:
    """Serves one registry's text exposition at `/metrics` on its own threads."""

    def __init__(self, registry: CollectorRegistry, address: str = f"{DEFAULT_HOST}:0") -> None:
        self.registry = registry
        self.requested = address
        self.host, self._requested_port = parse_address(address)
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._httpd is not None:
            raise RuntimeError("metrics server already started")
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/metrics":
                return metrics_app(environ, start_response)  # type: ignore[no-any-return]
            if path == "/":
                start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
                return [b"Tessera metrics: GET /metrics\n"]
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found; metrics are at /metrics\n"]

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_class = type("_MetricsHTTPServer", (_Server,), {"address_family": family})
        self._httpd = make_server(self.host, self._requested_port, app, server_class, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"metrics-http-{self.port}", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("metrics server not started")
        return int(self._httpd.server_port)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        httpd.shutdown()  # returns once serve_forever has exited
        httpd.server_close()  # joins in-flight request threads
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = self._thread = None


# ---- collectors shared by masters and agents ------------------------------------------------------------
class _Collector(Collector):
    """Base: runs sections, skipping and counting the ones that raise."""

    def __init__(self, version: str) -> None:
        self.version = version
        self._errors: dict[str, int] = {}
        self._errors_lock = threading.Lock()

    def _sections(self) -> Iterator[tuple[str, Callable[[], list[Metric]]]]:
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        build = GaugeMetricFamily("tessera_build_info", _SPECS["tessera_build_info"].help, labels=["version"])
        build.add_metric([self.version], 1)
        yield build
        for section, fn in self._sections():
            try:
                families = fn()
            except Exception:  # noqa: BLE001 - one broken section must not fail the scrape
                log.warning("metrics section %s failed", section, exc_info=True)
                with self._errors_lock:
                    self._errors[section] = self._errors.get(section, 0) + 1
                continue
            yield from families
        errors = _family("tessera_metrics_collect_errors_total")
        with self._errors_lock:
            for section, count in sorted(self._errors.items()):
                errors.add_metric([section], count)
        yield errors


# ---- masters ---------------------------------------------------------------------------------------------
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


class _MasterCollector(_Collector):
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
        info = _family("tessera_master_info")
        info.add_metric([ident.name, ident.raft_address, ident.grpc_address], 1)
        return [info, _single("tessera_master_is_leader", 1 if self.master.is_serving() else 0)]

    def _state(self) -> list[Metric]:
        n = _state_numbers(self.master.read_state(_capture_state))
        out: list[Metric] = []
        for kind, suffix, factor in RESOURCE_KINDS:
            fam = _family(f"tessera_master_resources_{suffix}")
            for typ in ("total", "used", "offered", "free"):
                fam.add_metric([typ], n.totals.get((typ, kind), 0) / 1000 * factor)
            out.append(fam)
        for prefix, values, types in (("tessera_master_role_resources", n.role_alloc, ("used", "offered")),
                                      ("tessera_master_role_quota", n.role_quota, ("guarantee", "limit"))):
            for kind, suffix, factor in RESOURCE_KINDS:
                fam = _family(f"{prefix}_{suffix}")
                for role in sorted(n.role_weight):
                    for typ in types:
                        milli = values.get((role, typ, kind))
                        if milli is not None or typ in ("used", "offered", "guarantee"):
                            fam.add_metric([role, typ], (milli or 0) / 1000 * factor)
                out.append(fam)
        weight = _family("tessera_master_role_weight")
        for role in sorted(n.role_weight):
            weight.add_metric([role], n.role_weight[role])
        out.append(weight)
        for name, enum_type, counts in (("tessera_master_agents", AgentState, n.agents),
                                        ("tessera_master_frameworks", FrameworkState, n.frameworks),
                                        ("tessera_master_tasks", TaskState, n.tasks)):
            fam = _family(name)
            for value in _known(enum_type):
                fam.add_metric([state_label(value)], counts.get(state_label(value), 0))
            out.append(fam)
        out.append(_single("tessera_master_offers", n.offers))
        out.append(_single("tessera_master_unacknowledged_status_updates", n.unacknowledged))
        out.append(_single("tessera_master_event_index", n.event_index))
        events = _family("tessera_master_events_total")
        for typ in sorted(n.event_counts):
            events.add_metric([typ], n.event_counts[typ])
        out.append(events)
        return out

    def _raft(self) -> list[Metric]:
        status = self.master.replicator.status()
        return [
            _single("tessera_raft_term", status.term),
            _single("tessera_raft_commit_index", status.commit_index),
            _single("tessera_raft_applied_index", status.last_applied),
            _single("tessera_raft_log_entries", status.log_len),
            _single("tessera_raft_has_quorum", 1 if status.has_quorum else 0),
            _single("tessera_raft_is_leader", 1 if status.is_leader else 0),
            _single("tessera_raft_members", len(status.members)),
            _single("tessera_raft_members_connected", sum(1 for m in status.members if m.connected)),
        ]

    def _eventlog(self) -> list[Metric]:
        store = self.master.events
        out: list[Metric] = [
            _single("tessera_eventlog_last_index", store.last_seq()),
            _single("tessera_eventlog_first_index", store.first_seq()),
            _single("tessera_eventlog_backlog_records", store.backlog()),
        ]
        dropped = getattr(store, "dropped_records", None)  # the queued stores count them; the port does not
        if isinstance(dropped, int):
            out.append(_single("tessera_eventlog_dropped_records_total", dropped))
        return out

    def _leader(self) -> list[Metric]:
        duties = self.duties
        assert duties is not None
        return [
            _single("tessera_master_connected_agents", len(duties.agents)),
            _single("tessera_master_connected_frameworks", len(duties.frameworks)),
            _single("tessera_allocator_rounds_total", duties.allocation_rounds),
        ]


class MasterMetrics:
    """Metrics of one master: a scrape-time collector over its state, Raft and event log, plus the
    commit-latency and allocation-round histograms. See the module docstring for the wiring."""

    def __init__(self, master: Master, duties: LeaderDuties | None = None, *,
                 address: str = f"{DEFAULT_HOST}:0", version: str | None = None,
                 poll_interval: float | None = None) -> None:
        self.master = master
        self.duties = duties
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = _MasterCollector(master, duties, version or tessera_version())
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)  # process_* (cpu, rss, open fds vs LimitNOFILE)
        PlatformCollector(registry=self.registry)  # python_info
        self.commit_duration = Histogram(
            "tessera_master_commit_duration_seconds", _SPECS["tessera_master_commit_duration_seconds"].help,
            buckets=COMMIT_BUCKETS, registry=self.registry)
        self.propose_errors = Counter(
            "tessera_master_propose_errors", _SPECS["tessera_master_propose_errors_total"].help,
            labelnames=("error",), registry=self.registry)
        self.allocation_duration = Histogram(
            "tessera_allocator_round_duration_seconds",
            _SPECS["tessera_allocator_round_duration_seconds"].help,
            buckets=ALLOCATION_BUCKETS, registry=self.registry)
        tick = duties.settings.tick if duties is not None else 0.1
        self.poll_interval = poll_interval if poll_interval is not None else min(max(tick / 2, 0.005), 0.5)
        self.server = MetricsServer(self.registry, address)
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
        self.server.start()
        if self.duties is not None:
            self._stop.clear()
            self._poller = threading.Thread(target=self._poll_allocation, name="metrics-allocation-poll",
                                            daemon=True)
            self._poller.start()
        log.info("metrics at %s", self.server.url)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        """Stop serving, join every thread this started and remove the write observer. Idempotent."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
            self._poller = None
        self.server.stop()
        self.close()

    def close(self) -> None:
        """Remove the write observer from the master (stop() calls it)."""
        self.master.remove_write_observer(self._observe_write)

    def text(self) -> str:
        """The exposition as a scrape would return it (for tests and debugging)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


# ---- agents ----------------------------------------------------------------------------------------------
class _AgentCollector(_Collector):
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
        info = _family("tessera_agent_info")
        info.add_metric([o.hostname, o.isolator], 1)
        out: list[Metric] = [info]
        if o.connected is not None:
            out.append(_single("tessera_agent_connected", 1 if o.connected() else 0))
        return out

    def _resources(self) -> list[Metric]:
        total, used = dict(self.owner.total()), dict(self.owner.used())
        out: list[Metric] = []
        for kind, suffix, factor in RESOURCE_KINDS:
            fam = _family(f"tessera_agent_resources_{suffix}")
            fam.add_metric(["total"], float(total.get(kind, 0.0)) * factor)
            fam.add_metric(["used"], float(used.get(kind, 0.0)) * factor)
            out.append(fam)
        return out

    def _tasks(self) -> list[Metric]:
        counts: dict[str, int] = {state_label(s): 0 for s in _known(TaskState)}
        for state, count in self.owner.tasks_by_state().items():
            label = state_label(state) if isinstance(state, Enum) else str(state).lower().removeprefix("task_")
            counts[label] = counts.get(label, 0) + int(count)
        fam = _family("tessera_agent_tasks")
        for label in sorted(counts):
            fam.add_metric([label], counts[label])
        return [fam]

    def _updates(self) -> list[Metric]:
        o = self.owner
        out: list[Metric] = [_single("tessera_agent_status_update_retries_total", o.status_update_retries())]
        if o.pending_status_updates is not None:
            out.append(_single("tessera_agent_pending_status_updates", o.pending_status_updates()))
        return out


class AgentMetrics:
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
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_AgentCollector(self, version or tessera_version()))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.server = MetricsServer(self.registry, address)

    def start(self) -> None:
        self.server.start()
        log.info("metrics at %s", self.server.url)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.stop()

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()
