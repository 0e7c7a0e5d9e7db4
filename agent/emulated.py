"""Emulated agents for scale work: N agents in one process, one asyncio loop, shared gRPC channels.

Each emulated agent speaks AgentLink exactly like a real one (docs/protocol.md): it dials the masters
in turn (the same `DialPlan`: leader hints at once, otherwise backoff with jitter), registers (and
re-registers with its tasks after a reconnect), heartbeats, fences commands by term, and delivers status
updates through the same `StatusUpdateManager` (ordered per task, re-sent with backoff until acked,
re-sent after a reconnect). What it does not do is run anything: a RunTask reports TASK_STARTING and
TASK_RUNNING at once, then TASK_FINISHED after `task_duration` seconds (None: it runs until killed); a
KillTask reports TASK_KILLING then TASK_KILLED. No checkpoint: an emulated agent that is stopped is gone.

Health checks. A task with a `health_check` is checked the way a real agent's supervisor checks it, with
only the probe emulated: the same pure checker (`agent.core.health`: `start`, `due`, `on_result`) decides
when each check runs (the first `delay_seconds` after TASK_RUNNING, then every `interval_seconds`), which
results count (the grace period), what changed and when to kill; each change it records becomes a status
through the same `health_outcomes` the real agent uses (a TASK_RUNNING with `healthy` and reason
REASON_TASK_HEALTH_CHECK_STATUS_UPDATED, only when health changes; TASK_KILLING with REASON_TASK_UNHEALTHY
then TASK_KILLED at `consecutive_failures`). Emulated: the probe itself (no HTTP request, TCP connection
or command: its result is `health_probe(task_id, n)` for the task's n-th check, by default a pass, taking
no time), the supervisor thread (a timer on the agents' loop instead) and health.json (changes go
straight to the status-update manager).

For benchmarks only (`tests/bench/bench_agent.py`); never started by default. Use:

    agents = EmulatedAgents(EmulatedConfig(masters=("127.0.0.1:5050",), count=200))
    agents.start()                      # a background thread with its own event loop
    agents.wait_registered(200, timeout=60)
    print(agents.stats())
    agents.stop()

or `await run_emulated(config, stop_event)` inside an existing event loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import grpc
import grpc.aio

from tessera.agent.config import AgentConfig, parse_attributes, parse_masters, parse_resources_flag
from tessera.agent.core import health as checker
from tessera.agent.core.health import HealthState, health_outcomes, reported_health
from tessera.agent.core.liveness import stale_stream
from tessera.agent.core.status_updates import AckOutcome, PendingUpdate, RetryPolicy, StatusUpdateManager
from tessera.agent.core.tasks import DuplicateTask, Outcome, TaskTable, make_status
from tessera.agent.runtime.link import CHANNEL_OPTIONS
from tessera.agent.runtime.registration import Advertisement, capabilities
from tessera.agent.runtime.updates import update_messages
from tessera.control_plane.codec import from_proto, to_proto
from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import Labels, StatusSource, TaskInfo, TaskKey, TaskState
from tessera.control_plane.wire import Backoff, DialPlan, leader_hint
from tessera.v1 import agent_pb2, agent_pb2_grpc, common_pb2

log = logging.getLogger("tessera.agent.emulated")

DEFAULT_RESOURCES = "cpus:8;mem:16384;disk:100000;ports:[31000-32000]"
MAX_DONE_TASKS = 200  # done tasks remembered per emulated agent (to ignore a repeated RunTask)


@dataclass(frozen=True)
class EmulatedConfig:
    masters: tuple[str, ...]
    count: int = 10
    resources: str = DEFAULT_RESOURCES
    attributes: str = ""
    hostname_prefix: str = "emulated"
    # hostnames that are addresses (127.100.x.y, one per agent) instead of `<prefix>-<n>`: service discovery
    # publishes a task at its agent's address (`discovery.endpoints.agent_address`), and these have no other
    loopback_hostnames: bool = False
    heartbeat_interval: float = 1.0  # until the master's Registered says otherwise
    task_duration: float | None = 1.0  # seconds from TASK_RUNNING to TASK_FINISHED; None: until killed
    channels_per_master: int = 4  # agents share this many channels to each master
    status_retry_initial: float = 1.0
    status_retry_max: float = 30.0
    reconnect_backoff_max: float = 5.0
    start_spread: float = 0.0  # seconds over which the agents' first dials are spread
    seed: int | None = None
    batch_messages: bool = False  # the BATCHED_MESSAGES capability (see the module docstring)
    max_updates_per_message: int = 500
    # the result of a task's n-th health check (n from 1), in place of running its probe; None: all pass
    health_probe: Callable[[str, int], bool] | None = None

    @staticmethod
    def from_agent_config(config: AgentConfig, count: int = 1, task_duration: float = 1.0) -> EmulatedConfig:
        return EmulatedConfig(
            masters=parse_masters(config.masters), count=count, resources=config.resources or DEFAULT_RESOURCES,
            attributes=config.attributes, hostname_prefix=config.hostname or "emulated",
            heartbeat_interval=config.heartbeat_interval, task_duration=task_duration,
            status_retry_initial=config.status_retry_initial, status_retry_max=config.status_retry_max,
            reconnect_backoff_max=config.reconnect_backoff_max,
        )


@dataclass
class EmulatedStats:
    agents: int = 0
    registered: int = 0  # agents registered right now
    registrations: int = 0  # Registered answers received (first and re-registrations)
    tasks_launched: int = 0
    tasks_finished: int = 0  # reached a terminal state
    updates_sent: int = 0  # sends, retries included
    updates_acked: int = 0
    updates_superseded: int = 0  # dropped after a re-registration reported a newer status
    pending_updates: int = 0  # not yet acknowledged, right now
    heartbeats: int = 0
    ignored_commands: int = 0  # lower-term RunTask/KillTask/Shutdown
    reconnects: int = 0
    health_checks: int = 0  # emulated probes run
    health_changes: int = 0  # health statuses emitted (a change each, the kill's TASK_KILLING not counted)
    first_registration_seconds: list[float] = field(default_factory=list)


class _ChannelPool:
    """aio channels per master address, `per_master` of them, handed out round robin."""

    def __init__(self, per_master: int) -> None:
        self.per_master = max(1, per_master)
        self._channels: dict[tuple[str, int], grpc.aio.Channel] = {}

    def get(self, address: str, index: int) -> grpc.aio.Channel:
        key = (address, index % self.per_master)
        channel = self._channels.get(key)
        if channel is None:
            # A local subchannel pool keeps gRPC from merging the slots into one connection.
            channel = grpc.aio.insecure_channel(
                address, options=[*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)])
            self._channels[key] = channel
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


def _hint(err: grpc.aio.AioRpcError) -> str | None:
    return leader_hint(err.trailing_metadata())


class EmulatedAgent:
    def __init__(self, index: int, config: EmulatedConfig, resources: Resources, attributes: Labels,
                 pool: _ChannelPool, stats: EmulatedStats, rng: random.Random) -> None:
        self.index = index
        self.config = config
        self.hostname = (f"127.100.{index // 256 % 256}.{index % 256}" if config.loopback_hostnames
                         else f"{config.hostname_prefix}-{index}")
        self.resources = resources
        self.attributes = attributes
        self.advertisement = Advertisement(hostname=self.hostname, resources=resources, attributes=attributes,
                                           isolator="emulated", version="tessera-agent emulated",
                                           capabilities=capabilities(batch_messages=config.batch_messages))
        self.pool = pool
        self.stats = stats
        self.rng = rng
        self.plan = DialPlan(config.masters, Backoff(maximum=config.reconnect_backoff_max))
        self.agent_id = ""
        self.request_id = f"register-{uuidlib.uuid4()}"  # kept until answered: retries register once
        self.highest_term = 0
        self.tasks = TaskTable()
        self.updates = StatusUpdateManager(RetryPolicy(initial=config.status_retry_initial,
                                                       maximum=config.status_retry_max))
        self.timers: dict[TaskKey, asyncio.TimerHandle] = {}  # the task's end (task_duration)
        self.checks: dict[TaskKey, tuple[HealthState, int, asyncio.TimerHandle]] = {}  # checker, checks run, next
        self.heartbeat_interval = config.heartbeat_interval
        self.registered = False
        self.ordered_streams = False  # the master's Registered: send a task's whole pending stream at once
        self.reported: dict[TaskKey, str] = {}
        self.outbox: asyncio.Queue[agent_pb2.AgentMessage] | None = None
        self.last_received = 0.0  # loop time of the last message from the master (or the stream's opening)
        self.last_alive = 0.0  # loop time the master last heard we live (the Register, a heartbeat)
        self.started_at = 0.0
        self.stopped = False
        self.shutdown_deadline: float | None = None  # Shutdown: stop once updates drain, or then
        self.flush_scheduled = False

    # ---- connection -------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self.started_at = loop.time()
        if self.config.start_spread > 0:
            await _sleep_or_stop(stop, self.rng.random() * self.config.start_spread)
        dial = self.plan.first()
        while not stop.is_set() and not self.stopped:
            if dial.delay > 0 and await _sleep_or_stop(stop, dial.delay):
                break
            healthy, hint = await self._session(dial.address, stop)
            self.stats.reconnects += 1
            dial = self.plan.after(dial.address, healthy=healthy, leader_hint=hint, fraction=self.rng.random())
        for timer in self.timers.values():
            timer.cancel()
        for key in list(self.checks):
            self._stop_checks(key)

    async def _session(self, address: str, stop: asyncio.Event) -> tuple[bool, str | None]:
        loop = asyncio.get_running_loop()
        stub = agent_pb2_grpc.AgentLinkStub(self.pool.get(address, self.index))
        call = stub.Connect()
        self.outbox = asyncio.Queue()
        self.registered = False
        self.last_received = self.last_alive = loop.time()  # the Register below tells the master we live
        healthy, hint = False, None
        writer = asyncio.create_task(self._write(call))
        ticker = asyncio.create_task(self._tick(call, stop))
        try:
            self._send_register()
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    break
                healthy = True
                self.last_received = loop.time()
                self._on_message(msg)
                if self.stopped:
                    break
        except grpc.aio.AioRpcError as err:
            hint = _hint(err)
            if err.code() is grpc.StatusCode.NOT_FOUND and self.agent_id:
                self._forget()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this agent itself is being cancelled
            # Otherwise the call was cancelled by us (stale stream, stop): the stream is over.
        finally:
            self.registered = False
            self.outbox = None
            writer.cancel()
            ticker.cancel()
            call.cancel()
        return healthy, hint

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        outbox = self.outbox
        assert outbox is not None
        try:
            while True:
                await call.write(await outbox.get())
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return  # the read side sees the end of the call

    async def _tick(self, call: grpc.aio.StreamStreamCall, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time()
        while not stop.is_set():
            now = loop.time()
            if stale_stream(now, last_received=self.last_received, last_alive=self.last_alive,
                            stale_after=3 * self.heartbeat_interval + 1.0) is not None:
                call.cancel()  # a silent master, or this loop did not run (the master may have timed us out)
                return
            if self.shutdown_deadline is not None and (not len(self.updates) or now >= self.shutdown_deadline):
                self.stopped = True
                call.cancel()
                return
            if self.registered:
                if now >= next_heartbeat:
                    next_heartbeat = now + self.heartbeat_interval
                    self.last_alive = now
                    self._send(agent_pb2.AgentMessage(heartbeat=agent_pb2.AgentHeartbeat(
                        agent_id=self.agent_id, time=time.time())))
                    self.stats.heartbeats += 1
                self._flush()
            wake = [now + 0.5, next_heartbeat] if self.registered else [now + 0.5]
            due = self.updates.next_due()
            if due is not None and self.registered:
                wake.append(due)
            if await _sleep_or_stop(stop, max(0.01, min(wake) - now)):
                call.cancel()
                return

    def _send(self, message: agent_pb2.AgentMessage) -> None:
        if self.outbox is not None:
            self.outbox.put_nowait(message)

    def _send_register(self) -> None:
        statuses = self.tasks.report(self.agent_id) if self.agent_id else []
        self.reported = {TaskKey(s.framework_id, s.task_id): s.uuid for s in statuses if s.uuid}
        request_id = self.request_id if not self.agent_id else f"reregister-{uuidlib.uuid4()}"
        self._send(agent_pb2.AgentMessage(register=self.advertisement.register(self.agent_id, request_id, statuses)))

    # ---- messages -----------------------------------------------------------------------------------
    def _on_message(self, msg: agent_pb2.MasterMessage) -> None:
        stale = msg.term < self.highest_term
        self.highest_term = max(self.highest_term, msg.term)
        kind = msg.WhichOneof("kind")
        if kind == "registered":
            self._on_registered(msg.registered)
        elif kind == "ack":
            self._on_ack(msg.ack)
        elif kind == "acks":
            for ack in msg.acks.acks:
                self._on_ack(ack)
        elif kind in ("run_task", "run_tasks", "kill_task", "shutdown"):
            if stale:
                self.stats.ignored_commands += 1
                return
            if kind == "run_task":
                self._on_run(msg.run_task)
            elif kind == "run_tasks":
                for run in msg.run_tasks.tasks:
                    self._on_run(run)
            elif kind == "kill_task":
                self._on_kill(TaskKey(msg.kill_task.framework_id, msg.kill_task.task_id))
            else:
                log.info("%s shut down by the master: %s", self.hostname, msg.shutdown.reason)
                for task in self.tasks.live():
                    self._on_kill(task.key)
                self.shutdown_deadline = asyncio.get_running_loop().time() + 5.0

    def _on_registered(self, registered: agent_pb2.Registered) -> None:
        loop = asyncio.get_running_loop()
        if not self.agent_id:
            self.stats.first_registration_seconds.append(loop.time() - self.started_at)
        self.agent_id = registered.agent_id
        self.registered = True
        self.ordered_streams = registered.ordered_streams
        self.stats.registrations += 1
        if registered.heartbeat_interval_seconds > 0:
            self.heartbeat_interval = registered.heartbeat_interval_seconds
        now = loop.time()
        for key, uuid in self.reported.items():
            self.stats.updates_superseded += len(self.updates.supersede(key, uuid, now))
        self.reported = {}
        self.updates.reset(now)
        self._flush()

    def _on_run(self, run: agent_pb2.RunTask) -> None:
        try:
            info = from_proto(run.task, TaskInfo)
        except InvalidRequest:
            info = TaskInfo(task_id=run.task.task_id, framework_id=run.task.framework_id)
        try:
            task = self.tasks.add(info)
        except DuplicateTask:
            return
        self.stats.tasks_launched += 1
        self._emit(task.key, Outcome(TaskState.TASK_STARTING, "", "emulated"))
        self._emit(task.key, Outcome(TaskState.TASK_RUNNING, "", "emulated"))
        loop = asyncio.get_running_loop()
        if info.health_check is not None:
            self._schedule_check(task.key, checker.start(info.health_check, loop.time()), 0)
        if self.config.task_duration is not None:
            self.timers[task.key] = loop.call_later(
                self.config.task_duration, self._emit, task.key,
                Outcome(TaskState.TASK_FINISHED, "", "emulated task finished", 0))

    # ---- health checks (see the module docstring: only the probe is emulated) ------------------------
    def _schedule_check(self, key: TaskKey, state: HealthState, done: int) -> None:
        when = checker.due(state)
        if when is None:
            self.checks.pop(key, None)
            return
        handle = asyncio.get_running_loop().call_at(when, self._check, key)
        self.checks[key] = (state, done, handle)

    def _stop_checks(self, key: TaskKey) -> None:
        found = self.checks.pop(key, None)
        if found is not None:
            found[2].cancel()

    def _check(self, key: TaskKey) -> None:
        task = self.tasks.get(key)
        found = self.checks.pop(key, None)
        if task is None or found is None or task.terminal or task.info.health_check is None:
            return
        state, done = found[0], found[1] + 1
        self.stats.health_checks += 1
        probe = self.config.health_probe
        ok = True if probe is None else probe(task.info.task_id, done)
        now = asyncio.get_running_loop().time()
        step = checker.on_result(task.info.health_check, state, ok=ok, began=now, ended=now,
                                 message="emulated probe " + ("passed" if ok else "failed"))
        for outcome in health_outcomes(task.state, reported_health(task.latest), step.changes):
            if outcome.state is TaskState.TASK_KILLING:
                self._on_kill(key, outcome)  # as the supervisor kills it: KILLING (this reason), KILLED
                return
            self.stats.health_changes += 1
            self._emit(key, outcome)
        self._schedule_check(key, step.state, done)

    def _on_kill(self, key: TaskKey, killing: Outcome | None = None) -> None:
        task = self.tasks.get(key)
        if task is None or task.terminal:
            return
        timer = self.timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._stop_checks(key)
        if killing is None:
            self._emit(key, Outcome(TaskState.TASK_KILLING, "", "emulated"))
            self._emit(key, Outcome(TaskState.TASK_KILLED, "", "emulated task killed"))
        else:  # killed for failing its health check: ends as the real agent reports it (core.tasks._ending)
            self._emit(key, killing)
            self._emit(key, Outcome(TaskState.TASK_KILLED, killing.reason, killing.message, healthy=False))

    def _emit(self, key: TaskKey, outcome: Outcome) -> None:
        task = self.tasks.get(key)
        if task is None or not self.tasks.can_record(key, outcome.state):
            return
        status = make_status(task, outcome, uuid=str(uuidlib.uuid4()), now=time.time(), agent_id=self.agent_id,
                             source=StatusSource.SOURCE_EXECUTOR)
        self.tasks.record(status)
        if task.terminal:
            self.timers.pop(key, None)
            self._stop_checks(key)
            self.stats.tasks_finished += 1
        self.updates.add(PendingUpdate(status), asyncio.get_running_loop().time())
        self._flush()

    def _flush(self) -> None:
        if not self.registered:
            return
        if self.config.batch_messages:
            # gather what becomes due in this turn of the loop (a batch of launches or acks) into one message
            if not self.flush_scheduled:
                self.flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush_batch)
            return
        for update in self.updates.due(asyncio.get_running_loop().time()):
            self._send(agent_pb2.AgentMessage(status_update=self._update_message(update)))
            self.stats.updates_sent += 1

    def _flush_batch(self) -> None:
        self.flush_scheduled = False
        if not self.registered:
            return
        due = [self._update_message(u) for u in self.updates.due(asyncio.get_running_loop().time(),
                                                                  whole_streams=self.ordered_streams)]
        for message in update_messages(due, batched=True, per_message=max(1, self.config.max_updates_per_message)):
            self._send(message)
        self.stats.updates_sent += len(due)

    def _update_message(self, update: PendingUpdate) -> agent_pb2.StatusUpdate:
        status = replace(update.status, agent_id=update.status.agent_id or self.agent_id)
        return agent_pb2.StatusUpdate(status=to_proto(status, common_pb2.TaskStatus), traceparent=update.traceparent)

    def _on_ack(self, ack: agent_pb2.StatusUpdateAck) -> None:
        key = TaskKey(ack.framework_id, ack.task_id) if ack.framework_id else self.updates.find(ack.uuid)
        if key is None:
            return
        result = self.updates.acknowledge(key, ack.uuid, asyncio.get_running_loop().time())
        if result.outcome is not AckOutcome.ACKED:
            return
        self.stats.updates_acked += len(result.removed)
        task = self.tasks.get(key)
        if task is not None and task.terminal and not self.updates.has_pending(key):
            task.done = True
            self.tasks.prune_done(MAX_DONE_TASKS)
        self._flush()

    def _forget(self) -> None:
        """NOT_FOUND: the master does not know this agent; drop everything and register anew."""
        for task in self.tasks:
            self.updates.drop_task(task.key)
            timer = self.timers.pop(task.key, None)
            if timer is not None:
                timer.cancel()
            self._stop_checks(task.key)
        self.tasks = TaskTable()
        self.agent_id = ""
        self.request_id = f"register-{uuidlib.uuid4()}"


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep; True when `stop` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
        return True
    except TimeoutError:
        return False


async def run_emulated(config: EmulatedConfig, stop: asyncio.Event, stats: EmulatedStats | None = None,
                       on_ready: Callable[[list[EmulatedAgent]], None] | None = None) -> EmulatedStats:
    """Run `config.count` emulated agents until `stop` is set; returns their counters."""
    if config.count < 1:
        raise ValueError("count: at least one emulated agent")
    resources = parse_resources_flag(config.resources)
    attributes = parse_attributes(config.attributes)
    stats = stats or EmulatedStats()
    stats.agents = config.count
    pool = _ChannelPool(config.channels_per_master)
    seed = config.seed if config.seed is not None else random.randrange(1 << 30)
    agents = [EmulatedAgent(i + 1, config, resources, attributes, pool, stats, random.Random(seed + i))
              for i in range(config.count)]
    if on_ready is not None:
        on_ready(agents)
    try:
        await asyncio.gather(*(a.run(stop) for a in agents))
    finally:
        await pool.close()
    return stats


class EmulatedAgents:
    """`run_emulated` on a background thread with its own event loop (for benchmarks and tests)."""

    def __init__(self, config: EmulatedConfig) -> None:
        self.config = config
        self.stats_ = EmulatedStats()
        self.agents: list[EmulatedAgent] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> EmulatedAgents:
        self._thread = threading.Thread(target=self._main, name="emulated-agents", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("emulated agents did not start")
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self._stop = asyncio.Event()

            def ready(agents: list[EmulatedAgent]) -> None:
                self.agents = agents
                self._ready.set()

            await run_emulated(self.config, self._stop, self.stats_, on_ready=ready)

        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # noqa: BLE001 - reported to the caller of start()
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def _call(self, fn: Callable[[], object], timeout: float = 10.0) -> object:
        """Run `fn` on the agents' loop (their state belongs to it) and return its result."""
        assert self._loop is not None
        done = threading.Event()
        box: list[object] = []

        def run() -> None:
            box.append(fn())
            done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(timeout):
            raise TimeoutError("the emulated agents' loop did not answer")
        return box[0]

    def stats(self) -> EmulatedStats:
        def snapshot() -> EmulatedStats:
            s = replace(self.stats_, first_registration_seconds=list(self.stats_.first_registration_seconds))
            s.registered = sum(1 for a in self.agents if a.registered)
            s.pending_updates = sum(len(a.updates) for a in self.agents)
            return s

        return snapshot() if self._loop is None or self._loop.is_closed() else self._call(snapshot)  # type: ignore[return-value]

    def agent_ids(self) -> list[str]:
        return self._call(lambda: [a.agent_id for a in self.agents])  # type: ignore[return-value]

    def wait_registered(self, count: int | None = None, timeout: float = 60.0) -> EmulatedStats:
        """Block until `count` (default: all) agents are registered; raises TimeoutError."""
        want = self.config.count if count is None else count
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats.registered >= want:
                return stats
            if self._error is not None:
                raise self._error
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{stats.registered} of {want} emulated agents registered after {timeout}s")
            time.sleep(0.05)

    def wait(self, predicate: Callable[[EmulatedStats], bool], timeout: float = 60.0,
             what: str = "condition") -> EmulatedStats:
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}: {stats}")
            time.sleep(0.05)

    def __enter__(self) -> EmulatedAgents:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
