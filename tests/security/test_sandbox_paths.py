"""Issue 14 item 10: a task's working directory stays inside its sandbox, and every (framework, task)
pair gets a sandbox of its own.

Real processes on 127.0.0.1 (a master, an agent run as root, frameworks in this process):
- a relative working_dir that climbs out (`../../tmp/x`, or far enough to reach a directory of the
  test's) and an absolute one (`/etc`) are refused by the master with INVALID_ARGUMENT before anything
  reaches the agent, and nothing is created outside the sandbox;
- a working_dir through a symlink that points out of the sandbox is refused by the task's supervisor
  (TASK_FAILED, saying why) and creates nothing at the link's target;
- tasks `col/1` and `col_1` (one name under the old sandbox naming) run side by side in distinct
  sandboxes and end with their own exit statuses (two frameworks' tasks of one id, possible once task
  ids are scoped per framework, are kept apart by the same naming: unit-tested in
  tests/unit/agent/test_sandbox.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.sdk.errors import InvalidRequest
from tessera.sdk.types import Resources, TaskInfo
from tests.security.sandbox_support import cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SMALL = Resources.of(cpus=0.1, mem=32)


def task(task_id: str, command: str, working_dir: str = "", gate: Path | None = None) -> TaskInfo:
    env = {"GATE": str(gate)} if gate is not None else {}
    return TaskInfo(task_id=task_id, resources=SMALL, command=command, working_dir=working_dir, env=env)


def test_escaping_working_dirs_are_refused_and_create_nothing_outside_the_sandbox(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    climb = "../" * 40 + str(outside / "climbed").lstrip("/")
    with cluster(tmp_path) as c:
        fw = c.tenant("paths")
        cases = {"rel-escape": "../../tmp/x", "deep-escape": climb, "absolute": "/etc",
                 "dotdot-inside": "a/../../b"}
        for task_id, working_dir in cases.items():
            fw.run(task(task_id, "pwd; touch made-here", working_dir=working_dir))
        for task_id in cases:
            error = fw.scheduler.wait_refused(task_id)
            assert isinstance(error, InvalidRequest), (task_id, error)
            assert "working_dir" in str(error), error
        assert not (outside / "climbed").exists()
        assert not (c.work_dir / "tmp").exists()
        assert not list(c.agent_dir.rglob("made-here"))
        # A working dir inside the sandbox still works, and is made for the task.
        fw.run(task("inside", 'pwd; [ "$(pwd -P)" = "$(cd "$TESSERA_SANDBOX" && pwd -P)/sub/dir" ]',
                    working_dir="./sub//dir/"))
        final = fw.scheduler.wait_final("inside")
        assert final.state.name == "TASK_FINISHED", (final.message, final.data)


def test_a_working_dir_through_a_symlink_out_of_the_sandbox_is_refused(tmp_path: Path) -> None:
    from tessera.agent.executor.sandbox import SANDBOX_SUBDIR, sandbox_name

    target = tmp_path / "target"
    target.mkdir()
    with cluster(tmp_path) as c:
        fw = c.tenant("symlinks")
        # A sandbox left by an earlier task of this framework under the same id (ids can be used again
        # once the master has forgotten a completed task) holds a symlink out of the sandbox. The test,
        # as root, plants it where the agent will look.
        left = c.work_dir / sandbox_name(fw.framework_id, "through-link") / SANDBOX_SUBDIR
        left.mkdir(parents=True)
        (left / "esc").symlink_to(target)
        fw.run(task("through-link", "pwd; touch made-here", working_dir="esc/deeper"))
        final = fw.scheduler.wait_final("through-link")
        assert final.state.name == "TASK_FAILED", (final.state, final.message)
        assert "working directory" in final.message and "symlink" in final.message, final.message
        assert not list(target.iterdir()), list(target.iterdir())
        assert not list(c.agent_dir.rglob("made-here"))


def test_task_ids_that_shared_a_sandbox_name_get_distinct_sandboxes_and_exit_statuses(tmp_path: Path) -> None:
    gate = 'while [ ! -f "$GATE" ]; do sleep 0.1; done; '
    with cluster(tmp_path) as c:
        release = c.agent_dir / "release"
        fw = c.tenant("collide")
        fw.run(task("col/1", "echo one > which; " + gate + "exit 11", gate=release))
        fw.run(task("col_1", "echo two > which; " + gate + "exit 12", gate=release))
        for tid in ("col/1", "col_1"):
            fw.scheduler.wait_state(tid, "TASK_RUNNING")
        sandboxes = {p.parent for p in c.work_dir.rglob("which")}
        assert len(sandboxes) == 2, sandboxes
        assert sorted(p.joinpath("which").read_text().strip() for p in sandboxes) == ["one", "two"]
        release.write_text("go")
        assert fw.scheduler.wait_final("col/1").exit_code == 11
        assert fw.scheduler.wait_final("col_1").exit_code == 12
