"""The agent's task table and the mapping from how a task's process ended to its final status.

Pure: no I/O, no clock, no ids minted here (uuids and times are passed in).

Rules it keeps:
- Every state change goes through the shared lifecycle table (`tessera.control_plane.core.lifecycle`): the
  agent never records a transition the master would refuse. A task enters the table in TASK_STAGING
  (the state the master launched it in) and moves STARTING -> RUNNING -> terminal, or KILLING -> KILLED.
- A task is in the table once: a repeated RunTask for a known task is a duplicate, not a second launch.
  Tasks are keyed by (framework_id, task_id): task ids are scoped per framework, so two frameworks may
  each run a `web-1` on this agent.
- How a process ended (`ExitRecord`, written by the supervisor) maps to exactly one terminal status in
  `terminal_status`: an isolator limitation wins (TASK_FAILED, REASON_CONTAINER_LIMITATION_MEMORY), then
  a kill for failing the health check (TASK_KILLED, REASON_TASK_UNHEALTHY, `healthy` false, as Mesos
  marks it), then a requested kill (TASK_KILLED), then a URI that could not be fetched (TASK_FAILED,
  REASON_FETCHER_FAILED, naming the URI), then the exit (0: TASK_FINISHED; otherwise TASK_FAILED with
  the exit status, a hint for 126/127 and the tail of stderr).
- Exit codes: a normal exit is its code; death by signal N is reported as 128 + N (the shell's
  convention), and the message names the signal.
- A terminal status of a task that ran carries the tail of its stdout in `data` (at most
  MAX_STATUS_DATA bytes) and ends its message with `sandbox=PATH` (what `tessera run` looks for).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.health_checks import REASON_TASK_UNHEALTHY, check_health_check
from tessera.control_plane.core.lifecycle import INITIAL_STATE, can_transition, is_terminal
from tessera.control_plane.core.state import MAX_STATUS_DATA, check_working_dir
from tessera.control_plane.core.uris import check_uris
from tessera.control_plane.core.values import (
    NetworkInfo,
    StatusSource,
    TaskInfo,
    TaskKey,
    TaskState,
    TaskStatus,
)

# Reasons, in Mesos' vocabulary (TaskStatus.reason is a string on the wire).
REASON_COMMAND_EXECUTOR_FAILED = "REASON_COMMAND_EXECUTOR_FAILED"
REASON_CONTAINER_LAUNCH_FAILED = "REASON_CONTAINER_LAUNCH_FAILED"
REASON_CONTAINER_LIMITATION_MEMORY = "REASON_CONTAINER_LIMITATION_MEMORY"
REASON_EXECUTOR_TERMINATED = "REASON_EXECUTOR_TERMINATED"
REASON_TASK_INVALID = "REASON_TASK_INVALID"
REASON_AGENT_RESTARTED = "REASON_AGENT_RESTARTED"
REASON_TASK_KILLED_DURING_LAUNCH = "REASON_TASK_KILLED_DURING_LAUNCH"
# Not Mesos's (it says REASON_CONTAINER_LAUNCH_FAILED with the fetcher's message): a URI that cannot be
# fetched is a fault of the task's artifacts, not of the agent's runtime, and a framework may want to
# tell the two apart (retry elsewhere, or fix the URI). The message names the URI (docs/fetcher.md).
REASON_FETCHER_FAILED = "REASON_FETCHER_FAILED"

MAX_MESSAGE = 3000  # the master refuses messages over 4096 characters; leave room for the prefix

_SIGNAL_NAMES = {
    1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE",
    9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM",
    24: "SIGXCPU", 25: "SIGXFSZ",
}


def signal_name(number: int) -> str:
    return _SIGNAL_NAMES.get(number, f"signal {number}")


class DuplicateTask(ValueError):
    """A RunTask for a task (framework and id) the agent already has."""


@dataclass(frozen=True, slots=True)
class ExitRecord:
    """How a task's process ended, as the supervisor recorded it in the sandbox (exit_status.json)."""

    exit_code: int | None = None  # normal exit
    signal: int | None = None  # killed by this signal
    killed: bool = False  # the supervisor was asked to kill the task and did
    limitation: str = ""  # an isolator limit ended the task (the isolator's message), "" otherwise
    launch_error: str = ""  # the command could not be started at all
    container_error: str = ""  # the container could not be made or started (image, network, runtime)
    unhealthy: str = ""  # the supervisor killed the task for failing its health check: why
    fetch_error: str = ""  # a URI could not be fetched into the sandbox ("URI: why"); the task never started
    stderr_tail: str = ""  # filled by the launcher from the sandbox, for the message
    stdout_tail: bytes = b""  # filled by the launcher: the end of the task's stdout

    @property
    def status_code(self) -> int | None:
        if self.signal is not None:
            return 128 + self.signal
        return self.exit_code


