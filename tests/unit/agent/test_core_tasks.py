"""The agent's task table (checked against the shared lifecycle table) and the exit -> status mapping.
(The dialing plan is `tessera.control_plane.wire.DialPlan`, tested in tests/unit/test_wire.py.)"""

from __future__ import annotations

import pytest

from tessera.agent.core.tasks import (
    REASON_COMMAND_EXECUTOR_FAILED,
    REASON_CONTAINER_LIMITATION_MEMORY,
    REASON_FETCHER_FAILED,
    AgentTask,
    DuplicateTask,
    ExitRecord,
    Outcome,
    TaskTable,
    make_status,
    terminal_status,
    validate_task,
)
from tessera.control_plane.core.lifecycle import TRANSITIONS, can_transition
from tessera.control_plane.core.values import (
    CommandInfo,
    CommandURI,
    StatusSource,
    TaskInfo,
    TaskKey,
    TaskState,
    TaskStatus,
)

S = TaskState


def info(task_id: str = "t1", command: str = "true", **kw: object) -> TaskInfo:
    return TaskInfo(task_id=task_id, framework_id="fw", command=CommandInfo(shell=True, value=command), **kw)


def K(task_id: str) -> TaskKey:  # noqa: N802 - a short name for the table's key
    return TaskKey("fw", task_id)


def status(task_id: str, state: TaskState, uuid: str = "") -> TaskStatus:
    return TaskStatus(task_id=task_id, state=state, framework_id="fw", uuid=uuid or f"{task_id}-{state.name}")


# ---- task table -------------------------------------------------------------------------------------


def test_new_task_starts_staging_and_follows_the_normal_path() -> None:
    table = TaskTable()
    task = table.add(info())
    assert task.state is S.TASK_STAGING
    for state in (S.TASK_STARTING, S.TASK_RUNNING, S.TASK_FINISHED):
        assert table.record(status("t1", state))
    assert task.terminal and task.latest is not None and task.latest.state is S.TASK_FINISHED


def test_table_refuses_exactly_what_the_lifecycle_table_refuses() -> None:
    for current in TRANSITIONS:
        if current is S.TASK_STATE_UNKNOWN:
            continue
        for new in S:
            table = TaskTable()
            table.add(info(), state=current)
            assert table.record(status("t1", new)) == can_transition(current, new), (current, new)


def test_terminal_task_never_changes_again() -> None:
    table = TaskTable()
    table.add(info())
    table.record(status("t1", S.TASK_FAILED))
    assert not table.record(status("t1", S.TASK_RUNNING))
    assert not table.record(status("t1", S.TASK_FINISHED))
    assert table.get(K("t1")).state is S.TASK_FAILED


def test_a_task_id_is_added_once() -> None:
    table = TaskTable()
    table.add(info())
    with pytest.raises(DuplicateTask):
        table.add(info())


def test_unknown_task_records_nothing() -> None:
    assert not TaskTable().record(status("ghost", S.TASK_RUNNING))
    assert not TaskTable().can_record(K("ghost"), S.TASK_RUNNING)


def test_kill_is_requested_once_and_only_for_live_tasks() -> None:
    table = TaskTable()
    table.add(info("a"))
    table.add(info("b"))
    table.record(status("b", S.TASK_FINISHED))
    assert table.request_kill(K("a"), 2.0)
    assert not table.request_kill(K("a"), 1.0)
    assert table.get(K("a")).kill_grace == 2.0
    assert not table.request_kill(K("b"), 1.0)
    assert not table.request_kill(K("ghost"), 1.0)


def test_report_has_one_latest_status_per_task_not_yet_done() -> None:
    table = TaskTable()
    table.add(info("a"))
    table.add(info("b"))
    table.add(info("c"))
    table.record(status("a", S.TASK_STARTING))
    table.record(status("a", S.TASK_RUNNING))
    table.record(status("c", S.TASK_FINISHED))
    table.get(K("c")).done = True
    report = table.report("agent-9")
    assert [(s.task_id, s.state) for s in report] == [("a", S.TASK_RUNNING), ("b", S.TASK_STAGING)]
    assert all(s.agent_id == "agent-9" for s in report)
    assert report[0].uuid == "a-TASK_RUNNING" and report[1].uuid == ""


def test_prune_done_forgets_the_oldest_done_tasks() -> None:
    table = TaskTable()
    for name in "abcde":
        table.add(info(name))
    for name in "abd":
        table.get(K(name)).done = True
    assert table.prune_done(keep=1) == [K("a"), K("b")]
    assert [t.task_id for t in table] == ["c", "d", "e"]


