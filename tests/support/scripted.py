"""Scripted protocol peers for tests: an agent and a framework that speak the real gRPC protocols to a
real master, with behaviour chosen by the test (no processes are run by the scripted agent)."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from tessera.v1 import agent_pb2, agent_pb2_grpc, common_pb2, scheduler_pb2, scheduler_pb2_grpc

_END = object()


class ScriptedAgent:
    """Registers, heartbeats, and answers RunTask with STARTING, RUNNING, then `final_state`."""

    def __init__(self, channel: grpc.Channel, *, hostname: str = "host-1", resources: str = "cpus:4;mem:4096",
                 attributes: tuple[tuple[str, str], ...] = (), final_state: int = common_pb2.TASK_FINISHED,
                 auto_run: bool = True, agent_id: str = "", capabilities: tuple[str, ...] = ()) -> None:
        from tessera.control_plane.codec import resources_to_proto
        from tessera.control_plane.core.resources import Resources

        self.stub = agent_pb2_grpc.AgentLinkStub(channel)
        self.info = common_pb2.AgentInfo(hostname=hostname, isolator="scripted")
        resources_to_proto(Resources.parse(resources), self.info.resources)
        for k, v in attributes:
            self.info.attributes.add(key=k, value=v)
        self.final_state = final_state
        self.auto_run = auto_run
        self.agent_id = agent_id
        self.capabilities = capabilities
        self.outbox: queue.Queue[Any] = queue.Queue()
        self.received: list[agent_pb2.MasterMessage] = []
        self.acked: set[str] = set()
        self.registered = threading.Event()
        self.registered_message = agent_pb2.Registered()  # the master's last Registered
        self.ended = threading.Event()
        self.error: grpc.RpcError | None = None
        self._heartbeat_stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _requests(self) -> Iterator[agent_pb2.AgentMessage]:
        while True:
            item = self.outbox.get()
            if item is _END:
                return
            yield item

    def start(self, tasks: tuple[common_pb2.TaskStatus, ...] = ()) -> ScriptedAgent:
        self.outbox.put(agent_pb2.AgentMessage(register=agent_pb2.Register(
            agent_id=self.agent_id, info=self.info, tasks=tasks, request_id=f"reg-{uuid.uuid4().hex}",
            capabilities=self.capabilities)))
        self._call = self.stub.Connect(self._requests())
        for target in (self._read, self._heartbeat):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _read(self) -> None:
        try:
            for msg in self._call:
                self.received.append(msg)
                kind = msg.WhichOneof("kind")
                if kind == "registered":
                    self.agent_id = msg.registered.agent_id
                    self.registered_message = msg.registered
                    self.registered.set()
                elif kind == "ack":
                    self.acked.add(msg.ack.uuid)
                elif kind == "acks":
                    self.acked.update(a.uuid for a in msg.acks.acks)
                elif kind == "run_task" and self.auto_run:
                    task = msg.run_task.task
                    for state in (common_pb2.TASK_STARTING, common_pb2.TASK_RUNNING, self.final_state):
                        self.send_status(task.task_id, state, exit_code=0 if state == common_pb2.TASK_FINISHED else None,
                                         traceparent=msg.run_task.traceparent, framework_id=task.framework_id)
                elif kind == "kill_task":
                    self.send_status(msg.kill_task.task_id, common_pb2.TASK_KILLED,
                                     framework_id=msg.kill_task.framework_id)
        except grpc.RpcError as err:
            self.error = err
        finally:
            self.ended.set()

    def _heartbeat(self) -> None:
        while not self._heartbeat_stop.wait(0.1):
            if self.agent_id:
                self.outbox.put(agent_pb2.AgentMessage(heartbeat=agent_pb2.AgentHeartbeat(agent_id=self.agent_id)))

    def send_status(self, task_id: str, state: int, exit_code: int | None = None, message: str = "",
                    traceparent: str = "", framework_id: str = "") -> str:
        """Send a status update; without `framework_id`, as an agent of an earlier version (a bare task id
        the master resolves when one framework runs a task of that id here)."""
        status = common_pb2.TaskStatus(task_id=task_id, state=state, uuid=uuid.uuid4().hex,
                                       source=common_pb2.SOURCE_AGENT, agent_id=self.agent_id, message=message,
                                       framework_id=framework_id)
        if exit_code is not None:
            status.exit_code = exit_code
        self.outbox.put(agent_pb2.AgentMessage(status_update=agent_pb2.StatusUpdate(status=status,
                                                                                    traceparent=traceparent)))
        return status.uuid

    def run_tasks(self) -> list[common_pb2.TaskInfo]:
        """Every task the master asked this agent to run, single or batched."""
        out: list[common_pb2.TaskInfo] = []
        for m in list(self.received):
            kind = m.WhichOneof("kind")
            if kind == "run_task":
                out.append(m.run_task.task)
            elif kind == "run_tasks":
                out.extend(r.task for r in m.run_tasks.tasks)
        return out

    def status(self, task_id: str, state: int, uuid_: str = "") -> agent_pb2.StatusUpdate:
        """A StatusUpdate message (not sent): for tests that send batches themselves."""
        return agent_pb2.StatusUpdate(status=common_pb2.TaskStatus(
            task_id=task_id, state=state, uuid=uuid_ or uuid.uuid4().hex, source=common_pb2.SOURCE_AGENT,
            agent_id=self.agent_id))

    def send_batch(self, updates: list[agent_pb2.StatusUpdate]) -> None:
        self.outbox.put(agent_pb2.AgentMessage(status_updates=agent_pb2.StatusUpdates(updates=updates)))

    def stop_heartbeats(self) -> None:
        self._heartbeat_stop.set()

    def close(self) -> None:
        self._heartbeat_stop.set()
        self.outbox.put(_END)
        self._call.cancel()


class ScriptedFramework:
    """Subscribes and records every event; `on_offers` decides what to do with offers."""

    def __init__(self, channel: grpc.Channel, *, name: str = "fw", roles: tuple[str, ...] = ("default",),
                 framework_id: str = "", failover_timeout: float = 60.0, partition_aware: bool = False,
                 on_offers: Callable[[ScriptedFramework, list[common_pb2.Offer]], None] | None = None,
                 auto_ack: bool = True, capabilities: tuple[str, ...] = ()) -> None:
        self.stub = scheduler_pb2_grpc.SchedulerStub(channel)
        self.capabilities = capabilities
        self.info = common_pb2.FrameworkInfo(framework_id=framework_id, name=name, roles=roles,
                                             failover_timeout_seconds=failover_timeout,
                                             partition_aware=partition_aware)
        self.on_offers = on_offers
        self.auto_ack = auto_ack
        self.framework_id = framework_id
        self.stream_id = ""
        self.events: list[scheduler_pb2.SchedulerEvent] = []
        self.updates: list[common_pb2.TaskStatus] = []
        self.offers: dict[str, common_pb2.Offer] = {}
        self.subscribed = threading.Event()
        self.ended = threading.Event()
        self.error: grpc.RpcError | None = None
        self.lock = threading.Lock()

    def start(self) -> ScriptedFramework:
        self._call = self.stub.Subscribe(scheduler_pb2.SubscribeRequest(info=self.info,
                                                                        capabilities=self.capabilities))
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def header(self) -> scheduler_pb2.CallHeader:
        return scheduler_pb2.CallHeader(framework_id=self.framework_id, stream_id=self.stream_id,
                                        request_id=uuid.uuid4().hex)

    def _read(self) -> None:
        try:
            for event in self._call:
                with self.lock:
                    self.events.append(event)
                kind = event.WhichOneof("kind")
                if kind == "subscribed":
                    self.framework_id = event.subscribed.framework_id
                    self.stream_id = event.subscribed.stream_id
                    self.subscribed.set()
                elif kind == "offers":
                    with self.lock:
                        for o in event.offers.offers:
                            self.offers[o.offer_id] = o
                    if self.on_offers is not None:
                        self.on_offers(self, list(event.offers.offers))
                elif kind == "rescind":
                    with self.lock:
                        self.offers.pop(event.rescind.offer_id, None)
                elif kind == "updates":
                    with self.lock:
                        self.updates.extend(u.status for u in event.updates.updates)
                elif kind == "update":
                    with self.lock:
                        self.updates.append(event.update.status)
                    if self.auto_ack and event.update.status.uuid:
                        try:
                            self.stub.Acknowledge(scheduler_pb2.AcknowledgeRequest(
                                header=self.header(), task_id=event.update.status.task_id,
                                uuid=event.update.status.uuid), timeout=5)
                        except grpc.RpcError:
                            pass  # the master re-sends; the next attempt acknowledges
        except grpc.RpcError as err:
            self.error = err
        finally:
            self.ended.set()

    def launch(self, offer: common_pb2.Offer, task_id: str, resources: str | list[common_pb2.Resource] = "cpus:0.5;mem:64",
               command: str = "true") -> None:
        """Accept `offer` launching one task; `resources` as text, or raw protos (to send bad input)."""
        from tessera.control_plane.codec import resources_to_proto
        from tessera.control_plane.core.resources import Resources

        task = common_pb2.TaskInfo(task_id=task_id, name=task_id, agent_id=offer.agent_id,
                                   command=common_pb2.CommandInfo(shell=True, value=command))
        if isinstance(resources, str):
            resources_to_proto(Resources.parse(resources), task.resources)
        else:
            task.resources.extend(resources)
        self.stub.Accept(scheduler_pb2.AcceptRequest(
            header=self.header(), offer_ids=[offer.offer_id],
            operations=[scheduler_pb2.Operation(type=scheduler_pb2.Operation.LAUNCH, tasks=[task])]), timeout=5)

    def states_of(self, task_id: str) -> list[int]:
        with self.lock:
            return [u.state for u in self.updates if u.task_id == task_id]

    def close(self) -> None:
        self._call.cancel()
