"""The agent loop: one thread that owns every piece of agent state and reacts to events.

Events come from the master link (a stream opened, a message, a stream closed) and from time (heartbeats,
status-update retries, task observation, usage samples). The loop is the only writer of the checkpoint,
the only caller of the launcher, and the only user of the pure core (`TaskTable`,
`StatusUpdateManager`), so none of them needs locking.

Rules it keeps (docs/protocol.md):
- Registration: the first message on every stream is `Register`. No agent id yet: a first registration
  whose `request_id` is stored in the checkpoint until answered (a retry after a crash cannot register
  the machine twice). With an id: a re-registration carrying the latest status of every task not yet
  done. The id in `Registered` is stored before anything else happens.
- Fencing: every master message carries a term; the highest seen is stored (before acting on the
  message); RunTask, KillTask and Shutdown with a lower term are ignored.
- Group commit: each turn of the loop (the events waiting, then the timers) is one checkpoint batch;
  `send` commits what was written before any message leaves, status updates are sent after the turn's
  commit, and the supervisors of the turn's RunTasks are started together after their sandboxes are
  on disk (`_start_launches`). Nothing outside the agent ever sees a decision the disk does not hold.
- Status updates: written to the checkpoint before they are sent; only the head of each task's stream
  is in flight; re-sent with backoff until acknowledged; all re-sent on every new registration. With
  BATCHED_MESSAGES (announced at every registration unless `batch_messages` is off) the heads due in
  one turn leave as one `StatusUpdates` message, and the master may answer with `acks` and send
  `run_tasks` (the tasks of one message are started together, like several RunTasks of one turn). After a
  re-registration, older updates of a reported task are superseded by the reported (newest) one, which
  the master has just recorded.
- A broken stream, or one silent for longer than `stale_after` (three heartbeats and a second), is
  dropped and the link dials again; after a SIGSTOP/SIGCONT the agent re-registers at once.
- NOT_FOUND on a re-registration: the master forgot this agent. Its tasks are killed, their updates
  dropped, the id cleared, and the agent registers anew.
- `Shutdown`: kill every task, wait for them and for their final updates to be acknowledged (bounded by
  their grace periods plus a few seconds), clear the id, exit.
- Stopping the agent (SIGTERM, SIGINT) never stops its tasks; they run on under their supervisors and
  are found again by `recover` at the next start.
- Sandbox GC (`collect_sandboxes`): the run directories of tasks that are over are removed
  `sandbox_gc_delay` seconds after the task ended, sooner (oldest first) when the finished ones hold
  more than `sandbox_gc_max_mib`; at start (after recovery) for what earlier runs left, when a task's
  delay is due, and at least every GC_INTERVAL for the cap. A run directory of a live task or of one
  prepared this turn is never touched. The decision is `tessera.agent.executor.sandbox.plan_collection`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message
from opentelemetry import trace

from tessera.agent.checkpoint import Checkpoint
from tessera.agent.config import ResolvedConfig
from tessera.agent.core.status_updates import AckOutcome, PendingUpdate, RetryPolicy, StatusUpdateManager
from tessera.agent.core.tasks import (
    REASON_AGENT_RESTARTED,
    REASON_CONTAINER_LAUNCH_FAILED,
    REASON_EXECUTOR_TERMINATED,
    REASON_TASK_INVALID,
    AgentTask,
    Outcome,
    TaskTable,
    make_status,
    terminal_status,
    validate_task,
)
from tessera.agent.executor.launcher import LaunchError, LaunchHandle, Observation, Usage
from tessera.agent.executor.sandbox import plan_collection, remove_run_dir, scan_finished
from tessera.agent.runtime.link import (
    LinkEvent,
    LinkStream,
    MasterLink,
    MessageReceived,
    StreamClosed,
    StreamOpened,
)
from tessera.control_plane.codec import from_proto, to_proto
from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.lifecycle import is_terminal
from tessera.control_plane.core.values import AgentInfo, StatusSource, TaskInfo, TaskKey, TaskState
from tessera.control_plane.tracing import TASK_ID_ATTRIBUTE, context_from, get_tracer
from tessera.control_plane.wire import Backoff
from tessera.v1 import agent_pb2, common_pb2

log = logging.getLogger("tessera.agent")

DEFAULT_KILL_GRACE = 3.0  # seconds, when neither KillTask nor the task names one
OBSERVE_INTERVAL = 0.2
MAX_WAIT = 0.5  # the loop wakes at least this often
SHUTDOWN_EXTRA = 5.0  # beyond the longest grace period, before giving up on tasks at Shutdown
DONE_TASKS_KEPT = 1000
BATCHED_MESSAGES = "BATCHED_MESSAGES"  # Register.capabilities (docs/protocol.md, AgentLink step 8)
MAX_UPDATES_PER_MESSAGE = 500  # a turn with more due updates sends several StatusUpdates messages
GC_INTERVAL = 60.0  # seconds between sandbox collections when nothing is due sooner


def agent_version() -> str:
    try:
        from importlib.metadata import version

        return f"tessera-agent {version('tessera')}"
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "tessera-agent"


class Launcher(Protocol):
    """What the agent needs from a launcher (`ProcessLauncher`, or a scripted twin in tests)."""

    agent_id: str

    def prepare(self, info: TaskInfo) -> LaunchHandle: ...
    def start(self, info: TaskInfo, handle: LaunchHandle) -> LaunchHandle: ...
    def start_many(self, launches: list[tuple[TaskInfo, LaunchHandle]]) -> list[LaunchHandle | LaunchError]: ...
    def observe(self, handle: LaunchHandle) -> Observation: ...
    def kill(self, handle: LaunchHandle, grace_period: float) -> None: ...
    def release(self, handle: LaunchHandle) -> None: ...
    def usage(self, handle: LaunchHandle) -> Usage | None: ...
    def handle_from_checkpoint(self, task_id: str, framework_id: str, sandbox: str, supervisor_pid: int,
                               supervisor_start: float, isolation: dict[str, Any],
                               kill_requested: bool) -> LaunchHandle: ...
    def watch_exits(self, listener: Callable[[int], None] | None) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Stop:
    """Posted to stop the loop (signals, tests)."""

    reason: str = ""


@dataclass(frozen=True)
class SupervisorExited:
    """Posted by the launcher (from its own thread) when a task's supervisor exited: look at it now."""

    pid: int


