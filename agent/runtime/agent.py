"""The agent loop: one thread that owns every piece of agent state and reacts to events.

Events come from the master link (a stream opened, a message, a stream closed) and from time (heartbeats,
status-update retries, task observation, usage samples). The loop is the only writer of the checkpoint,
the only caller of the launcher, and the only user of the pure core (`TaskTable`,
`StatusUpdateManager`), so none of them needs locking. `Agent` is the top of the agent's layers (the
state in `state.py`, status updates in `updates.py`, tasks in `launches.py`, recovery in `recovery.py`;
see `state.py`); this module keeps the loop, the registration protocol and the timers.

Rules it keeps (docs/protocol.md):
- Registration: the first message on every stream is `Register` (built from what the agent announces,
  `registration.py`). No agent id yet: a first registration whose `request_id` is stored in the
  checkpoint until answered (a retry after a crash cannot register the machine twice). With an id: a
  re-registration carrying the latest status of every task not yet done. The id in `Registered` is
  stored before anything else happens. After a re-registration, older updates of a reported task are
  superseded by the reported (newest) one, which the master has just recorded.
- Fencing: every master message carries a term; the highest seen is stored (before acting on the
  message); RunTask, KillTask and Shutdown with a lower term are ignored.
- Group commit: each turn of the loop (the events waiting, then the timers) is one checkpoint batch;
  `send` commits what was written before any message leaves, status updates are sent after the turn's
  commit, and the supervisors of the turn's RunTasks are started together after their sandboxes are
  on disk (`_start_launches`; the tasks of one `run_tasks` message likewise). Nothing outside the agent
  ever sees a decision the disk does not hold.
- A broken stream is dropped and the link dials again; so is one on which either side was silent for
  longer than `stale_after` (three heartbeats and a second): nothing received from the master, or no
  heartbeat sent by this agent (its loop did not run: stopped or starved). The rule is the pure
  `tessera.agent.core.liveness.stale_stream`; after a SIGSTOP/SIGCONT the agent re-registers at once,
  whatever message happens to be handled first.
- NOT_FOUND on a re-registration: the master forgot this agent. Its tasks are killed, their updates
  dropped, the id cleared, and the agent registers anew.
- `Shutdown`: kill every task, wait for them and for their final updates to be acknowledged (bounded by
  their grace periods plus a few seconds), clear the id, exit.
- Stopping the agent (SIGTERM, SIGINT) never stops its tasks; they run on under their supervisors and
  are found again by `recover` at the next start.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import grpc

from tessera.agent.core.liveness import stale_stream
from tessera.agent.runtime.launches import DEFAULT_KILL_GRACE
from tessera.agent.runtime.link import (
    LinkEvent,
    LinkStream,
    MasterLink,
    MessageReceived,
    StreamClosed,
    StreamOpened,
)
from tessera.agent.runtime.recovery import Recovery
from tessera.agent.runtime.state import ImagePulled, Launcher, Stop, SupervisorExited
from tessera.control_plane.core.values import TaskKey
from tessera.control_plane.wire import Backoff
from tessera.v1 import agent_pb2

__all__ = ["Agent", "Launcher", "Stop", "SupervisorExited", "run_in_thread"]

log = logging.getLogger("tessera.agent")

OBSERVE_INTERVAL = 0.2
MAX_WAIT = 0.5  # the loop wakes at least this often
SHUTDOWN_EXTRA = 5.0  # beyond the longest grace period, before giving up on tasks at Shutdown
DONE_TASKS_KEPT = 1000


class Agent(Recovery):
    """The agent: `run()` recovers, connects and serves until stopped or shut down."""

    # called once recovered and the master link started (systemd's READY=1), on the agent's loop thread
    on_ready: Callable[[], None] | None = None

    # ---- lifecycle ------------------------------------------------------------------------------------
    def post(self, event: LinkEvent | Stop | SupervisorExited | ImagePulled) -> None:
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
        if self.on_ready is not None:
            self.on_ready()
        try:
            while self.exit_code is None:
                try:
                    event = self.inbox.get(timeout=self._wait_time())
                except queue.Empty:
                    event = None
                self.turn(event)
        finally:
            self.link.stop()
            self.launcher.watch_exits(None)
            self.launcher.close()
            if self.pulls is not None:  # a pull under way finishes in its thread; its task is recovered
                self.pulls.shutdown(wait=False, cancel_futures=True)
        log.info("agent stopped (exit code %d); its tasks keep running", self.exit_code)
        return self.exit_code

    def turn(self, event: LinkEvent | Stop | SupervisorExited | ImagePulled | None) -> None:
        """One turn of the loop, one checkpoint batch: `event` and every event waiting behind it, then
        the timers, then the turn's launches; the turn's status updates leave after its commit."""
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

    def _dispatch(self, event: LinkEvent | Stop | SupervisorExited | ImagePulled) -> None:
        if isinstance(event, Stop):
            log.info("stopping: %s", event.reason)
            self.exit_code = 0
        elif isinstance(event, ImagePulled):
            self.on_image_pulled(event)
        elif isinstance(event, SupervisorExited):
            self.on_supervisor_exited(event.pid)
        elif isinstance(event, StreamOpened):
            self.on_stream_opened(event.stream)
        elif isinstance(event, MessageReceived):
            if event.stream is self.stream:
                self.on_message(event.message)
        elif isinstance(event, StreamClosed):
            self.on_stream_closed(event)

    # ---- the link -------------------------------------------------------------------------------------
    def on_stream_opened(self, stream: LinkStream) -> None:
        if self.stream is not None and not self.stream.closed:
            self.stream.close()
        self.stream = stream
        self.registered = False
        self.last_received = self.last_alive = self.monotonic()  # the Register below tells the master we live
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
        register = self.advertisement.register(self.agent_id, request_id, statuses)
        log.info("%s to %s (%d task(s))", "re-registering" if self.agent_id else "registering",
                 stream.address, len(statuses))
        stream.send(agent_pb2.AgentMessage(register=register))

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
        self.catalog.agent = self.agent_id
        self.registered = True
        self.ordered_streams = registered.ordered_streams
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
            longest = max(longest, task.info.shutdown_delay_seconds + grace)
            self.kill(task, grace, task.info.shutdown_delay_seconds)
        self.shutdown_deadline = self.monotonic() + longest + SHUTDOWN_EXTRA

    # ---- time ------------------------------------------------------------------------------------------
    def tick(self) -> None:
        now = self.monotonic()
        stale = None if self.stream is None else stale_stream(
            now, last_received=self.last_received, last_alive=self.last_alive, stale_after=self.stale_after)
        if self.stream is not None and stale is not None:
            log.warning("dropping the stream to %s: %s; reconnecting", self.stream.address, stale)
            self.stream.close()
            self.stream = None
            self.registered = False
        if self.handles and now >= self.next_observe:
            self.next_observe = now + OBSERVE_INTERVAL
            self.observe_tasks()
        if self.registered:
            if now >= self.next_heartbeat:
                self.next_heartbeat = now + self.heartbeat_interval
                if self.send(agent_pb2.AgentMessage(heartbeat=agent_pb2.AgentHeartbeat(agent_id=self.agent_id,
                                                                                        time=self.wall()))):
                    self.last_alive = now
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


def run_in_thread(agent: Agent) -> tuple[threading.Thread, list[int]]:
    """Run `agent.run()` on a thread (tests); the exit code lands in the returned list."""
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(agent.run()), name="agent-loop", daemon=True)
    thread.start()
    return thread, result
