"""The web UI's HTTP API on real master processes (docs/http-api.md): every master serves it from its own
replica, followers name the leader and its UI, a task started with `tessera run` shows up in every view
(table, detail, timeline, trace with its Raft commit, stdout through the masters' file proxy, the live
event stream of a follower), `/api/v1/state?at=N` is `tessera state --at N --json`, a leader kill is seen
by the survivors; and a secured master serves HTTPS and asks for a token (401, login, cookie)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tessera.control_plane.core.acl import token_digest
from tests.support.cluster import LocalCluster, MasterProc, one_agent_cluster, wait_for
from tests.support.secure_cluster import new_pki, secured_cluster
from tests.support.web import WebClient, without_provenance

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TESSERA = [sys.executable, "-m", "tessera.control_plane.cli.main"]


def ui_url(data_dir: Path) -> str:
    """The URL a master wrote once its UI listened (`--http 127.0.0.1:0`: a free port)."""
    return wait_for(lambda: (data_dir / "ui-url").is_file() and (data_dir / "ui-url").read_text().strip(), 30,
                    what=f"{data_dir}/ui-url")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("web")
    with one_agent_cluster(root, "cpus:8;mem:4096", masters=3, agent_flags=()) as c:
        yield c


def client(m: MasterProc) -> WebClient:
    return WebClient(ui_url(m.data_dir))


def followers(c: LocalCluster) -> list[MasterProc]:
    leader = c.leader()
    return [m for m in c.masters if m is not leader and m.alive]


def test_every_master_serves_the_api_and_a_follower_names_the_leader_and_its_ui(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    for m in cluster.masters:
        def answered(m: MasterProc = m) -> dict | None:  # type: ignore[type-arg]
            body = client(m).get_json("/api/v1/cluster")
            # every member reports its UI once it answered the fan-out
            return body if all(x["reachable"] and x["ui_url"] for x in body["masters"]) else None
        body = wait_for(answered, 30, what=f"{m.name}'s overview with every master")
        assert body["insecure"] is True and body["master"]["name"] == m.name
        assert body["master"]["is_leader"] is (m is leader)
        assert body["leader"]["name"] == leader.name and body["leader"]["ui_url"] == ui_url(leader.data_dir)
        assert isinstance(body["behind"], int) and body["behind"] >= 0
        assert sorted(x["name"] for x in body["masters"]) == ["m1", "m2", "m3"]
        assert body["counts"]["agents"] == 1 and body["resources"]["cpus"]["total"] == 8.0
        assert client(m).get_json("/api/v1/agents")["items"][0]["hostname"] == "a1"
        page = client(m).get("/")
        assert page.status == 200 and page.headers["content-type"].startswith("text/html")


def test_a_task_run_with_tessera_run_in_every_view(cluster: LocalCluster) -> None:
    follower = followers(cluster)[0]
    leader = cluster.leader()
    stream = client(follower).stream("/api/v1/events/stream?type=TaskLaunched")  # live, from now on
    run = subprocess.Popen([*TESSERA, "run", "--masters", ",".join(cluster.grpc_addresses()), "--name", "web-demo",
                            "--", "echo hello-from-the-web; echo oops >&2; sleep 60"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        launched = stream.until("event")[-1][2]
        ref = f"{launched['framework_id']}/{launched['task_id']}"
        for m in (leader, follower):
            found = wait_for(lambda m=m: [t for t in client(m).get_json("/api/v1/tasks?state=running&q=")["items"]
                                          if t["ref"] == ref], 30, what=f"{m.name} sees the task running")
            assert found[0]["agent_id"] and found[0]["resources"]["cpus"] > 0
            task = client(m).get_json(f"/api/v1/tasks/{quote(ref, safe='')}")
            assert [s["state"] for s in task["statuses"]][0] == "TASK_STAGING"
            assert "TASK_RUNNING" in [s["state"] for s in task["statuses"]]
            timeline = client(m).get_json(f"/api/v1/tasks/{quote(ref, safe='')}/timeline")
            assert timeline["items"][0]["type"] == "TaskLaunched"
        out = wait_for(lambda: (a := client(follower).get_json(
            f"/api/v1/tasks/{quote(ref, safe='')}/output?stream=stdout"))["data"] and a, 30, what="stdout")
        assert out["data"] == "hello-from-the-web\n" and out["eof"] is True and out["truncated"] is False
        err = client(leader).get_json(f"/api/v1/tasks/{quote(ref, safe='')}/output?stream=stderr&tail=3")
        assert err["data"] == "ps\n" and err["truncated"] is True and err["size"] == 5

        def commit_span() -> dict | None:  # type: ignore[type-arg]
            a = client(leader).get(f"/api/v1/tasks/{quote(ref, safe='')}/trace")
            spans = [s for t in a.json().get("traces", []) for s in t["spans"]] if a.status == 200 else []
            return next((s for s in spans if s["name"] == "raft.commit"), None)
        assert wait_for(commit_span, 30, what="the Raft commit span")["attributes"]["raft.index"] > 0
        not_here = client(follower).get(f"/api/v1/tasks/{quote(ref, safe='')}/trace")
        assert not_here.status == 503 and not_here.json()["error"]["code"] == "not_leader"
        assert not_here.json()["error"]["leader_url"] == ui_url(leader.data_dir)
    finally:
        stream.close()
        os.killpg(run.pid, signal.SIGTERM)
        run.wait(timeout=60)


def test_state_at_is_what_tessera_state_at_prints(cluster: LocalCluster) -> None:
    index = 8
    printed = subprocess.run([*TESSERA, "--masters", ",".join(cluster.grpc_addresses()), "state", "--at", str(index),
                              "--json"], capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    for m in cluster.masters:
        answer = client(m).get_json(f"/api/v1/state?at={index}")
        assert without_provenance(answer) == without_provenance(json.loads(printed.stdout)), m.name
    diff = subprocess.run([*TESSERA, "--masters", ",".join(cluster.grpc_addresses()), "state", "--at", "12",
                           "--diff", "3", "--json"], capture_output=True, text=True, timeout=120)
    assert diff.returncode == 0, diff.stderr
    answer = client(followers(cluster)[0]).get_json("/api/v1/diff?from=3&to=12")
    assert without_provenance(answer) == without_provenance(json.loads(diff.stdout))
    assert answer["changes_total"] == len(answer.get("changes", []))


def test_after_a_leader_kill_the_survivors_answer_and_name_the_new_leader(cluster: LocalCluster) -> None:
    old = cluster.leader()
    survivors = [m for m in cluster.masters if m is not old]
    cluster.kill(old)
    try:
        def killed(body: dict[str, Any]) -> dict[str, Any]:
            return next(x for x in body["masters"] if x["name"] == old.name)

        for m in survivors:
            body = wait_for(lambda m=m: (b := client(m).get_json("/api/v1/cluster"))["leader"]
                            and b["leader"]["name"] != old.name and b, 60, what=f"{m.name} names a new leader")
            # the members' own figures come from a background round (quorum_age): the next one sees it gone
            body = wait_for(lambda m=m: (b := client(m).get_json("/api/v1/cluster")) and not killed(b)["reachable"]
                            and b, 10, what=f"{m.name} shows {old.name} unreachable")
            assert killed(body)["error"]
            assert client(m).get_json("/api/v1/agents")["total"] == 1
    finally:
        cluster.start(old)


TOKENS = {"ops": "tok-web-ops-1234", "nobody": "tok-web-nobody-5678"}
ACL = f"""
[principals.ops]
token_sha256 = "{token_digest(TOKENS['ops'])}"
actions = ["read"]

