"""The JSON the web API answers, built from the replica's state, event records and spans (docs/http-api.md).

Pure: values in, plain JSON-able dicts out; no I/O, no clock, no locks (the caller runs these inside
`StateView.read`, or on records it already read). What a reader may see is decided by
`core.visibility`: a task of another principal's framework comes out as `redact_task`/`redact_status`
make it, exactly as the Operator API shows it.

Tables (agents, frameworks, tasks) are filtered, sorted and paged here, on the server, with one pass over
the state and one sort: 10,000 tasks cost a few milliseconds, and only one page is converted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from google.protobuf.json_format import MessageToDict

from tessera.control_plane.codec import to_proto
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.service_rows import service_rows
from tessera.control_plane.core.state import AgentRecord, ClusterState, FrameworkRecord, TaskRecord
from tessera.control_plane.core.values import TaskKey
from tessera.control_plane.core.visibility import (
    Visibility,
    framework_owners,
    redact_event_payload,
    redact_span_attributes,
    redact_task,
)
from tessera.control_plane.eventlog.export import payload_of, record_json
from tessera.control_plane.eventlog.records import EventRecord, SpanRecord
from tessera.control_plane.eventlog.timeline import TimelineItem
from tessera.control_plane.web.params import Listing
from tessera.v1 import common_pb2

T = TypeVar("T")
Json = dict[str, Any]
SUMMARY_RESOURCES = ("cpus", "mem", "disk")


# ---- small values ------------------------------------------------------------------------------------
def json_text(body: Any) -> str:
    """The JSON text of every answer of the API (UTF-8, compact, no NaN)."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def with_fields(head: Json, body_text: str) -> str:
    """`body_text` (a JSON object's text, as `json_text` writes it) with the fields of `head` in front:
    a stored answer with fresh figures, without decoding and re-encoding the stored part."""
    if not head:
        return body_text
    if not body_text.startswith("{") or not body_text.endswith("}"):
        raise ValueError("with_fields: the body is not a JSON object")
    rest = body_text[1:]
    return json_text(head)[:-1] + ("}" if rest == "}" else "," + rest)


def resources_json(r: Resources) -> Json:
    """name -> amount over every role; ranges (ports) as [[begin, end], ...]."""
    out: Json = {}
    for name, _role, value, ranges in r.items():
        if ranges:
            out.setdefault(name, []).extend([[b, e] for b, e in ranges])
        else:
            out[name] = round(out.get(name, 0.0) + value, 6)
    return out


def event_json(r: EventRecord, full: bool = True, **extra: Any) -> Json:
    """One event log record as `tessera events --json` prints it (`eventlog.export.record_json`); `full`
    False redacts its payload for a reader who may not see the task (`core.visibility.redact_event_payload`)."""
    out = record_json(r, **extra)
    if not full:
        payload = out["payload"]
        out["payload"] = redact_event_payload(payload) if isinstance(payload, dict) else ""
    return out


class Reader:
    """Who reads: their visibility and, unless they see everything, framework id -> principal."""

    def __init__(self, visibility: Visibility, owners: Mapping[str, str] | None) -> None:
        self.visibility = visibility
        self.owners = owners

    @staticmethod
    def of(visibility: Visibility, state: ClusterState) -> Reader:
        return Reader(visibility, None if visibility.sees_all else framework_owners(state))

    def sees(self, framework_id: str) -> bool:
        if self.owners is None:
            return True
        return not framework_id or self.visibility.sees_in_full(self.owners.get(framework_id))

    def event(self, r: EventRecord, **extra: Any) -> Json:
        return event_json(r, self.sees(r.framework_id), **extra)


# ---- paging ------------------------------------------------------------------------------------------
def paged(items: Sequence[T], listing: Listing, key: Callable[[T], Any], convert: Callable[[T], Json]) -> Json:
    ordered = sorted(items, key=key, reverse=listing.descending)
    start = listing.page.offset
    chosen = ordered[start:start + listing.page.limit]
    return {"total": len(ordered), "offset": start, "limit": listing.page.limit,
            "items": [convert(x) for x in chosen]}


