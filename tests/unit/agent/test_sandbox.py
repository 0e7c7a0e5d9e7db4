"""Sandboxes: injective names, owners and modes, the working directory's confinement, the GC's decision
and its edges (agent/executor/sandbox.py, the supervisor's `enter_working_dir`, the launcher)."""

from __future__ import annotations

import os
import pwd
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.agent.core.tasks import validate_task
from tessera.agent.executor.isolation import RlimitIsolator
from tessera.agent.executor.launcher import LaunchHandle, Observation, ProcessLauncher
from tessera.agent.executor.output import output_tail
from tessera.agent.executor.sandbox import (
    MAX_COMPONENT,
    FinishedSandbox,
    plan_collection,
    remove_run_dir,
    sandbox_name,
    scan_finished,
    started_at,
)
from tessera.agent.executor.supervisor import (
    EXIT_FILE,
    SUPERVISOR_FILE,
    WorkingDirError,
    enter_working_dir,
    own_create_time,
)
from tessera.agent.executor.supervisor import write_json_atomic as write_json
from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.state import check_working_dir
from tessera.control_plane.core.values import CommandInfo, TaskInfo


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# ---- names -------------------------------------------------------------------------------------------------
TRICKY = ["col/1", "col_1", "col%2F1", "col%1", "", ".", "..", ".x", "%2Ex", "_", "%", "a/b", "a", "b", "a%2Fb",
          "x" * 255, "x" * 254 + "y", "/" * 255, "é", "%C3%A9", "~", "a~b", "col\\1", "t 1"]


def test_sandbox_names_are_injective_in_the_framework_and_task_pair() -> None:
    pairs = [(f, t) for f in TRICKY for t in TRICKY]
    names = {sandbox_name(f, t) for f, t in pairs}
    assert len(names) == len(pairs)
    assert sandbox_name("fw", "col/1") != sandbox_name("fw", "col_1")
    assert sandbox_name("fw-a", "t") != sandbox_name("fw-b", "t")  # two frameworks, one task id


def test_sandbox_names_are_two_plain_path_components() -> None:
    for f in TRICKY:
        for t in TRICKY:
            framework, task = sandbox_name(f, t).split("/")
            for part in (framework, task):
                assert part not in ("", ".", "..") and "/" not in part and "\0" not in part
                assert len(part.encode()) <= MAX_COMPONENT + 33
    assert sandbox_name("fw-1", "gated-1a2b") == "fw-1/gated-1a2b"  # plain ids keep their names


# ---- the working directory ------------------------------------------------------------------------------------
@pytest.mark.parametrize("working_dir", ["/etc", "../x", "../../tmp/x", "a/../../b", "a/..", "..", "/"])
def test_core_refuses_absolute_and_climbing_working_dirs(working_dir: str) -> None:
    with pytest.raises(InvalidRequest, match="working_dir"):
        check_working_dir(working_dir, "task.command.working_dir")


@pytest.mark.parametrize("working_dir", ["", "sub", "./sub//dir/", "a.b/..c/d..", ".hidden"])
def test_core_accepts_relative_working_dirs_inside_the_sandbox(working_dir: str) -> None:
    assert check_working_dir(working_dir, "task.command.working_dir") == working_dir


def test_the_agent_rechecks_the_working_dir() -> None:
    info = TaskInfo(task_id="t", framework_id="fw", resources=Resources.of(cpus=0.1),
                    command=CommandInfo(shell=True, value="true", working_dir="/etc"))
    assert "working_dir" in validate_task(info) and "absolute" in validate_task(info)


@pytest.fixture
def in_dir(tmp_path: Path) -> Iterator[Path]:
    before = os.getcwd()
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    os.chdir(sandbox)
    try:
        yield sandbox
    finally:
        os.chdir(before)


def test_enter_working_dir_creates_and_enters_a_directory_inside(in_dir: Path) -> None:
    enter_working_dir("./a//b/c/")
    assert Path.cwd() == in_dir / "a" / "b" / "c"


