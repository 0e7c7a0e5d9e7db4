"""The operator's everyday writes and the task history: `tessera task kill`, `tessera framework teardown`,
`tessera agent drain` / `undrain`, and the rows of `tessera tasks --all`.

Each write is one Operator call that commits an event (kill: `TaskKillRequested`, teardown:
`FrameworkRemoved` with a kill for each live task, drain: `AgentDrainStarted`, undrain: `AgentUndrained`),
checked against the ACL on the master (actions `kill`, `teardown`, `drain`). What is already so (an ended
task, a removed framework, an agent that is not draining) changes nothing and says so, with exit 0.
`--json` prints one object holding at least `index`, the event index the state had reached once the
call was committed (the committed event's own when one was).

`tessera agent drain` then waits, printing progress on stderr whenever the agent's set of live tasks
changes, until none is left (`--detach` returns at once; `--wait-timeout` bounds the wait, exit 1 when
tasks are still left; Ctrl-C stops waiting, exit 130, the drain goes on).

`tessera tasks --all` lists the finished tasks too: the live ones from the leader's state, the others
folded from the event log (`tessera.control_plane.eventlog.tasks`; over `ListEvents`, or an events.db
with `--db`), which keeps every task, where the master's state remembers only the last few thousand.

These commands use the root's context object (`shared.Ctx`) and do not import `cli.main`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from tessera.control_plane.cli.shared import Ctx, Duration, ctx_of, fail


def _state_name(value: int) -> str:
    from tessera.v1 import common_pb2

    return str(common_pb2.TaskState.Name(value)) if value in common_pb2.TaskState.values() else str(value)


# ---- tessera task kill -------------------------------------------------------------------------------------
@click.group("task")
def task_group() -> None:
    """Act on one task (`tessera tasks` lists them)."""


@task_group.command("kill")
@click.argument("task_ref", metavar="[FRAMEWORK_ID/]TASK_ID")
@click.option("--grace", type=Duration(), default=None, metavar="DURATION",
              help="Time between SIGTERM and SIGKILL, e.g. 10s or 500ms  [default: the task's own grace period]")
@click.option("--request-id", default="", help="Idempotency key (retries with the same id are applied once).")
@click.pass_obj
def task_kill(obj: Any, task_ref: str, grace: float | None, request_id: str) -> None:
    """Kill a task of any framework (commits TaskKillRequested; needs the ACL action `kill`).

    Task ids are scoped per framework: name the task FRAMEWORK_ID/TASK_ID, or by its bare id when one
    framework's live task uses it. A task that already ended is left as it is."""
    from tessera.control_plane.eventlog.timeline import split_task_ref
    from tessera.v1 import operator_pb2

    c = ctx_of(obj)
    if grace is not None and not grace > 0:
        fail("--grace: must be positive (leave it out for the task's own grace period)", 2)
    framework_id, task_id = split_task_ref(task_ref)
    resp = c.call(lambda s: s.KillTask, operator_pb2.KillTaskRequest(
        task_id=task_id, framework_id=framework_id, grace_period_seconds=grace or 0.0, request_id=request_id))
    named = f"{resp.framework_id}/{task_id}"
    state = _state_name(resp.state)
    if c.as_json:
        c.emit({"framework_id": resp.framework_id, "task_id": task_id, "index": resp.index,
                "kill_requested": resp.kill_requested, "state": state})
    elif resp.kill_requested:
        within = f" within {grace:g}s" if grace else " within its grace period"
        click.echo(f"task {named}: kill requested (event {resp.index}); its agent ends it{within}")
    else:
        click.echo(f"task {named} already ended ({state}); nothing to kill (index {resp.index})")


# ---- tessera framework teardown -------------------------------------------------------------------------
@click.group("framework")
def framework_group() -> None:
    """Act on one framework (`tessera frameworks` lists them)."""