def _contains(q: str, *values: str) -> bool:
    q = q.lower()
    return any(q in v.lower() for v in values)


# ---- agents ------------------------------------------------------------------------------------------
def agent_json(agent_id: str, a: AgentRecord, heartbeat_ages: Mapping[str, float] | None) -> Json:
    age = heartbeat_ages.get(agent_id) if heartbeat_ages is not None else None
    return {"id": agent_id, "hostname": a.info.hostname, "state": a.state.name, "draining": a.draining,
            "registered_at": a.registered_at,
            "connected": None if heartbeat_ages is None else age is not None,
            "last_heartbeat_age": None if age is None else round(max(0.0, age), 3),
            "attributes": dict(a.info.attributes), "files_address": a.info.files_address,
            "total": resources_json(a.total), "used": resources_json(a.used),
            "offered": resources_json(a.offered), "tasks": len(a.task_keys)}


_AGENT_KEYS: Mapping[str, Callable[[tuple[str, AgentRecord]], Any]] = {
    "id": lambda x: x[0], "hostname": lambda x: (x[1].info.hostname, x[0]),
    "state": lambda x: (x[1].state.name, x[0]), "registered_at": lambda x: (x[1].registered_at, x[0]),
    "tasks": lambda x: (len(x[1].task_keys), x[0]), "cpus": lambda x: (x[1].used.scalar("cpus"), x[0]),
    "mem": lambda x: (x[1].used.scalar("mem"), x[0]),
}


def agents_page(state: ClusterState, listing: Listing, heartbeat_ages: Mapping[str, float] | None) -> Json:
    chosen = [(aid, a) for aid, a in state.agents.items()
              if (not listing.states or a.state.name in listing.states)
              and (not listing.q or _contains(listing.q, aid, a.info.hostname))]
    return paged(chosen, listing, _AGENT_KEYS[listing.sort], lambda x: agent_json(x[0], x[1], heartbeat_ages))


# ---- frameworks --------------------------------------------------------------------------------------
def framework_json(state: ClusterState, framework_id: str, f: FrameworkRecord) -> Json:
    table = state.framework_state.get(framework_id)
    return {"id": framework_id, "name": f.info.name, "principal": f.info.principal, "roles": list(f.info.roles),
            "state": f.state.name, "subscribed_at": f.subscribed_at, "failover_deadline": f.failover_deadline,
            "suppressed_roles": sorted(f.suppressed_roles), "used": resources_json(f.used),
            "offered": resources_json(f.offered), "tasks": len(f.task_ids),
            "state_keys": 0 if table is None else len(table.entries), "state_bytes": 0 if table is None else table.size}


_FRAMEWORK_KEYS: Mapping[str, Callable[[tuple[str, FrameworkRecord]], Any]] = {
    "id": lambda x: x[0], "name": lambda x: (x[1].info.name, x[0]), "state": lambda x: (x[1].state.name, x[0]),
    "subscribed_at": lambda x: (x[1].subscribed_at, x[0]), "tasks": lambda x: (len(x[1].task_ids), x[0]),
    "cpus": lambda x: (x[1].used.scalar("cpus"), x[0]), "mem": lambda x: (x[1].used.scalar("mem"), x[0]),
}


def frameworks_page(state: ClusterState, listing: Listing) -> Json:
    chosen = [(fid, f) for fid, f in state.frameworks.items()
              if (not listing.states or f.state.name in listing.states)
              and (not listing.q or _contains(listing.q, fid, f.info.name))]
    return paged(chosen, listing, _FRAMEWORK_KEYS[listing.sort], lambda x: framework_json(state, x[0], x[1]))


# ---- tasks -------------------------------------------------------------------------------------------
def task_ref(framework_id: str, task_id: str) -> str:
    return f"{framework_id}/{task_id}"


def _updated_at(t: TaskRecord) -> float:
    return t.last_status.timestamp if t.last_status is not None and t.last_status.timestamp else t.launched_at