[principals.nobody]
token_sha256 = "{token_digest(TOKENS['nobody'])}"
roles = ["default"]
"""


def test_a_secured_master_serves_https_and_asks_for_a_token(tmp_path: Path) -> None:
    pki = new_pki(tmp_path / "pki", ACL)
    with secured_cluster(tmp_path / "cluster", pki, TOKENS) as c:
        url = ui_url(tmp_path / "cluster" / "m1")
        assert url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(pki / "master" / "ca.pem"))
        web = WebClient(url, context)
        assert web.get_json("/api/v1/cluster", status=401)["error"]["code"] == "unauthenticated"
        login = web.get("/events")
        assert login.status == 401 and login.headers["content-type"].startswith("text/html")
        assert b'name="token"' in login.body
        denied = web.get_json("/api/v1/cluster", status=403, headers={"Authorization": f"Bearer {TOKENS['nobody']}"})
        assert denied["error"]["code"] == "permission_denied"
        assert web.get_json("/api/v1/cluster", headers={"Authorization": f"Bearer {TOKENS['ops']}"})["insecure"] is False
        form = {"Content-Type": "application/x-www-form-urlencoded", "Origin": url.rstrip("/")}
        answer = web.request("POST", "/login", f"token={TOKENS['ops']}&next=/tasks".encode(), form)
        assert answer.status == 303 and answer.headers["location"] == "/tasks"
        assert all(flag in answer.headers["set-cookie"] for flag in ("HttpOnly", "Secure", "SameSite=Strict"))
        assert web.get("/tasks").status == 200 and web.get_json("/api/v1/agents")["total"] == 0
        assert c.state().index > 0
        try:  # a plain-HTTP request to the HTTPS port never gets the API
            status: int | None = WebClient(url.replace("https://", "http://")).get("/api/v1/cluster").status
        except (http.client.HTTPException, OSError):
            status = None
        assert status != 200
