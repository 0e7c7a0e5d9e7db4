"""Health checks end to end with real processes: `tessera master`, `tessera agent`, a framework on the SDK and
tasks that serve HTTP and TCP on ports of their `ports` resources on 127.0.0.1 (docs/health-checks.md).

What is pinned here: health reaches the framework and the event log once per change (counted in the log);
a task that starts failing is reported unhealthy once and killed after `consecutive_failures` failures
with REASON_TASK_UNHEALTHY; failures inside the grace period are not reported; TCP and COMMAND checks (the
latter as the task's user); `tessera tasks` and `tessera timeline` show health; a check the master cannot
accept is refused at the launch (INVALID_ARGUMENT naming the field). The container checks are in
test_containers_processes.py, beside the other container tasks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tessera.sdk import (
    FrameworkInfo,
    HealthCheck,
    HttpCheck,
    Resources,
    SchedulerDriver,
    TaskInfo,
    TaskState,
    TaskStatus,
    TcpCheck,
)
from tests.support.cluster import LocalCluster, wait_for
from tests.support.recording import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

T = TypeVar("T")
FAST_MASTER = ["--allocation-interval", "0.2"]
PORTS = (31200, 31240)
HEALTH_UPDATED = "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED"

# A task that serves GET /health on the port it is given: 200, or 503 once the file `sick` exists in the
# control directory; every request is appended to `requests` there, so a test can wait for checks to happen.
SERVER = textwrap.dedent("""
    import http.server, os, sys
    port, control = int(sys.argv[1]), sys.argv[2]
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            with open(os.path.join(control, "requests"), "a") as f:
                f.write(self.path + "\\n")
            sick = os.path.exists(os.path.join(control, "sick"))
            self.send_response(503 if sick else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
""")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("health")
    with LocalCluster(root, n=1) as c:
        c.master_flags = FAST_MASTER
        c.start_all()
        c.leader()
        c.add_agent(f"cpus:4;mem:2048;ports:[{PORTS[0]}-{PORTS[1]}]")
        c.wait_agents(1)
        yield c


def health_updates(recorder: Recorder, task_id: str) -> list[TaskStatus]:
    """The task's TASK_RUNNING updates that carry health."""
    return [s for s in recorder.of(task_id) if s.state is TaskState.TASK_RUNNING and s.healthy is not None]


@pytest.fixture(scope="module")
def framework(cluster: LocalCluster) -> Iterator[tuple[Recorder, SchedulerDriver]]:
    recorder = Recorder()
    driver = SchedulerDriver(recorder, FrameworkInfo(name="health-tests", failover_timeout=60.0),
                             cluster.grpc_addresses())
    driver.start()
    yield recorder, driver
    driver.teardown()
    driver.join(10)


def launch(framework: tuple[Recorder, SchedulerDriver], task: TaskInfo) -> None:
    recorder, driver = framework
    recorder.launch(driver, task)


def server_task(task_id: str, port: int, control: Path, check: HealthCheck, **kw: Any) -> TaskInfo:
    control.mkdir(parents=True, exist_ok=True)
    (control / "server.py").write_text(SERVER)
    return TaskInfo(task_id=task_id, resources=Resources.of(cpus=0.1, mem=64, ports=[(port, port)]),
                    command=(sys.executable, str(control / "server.py"), str(port), str(control)),
                    health_check=check, **kw)


def health_events(cluster: LocalCluster, task_id: str) -> list[dict[str, Any]]:
    """The statuses of `task_id` in the leader's event log that carry health, in order."""
    out = []
    for e in cluster.leader().list_events():
        if e.type == "TaskStatusUpdated" and e.task_id == task_id:
            status = json.loads(e.payload_json)["status"]
            if status.get("healthy") is not None:
                out.append(status)
    return out


def requests_seen(control: Path) -> int:
    try:
        return len((control / "requests").read_text().splitlines())
    except OSError:
        return 0


def cli(cluster: LocalCluster, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "tessera.control_plane.cli.main", "--masters",
                           ",".join(cluster.grpc_addresses()), *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_an_http_checked_task_is_reported_healthy_once_then_unhealthy_once_and_killed_for_it(
        cluster: LocalCluster, framework: tuple[Recorder, SchedulerDriver], tmp_path: Path) -> None:
    recorder, _ = framework
    control = tmp_path / "web"
    check = HealthCheck(http=HttpCheck(port=31201, path="/health"), delay=0, interval=0.3, grace_period=20,
                        consecutive_failures=3)
    launch(framework, server_task("web", 31201, control, check, kill_grace_period=1.0))
    healthy = recorder.wait(lambda: next(iter(health_updates(recorder, "web")), None))
    assert healthy.healthy is True and healthy.reason == HEALTH_UPDATED, healthy
    assert healthy.state is TaskState.TASK_RUNNING and "GET http://127.0.0.1:31201/health: 200" in healthy.message
    # more checks pass, and nothing more is reported: health did not change
    seen = requests_seen(control)
    wait_for(lambda: requests_seen(control) >= seen + 5, 60, what="five more passing checks")
    assert len(health_updates(recorder, "web")) == 1, health_updates(recorder, "web")

    rows = [line.replace("\u2502", " ").split() for line in cli(cluster, "tasks").splitlines()]
    assert any(row[:1] == ["web"] and row[4] == "healthy" for row in rows), rows  # the health column

    (control / "sick").write_text("")  # from now on the task answers 503
    final = recorder.final("web")
    assert final.state is TaskState.TASK_KILLED and final.reason == "REASON_TASK_UNHEALTHY", final
    assert final.healthy is False and "3 consecutive failed health checks" in final.message, final
    updates = health_updates(recorder, "web")
    assert [s.healthy for s in updates] == [True, False], updates
    assert "503 (healthy: 200-399)" in updates[1].message
    killing = [s for s in recorder.of("web") if s.state is TaskState.TASK_KILLING]
    assert len(killing) == 1 and killing[0].reason == "REASON_TASK_UNHEALTHY", killing
    # the event log holds one TaskStatusUpdated per change of health, in order
    logged = [(s["state"], s["healthy"], s["reason"]) for s in health_events(cluster, "web")]
    assert logged == [("TASK_RUNNING", True, HEALTH_UPDATED), ("TASK_RUNNING", False, HEALTH_UPDATED),
                      ("TASK_KILLING", False, "REASON_TASK_UNHEALTHY"),
                      ("TASK_KILLED", False, "REASON_TASK_UNHEALTHY")], logged

    timeline = cli(cluster, "timeline", "web")
    assert "healthy" in timeline and "unhealthy" in timeline, timeline


def test_failures_in_the_grace_period_before_the_first_success_are_not_reported(
        cluster: LocalCluster, framework: tuple[Recorder, SchedulerDriver], tmp_path: Path) -> None:
    recorder, driver = framework
    control = tmp_path / "slow"
    control.mkdir()
    (control / "sick").write_text("")  # answers 503 until the test removes it: a slow start
    check = HealthCheck(http=HttpCheck(port=31205, path="/ready"), delay=0, interval=0.2, grace_period=120,
                        consecutive_failures=1)  # one counted failure would kill it
    launch(framework, server_task("slow", 31205, control, check))
    wait_for(lambda: requests_seen(control) >= 5, 60, what="five failing checks")
    assert health_updates(recorder, "slow") == [] and not any(s.is_terminal for s in recorder.of("slow"))
    (control / "sick").unlink()
    healthy = recorder.wait(lambda: next(iter(health_updates(recorder, "slow")), None))
    assert healthy.healthy is True, healthy
    driver.kill("slow")
    final = recorder.final("slow")
    assert final.state is TaskState.TASK_KILLED and final.reason == "" and final.healthy is None, final
    assert [s.healthy for s in health_updates(recorder, "slow")] == [True]


def test_a_tcp_check_reports_healthy_once_the_task_listens(
        cluster: LocalCluster, framework: tuple[Recorder, SchedulerDriver], tmp_path: Path) -> None:
    recorder, driver = framework
    port = 31210
    script = tmp_path / "tcp.py"
    script.write_text(textwrap.dedent(f"""
        import socket
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", {port})); s.listen(16)
        while True:
            s.accept()[0].close()
    """))
    check = HealthCheck(tcp=TcpCheck(port), delay=0, interval=0.3, grace_period=30)
    launch(framework, TaskInfo(task_id="tcp", resources=Resources.of(cpus=0.1, mem=64, ports=[(port, port)]),
                               command=(sys.executable, str(script)), health_check=check))
    healthy = recorder.wait(lambda: next(iter(health_updates(recorder, "tcp")), None))
    assert healthy.healthy is True and f"TCP connect to 127.0.0.1:{port}: open" in healthy.message, healthy
    driver.kill("tcp")
    assert recorder.final("tcp").state is TaskState.TASK_KILLED
    assert [s.healthy for s in health_updates(recorder, "tcp")] == [True]


def test_a_command_check_runs_as_the_tasks_user_in_its_sandbox(
        cluster: LocalCluster, framework: tuple[Recorder, SchedulerDriver]) -> None:
    recorder, driver = framework
    # healthy only when run as `nobody` (the task's user) in the sandbox, where the task made `ready`
    check = HealthCheck(command='test -f ready && test "$(id -un)" = nobody && test "$CHECK_ENV" = yes',
                        env={"CHECK_ENV": "yes"}, delay=0, interval=0.3, grace_period=30, consecutive_failures=2)
    launch(framework, TaskInfo(task_id="cmd", resources=Resources.of(cpus=0.1, mem=64), user="nobody",
                               command="sleep 0.5; touch ready; exec sleep 600", health_check=check))
    healthy = recorder.wait(lambda: next(iter(health_updates(recorder, "cmd")), None))
    assert healthy.healthy is True and "exit status 0" in healthy.message, healthy
    driver.kill("cmd")
    assert recorder.final("cmd").state is TaskState.TASK_KILLED
    assert [s.healthy for s in health_updates(recorder, "cmd")] == [True]


def test_a_check_the_master_cannot_accept_is_refused_at_the_launch(
        cluster: LocalCluster, framework: tuple[Recorder, SchedulerDriver], tmp_path: Path) -> None:
    recorder, _ = framework
    # a port the task does not hold: the SDK cannot tell, the master refuses it
    launch(framework, server_task("wrong-port", 31220, tmp_path / "w", HealthCheck(http=HttpCheck(port=31221))))
    recorder.wait(lambda: next((r for r in recorder.refusals if "health_check.http.port" in r), None))
    # an interval below the timeout, as a client that does not check would send it (the SDK refuses to make it)
    check = HealthCheck(tcp=TcpCheck(31222), interval=1.0)
    object.__setattr__(check, "timeout", 5.0)
    launch(framework, server_task("short-interval", 31222, tmp_path / "s", check))
    refusal = recorder.wait(lambda: next((r for r in recorder.refusals if "interval_seconds" in r), None))
    assert "below timeout_seconds" in refusal
    assert not recorder.of("wrong-port") and not recorder.of("short-interval")  # never launched
    # the framework goes on: a good task still runs
    launch(framework, server_task("fine", 31223, tmp_path / "f", HealthCheck(tcp=TcpCheck(31223), delay=0,
                                                                             interval=0.5)))
    assert recorder.wait(lambda: next(iter(health_updates(recorder, "fine")), None)).healthy is True
    _, driver = framework
    driver.kill("fine")
    recorder.final("fine")

