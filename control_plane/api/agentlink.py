"""The AgentLink gRPC service: one bidirectional stream per agent (see docs/protocol.md).

Thin: the first message must be `Register`; it is committed (`runtime.registrations`) before
`Registered` is sent. Each carries the agent's identity, the name in its verified certificate
(`tessera.control_plane.tls.peer_agent_identity`; "" without TLS): the core records it at the first registration
and refuses (PERMISSION_DENIED) a re-registration or a status update from any other identity, so one
agent's certificate cannot take over another agent's id, its tasks or its session. Afterwards a reader
thread turns heartbeats into soft state (`LeaderDuties`), status updates (one, or a batch from an agent
with the `BATCHED_MESSAGES` capability) into the status intake (`runtime.agent_intake`: one commit per
uuid in flight, acknowledged after commit or once refused for good), and usage samples into soft state;
the stream itself yields whatever the leader's reactor queued for this agent. Every message carries the
leader's term so a deposed leader's commands are ignored by the agent.

This module converts: `_Wire` is the intake's port (an update's uuid, trace context and status; the
`ack`/`acks` messages).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace

import grpc

from tessera.control_plane.api.errors import grpc_errors
from tessera.control_plane.codec import from_proto
from tessera.control_plane.core.errors import InvalidRequest, NotLeader, PermissionDenied
from tessera.control_plane.core.values import AgentInfo, TaskStatus
from tessera.control_plane.runtime import duties
from tessera.control_plane.runtime.agent_intake import StatusIntake
from tessera.control_plane.runtime.leader import CLOSE, AgentSession, LeaderDuties
from tessera.control_plane.runtime.registrations import Registrations
from tessera.control_plane.tls import peer_agent_identity
from tessera.control_plane.tracing import request_traceparent
from tessera.control_plane.wire import BATCHED_MESSAGES
from tessera.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

FIRST_MESSAGE_TIMEOUT = 10.0


class AgentLinkService(agent_pb2_grpc.AgentLinkServicer):
    def __init__(self, duties: LeaderDuties, *, first_message_timeout: float = FIRST_MESSAGE_TIMEOUT) -> None:
        self.duties = duties
        self.first_message_timeout = first_message_timeout
        self.master = duties.master
        self.registrations = Registrations(self.master)
        self.intake: StatusIntake[AgentSession, agent_pb2.StatusUpdate] = StatusIntake(
            self.master, _Wire(duties), follow=duties.offers_for_ended if duties.settings.offers_with_frees else None)

    @grpc_errors
    def Connect(self, request_iterator: Iterator[agent_pb2.AgentMessage], context: grpc.ServicerContext
                ) -> Iterator[agent_pb2.MasterMessage]:
        if not self.master.is_serving():
            raise NotLeader("agents register with the leader", self.master.leader_grpc_hint())
        first = _first_message(request_iterator, self.first_message_timeout)
        if first is None or first.WhichOneof("kind") != "register":
            raise InvalidRequest("the first message on an agent stream must be Register")
        identity = peer_agent_identity(context)
        if identity is None:
            raise PermissionDenied("the agent certificate names no agent (urn:tessera:agent:<name>); "
                                   "issue one per agent with `tessera certs agent NAME`")
        agent_id, orphans = self._register(first.register, identity, context)
        session = self.duties.attach_agent(agent_id, batched=BATCHED_MESSAGES in first.register.capabilities,
                                           identity=identity)
        reader = threading.Thread(target=self._read, args=(session, request_iterator), daemon=True,
                                  name=f"agent-reader-{agent_id[:16]}")
        reader.start()
        try:
            yield agent_pb2.MasterMessage(term=self.duties.term(), registered=agent_pb2.Registered(
                agent_id=agent_id, heartbeat_interval_seconds=self.duties.settings.agent_heartbeat_interval,
                ordered_streams=True))  # StatusIntake + decide_each record a task's updates in order
            for task_id, framework_id in orphans:
                log.info("agent %s still runs task %s, which the master holds ended: killing it",
                         agent_id, task_id)
                yield agent_pb2.MasterMessage(term=self.duties.term(), kill_task=agent_pb2.KillTask(
                    task_id=task_id, framework_id=framework_id))
            while context.is_active():
                try:
                    msg = session.out.get(timeout=0.5)
                except queue.Empty:
                    if not self.master.is_serving():
                        break
                    continue
                if msg is CLOSE:
                    break
                yield msg
            if not self.master.is_serving() and context.is_active():
                raise NotLeader("this master stopped leading", self.master.leader_grpc_hint())
        finally:
            self.duties.detach_agent(session)

    def _register(self, reg: agent_pb2.Register, identity: str, context: grpc.ServicerContext
                  ) -> tuple[str, list[tuple[str, str]]]:
        """Commit the (re)registration; returns the agent id and the tasks it must kill."""
        info = from_proto(reg.info, AgentInfo)
        traceparent = request_traceparent(context)
        if reg.agent_id:
            tasks = tuple(from_proto(t, TaskStatus) for t in reg.tasks)
            self.registrations.reregister(reg.agent_id, info, tasks, identity, request_id=reg.request_id,
                                          traceparent=traceparent)
            return reg.agent_id, self._orphaned(reg.agent_id, tasks)
        return self.registrations.register(info, identity, request_id=reg.request_id, traceparent=traceparent), []

    def _orphaned(self, agent_id: str, reported: tuple[TaskStatus, ...]) -> list[tuple[str, str]]:
        """Tasks the agent reports alive that the master holds ended (or never knew): Mesos kills them
        (the rule is `duties.orphaned`, which the simulation runs too)."""
        keys = self.master.read_state(lambda s: duties.orphaned(s, agent_id, reported))
        return [(key.task_id, key.framework_id) for key in keys]

    def _read(self, session: AgentSession, request_iterator: Iterator[agent_pb2.AgentMessage]) -> None:
        try:
            for msg in request_iterator:
                session.last_seen = time.monotonic()
                kind = msg.WhichOneof("kind")
                if kind == "heartbeat":
                    ended = self.master.read_state(lambda s: duties.stream_ends(s, session.agent_id))
                    if ended is not None:  # its reconnection re-registers it
                        log.info("agent %s: ending its stream: %s", session.agent_id, ended)
                        return
                    session.send(agent_pb2.MasterMessage(term=self.duties.term(),
                                                         heartbeat_ack=agent_pb2.AgentHeartbeatAck()))
                elif kind == "status_update":
                    self.intake.submit(session, msg.status_update)
                elif kind == "status_updates":
                    self.intake.submit_many(session, list(msg.status_updates.updates))
                elif kind == "usage":
                    self.duties.usage[session.agent_id] = msg.usage
                elif kind == "register":
                    log.warning("agent %s sent Register twice on one stream; ignored", session.agent_id)
        except grpc.RpcError:
            pass  # the agent went away: its timer keeps running, unreachability follows
        except Exception:  # noqa: BLE001 - never let a reader thread die silently
            log.exception("agent stream reader failed")
        finally:
            session.close()


class _Wire:
    """The status intake's port (`runtime.agent_intake.IntakePort`): the wire form of updates and acks."""

    def __init__(self, duties: LeaderDuties) -> None:
        self.duties = duties

    @staticmethod
    def uuid(update: agent_pb2.StatusUpdate) -> str:
        return str(update.status.uuid)

    @staticmethod
    def traceparent(update: agent_pb2.StatusUpdate) -> str:
        return str(update.traceparent)

    @staticmethod
    def decode(session: AgentSession, update: agent_pb2.StatusUpdate) -> TaskStatus:
        status = from_proto(update.status, TaskStatus)
        if status.agent_id and status.agent_id != session.agent_id:
            raise InvalidRequest(f"status for agent {status.agent_id} on agent {session.agent_id}'s stream")
        return status if status.agent_id else replace(status, agent_id=session.agent_id)

    def acknowledge(self, session: AgentSession, updates: Sequence[agent_pb2.StatusUpdate]) -> None:
        """One `ack` per update, or one `acks` message for several when the agent understands it (task ids
        are scoped per framework: each ack names the update's framework)."""
        acks = [agent_pb2.StatusUpdateAck(task_id=u.status.task_id, framework_id=u.status.framework_id,
                                          uuid=u.status.uuid) for u in updates]
        if len(acks) > 1 and session.batched:
            session.send(agent_pb2.MasterMessage(term=self.duties.term(), acks=agent_pb2.StatusUpdateAcks(acks=acks)))
            return
        for ack in acks:
            session.send(agent_pb2.MasterMessage(term=self.duties.term(), ack=ack))


def _first_message(requests: Iterator[agent_pb2.AgentMessage], timeout: float) -> agent_pb2.AgentMessage | None:
    """The stream's first message (None when it ended first); InvalidRequest after `timeout` seconds of
    silence, which ends the call: a silent stream would hold a gRPC thread forever. Read on a short-lived
    thread because a gRPC request iterator has no timeout; it ends with the call."""
    box: list[agent_pb2.AgentMessage | None] = []

    def read() -> None:
        try:
            box.append(next(requests, None))
        except grpc.RpcError:
            box.append(None)  # the agent went away

    reader = threading.Thread(target=read, daemon=True, name="agent-first-message")
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        raise InvalidRequest(f"no Register within {timeout:g} s: the first message on an agent stream must be "
                             "Register")
    return box[0] if box else None