class Agent:
    def __init__(self, config: ResolvedConfig, checkpoint: Checkpoint, launcher: Launcher, *,
                 isolator_name: str = "", monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 new_uuid: Callable[[], str] = lambda: str(uuidlib.uuid4()),
                 tracer_provider: trace.TracerProvider | None = None) -> None:
        self.config = config
        self.checkpoint = checkpoint
        self.launcher = launcher
        self.isolator_name = isolator_name
        self.monotonic = monotonic
        self.wall = wall
        self.new_uuid = new_uuid
        # SimpleQueue: `put` is reentrant, so `stop()` may be called from a signal handler that
        # interrupted this very thread inside `get`.
        self.inbox: queue.SimpleQueue[LinkEvent | Stop | SupervisorExited] = queue.SimpleQueue()
        # Every per-task table is keyed by TaskKey(framework_id, task_id): task ids are scoped per
        # framework, so two frameworks may each run a `web-1` here.
        self.tasks = TaskTable()
        self.handles: dict[TaskKey, LaunchHandle] = {}
        self.to_start: list[tuple[AgentTask, TaskInfo, LaunchHandle]] = []  # prepared in this turn
        self.traceparents: dict[TaskKey, str] = {}
        self.tracer = get_tracer(__name__, tracer_provider)  # the global provider when None
        self.run_spans: dict[TaskKey, trace.Span] = {}  # task -> its `task.run` span, ended at the terminal status
        cfg = config.config
        self.updates = StatusUpdateManager(RetryPolicy(initial=cfg.status_retry_initial, maximum=cfg.status_retry_max))
        self.agent_id = checkpoint.agent_id
        self.highest_term = checkpoint.highest_term
        launcher.agent_id = self.agent_id
        self.stream: LinkStream | None = None
        self.registered = False
        self.reported: dict[TaskKey, str] = {}  # task -> uuid of the status reported at re-registration
        self.reregistering = False
        self.heartbeat_interval = config.heartbeat_interval
        self.last_received = 0.0
        self.next_heartbeat = 0.0
        self.next_observe = 0.0
        self.next_usage = 0.0
        self.next_prune = 0.0
        self.next_gc = 0.0
        self.shutdown_deadline: float | None = None
        self.exit_code: int | None = None
        self.link: MasterLink | None = None
        self.registrations = 0  # Registered answers received (tests and logs)
        # Tasks of a previous incarnation the master forgot (NOT_FOUND): killed, never reported again.
        self.orphaned: set[TaskKey] = set()

    # ---- lifecycle ------------------------------------------------------------------------------------
    def post(self, event: LinkEvent | Stop | SupervisorExited) -> None:
        self.inbox.put(event)

    def stop(self, reason: str = "stop requested") -> None:
        self.post(Stop(reason))

    @property
    def stale_after(self) -> float:
        return 3 * self.heartbeat_interval + 1.0

    def run(self) -> int:
        """Recover, connect, and serve until stopped or shut down; returns the exit code."""
        self.launcher.watch_exits(lambda pid: self.post(SupervisorExited(pid)))
        self.recover()
        self.link = MasterLink(self.config.masters, self.post,
                               backoff=Backoff(maximum=self.config.config.reconnect_backoff_max),
                               security=self.config.security)
        self.link.start()
        try:
            while self.exit_code is None:
                timeout = self._wait_time()
                try:
                    event = self.inbox.get(timeout=timeout)
                except queue.Empty:
                    event = None
                with self.checkpoint.batch():
                    while event is not None:
                        self._dispatch(event)
                        try:
                            event = self.inbox.get_nowait()
                        except queue.Empty:
                            event = None
                    if self.exit_code is None:
                        self.tick()
                    self._start_launches()
                self.flush_updates()
        finally:
            self.link.stop()
            self.launcher.watch_exits(None)
            self.launcher.close()
        log.info("agent stopped (exit code %d); its tasks keep running", self.exit_code)
        return self.exit_code

    def _wait_time(self) -> float:
        now = self.monotonic()
        deadlines = [now + MAX_WAIT]
        if self.registered:
            deadlines.append(self.next_heartbeat)
            due = self.updates.next_due()
            if due is not None:
                deadlines.append(due)
        if self.handles:
            deadlines.append(self.next_observe)
        return max(0.0, min(deadlines) - now)

    def _dispatch(self, event: LinkEvent | Stop | SupervisorExited) -> None:
        if isinstance(event, Stop):
            log.info("stopping: %s", event.reason)
            self.exit_code = 0
        elif isinstance(event, SupervisorExited):
            self.on_supervisor_exited(event.pid)
        elif isinstance(event, StreamOpened):
            self.on_stream_opened(event.stream)
        elif isinstance(event, MessageReceived):
            if event.stream is self.stream:
                self.on_message(event.message)
        elif isinstance(event, StreamClosed):
            self.on_stream_closed(event)

    # ---- recovery -------------------------------------------------------------------------------------
    def recover(self) -> None:
        """Rebuild the task table and the update streams from the checkpoint; find running tasks."""
        now = self.monotonic()
        records = self.checkpoint.tasks()
        for rec in records:
            task = AgentTask(info=rec.info, state=rec.state, latest=rec.latest,
                             kill_requested=rec.kill_requested, kill_grace=rec.kill_grace)
            self.tasks.restore(task)
            self.traceparents[rec.key] = rec.traceparent
            if task.terminal:
                continue
            if rec.sandbox:
                handle = self.launcher.handle_from_checkpoint(
                    rec.task_id, rec.info.framework_id, rec.sandbox, rec.supervisor_pid, rec.supervisor_start,
                    rec.isolation, rec.kill_requested)
                self.handles[rec.key] = handle
        self.updates.recover((PendingUpdate(u.status, u.traceparent) for u in self.checkpoint.unacknowledged()), now)
        for task in list(self.tasks):
            found = self.handles.get(task.key)
            if task.kill_requested and found is not None:
                # The previous agent may have died between recording the kill and signalling the
                # supervisor; asking again is harmless (the supervisor starts a kill only once).
                if task.state is not TaskState.TASK_KILLING and self.tasks.can_record(task.key,
                                                                                       TaskState.TASK_KILLING):
                    self.emit(task, Outcome(TaskState.TASK_KILLING, "", "killing (again, after an agent restart)"))
                self.launcher.kill(found, task.kill_grace)
            if task.terminal and not self.updates.has_pending(task.key):
                self._mark_done(task)
            elif task.state is TaskState.TASK_STAGING and task.key not in self.handles:
                self.emit(task, Outcome(TaskState.TASK_DROPPED, REASON_AGENT_RESTARTED,
                                        "the agent restarted before it launched the task"),
                          source=StatusSource.SOURCE_AGENT)
        if records:
            log.info("recovered %d task(s), %d live, %d unacknowledged update(s)", len(records),
                     len(self.handles), len(self.updates))
        self.observe_tasks()
        self.collect_sandboxes()  # what earlier runs of the agent left

    # ---- the link -------------------------------------------------------------------------------------
    def on_stream_opened(self, stream: LinkStream) -> None:
        if self.stream is not None and not self.stream.closed:
            self.stream.close()
        self.stream = stream
        self.registered = False
        self.last_received = self.monotonic()
        self.reported = {}
        if self.agent_id:
            statuses = self.tasks.report(self.agent_id)
            self.reported = {TaskKey(s.framework_id, s.task_id): s.uuid for s in statuses if s.uuid}
            self.reregistering = True
            request_id = f"reregister-{self.new_uuid()}"
        else:
            statuses = []
            self.reregistering = False
            request_id = self.checkpoint.registration_request_id()
        register = agent_pb2.Register(agent_id=self.agent_id, info=self._agent_info(), request_id=request_id)
        if self.config.config.batch_messages:
            register.capabilities.append(BATCHED_MESSAGES)
        for status in statuses:
            register.tasks.append(to_proto(status, common_pb2.TaskStatus))
        log.info("%s to %s (%d task(s))", "re-registering" if self.agent_id else "registering",
                 stream.address, len(statuses))
        stream.send(agent_pb2.AgentMessage(register=register))

    def _agent_info(self) -> common_pb2.AgentInfo:
        info = AgentInfo(agent_id=self.agent_id, hostname=self.config.hostname, resources=self.config.resources,
                         attributes=self.config.attributes, isolator=self.isolator_name, version=agent_version())
        return to_proto(info, common_pb2.AgentInfo)

    def on_stream_closed(self, event: StreamClosed) -> None:
        if event.stream is not self.stream:
            return
        self.stream = None
        self.registered = False
        if event.code is grpc.StatusCode.NOT_FOUND and self.reregistering and self.agent_id:
            log.warning("the master does not know agent %s (%s): killing its tasks and registering anew",
                        self.agent_id, event.details)
            self.forget_agent()
        elif event.code is grpc.StatusCode.INVALID_ARGUMENT:
            log.error("the master refused the registration: %s", event.details)

    def send(self, message: Message) -> bool:
        stream = self.stream
        if stream is None:
            return False
        assert isinstance(message, agent_pb2.AgentMessage)
        self.checkpoint.sync()  # nothing leaves before what was decided is on disk
        return stream.send(message)

    def on_message(self, msg: agent_pb2.MasterMessage) -> None:
        self.last_received = self.monotonic()
        stale = msg.term < self.highest_term
        if msg.term > self.highest_term:
            self.checkpoint.observe_term(msg.term)  # stored before acting on the message
            self.highest_term = msg.term
        kind = msg.WhichOneof("kind")
        if kind == "registered":
            self.on_registered(msg.registered)
        elif kind == "heartbeat_ack":
            pass
        elif kind == "ack":
            self.on_ack(msg.ack)
        elif kind == "acks":
            for ack in msg.acks.acks:
                self.on_ack(ack)
        elif kind in ("run_task", "run_tasks", "kill_task", "shutdown"):
            if stale:
                log.warning("ignoring %s with term %d: a term %d leader has been seen", kind, msg.term,
                            self.highest_term)
                return
            if kind == "run_task":
                self.on_run_task(msg.run_task)
            elif kind == "run_tasks":
                for run in msg.run_tasks.tasks:  # prepared now, started together at the end of the turn
                    self.on_run_task(run)
            elif kind == "kill_task":
                self.on_kill_task(msg.kill_task)
            else:
                self.on_shutdown(msg.shutdown.reason)

    def on_registered(self, registered: agent_pb2.Registered) -> None:
        if not registered.agent_id:
            log.error("the master answered Registered without an agent id; reconnecting")
            if self.stream is not None:
                self.stream.close()
            return
        if registered.agent_id != self.agent_id:
            self.checkpoint.set_agent_id(registered.agent_id)  # on disk before anything else
            if self.agent_id:
                log.warning("the master gave a new agent id %s (was %s)", registered.agent_id, self.agent_id)
            self.agent_id = registered.agent_id
            self.launcher.agent_id = registered.agent_id
        self.registered = True
        self.registrations += 1
        if registered.heartbeat_interval_seconds > 0:
            self.heartbeat_interval = registered.heartbeat_interval_seconds
        now = self.monotonic()
        for key, uuid in self.reported.items():
            superseded = self.updates.supersede(key, uuid, now)
            if superseded:
                self.checkpoint.acknowledge(superseded)
        self.reported = {}
        log.info("registered as %s (heartbeat every %gs, %d pending update(s))", self.agent_id,
                 self.heartbeat_interval, len(self.updates))
        self.updates.reset(now)
        self.next_heartbeat = now  # a heartbeat at once tells the master we are here
        self.next_usage = now + self.config.config.usage_interval
        self.flush_updates()

    # ---- tasks ------------------------------------------------------------------------------------------
    def on_run_task(self, run: agent_pb2.RunTask) -> None:
        if not self.registered:
            log.warning("ignoring RunTask for %s received before registration", run.task.task_id)
            return
        task_id = run.task.task_id
        key = TaskKey(run.task.framework_id, task_id)
        if key in self.tasks:
            log.info("RunTask for task %s of framework %s, which this agent already has: ignored", task_id,
                     key.framework_id)
            return
        problem = ""
        try:
            info = from_proto(run.task, TaskInfo)
        except InvalidRequest as exc:
            problem = exc.message
            info = TaskInfo(task_id=task_id, framework_id=run.task.framework_id)
        if not task_id:
            log.error("ignoring RunTask without a task id")
            return
        self.checkpoint.add_task(info, traceparent=run.traceparent)
        task = self.tasks.add(info)
        self.traceparents[key] = run.traceparent
        parent = context_from(run.traceparent)
        if parent is None:
            self._launch(task, info, problem)
            return
        self.run_spans[key] = self.tracer.start_span("task.run", context=parent,
                                                          attributes={TASK_ID_ATTRIBUTE: task_id})
        with self.tracer.start_as_current_span("agent.launch_task", context=parent,
                                               attributes={TASK_ID_ATTRIBUTE: task_id}):
            self._launch(task, info, problem)

    def _launch(self, task: AgentTask, info: TaskInfo, problem: str) -> None:
        problem = problem or validate_task(info)
        if problem:
            self.emit(task, Outcome(TaskState.TASK_ERROR, REASON_TASK_INVALID, problem),
                      source=StatusSource.SOURCE_AGENT)
            return
        if self.shutdown_deadline is not None:
            self.emit(task, Outcome(TaskState.TASK_DROPPED, REASON_TASK_INVALID, "the agent is shutting down"),
                      source=StatusSource.SOURCE_AGENT)
            return
        try:
            handle = self.launcher.prepare(info)
        except LaunchError as exc:
            self._launch_failed(task, exc)
            return
        self.checkpoint.set_sandbox(task.key, str(handle.sandbox), handle.isolation.to_json())
        self.to_start.append((task, info, handle))  # started with the others of this turn

    def _launch_failed(self, task: AgentTask, exc: LaunchError) -> None:
        log.warning("cannot launch task %s: %s", task.task_id, exc)
        self.emit(task, Outcome(TaskState.TASK_FAILED, REASON_CONTAINER_LAUNCH_FAILED, str(exc)),
                  source=StatusSource.SOURCE_AGENT)

    def _start_launches(self) -> None:
        """Start the supervisors of the tasks prepared in this turn, once their sandboxes are on disk."""
        if not self.to_start:
            return
        self.checkpoint.sync()
        pending, self.to_start = self.to_start, []
        starting = []
        for task, info, handle in pending:
            if task.kill_requested:
                self.launcher.release(handle)
                self.emit(task, Outcome(TaskState.TASK_KILLED, "", "killed before it started"))
            else:
                starting.append((task, info, handle))
        results = self.launcher.start_many([(info, handle) for _, info, handle in starting])
        for (task, info, prepared), result in zip(starting, results, strict=True):
            task_id = task.task_id
            if isinstance(result, LaunchError):
                self.launcher.release(prepared)
                self._launch_failed(task, result)
                continue
            handle = result
            self.checkpoint.set_launched(task.key, sandbox=str(handle.sandbox), supervisor_pid=handle.supervisor_pid,
                                         supervisor_start=handle.supervisor_start,
                                         isolation=handle.isolation.to_json())
            self.handles[task.key] = handle
            log.info("launched task %s (framework %s) in %s, supervisor pid %d", task_id, info.framework_id,
                     handle.sandbox, handle.supervisor_pid)
            self.emit(task, Outcome(TaskState.TASK_STARTING, "", "the task's supervisor started"))
        self.next_observe = self.monotonic()

    def on_kill_task(self, kill: agent_pb2.KillTask) -> None:
        task = self.tasks.get(TaskKey(kill.framework_id, kill.task_id))
        if task is None:
            log.warning("KillTask for unknown task %s of framework %s: ignored (re-registration reconciles it)",
                        kill.task_id, kill.framework_id)
            return
        grace = kill.grace_period_seconds or task.info.kill_grace_period_seconds or DEFAULT_KILL_GRACE
        self.kill(task, grace)

    def kill(self, task: AgentTask, grace: float) -> None:
        if not self.tasks.request_kill(task.key, grace):
            return
        self.checkpoint.mark_kill(task.key, grace)
        handle = self.handles.get(task.key)
        if handle is None:
            return
        if self.tasks.can_record(task.key, TaskState.TASK_KILLING):
            self.emit(task, Outcome(TaskState.TASK_KILLING, "", f"killing: SIGTERM, then SIGKILL after {grace:g}s"))
        log.info("killing task %s (grace %gs)", task.task_id, grace)
        self.checkpoint.sync()  # the kill request is on disk before the supervisor acts on it
        self.launcher.kill(handle, grace)
        self.next_observe = self.monotonic()

    def on_supervisor_exited(self, pid: int) -> None:
        for key, handle in list(self.handles.items()):
            if handle.supervisor_pid == pid:
                task = self.tasks.get(key)
                if task is not None:
                    self._observe(task, handle)
                return

    def _observe(self, task: AgentTask, handle: LaunchHandle) -> None:
        try:
            observation = self.launcher.observe(handle)
        except OSError as exc:
            log.warning("cannot observe task %s: %s", task.task_id, exc)
            return
        self._advance(task, handle, observation)

    def observe_tasks(self) -> None:
        for key, handle in list(self.handles.items()):
            task = self.tasks.get(key)
            if task is None:
                continue
            self._observe(task, handle)

    def _advance(self, task: AgentTask, handle: LaunchHandle, obs: Observation) -> None:
        """Report what `obs` shows that the task's state does not yet say."""
        if obs.supervisor_lost and task.state is TaskState.TASK_STAGING and not obs.started:
            self.emit(task, Outcome(TaskState.TASK_DROPPED, REASON_AGENT_RESTARTED,
                                    "the task's supervisor never started"), source=StatusSource.SOURCE_AGENT)
        else:
            if task.state is TaskState.TASK_STAGING:
                self.emit(task, Outcome(TaskState.TASK_STARTING, "", "the task's supervisor started"))
            if obs.started and task.state is TaskState.TASK_STARTING:
                self.emit(task, Outcome(TaskState.TASK_RUNNING, "", "the task's process started"))
            if obs.exit is not None:
                self.emit(task, terminal_status(obs.exit, task.kill_requested, str(handle.task_dir)))
            elif obs.supervisor_lost:
                if task.kill_requested:
                    self.emit(task, Outcome(TaskState.TASK_KILLED, "", f"task killed ({obs.supervisor_lost})"))
                else:
                    self.emit(task, Outcome(TaskState.TASK_FAILED, REASON_EXECUTOR_TERMINATED, obs.supervisor_lost),
                              source=StatusSource.SOURCE_AGENT)
        if obs.ended:
            self.launcher.release(handle)
            self.handles.pop(task.key, None)
            log.info("task %s ended: %s", task.task_id, task.state.name)
            self.next_gc = min(self.next_gc, self.monotonic() + self.config.config.sandbox_gc_delay)

    # ---- status updates ------------------------------------------------------------------------------
    def emit(self, task: AgentTask, outcome: Outcome, source: StatusSource = StatusSource.SOURCE_EXECUTOR) -> bool:
        """Record a new status of `task` (checkpoint first), queue it and send what is due."""
        if not self.tasks.can_record(task.key, outcome.state):
            log.warning("task %s: %s -> %s is not a legal transition; not reported", task.task_id,
                        task.state.name, outcome.state.name)
            return False
        status = make_status(task, outcome, uuid=self.new_uuid(), now=self.wall(), agent_id=self.agent_id,
                             source=source)
        traceparent = self.traceparents.get(task.key, "")
        self.checkpoint.record_update(status, traceparent)
        self.tasks.record(status)
        if is_terminal(outcome.state):
            self._end_run_span(task.key, outcome)
        if task.key in self.orphaned:
            # The master does not know this task any more: keep the history, send nothing.
            self.checkpoint.acknowledge([status.uuid])
            if task.terminal:
                self.orphaned.discard(task.key)
                self._mark_done(task)
            return True
        self.updates.add(PendingUpdate(status, traceparent), self.monotonic())
        self.flush_updates()
        return True

    def _end_run_span(self, key: TaskKey, outcome: Outcome) -> None:
        span = self.run_spans.pop(key, None)
        if span is None:
            return
        try:
            span.set_attribute("tessera.task_state", outcome.state.name)
            if outcome.state is not TaskState.TASK_FINISHED:
                span.set_status(trace.StatusCode.ERROR, outcome.message or outcome.state.name)
            span.end()
        except Exception as exc:  # noqa: BLE001 - tracing never fails the agent
            log.debug("task.run span of %s: %s", key, exc)

    def flush_updates(self) -> None:
        """Send the heads that are due: one `status_updates` message for all of them when the agent
        announced BATCHED_MESSAGES (a lone update still goes as `status_update`), else one message each."""
        if not self.registered or self.stream is None or self.checkpoint.in_batch:
            return  # in a batch: sent after the turn's commit
        due = [self._update_message(u) for u in self.updates.due(self.monotonic())]
        if not self.config.config.batch_messages:
            for update in due:
                self.send(agent_pb2.AgentMessage(status_update=update))
            return
        for start in range(0, len(due), MAX_UPDATES_PER_MESSAGE):
            chunk = due[start:start + MAX_UPDATES_PER_MESSAGE]
            if len(chunk) == 1:
                self.send(agent_pb2.AgentMessage(status_update=chunk[0]))
            else:
                self.send(agent_pb2.AgentMessage(status_updates=agent_pb2.StatusUpdates(updates=chunk)))

    def _update_message(self, update: PendingUpdate) -> agent_pb2.StatusUpdate:
        status = replace(update.status, agent_id=update.status.agent_id or self.agent_id)
        return agent_pb2.StatusUpdate(status=to_proto(status, common_pb2.TaskStatus), traceparent=update.traceparent)

    def on_ack(self, ack: agent_pb2.StatusUpdateAck) -> None:
        uuid = ack.uuid
        key: TaskKey | None = TaskKey(ack.framework_id, ack.task_id)
        if not ack.framework_id:  # a master of an earlier version: the uuid names the task's stream
            key = self.updates.find(uuid)
        result = self.updates.acknowledge(key, uuid, self.monotonic()) if key is not None else None
        if result is not None and key is not None and result.outcome is AckOutcome.ACKED:
            self.checkpoint.acknowledge(result.removed)
            task = self.tasks.get(key)
            if task is not None and task.terminal and not self.updates.has_pending(key):
                self._mark_done(task)
            self.flush_updates()
        elif result is None or result.outcome is AckOutcome.UNKNOWN:
            log.debug("acknowledgement of unknown update %s of task %s", uuid, ack.task_id)

    def _mark_done(self, task: AgentTask) -> None:
        task.done = True
        self.checkpoint.mark_done(task.key)

    # ---- master-driven resets ---------------------------------------------------------------------------
    def forget_agent(self) -> None:
        """The master does not know us: kill every task, drop their updates, register anew."""
        for task in self.tasks:
            dropped = self.updates.drop_task(task.key)
            if dropped:
                self.checkpoint.acknowledge(dropped)
            if task.terminal:
                if not task.done:
                    self._mark_done(task)
                continue
            self.orphaned.add(task.key)
            self.kill(task, 0.0)
        self.checkpoint.clear_agent_id()
        self.agent_id = ""
        self.launcher.agent_id = ""

    def on_shutdown(self, reason: str) -> None:
        log.warning("the master shut this agent down: %s", reason or "no reason given")
        longest = 0.0
        for task in self.tasks.live():
            grace = task.info.kill_grace_period_seconds or DEFAULT_KILL_GRACE
            longest = max(longest, grace)
            self.kill(task, grace)
        self.shutdown_deadline = self.monotonic() + longest + SHUTDOWN_EXTRA

    # ---- time ------------------------------------------------------------------------------------------
    def tick(self) -> None:
        now = self.monotonic()
        if self.stream is not None and now - self.last_received > self.stale_after:
            log.warning("no message from %s for %.1fs: reconnecting", self.stream.address, now - self.last_received)
            self.stream.close()
            self.stream = None
            self.registered = False
        if self.handles and now >= self.next_observe:
            self.next_observe = now + OBSERVE_INTERVAL
            self.observe_tasks()
        if self.registered:
            if now >= self.next_heartbeat:
                self.next_heartbeat = now + self.heartbeat_interval
                self.send(agent_pb2.AgentMessage(heartbeat=agent_pb2.AgentHeartbeat(agent_id=self.agent_id,
                                                                                     time=self.wall())))
            self.flush_updates()
            if now >= self.next_usage:
                self.next_usage = now + self.config.config.usage_interval
                self.send_usage()
        if now >= self.next_gc:
            self.collect_sandboxes()
        if now >= self.next_prune:
            self.next_prune = now + 60.0
            if self.tasks.prune_done(DONE_TASKS_KEPT):
                self.checkpoint.prune_done(DONE_TASKS_KEPT)
        if self.shutdown_deadline is not None:
            # Done when every task ended and its final update was delivered (or the time is up).
            if (not self.handles and not len(self.updates)) or now >= self.shutdown_deadline:
                if self.handles or len(self.updates):
                    log.warning("shutting down with %d task(s) still running and %d update(s) unacknowledged",
                                len(self.handles), len(self.updates))
                self.checkpoint.clear_agent_id()
                self.exit_code = 0

    # ---- sandboxes -------------------------------------------------------------------------------------
    def collect_sandboxes(self) -> None:
        """Remove the run directories of finished tasks that are due (see the module docstring)."""
        cfg = self.config.config
        live = {str(h.sandbox) for h in self.handles.values()}
        live.update(str(h.sandbox) for _, _, h in self.to_start)
        now_mono, now = self.monotonic(), self.wall()
        finished = scan_finished(self.config.work_dir, live)
        plan = plan_collection(finished, now, cfg.sandbox_gc_delay, int(cfg.sandbox_gc_max_mib * 1024 * 1024))
        for path in plan.collect:
            try:
                remove_run_dir(Path(path))
                log.info("removed the sandbox %s of a finished task", path)
            except OSError as exc:
                log.warning("cannot remove the sandbox %s: %s", path, exc)
        self.next_gc = now_mono + GC_INTERVAL
        if plan.next_due is not None:
            self.next_gc = min(self.next_gc, now_mono + max(0.0, plan.next_due - now))

    def send_usage(self) -> None:
        usage = agent_pb2.Usage(agent_id=self.agent_id)
        for key, handle in sorted(self.handles.items()):
            try:
                sample = self.launcher.usage(handle)
            except OSError:
                sample = None
            if sample is not None:
                usage.tasks.add(task_id=key.task_id, framework_id=key.framework_id, cpu_seconds=sample.cpu_seconds,
                                rss_bytes=sample.rss_bytes,
                                timestamp=sample.timestamp)
        self.send(agent_pb2.AgentMessage(usage=usage))


def run_in_thread(agent: Agent) -> tuple[threading.Thread, list[int]]:
    """Run `agent.run()` on a thread (tests); the exit code lands in the returned list."""
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(agent.run()), name="agent-loop", daemon=True)
    thread.start()
    return thread, result