@dataclass(frozen=True, slots=True)
class Outcome:
    """A terminal (or launch-time) status to report, before a uuid and a time are attached."""

    state: TaskState
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    data: bytes = b""
    network: NetworkInfo | None = None  # a container's addresses (TASK_RUNNING)
    healthy: bool | None = None  # health-check updates (and the end of a task killed for failing it)


def _with_stderr(message: str, stderr_tail: str) -> str:
    tail = stderr_tail.strip()
    if tail:
        message = f"{message}; stderr: {tail[-1000:]}"
    return message[:MAX_MESSAGE]


def terminal_status(record: ExitRecord, kill_requested: bool, sandbox: str = "") -> Outcome:
    """The terminal status for a task that ended as `record` says (`sandbox`: where it ran)."""
    outcome = _ending(record, kill_requested)
    suffix = f" sandbox={sandbox}" if sandbox else ""
    message = outcome.message[: MAX_MESSAGE - len(suffix)] + suffix
    return Outcome(outcome.state, outcome.reason, message, outcome.exit_code,
                   record.stdout_tail[-MAX_STATUS_DATA:], healthy=outcome.healthy)


def _ending(record: ExitRecord, kill_requested: bool) -> Outcome:
    code = record.status_code
    if record.limitation:
        return Outcome(TaskState.TASK_FAILED, REASON_CONTAINER_LIMITATION_MEMORY, record.limitation, code)
    if record.unhealthy and record.killed:
        how = f"signal {signal_name(record.signal)}" if record.signal is not None else f"exit status {code}"
        return Outcome(TaskState.TASK_KILLED, REASON_TASK_UNHEALTHY, f"{record.unhealthy} ({how})", code,
                       healthy=False)
    if kill_requested or record.killed:
        how = f"signal {signal_name(record.signal)}" if record.signal is not None else f"exit status {code}"
        return Outcome(TaskState.TASK_KILLED, "", f"task killed ({how})", code)
    if record.fetch_error:
        return Outcome(TaskState.TASK_FAILED, REASON_FETCHER_FAILED, f"cannot fetch {record.fetch_error}"[:MAX_MESSAGE])
    if record.container_error:
        return Outcome(TaskState.TASK_FAILED, REASON_CONTAINER_LAUNCH_FAILED,
                       _with_stderr(f"cannot start the container: {record.container_error}", record.stderr_tail),
                       code)
    if record.launch_error:
        return Outcome(TaskState.TASK_FAILED, REASON_COMMAND_EXECUTOR_FAILED,
                       _with_stderr(f"cannot start the command: {record.launch_error} (exit status {code})",
                                    record.stderr_tail), code)
    if record.signal is not None:
        return Outcome(TaskState.TASK_FAILED, REASON_COMMAND_EXECUTOR_FAILED,
                       _with_stderr(f"command terminated by {signal_name(record.signal)}", record.stderr_tail),
                       code)
    if code == 0:
        return Outcome(TaskState.TASK_FINISHED, "", "command exited with status 0", 0)
    hint = {126: " (command not executable)", 127: " (command not found)"}.get(code or 0, "")
    return Outcome(TaskState.TASK_FAILED, REASON_COMMAND_EXECUTOR_FAILED,
                   _with_stderr(f"command exited with status {code}{hint}", record.stderr_tail), code)


def validate_task(info: TaskInfo) -> str:
    """Why the agent cannot run `info` (an empty string when it can)."""
    if not info.task_id:
        return "task has no task_id"
    if not info.command.value and info.container is None:
        return "task has no command (command.value is empty)"
    if info.resources.scalar("cpus") < 0 or info.resources.scalar("mem") < 0:
        return "task resources are negative"
    if info.kill_grace_period_seconds < 0:
        return "kill_grace_period_seconds is negative"
    try:  # the master refuses these at Accept; a task from elsewhere is checked again here
        check_working_dir(info.command.working_dir, "command.working_dir")
        check_health_check(info, "task")
        check_uris(info, "task")
    except InvalidRequest as exc:
        return exc.message
    return ""