@framework_group.command("teardown")
@click.argument("framework_id")
@click.option("--request-id", default="", help="Idempotency key (retries with the same id are applied once).")
@click.pass_obj
def framework_teardown(obj: Any, framework_id: str, request_id: str) -> None:
    """Remove a framework and kill its tasks (commits FrameworkRemoved; needs the ACL action `teardown`).

    Its scheduler's stream ends with an error; it cannot subscribe again with this framework id."""
    from tessera.v1 import operator_pb2

    c = ctx_of(obj)
    resp = c.call(lambda s: s.TeardownFramework, operator_pb2.TeardownFrameworkRequest(
        framework_id=framework_id, request_id=request_id))
    if c.as_json:
        c.emit({"framework_id": framework_id, "index": resp.index, "removed": resp.removed,
                "tasks_killed": resp.tasks_killed})
    elif resp.removed:
        kills = (f"; kills of its {resp.tasks_killed} live task(s) sent" if resp.tasks_killed
                 else "; it had no live task")
        click.echo(f"framework {framework_id} removed (event {resp.index}){kills}")
    else:
        click.echo(f"framework {framework_id} was already removed; nothing changed (index {resp.index})")


# ---- tessera agent drain / undrain ------------------------------------------------------------------------
POLL_SECONDS = 0.5


@click.command("drain")
@click.argument("agent_id")
@click.option("--detach", is_flag=True, help="Return once the drain is committed, without waiting for its tasks.")
@click.option("--wait-timeout", type=Duration(), default=None, metavar="DURATION",
              help="Stop waiting after this long (exit 1 when tasks are left; the drain goes on)  "
                   "[default: wait until they are gone]")
@click.option("--request-id", default="", help="Idempotency key (retries with the same id are applied once).")
@click.pass_obj
def agent_drain(obj: Any, agent_id: str, detach: bool, wait_timeout: float | None, request_id: str) -> None:
    """Stop offering AGENT_ID, kill its tasks with their grace period, and wait until they are gone.

    Progress goes to stderr whenever the agent's live tasks change. Commits AgentDrainStarted (the ACL
    action `drain`); `tessera agent undrain` offers the agent again."""
    from tessera.v1 import operator_pb2

    c = ctx_of(obj)
    resp = c.call(lambda s: s.DrainAgent, operator_pb2.DrainAgentRequest(agent_id=agent_id, request_id=request_id))
    if detach:
        if c.as_json:
            c.emit({"agent_id": agent_id, "index": resp.index, "drained": False, "tasks_left": None})
        else:
            click.echo(f"agent {agent_id} is draining (event {resp.index})")
        return
    click.echo(f"agent {agent_id} is draining (event {resp.index}); waiting for its tasks to end", err=True)
    try:
        left, index = _wait_drained(c, agent_id, wait_timeout)
    except KeyboardInterrupt:
        fail(f"stopped waiting; agent {agent_id} is still draining", 130)
    if c.as_json:
        c.emit({"agent_id": agent_id, "index": resp.index, "drained": not left, "tasks_left": len(left),
                "state_index": index})
    if left:
        fail(f"agent {agent_id}: {len(left)} task(s) still live after {wait_timeout:g}s: {_tasks_text(left)}; "
             "the drain goes on")
    if not c.as_json:
        click.echo(f"agent {agent_id} drained: no live task left (state index {index})")


