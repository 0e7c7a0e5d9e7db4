"""Conversion between the Operator API's messages and Tessera's values, for both ends of the wire.

The master's Operator servicer (`api.operator`), the agent's span reporter and the `tessera` CLI
(`cli.inspect`, `cli.trace`) convert through these functions, so a record, a span, a filter or a state
reads the same on either side. Redaction for a reader is decided by `core.visibility` (pure); these
functions apply it while converting. Nothing here touches the network, the clock or the master: soft
state a state view shows (usage samples, heartbeat ages) comes in as plain values.

Input from the network is validated here (`InvalidRequest`): spans (ids, finite times, the span
limits of `core.spans`), event filters (non-negative times) and history points.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from tessera.control_plane.codec import resources_to_proto, to_proto
from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.framework_state import listing, table_of
from tessera.control_plane.core.limits import utf8_length
from tessera.control_plane.core.spans import SpanLimits, check_span_fields
from tessera.control_plane.core.state import known_framework
from tessera.control_plane.core.visibility import (
    FULL,
    Visibility,
    framework_owners,
    redact_event_payload,
    redact_span_attributes,
    redact_state_value,
    redact_status,
    redact_task,
)
from tessera.control_plane.eventlog.records import EventFilter, EventRecord, SpanRecord
from tessera.v1 import common_pb2, operator_pb2

# ---- event records and filters --------------------------------------------------------------------


def _redacted_json(text: str, redact: Callable[[dict[str, Any]], Any]) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        return ""  # not what the log writes; nothing of it is shown
    if not isinstance(value, dict):
        return ""
    return json.dumps(redact(value), ensure_ascii=False, separators=(",", ":"))


def event_record_to_proto(r: EventRecord, full: bool = True) -> operator_pb2.EventRecord:
    """The record as a reader sees it: `full` False redacts what the payload carries of a task
    (`core.visibility.redact_event_payload`)."""
    return operator_pb2.EventRecord(
        index=r.seq, raft_index=r.raft_index, position=r.position, type=r.type, time=r.time, term=r.term,
        request_id=r.request_id, framework_id=r.framework_id, agent_id=r.agent_id, task_id=r.task_id,
        offer_id=r.offer_id, trace_id=r.trace_id, span_id=r.span_id,
        payload_json=r.payload if full else _redacted_json(r.payload, redact_event_payload),
    )


def event_record_from_proto(r: operator_pb2.EventRecord) -> EventRecord:
    """The mirror of `event_record_to_proto` (the CLI reads remote events as local ones)."""
    return EventRecord(seq=r.index, raft_index=r.raft_index, position=r.position, type=r.type, time=r.time,
                       term=r.term, request_id=r.request_id, framework_id=r.framework_id, agent_id=r.agent_id,
                       task_id=r.task_id, offer_id=r.offer_id, trace_id=r.trace_id, span_id=r.span_id,
                       payload=r.payload_json)


def events_to_proto(records: list[EventRecord], visibility: Visibility,
                    owners: Mapping[str, str] | None) -> list[operator_pb2.EventRecord]:
    """Records for a reader; `owners` (framework id -> principal) is needed unless it sees all."""
    if visibility.sees_all or owners is None:
        return [event_record_to_proto(r) for r in records]
    return [event_record_to_proto(r, not r.framework_id or visibility.sees_in_full(owners.get(r.framework_id)))
            for r in records]


def event_filter_from_proto(f: operator_pb2.EventFilter) -> EventFilter:
    if f.since_time < 0 or f.until_time < 0:
        raise InvalidRequest("filter: times must not be negative")
    return EventFilter(
        types=tuple(f.types), framework_id=f.framework_id, agent_id=f.agent_id, task_id=f.task_id,
        offer_id=f.offer_id, since_time=f.since_time or None, until_time=f.until_time or None,
    )


def event_filter_to_proto(flt: EventFilter) -> operator_pb2.EventFilter:
    """The mirror of `event_filter_from_proto` (the CLI's filters, sent to the master)."""
    return operator_pb2.EventFilter(types=list(flt.types), framework_id=flt.framework_id, agent_id=flt.agent_id,
                                    task_id=flt.task_id, offer_id=flt.offer_id, since_time=flt.since_time or 0.0,
                                    until_time=flt.until_time or 0.0)


# ---- spans ----------------------------------------------------------------------------------------


def span_to_proto(r: SpanRecord, full: bool = True) -> operator_pb2.Span:
    """The span as a reader sees it: `full` False keeps only Tessera's own attributes' values."""
    return operator_pb2.Span(
        trace_id=r.trace_id, span_id=r.span_id, parent_span_id=r.parent_span_id, name=r.name, service=r.service,
        kind=r.kind, start_time=r.start_time, end_time=r.end_time, status=r.status,
        attributes_json=r.attributes if full else _redacted_json(r.attributes, redact_span_attributes),
        task_id=r.task_id,
    )


_HEX = frozenset("0123456789abcdef")


def span_from_proto(p: operator_pb2.Span, limits: SpanLimits | None = None, now: float = 0.0) -> SpanRecord:
    """A reported span; with `limits`, also checked against them at `now` (unix seconds)."""
    if len(p.trace_id) != 32 or len(p.span_id) != 16 or not _HEX.issuperset(p.trace_id + p.span_id) \
            or len(p.parent_span_id) not in (0, 16) or not _HEX.issuperset(p.parent_span_id):
        raise InvalidRequest("span: trace_id must be 32 and span_id (parent_span_id) 16 lower-case hex digits")
    if not (math.isfinite(p.start_time) and math.isfinite(p.end_time)):
        raise InvalidRequest("span: start_time and end_time must be finite")
    if limits is not None:
        check_span_fields(limits, {"name": p.name, "service": p.service, "kind": p.kind, "status": p.status,
                                   "task_id": p.task_id}, p.attributes_json, p.start_time, p.end_time, now)
    return SpanRecord(
        trace_id=p.trace_id, span_id=p.span_id, parent_span_id=p.parent_span_id, name=p.name, service=p.service,
        kind=p.kind, start_time=p.start_time, end_time=p.end_time, status=p.status, attributes=p.attributes_json,
        task_id=p.task_id,
    )


# ---- state ----------------------------------------------------------------------------------------


def state_to_proto(state: Any, leader: str, term: int, visibility: Visibility = FULL, *,
                   usage: Mapping[tuple[str, str], Any] | None = None,
                   heartbeat_ages: Mapping[str, float] | None = None,
                   task_page: tuple[int, int] | None = None) -> operator_pb2.GetStateResponse:
    """The state as a reader with `visibility` sees it: other principals' tasks redacted.

    The leader's soft state comes as values: `usage` maps (framework id, task id) to the task's latest
    `TaskUsage` sample (task ids are scoped per framework), `heartbeat_ages` maps each connected agent's
    id to the seconds since it was last heard from. `task_page` (offset, limit): only those tasks of the
    list ordered by (framework id, task id) (the web UI's time travel pages a big state)."""
    resp = operator_pb2.GetStateResponse(index=state.seq, leader=leader, term=term)
    owners = None if visibility.sees_all else framework_owners(state)
    for agent_id, a in sorted(state.agents.items()):
        view = resp.agents.add(
            agent_id=agent_id, state=int(a.state), registered_at=a.registered_at, task_count=len(a.task_keys),
        )
        view.info.CopyFrom(to_proto(a.info, common_pb2.AgentInfo))
        age = heartbeat_ages.get(agent_id) if heartbeat_ages is not None else None
        if age is not None:
            view.connected = True
            view.last_heartbeat_age = max(0.0, age)
        resources_to_proto(a.used, view.used)
        resources_to_proto(a.offered, view.offered)
    for framework_id, f in sorted(state.frameworks.items()):
        table = state.framework_state.get(framework_id)
        fview = resp.frameworks.add(
            framework_id=framework_id, state=int(f.state), failover_deadline=f.failover_deadline or 0.0,
            suppressed_roles=sorted(f.suppressed_roles), lease_term=f.lease_term,
            state_keys=0 if table is None else len(table.entries), state_bytes=0 if table is None else table.size,
        )
        fview.info.CopyFrom(to_proto(f.info, common_pb2.FrameworkInfo))
        resources_to_proto(f.used, fview.used)
        resources_to_proto(f.offered, fview.offered)
    tasks = sorted(state.tasks.items())
    if task_page is not None:
        tasks = tasks[task_page[0]:task_page[0] + task_page[1]]
    for _, t in tasks:
        tview = resp.tasks.add(state=int(t.state), unacknowledged_updates=len(t.unacknowledged))
        if usage is not None and t.key in usage:
            tview.usage.CopyFrom(usage[t.key])
        full = owners is None or visibility.sees_in_full(owners.get(t.info.framework_id))
        tview.task.CopyFrom(to_proto(t.info if full else redact_task(t.info), common_pb2.TaskInfo))
        if t.last_status is not None:
            status = t.last_status if full else redact_status(t.last_status)
            tview.last_status.CopyFrom(to_proto(status, common_pb2.TaskStatus))
    for _, role in sorted(state.roles.items()):
        resp.roles.append(to_proto(role, common_pb2.RoleInfo))
    for _, offer in sorted(state.offers.items()):
        resp.offers.append(to_proto(offer, common_pb2.Offer))
    return resp


def framework_state_to_proto(state: Any, framework_id: str, prefix: str, start_after: str, limit: int,
                             visibility: Visibility = FULL) -> operator_pb2.GetFrameworkStateResponse:
    """One page of a framework's key/value state as a reader with `visibility` sees it: another principal's
    values redacted (`core.visibility`). NotFound for a framework the state does not know; a removed one
    has no state left."""
    fw = known_framework(state, framework_id)
    page = listing(state, fw.framework_id, prefix, start_after, limit)
    full = visibility.sees_in_full(fw.info.principal)
    table = table_of(state, fw.framework_id)
    resp = operator_pb2.GetFrameworkStateResponse(more=page.more, index=state.seq, lease_term=fw.lease_term,
                                                  keys=len(table.entries), bytes=table.size)
    for key, entry in page.entries:
        resp.entries.add(key=key, value=entry.value if full else redact_state_value(entry.value),
                         version=entry.version, size=entry.size - utf8_length(key))
    return resp


# ---- history --------------------------------------------------------------------------------------


def history_point_from_proto(p: operator_pb2.HistoryPoint, field: str) -> Any:
    """A `history.Point` (an index or a unix time); InvalidRequest for neither or a bad time."""
    from tessera.control_plane.eventlog.timepoints import Point

    which = p.WhichOneof("point")
    if which is None:
        raise InvalidRequest(f"{field}: give an index or a time")
    if which == "time" and not (math.isfinite(p.time) and p.time >= 0):
        raise InvalidRequest(f"{field}.time: must be a finite, non-negative unix time")
    return Point(index=p.index) if which == "index" else Point(time=p.time)


def history_point_to_proto(point: Any) -> operator_pb2.HistoryPoint:
    """The mirror of `history_point_from_proto` (the CLI's `--at` and `--diff`, sent to the master)."""
    if point.index is not None:
        return operator_pb2.HistoryPoint(index=point.index)
    return operator_pb2.HistoryPoint(time=point.time)


def state_at_to_proto(at: Any, diff_from: Any = None, diff: Any = None, first_index: int = 0,
                      last_index: int = 0, visibility: Visibility = FULL,
                      page: tuple[int, int] | None = None) -> operator_pb2.GetStateAtResponse:
    """`history.StateAt` values (and a `history.StateDiff`) as a GetStateAtResponse; the CLI uses the
    same conversion for files read offline, so both print alike. Tasks are redacted for `visibility`
    by their owners in that state (a diff names no command, environment or label). `page` (offset,
    limit): only that page of the tasks (ordered by framework and task id) and of the changes."""

    def point(s: Any) -> operator_pb2.ResolvedPoint:
        return operator_pb2.ResolvedPoint(requested_index=s.requested, index=s.index, time=s.state.time,
                                          snapshot_index=s.snapshot_seq, replayed_events=s.replayed)

    resp = operator_pb2.GetStateAtResponse(first_index=first_index, last_index=last_index)
    resp.state.CopyFrom(state_to_proto(at.state, at.state.leader, at.state.term, visibility, task_page=page))
    resp.at.CopyFrom(point(at))
    if diff_from is not None:
        resp.diff_from.CopyFrom(point(diff_from))
    changes = diff.changes if diff is not None else ()
    if page is not None:
        changes = changes[page[0]:page[0] + page[1]]
    for c in changes:
        resp.changes.add(kind=c.kind, id=c.id, change=c.change, fields=[
            operator_pb2.StateFieldChange(field=f.field, before=f.before, after=f.after) for f in c.fields])
    return resp


# ---- quorum ---------------------------------------------------------------------------------------


def quorum_to_proto(q: Any) -> operator_pb2.GetQuorumResponse:
    """A `runtime.quorum.LocalQuorum` as this master's own GetQuorumResponse (peers not asked)."""
    st = q.status
    resp = operator_pb2.GetQuorumResponse(
        leader=st.leader or "", term=st.term, commit_index=st.commit_index, applied_index=st.last_applied,
        has_quorum=st.has_quorum, self_raft=st.self_address, log_len=st.log_len, leader_grpc=q.leader_grpc,
    )
    for m in st.members:
        known = q.announced.get(m.address)
        name, grpc_address = (known[0], known[1]) if known else ("", "")
        ms = resp.members.add(
            name=name, raft_address=m.address, grpc_address=grpc_address,
            is_leader=(m.address == st.leader), is_self=m.is_self, connected=m.connected,
            match_index=m.match_index or 0,
        )
        if m.is_self:
            ms.commit_index, ms.applied_index, ms.event_index = st.commit_index, st.last_applied, q.event_index
            ms.term, ms.reachable = st.term, True
            ms.name, ms.grpc_address, ms.ui_url = q.self_name, q.self_grpc, q.self_ui
    return resp