def task_json(t: TaskRecord, completed: bool) -> Json:
    s = t.last_status
    return {"ref": task_ref(t.info.framework_id, t.info.task_id), "id": t.info.task_id,
            "framework_id": t.info.framework_id, "name": t.info.name, "agent_id": t.info.agent_id,
            "state": t.state.name, "role": t.role, "launched_at": t.launched_at, "updated_at": _updated_at(t),
            "message": s.message if s is not None else "", "reason": s.reason if s is not None else "",
            "healthy": s.healthy if s is not None else None, "resources": resources_json(t.info.resources),
            "unacknowledged": len(t.unacknowledged), "completed": completed}


_TASK_KEYS: Mapping[str, Callable[[tuple[TaskRecord, bool]], Any]] = {
    "id": lambda x: (x[0].info.task_id, x[0].info.framework_id),
    "name": lambda x: (x[0].info.name, x[0].info.task_id, x[0].info.framework_id),
    "state": lambda x: (x[0].state.name, x[0].info.task_id, x[0].info.framework_id),
    "framework": lambda x: (x[0].info.framework_id, x[0].info.task_id),
    "agent": lambda x: (x[0].info.agent_id, x[0].info.task_id, x[0].info.framework_id),
    "launched_at": lambda x: (x[0].launched_at, x[0].info.task_id, x[0].info.framework_id),
    "updated_at": lambda x: (_updated_at(x[0]), x[0].info.task_id, x[0].info.framework_id),
    "cpus": lambda x: (x[0].info.resources.scalar("cpus"), x[0].info.task_id, x[0].info.framework_id),
    "mem": lambda x: (x[0].info.resources.scalar("mem"), x[0].info.task_id, x[0].info.framework_id),
}


def all_tasks(state: ClusterState) -> Iterable[tuple[TaskRecord, bool]]:
    """Live tasks, then the completed ones the state keeps (a key in both: the live record)."""
    for t in state.tasks.values():
        yield t, False
    for key, t in state.completed_tasks.items():
        if key not in state.tasks:
            yield t, True


def tasks_page(state: ClusterState, listing: Listing) -> Json:
    def keep(x: tuple[TaskRecord, bool]) -> bool:
        info = x[0].info
        return ((not listing.states or x[0].state.name in listing.states)
                and (not listing.framework or info.framework_id == listing.framework)
                and (not listing.agent or info.agent_id == listing.agent)
                and (not listing.q or _contains(listing.q, info.task_id, info.name, info.framework_id, info.agent_id)))

    return paged([x for x in all_tasks(state) if keep(x)], listing, _TASK_KEYS[listing.sort],
                 lambda x: task_json(*x))


def find_task(state: ClusterState, key: TaskKey) -> tuple[TaskRecord, bool] | None:
    if key in state.tasks:
        return state.tasks[key], False
    if key in state.completed_tasks:
        return state.completed_tasks[key], True
    return None


def frameworks_using(state: ClusterState, task_id: str) -> list[str]:
    return sorted({k.framework_id for k in (*state.tasks, *state.completed_tasks) if k.task_id == task_id})


def task_detail(state: ClusterState, t: TaskRecord, completed: bool, reader: Reader) -> Json:
    info = t.info if reader.sees(t.info.framework_id) else redact_task(t.info)
    agent = state.agents.get(t.info.agent_id)
    fw = state.frameworks.get(t.info.framework_id)
    out = task_json(t, completed)
    out["info"] = MessageToDict(to_proto(info, common_pb2.TaskInfo), preserving_proto_field_name=True)
    out["agent"] = None if agent is None else {"id": t.info.agent_id, "hostname": agent.info.hostname,
                                               "files_address": agent.info.files_address}
    out["framework"] = None if fw is None else {"id": t.info.framework_id, "name": fw.info.name,
                                                "principal": fw.info.principal}
    return out


