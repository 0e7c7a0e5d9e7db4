"""The metric names: every family a master or an agent exports, and the helpers that build them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = [
    "AGENT_METRICS",
    "ALLOCATION_BUCKETS",
    "COMMIT_BUCKETS",
    "DEFAULT_HOST",
    "MASTER_METRICS",
    "METRIC_NAMES",
    "MIB",
    "RESOURCE_KINDS",
    "SPECS",
    "MetricSpec",
    "family",
    "known_states",
    "sample_names",
    "single",
    "state_label",
    "tessera_version",
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


def _resource_specs(prefix: str, what: str, labels: tuple[str, ...] = ()) -> list[MetricSpec]:
    """One gauge per resource kind: `{prefix}_cpus`, `{prefix}_mem_bytes`, `{prefix}_disk_bytes`,
    `{prefix}_gpus`. Each measures one thing (capacity, allocated, offered...), never a mix told apart by
    a label: a `sum` over any of them means something."""
    unit_note = {"cpus": "CPUs", "mem_bytes": "memory, bytes", "disk_bytes": "disk, bytes", "gpus": "GPUs"}
    return [MetricSpec(f"{prefix}_{suffix}", "gauge", f"{what} ({unit_note[suffix]}).", labels)
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
    *_resource_specs("tessera_master_capacity", "Scalar resources of the reachable (active and draining) agents"),
    *_resource_specs("tessera_master_allocated",
                     "Resources of the non-terminal tasks on reachable agents"),
    *_resource_specs("tessera_master_offered", "Resources in live offers on reachable agents"),
    *_resource_specs("tessera_master_free",
                     "Resources neither allocated nor offered on active agents (draining ones offer nothing)"),
    *_resource_specs("tessera_master_role_allocated",
                     "Resources of the non-terminal tasks launched from a role's offers", ("role",)),
    *_resource_specs("tessera_master_role_offered", "Resources in a role's live offers", ("role",)),
    *_resource_specs("tessera_master_role_quota_guarantee", "Quota guarantee of a role (0 when none)", ("role",)),
    *_resource_specs("tessera_master_role_quota_limit",
                     "Quota limit of a role (only the kinds its limit names)", ("role",)),
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
    *_resource_specs("tessera_agent_capacity", "Resources of this agent, as reported to the master"),
    *_resource_specs("tessera_agent_allocated", "Resources of this agent's non-terminal tasks"),
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

SPECS = {spec.name: spec for spec in (*MASTER_METRICS, *AGENT_METRICS)}


def family(name: str) -> GaugeMetricFamily | CounterMetricFamily:
    spec = SPECS[name]
    if spec.kind == "gauge":
        return GaugeMetricFamily(name, spec.help, labels=spec.labels or None)
    if spec.kind == "counter":
        return CounterMetricFamily(name, spec.help, labels=spec.labels or None)
    raise ValueError(f"{name} is a {spec.kind}; build it with prometheus_client directly")


def single(name: str, value: float) -> GaugeMetricFamily | CounterMetricFamily:
    fam = family(name)
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


def known_states(enum_type: type[Enum]) -> list[Enum]:
    return [v for v in enum_type if not v.name.endswith("_UNKNOWN")]


def tessera_version() -> str:
    from tessera import installed_version

    return installed_version() or "unknown"
