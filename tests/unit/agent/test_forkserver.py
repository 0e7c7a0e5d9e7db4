"""The supervisor fork server with real processes: a forked supervisor lives in its own session and
outlives the server (kill -9), the launcher starts a new server for the next task, exits are reported,
and a launch whose server died is either found in the sandbox or called off."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tessera.agent.executor.forkserver import ForkServer
from tessera.agent.executor.isolation import RlimitIsolator
from tessera.agent.executor.launcher import LaunchError, LaunchHandle, ProcessLauncher, kill_tasks_in
from tessera.agent.executor.supervisor import read_json
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import CommandInfo, TaskInfo
from tests.unit.agent.test_launcher import wait


def task(command: str, task_id: str) -> TaskInfo:
    return TaskInfo(task_id=task_id, framework_id="fw", resources=Resources.of(cpus=0.5, mem=256),
                    command=CommandInfo(shell=True, value=command))




def gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not gone(pid):
        assert time.monotonic() < deadline, f"process {pid} is still alive"
        time.sleep(0.02)


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[ProcessLauncher]:
    launcher = ProcessLauncher(tmp_path / "sandboxes", RlimitIsolator())
    yield launcher
    launcher.close()
    kill_tasks_in(tmp_path / "sandboxes")


def test_a_forked_supervisor_runs_in_its_own_session_and_is_not_a_child_of_the_launcher(
        launcher: ProcessLauncher) -> None:
    handle = launcher.launch(task("sleep 60", "own-session"))
    wait(launcher, handle, lambda o: o.started)
    assert handle.popen is None
    server = launcher.fork_server
    assert server is not None and server.pid is not None
    sup = psutil.Process(handle.supervisor_pid)
    assert sup.ppid() == server.pid  # forked by the server, not started by this process
    assert os.getsid(handle.supervisor_pid) == handle.supervisor_pid != os.getsid(server.pid)
    task_pid = int(read_json(handle.sandbox / "task.json")["task_pid"])  # type: ignore[index]
    assert os.getsid(task_pid) == task_pid  # the task has a session of its own too
    assert abs(sup.create_time() - handle.supervisor_start) < 0.05
    assert (handle.task_dir / "stdout").exists() and (handle.task_dir / "stderr").exists()
    launcher.kill(handle, 0)
    obs = wait(launcher, handle, lambda o: o.ended)
    assert obs.exit is not None and obs.exit.killed


def test_the_task_outlives_a_kill_9_of_the_server_and_the_next_launch_starts_a_new_one(
        launcher: ProcessLauncher) -> None:
    (launcher.work_dir / "gate").parent.mkdir(parents=True, exist_ok=True)
    gate = launcher.work_dir / "gate"
    first = launcher.launch(task(f"while [ ! -e {gate} ]; do sleep 0.05; done; exit 3", "outlives"))
    wait(launcher, first, lambda o: o.started)
    server = launcher.fork_server
    assert server is not None and server.pid is not None
    old = server.pid
    os.kill(old, signal.SIGKILL)
    wait_gone(old)
    assert launcher.observe(first).started and not launcher.observe(first).ended  # still running
    # A new server is started as soon as the old one's end is seen, before any launch needs it.
    deadline = time.monotonic() + 20
    while server.pid in (None, old):
        assert time.monotonic() < deadline, "no new fork server"
        time.sleep(0.02)
    second = launcher.launch(task("echo again", "after-restart"))
    assert server.starts == 2
    obs = wait(launcher, second, lambda o: o.ended)
    assert obs.exit is not None and obs.exit.exit_code == 0 and obs.exit.stdout_tail == b"again\n"
    # The orphaned supervisor still records the real exit status of its task.
    gate.write_text("go")
    obs = wait(launcher, first, lambda o: o.ended)
    assert obs.exit is not None and obs.exit.exit_code == 3 and not obs.exit.killed


def test_kill_with_a_grace_period_through_a_forked_supervisor(launcher: ProcessLauncher) -> None:
    handle = launcher.launch(task("trap 'echo term; exit 143' TERM; echo ready; while true; do sleep 0.05; done",
                                  "grace"))
    # the shell has installed its trap once it has said so
    wait(launcher, handle, lambda o: o.started and (handle.task_dir / "stdout").read_text() == "ready\n")
    launcher.kill(handle, 5.0)
    obs = wait(launcher, handle, lambda o: o.ended)
    assert obs.exit is not None and obs.exit.killed and obs.exit.exit_code == 143
    assert b"term" in obs.exit.stdout_tail


def test_exits_are_reported_to_the_listener(launcher: ProcessLauncher) -> None:
    exited: list[int] = []
    seen = threading.Event()

    def listener(pid: int) -> None:
        exited.append(pid)
        seen.set()

    launcher.watch_exits(listener)
    handle = launcher.launch(task("true", "reported"))
    assert seen.wait(20), "no exit notice"
    assert exited == [handle.supervisor_pid]
    assert launcher.observe(handle).exit is not None  # the notice comes after exit_status.json


def test_a_launch_whose_server_died_before_forking_is_called_off(tmp_path: Path) -> None:
    # A "server" that reads the request and dies without forking anything.
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho '{\"ready\": 1}'\nread line\nexit 1\n")
    fake.chmod(0o755)
    launcher = ProcessLauncher(tmp_path / "sandboxes", RlimitIsolator(), python=str(fake))
    info = task("echo never", "called-off")
    handle = launcher.prepare(info)
    try:
        with pytest.raises(LaunchError, match="fork server died"):
            launcher.start(info, handle)
        assert (handle.sandbox / "kill.json").exists()  # a supervisor starting late would not run it
    finally:
        launcher.release(handle)
        launcher.close()


def test_a_supervisor_that_finds_kill_json_at_start_never_runs_the_task(launcher: ProcessLauncher) -> None:
    info = task("echo ran > ran", "pre-killed")
    handle = launcher.prepare(info)
    (handle.sandbox / "kill.json").write_text('{"grace_period_seconds": 0}')
    launcher.start(info, handle)
    obs = wait(launcher, handle, lambda o: o.ended)
    assert obs.exit is not None and obs.exit.killed
    assert not (handle.task_dir / "ran").exists()


def test_closing_the_server_leaves_its_supervisors_running(tmp_path: Path) -> None:
    launcher = ProcessLauncher(tmp_path / "sandboxes", RlimitIsolator())
    handle = launcher.launch(task("sleep 60", "after-close"))
    wait(launcher, handle, lambda o: o.started)
    server = launcher.fork_server
    assert isinstance(server, ForkServer)
    old = server.pid
    assert old is not None
    launcher.close()
    wait_gone(old)
    again = ProcessLauncher(tmp_path / "sandboxes", RlimitIsolator())
    found = again.handle_from_checkpoint(handle.task_id, handle.framework_id, str(handle.sandbox),
                                         handle.supervisor_pid, handle.supervisor_start, handle.isolation.to_json(),
                                         False)
    assert again.observe(found).started and not again.observe(found).ended
    assert kill_tasks_in(tmp_path / "sandboxes") == 1  # finds a forked supervisor by its recorded start time
    obs = wait(again, found, lambda o: o.ended)
    assert obs.exit is not None and obs.exit.killed
    again.close()


@pytest.mark.parametrize("fork_server", [True, False])
def test_start_many_starts_every_task_and_reports_each_failure_alone(tmp_path: Path, fork_server: bool) -> None:
    launcher = ProcessLauncher(tmp_path / "sandboxes", RlimitIsolator(), fork_server=fork_server)
    try:
        infos = [task(f"echo {i}", f"many-{i}") for i in range(8)]
        bad = TaskInfo(task_id="bad-run-dir", framework_id="fw", resources=Resources.of(cpus=0.5, mem=256),
                       command=CommandInfo(shell=True, value="true"))
        launches = [(info, launcher.prepare(info)) for info in [*infos[:4], bad, *infos[4:]]]
        shutil.rmtree(launches[4][1].sandbox)  # its launch file cannot be written
        results = launcher.start_many(launches)
        assert isinstance(results[4], LaunchError) and "cannot write to the sandbox" in str(results[4])
        handles = [r for r in results if isinstance(r, LaunchHandle)]
        assert len(handles) == 8 and len({h.supervisor_pid for h in handles}) == 8
        for i, handle in enumerate(handles):
            obs = wait(launcher, handle, lambda o: o.ended)
            assert obs.exit is not None and obs.exit.exit_code == 0 and obs.exit.stdout_tail == f"{i}\n".encode()
            launcher.release(handle)
        launcher.release(launches[4][1])
    finally:
        launcher.close()


def test_more_launches_than_the_pool_holds_and_pooled_children_end_with_the_server(tmp_path: Path) -> None:
    server = ForkServer(pool_size=2)
    sandboxes = []
    for i in range(5):
        sandbox = tmp_path / f"s{i}"
        sandbox.mkdir()
        (sandbox / "launch.json").write_text(json.dumps({
            "argv": ["/bin/sh", "-c", f"echo {i}"], "env": {"PATH": "/usr/bin:/bin"}, "cwd": str(sandbox),
            "isolation": {}}))
        sandboxes.append(sandbox)
    try:
        found = server.spawn_many(sandboxes)  # two from the pool, three forked on demand
        assert all(isinstance(f, tuple) for f in found), found
        assert len({f[0] for f in found}) == 5  # type: ignore[index]
        for sandbox in sandboxes:
            deadline = time.monotonic() + 20
            while not (sandbox / "exit_status.json").exists():
                assert time.monotonic() < deadline, f"no exit status in {sandbox}"
                time.sleep(0.02)
        assert [(s / "stdout").read_text() for s in sandboxes] == [f"{i}\n" for i in range(5)]
        assert server.pid is not None
        deadline = time.monotonic() + 20
        while len(pooled := psutil.Process(server.pid).children()) < 2:  # the pool is filled again
            assert time.monotonic() < deadline, "the pool was not filled again"
            time.sleep(0.02)
        os.kill(server.pid, signal.SIGKILL)
        for child in pooled:
            wait_gone(child.pid)  # a pooled child without a task exits when its server dies
    finally:
        server.close()