def task_from_events(framework_id: str, task_id: str, records: Sequence[EventRecord]) -> Json:
    """The item of a task the state forgot, rebuilt from its events (its launch and last status)."""
    launched = next((r for r in records if r.type == "TaskLaunched"), None)
    info = (payload_of(launched) or {}).get("task", {}) if launched is not None else {}
    statuses = status_history(records)
    last = statuses[-1] if statuses else None
    return {"ref": task_ref(framework_id, task_id), "id": task_id, "framework_id": framework_id,
            "name": info.get("name", "") if isinstance(info, dict) else "",
            "agent_id": launched.agent_id if launched is not None else (records[0].agent_id if records else ""),
            "state": last["state"] if last else "TASK_STATE_UNKNOWN", "role": "",
            "launched_at": launched.time if launched is not None else 0.0,
            "updated_at": last["time"] if last else 0.0, "message": last["message"] if last else "",
            "reason": last["reason"] if last else "", "healthy": last["healthy"] if last else None,
            "resources": {}, "unacknowledged": 0, "completed": True}


def status_history(records: Iterable[EventRecord]) -> list[Json]:
    """A task's statuses from its events: STAGING at launch, then every recorded status update."""
    out: list[Json] = []
    for r in records:
        if r.type == "TaskLaunched":
            out.append({"index": r.seq, "time": r.time, "state": "TASK_STAGING", "message": "", "reason": "",
                        "source": "", "healthy": None})
        elif r.type == "TaskStatusUpdated":
            payload = payload_of(r)
            s = payload.get("status", {}) if isinstance(payload, dict) else {}
            if not isinstance(s, dict):
                continue
            out.append({"index": r.seq, "time": r.time, "state": str(s.get("state", "")),
                        "message": str(s.get("message", "")), "reason": str(s.get("reason", "")),
                        "source": str(s.get("source", "")), "healthy": s.get("healthy")})
    return out


def timeline_json(ref: str, items: Iterable[TimelineItem], reader: Reader) -> list[Json]:
    return [reader.event(i.record, gap_seconds=i.gap, since_start_seconds=i.since_start) for i in items]


# ---- traces ------------------------------------------------------------------------------------------
def span_json(s: SpanRecord, full: bool) -> Json:
    try:
        attributes = json.loads(s.attributes) if s.attributes else {}
    except ValueError:
        attributes = {}
    if not isinstance(attributes, dict):
        attributes = {}
    if not full:
        attributes = redact_span_attributes(attributes)
    return {"span_id": s.span_id, "parent_span_id": s.parent_span_id, "name": s.name, "service": s.service,
            "kind": s.kind, "start": s.start_time, "end": s.end_time,
            "duration_ms": round(max(0.0, s.end_time - s.start_time) * 1000, 3), "status": s.status,
            "attributes": attributes}


def trace_json(trace_id: str, spans: Sequence[SpanRecord], events: Sequence[EventRecord], full: bool,
               reader: Reader) -> Json:
    """One trace for a waterfall: spans by start; a parent not stored makes the span a root."""
    known = {s.span_id for s in spans}
    out = [span_json(s, full) for s in sorted(spans, key=lambda s: (s.start_time, s.span_id))]
    for s in out:
        if s["parent_span_id"] not in known:
            s["parent_span_id"] = ""
    times = [s.start_time for s in spans] + [e.time for e in events]
    ends = [s.end_time for s in spans] + [e.time for e in events]
    return {"trace_id": trace_id, "start": min(times) if times else 0.0, "end": max(ends) if ends else 0.0,
            "spans": out, "events": [reader.event(e) for e in events]}


# ---- the overview ------------------------------------------------------------------------------------
def _counts(values: Iterable[str]) -> Json:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def counts_json(state: ClusterState) -> Json:
    tasks = [t.state.name for t, _ in all_tasks(state)]
    return {"agents": len(state.agents), "agents_by_state": _counts(a.state.name for a in state.agents.values()),
            "frameworks": len(state.frameworks),
            "frameworks_by_state": _counts(f.state.name for f in state.frameworks.values()),
            "tasks": len(tasks), "tasks_by_state": _counts(tasks), "offers": len(state.offers)}


def resources_summary(state: ClusterState) -> Json:
    totals = state.totals()
    return {name: {"total": round(totals.total.scalar(name), 6), "used": round(totals.used.scalar(name), 6),
                   "offered": round(totals.offered.scalar(name), 6)} for name in SUMMARY_RESOURCES}


