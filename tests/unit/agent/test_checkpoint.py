"""agent.db round-trips: identity, fencing term, tasks, and the status-update stream."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

from tessera.agent.checkpoint import Checkpoint
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import (
    CommandInfo,
    StatusSource,
    TaskInfo,
    TaskKey,
    TaskState,
    TaskStatus,
)

S = TaskState


def K(task_id: str) -> TaskKey:  # noqa: N802 - a short name for the tasks' key
    return TaskKey("fw", task_id)


def task(task_id: str = "t1") -> TaskInfo:
    return TaskInfo(task_id=task_id, name="n", framework_id="fw", agent_id="a1",
                    resources=Resources.parse("cpus:0.5;mem:64;ports:[31000-31001]"),
                    command=CommandInfo(shell=False, value="/bin/echo", arguments=("a", "b"),
                                        environment=(("K", "V"),), working_dir="w"),
                    kill_grace_period_seconds=2.5, labels=(("l", "v"),))


def status(task_id: str, state: TaskState, uuid: str, exit_code: int | None = None) -> TaskStatus:
    return TaskStatus(task_id=task_id, state=state, message="m", reason="r", source=StatusSource.SOURCE_EXECUTOR,
                      agent_id="a1", uuid=uuid, timestamp=1.5, exit_code=exit_code, framework_id="fw")


def test_identity_and_term_survive_reopening(tmp_path: Path) -> None:
    cp = Checkpoint.open(tmp_path / "agent.db")
    assert cp.agent_id == "" and cp.highest_term == 0
    request_id = cp.registration_request_id()
    assert cp.registration_request_id() == request_id  # stable until answered
    assert cp.observe_term(3) and not cp.observe_term(2) and not cp.observe_term(3)
    cp.set_agent_id("agent-7")
    cp.close()
    cp = Checkpoint.open(tmp_path / "agent.db")
    assert cp.agent_id == "agent-7" and cp.highest_term == 3
    assert cp.registration_request_id() != request_id  # answered: a new registration gets a new key
    cp.clear_agent_id()
    assert cp.agent_id == ""


def test_task_round_trip_keeps_every_field(tmp_path: Path) -> None:
    cp = Checkpoint.open(tmp_path / "agent.db")
    cp.add_task(task(), traceparent="00-abc-def-01")
    cp.set_launched(K("t1"), sandbox="/s/t1", supervisor_pid=1234, supervisor_start=99.5,
                    isolation={"kind": "cgroups_v1", "cgroups": ["/x"]})
    cp.mark_kill(K("t1"), 4.0)
    cp.close()
    cp = Checkpoint.open(tmp_path / "agent.db")
    [rec] = cp.tasks()
    assert rec.info == task()
    assert (rec.state, rec.sandbox, rec.supervisor_pid, rec.supervisor_start) == (S.TASK_STAGING, "/s/t1", 1234, 99.5)
    assert rec.isolation == {"kind": "cgroups_v1", "cgroups": ["/x"]}
    assert rec.kill_requested and rec.kill_grace == 4.0 and rec.traceparent == "00-abc-def-01"
    assert rec.latest is None and not rec.done


def test_update_is_stored_with_the_task_state_and_read_back_in_order(tmp_path: Path) -> None:
    cp = Checkpoint.open(tmp_path / "agent.db")
    cp.add_task(task("a"))
    cp.add_task(task("b"))
    cp.record_update(status("a", S.TASK_STARTING, "u1"), "tp-a")
    cp.record_update(status("b", S.TASK_STARTING, "u2"))
    cp.record_update(status("a", S.TASK_FAILED, "u3", exit_code=3))
    cp.acknowledge(["u1"])
    cp.close()
    cp = Checkpoint.open(tmp_path / "agent.db")
    pending = cp.unacknowledged()
    assert [u.status.uuid for u in pending] == ["u2", "u3"]
    assert pending[1].status == status("a", S.TASK_FAILED, "u3", exit_code=3)
    by_id = {t.task_id: t for t in cp.tasks()}
    assert by_id["a"].state is S.TASK_FAILED and by_id["a"].latest.uuid == "u3"
    assert by_id["b"].state is S.TASK_STARTING
    assert [(u.status.uuid, u.acknowledged, u.traceparent) for u in cp.updates(K("a"))] == [
        ("u1", True, "tp-a"), ("u3", False, "")]


def test_done_tasks_are_hidden_and_pruned(tmp_path: Path) -> None:
    cp = Checkpoint.open(tmp_path / "agent.db")
    for name in ("a", "b", "c"):
        cp.add_task(task(name))
        cp.record_update(status(name, S.TASK_FINISHED, f"u-{name}"))
    cp.mark_done(K("a"))
    cp.mark_done(K("b"))
    assert [t.task_id for t in cp.tasks()] == ["c"]
    assert [t.task_id for t in cp.tasks(include_done=True)] == ["a", "b", "c"]
    assert cp.prune_done(keep=1) == 1
    assert [t.task_id for t in cp.tasks(include_done=True)] == ["b", "c"]
    assert cp.updates(K("a")) == []


def test_file_is_plain_sqlite_in_wal_mode(tmp_path: Path) -> None:
    cp = Checkpoint.open(tmp_path / "agent.db")
    cp.set_agent_id("agent-1")
    conn = sqlite3.connect(tmp_path / "agent.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT value FROM meta WHERE key = 'agent_id'").fetchone()[0] == "agent-1"
    assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} >= {
        "meta", "tasks", "updates"}


def test_a_batch_is_one_transaction_that_sync_commits_early(tmp_path: Path) -> None:
    cp = Checkpoint.open(tmp_path / "agent.db")
    other = sqlite3.connect(tmp_path / "agent.db")

    def visible() -> set[str]:
        return {row[0] for row in other.execute("SELECT task_id FROM tasks")}

    try:
        with cp.batch():
            assert cp.in_batch
            cp.add_task(task("t1"))
            assert visible() == set()  # not committed yet
            cp.sync()
            assert visible() == {"t1"}
            cp.add_task(task("t2"))
            with cp.batch():  # a nested batch joins the outer one
                cp.add_task(task("t3"))
            assert visible() == {"t1"}
        assert not cp.in_batch and visible() == {"t1", "t2", "t3"}
    finally:
        other.close()
        cp.close()


def test_what_was_written_in_a_batch_that_raised_is_kept(tmp_path: Path) -> None:
    cp = Checkpoint.open(tmp_path / "agent.db")
    try:
        try:
            with cp.batch():
                cp.add_task(task("t1"))
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        assert [t.task_id for t in cp.tasks()] == ["t1"] and not cp.in_batch
        cp.add_task(task("t2"))  # and the connection is usable afterwards
    finally:
        cp.close()
    again = Checkpoint.open(tmp_path / "agent.db")
    try:
        assert [t.task_id for t in again.tasks()] == ["t1", "t2"]
    finally:
        again.close()


def test_two_frameworks_tasks_of_one_id_are_two_rows(tmp_path: Path) -> None:
    cp = Checkpoint.open(tmp_path / "agent.db")
    try:
        cp.add_task(task("web-1"))
        cp.add_task(dataclasses.replace(task("web-1"), framework_id="other"))
        cp.record_update(dataclasses.replace(status("web-1", S.TASK_RUNNING, "u-other"), framework_id="other"))
        cp.mark_kill(TaskKey("other", "web-1"), 3.0)
        by_key = {t.key: t for t in cp.tasks()}
        assert set(by_key) == {K("web-1"), TaskKey("other", "web-1")}
        assert by_key[TaskKey("other", "web-1")].state is S.TASK_RUNNING
        assert by_key[TaskKey("other", "web-1")].kill_requested and not by_key[K("web-1")].kill_requested
        assert by_key[K("web-1")].state is S.TASK_STAGING and by_key[K("web-1")].latest is None
        assert [u.status.uuid for u in cp.updates(TaskKey("other", "web-1"))] == ["u-other"]
        assert cp.updates(K("web-1")) == []
    finally:
        cp.close()


def test_a_schema_1_file_keyed_by_task_id_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    old = sqlite3.connect(path)  # what schema 1 created: tasks keyed by task id, updates without framework
    old.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
        "CREATE TABLE tasks (task_id TEXT PRIMARY KEY, framework_id TEXT, info BLOB NOT NULL, state INTEGER NOT NULL,"
        " sandbox TEXT, supervisor_pid INTEGER, supervisor_start FLOAT, isolation TEXT, kill_requested INTEGER,"
        " kill_grace FLOAT, done INTEGER, traceparent TEXT, created_seq INTEGER);"
        "CREATE TABLE updates (seq INTEGER PRIMARY KEY, task_id TEXT NOT NULL, uuid TEXT NOT NULL, state INTEGER,"
        " status BLOB NOT NULL, traceparent TEXT, acknowledged INTEGER);"
        "INSERT INTO meta VALUES ('schema_version', '1'), ('agent_id', 'agent-7');")
    from tessera.agent.checkpoint import status_to_bytes, task_info_to_bytes

    old.execute("INSERT INTO tasks VALUES ('t1', 'fw', ?, 3, '/s/t1', 42, 1.5, '{}', 0, 0, 0, '', 1)",
                [task_info_to_bytes(task("t1"))])
    old.execute("INSERT INTO updates VALUES (1, 't1', 'u1', 3, ?, '', 0)",
                [status_to_bytes(status("t1", S.TASK_RUNNING, "u1"))])
    old.commit()
    old.close()
    cp = Checkpoint.open(path)
    try:
        assert cp.agent_id == "agent-7"
        [rec] = cp.tasks()
        assert rec.key == K("t1") and rec.sandbox == "/s/t1" and rec.latest is not None
        assert [u.status.uuid for u in cp.updates(K("t1"))] == ["u1"]
        assert [u.status.uuid for u in cp.unacknowledged()] == ["u1"]
        cp.add_task(dataclasses.replace(task("t1"), framework_id="other"))  # the new key admits the pair
        assert {t.key for t in cp.tasks()} == {K("t1"), TaskKey("other", "t1")}
    finally:
        cp.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"
    conn.close()
