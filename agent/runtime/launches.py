"""Running tasks: RunTask and KillTask from the master, watching the supervisors, sandbox GC, usage.

Rules it keeps (docs/protocol.md):
- A RunTask is recorded in the checkpoint before anything else; a task this agent already has is not
  launched twice; an invalid task ends as TASK_ERROR, one arriving while the agent shuts down as
  TASK_DROPPED, one the launcher cannot start as TASK_FAILED.
- Launches are group-committed: each RunTask of a turn is prepared at once (its sandbox recorded), and
  the supervisors of the turn's tasks are started together by `_start_launches` after the turn's
  checkpoint batch is on disk; a task killed meanwhile is never started.
- A kill is on disk before the supervisor is asked (SIGTERM, then SIGKILL after the grace period).
- What a supervisor shows (started, exited, vanished) becomes the task's next statuses (`_advance`),
  when it exits (`on_supervisor_exited`, posted by the launcher) and at every observation tick.
- Sandbox GC (`collect_sandboxes`): the run directories of tasks that are over are removed
  `sandbox_gc_delay` seconds after the task ended, sooner (oldest first) when the finished ones hold
  more than `sandbox_gc_max_mib`; at start (after recovery) for what earlier runs left, when a task's
  delay is due, and at least every GC_INTERVAL for the cap. A run directory of a live task or of one
  prepared this turn is never touched. The decision is `tessera.agent.executor.sandbox.plan_collection`.
- Container tasks: the image is pulled first, in a pull thread (`_pull`; the store coalesces pulls of
  one image and never contacts the registry for an image it has), and the launch goes on in the loop
  when the pull is done (`on_image_pulled`): a pull that failed ends the task TASK_FAILED with the
  store's reason, a kill during the pull ends it TASK_KILLED. An agent without container support fails
  a container task at once, saying why. TASK_RUNNING of a container carries its network and addresses.
  Unused images are collected with the sandboxes (`collect_images`).
- Health checks run in the task's supervisor; each change of health it records becomes a TASK_RUNNING
  status with `healthy` once (`agent.core.health.health_outcomes`: not when the task's statuses already
  say it), its kill for failing the check TASK_KILLING (recorded as the task's kill) then TASK_KILLED with
  REASON_TASK_UNHEALTHY (docs/health-checks.md).
- The file service's catalog (`tessera.agent.files.catalog`, docs/files.md) follows the tasks: a RunTask
  adds its task with the principal the master named (checkpointed with it), a prepared sandbox becomes
  readable, a collected one is marked so (`tessera sandbox ls` says it was collected); the end of a task
  is marked where its terminal status is recorded (`updates.emit`).
The launcher (`tessera.agent.executor.launcher`, behind the `Launcher` port in `state.py`) does the work.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tessera.agent.core.files import SandboxEntry
from tessera.agent.core.health import health_outcomes, reported_health
from tessera.agent.core.kills import killing_message
from tessera.agent.core.tasks import (
    REASON_AGENT_RESTARTED,
    REASON_CONTAINER_LAUNCH_FAILED,
    REASON_EXECUTOR_TERMINATED,
    REASON_TASK_INVALID,
    AgentTask,
    Outcome,
    terminal_status,
    validate_task,
)
from tessera.agent.executor.images import Image, ImagePullError
from tessera.agent.executor.launcher import LaunchError, LaunchHandle, Observation
from tessera.agent.executor.sandbox import plan_collection, remove_run_dir, scan_finished
from tessera.agent.runtime.state import ImagePulled
from tessera.agent.runtime.updates import UpdatePump
from tessera.control_plane.codec import from_proto
from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.values import NetworkInfo, StatusSource, TaskInfo, TaskKey, TaskState
from tessera.control_plane.tracing import TASK_ID_ATTRIBUTE, context_from
from tessera.v1 import agent_pb2

log = logging.getLogger("tessera.agent")

DEFAULT_KILL_GRACE = 3.0  # seconds, when neither KillTask nor the task names one
GC_INTERVAL = 60.0  # seconds between sandbox collections when nothing is due sooner
PULL_THREADS = 4  # images pulled at once (pulls of one image coalesce in the store)


class TaskRunner(UpdatePump):
    """The agent's tasks: launching, killing, observing them, and their sandboxes (see the module docstring)."""

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
        self.checkpoint.add_task(info, traceparent=run.traceparent, principal=run.principal)
        self.catalog.add(SandboxEntry(info.framework_id, info.task_id, principal=run.principal))
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
        if info.container is not None:
            self._pull(task, info)
            return
        self._prepare(task, info, None)

    def _prepare(self, task: AgentTask, info: TaskInfo, image: Image | None) -> None:
        try:
            handle = self.launcher.prepare(info, image) if image is not None else self.launcher.prepare(info)
        except LaunchError as exc:
            self._launch_failed(task, exc)
            return
        if image is not None:
            self.image_digests[task.key] = image.digest
        self.checkpoint.set_sandbox(task.key, str(handle.sandbox), handle.isolation.to_json())
        if handle.sandbox_dir is not None:
            self.catalog.prepared(task.key, str(handle.sandbox), str(handle.sandbox_dir))
        self.to_start.append((task, info, handle))  # started with the others of this turn

    # ---- container tasks: the image first, pulled off the loop -------------------------------------------
    def _pull(self, task: AgentTask, info: TaskInfo) -> None:
        """Pull the task's image in a pull thread; `on_image_pulled` goes on from there (docs/containers.md).
        An agent that cannot run containers fails the task at once, saying why."""
        images = self.images
        assert info.container is not None
        if images is None:
            why = self.containers.unavailable or "container support is off (--containers off)"
            self.emit(task, Outcome(TaskState.TASK_FAILED, REASON_CONTAINER_LAUNCH_FAILED,
                                    f"this agent cannot run container tasks: {why}"), source=StatusSource.SOURCE_AGENT)
            return
        if self.pulls is None:
            self.pulls = ThreadPoolExecutor(max_workers=PULL_THREADS, thread_name_prefix="image-pull")
        reference, key, post = info.container.image, task.key, self.inbox.put

        def pull() -> None:
            try:
                post(ImagePulled(key, images.pull(reference)))
            except ImagePullError as exc:
                post(ImagePulled(key, None, exc.reason))
            except Exception as exc:  # noqa: BLE001 - whatever happens, the task must end
                log.exception("pulling %s for task %s failed", reference, key)
                post(ImagePulled(key, None, f"pulling image {reference} failed: {exc}"))

        self.pulling[key] = reference
        self.pulls.submit(pull)

    def on_image_pulled(self, pulled: ImagePulled) -> None:
        self.pulling.pop(pulled.key, None)
        task = self.tasks.get(pulled.key)
        if task is None or task.terminal:
            return
        if task.kill_requested:
            self.emit(task, Outcome(TaskState.TASK_KILLED, "", "killed while its image was pulled"))
            return
        if pulled.image is None:
            self.emit(task, Outcome(TaskState.TASK_FAILED, REASON_CONTAINER_LAUNCH_FAILED, pulled.error),
                      source=StatusSource.SOURCE_AGENT)
            return
        if self.shutdown_deadline is not None:
            self.emit(task, Outcome(TaskState.TASK_DROPPED, REASON_TASK_INVALID, "the agent is shutting down"),
                      source=StatusSource.SOURCE_AGENT)
            return
        self._prepare(task, task.info, pulled.image)

    def collect_images(self) -> None:
        """Remove unused images beyond the store's size bound (in a pull thread: it deletes files). The
        images of tasks being launched are kept; those under a running container's overlay the store
        keeps by itself."""
        images = self.images
        if images is None or self.pulls is None:
            return
        in_use = {self.image_digests[key] for key in self.image_digests if key in self.handles or any(
            t.key == key for t, _, _ in self.to_start)}

        def collect() -> None:
            try:
                removed = images.gc(in_use)
            except Exception as exc:  # noqa: BLE001 - a failed collection is retried at the next one
                log.warning("image GC failed: %s", exc)
                return
            if removed:
                log.info("removed %d unused image(s) from the store", len(removed))

        self.pulls.submit(collect)

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
        self.kill(task, grace, task.info.shutdown_delay_seconds)

    def kill(self, task: AgentTask, grace: float, shutdown_delay: float = 0.0) -> None:
        """Kill `task`: TASK_KILLING first (discovery drops it), then its supervisor drains it for
        `shutdown_delay` seconds, SIGTERM, SIGKILL after `grace` (agent/core/kills.py)."""
        if not self.tasks.request_kill(task.key, grace):
            return
        self.checkpoint.mark_kill(task.key, grace)
        handle = self.handles.get(task.key)
        if handle is None:
            return
        if self.tasks.can_record(task.key, TaskState.TASK_KILLING):
            self.emit(task, Outcome(TaskState.TASK_KILLING, "", killing_message(grace, shutdown_delay)))
        log.info("killing task %s (shutdown delay %gs, grace %gs)", task.task_id, shutdown_delay, grace)
        self.checkpoint.sync()  # the kill request is on disk before the supervisor acts on it
        self.launcher.kill(handle, grace, shutdown_delay)
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
                if obs.network:
                    self.emit(task, Outcome(TaskState.TASK_RUNNING, "", "the task's container started",
                                            network=NetworkInfo(obs.network, obs.ip_addresses)))
                else:
                    self.emit(task, Outcome(TaskState.TASK_RUNNING, "", "the task's process started"))
            for outcome in health_outcomes(task.state, reported_health(task.latest), obs.health):
                if outcome.state is TaskState.TASK_KILLING:  # its supervisor kills it: recorded as a kill here
                    grace = task.info.kill_grace_period_seconds or DEFAULT_KILL_GRACE
                    if self.tasks.request_kill(task.key, grace):
                        self.checkpoint.mark_kill(task.key, grace)
                self.emit(task, outcome)
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
            self.image_digests.pop(task.key, None)
            log.info("task %s ended: %s", task.task_id, task.state.name)
            self.next_gc = min(self.next_gc, self.monotonic() + self.config.config.sandbox_gc_delay)

    def collect_sandboxes(self) -> None:
        """Remove the run directories of finished tasks that are due (see the module docstring)."""
        cfg = self.config.config
        live = {str(h.sandbox) for h in self.handles.values()}
        live.update(str(h.sandbox) for _, _, h in self.to_start)
        now_mono, now = self.monotonic(), self.wall()
        finished = scan_finished(self.config.work_dir, live)
        plan = plan_collection(finished, now, cfg.sandbox_gc_delay, int(cfg.sandbox_gc_max_mib * 1024 * 1024))
        removed = []
        for path in plan.collect:
            try:
                remove_run_dir(Path(path))
                log.info("removed the sandbox %s of a finished task", path)
                removed.append(path)
            except OSError as exc:
                log.warning("cannot remove the sandbox %s: %s", path, exc)
        self.catalog.collected(removed)  # `tessera sandbox ls` says so from now on
        self.collect_images()
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
