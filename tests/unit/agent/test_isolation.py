"""Isolation: picking the isolator, limits written where they belong, a memory hog ended by its limit.

The hog test runs under whatever `detect_isolator("auto")` picks on this machine (cgroups v1 here) and,
always, under the rlimit/watchdog isolator, so the fallback path is exercised on every machine."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from tessera.agent.config import ConfigError
from tessera.agent.core.tasks import REASON_CONTAINER_LIMITATION_MEMORY, terminal_status
from tessera.agent.executor.isolation import (
    CgroupsV1Isolator,
    CgroupsV2Isolator,
    Isolator,
    RlimitIsolator,
    container_name,
    detect_isolator,
    discover,
    parse_mountinfo,
    parse_proc_cgroup,
)
from tessera.agent.executor.launcher import ProcessLauncher
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import CommandInfo, TaskInfo, TaskState

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = "4:memory:/svc/agent\n2:cpu,cpuacct:/\n0::/\n"
V2_MOUNTINFO = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
CONTAINER_MOUNTINFO = "35 31 0:32 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n" \
                      "36 31 0:33 /docker/abc /sys/fs/cgroup/cpu ro - cgroup cgroup rw,cpu\n"

HOG = ("import time\nchunks = []\nfor i in range(400):\n    chunks.append(b'x' * (4 << 20))\n"
       "    time.sleep(0.005)\nprint('survived')\n")


def test_mountinfo_and_proc_cgroup_parse() -> None:
    mounts = parse_mountinfo(HYBRID_MOUNTINFO)
    assert [(m.mountpoint, m.fstype) for m in mounts][1:] == [
        ("/sys/fs/cgroup/cpu,cpuacct", "cgroup"), ("/sys/fs/cgroup/memory", "cgroup"),
        ("/sys/fs/cgroup/unified", "cgroup2")]
    assert "cpuacct" in mounts[1].options
    assert parse_proc_cgroup(HYBRID_CGROUP) == {"memory": "/svc/agent", "cpu": "/", "cpuacct": "/", "": "/"}


def test_v1_task_cgroups_nest_under_the_agents_own_cgroup() -> None:
    layout = discover(HYBRID_MOUNTINFO, HYBRID_CGROUP)
    assert layout.v1_bases("tessera") == (Path("/sys/fs/cgroup/cpu,cpuacct/tessera"),
                                          Path("/sys/fs/cgroup/memory/svc/agent/tessera"))
    assert layout.v2_mount is not None  # hybrid: cgroup2 is mounted, whether it has controllers is probed


def test_container_mount_roots_are_stripped_from_the_agents_path() -> None:
    layout = discover(CONTAINER_MOUNTINFO, "5:memory:/docker/abc/sub\n3:cpu:/docker/abc\n")
    assert layout.v1_bases("t") == (Path("/sys/fs/cgroup/cpu/t"), Path("/sys/fs/cgroup/memory/sub/t"))


def test_v2_candidates_try_the_agents_cgroup_then_the_root() -> None:
    layout = discover(V2_MOUNTINFO, "0::/system.slice/agent.service\n")
    assert layout.v1_bases("tessera") is None
    assert layout.v2_candidates("tessera") == [
        (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/system.slice/agent.service/tessera")),
        (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/tessera"))]


def test_explicit_choice_that_cannot_work_is_a_config_error() -> None:
    nothing = discover("", "")
    with pytest.raises(ConfigError, match="--isolation cgroups_v2"):
        detect_isolator("cgroups_v2", layout=nothing)
    with pytest.raises(ConfigError, match="--isolation cgroups_v1"):
        detect_isolator("cgroups_v1", layout=nothing)
    assert isinstance(detect_isolator("auto", layout=nothing), RlimitIsolator)
    assert isinstance(detect_isolator("rlimits"), RlimitIsolator)


def _cgroup_usable(kind: str) -> bool:
    """An independent, simpler look at this machine than the detector's probe."""
    if os.geteuid() != 0:
        return False
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    if kind == "v2":
        for m in mounts:
            if m.fstype == "cgroup2":
                controllers = Path(m.mountpoint, "cgroup.controllers").read_text().split()
                return {"cpu", "memory"} <= set(controllers)
        return False
    has = {c for m in mounts if m.fstype == "cgroup" for c in ("cpu", "memory") if c in m.options}
    return has == {"cpu", "memory"}


