"""The test harness's own promise: what a test starts dies with the test process, even on SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.support.cluster import LocalCluster, spawn, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_spawned_process_dies_when_the_runner_is_killed_hard(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    runner = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from pathlib import Path\n"
         "from tests.support.cluster import spawn\n"
         f"p = spawn(['sleep', '120'], Path({str(log)!r}))\n"
         "print(p.pid, flush=True)\n"
         "time.sleep(120)\n"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert runner.stdout is not None
        pid = int(runner.stdout.readline())
        # the launcher replaced itself with the command: same PID, now `sleep`, in its own session
        wait_for(lambda: psutil.Process(pid).name() == "sleep", 10, what="the launcher to exec the command")
        assert psutil.Process(pid).ppid() == runner.pid
        assert os.getsid(pid) == pid  # its own session
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
        wait_for(lambda: _gone(pid), 10, what="the spawned process to die with its runner")
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(10)


def test_output_goes_to_the_log_and_the_environment_is_passed(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    proc = spawn([sys.executable, "-c", "import os, sys; print(os.environ['SPAWN_PROBE'], flush=True); "
                  "print('to stderr', file=sys.stderr)"], log, {"SPAWN_PROBE": "here", "PATH": "/usr/bin:/bin"})
    assert proc.wait(20) == 0
    assert log.read_text().split() == ["here", "to", "stderr"]


def test_a_command_that_cannot_be_executed_says_so_in_the_log(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    proc = spawn([str(tmp_path / "no-such-program")], log)
    assert proc.wait(20) == 127
    assert "cannot execute" in log.read_text() and "No such file" in log.read_text()


def test_waiting_for_a_leader_fails_at_once_naming_a_master_that_exited_on_its_own(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, n=3) as cluster:
        cluster.masters[1].extra_flags = ["--no-such-flag"]  # click refuses it: exit code 2
        cluster.start_all()
        # a timeout far beyond the test's own: only failing fast can answer before it
        with pytest.raises(AssertionError, match=r"m2 \(exit code 2"):
            cluster.leader(timeout=3600)
        cluster.kill(cluster.masters[1])  # the test's own doing from here: no longer a crash
        assert not cluster.masters[1].crashed
