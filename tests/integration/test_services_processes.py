"""The service framework with real processes: `tessera services` (two instances: one active, one standing
by) keeps an app of HTTP servers running and healthy; `tessera service` commands drive it through the
Operator API; a bad definition is refused naming the field and changes nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import LocalCluster, spawn, wait_for

SERVER = ("python3 -c \"import http.server,os; http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT0'])), "
          "http.server.SimpleHTTPRequestHandler).serve_forever()\"")


def tessera(cluster: LocalCluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tessera.control_plane.cli.main", "--masters",
                           ",".join(cluster.grpc_addresses()), *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


def status(cluster: LocalCluster, app_id: str) -> dict[str, Any]:
    out = tessera(cluster, "--json", "service", "show", app_id)
    return json.loads(out.stdout)["status"] if out.returncode == 0 else {}


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path, n=1) as c:
        c.start_all()
        c.leader()
        c.add_agent("cpus:4;mem:2048;ports:[31400-31449]")
        c.add_agent("cpus:4;mem:2048;ports:[31450-31499]")
        c.wait_agents(2)
        yield c


def start_services(cluster: LocalCluster, name: str) -> subprocess.Popen[bytes]:
    return spawn([sys.executable, "-m", "tessera.control_plane.cli.main", "services", "--masters",
                  ",".join(cluster.grpc_addresses()), "--poll", "0.3"], cluster.root / f"{name}.log",
                 {**os.environ, "PYTHONUNBUFFERED": "1"})


def app(instances: int, cmd: str = SERVER, **extra: Any) -> str:
    return json.dumps({"id": "web", "instances": instances, "cpus": 0.1, "mem": 32, "cmd": cmd,
                       "portDefinitions": [{"port": 0, "name": "http"}],
                       "healthChecks": [{"protocol": "HTTP", "path": "/", "portIndex": 0, "delaySeconds": 0.2,
                                         "intervalSeconds": 0.5, "timeoutSeconds": 0.5,
                                         "gracePeriodSeconds": 10}],
                       "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.5}, **extra})


def test_services_keep_an_app_healthy_survive_failover_and_refuse_bad_definitions(cluster: LocalCluster) -> None:
    first = start_services(cluster, "services-1")
    procs = [first]
    try:
        wait_for(lambda: tessera(cluster, "service", "list").returncode == 0, 30, what="the framework registered")
        second = start_services(cluster, "services-2")
        procs.append(second)
        applied = tessera(cluster, "service", "apply", "-", stdin=app(3))
        assert applied.returncode == 0, applied.stderr
        wait_for(lambda: status(cluster, "web").get("healthy") == 3, 60, what="3 healthy instances")
        before = {i["task_id"] for i in status(cluster, "web")["instances"]}

        bad = tessera(cluster, "service", "apply", "-", stdin=app(3, instances_typo=1))
        assert bad.returncode == 2 and "instances_typo" in bad.stderr + bad.stdout
        negative = tessera(cluster, "service", "apply", "-", stdin=app(-1))
        assert negative.returncode == 2 and "instances" in negative.stderr + negative.stdout
        assert json.loads(tessera(cluster, "--json", "service", "show", "web").stdout)["definition"]["instances"] == 3

        # kill -9 the active instance: the standby takes over, keeps the same instances (none lost or doubled)
        active = first
        os.kill(active.pid, signal.SIGKILL)
        active.wait(10)
        assert tessera(cluster, "service", "scale", "web", "4").returncode == 0
        wait_for(lambda: status(cluster, "web").get("healthy") == 4, 60, what="4 healthy after the takeover")
        after = {i["task_id"] for i in status(cluster, "web")["instances"]}
        assert before <= after and len(after) == 4
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def framework_lease_term(cluster: LocalCluster) -> int:
    frameworks = json.loads(tessera(cluster, "--json", "frameworks").stdout)
    return max((int(f.get("lease_term", 0)) for f in frameworks if f.get("info", {}).get("name") == "tessera-services"),
               default=0)


RUNNING, TERMINAL = 3, {5, 6, 7, 8, 9, 10, 12}  # TaskState numbers (common.proto)


def ready_counts(cluster: LocalCluster, prefix: str) -> list[int]:
    """Replay the event log's status updates of the app's tasks: the number of ready (running and healthy)
    instances after each update."""
    out = tessera(cluster, "--json", "events", "--type", "TaskStatusUpdated")
    assert out.returncode == 0, out.stderr
    ready: dict[str, bool] = {}
    counts = []
    for line in out.stdout.splitlines():
        record = json.loads(line)
        payload = record["payload"]
        status = payload.get("status", {})
        task_id = payload.get("task_id") or record.get("task_id")
        if not str(task_id).startswith(prefix):
            continue
        state = status.get("state")
        state = state if isinstance(state, int) else {"TASK_RUNNING": RUNNING}.get(state, 0 if state is None else -1)
        if state == RUNNING and "healthy" in status and status["healthy"] is not None:
            ready[task_id] = bool(status["healthy"])
        elif state != RUNNING:
            ready[task_id] = False
        counts.append(sum(ready.values()))
    return counts


def test_a_rolling_update_keeps_the_minimum_healthy_and_the_standby_takes_over(cluster: LocalCluster) -> None:
    active = start_services(cluster, "services-1")
    procs = [active]
    try:
        wait_for(lambda: tessera(cluster, "service", "list").returncode == 0, 30, what="the framework registered")
        standby = start_services(cluster, "services-2")
        procs.append(standby)
        assert tessera(cluster, "service", "apply", "-", stdin=app(4)).returncode == 0
        wait_for(lambda: status(cluster, "web").get("healthy") == 4, 90, what="4 healthy instances")
        first_version = status(cluster, "web")["version"]
        counted_from = len(ready_counts(cluster, "web."))
        # a new version (another command line): replaced one by one within the strategy's bounds
        updated = app(4, cmd=SERVER + " # v2")
        assert tessera(cluster, "service", "apply", "-", stdin=updated).returncode == 0
        wait_for(lambda: (s := status(cluster, "web")).get("version") != first_version and s.get("healthy") == 4
                 and all(i.get("version") == s["version"] for i in s.get("instances", [])), 120,
                 what="4 healthy instances of the new version")
        during = ready_counts(cluster, "web.")[counted_from:]
        assert during, "no status update during the deployment"
        print(f"ready instances during the rolling update: min {min(during)}, {len(during)} updates")
        assert min(during) >= 2, f"below minimumHealthCapacity 0.5 of 4: {during}"
        # kill -9 the active instance: the standby takes the lease (a new term) and keeps every instance
        term = framework_lease_term(cluster)
        kept = {i["task_id"] for i in status(cluster, "web")["instances"]}
        os.kill(active.pid, signal.SIGKILL)
        active.wait(10)
        wait_for(lambda: framework_lease_term(cluster) > term, 30, what="the standby taking the lease")
        assert tessera(cluster, "service", "scale", "web", "5").returncode == 0
        wait_for(lambda: status(cluster, "web").get("healthy") == 5, 90, what="5 healthy after the takeover")
        assert kept <= {i["task_id"] for i in status(cluster, "web")["instances"]}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def test_a_unique_hostname_constraint_leaves_the_third_instance_unplaced_and_says_why(
        cluster: LocalCluster) -> None:
    services = start_services(cluster, "services-1")
    try:
        wait_for(lambda: tessera(cluster, "service", "list").returncode == 0, 30, what="the framework registered")
        # as YAML, from a file: the same app (yes/no/on/off would stay strings; see docs/services.md)
        unique = cluster.root / "web.yaml"
        unique.write_text(yaml.safe_dump(json.loads(app(3, constraints=[["hostname", "UNIQUE"]]))))
        applied = tessera(cluster, "service", "apply", str(unique))
        assert applied.returncode == 0 and applied.stdout.startswith("service web: version"), applied.stderr
        wait_for(lambda: status(cluster, "web").get("healthy") == 2, 90, what="one healthy instance per agent")
        wait_for(lambda: "hostname UNIQUE" in status(cluster, "web").get("unplaced", ""), 30,
                 what="the reason the third instance waits")
        hosts = [i.get("hostname") or i.get("agent_id") for i in status(cluster, "web")["instances"]]
        assert len(hosts) == 2 and len(set(hosts)) == 2, hosts  # never two on one agent
        assert tessera(cluster, "service", "scale", "web", "2").returncode == 0
        wait_for(lambda: not status(cluster, "web").get("unplaced"), 30, what="nothing waiting after the scale")
    finally:
        services.kill()
        services.wait(10)


def launched_tasks(cluster: LocalCluster, prefix: str) -> set[str]:
    """Ids of the tasks with `prefix` that the event log says were launched."""
    out = tessera(cluster, "--json", "events", "--type", "TaskLaunched")
    assert out.returncode == 0, out.stderr
    return set(re.findall(re.escape(prefix) + r"[0-9a-f]+", out.stdout))


@pytest.mark.parametrize("checked", [True, False], ids=["with-health-check", "without-health-check"])
def test_a_deployment_whose_instances_exit_at_once_stops_at_the_failure_limit_and_keeps_the_old_ones(
        cluster: LocalCluster, checked: bool) -> None:
    """Without a health check the agent reports each instance of the new version TASK_RUNNING for a moment
    before TASK_FAILED: that moment neither ends the failures in a row nor stops an old instance
    (controller.READY_SECONDS)."""
    services = start_services(cluster, "services-1")
    try:
        wait_for(lambda: tessera(cluster, "service", "list").returncode == 0, 30, what="the framework registered")
        assert tessera(cluster, "service", "apply", "-", stdin=app(3, backoffSeconds=0.2)).returncode == 0
        wait_for(lambda: status(cluster, "web").get("healthy") == 3, 90, what="3 healthy instances")
        healthy = status(cluster, "web")
        old = {i["task_id"] for i in healthy["instances"]}
        counted_from = len(ready_counts(cluster, "web."))
        # the new version's command exits 1 at once: every instance of it fails
        broken = json.loads(app(3, cmd="echo version 2 cannot start; exit 1", backoffSeconds=0.2))
        if not checked:
            del broken["healthChecks"]
        assert tessera(cluster, "service", "apply", "-", stdin=json.dumps(broken)).returncode == 0
        failed = wait_for(lambda: (s := status(cluster, "web")).get("deployment", {}).get("state") == "failed" and s,
                          90, what="the deployment failed")
        version, reason = failed["version"], failed["deployment"]["reason"]
        assert version != healthy["version"]
        limit = max(3, 3)  # deploy.failure_limit: max(3, instances)
        print(f"deployment failed after {failed['failures']} failures: {reason}")
        assert failed["failures"] >= limit and f"{failed['failures']} instances of version" in reason, failed
        assert "failed in a row" in reason and "previous version running" in reason
        # `tessera service show` says it, in words and in JSON
        shown = tessera(cluster, "service", "show", "web")
        assert shown.returncode == 0, shown.stderr
        assert f"deployment {version}: failed" in shown.stdout and reason in shown.stdout, shown.stdout
        # the old instances stay, healthy, never below minimumHealthCapacity 0.5 of 3 (from the event log)
        survivors = {i["task_id"] for i in failed["instances"] if not i.get("killing")}
        assert survivors <= old and len(survivors) == 2 and failed["running"] == 2, failed["instances"]
        assert all(i["healthy"] for i in failed["instances"] if i["task_id"] in survivors), failed["instances"]
        during = ready_counts(cluster, "web.")[counted_from:]
        assert during and min(during) >= 2, f"below minimumHealthCapacity 0.5 of 3: {during}"
        # stopped: every instance of the new version that was launched failed, none is launched after
        tried = launched_tasks(cluster, f"web.{version}.")
        assert len(tried) == failed["failures"], (tried, failed["failures"])
        later = status(cluster, "web")
        assert later["deployment"]["state"] == "failed" and later["failures"] == failed["failures"]
        assert launched_tasks(cluster, f"web.{version}.") == tried
        assert {i["task_id"] for i in later["instances"]} == survivors and later["running"] == 2
    finally:
        services.kill()
        services.wait(10)