def _tasks_text(tasks: Iterable[tuple[str, str, str]], limit: int = 5) -> str:
    items = sorted(tasks)
    shown = ", ".join(f"{fid}/{tid} {state.removeprefix('TASK_')}" for fid, tid, state in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _wait_drained(c: Ctx, agent_id: str, wait_timeout: float | None) -> tuple[set[tuple[str, str, str]], int]:
    """Poll the leader's state until the agent has no live task (or `wait_timeout` passed): the tasks
    still live (empty when drained) and the state index last seen."""
    from tessera.v1 import common_pb2, operator_pb2

    terminal = {common_pb2.TASK_FINISHED, common_pb2.TASK_FAILED, common_pb2.TASK_KILLED, common_pb2.TASK_LOST,
                common_pb2.TASK_ERROR, common_pb2.TASK_DROPPED, common_pb2.TASK_GONE}
    deadline = None if wait_timeout is None else time.monotonic() + wait_timeout
    shown: set[tuple[str, str, str]] | None = None
    agent_state = None
    while True:
        st = c.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True))
        left = {(t.task.framework_id, t.task.task_id, _state_name(t.state)) for t in st.tasks
                if t.task.agent_id == agent_id and t.state not in terminal}
        agent = next((a for a in st.agents if a.agent_id == agent_id), None)
        now_state = common_pb2.AgentState.Name(agent.state) if agent is not None else "gone"
        if now_state != agent_state and now_state not in ("AGENT_DRAINING",):
            click.echo(f"agent {agent_id} is {now_state.removeprefix('AGENT_')}", err=True)
        agent_state = now_state
        if not left:
            return left, st.index
        if left != shown:
            click.echo(f"agent {agent_id}: {len(left)} live task(s): {_tasks_text(left)}", err=True)
            shown = left
        if deadline is not None and time.monotonic() >= deadline:
            return left, st.index
        time.sleep(POLL_SECONDS if deadline is None else max(0.0, min(POLL_SECONDS, deadline - time.monotonic())))


@click.command("undrain")
@click.argument("agent_id")
@click.option("--request-id", default="", help="Idempotency key (retries with the same id are applied once).")
@click.pass_obj
def agent_undrain(obj: Any, agent_id: str, request_id: str) -> None:
    """Offer a draining agent again (commits AgentUndrained; the ACL action `drain`). The tasks its drain
    killed stay ended; an agent that is not draining is left as it is."""
    from tessera.v1 import operator_pb2

    c = ctx_of(obj)
    resp = c.call(lambda s: s.UndrainAgent, operator_pb2.UndrainAgentRequest(agent_id=agent_id,
                                                                             request_id=request_id))
    if c.as_json:
        c.emit({"agent_id": agent_id, "index": resp.index, "undrained": resp.undrained})
    elif resp.undrained:
        click.echo(f"agent {agent_id} is offered again (event {resp.index})")
    else:
        click.echo(f"agent {agent_id} was not draining; nothing changed (index {resp.index})")


# ---- tessera tasks --all ---------------------------------------------------------------------------------
def history_rows(c: Ctx, db: Path | None, framework_id: str) -> tuple[Any, list[Any]]:
    """(task history, the TaskView of each task the history names): from an events.db with `db`, else
    from the cluster's event log."""
    from tessera.control_plane.eventlog.errors import HistoryError, HistoryPruned
    from tessera.control_plane.eventlog.source import iter_records
    from tessera.control_plane.eventlog.tasks import task_filter, task_history

    flt = task_filter(framework_id=framework_id)
    try:
        if db is not None:
            from tessera.control_plane.cli.inspect import _open_db

            with _open_db(db) as source:
                history = task_history(iter_records(source, flt))
        else:
            from tessera.control_plane.cli.inspect import _Cluster, _remote_records

            cluster = _Cluster(c)
            try:
                history = task_history(_remote_records(cluster, flt))
            finally:
                cluster.close()
    except (HistoryError, HistoryPruned) as exc:
        fail(str(exc))
    return history, [row_view(r) for r in history.rows]


def row_view(row: Any) -> Any:
    """A task of the history as the Operator API's TaskView (what `tessera tasks --json` prints)."""
    from tessera.control_plane.codec import to_proto
    from tessera.v1 import common_pb2, operator_pb2

    view = operator_pb2.TaskView(state=int(row.state))
    if row.info is not None:  # None: its launch is older than the history kept
        view.task.CopyFrom(to_proto(row.info, common_pb2.TaskInfo))
    view.task.task_id, view.task.framework_id, view.task.agent_id = row.task_id, row.framework_id, row.agent_id
    if row.last_status is not None:
        view.last_status.CopyFrom(to_proto(row.last_status, common_pb2.TaskStatus))
    return view