def test_enter_working_dir_refuses_a_symlink_on_the_way(in_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (in_dir / "esc").symlink_to(outside)
    with pytest.raises(WorkingDirError, match="'esc' is a symlink"):
        enter_working_dir("esc/deeper")
    assert Path.cwd() == in_dir and not list(outside.iterdir())


def test_enter_working_dir_refuses_a_file_and_climbing(in_dir: Path) -> None:
    (in_dir / "f").write_text("")
    with pytest.raises(WorkingDirError, match="not a directory"):
        enter_working_dir("f/x")
    with pytest.raises(WorkingDirError, match="relative path inside"):
        enter_working_dir("a/../..")
    assert Path.cwd() == in_dir


# ---- owners and modes -----------------------------------------------------------------------------------------
@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[ProcessLauncher]:
    root = tmp_path / "open"
    root.mkdir()
    root.chmod(0o755)
    launcher = ProcessLauncher(root / "sandboxes", RlimitIsolator(), fork_server=False)
    try:
        yield launcher
    finally:
        launcher.close()


def wait_ended(launcher: ProcessLauncher, handle: LaunchHandle) -> Observation:
    deadline = time.monotonic() + 20
    while not (obs := launcher.observe(handle)).ended:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    launcher.release(handle)
    return obs


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a task as another user")
def test_a_task_of_another_user_owns_its_sandbox_and_nothing_else(launcher: ProcessLauncher) -> None:
    nobody = pwd.getpwnam("nobody")
    info = TaskInfo(task_id="t/1", framework_id="fw", resources=Resources.of(cpus=0.1),
                    command=CommandInfo(shell=True, value='id -u; echo x > mine; cat ../../launch.json; exit 0',
                                        user="nobody", working_dir="w"),)
    handle = launcher.launch(info)
    obs = wait_ended(launcher, handle)
    assert obs.exit is not None and obs.exit.exit_code == 0
    assert handle.sandbox == launcher.work_dir / "fw" / "t%2F1"
    assert mode(launcher.work_dir) == 0o711 and mode(handle.sandbox.parent) == 0o711
    assert mode(handle.sandbox) == 0o711 and handle.sandbox.stat().st_uid == 0
    assert mode(handle.task_dir) == 0o700 and handle.task_dir.stat().st_uid == nobody.pw_uid
    for name in ("launch.json", "supervisor.json", "task.json", "exit_status.json", "supervisor.log"):
        assert mode(handle.sandbox / name) == 0o600 and (handle.sandbox / name).stat().st_uid == 0, name
    assert (handle.task_dir / "stdout").stat().st_uid == nobody.pw_uid
    assert (handle.task_dir / "w").stat().st_uid == nobody.pw_uid  # made as the task's user
    assert (handle.task_dir / "w" / "mine").stat().st_uid == nobody.pw_uid
    out = (handle.task_dir / "stdout").read_text()
    assert out.startswith(f"{nobody.pw_uid}\n") and "argv" not in out  # launch.json is not the task's to read
    assert "Permission denied" in (handle.task_dir / "stderr").read_text()


def test_a_working_dir_through_a_symlink_fails_the_task_with_the_reason(launcher: ProcessLauncher,
                                                                        tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    info = TaskInfo(task_id="t", framework_id="fw", resources=Resources.of(cpus=0.1),
                    command=CommandInfo(shell=True, value="touch made", working_dir="esc/x"))
    handle = launcher.prepare(info)
    (handle.task_dir / "esc").symlink_to(outside)
    handle = launcher.start(info, handle)
    obs = wait_ended(launcher, handle)
    assert obs.exit is not None and obs.exit.exit_code == 126
    assert "'esc' is a symlink" in obs.exit.launch_error
    assert not list(outside.iterdir())


def test_the_agent_reads_no_tail_through_a_symlink_or_a_hard_link(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root only")
    (tmp_path / "via-symlink").symlink_to(secret)
    os.link(secret, tmp_path / "via-hardlink")
    (tmp_path / "plain").write_bytes(b"0123456789")
    assert output_tail(tmp_path, "via-symlink", 100) == b""
    assert output_tail(tmp_path, "via-hardlink", 100) == b""
    assert output_tail(tmp_path, "plain", 4) == b"6789"
    (tmp_path / "plain.1").symlink_to(secret)  # nor through the newest rotation's name
    assert output_tail(tmp_path, "plain", 100) == b"0123456789"


# ---- garbage collection ---------------------------------------------------------------------------------------
def fs(path: str, finished_at: float, size: int = 10) -> FinishedSandbox:
    return FinishedSandbox(path, finished_at, size)


def test_sandboxes_are_collected_once_their_delay_passed() -> None:
    plan = plan_collection([fs("old", 100.0), fs("new", 950.0), fs("due", 400.0)], now=1000.0, delay=600.0,
                           max_bytes=0)
    assert plan.collect == ("old", "due") and plan.next_due == 1550.0


def test_a_zero_delay_collects_every_finished_sandbox_at_once() -> None:
    plan = plan_collection([fs("a", 999.0), fs("b", 1000.0)], now=1000.0, delay=0.0, max_bytes=0)
    assert plan.collect == ("a", "b") and plan.next_due is None


def test_over_the_cap_the_oldest_are_collected_first() -> None:
    finished = [fs("c", 30.0, 500), fs("a", 10.0, 500), fs("b", 20.0, 500)]
    plan = plan_collection(finished, now=40.0, delay=3600.0, max_bytes=1000)
    assert plan.collect == ("a",) and plan.next_due == 3620.0
    assert plan_collection(finished, now=40.0, delay=3600.0, max_bytes=499).collect == ("a", "b", "c")
    assert plan_collection([], now=0.0, delay=1.0, max_bytes=1) == plan_collection([], 5.0, 2.0, 0)


def test_the_scan_finds_finished_and_abandoned_run_dirs_and_spares_live_ones(tmp_path: Path) -> None:
    work = tmp_path / "sandboxes"
    done, live, running, abandoned = (work / "fw" / name for name in ("done", "live", "running", "abandoned"))
    for d in (done, live, running, abandoned):
        (d / "sandbox").mkdir(parents=True)
    write_json(done / EXIT_FILE, {"exit_code": 0, "finished_at": 123.0})
    (done / "sandbox" / "out").write_bytes(b"x" * 10_000)
    write_json(running / SUPERVISOR_FILE, {"supervisor_pid": os.getpid(), "create_time": own_create_time()})
    found = {Path(f.path).name: f for f in scan_finished(work, live={str(live)})}
    assert set(found) == {"done", "abandoned"}
    assert found["done"].finished_at == 123.0 and found["done"].size_bytes >= 10_000
    remove_run_dir(done)
    remove_run_dir(abandoned)
    assert not done.exists() and not abandoned.exists() and live.exists()


def test_removing_a_run_dir_never_follows_symlinks_inside(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep").write_text("k")
    run = tmp_path / "sandboxes" / "fw" / "t"
    (run / "sandbox").mkdir(parents=True)
    (run / "sandbox" / "link").symlink_to(precious)
    remove_run_dir(run)
    assert not run.exists() and not run.parent.exists() and (precious / "keep").exists()


def test_the_supervisor_module_runs_without_the_agent(tmp_path: Path) -> None:
    # launch.json written by an older agent (no "sandbox" key) still runs in its run directory.
    run = tmp_path / "old"
    run.mkdir()
    write_json(run / "launch.json", {"argv": ["/bin/sh", "-c", "echo old"], "env": {"PATH": os.defpath},
                                     "cwd": str(run), "user": "", "isolation": {"kind": "rlimits"}})
    import subprocess

    subprocess.run([sys.executable, "-m", "tessera.agent.executor.supervisor", "--sandbox", str(run)], check=True,
                   timeout=30)
    assert (run / "stdout").read_text() == "old\n"


# ---- the agent's collection ---------------------------------------------------------------------------------
def test_the_agent_collects_leftovers_at_start_and_the_rest_when_their_delay_passed(tmp_path: Path) -> None:
    from tessera.agent.checkpoint import Checkpoint
    from tessera.agent.config import AgentConfig, resolve
    from tessera.agent.runtime.agent import Agent

    config = resolve(AgentConfig(masters=("127.0.0.1:1",), data_dir=tmp_path / "agent", sandbox_gc_delay=100.0,
                                 resources="cpus:2;mem:1024;disk:1024", hostname="test-host"))
    old, recent = config.work_dir / "fw" / "old", config.work_dir / "fw" / "recent"
    for run, finished_at in ((old, 1000.0), (recent, 1950.0)):
        (run / "sandbox").mkdir(parents=True)
        write_json(run / EXIT_FILE, {"exit_code": 0, "finished_at": finished_at})
    now = [2000.0]
    cp = Checkpoint.open(tmp_path / "agent" / "agent.db")
    launcher = ProcessLauncher(config.work_dir, RlimitIsolator(), fork_server=False)
    agent = Agent(config, cp, launcher, isolator_name="rlimits", wall=lambda: now[0], monotonic=lambda: now[0])
    try:
        agent.recover()
        assert not old.exists() and recent.exists()
        assert agent.next_gc == 2050.0  # when `recent` is due
        now[0] = 2050.0
        agent.tick()
        assert not recent.exists() and not (config.work_dir / "fw").exists()
    finally:
        launcher.close()
        cp.close()


def test_gc_flags_are_checked(tmp_path: Path) -> None:
    from tessera.agent.config import AgentConfig, ConfigError, resolve

    for field, value in (("sandbox_gc_delay", -1.0), ("sandbox_gc_max_mib", float("nan"))):
        with pytest.raises(ConfigError, match=field.replace("_", "-")):
            resolve(AgentConfig(masters=("127.0.0.1:1",), data_dir=tmp_path, **{field: value}))  # type: ignore[arg-type]


def test_files_an_older_agent_left_readable_become_the_agents_alone(tmp_path: Path) -> None:
    from tessera.agent.main import _secure_dirs

    data = tmp_path / "agent"
    launch = data / "sandboxes" / "fw" / "t" / "launch.json"
    launch.parent.mkdir(parents=True)
    for path in (data / "agent.db", data / "agent.db-wal", data / "agent.lock", launch):
        path.write_text("{}")
        path.chmod(0o644)
    data.chmod(0o700)
    _secure_dirs(data, data / "sandboxes")
    assert [mode(p) for p in (data / "agent.db", data / "agent.db-wal", data / "agent.lock", launch)] == [0o600] * 4
    assert mode(data) == 0o711 and mode(data / "sandboxes") == 0o711


def test_a_process_is_known_by_its_pid_and_its_start_time() -> None:
    """The one identity check of supervisors (the launcher's and the sandbox GC's): a pid whose start
    time differs is a recycled pid, not the process that was recorded."""
    me = own_create_time()
    assert started_at(os.getpid(), me)
    assert not started_at(os.getpid(), me - 10.0)
    assert not started_at(0, me) and not started_at(-1, me)