def test_auto_detection_picks_the_best_isolation_this_machine_has() -> None:
    isolator = detect_isolator("auto")
    if _cgroup_usable("v2"):
        expected = "cgroups_v2"
    elif _cgroup_usable("v1"):
        expected = "cgroups_v1"
    else:
        expected = "rlimits"
    assert isolator.name == expected, isolator.describe()


def _run(isolator: Isolator, work_dir: Path, info: TaskInfo, timeout: float = 60.0,  # type: ignore[no-untyped-def]
         fork_server: bool = True):
    launcher = ProcessLauncher(work_dir, isolator, fork_server=fork_server)
    try:
        handle = launcher.launch(info)
        deadline = time.monotonic() + timeout
        while True:
            obs = launcher.observe(handle)
            if obs.ended:
                break
            assert time.monotonic() < deadline, "the task did not end"
            time.sleep(0.05)
        launcher.release(handle)
    finally:
        launcher.close()
    return handle, obs


@pytest.mark.parametrize("start", ["fork-server", "interpreter"])
@pytest.mark.parametrize("which", ["detected", "rlimits"])
def test_memory_hog_is_killed_by_its_limit_and_reported_as_such(tmp_path: Path, which: str, start: str) -> None:
    isolator = detect_isolator("auto") if which == "detected" else RlimitIsolator()
    info = TaskInfo(task_id=f"hog-{which}", framework_id="fw", resources=Resources.of(cpus=1, mem=64),
                    command=CommandInfo(shell=False, value=sys.executable, arguments=("-c", HOG)))
    handle, obs = _run(isolator, tmp_path, info, fork_server=start == "fork-server")
    assert obs.exit is not None, obs
    out = terminal_status(obs.exit, kill_requested=False)
    assert out.state is TaskState.TASK_FAILED, (isolator.name, obs.exit)
    assert out.reason == REASON_CONTAINER_LIMITATION_MEMORY
    assert "memory limit" in out.message and "64 MiB" in out.message
    assert "survived" not in (handle.task_dir / "stdout").read_text()
    for directory in handle.isolation.cgroups:
        assert not Path(directory).exists(), f"cgroup {directory} was not removed"


def test_a_task_within_its_limit_is_not_flagged(tmp_path: Path) -> None:
    isolator = detect_isolator("auto")
    info = TaskInfo(task_id="small", framework_id="fw", resources=Resources.of(cpus=1, mem=128),
                    command=CommandInfo(shell=False, value=sys.executable,
                                        arguments=("-c", "x = b'1' * (8 << 20); print(len(x))")))
    handle, obs = _run(isolator, tmp_path, info)
    assert obs.exit is not None and obs.exit.limitation == "" and obs.exit.exit_code == 0


def test_limits_are_written_and_removed(tmp_path: Path) -> None:
    isolator = detect_isolator("auto")
    spec = isolator.prepare(container_name("fw", "limits"), Resources.of(cpus=1.5, mem=64))
    try:
        assert spec.memory_limit_bytes == 64 << 20
        if isinstance(isolator, CgroupsV1Isolator):
            cpu_dir, mem_dir = map(Path, spec.cgroups)
            assert (cpu_dir / "cpu.shares").read_text().strip() == "1536"
            period = int((cpu_dir / "cpu.cfs_period_us").read_text())
            assert int((cpu_dir / "cpu.cfs_quota_us").read_text()) == int(1.5 * period)
            assert int((mem_dir / "memory.limit_in_bytes").read_text()) == 64 << 20
        elif isinstance(isolator, CgroupsV2Isolator):
            [directory] = map(Path, spec.cgroups)
            assert (directory / "memory.max").read_text().strip() == str(64 << 20)
            assert (directory / "cpu.max").read_text().split() == ["150000", "100000"]
        else:
            assert spec.watchdog_rss_bytes == 64 << 20 and spec.rlimit_data_bytes == 128 << 20
    finally:
        isolator.cleanup(spec)
    for directory in spec.cgroups:
        assert not Path(directory).exists()


