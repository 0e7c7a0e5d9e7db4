"""A scripted AgentLink leader for agent tests: a real gRPC server on 127.0.0.1, a free port.

It follows docs/protocol.md as far as the agent can tell: `Register` first (new id minted once per
request_id; an id it does not know ends the stream NOT_FOUND when `forget_unknown` is set), `Registered`
with the configured heartbeat interval, heartbeat acks, status updates recorded and acknowledged by uuid
(duplicates acknowledged again, not recorded twice), and any command the test sends stamped with a term.
As a follower (`leader_hint` set) it answers UNAVAILABLE with `tessera-leader` trailing metadata.
Everything it received is kept for assertions; `wait_for` polls with a timeout.

Batched messages (docs/protocol.md, AgentLink step 8): with `batched` set (the default) and an agent that
announced BATCHED_MESSAGES, a `status_updates` message is recorded update by update and answered with one
`acks` message, and `run_tasks` sends several tasks in one message. With `batched` off it is a master that
predates the capability: it ignores a batch (an old master does not know the field).
`drop_first_acks` leaves the first receipt of every uuid unacknowledged (a lost ack: the agent re-sends).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from tessera.v1 import agent_pb2, agent_pb2_grpc

T = TypeVar("T")
_END = object()


@dataclass
class StreamState:
    number: int
    agent_id: str
    register: agent_pb2.Register
    out: queue.Queue[Any] = field(default_factory=queue.Queue)
    open: bool = True


class FakeMaster(agent_pb2_grpc.AgentLinkServicer):
    def __init__(self, *, term: int = 1, heartbeat_interval: float = 0.5, leader_hint: str | None = None,
                 ack_updates: bool = True, forget_unknown: bool = False, batched: bool = True) -> None:
        self.term = term
        # what agents are told: 0.5 s makes their stale-stream limit 2.5 s (3 beats + 1 s), which a loaded
        # machine's scheduling gaps stay under; at 0.2 s (1.6 s) agents dropped healthy streams under load
        self.heartbeat_interval = heartbeat_interval
        self.leader_hint = leader_hint
        self.ack_updates = ack_updates
        self.forget_unknown = forget_unknown
        self.batched = batched
        self.drop_first_acks = False
        self.batch_sizes: list[int] = []  # updates per update-carrying message received, in order
        self.ignored_batches = 0  # status_updates messages a master without the capability dropped
        self.acks_sent = 0
        self.lock = threading.Condition()
        self.registers: list[agent_pb2.Register] = []
        self.updates: list[agent_pb2.StatusUpdate] = []  # every StatusUpdate received, duplicates included
        self.recorded: dict[str, agent_pb2.StatusUpdate] = {}  # by uuid, once
        self.heartbeats = 0
        self.usages: list[agent_pb2.Usage] = []
        self.known_agents: set[str] = set()
        self.by_request: dict[str, str] = {}
        self.streams: list[StreamState] = []
        self.refused = 0
        self.on_update: Callable[[agent_pb2.StatusUpdate], None] | None = None  # called on receipt
        self.silent = False  # stop answering heartbeats (a master that hangs)
        self._ids = itertools.count(1)
        self.server: grpc.Server | None = None
        self.address = ""

    # ---- server --------------------------------------------------------------------------------------
    def start(self, port: int = 0) -> str:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        agent_pb2_grpc.add_AgentLinkServicer_to_server(self, self.server)
        bound = self.server.add_insecure_port(f"127.0.0.1:{port}")
        assert bound, "cannot bind"
        self.server.start()
        self.address = f"127.0.0.1:{bound}"
        return self.address

    def stop(self) -> None:
        with self.lock:
            for s in self.streams:
                s.out.put(_END)
        if self.server is not None:
            self.server.stop(0).wait(5)

    # ---- AgentLink --------------------------------------------------------------------------------------
    def Connect(self, request_iterator: Iterator[agent_pb2.AgentMessage],
                context: grpc.ServicerContext) -> Iterator[agent_pb2.MasterMessage]:
        if self.leader_hint is not None:
            with self.lock:
                self.refused += 1
            context.set_trailing_metadata((("tessera-leader", self.leader_hint),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "not the leader")
        try:
            first = next(request_iterator)
        except StopIteration:
            return
        if first.WhichOneof("kind") != "register":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be Register")
        reg = first.register
        with self.lock:
            self.registers.append(reg)
            agent_id = reg.agent_id
            if not agent_id:
                agent_id = self.by_request.get(reg.request_id) or f"agent-{next(self._ids)}"
                self.by_request[reg.request_id] = agent_id
                self.known_agents.add(agent_id)
            elif agent_id not in self.known_agents:
                if self.forget_unknown:
                    self.lock.notify_all()
                    context.abort(grpc.StatusCode.NOT_FOUND, f"agent {agent_id} is not known")
                self.known_agents.add(agent_id)
            state = StreamState(number=len(self.streams) + 1, agent_id=agent_id, register=reg)
            self.streams.append(state)
            self.lock.notify_all()
        reader = threading.Thread(target=self._read, args=(request_iterator, state), daemon=True)
        reader.start()
        yield agent_pb2.MasterMessage(term=self.term, registered=agent_pb2.Registered(
            agent_id=agent_id, heartbeat_interval_seconds=self.heartbeat_interval))
        while True:
            item = state.out.get()
            if item is _END:
                break
            if isinstance(item, tuple) and item[0] == "abort":
                _, code, hint = item
                if hint:
                    context.set_trailing_metadata((("tessera-leader", hint),))
                state.open = False
                context.abort(code, "stream ended by the test")
            yield item
        state.open = False

    def _read(self, requests: Iterator[agent_pb2.AgentMessage], state: StreamState) -> None:
        try:
            for msg in requests:
                kind = msg.WhichOneof("kind")
                with self.lock:
                    if kind == "heartbeat":
                        self.heartbeats += 1
                        if self.silent:
                            continue
                        state.out.put(agent_pb2.MasterMessage(term=self.term,
                                                              heartbeat_ack=agent_pb2.AgentHeartbeatAck()))
                    elif kind == "status_update":
                        self.batch_sizes.append(1)
                        acks = self._receive(msg.status_update)
                        for ack in acks:
                            state.out.put(agent_pb2.MasterMessage(term=self.term, ack=ack))
                    elif kind == "status_updates":
                        if not (self.batched and "BATCHED_MESSAGES" in state.register.capabilities):
                            self.ignored_batches += 1
                            continue
                        self.batch_sizes.append(len(msg.status_updates.updates))
                        acks = [a for u in msg.status_updates.updates for a in self._receive(u)]
                        if acks:
                            state.out.put(agent_pb2.MasterMessage(term=self.term,
                                                                  acks=agent_pb2.StatusUpdateAcks(acks=acks)))
                    elif kind == "usage":
                        self.usages.append(msg.usage)
                    self.lock.notify_all()
        except grpc.RpcError:
            pass
        finally:
            state.open = False
            state.out.put(_END)
            with self.lock:
                self.lock.notify_all()

    def _receive(self, update: agent_pb2.StatusUpdate) -> list[agent_pb2.StatusUpdateAck]:
        """Record one update (under the lock); the acknowledgement to send, if any."""
        if self.on_update is not None:
            self.on_update(update)
        first = update.status.uuid not in self.recorded
        self.updates.append(update)
        self.recorded.setdefault(update.status.uuid, update)
        if not self.ack_updates or (first and self.drop_first_acks):
            return []
        self.acks_sent += 1
        return [agent_pb2.StatusUpdateAck(task_id=update.status.task_id, framework_id=update.status.framework_id,
                                          uuid=update.status.uuid)]

    # ---- test controls ---------------------------------------------------------------------------------
    def current(self) -> StreamState:
        with self.lock:
            live = [s for s in self.streams if s.open]
            assert live, "no open stream"
            return live[-1]

    def send(self, message: agent_pb2.MasterMessage, term: int | None = None) -> None:
        message.term = self.term if term is None else term
        self.current().out.put(message)

    def run_task(self, task: Any, term: int | None = None, traceparent: str = "", principal: str = "") -> None:
        self.send(agent_pb2.MasterMessage(run_task=agent_pb2.RunTask(task=task, traceparent=traceparent,
                                                                     principal=principal)), term)

    def run_tasks(self, tasks: list[Any], term: int | None = None) -> None:
        """Several tasks in one `run_tasks` message (only to an agent that announced BATCHED_MESSAGES)."""
        assert "BATCHED_MESSAGES" in self.current().register.capabilities
        runs = [agent_pb2.RunTask(task=t) for t in tasks]
        self.send(agent_pb2.MasterMessage(run_tasks=agent_pb2.RunTasks(tasks=runs)), term)

    def kill_task(self, task_id: str, grace: float = 0.0, framework_id: str = "fw-1", term: int | None = None) -> None:
        self.send(agent_pb2.MasterMessage(kill_task=agent_pb2.KillTask(
            task_id=task_id, framework_id=framework_id, grace_period_seconds=grace)), term)

    def ack(self, task_id: str, uuid: str) -> None:
        """An acknowledgement without the task's framework, as a master of an earlier version sends it."""
        self.send(agent_pb2.MasterMessage(ack=agent_pb2.StatusUpdateAck(task_id=task_id, uuid=uuid)))

    def drop_stream(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, hint: str = "") -> None:
        self.current().out.put(("abort", code, hint))

    def open_streams(self) -> int:
        with self.lock:
            return sum(1 for s in self.streams if s.open)

    def states_of(self, task_id: str) -> list[str]:
        """Task states in the order first recorded (duplicates of a uuid counted once)."""
        from tessera.v1 import common_pb2

        with self.lock:
            seen: list[str] = []
            uuids: set[str] = set()
            for u in self.updates:
                if u.status.task_id == task_id and u.status.uuid not in uuids:
                    uuids.add(u.status.uuid)
                    seen.append(common_pb2.TaskState.Name(u.status.state))
            return seen

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
                self.lock.wait(min(remaining, 0.05))
