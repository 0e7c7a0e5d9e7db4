"""The I/O half of health checks (agent/executor/health.py): the probes against servers and commands this test
starts on 127.0.0.1, health.json and its reading, the launch.json form of a check, and the checker thread."""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tessera.agent.core.health import HealthChange
from tessera.agent.executor import health as checks
from tessera.agent.executor.supervisor import read_json, write_json_atomic
from tessera.control_plane.core.values import CommandInfo, HealthCheck, HealthCheckType, HttpCheck, TcpCheck


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        code = int(self.path.rsplit("/", 1)[-1]) if self.path.rsplit("/", 1)[-1].isdigit() else 200
        if self.path.startswith("/hang"):
            time.sleep(3)
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_http_counts_2xx_and_3xx_or_the_given_statuses(server: int) -> None:
    assert checks.HttpProbe("127.0.0.1", HttpCheck(port=server, path="/ok/204")).run(2) == (
        True, f"GET http://127.0.0.1:{server}/ok/204: 204")
    assert checks.HttpProbe("127.0.0.1", HttpCheck(port=server, path="/x/302")).run(2)[0]
    ok, message = checks.HttpProbe("127.0.0.1", HttpCheck(port=server, path="/x/500")).run(2)
    assert not ok and message.endswith("500 (healthy: 200-399)")
    only = HttpCheck(port=server, path="/x/404", statuses=(404,))
    assert checks.HttpProbe("127.0.0.1", only).run(2)[0]
    assert not checks.HttpProbe("127.0.0.1", HttpCheck(port=server, path="/x/200", statuses=(404,))).run(2)[0]


def test_http_that_does_not_answer_in_time_fails(server: int) -> None:
    ok, message = checks.HttpProbe("127.0.0.1", HttpCheck(port=server, path="/hang")).run(0.3)
    assert not ok and "no answer within 0.3s" in message, message
    ok, message = checks.HttpProbe("127.0.0.1", HttpCheck(port=closed_port())).run(1)
    assert not ok and "refused" in message.lower(), message


def test_tcp_open_and_refused(server: int) -> None:
    assert checks.TcpProbe("127.0.0.1", TcpCheck(server)).run(1) == (True, f"TCP connect to 127.0.0.1:{server}: open")
    ok, message = checks.TcpProbe("127.0.0.1", TcpCheck(closed_port())).run(1)
    assert not ok and "refused" in message.lower(), message


def test_a_command_passes_on_exit_0_and_fails_otherwise_with_its_output(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "WHO": "check"}
    assert checks.CommandProbe(["/bin/sh", "-c", 'test "$WHO" = check'], env=env).run(2)[0]
    ok, message = checks.CommandProbe(["/bin/sh", "-c", "echo not ready; exit 3"], env=env, what="probe").run(2)
    assert not ok and message == "probe: exit status 3; output: not ready"
    ok, message = checks.CommandProbe(["/no/such/program"], env=env, what="probe").run(2)
    assert not ok and "cannot run it" in message
    assert checks.CommandProbe(["/bin/sh", "-c", "test -f here"], env=env, cwd=str(tmp_path)).run(2)[0] is False
    (tmp_path / "here").write_text("")
    assert checks.CommandProbe(["/bin/sh", "-c", "test -f here"], env=env, cwd=str(tmp_path)).run(2)[0]


def test_a_command_over_its_timeout_is_killed_with_what_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "child"
    argv = ["/bin/sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"]
    ok, message = checks.CommandProbe(argv, env={"PATH": "/usr/bin:/bin"}, what="probe").run(0.5)
    assert not ok and "still running after 0.5s (killed)" in message
    child = int(pid_file.read_text())

    def gone() -> bool:
        try:
            return psutil.Process(child).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    deadline = time.monotonic() + 10  # SIGKILL was sent; its delivery on a loaded machine may take a moment
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gone(), "the check's own child outlived the check"


def test_cancel_ends_a_command_under_way() -> None:
    probe = checks.CommandProbe(["sleep", "60"], env={"PATH": "/usr/bin:/bin"}, what="probe")
    result: list[tuple[bool, str]] = []
    thread = threading.Thread(target=lambda: result.append(probe.run(30)))
    thread.start()
    deadline = time.monotonic() + 10
    while probe._process is None and time.monotonic() < deadline:
        time.sleep(0.01)
    probe.cancel()
    thread.join(10)
    assert not thread.is_alive() and result and not result[0][0]
    assert probe.run(1) == (False, "cancelled")  # nothing starts after a cancel


