"""The web UI's HTTP API over an in-process master (real aiohttp server, real gRPC master, in-memory Raft
and event log): every endpoint, its errors, the UI routes and static files, the live event stream, and
the token/cookie flow with an ACL (docs/http-api.md)."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import quote

import pytest
from google.protobuf.json_format import MessageToDict

from tessera.control_plane.api.auth import Guard
from tessera.control_plane.core.acl import parse_acl
from tessera.v1 import operator_pb2
from tests.support.cluster import wait_for
from tests.support.web import WebMaster, launch, web_master, without_provenance

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def wm() -> WebMaster:  # type: ignore[misc]
    with web_master(("web-0", "web-1", "batch-7")) as m:
        yield m


def enc(ref: str) -> str:
    return quote(ref, safe="")


def ref_of(wm: WebMaster, task_id: str) -> str:
    return f"{wm.framework.framework_id}/{task_id}"


def test_the_overview_names_this_master_the_counts_and_the_shares(wm: WebMaster) -> None:
    c = wm.client.get_json("/api/v1/cluster")
    assert c["insecure"] is True
    assert c["master"]["is_leader"] is True and c["master"]["name"] == "m1"
    assert c["leader"]["name"] == "m1" and c["behind"] == 0
    assert [m["is_self"] for m in c["masters"]] == [True]
    assert c["counts"]["agents"] == 1 and c["counts"]["frameworks"] == 1 and c["counts"]["tasks"] == 3
    assert c["resources"]["cpus"]["total"] == 8.0 and c["resources"]["mem"]["total"] == 8192.0
    assert any(r["role"] == "default" for r in c["roles"])
    assert c["index"] == wm.node.state().seq or c["index"] <= wm.node.state().seq


def test_agents_and_frameworks_with_their_detail_and_404(wm: WebMaster) -> None:
    agents = wm.client.get_json("/api/v1/agents")
    assert agents["total"] == 1 and agents["items"][0]["hostname"] == "node-1"
    assert agents["items"][0]["connected"] is True
    agent_id = agents["items"][0]["id"]
    assert wm.client.get_json(f"/api/v1/agents/{agent_id}")["id"] == agent_id
    err = wm.client.get_json("/api/v1/agents/nope", status=404)["error"]
    assert err["code"] == "not_found" and "nope" in err["message"]
    fws = wm.client.get_json("/api/v1/frameworks?q=batch")
    assert [f["name"] for f in fws["items"]] == ["batch"]
    assert wm.client.get_json(f"/api/v1/frameworks/{wm.framework.framework_id}")["name"] == "batch"
    assert wm.client.get_json("/api/v1/frameworks/nope", status=404)["error"]["code"] == "not_found"


def test_tasks_table_and_one_task_with_its_history_timeline_and_trace(wm: WebMaster) -> None:
    page = wm.client.get_json("/api/v1/tasks?sort=id&limit=2")
    assert page["total"] == 3 and [t["id"] for t in page["items"]] == ["batch-7", "web-0"]
    assert wm.client.get_json("/api/v1/tasks?q=web&sort=id&offset=1")["items"][0]["id"] == "web-1"
    ref = ref_of(wm, "web-0")
    for named in (enc(ref), "web-0"):  # the full ref, URL-encoded, or a bare id one framework uses
        task = wm.client.get_json(f"/api/v1/tasks/{named}")
        assert task["ref"] == ref and task["framework"]["name"] == "batch" and task["agent"]["hostname"] == "node-1"
        states = [s["state"] for s in task["statuses"]]
        assert states[0] == "TASK_STAGING" and "TASK_RUNNING" in states
        assert task["info"]["command"]["value"] == "echo web-0"
    timeline = wm.client.get_json(f"/api/v1/tasks/{enc(ref)}/timeline")
    assert timeline["items"][0]["type"] == "TaskLaunched" and timeline["items"][0]["gap_seconds"] is None
    assert all(i["gap_seconds"] >= 0 for i in timeline["items"][1:]) and not timeline["truncated"]

    def stored() -> list[dict]:  # type: ignore[type-arg]
        answer = wm.client.get(f"/api/v1/tasks/{enc(ref)}/trace")
        return [s for t in answer.json()["traces"] for s in t["spans"]] if answer.status == 200 else []

    spans = wait_for(lambda: [s for s in stored() if s["name"] == "raft.commit"] and stored(), 20,
                     what="the task's raft.commit span stored")  # spans are exported in batches
    commit = next(s for s in spans if s["name"] == "raft.commit")
    assert commit["attributes"]["raft.index"] > 0 and commit["parent_span_id"] in {s["span_id"] for s in spans}
    assert wm.client.get_json("/api/v1/tasks/nope", status=404)["error"]["code"] == "not_found"
    assert wm.client.get_json("/api/v1/tasks/nope/timeline", status=404)["error"]["code"] == "not_found"


def test_output_needs_the_agents_file_service(wm: WebMaster) -> None:
    err = wm.client.get_json(f"/api/v1/tasks/{enc(ref_of(wm, 'web-0'))}/output?stream=stderr", status=503)["error"]
    assert err["code"] == "unavailable" and "serves no files" in err["message"]
    assert wm.client.get_json(f"/api/v1/tasks/{enc(ref_of(wm, 'web-0'))}/output?stream=secret",
                              status=400)["error"]["field"] == "stream"


def test_events_are_paged_by_index_with_filters(wm: WebMaster) -> None:
    newest = wm.client.get_json("/api/v1/events?limit=3")
    seqs = [e["seq"] for e in newest["items"]]
    assert seqs == sorted(seqs) and seqs[-1] == newest["last_index"] and newest["more"] is True
    assert newest["first_index"] == 1
    first = wm.client.get_json("/api/v1/events?after=0&limit=2")
    assert newest["first_time"] == first["items"][0]["time"] and newest["last_time"] == newest["items"][-1]["time"]
    assert [e["seq"] for e in first["items"]] == [1, 2] and first["more"]
    before = wm.client.get_json("/api/v1/events?before=3&limit=10")
    assert [e["seq"] for e in before["items"]] == [1, 2] and before["more"] is False
    launched = wm.client.get_json("/api/v1/events?after=0&type=TaskLaunched&limit=1000")
    assert sorted(e["task_id"] for e in launched["items"]) == ["batch-7", "web-0", "web-1"]
    one = wm.client.get_json("/api/v1/events?after=0&task=web-1&limit=1000")
    assert one["items"] and {e["task_id"] for e in one["items"]} == {"web-1"}
    assert wm.client.get_json(f"/api/v1/events?after={newest['last_index']}")["items"] == []
    assert wm.client.get_json("/api/v1/events?after=99999999999&limit=5")["items"] == []


def test_state_at_and_diff_answer_what_the_operator_api_answers(wm: WebMaster) -> None:
    stub = wm.node.operator()
    for n in (3, 10):
        web = wm.client.get_json(f"/api/v1/state?at={n}")
        grpc_answer = stub.GetStateAt(operator_pb2.GetStateAtRequest(at=operator_pb2.HistoryPoint(index=n)))
        assert without_provenance(web) == without_provenance(MessageToDict(grpc_answer,
                                                                           preserving_proto_field_name=True))
        # asked again (the answer kept): the same, with this master's first and last index
        again = wm.client.get_json(f"/api/v1/state?at={n}")
        assert again == web and int(again["last_index"]) == wm.node.master.events.last_seq()
    diff = wm.client.get_json("/api/v1/diff?from=2&to=%2310")
    grpc_diff = stub.GetStateAt(operator_pb2.GetStateAtRequest(at=operator_pb2.HistoryPoint(index=10),
                                                              diff_from=operator_pb2.HistoryPoint(index=2)))
    assert without_provenance(diff) == without_provenance(
        MessageToDict(grpc_diff, preserving_proto_field_name=True)) and diff["changes"]
    assert diff["changes_total"] == len(diff["changes"]) and diff["tasks_total"] == len(diff["state"]["tasks"])
    # a page of the tasks (ordered by framework and task id) and of the changes, with how many in all
    def at(n: int) -> dict[str, Any]:
        answer = stub.GetStateAt(operator_pb2.GetStateAtRequest(at=operator_pb2.HistoryPoint(index=n)))
        return MessageToDict(answer, preserving_proto_field_name=True)

    # the point holding the most tasks at once (the tasks finish as the history goes on)
    last, full = max(((n, at(n)) for n in range(1, wm.node.master.events.last_seq() + 1)),
                     key=lambda p: len(p[1]["state"].get("tasks", [])))
    assert len(full["state"]["tasks"]) >= 1
    total = len(full["state"]["tasks"])
    paged = wm.client.get_json(f"/api/v1/state?at={last}&offset=0&limit=1")
    assert paged["state"]["tasks"] == full["state"]["tasks"][:1]
    assert (paged["tasks_total"], paged["offset"], paged["limit"]) == (total, 0, 1)
    beyond = wm.client.get_json(f"/api/v1/state?at={last}&offset={total}&limit=1")
    assert beyond["state"].get("tasks", []) == [] and beyond["tasks_total"] == total
    assert paged["state"]["agents"] == full["state"]["agents"]
    changes = wm.client.get_json("/api/v1/diff?from=2&to=10&offset=2&limit=2")
    assert changes["changes"] == diff["changes"][2:4] and changes["changes_total"] == len(diff["changes"])
    assert wm.client.get_json("/api/v1/state?at=10&limit=0", status=400)["error"]["field"] == "limit"
    latest = wm.client.get_json("/api/v1/state")
    assert int(latest["at"]["index"]) >= 10
    err = wm.client.get_json("/api/v1/state?at=tomorrow-ish", status=400)["error"]
    assert err["field"] == "at" and err["code"] == "invalid_argument"
    assert wm.client.get_json("/api/v1/diff?to=5", status=400)["error"]["field"] == "from"
    assert wm.client.get_json("/api/v1/state?at=99999999", status=400)["error"]["code"] == "invalid_argument"


def test_services_are_empty_without_the_service_framework(wm: WebMaster) -> None:
    assert wm.client.get_json("/api/v1/services")["items"] == []
    assert wm.client.get_json("/api/v1/services/web", status=404)["error"]["code"] == "not_found"


def test_ui_routes_serve_the_page_and_unknown_ids_are_404(wm: WebMaster) -> None:
    index = (wm.static / "index.html").read_bytes()
    for path in ("/", "/agents", "/frameworks", "/tasks", "/events", "/timetravel", "/services",
                 f"/tasks/{enc(ref_of(wm, 'web-0'))}", f"/frameworks/{wm.framework.framework_id}"):
        answer = wm.client.get(path)
        assert answer.status == 200 and answer.body == index, path
        assert answer.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        assert answer.headers["x-content-type-options"] == "nosniff"
    for path in ("/tasks/nope", "/agents/nope", "/frameworks/nope", "/services/nope", "/no/such/page"):
        answer = wm.client.get(path)
        assert answer.status == 404 and answer.body == index, path
    assert "nope" in wm.client.get("/tasks/nope").headers["x-tessera-not-found"]
    missing = wm.client.get("/api/v1/nothing")
    assert missing.status == 404 and missing.json()["error"]["code"] == "not_found"
    assert wm.client.request("POST", "/api/v1/tasks").json()["error"]["code"] == "method_not_allowed"


def test_static_files_with_their_content_types_and_no_escape(wm: WebMaster) -> None:
    js = wm.client.get("/static/app.js")
    assert js.status == 200 and js.headers["content-type"].startswith("text/javascript")
    assert wm.client.get("/static/css/ui.css").headers["content-type"].startswith("text/css")
    for path in ("/static/../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd", "/static/nope.js",
                 "/static/css", "/static/..%2f..%2fetc%2fpasswd", "/static/%00", "/static/a%0ab",
                 "/static/" + "x" * 5000, "/static/" + "/".join(["y" * 300] * 3)):  # names the OS refuses
        answer = wm.client.get(path)
        assert answer.status == 404 and b"root:" not in answer.body, path


def test_the_live_stream_sends_events_in_order_then_new_ones(wm: WebMaster) -> None:
    stream = wm.client.stream("/api/v1/events/stream?from=1&type=TaskLaunched")
    try:
        assert stream.status == 200 and stream.headers["content-type"].startswith("text/event-stream")
        seen = [stream.next() for _ in range(3)]
        assert [m[0] for m in seen] == ["event"] * 3
        assert [int(m[1]) for m in seen] == sorted(int(m[1]) for m in seen)
        assert {m[2]["task_id"] for m in seen} == {"web-0", "web-1", "batch-7"}
        launch(wm.node, wm.framework, wm.agent, ["live-1"])
        messages = stream.until("event", lambda e: e["task_id"] == "live-1")
        assert {m[0] for m in messages} <= {"event", "heartbeat"}
    finally:
        stream.close()
    last = wm.client.get_json("/api/v1/events?limit=1")["last_index"]
    resumed = wm.client.stream("/api/v1/events/stream", headers={"Last-Event-ID": str(last - 1)})
    try:
        kind, ident, data = resumed.next()
        assert kind == "event" and int(ident) == last and data["seq"] == last  # type: ignore[arg-type]
        assert resumed.next()[0] == "heartbeat"
    finally:
        resumed.close()
    assert wm.client.get_json("/api/v1/events/stream?from=abc", status=400)["error"]["field"] == "from"


def test_a_stream_from_what_retention_removed_says_gap_and_goes_on() -> None:
    with web_master(("a-0",)) as m:
        store = m.node.events
        last = store.last_seq()
        store.prune(before_seq=5)
        assert store.first_seq() == 5
        kept = m.client.get_json("/api/v1/events?after=4&limit=1")
        assert kept["first_index"] == 5 and kept["first_time"] == kept["items"][0]["time"]
        err = m.client.get_json("/api/v1/events?after=1", status=410)["error"]
        assert err["code"] == "history_pruned" and err["first_index"] == 5
        stream = m.client.stream("/api/v1/events/stream?from=2")
        try:
            kind, _, data = stream.next()
            assert kind == "gap" and data == {"requested": 2, "first_index": 5, "message": data["message"]}
            kind, ident, data = stream.next()
            assert kind == "event" and int(ident) == 5  # type: ignore[arg-type]
            stream.until("event", lambda e: e["seq"] == last)
        finally:
            stream.close()


TOKENS = {"reader": "reader-token-0123456789", "writer": "no-read-token-0123456789"}
ACL = parse_acl({"principals": {
    "reader": {"token_sha256": hashlib.sha256(TOKENS["reader"].encode()).hexdigest(), "actions": ["read"]},
    "writer": {"token_sha256": hashlib.sha256(TOKENS["writer"].encode()).hexdigest(), "actions": ["drain"]}}})


def test_with_an_acl_a_token_with_read_is_needed_by_header_or_login_cookie() -> None:
    with web_master(("t-0",), guard=Guard(ACL, tls=True), insecure=False) as m:
        c = m.client
        err = c.get_json("/api/v1/cluster", status=401)["error"]
        assert err["code"] == "unauthenticated"
        page = c.get("/tasks")
        assert page.status == 401 and page.body == (m.static / "login.html").read_bytes()
        assert c.get("/static/app.js").status == 200  # the login page's assets are public
        assert c.get("/login").status == 200
        assert c.get_json("/api/v1/cluster", headers={"Authorization": "Bearer wrong"}, status=401)
        denied = c.get_json("/api/v1/cluster", headers={"Authorization": f"Bearer {TOKENS['writer']}"}, status=403)
        assert denied["error"]["code"] == "permission_denied" and "read" in denied["error"]["message"]
        ok = c.get_json("/api/v1/cluster", headers={"Authorization": f"Bearer {TOKENS['reader']}"})
        assert ok["insecure"] is False
        form = f"token={TOKENS['reader']}&next=/tasks".encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        foreign = c.request("POST", "/login", form, {**headers, "Origin": "https://evil.example"})
        assert foreign.status == 403 and foreign.json()["error"]["code"] == "csrf" and not c.cookies
        assert c.request("POST", "/login", form, headers).status == 403  # neither Origin nor Referer
        origin = m.server.url.rstrip("/")
        bad = c.request("POST", "/login", b"token=guess", {**headers, "Origin": origin})
        assert bad.status == 401 and "x-tessera-login-error" in bad.headers and not c.cookies
        no_read = c.request("POST", "/login", f"token={TOKENS['writer']}".encode(), {**headers, "Origin": origin})
        assert no_read.status == 403 and "read" in no_read.headers["x-tessera-login-error"] and not c.cookies
        assert no_read.body == (m.static / "login.html").read_bytes()
        good = c.request("POST", "/login", form, {**headers, "Referer": origin + "/login"})
        assert good.status == 303 and good.headers["location"] == "/tasks"
        cookie = good.headers["set-cookie"]
        assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert c.cookies == {"tessera_token": TOKENS["reader"]}
        assert c.get("/tasks").status == 200 and c.get_json("/api/v1/tasks")["total"] == 1
        offsite = c.request("POST", "/login", f"token={TOKENS['reader']}&next=//evil.example/".encode(),
                            {**headers, "Origin": origin})
        assert offsite.headers["location"] == "/"
        out = c.request("POST", "/logout", b"", {"Origin": origin})
        assert out.status == 303 and not c.cookies
        assert c.get_json("/api/v1/tasks", status=401)


def test_an_insecure_master_refuses_a_non_loopback_address() -> None:
    from tessera.control_plane.web.server import HttpAddressError, check_http_address, parse_http_address

    check_http_address("127.0.0.1", insecure=True)
    check_http_address("::1", insecure=True)
    check_http_address("0.0.0.0", insecure=False)
    with pytest.raises(HttpAddressError, match="loopback"):
        check_http_address("0.0.0.0", insecure=True)
    with pytest.raises(HttpAddressError, match="loopback"):
        check_http_address("example.com", insecure=True)
    assert parse_http_address("off") is None and parse_http_address("[::1]:8080") == ("::1", 8080)
    with pytest.raises(HttpAddressError):
        parse_http_address("127.0.0.1:99999")


