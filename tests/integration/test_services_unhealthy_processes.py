"""An instance of a service that starts failing its HTTP health check is killed by its agent and replaced by
the service framework, with real processes: a master, an agent, `tessera services`, `tessera dns`, `tessera lb`
with the real Debian HAProxy and a service of 3 instances of tests/support/rolling_backend.py, whose `/health`
answers 503 once the test puts a file named after the instance's task id in `SICK_DIR`.

What is pinned, from the event log and `tessera --json service show`:
- the sick instance's health reaches the log once per change: healthy, then unhealthy once (no repeat while
  it keeps failing), then TASK_KILLING and TASK_KILLED with REASON_TASK_UNHEALTHY — the agent's kill after
  `maxConsecutiveFailures`; the framework never asked for it (no TaskKillRequested);
- the framework launches one replacement of the same version after that kill, which becomes healthy;
- the other instances are untouched: same task ids, never asked to stop, never unhealthy;
- the service is back to 3 running and healthy, its deployment `done`, no new deployment, no failures
  counted (an unhealthy kill of a running instance is no failed deployment); DNS answers exactly the three
  live instances, and so does HAProxy (a request loop through it runs all along; what it saw is printed,
  not asserted: until its first failed check the sick instance is healthy for everyone).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest

from tessera.control_plane.discovery.endpoints import dns_label
from tests.integration.test_lb_rolling_processes import get
from tests.integration.test_services_processes import start_services, status, tessera
from tests.support.cluster import LocalCluster, free_port, one_agent_cluster, stop_process, wait_for
from tests.support.dns_process import dns_server as serve_dns

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BACKEND = Path(__file__).resolve().parents[1] / "support" / "rolling_backend.py"
HEALTH_UPDATED = "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED"
UNHEALTHY = "REASON_TASK_UNHEALTHY"
STATES = {2: "TASK_STARTING", 3: "TASK_RUNNING", 4: "TASK_KILLING", 7: "TASK_KILLED"}  # TaskState numbers (common.proto)


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with one_agent_cluster(tmp_path, "cpus:4;mem:2048;ports:[31550-31599]") as c:
        yield c


@pytest.fixture()
def dns_server(cluster: LocalCluster) -> Iterator[tuple[str, int]]:
    with serve_dns(cluster.grpc_addresses(), cluster.root / "dns.log") as address:
        yield address


def srv_targets(server: tuple[str, int], name: str) -> set[str]:
    """The first labels of the SRV targets of `name` (`<task>.<service>.tessera.`: the tasks' labels)."""
    answer = dns.query.udp(dns.message.make_query(name, "SRV"), server[0], port=server[1], timeout=2)
    return {r.target.labels[0].decode() for rrset in answer.answer for r in rrset}


@pytest.fixture()
def balancer(cluster: LocalCluster, tmp_path: Path) -> Iterator[str]:
    """`tessera lb` (HAProxy); the URL of the service port the app asks for."""
    assert shutil.which("haproxy"), "this test needs HAProxy: apt-get install haproxy (the Debian package haproxy)"
    service_port = free_port()
    with open(tmp_path / "lb.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tessera.control_plane.cli.main", "--masters",
                                 ",".join(cluster.grpc_addresses()), "lb", "--dir", str(tmp_path / "lb")],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield f"http://127.0.0.1:{service_port}/"
    finally:
        stop_process(proc, 20)


def answering(url: str) -> set[str]:
    """The instances that answer a dozen requests through HAProxy (round robin)."""
    return {a["task"] for _ in range(12) if isinstance(a := get(url), dict)}


def app(sick_dir: Path, url: str) -> str:
    return json.dumps({
        "id": "web", "instances": 3, "cpus": 0.1, "mem": 32, "args": [sys.executable, str(BACKEND)],
        "env": {"WARMUP_SECONDS": "0", "SICK_DIR": str(sick_dir)},
        "portDefinitions": [{"port": 0, "name": "http"}],
        "labels": {"tessera.lb.port": url.rsplit(":", 1)[1].strip("/"), "tessera.lb.mode": "http"},
        "healthChecks": [{"protocol": "HTTP", "path": "/health", "portIndex": 0, "delaySeconds": 0.2,
                          "intervalSeconds": 0.5, "timeoutSeconds": 0.5, "gracePeriodSeconds": 10,
                          "maxConsecutiveFailures": 3}],
        "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.5}})


def task_events(cluster: LocalCluster, task_id: str) -> list[dict[str, Any]]:
    """Every event of the log naming `task_id`, in order."""
    out = tessera(cluster, "--json", "events", "--task", task_id, "--limit", "10000")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def health_statuses(events: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """(state, healthy, reason) of each TaskStatusUpdated that carries health."""
    out = []
    for e in events:
        s = e["payload"].get("status", {})
        if e["type"] == "TaskStatusUpdated" and s.get("healthy") is not None:
            state = s.get("state")
            out.append((STATES.get(state, str(state)) if isinstance(state, int) else str(state), bool(s["healthy"]),
                        str(s.get("reason", ""))))
    return out


def ids(record: dict[str, Any]) -> set[str]:
    return {str(i["task_id"]) for i in record.get("instances", [])}


def settled(record: dict[str, Any], n: int) -> bool:
    """`n` instances, all running and healthy, none being stopped, the deployment done."""
    instances = record.get("instances", [])
    return (record.get("healthy") == n and record.get("running") == n and len(instances) == n
            and all(i.get("healthy") is True and not i.get("killing") for i in instances)
            and record.get("deployment", {}).get("state") == "done")


def test_an_instance_failing_its_http_check_is_killed_by_its_agent_and_replaced_the_others_untouched(
        cluster: LocalCluster, dns_server: tuple[str, int], balancer: str, tmp_path: Path) -> None:
    sick_dir = tmp_path / "sick"
    sick_dir.mkdir()
    services = start_services(cluster, "services")
    try:
        wait_for(lambda: tessera(cluster, "service", "list").returncode == 0, 30, what="the framework registered")
        applied = tessera(cluster, "service", "apply", "-", stdin=app(sick_dir, balancer))
        assert applied.returncode == 0, applied.stderr
        before = wait_for(lambda: (s := status(cluster, "web")) and settled(s, 3) and s, 90,
                          what="3 healthy instances, the deployment done")
        wait_for(lambda: srv_targets(dns_server, "_web._tcp.tessera") == {dns_label(t) for t in ids(before)}, 30,
                 what="the 3 instances in DNS")
        wait_for(lambda: answering(balancer) == ids(before), 60, what="the 3 instances behind HAProxy")
        victim, *others = sorted(ids(before))
        answers: list[tuple[float, dict[str, Any] | str]] = []
        done = threading.Event()

        def loop() -> None:
            while not done.is_set():
                answers.append((time.monotonic(), get(balancer)))
                time.sleep(0.02)

        looper = threading.Thread(target=loop, daemon=True)
        looper.start()

        sick_at = time.monotonic()
        (sick_dir / victim).write_text("")  # from now on its /health answers 503
        try:
            after = wait_for(lambda: (s := status(cluster, "web")) and victim not in ids(s) and settled(s, 3) and s,
                             90, what="the sick instance gone and 3 healthy again")
        finally:
            done.set()
            looper.join(10)
        from_victim = [t - sick_at for t, a in answers if isinstance(a, dict) and a["task"] == victim and t >= sick_at]
        print(f"{len(answers)} requests through HAProxy meanwhile: {sum(isinstance(a, str) for _, a in answers)} "
              f"failed; {len(from_victim)} answered by the sick instance after it turned sick, the last "
              f"{max(from_victim, default=0):.2f}s after")
        replacements = ids(after) - ids(before)
        assert len(replacements) == 1 and ids(after) == set(others) | replacements, (ids(before), ids(after))
        replacement = replacements.pop()

        # the victim: unhealthy once, then killed by its agent for it; the framework asked for nothing
        victim_events = task_events(cluster, victim)
        assert health_statuses(victim_events) == [
            ("TASK_RUNNING", True, HEALTH_UPDATED), ("TASK_RUNNING", False, HEALTH_UPDATED),
            ("TASK_KILLING", False, UNHEALTHY), ("TASK_KILLED", False, UNHEALTHY)], victim_events
        assert not [e for e in victim_events if e["type"] == "TaskKillRequested"], victim_events
        final = [e["payload"]["status"] for e in victim_events if e["type"] == "TaskStatusUpdated"][-1]
        assert "3 consecutive failed health checks" in final.get("message", ""), final  # maxConsecutiveFailures
        killed_at = max(e["seq"] for e in victim_events if e["type"] == "TaskStatusUpdated")

        # the replacement: the same version, launched after that kill, healthy
        replacement_events = task_events(cluster, replacement)
        launched = [e for e in replacement_events if e["type"] == "TaskLaunched"]
        assert len(launched) == 1 and launched[0]["seq"] > killed_at, replacement_events
        assert replacement.split(".")[1] == victim.split(".")[1] == after["version"] == before["version"]
        assert health_statuses(replacement_events) == [("TASK_RUNNING", True, HEALTH_UPDATED)], replacement_events

        # the others: never asked to stop, never unhealthy, never ended
        for task_id in others:
            events = task_events(cluster, task_id)
            assert health_statuses(events) == [("TASK_RUNNING", True, HEALTH_UPDATED)], events
            assert not [e for e in events if e["type"] == "TaskKillRequested"], events
            states = {e["payload"]["status"].get("state") for e in events if e["type"] == "TaskStatusUpdated"}
            assert states <= {"TASK_STARTING", "TASK_RUNNING", 2, 3}, (task_id, states)

        # no deployment failed or started: the same one, done; no failures counted; the same history
        assert after["deployment"]["version"] == before["deployment"]["version"], after["deployment"]
        assert after["failures"] == 0 and after["history"] == before["history"], after
        # DNS answers the three live instances, not the killed one
        wait_for(lambda: srv_targets(dns_server, "_web._tcp.tessera") == {dns_label(t) for t in ids(after)}, 30,
                 what="DNS following the replacement")
        wait_for(lambda: answering(balancer) == ids(after), 60, what="HAProxy following the replacement")
        print(f"killed {victim} (unhealthy), replaced by {replacement}; kept {others}")
    finally:
        services.kill()
        services.wait(10)