@dataclass(slots=True)
class AgentTask:
    """One task the agent knows about. Mutable, owned by the agent loop."""

    info: TaskInfo
    state: TaskState = INITIAL_STATE
    latest: TaskStatus | None = None  # the newest status generated for it
    kill_requested: bool = False
    kill_grace: float = 0.0
    done: bool = False  # terminal and every update acknowledged: the master knows how it ended

    @property
    def task_id(self) -> str:
        return self.info.task_id

    @property
    def framework_id(self) -> str:
        return self.info.framework_id

    @property
    def key(self) -> TaskKey:
        return TaskKey(self.info.framework_id, self.info.task_id)

    @property
    def terminal(self) -> bool:
        return is_terminal(self.state)


def status_key(status: TaskStatus) -> TaskKey:
    return TaskKey(status.framework_id, status.task_id)


class TaskTable:
    """The tasks of one agent, keyed by (framework_id, task_id); transitions checked against the lifecycle
    table."""

    def __init__(self) -> None:
        self._tasks: dict[TaskKey, AgentTask] = {}

    def add(self, info: TaskInfo, state: TaskState = INITIAL_STATE) -> AgentTask:
        task = AgentTask(info=info, state=state)
        if task.key in self._tasks:
            raise DuplicateTask(f"task {info.task_id} of framework {info.framework_id} is already on this agent")
        self._tasks[task.key] = task
        return task

    def restore(self, task: AgentTask) -> None:
        """Put back a task read from the checkpoint (its state was checked when it was recorded)."""
        self._tasks[task.key] = task

    def get(self, key: TaskKey) -> AgentTask | None:
        return self._tasks.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[AgentTask]:
        return iter([self._tasks[t] for t in sorted(self._tasks)])

    def live(self) -> list[AgentTask]:
        return [t for t in self if not t.terminal]

    def can_record(self, key: TaskKey, state: TaskState) -> bool:
        task = self._tasks.get(key)
        return task is not None and can_transition(task.state, state)

    def record(self, status: TaskStatus) -> bool:
        """Move the task to `status.state` when the lifecycle table allows it; False (no change) if not."""
        task = self._tasks.get(status_key(status))
        if task is None or not can_transition(task.state, status.state):
            return False
        task.state = status.state
        task.latest = status
        return True

    def request_kill(self, key: TaskKey, grace: float) -> bool:
        """Mark a kill request; True the first time for a live task (then the kill must be carried out)."""
        task = self._tasks.get(key)
        if task is None or task.terminal or task.kill_requested:
            return False
        task.kill_requested = True
        task.kill_grace = grace
        return True

    def remove(self, key: TaskKey) -> AgentTask | None:
        return self._tasks.pop(key, None)

    def prune_done(self, keep: int) -> list[TaskKey]:
        """Forget the oldest done tasks beyond the newest `keep` (in the order they were added)."""
        done = [k for k, t in self._tasks.items() if t.done]
        victims = done[: max(0, len(done) - keep)]
        for key in victims:
            del self._tasks[key]
        return victims

    def report(self, agent_id: str) -> list[TaskStatus]:
        """The latest status of every task not yet done, for a re-registration (one per task, as the master
        requires). A task still staging has no status of its own yet; it is reported STAGING without a uuid."""
        out: list[TaskStatus] = []
        for task in self:
            if task.done:
                continue
            if task.latest is not None:
                out.append(replace(task.latest, agent_id=agent_id))
            else:
                out.append(TaskStatus(task_id=task.task_id, state=task.state, agent_id=agent_id,
                                      framework_id=task.framework_id, source=StatusSource.SOURCE_AGENT))
        return out


def make_status(task: AgentTask, outcome: Outcome, *, uuid: str, now: float, agent_id: str,
                source: StatusSource = StatusSource.SOURCE_EXECUTOR) -> TaskStatus:
    """A status of `task` carrying `outcome`, with the uuid and time the caller minted."""
    return TaskStatus(
        task_id=task.task_id, state=outcome.state, message=outcome.message[:MAX_MESSAGE],
        reason=outcome.reason, source=source, agent_id=agent_id, uuid=uuid, timestamp=now,
        exit_code=outcome.exit_code, framework_id=task.framework_id, data=outcome.data[-MAX_STATUS_DATA:],
        network=outcome.network, healthy=outcome.healthy,
    )