def roles_json(state: ClusterState, shares: Mapping[str, float], allocated: Mapping[str, Resources]) -> list[Json]:
    names = sorted(set(state.roles) | set(shares))
    out = []
    for name in names:
        info = state.role(name)
        share = shares.get(name, 0.0)
        out.append({"role": name, "weight": info.weight,
                    "dominant_share": None if share == float("inf") else round(share, 6),
                    "allocated": resources_json(allocated.get(name, Resources())),
                    "quota_guarantee": resources_json(info.quota_guarantee),
                    "quota_limit": resources_json(info.quota_limit)})
    return out


def role_allocations(state: ClusterState) -> dict[str, Resources]:
    """What each role holds: its live tasks' and offers' resources."""
    out: dict[str, Resources] = {}
    for t in state.tasks.values():
        if not t.terminal:
            out[t.role] = out.get(t.role, Resources()) + t.info.resources
    for o in state.offers.values():
        out[o.role] = out.get(o.role, Resources()) + o.resources
    return out


def master_json(m: Any) -> Json:
    """A `MasterStatus` (GetQuorum's member) as JSON."""
    return {"name": m.name, "raft_address": m.raft_address, "grpc_address": m.grpc_address, "ui_url": m.ui_url,
            "is_leader": m.is_leader, "is_self": m.is_self, "reachable": m.reachable,
            "commit_index": m.commit_index, "applied_index": m.applied_index, "event_index": m.event_index,
            "term": m.term, "error": m.error}


def quorum_json(quorum: Any, event_index: int) -> Json:
    """This master, the leader and every master from a `GetQuorumResponse` (peers asked)."""
    members = [master_json(m) for m in quorum.members]
    me = next((m for m in members if m["is_self"]), None)
    leader = next((m for m in members if m["is_leader"]), None)
    behind = None
    if leader is not None and (leader["reachable"] or leader["is_self"]):
        behind = max(0, leader["event_index"] - event_index)
    master = {"name": me["name"], "raft_address": me["raft_address"], "grpc_address": me["grpc_address"],
              "ui_url": me["ui_url"], "is_leader": me["is_leader"], "term": quorum.term,
              "commit_index": quorum.commit_index, "applied_index": quorum.applied_index,
              "event_index": event_index} if me is not None else None
    return {"master": master,
            "leader": None if leader is None else {k: leader[k] for k in ("name", "raft_address", "grpc_address",
                                                                          "ui_url")},
            "behind": behind, "masters": members}


# ---- services ----------------------------------------------------------------------------------------
SERVICES_FRAMEWORK = "tessera-services"


def services_framework(state: ClusterState) -> str | None:
    """The id of the live service framework (`tessera services`), if one is registered."""
    for fid, f in sorted(state.frameworks.items()):
        if f.info.name == SERVICES_FRAMEWORK and f.state.name != "FRAMEWORK_REMOVED":
            return fid
    return None


def _docs(state: ClusterState, framework_id: str, prefix: str) -> dict[str, Any]:
    table = state.framework_state.get(framework_id)
    out: dict[str, Any] = {}
    for key, entry in (table.entries.items() if table is not None else ()):
        if key.startswith(prefix):
            try:
                out[key[len(prefix):]] = json.loads(entry.value)
            except ValueError:
                out[key[len(prefix):]] = None
    return out


def services_json(state: ClusterState, framework_id: str | None) -> list[Json]:
    """Each service as `tessera service list --json` prints it."""
    if framework_id is None:
        return []
    return service_rows(_docs(state, framework_id, "apps/"), _docs(state, framework_id, "status/"))


def service_json(state: ClusterState, framework_id: str | None, app_id: str) -> Json | None:
    if framework_id is None:
        return None
    apps, status = _docs(state, framework_id, "apps/"), _docs(state, framework_id, "status/")
    if app_id not in apps and app_id not in status:
        return None
    return {"id": app_id, "definition": apps.get(app_id), "status": status.get(app_id) or {}}
