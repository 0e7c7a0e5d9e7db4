"""The JSON the web API builds from state, records and spans (pure): tables filtered, sorted and paged on the
server, redaction for readers who may not see a task, status histories, traces, services, the overview."""

from __future__ import annotations

import json

import pytest

from tessera.control_plane.core.acl import Caller, Grant
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.state import (
    AgentRecord,
    ClusterState,
    FrameworkRecord,
    StateEntry,
    StateTable,
    TaskRecord,
)
from tessera.control_plane.core.values import (
    AgentInfo,
    AgentState,
    CommandInfo,
    FrameworkInfo,
    FrameworkState,
    TaskInfo,
    TaskKey,
    TaskState,
    TaskStatus,
)
from tessera.control_plane.core.visibility import visibility_for
from tessera.control_plane.eventlog.records import EventRecord, SpanRecord
from tessera.control_plane.web import params, views


def cluster(n_tasks: int = 30) -> ClusterState:
    s = ClusterState(seq=99)
    for i in range(3):
        aid = f"agent-{i}"
        s.agents[aid] = AgentRecord(info=AgentInfo(agent_id=aid, hostname=f"node-{2 - i}",
                                                   resources=Resources.parse("cpus:4;mem:1024")),
                                    state=AgentState.AGENT_ACTIVE, registered_at=100.0 + i,
                                    total=Resources.parse("cpus:4;mem:1024;ports:[31000-31009]"))
    s.frameworks["fw-a"] = FrameworkRecord(info=FrameworkInfo(framework_id="fw-a", name="alpha", principal="alice",
                                                              roles=("default",)),
                                           state=FrameworkState.FRAMEWORK_CONNECTED, stream_id="s", subscribed_at=1.0)
    s.frameworks["fw-b"] = FrameworkRecord(info=FrameworkInfo(framework_id="fw-b", name="beta", principal="bob",
                                                              roles=("default",)),
                                           state=FrameworkState.FRAMEWORK_CONNECTED, stream_id="s", subscribed_at=2.0)
    states = [TaskState.TASK_RUNNING, TaskState.TASK_STAGING, TaskState.TASK_FAILED]
    for i in range(n_tasks):
        fid = "fw-a" if i % 2 == 0 else "fw-b"
        info = TaskInfo(task_id=f"task-{i:05d}", name=f"job-{i % 7}", framework_id=fid, agent_id=f"agent-{i % 3}",
                        resources=Resources.of(cpus=0.1 * (i % 5 + 1), mem=32.0),
                        command=CommandInfo(value=f"secret-{i}"))
        status = TaskStatus(task_id=info.task_id, state=states[i % 3], message=f"m{i}", timestamp=1000.0 + i)
        record = TaskRecord(info=info, state=states[i % 3], role="default", launched_at=500.0 + (i * 7919) % n_tasks,
                            last_status=status)
        key = TaskKey(fid, info.task_id)
        if states[i % 3] is TaskState.TASK_FAILED:
            s.completed_tasks[key] = record
        else:
            s.tasks[key] = record
    return s


def test_tasks_are_filtered_sorted_and_paged_on_the_server() -> None:
    s = cluster(10_000)
    page = views.tasks_page(s, params.task_listing({"sort": "id", "offset": "100", "limit": "50"}))
    assert page["total"] == 10_000 and len(page["items"]) == 50
    assert [t["id"] for t in page["items"]] == [f"task-{i:05d}" for i in range(100, 150)]
    newest = views.tasks_page(s, params.task_listing({"limit": "3"}))["items"]
    assert [t["launched_at"] for t in newest] == sorted((t["launched_at"] for t in newest), reverse=True)
    assert newest[0]["launched_at"] == 500.0 + 9999
    running = views.tasks_page(s, params.task_listing({"state": "running", "framework": "fw-a", "limit": "1000"}))
    assert running["total"] == len([i for i in range(10_000) if i % 3 == 0 and i % 2 == 0])
    assert {t["state"] for t in running["items"]} == {"TASK_RUNNING"}
    assert {t["framework_id"] for t in running["items"]} == {"fw-a"}
    failed = views.tasks_page(s, params.task_listing({"state": "terminal", "limit": "5"}))
    assert all(t["completed"] and t["state"] == "TASK_FAILED" for t in failed["items"])
    found = views.tasks_page(s, params.task_listing({"q": "TASK-0004", "sort": "id"}))
    assert [t["id"] for t in found["items"]][:2] == ["task-00040", "task-00041"] and found["total"] == 10
    on_agent = views.tasks_page(s, params.task_listing({"agent": "agent-1", "sort": "cpus", "order": "desc"}))
    cpus = [t["resources"]["cpus"] for t in on_agent["items"]]
    assert cpus == sorted(cpus, reverse=True) and {t["agent_id"] for t in on_agent["items"]} == {"agent-1"}
    assert views.tasks_page(s, params.task_listing({"offset": "20000"}))["items"] == []