def test_make_status_carries_the_ids_and_the_minted_uuid() -> None:
    task = AgentTask(info=info("t9"))
    s = make_status(task, Outcome(S.TASK_FAILED, "R", "m" * 5000, 3), uuid="u1", now=12.5, agent_id="a1",
                    source=StatusSource.SOURCE_AGENT)
    assert (s.task_id, s.framework_id, s.agent_id, s.uuid, s.timestamp, s.exit_code) == ("t9", "fw", "a1", "u1", 12.5, 3)
    assert len(s.message) <= 4096 and s.source is StatusSource.SOURCE_AGENT


def test_validate_task_names_what_is_wrong() -> None:
    assert validate_task(info()) == ""
    assert "command" in validate_task(info(command=""))
    assert "kill_grace" in validate_task(info(kill_grace_period_seconds=-1))
    # the master refuses these at Accept; the agent checks a task from elsewhere again
    assert "the scheme 'ftp' is not supported" in validate_task(info(uris=(CommandURI("ftp://h/x"),)))


def test_a_failed_fetch_is_failed_with_its_own_reason_naming_the_uri() -> None:
    record = ExitRecord(fetch_error="http://127.0.0.1:1/a.tgz: HTTP 404 Not Found", stderr_tail="noise")
    out = terminal_status(record, kill_requested=False, sandbox="/s")
    assert out == Outcome(S.TASK_FAILED, REASON_FETCHER_FAILED,
                          "cannot fetch http://127.0.0.1:1/a.tgz: HTTP 404 Not Found sandbox=/s", None)
    assert terminal_status(record, kill_requested=True).state is S.TASK_KILLED  # a kill during the fetch wins


# ---- how a process ended -> its status -----------------------------------------------------------------


def test_exit_zero_is_finished() -> None:
    out = terminal_status(ExitRecord(exit_code=0), kill_requested=False)
    assert out == Outcome(S.TASK_FINISHED, "", "command exited with status 0", 0)


def test_nonzero_exit_is_failed_with_the_code_and_stderr() -> None:
    out = terminal_status(ExitRecord(exit_code=3, stderr_tail="boom\n"), kill_requested=False)
    assert out.state is S.TASK_FAILED and out.reason == REASON_COMMAND_EXECUTOR_FAILED and out.exit_code == 3
    assert "status 3" in out.message and "boom" in out.message


def test_exit_127_says_command_not_found() -> None:
    out = terminal_status(ExitRecord(exit_code=127, stderr_tail="sh: 1: nope: not found"), kill_requested=False)
    assert out.state is S.TASK_FAILED and out.exit_code == 127
    assert "command not found" in out.message and "nope: not found" in out.message


def test_launch_error_is_failed_with_the_error() -> None:
    out = terminal_status(ExitRecord(exit_code=127, launch_error="/x: No such file"), kill_requested=False)
    assert out.state is S.TASK_FAILED and "/x: No such file" in out.message and out.exit_code == 127


def test_death_by_signal_is_reported_as_128_plus_signal() -> None:
    out = terminal_status(ExitRecord(signal=11), kill_requested=False)
    assert out.state is S.TASK_FAILED and out.exit_code == 139 and "SIGSEGV" in out.message


def test_requested_kill_is_killed_whatever_the_exit() -> None:
    for record in (ExitRecord(signal=15), ExitRecord(signal=9), ExitRecord(exit_code=0)):
        assert terminal_status(record, kill_requested=True).state is S.TASK_KILLED
    assert terminal_status(ExitRecord(signal=9, killed=True), kill_requested=False).state is S.TASK_KILLED


def test_terminal_status_carries_stdout_and_names_the_sandbox_last() -> None:
    record = ExitRecord(exit_code=2, stderr_tail="e" * 5000, stdout_tail=b"x" * 5000 + b"end\n")
    out = terminal_status(record, kill_requested=False, sandbox="/data/sandboxes/fw/t1")
    assert out.message.endswith(" sandbox=/data/sandboxes/fw/t1") and len(out.message) <= 4096
    assert len(out.data) == 4096 and out.data.endswith(b"end\n")
    s = make_status(AgentTask(info=info()), out, uuid="u", now=1.0, agent_id="a")
    assert s.data == out.data


def test_memory_limitation_wins_over_everything() -> None:
    record = ExitRecord(signal=9, killed=True, limitation="memory limit of 64 MiB exceeded")
    out = terminal_status(record, kill_requested=True)
    assert out.state is S.TASK_FAILED and out.reason == REASON_CONTAINER_LIMITATION_MEMORY
    assert "memory limit" in out.message
