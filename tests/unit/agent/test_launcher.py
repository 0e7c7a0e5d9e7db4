"""The supervisor and the process launcher with real short processes: output, exit codes, kills with a
grace period, missing commands, recovery without the launcher that started the task, usage."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tessera.agent.core.tasks import terminal_status
from tessera.agent.executor.isolation import RlimitIsolator
from tessera.agent.executor.launcher import (
    LaunchError,
    LaunchHandle,
    Observation,
    ProcessLauncher,
    kill_tasks_in,
)
from tessera.agent.executor.output import LogRotation
from tessera.agent.executor.supervisor import read_json
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import CommandInfo, TaskInfo, TaskState

S = TaskState
PY = sys.executable


def shell_task(command: str, task_id: str = "t1", **kw: object) -> TaskInfo:
    return TaskInfo(task_id=task_id, framework_id="fw", resources=Resources.of(cpus=0.5, mem=256),
                    command=CommandInfo(shell=True, value=command, **kw))  # type: ignore[arg-type]


def argv_task(program: str, *args: str, task_id: str = "t1") -> TaskInfo:
    return TaskInfo(task_id=task_id, framework_id="fw", resources=Resources.of(cpus=0.5, mem=256),
                    command=CommandInfo(shell=False, value=program, arguments=args))


def wait(launcher: ProcessLauncher, handle: LaunchHandle, predicate, timeout: float = 20.0) -> Observation:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        obs = launcher.observe(handle)
        if predicate(obs):
            return obs
        assert time.monotonic() < deadline, f"timed out; last observation {obs}"
        time.sleep(0.05)


def run_to_end(launcher: ProcessLauncher, info: TaskInfo, timeout: float = 20.0) -> tuple[LaunchHandle, Observation]:
    handle = launcher.launch(info)
    obs = wait(launcher, handle, lambda o: o.ended, timeout)
    launcher.release(handle)
    return handle, obs


@pytest.fixture(params=["fork-server", "interpreter"])
def launcher(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ProcessLauncher]:
    """Every test runs with supervisors forked by the fork server and started as fresh interpreters."""
    launcher = ProcessLauncher(tmp_path / "sandboxes", RlimitIsolator(), fork_server=request.param == "fork-server")
    yield launcher
    launcher.close()
    # Leave no task behind: kill whatever a failed test left running.
    for sandbox in (tmp_path / "sandboxes").glob("*/*"):
        sup = read_json(sandbox / "supervisor.json")
        if sup and not (sandbox / "exit_status.json").exists():
            try:
                os.kill(int(sup["supervisor_pid"]), signal.SIGTERM)
            except OSError:
                pass


def test_echo_output_lands_in_the_sandbox_stdout(launcher: ProcessLauncher) -> None:
    handle, obs = run_to_end(launcher, shell_task("echo hi; echo oops >&2"))
    assert handle.sandbox == launcher.work_dir / "fw" / "t1"
    assert (handle.task_dir / "stdout").read_text() == "hi\n"
    assert (handle.task_dir / "stderr").read_text() == "oops\n"
    assert obs.started and obs.exit is not None
    out = terminal_status(obs.exit, kill_requested=False)
    assert out.state is S.TASK_FINISHED and out.exit_code == 0
    assert read_json(handle.sandbox / "task.json")["task_pid"] > 0


def test_a_chatty_task_rotates_its_output_within_the_bound_and_its_tail_still_reaches_the_status(
        launcher: ProcessLauncher) -> None:
    launcher.log_rotation = LogRotation(max_bytes=64 * 1024, keep=2)
    # `yes` writes as fast as it can: 20 MB, over 300 times the limit, then a last line
    handle, obs = run_to_end(launcher, shell_task("yes | head -c 20000000; echo; echo END; echo bye >&2"), timeout=120)
    assert obs.exit is not None and obs.exit.exit_code == 0, obs
    names = sorted(p.name for p in handle.task_dir.iterdir() if p.name.startswith("stdout"))
    assert names == ["stdout", "stdout.1", "stdout.2"]
    total = sum((handle.task_dir / n).stat().st_size for n in names)
    assert total <= 3 * 64 * 1024  # (keep + 1) * max_bytes, nothing over
    assert (handle.task_dir / "stdout.1").stat().st_size == 64 * 1024
    assert len(obs.exit.stdout_tail) == 4096 and obs.exit.stdout_tail.endswith(b"y\n\nEND\n")
    assert (handle.task_dir / "stderr").read_text() == "bye\n"


def test_exit_code_is_recorded_in_shell_and_argv_modes(launcher: ProcessLauncher) -> None:
    _, obs = run_to_end(launcher, shell_task("exit 3", task_id="sh"))
    assert obs.exit is not None and obs.exit.exit_code == 3
    assert terminal_status(obs.exit, False).state is S.TASK_FAILED
    _, obs = run_to_end(launcher, argv_task(PY, "-c", "import sys; sys.exit(5)", task_id="argv"))
    assert obs.exit is not None and obs.exit.exit_code == 5


def test_environment_and_working_directory(launcher: ProcessLauncher) -> None:
    info = shell_task('echo "$FOO $TESSERA_TASK_ID"; pwd', environment=(("FOO", "bar"),), working_dir="sub")
    handle, obs = run_to_end(launcher, info)
    assert (handle.task_dir / "stdout").read_text().splitlines() == ["bar t1", str(handle.task_dir / "sub")]


def test_task_ids_are_made_safe_for_paths(launcher: ProcessLauncher) -> None:
    info = TaskInfo(task_id="../../etc/x", framework_id="../fw", command=CommandInfo(value="true"))
    sandbox = launcher.sandbox_for(info)
    assert sandbox.resolve().is_relative_to(launcher.work_dir.resolve())


def test_missing_command_in_a_shell_fails_with_127_and_stderr(launcher: ProcessLauncher) -> None:
    _, obs = run_to_end(launcher, shell_task("no-such-command-tessera-xyz"))
    assert obs.exit is not None
    out = terminal_status(obs.exit, False)
    assert out.state is S.TASK_FAILED and out.exit_code == 127
    assert "not found" in out.message and "no-such-command-tessera-xyz" in out.message


def test_missing_program_in_argv_mode_fails_with_127_and_the_reason(launcher: ProcessLauncher) -> None:
    handle, obs = run_to_end(launcher, argv_task("/no/such/program"))
    assert obs.exit is not None and not obs.started
    out = terminal_status(obs.exit, False)
    assert out.state is S.TASK_FAILED and out.exit_code == 127
    assert "/no/such/program" in out.message and "No such file" in out.message
    assert "cannot execute" in (handle.task_dir / "stderr").read_text()


def test_kill_sends_sigterm_then_sigkill_after_the_grace_period(launcher: ProcessLauncher) -> None:
    # The task traps SIGTERM (records it, keeps running and ticking), so only SIGKILL can end it.
    script = ("trap 'echo got-term >> life.log' TERM; echo ready; "
              "while true; do echo tick >> life.log; sleep 0.05; done")
    handle = launcher.launch(shell_task(script))
    wait(launcher, handle, lambda o: o.started and (handle.task_dir / "stdout").read_text() == "ready\n")
    grace = 1.0
    killed_at = time.monotonic()
    launcher.kill(handle, grace)
    obs = wait(launcher, handle, lambda o: o.ended)
    elapsed = time.monotonic() - killed_at
    launcher.release(handle)
    assert obs.exit is not None and obs.exit.signal == signal.SIGKILL and obs.exit.killed
    life = (handle.task_dir / "life.log").read_text().splitlines()
    assert "got-term" in life, "SIGTERM was not sent first"
    assert "tick" in life[life.index("got-term") + 1:], "the task did not live on after SIGTERM"
    assert elapsed >= grace  # a lower bound: SIGKILL never comes before the grace period is over
    out = terminal_status(obs.exit, kill_requested=True)
    assert out.state is S.TASK_KILLED and "SIGKILL" in out.message
    log = (handle.sandbox / "supervisor.log").read_text()
    assert log.index("SIGKILL in 1s") < log.index("grace period over")


def test_a_kill_with_a_shutdown_delay_drains_before_sigterm(launcher: ProcessLauncher) -> None:
    # The task records SIGTERM and keeps ticking; the supervisor must leave it alone for the drain first.
    script = ("trap 'echo got-term >> life.log' TERM; echo ready; "
              "while true; do echo tick >> life.log; sleep 0.05; done")
    handle = launcher.launch(shell_task(script))
    wait(launcher, handle, lambda o: o.started and (handle.task_dir / "stdout").read_text() == "ready\n")
    killed_at = time.monotonic()
    launcher.kill(handle, 0.5, shutdown_delay=1.0)
    obs = wait(launcher, handle, lambda o: o.ended)
    elapsed = time.monotonic() - killed_at
    launcher.release(handle)
    assert obs.exit is not None and obs.exit.signal == signal.SIGKILL and obs.exit.killed
    life = (handle.task_dir / "life.log").read_text().splitlines()
    assert "got-term" in life and "tick" in life[life.index("got-term") + 1:]
    assert elapsed >= 1.5  # a lower bound: the drain, then the grace period, before SIGKILL
    log = (handle.sandbox / "supervisor.log").read_text()
    assert "draining 1s, then SIGTERM to the task, SIGKILL in 0.5s after it" in log
    assert log.index("draining 1s") < log.index("drain over; SIGTERM") < log.index("grace period over")


def test_task_that_honours_sigterm_ends_by_it(launcher: ProcessLauncher) -> None:
    handle = launcher.launch(argv_task("sleep", "60"))
    wait(launcher, handle, lambda o: o.started)
    launcher.kill(handle, 30.0)
    obs = wait(launcher, handle, lambda o: o.ended)
    assert obs.exit is not None and obs.exit.signal == signal.SIGTERM
    assert terminal_status(obs.exit, True).state is S.TASK_KILLED


def test_zero_grace_kills_at_once(launcher: ProcessLauncher) -> None:
    handle = launcher.launch(shell_task("trap '' TERM; sleep 60"))
    wait(launcher, handle, lambda o: o.started)
    launcher.kill(handle, 0.0)
    obs = wait(launcher, handle, lambda o: o.ended)
    assert obs.exit is not None and obs.exit.signal == signal.SIGKILL


def test_processes_left_behind_die_with_the_task(launcher: ProcessLauncher) -> None:
    handle, obs = run_to_end(launcher, shell_task("sleep 60 & echo $! > bg.pid; exit 0"))
    bg = int((handle.task_dir / "bg.pid").read_text())
    deadline = time.monotonic() + 10
    while psutil.pid_exists(bg) and psutil.Process(bg).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the background process outlived its task"
        time.sleep(0.05)
    assert obs.exit is not None and obs.exit.exit_code == 0


def test_a_new_launcher_finds_a_running_task_and_can_kill_it(launcher: ProcessLauncher, tmp_path: Path) -> None:
    first = launcher.launch(argv_task("sleep", "60"))
    wait(launcher, first, lambda o: o.started)
    # What a restarted agent has: the checkpointed fields, no Popen object.
    again = ProcessLauncher(launcher.work_dir, RlimitIsolator())
    handle = again.handle_from_checkpoint(first.task_id, first.framework_id, str(first.sandbox), first.supervisor_pid,
                                          first.supervisor_start, first.isolation.to_json(), False)
    obs = again.observe(handle)
    assert obs.started and not obs.ended
    again.kill(handle, 5.0)
    obs = wait(again, handle, lambda o: o.ended)
    assert obs.exit is not None and obs.exit.killed
    if first.popen is not None:
        first.popen.wait(timeout=10)  # reap it: it was this process's child


def test_a_recycled_pid_is_not_taken_for_the_supervisor(launcher: ProcessLauncher) -> None:
    handle = launcher.launch(argv_task("sleep", "60"))
    wait(launcher, handle, lambda o: o.started)
    impostor = launcher.handle_from_checkpoint(handle.task_id, handle.framework_id, str(handle.sandbox),
                                               handle.supervisor_pid, handle.supervisor_start - 1000.0,
                                               handle.isolation.to_json(), False)
    assert launcher.supervisor_alive(handle)
    assert not launcher.supervisor_alive(impostor)
    launcher.kill(handle, 0)
    wait(launcher, handle, lambda o: o.ended)


@pytest.mark.parametrize("writing", [False, True])
def test_supervisor_killed_without_an_exit_record_is_reported_and_its_task_killed(
        launcher: ProcessLauncher, writing: bool) -> None:
    # A task that writes dies of its next write too (its stdout is a pipe to the dead supervisor): it is
    # not left writing into nothing unseen.
    info = shell_task("while :; do echo tick; sleep 0.05; done") if writing else argv_task("sleep", "60")
    handle = launcher.launch(info)
    wait(launcher, handle, lambda o: o.started)
    task_pid = read_json(handle.sandbox / "task.json")["task_pid"]
    os.kill(handle.supervisor_pid, signal.SIGKILL)
    obs = wait(launcher, handle, lambda o: o.ended)
    assert obs.exit is None and "supervisor" in obs.supervisor_lost
    deadline = time.monotonic() + 10
    while psutil.pid_exists(task_pid) and psutil.Process(task_pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the orphaned task was not killed"
        time.sleep(0.05)


def test_usage_reports_cpu_and_memory_of_the_task(launcher: ProcessLauncher) -> None:
    handle = launcher.launch(argv_task(PY, "-c", "import time\nx = bytearray(b'1' * (20 << 20))\n"
                                            "t = time.time()\nwhile time.time() - t < 60: pass"))
    wait(launcher, handle, lambda o: o.started)
    deadline = time.monotonic() + 20
    while True:
        usage = launcher.usage(handle)
        if usage is not None and usage.cpu_seconds > 0.05 and usage.rss_bytes > 20 << 20:
            break
        assert time.monotonic() < deadline, f"usage never showed the work: {usage}"
        time.sleep(0.1)
    launcher.kill(handle, 0)
    wait(launcher, handle, lambda o: o.ended)
    assert launcher.usage(handle) is None


def test_kill_tasks_in_ends_every_task_left_in_a_work_dir(launcher: ProcessLauncher) -> None:
    handles = [launcher.launch(argv_task("sleep", "60", task_id=f"left-{i}")) for i in range(3)]
    for h in handles:
        wait(launcher, h, lambda o: o.started)
    done = launcher.launch(shell_task("true", task_id="done"))
    wait(launcher, done, lambda o: o.ended)
    assert kill_tasks_in(launcher.work_dir) == 3  # the finished one is left alone
    for h in handles:
        obs = wait(launcher, h, lambda o: o.ended)
        assert obs.exit is not None and obs.exit.killed


def test_unknown_user_fails_the_launch_with_the_reason(launcher: ProcessLauncher) -> None:
    # Found when the sandbox is made for the user (before any process starts): TASK_FAILED from the agent.
    with pytest.raises(LaunchError, match="no-such-user-tessera.*no such user"):
        launcher.prepare(shell_task("true", user="no-such-user-tessera"))
    assert not list(launcher.work_dir.glob("*/*/launch.json"))