def test_agents_and_frameworks_tables() -> None:
    s = cluster()
    by_host = views.agents_page(s, params.agent_listing({"sort": "hostname"}), heartbeat_ages={"agent-0": 0.25})
    assert [a["hostname"] for a in by_host["items"]] == ["node-0", "node-1", "node-2"]
    first = next(a for a in by_host["items"] if a["id"] == "agent-0")
    assert first["connected"] is True and first["last_heartbeat_age"] == 0.25
    assert first["total"] == {"cpus": 4.0, "mem": 1024.0, "ports": [[31000, 31009]]}
    assert next(a for a in by_host["items"] if a["id"] == "agent-1")["connected"] is False
    follower = views.agents_page(s, params.agent_listing({}), heartbeat_ages=None)
    assert {a["connected"] for a in follower["items"]} == {None}  # a follower does not know
    fws = views.frameworks_page(s, params.framework_listing({"q": "bet"}))
    assert [f["name"] for f in fws["items"]] == ["beta"] and fws["items"][0]["principal"] == "bob"


def test_another_principals_task_is_redacted_in_its_detail_and_events() -> None:
    s = cluster()
    alice = views.Reader.of(visibility_for(Caller(None, Grant("alice", "0" * 64, actions=frozenset({"read"})))), s)
    t = s.tasks[TaskKey("fw-b", "task-00001")]
    detail = views.task_detail(s, t, False, alice)
    assert "secret" not in json.dumps(detail["info"])
    own = s.tasks[TaskKey("fw-a", "task-00000")]
    assert views.task_detail(s, own, False, alice)["info"]["command"]["value"] == "secret-0"
    payload = json.dumps({"task": {"task_id": "x", "command": {"value": "secret-1"}}})
    record = EventRecord(seq=5, raft_index=3, position=0, type="TaskLaunched", time=1.0, term=1, request_id="",
                         framework_id="fw-b", agent_id="", task_id="x", offer_id="", trace_id="", span_id="",
                         payload=payload)
    assert "secret" not in json.dumps(alice.event(record))
    assert "secret-1" in json.dumps(views.Reader.of(visibility_for(Caller(None, None)), s).event(record))


def test_status_history_and_a_task_rebuilt_from_its_events() -> None:
    def rec(seq: int, type_: str, payload: dict) -> EventRecord:  # type: ignore[type-arg]
        return EventRecord(seq=seq, raft_index=seq, position=0, type=type_, time=float(seq), term=1, request_id="",
                           framework_id="fw", agent_id="ag", task_id="t", offer_id="", trace_id="", span_id="",
                           payload=json.dumps(payload))

    records = [rec(3, "TaskLaunched", {"task": {"name": "job"}}),
               rec(4, "TaskStatusUpdated", {"status": {"state": "TASK_RUNNING", "source": "SOURCE_AGENT"}}),
               rec(6, "TaskStatusUpdated", {"status": {"state": "TASK_FAILED", "message": "exit 1", "healthy": False}})]
    history = views.status_history(records)
    assert [(h["index"], h["state"]) for h in history] == [(3, "TASK_STAGING"), (4, "TASK_RUNNING"), (6, "TASK_FAILED")]
    item = views.task_from_events("fw", "t", records)
    assert (item["ref"], item["name"], item["agent_id"], item["state"], item["message"], item["completed"]) == \
        ("fw/t", "job", "ag", "TASK_FAILED", "exit 1", True)