def test_task_process_runs_inside_its_cgroups(tmp_path: Path) -> None:
    isolator = detect_isolator("auto")
    info = TaskInfo(task_id="where", framework_id="fw", resources=Resources.of(cpus=1, mem=64),
                    command=CommandInfo(shell=True, value="cat /proc/self/cgroup /proc/self/limits"))
    handle, obs = _run(isolator, tmp_path, info)
    text = (handle.task_dir / "stdout").read_text()
    name = container_name("fw", "where")
    if handle.isolation.cgroups:
        assert name in text
    else:  # rlimits: no cgroup of its own, but the limit travels with the process
        data_line = next(line for line in text.splitlines() if line.startswith("Max data size"))
        assert str(handle.isolation.rlimit_data_bytes) in data_line


# ---- cgroups v2 and the OOM counters, on a directory tree shaped like cgroupfs ----------------------
# (this machine's cgroup2 hierarchy has no cpu/memory controllers, so the v2 writes are checked on files)


def fake_cgroup2(root: Path, controllers: str = "cpu memory io") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def test_v2_enables_controllers_on_the_way_down_and_writes_the_limits(tmp_path: Path) -> None:
    from tessera.agent.executor.isolation import _enable_v2_controllers

    mount = fake_cgroup2(tmp_path / "cg")
    base = mount / "agent.service" / "tessera"
    (mount / "agent.service").mkdir()
    (mount / "agent.service" / "cgroup.subtree_control").write_text("")
    base.mkdir()
    (base / "cgroup.subtree_control").write_text("memory\n")  # one already enabled
    _enable_v2_controllers(mount, base)
    assert (mount / "cgroup.subtree_control").read_text() == "+cpu +memory"
    assert (mount / "agent.service" / "cgroup.subtree_control").read_text() == "+cpu +memory"
    assert (base / "cgroup.subtree_control").read_text() == "+cpu"
    spec = CgroupsV2Isolator(base=base).prepare("t-1", Resources.of(cpus=2, mem=128))
    task_dir = base / "t-1"
    assert spec.cgroups == (str(task_dir),) and spec.memory_cgroup == str(task_dir)
    assert (task_dir / "memory.max").read_text() == str(128 << 20)
    assert (task_dir / "cpu.max").read_text() == "200000 100000"
    assert (task_dir / "cpu.weight").read_text() == str(1 + ((2048 - 2) * 9999) // 262142)


def test_v2_without_memory_controller_is_unavailable(tmp_path: Path) -> None:
    from tessera.agent.executor.isolation import IsolationUnavailable, _enable_v2_controllers

    mount = fake_cgroup2(tmp_path / "cg", controllers="hugetlb")
    with pytest.raises(IsolationUnavailable, match="lacks the cpu or memory controller"):
        _enable_v2_controllers(mount, mount / "tessera")


def test_oom_is_read_from_memory_events_in_v2_and_oom_control_in_v1(tmp_path: Path) -> None:
    from tessera.agent.executor.isolation import IsolationSpec, cgroup_oom_killed

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\n")
    spec2 = IsolationSpec(kind="cgroups_v2", memory_cgroup=str(v2))
    assert not cgroup_oom_killed(spec2, died_by_sigkill=True)
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    assert cgroup_oom_killed(spec2, died_by_sigkill=False)

    v1 = tmp_path / "v1"
    v1.mkdir()
    spec1 = IsolationSpec(kind="cgroups_v1", memory_cgroup=str(v1))
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert cgroup_oom_killed(spec1, died_by_sigkill=False)
    # An older kernel without the oom_kill counter: hitting the limit and dying by SIGKILL is the sign.
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")
    (v1 / "memory.failcnt").write_text("5\n")
    assert cgroup_oom_killed(spec1, died_by_sigkill=True)
    assert not cgroup_oom_killed(spec1, died_by_sigkill=False)
    (v1 / "memory.failcnt").write_text("0\n")
    assert not cgroup_oom_killed(spec1, died_by_sigkill=True)
    assert not cgroup_oom_killed(IsolationSpec(kind="rlimits"), died_by_sigkill=True)
