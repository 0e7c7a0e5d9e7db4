"""The agent keeps its file service's catalog in step with its tasks (agent/runtime/*, agent/files/catalog.py):
the principal a RunTask names is checkpointed with the task, a task's sandbox is served once prepared,
its end ends the follows of its output, the sandbox GC makes it "collected", and a restarted agent serves
the sandboxes of the tasks it had, done ones included. Against the fake master over real gRPC."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tessera.agent.checkpoint import Checkpoint
from tessera.control_plane.core.errors import NotFound
from tessera.control_plane.core.values import TaskKey
from tests.unit.agent.conftest import RunningAgent
from tests.unit.agent.fake_master import FakeMaster
from tests.unit.agent.test_agent_link import registered, task

Start = Callable[..., RunningAgent]
KEY = TaskKey("fw-1", "t1")


def test_the_principal_is_checkpointed_and_the_catalog_follows_the_task(fake_master: FakeMaster,
                                                                         start_agent: Start) -> None:
    agent = start_agent([fake_master.address])
    fake_master.wait_for(registered(fake_master), what="registration")
    fake_master.run_task(task("t1", "echo hi; sleep 0.5"), principal="alice")
    fake_master.wait_for(lambda: "TASK_RUNNING" in fake_master.states_of("t1"), what="RUNNING")
    entry = agent.agent.catalog.find(KEY)
    assert entry.principal == "alice" and agent.agent.catalog.live(KEY)
    assert entry.sandbox == str(agent.data_dir / "sandboxes" / "fw-1" / "t1" / "sandbox")
    assert agent.agent.catalog.agent == "agent-1"
    fake_master.wait_for(lambda: "TASK_FINISHED" in fake_master.states_of("t1"), what="FINISHED")
    fake_master.wait_for(lambda: not agent.agent.catalog.live(KEY), what="the catalog to see the end")
    assert agent.checkpoint.task(KEY).principal == "alice"  # type: ignore[union-attr]


def test_a_collected_sandbox_is_known_as_collected(fake_master: FakeMaster, start_agent: Start) -> None:
    agent = start_agent([fake_master.address], sandbox_gc_delay=0.0)
    fake_master.wait_for(registered(fake_master), what="registration")
    fake_master.run_task(task("t1", "true"), principal="alice")
    fake_master.wait_for(lambda: "TASK_FINISHED" in fake_master.states_of("t1"), what="FINISHED")

    def collected() -> bool:
        try:
            agent.agent.catalog.find(KEY)
        except NotFound as exc:
            return "was collected" in exc.message
        return False

    fake_master.wait_for(collected, what="the sandbox to be collected")
    assert not (agent.data_dir / "sandboxes" / "fw-1" / "t1").exists()


def test_a_restarted_agent_serves_the_sandboxes_of_its_done_tasks(fake_master: FakeMaster,
                                                                   start_agent: Start) -> None:
    first = start_agent([fake_master.address])
    fake_master.wait_for(registered(fake_master), what="registration")
    fake_master.run_task(task("t1", "echo kept"), principal="alice")
    fake_master.wait_for(lambda: "TASK_FINISHED" in fake_master.states_of("t1"), what="FINISHED")
    fake_master.wait_for(lambda: first.checkpoint.tasks() == [], what="the task to be done")
    assert first.stop() == 0
    before = len(fake_master.registers)  # the first agent may have registered more than once
    second = start_agent([fake_master.address], data_dir=first.data_dir)
    fake_master.wait_for(lambda: len(fake_master.registers) > before, what="re-registration")  # after recovery
    entry = second.agent.catalog.find(KEY)
    assert entry.principal == "alice" and not entry.live
    assert (Path(entry.sandbox) / "stdout").read_text() == "kept\n"


def test_a_checkpoint_from_before_the_principal_column_gains_it(tmp_path: Path) -> None:
    from tessera.control_plane.core.values import TaskInfo

    cp = Checkpoint.open(tmp_path / "agent.db")
    cp.add_task(TaskInfo(task_id="old", framework_id="fw"))
    cp.close()
    with sqlite3.connect(tmp_path / "agent.db") as db:
        db.execute("ALTER TABLE tasks DROP COLUMN principal")
    cp = Checkpoint.open(tmp_path / "agent.db")
    try:
        [record] = cp.tasks()
        assert record.task_id == "old" and record.principal == ""
        cp.add_task(TaskInfo(task_id="new", framework_id="fw"), principal="bob")
        assert {r.task_id: r.principal for r in cp.tasks()} == {"old": "", "new": "bob"}
    finally:
        cp.close()


@pytest.mark.parametrize("address", ["nohost", "host:99999", "a b:1", ":1"])
def test_a_bad_files_address_is_refused_naming_the_flag(tmp_path: Path, address: str) -> None:
    from tessera.agent.config import AgentConfig, ConfigError, resolve

    with pytest.raises(ConfigError, match="--files-address"):
        resolve(AgentConfig(masters=("127.0.0.1:1",), data_dir=tmp_path, files_address=address))
    with pytest.raises(ConfigError, match="--acl needs --tls-dir"):
        resolve(AgentConfig(masters=("127.0.0.1:1",), data_dir=tmp_path, acl_path=tmp_path / "acl.toml"))