def test_a_container_without_an_address_fails_its_check_saying_so() -> None:
    assert checks.Unreachable("the container has no address").run(1) == (False, "the container has no address")


def test_a_container_check_is_runc_exec_in_the_container() -> None:
    command = CommandInfo(shell=True, value="wget -q -O- localhost:8080", environment=(("A", "1"),), working_dir="w")
    assert checks.container_exec_argv("/usr/sbin/runc", "/var/lib/a/runc", "tessera-x", command) == [
        "/usr/sbin/runc", "--root", "/var/lib/a/runc", "exec", "--env", "A=1", "--cwd", "/tessera/sandbox/w",
        "tessera-x", "/bin/sh", "-c", "wget -q -O- localhost:8080"]


def test_a_check_survives_launch_json() -> None:
    for check in (HealthCheck(type=HealthCheckType.HTTP, http=HttpCheck(port=8080, path="/h", statuses=(204,)),
                              delay_seconds=0.0, consecutive_failures=1),
                  HealthCheck(type=HealthCheckType.TCP, tcp=TcpCheck(5)),
                  HealthCheck(type=HealthCheckType.COMMAND,
                              command=CommandInfo(shell=False, value="test", arguments=("-f", "x"),
                                                  environment=(("K", "V"),), working_dir="d"))):
        assert checks.check_from_json(checks.check_to_json(check)) == check


def test_health_json_keeps_the_newest_changes_and_is_read_after_a_seq() -> None:
    written: dict[str, Any] = {}
    record = checks.HealthFile(Path("/unused"), lambda path, data: written.update(data))
    for n in range(checks.KEPT_CHANGES + 3):
        record.add(HealthChange(n % 2 == 0, f"change {n + 1}"))
    assert written["seq"] == checks.KEPT_CHANGES + 3 and len(written["changes"]) == checks.KEPT_CHANGES
    seq, changes = checks.read_changes(written, checks.KEPT_CHANGES + 1)
    assert seq == checks.KEPT_CHANGES + 3 and [c.message for c in changes] == ["change 34", "change 35"]
    # after an agent restart (the seq it saw is not known): the newest change only
    assert [c.message for c in checks.read_changes(written, None)[1]] == ["change 35"]
    assert checks.read_changes(None, 7) == (7, ())
    assert checks.read_changes({"seq": "x"}, 7) == (7, ())


class ScriptedProbe:
    """Passes or fails as scripted (the last answer repeats)."""

    def __init__(self, answers: list[bool]) -> None:
        self.answers = answers
        self.calls = 0

    def run(self, timeout: float) -> tuple[bool, str]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return answer, f"call {self.calls}"

    def cancel(self) -> None:
        return None


def test_the_checker_thread_records_changes_and_asks_for_the_kill_once(tmp_path: Path) -> None:
    check = HealthCheck(type=HealthCheckType.TCP, tcp=TcpCheck(1), delay_seconds=0.0, interval_seconds=0.01,
                        timeout_seconds=0.01, grace_period_seconds=0.0, consecutive_failures=2)
    path = tmp_path / "health.json"
    kills: list[str] = []
    done = threading.Event()
    checker = checks.HealthChecker(check, ScriptedProbe([True, True, False, False, True]),
                                   checks.HealthFile(path, lambda p, d: write_json_atomic(p, d, durable=False)),
                                   lambda why: (kills.append(why), done.set()), started_at=time.monotonic())
    checker.start()
    assert done.wait(10), "no kill"
    checker.stop()
    data = read_json(path)
    assert data is not None
    assert [(c["healthy"], c["kill"]) for c in data["changes"]] == [(True, False), (False, False), (False, True)]
    assert kills == [data["changes"][-1]["message"]] and "call 4" in kills[0]


def test_a_stopped_checker_records_nothing_more(tmp_path: Path) -> None:
    check = HealthCheck(type=HealthCheckType.TCP, tcp=TcpCheck(1), delay_seconds=60.0)
    path = tmp_path / "health.json"
    checker = checks.HealthChecker(check, ScriptedProbe([True]), checks.HealthFile(path, lambda p, d: None),
                                   lambda why: None, started_at=time.monotonic())
    checker.start()
    checker.stop()
    assert checker._thread is not None
    checker._thread.join(5)
    assert not checker._thread.is_alive() and not path.exists()