def test_a_trace_for_a_waterfall() -> None:
    def span(sid: str, parent: str, start: float, name: str) -> SpanRecord:
        return SpanRecord(trace_id="t" * 32, span_id=sid, parent_span_id=parent, name=name, service="tessera-master",
                          kind="internal", start_time=start, end_time=start + 0.01, status="OK",
                          attributes=json.dumps({"raft.index": 7, "secret.header": "x"}), task_id="task")

    spans = [span("b" * 16, "a" * 16, 2.0, "raft.commit"), span("a" * 16, "f" * 16, 1.0, "master.propose")]
    reader = views.Reader.of(visibility_for(Caller(None, None)), ClusterState())
    trace = views.trace_json("t" * 32, spans, [], True, reader)
    assert [s["name"] for s in trace["spans"]] == ["master.propose", "raft.commit"]
    assert trace["spans"][0]["parent_span_id"] == ""  # its parent is not stored: a root
    assert trace["spans"][1]["parent_span_id"] == "a" * 16
    assert trace["spans"][1]["attributes"]["raft.index"] == 7 and trace["spans"][1]["duration_ms"] == 10.0
    assert (trace["start"], trace["end"]) == (1.0, 2.01)
    hidden = views.trace_json("t" * 32, spans, [], False, reader)
    assert hidden["spans"][0]["attributes"]["raft.index"] == 7
    assert hidden["spans"][0]["attributes"]["secret.header"] != "x"


def test_services_from_the_service_frameworks_state() -> None:
    from tessera.sdk.services.controller import FRAMEWORK_NAME

    assert views.SERVICES_FRAMEWORK == FRAMEWORK_NAME
    s = cluster()
    assert views.services_json(s, views.services_framework(s)) == []
    s.frameworks["fw-s"] = FrameworkRecord(info=FrameworkInfo(framework_id="fw-s", name=FRAMEWORK_NAME),
                                           state=FrameworkState.FRAMEWORK_CONNECTED, stream_id="s", subscribed_at=3.0)
    status = {"running": 2, "healthy": 1, "version": "v1", "deployment": {"state": "deploying", "reason": "r"}}
    s.framework_state["fw-s"] = StateTable(entries={
        "apps/web": StateEntry(1, json.dumps({"id": "web", "instances": 3}), 10),
        "status/web": StateEntry(2, json.dumps(status), 10)})
    fid = views.services_framework(s)
    assert fid == "fw-s"
    assert views.services_json(s, fid) == [{"id": "web", "wanted": 3, "running": 2, "healthy": 1, "version": "v1",
                                            "deployment": "deploying", "reason": "r", "unplaced": ""}]
    assert views.service_json(s, fid, "web")["definition"] == {"id": "web", "instances": 3}  # type: ignore[index]
    assert views.service_json(s, fid, "nope") is None


def test_overview_counts_resources_and_roles() -> None:
    s = cluster(9)
    counts = views.counts_json(s)
    assert counts["tasks"] == 9 and counts["tasks_by_state"] == {"TASK_FAILED": 3, "TASK_RUNNING": 3, "TASK_STAGING": 3}
    assert counts["agents_by_state"] == {"AGENT_ACTIVE": 3}
    assert views.resources_summary(s)["cpus"]["total"] == 12.0
    allocated = views.role_allocations(s)
    roles = views.roles_json(s, {"default": 0.25}, allocated)
    assert roles[0]["role"] == "default" and roles[0]["dominant_share"] == 0.25
    assert roles[0]["allocated"]["mem"] == 32.0 * 6  # the six live tasks, not the failed ones


def test_fresh_fields_go_in_front_of_a_kept_answer() -> None:
    kept = views.json_text({"at": {"index": "3"}, "state": {"tasks": []}})
    fresh = views.with_fields({"first_index": "1", "last_index": "9"}, kept)
    assert json.loads(fresh) == {"first_index": "1", "last_index": "9", "at": {"index": "3"}, "state": {"tasks": []}}
    assert views.with_fields({}, kept) == kept
    assert json.loads(views.with_fields({"a": 1}, "{}")) == {"a": 1}
    with pytest.raises(ValueError):
        views.with_fields({"a": 1}, "[1]")
