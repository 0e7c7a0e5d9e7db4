"""In-memory twins of agents and frameworks for the whole-cluster simulation.

They speak to the masters the way the real ones do over gRPC, reduced to requests and pushes carried
by the simulation with random delays and losses: a request goes to the master a twin believes leads;
a follower answers "not leader" with a hint; a request that gets no answer in time is retried with the
same request id (an unknown outcome), against another master. Pushes from the serving leader (run and
kill task, offers, rescinds, status updates) arrive only after the entry that justifies them was
applied on that leader.

- An ``AgentTwin`` registers (one request id for all its attempts), reregisters with its tasks on every
  new leader, heartbeats, starts what it is told to run, ends tasks on its own or when killed, and
  re-sends every status update (same uuid) until a master acknowledges it. It ignores commands carrying a
  lower term than it has seen (fencing). It can be *lost* for a while (no traffic either way).
- A ``FrameworkTwin`` subscribes (fails over with its id to each new leader), accepts offers by launching
  tasks that fit or declines them, acknowledges every update it gets, and kills a task now and then.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tessera.control_plane.core import commands as cmd
from tessera.control_plane.core.lifecycle import is_terminal
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import (
    AgentInfo,
    CommandInfo,
    FrameworkInfo,
    Offer,
    StatusSource,
    TaskInfo,
    TaskKey,
    TaskState,
    TaskStatus,
)

if TYPE_CHECKING:
    from tests.sim.world import Simulation

REQUEST_TIMEOUT = 1.0  # no answer by then: outcome unknown, retry with the same request id
TWIN_PERIOD = 0.2


@dataclass
class Request:
    client: str
    request_id: str
    kind: str  # "register" | "reregister" | "ping" | "command" | "subscribe"
    commands: tuple[cmd.Command, ...] = ()
    sent_at: float = 0.0
    committed: bool = True  # False for pings


class Twin:
    """What agents and frameworks share: one request in flight, a believed leader, retries."""

    def __init__(self, sim: Simulation, name: str) -> None:
        self.sim = sim
        self.name = name
        self.master = sim.addresses[0]
        self.inflight: Request | None = None
        self.counter = 0
        self.max_term = 0

    def next_id(self, what: str) -> str:
        self.counter += 1
        return f"{what}-{self.name}-{self.counter}"

    def send(self, request: Request) -> None:
        request.sent_at = self.sim.clock.now
        self.inflight = request
        self.sim.to_master(self.master, request)
        self.sim.scheduler.after(REQUEST_TIMEOUT, self._timeout, request)

    def _timeout(self, request: Request) -> None:
        if self.inflight is request:
            self.inflight = None
            self.sim.trace(f"{self.name} timeout {request.kind} {request.request_id}")
            self.lost_leader(None)
            self.retry(request)

    def lost_leader(self, hint: str | None) -> None:
        if hint and hint != self.master:
            self.master = hint
        else:
            i = self.sim.addresses.index(self.master)
            self.master = self.sim.addresses[(i + 1) % len(self.sim.addresses)]

    def retry(self, request: Request) -> None:
        """Called after a timeout: by default the same request goes out again on the next period."""

    def reply(self, request: Request, outcome: tuple[Any, ...]) -> None:
        if self.inflight is not request:
            return  # a late answer to an attempt already given up on
        self.inflight = None
        kind = outcome[0]
        if kind == "not_leader":
            self.lost_leader(outcome[1])
            self.retry(request)
            return
        if kind == "unknown":
            self.retry(request)
            return
        if kind == "ok" and request.committed and outcome[1] is not None:
            self.sim.acknowledged(request, outcome[1], outcome[2])
        self.handle(request, outcome)

    def handle(self, request: Request, outcome: tuple[Any, ...]) -> None:
        raise NotImplementedError


class AgentTwin(Twin):
    def __init__(self, sim: Simulation, name: str, resources: Resources) -> None:
        super().__init__(sim, name)
        self.info = AgentInfo(hostname=name, resources=resources)
        self.agent_id = ""
        self.registered_with = ""  # master address of the current session; "" = must (re)register
        # latest status per task it runs or ran, by (framework, task id): task ids are scoped per framework,
        # and the framework twins all number their tasks t1, t2...
        self.tasks: dict[TaskKey, TaskStatus] = {}
        self.unacked: deque[TaskStatus] = deque()
        self.lost_until = 0.0
        self.last_ping = 0.0
        self.register_request = f"register-{name}"
        self.pending: Request | None = None  # a request to retry

    # ---- the agent's own loop ------------------------------------------------------------------------
    def period(self) -> None:
        sim = self.sim
        if sim.clock.now < self.lost_until or sim.quiet or self.inflight is not None:
            return
        if self.pending is not None:
            request, self.pending = self.pending, None
            self.send(request)
        elif not self.agent_id:
            self.send(Request(self.name, self.register_request, "register",
                              (cmd.RegisterAgent(info=self.info),)))
        elif self.registered_with != self.master:
            statuses = tuple(s for s in self.tasks.values() if not is_terminal(s.state))
            self.send(Request(self.name, self.next_id("rereg"), "reregister", (cmd.ReregisterAgent(
                agent_id=self.agent_id, info=self.info, tasks=statuses),)))
        elif self.unacked:
            status = self.unacked[0]
            self.send(Request(self.name, f"status-{status.uuid}", "command", (cmd.UpdateStatus(status=status),)))
        elif sim.clock.now - self.last_ping >= 0.5:
            self.last_ping = sim.clock.now
            self.send(Request(self.name, self.next_id("ping"), "ping", committed=False))
        elif self.tasks and sim.rng.random() < 0.03:
            running = sorted(t for t, s in self.tasks.items() if s.state is TaskState.TASK_RUNNING)
            if running:
                key = sim.rng.choice(running)
                end = sim.rng.choice((TaskState.TASK_FINISHED, TaskState.TASK_FAILED))
                self.update(key, end)

    def retry(self, request: Request) -> None:
        if request.kind in ("command", "register"):
            self.pending = request
        else:
            self.registered_with = ""

    def update(self, key: TaskKey, state: TaskState) -> None:
        self.counter += 1
        status = TaskStatus(task_id=key.task_id, state=state, source=StatusSource.SOURCE_AGENT,
                            agent_id=self.agent_id, uuid=f"u-{self.name}-{self.counter}",
                            framework_id=key.framework_id)
        self.tasks[key] = status
        self.unacked.append(status)

    def lose(self, seconds: float) -> None:
        self.lost_until = self.sim.clock.now + seconds
        self.inflight = None
        self.registered_with = ""

    def handle(self, request: Request, outcome: tuple[Any, ...]) -> None:
        ok = outcome[0] == "ok"
        if request.kind == "register":
            if ok and outcome[3]:
                self.agent_id = outcome[3]
                self.registered_with = self.master
            # an error (it cannot be a stale one for a registration) is retried on the next period
        elif request.kind == "reregister":
            if ok:
                self.registered_with = self.master
                for key in outcome[3]:  # tasks the master holds ended: kill them (Mesos does)
                    self.end(key, TaskState.TASK_KILLED)
            elif outcome[1] in ("NotFound",) or "removed" in outcome[2]:
                self.agent_id = ""  # register anew; its old tasks are gone
                self.tasks.clear()
                self.unacked.clear()
        elif request.kind == "ping":
            if not ok:
                self.registered_with = ""
        elif request.kind == "command":
            # acknowledged, or refused for good (task unknown, agent must reregister first)
            if self.unacked and request.request_id == f"status-{self.unacked[0].uuid}":
                if ok or outcome[1] in ("NotFound", "InvalidRequest"):
                    self.unacked.popleft()
                elif outcome[1] == "Conflict":
                    self.registered_with = ""  # e.g. marked unreachable meanwhile: reregister, then retry

    def end(self, key: TaskKey, state: TaskState) -> None:
        status = self.tasks.get(key)
        if status is not None and not is_terminal(status.state):
            self.update(key, state)

    # ---- pushes from the leader ----------------------------------------------------------------------
    def push(self, term: int, kind: str, payload: Any) -> None:
        if self.sim.clock.now < self.lost_until:
            return
        if term < self.max_term:
            self.sim.trace(f"{self.name} fenced {kind} of term {term} < {self.max_term}")
            return
        self.max_term = term
        if kind == "run":
            task: TaskInfo = payload
            key = TaskKey(task.framework_id, task.task_id)
            if key not in self.tasks:
                self.tasks[key] = TaskStatus(task.task_id, TaskState.TASK_STAGING, framework_id=task.framework_id)
                self.update(key, TaskState.TASK_RUNNING)
        elif kind == "kill":
            self.end(payload, TaskState.TASK_KILLED)


class FrameworkTwin(Twin):
    def __init__(self, sim: Simulation, name: str, role: str, partition_aware: bool) -> None:
        super().__init__(sim, name)
        self.role = role
        self.partition_aware = partition_aware
        self.framework_id = ""
        self.stream_id = ""
        self.subscribed_with = ""
        self.offers: dict[str, Offer] = {}
        self.outbox: deque[Request] = deque()
        self.running: set[str] = set()
        self.tasks_launched = 0
        self.last_ping = 0.0
        self.lease_term = 0  # the term of its last subscription (presented again half the time)
        self.state_writes = 0
        self.versions: dict[str, int] = {}  # its key/value state as far as its committed writes tell

    def period(self) -> None:
        sim = self.sim
        if sim.quiet or self.inflight is not None:
            return
        if self.subscribed_with != self.master:
            info = FrameworkInfo(framework_id=self.framework_id, name=self.name, roles=(self.role,),
                                 failover_timeout_seconds=30.0, partition_aware=self.partition_aware)
            # half the time as the holder coming back (its lease term), half as a new instance taking over
            term = self.lease_term if sim.rng.random() < 0.5 else 0
            self.send(Request(self.name, self.next_id("subscribe"), "subscribe",
                              (cmd.SubscribeFramework(info=info, lease_term=term),)))
        elif self.outbox:
            self.send(self.outbox[0])
        elif sim.clock.now - self.last_ping >= 1.0:
            self.last_ping = sim.clock.now
            self.send(Request(self.name, self.next_id("ping"), "ping", committed=False))

    def retry(self, request: Request) -> None:
        if request.kind != "command":
            self.subscribed_with = ""

    def call(self, command: cmd.Command) -> None:
        self.outbox.append(Request(self.name, self.next_id("call"), "command", (command,)))

    def handle(self, request: Request, outcome: tuple[Any, ...]) -> None:
        ok = outcome[0] == "ok"
        if request.kind == "subscribe":
            if not ok and outcome[1] == "Deposed":
                self.lease_term = 0  # its term is over: take the framework over as a new instance
            if ok:
                framework_id, self.stream_id, self.lease_term = outcome[3]
                if framework_id != self.framework_id:
                    self.versions.clear()  # a new framework (the old one was removed): a new state
                self.framework_id = framework_id
                self.subscribed_with = self.master
                self.offers.clear()
                self.outbox = deque(r for r in self.outbox if self._restamp(r))
        elif request.kind == "ping":
            if not ok:
                self.subscribed_with = ""
        elif request.kind == "command":
            if self.outbox and self.outbox[0] is request:
                self.outbox.popleft()
            if not ok and "stream" in outcome[2]:
                self.subscribed_with = ""
            (command,) = request.commands
            if isinstance(command, cmd.WriteFrameworkState):
                self._written(command, outcome)

    def _restamp(self, request: Request) -> bool:
        """After a failover the pending calls carry the new stream id (as the SDK does); offers died."""
        commands = []
        for c in request.commands:
            if isinstance(c, (cmd.Accept, cmd.Decline)):
                return False
            if hasattr(c, "stream_id"):
                c = type(c)(**{**{f: getattr(c, f) for f in c.__dataclass_fields__}, "stream_id": self.stream_id})
            commands.append(c)
        request.commands = tuple(commands)
        return True

    # ---- pushes from the leader ----------------------------------------------------------------------
    def push(self, term: int, kind: str, payload: Any) -> None:
        rng = self.sim.rng
        if kind == "offers":
            for offer in payload:
                self.offers[offer.offer_id] = offer
                self._use(offer, rng.random())
        elif kind == "rescind":
            self.offers.pop(payload, None)
        elif kind == "update":
            status: TaskStatus = payload
            if is_terminal(status.state) or status.state is TaskState.TASK_UNREACHABLE:
                self.running.discard(status.task_id)
            elif status.state is TaskState.TASK_RUNNING:
                self.running.add(status.task_id)
            if status.uuid:
                self.call(cmd.Acknowledge(framework_id=self.framework_id, task_id=status.task_id,
                                          uuid=status.uuid, stream_id=self.stream_id))

    def _use(self, offer: Offer, draw: float) -> None:
        fid, sid = self.framework_id, self.stream_id
        if draw < 0.75:
            cpus = min(offer.resources.scalar("cpus"), 0.5 + 0.5 * (draw < 0.4))
            mem = min(offer.resources.scalar("mem"), 128.0 * (1 + (draw < 0.2)))
            ports = [iv for (name, _), ivs in offer.resources.ranges if name == "ports" for iv in ivs]
            if cpus < 0.1 or mem < 32:
                self.call(cmd.Decline(framework_id=fid, offer_ids=(offer.offer_id,), refuse_seconds=1.0, stream_id=sid))
                return
            self.tasks_launched += 1
            task_id = f"t{self.tasks_launched}"  # the same ids in every framework: scoped per framework
            port = [(ports[0][0], ports[0][0])] if ports and draw < 0.5 else []
            task = TaskInfo(task_id=task_id, name=task_id, command=CommandInfo(value="sleep 60"),
                            resources=Resources.of(cpus=cpus, mem=mem, ports=port))
            self.call(cmd.Accept(framework_id=fid, offer_ids=(offer.offer_id,),
                                 operations=(cmd.Operation("LAUNCH", tasks=(task,)),), stream_id=sid))
        else:
            self.call(cmd.Decline(framework_id=fid, offer_ids=(offer.offer_id,), refuse_seconds=1.0, stream_id=sid))
        self.offers.pop(offer.offer_id, None)

    def write_state(self) -> None:
        """A write to the framework's key/value state: a new key (put-if-absent), or an update or delete of
        one it wrote, compare-and-set on the version its committed writes told it."""
        if not self.subscribed_with:
            return
        draw = self.sim.rng.random()
        known = sorted(self.versions)
        if draw < 0.5 or not known:
            self.state_writes += 1
            write = cmd.StateWrite(f"k{self.state_writes}", "v" * (1 + int(draw * 400)), expected_version=0)
        else:
            key = known[int(draw * 1000) % len(known)]
            if draw < 0.8:
                write = cmd.StateWrite(key, f"updated at {self.sim.clock.now:.3f}", expected_version=self.versions[key])
            else:
                write = cmd.StateWrite(key, delete=True, expected_version=self.versions[key])
        self.call(cmd.WriteFrameworkState(framework_id=self.framework_id, writes=(write,), stream_id=self.stream_id))

    def _written(self, command: cmd.WriteFrameworkState, outcome: tuple[Any, ...]) -> None:
        (write,) = command.writes
        if outcome[0] != "ok" or outcome[1] is None:
            self.versions.pop(write.key, None)  # refused (another stream, a stale term): what it holds is unknown
        elif write.delete:
            self.versions.pop(write.key, None)
        else:
            self.versions[write.key] = outcome[1].first_seq  # a put's version is the seq of its event

    def kill_one(self) -> None:
        if self.running and self.subscribed_with:
            task_id = self.sim.rng.choice(sorted(self.running))
            self.call(cmd.Kill(framework_id=self.framework_id, task_id=task_id, stream_id=self.stream_id))
