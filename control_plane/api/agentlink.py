"""The AgentLink gRPC service: one bidirectional stream per agent (see docs/protocol.md).

Thin: the first message must be `Register`; it becomes a `RegisterAgent`/`ReregisterAgent` command that is
committed before `Registered` is sent. Each carries the agent's identity, the name in its verified
certificate (`control_plane.tls.peer_agent_identity`; "" without TLS): the core records it at the first
registration and refuses (PERMISSION_DENIED) a re-registration or a status update from any other
identity, so one agent's certificate cannot take over another agent's id, its tasks or its session. Afterwards a reader thread turns heartbeats into soft state
(`LeaderDuties`), status updates into `UpdateStatus` commands (acknowledged only after commit), and usage
samples into soft state; the stream itself yields whatever the leader's reactor queued for this agent.
Every message carries the leader's term so a deposed leader's commands are ignored by the agent.

Batches: an agent that registers with the `BATCHED_MESSAGES` capability may send `status_updates`
(several updates in one message); they are decided one by one and the acceptable ones committed as one
log entry (`Master.propose_each_async`), and the agent gets one `acks` message. Each update is still
recorded once by its uuid and acknowledged only after its commit (or once refused for good).

An update whose uuid is already being committed (the agent re-sent it while the first commit was in
flight, e.g. under load) is not proposed again: the session that re-sent it is acknowledged with the
first commit.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import grpc

from control_plane.api.errors import grpc_errors
from control_plane.codec import from_proto
from control_plane.core import commands as cmd
from control_plane.core import events as ev
from control_plane.core.decide import check_agent_identity
from control_plane.core.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    NotLeader,
    PermissionDenied,
    TesseraError,
)
from control_plane.core.lifecycle import is_terminal
from control_plane.core.values import AgentInfo, AgentState, TaskStatus
from control_plane.runtime.leader import CLOSE, AgentSession, LeaderDuties
from control_plane.tls import peer_agent_identity
from control_plane.tracing import request_traceparent
from tessera.v1 import agent_pb2, agent_pb2_grpc, common_pb2

log = logging.getLogger(__name__)

FIRST_MESSAGE_TIMEOUT = 10.0
BATCHED_MESSAGES = "BATCHED_MESSAGES"  # Register.capabilities: the agent understands run_tasks and acks
_FINAL_REFUSALS = (InvalidRequest, NotFound, Conflict, PermissionDenied)  # acknowledged: the agent stops re-sending


class AgentLinkService(agent_pb2_grpc.AgentLinkServicer):
    def __init__(self, duties: LeaderDuties, *, first_message_timeout: float = FIRST_MESSAGE_TIMEOUT) -> None:
        self.duties = duties
        self.first_message_timeout = first_message_timeout
        self.master = duties.master
        # status uuid -> sessions to acknowledge once the commit under way finishes
        self._inflight: dict[str, list[AgentSession]] = {}
        self._inflight_lock = threading.Lock()

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
                agent_id=agent_id, heartbeat_interval_seconds=self.duties.settings.agent_heartbeat_interval))
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
            known = self.master.read_state(lambda s: s.agents.get(reg.agent_id))
            if known is None or known.state is AgentState.AGENT_REMOVED:
                # docs/protocol.md: the agent must then kill its old tasks and register anew
                raise NotFound(f"agent {reg.agent_id} is {'removed' if known else 'not known'}; register anew")
            # decide checks it too; checked here as well because a retried request id is answered from
            # the recorded result without deciding again
            check_agent_identity(known, identity, "reregistration")
            tasks = tuple(from_proto(t, TaskStatus) for t in reg.tasks)
            # an offer issued or a task launched on the agent while this was in flight rejects the entry
            self.master.propose_redeciding([cmd.ReregisterAgent(agent_id=reg.agent_id, info=info, tasks=tasks,
                                                                identity=identity)],
                                           request_id=reg.request_id, traceparent=traceparent)
            log.info("agent %s reregistered with %d tasks", reg.agent_id, len(tasks))
            return reg.agent_id, self._orphaned(reg.agent_id, tasks)
        result = self.master.propose([cmd.RegisterAgent(info=info, identity=identity)], request_id=reg.request_id,
                                     traceparent=traceparent)
        for _, event in result.events:
            if isinstance(event, ev.AgentRegistered):
                log.info("agent %s registered (%s, identity %r)", event.agent_id, event.info.hostname, identity)
                return event.agent_id, []
        if result.outcome == "duplicate":
            # a retried registration: the event its first attempt recorded names the agent (answered to
            # the certificate that registered it only)
            self.master.events.flush(timeout=2.0)
            record = self.master.events.get(result.first_seq)
            if record is not None and record.type == "AgentRegistered":
                aid = record.agent_id
                known = self.master.read_state(lambda s: s.agents.get(aid))
                if known is None:
                    raise NotFound(f"agent {aid} is not known; register anew")
                check_agent_identity(known, identity, "registration")
                return aid, []
        raise InvalidRequest("registration produced no agent id")

    def _orphaned(self, agent_id: str, reported: tuple[TaskStatus, ...]) -> list[tuple[str, str]]:
        """Tasks the agent reports alive that the master holds ended (or never knew): Mesos kills them."""
        def find(state: Any) -> list[tuple[str, str]]:
            out = []
            agent = state.agents.get(agent_id)
            for status in reported:
                if is_terminal(status.state):
                    continue
                framework_id = status.framework_id
                if not framework_id and agent is not None:  # an agent of an earlier version: a bare id
                    named = [k.framework_id for k in agent.task_keys if k.task_id == status.task_id]
                    framework_id = named[0] if len(named) == 1 else ""
                task = state.find_task(framework_id, status.task_id)
                if task is None or task.terminal or task.agent_id != agent_id:
                    out.append((status.task_id, framework_id))
            return out

        return list(self.master.read_state(find))

    def _read(self, session: AgentSession, request_iterator: Iterator[agent_pb2.AgentMessage]) -> None:
        try:
            for msg in request_iterator:
                session.last_seen = time.monotonic()
                kind = msg.WhichOneof("kind")
                if kind == "heartbeat":
                    session.send(agent_pb2.MasterMessage(term=self.duties.term(),
                                                         heartbeat_ack=agent_pb2.AgentHeartbeatAck()))
                elif kind == "status_update":
                    self._status_update(session, msg.status_update)
                elif kind == "status_updates":
                    self._status_updates(session, list(msg.status_updates.updates))
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

    def _status(self, session: AgentSession, update: agent_pb2.StatusUpdate) -> TaskStatus:
        status = from_proto(update.status, TaskStatus)
        if status.agent_id and status.agent_id != session.agent_id:
            raise InvalidRequest(f"status for agent {status.agent_id} on agent {session.agent_id}'s stream")
        return _with_agent(status, session.agent_id)

    def _claim(self, uuid: str, session: AgentSession) -> bool:
        """True when this session is to propose the update; False when a commit of it is under way (the
        session is then acknowledged when that commit finishes)."""
        with self._inflight_lock:
            waiting = self._inflight.get(uuid)
            if waiting is None:
                self._inflight[uuid] = [session]
                return True
            if not any(s is session for s in waiting):
                waiting.append(session)
            return False

    def _release(self, uuid: str) -> list[AgentSession]:
        with self._inflight_lock:
            return self._inflight.pop(uuid, [])

    def _status_update(self, session: AgentSession, update: agent_pb2.StatusUpdate) -> None:
        uuid = update.status.uuid
        if uuid and not self._claim(uuid, session):
            return  # re-sent while its commit is under way
        try:
            status = self._status(session, update)
        except TesseraError as exc:
            self._release(uuid)
            self._refused(session, update, exc)
            self._ack(session, update.status, uuid)
            return
        try:
            fut = self.master.propose_async([cmd.UpdateStatus(status=status, identity=session.identity)],
                                            request_id=f"status-{uuid}", traceparent=update.traceparent)
        except NotLeader:
            self._release(uuid)
            session.close()  # the agent reconnects to the leader and re-sends
            return
        except TesseraError as exc:
            # never acceptable (malformed, unknown task, illegal transition): acknowledge so the agent
            # stops retrying, and say why in the master's log
            self._refused(session, update, exc)
            for waiting in self._release(uuid) or [session]:
                self._ack(waiting, update.status, uuid)
            return
        except BaseException:
            self._release(uuid)  # never leave it marked in flight: its re-sends would wait forever
            raise
        fut.add_done_callback(lambda f: self._committed(f, session, update))

    def _committed(self, fut: Future[Any], session: AgentSession, update: agent_pb2.StatusUpdate) -> None:
        uuid = update.status.uuid
        waiting = self._release(uuid) if uuid else [session]
        try:
            result = fut.result()
        except Exception as exc:  # noqa: BLE001 - not acknowledged: the agent re-sends
            log.info("status update %s not committed (%s); the agent will retry", uuid, exc)
            return
        if getattr(result, "error_code", "") and result.error_code not in (
                "InvalidRequest", "NotFound", "Conflict", "PermissionDenied"):
            return
        for s in waiting or [session]:
            self._ack(s, update.status, uuid)

    def _status_updates(self, session: AgentSession, updates: list[agent_pb2.StatusUpdate]) -> None:
        """A batch from one agent: one entry for the updates that can be recorded, one `acks` answer."""
        acks: list[tuple[common_pb2.TaskStatus, str]] = []
        proposed: list[agent_pb2.StatusUpdate] = []
        commands: list[cmd.Command] = []
        for update in updates:
            uuid = update.status.uuid
            if uuid and not self._claim(uuid, session):
                continue  # re-sent while its commit is under way (checked before decoding: retries are cheap)
            try:
                status = self._status(session, update)
            except TesseraError as exc:
                self._release(uuid)
                self._refused(session, update, exc)
                acks.append((update.status, uuid))
                continue
            proposed.append(update)
            commands.append(cmd.UpdateStatus(status=status, identity=session.identity))
        if commands:
            try:  # each update under its own task's trace
                fut = self.master.propose_each_async(commands, traceparents=[u.traceparent for u in proposed])
            except NotLeader:
                for update in proposed:
                    self._release(update.status.uuid)
                session.close()  # the agent reconnects to the leader and re-sends
                return
            except BaseException:
                for update in proposed:  # never leave an update marked in flight: its re-sends would wait forever
                    self._release(update.status.uuid)
                raise
            fut.add_done_callback(lambda f: self._batch_committed(f, session, proposed))
        self._ack_many(session, acks)

    def _batch_committed(self, fut: Future[list[TesseraError | None]], session: AgentSession,
                         updates: list[agent_pb2.StatusUpdate]) -> None:
        waiting = [self._release(u.status.uuid) if u.status.uuid else [session] for u in updates]
        try:
            outcomes = fut.result()
        except Exception as exc:  # noqa: BLE001 - not acknowledged: the agent re-sends
            log.info("%d status updates not committed (%s); the agent will retry", len(updates), exc)
            return
        acks: dict[int, tuple[AgentSession, list[tuple[common_pb2.TaskStatus, str]]]] = {}
        for update, outcome, sessions in zip(updates, outcomes, waiting, strict=True):
            if outcome is not None:
                if not isinstance(outcome, _FINAL_REFUSALS):
                    continue  # not recorded, not refused for good: the agent re-sends
                self._refused(session, update, outcome)
            for s in sessions or [session]:
                acks.setdefault(id(s), (s, []))[1].append((update.status, update.status.uuid))
        for s, items in acks.values():
            self._ack_many(s, items)

    @staticmethod
    def _refused(session: AgentSession, update: agent_pb2.StatusUpdate, exc: Exception) -> None:
        log.warning("status update %s from agent %s refused: %s", update.status.uuid, session.agent_id, exc)

    def _ack(self, session: AgentSession, status: common_pb2.TaskStatus, uuid: str) -> None:
        """Acknowledge the agent's update of `status`'s task (task ids are scoped per framework)."""
        session.send(agent_pb2.MasterMessage(term=self.duties.term(), ack=agent_pb2.StatusUpdateAck(
            task_id=status.task_id, framework_id=status.framework_id, uuid=uuid)))

    def _ack_many(self, session: AgentSession, items: list[tuple[common_pb2.TaskStatus, str]]) -> None:
        if not items:
            return
        if len(items) == 1 or not session.batched:
            for status, uuid in items:
                self._ack(session, status, uuid)
            return
        session.send(agent_pb2.MasterMessage(term=self.duties.term(), acks=agent_pb2.StatusUpdateAcks(
            acks=[agent_pb2.StatusUpdateAck(task_id=s.task_id, framework_id=s.framework_id, uuid=uuid)
                  for s, uuid in items])))


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


def _with_agent(status: TaskStatus, agent_id: str) -> TaskStatus:
    from dataclasses import replace

    return status if status.agent_id else replace(status, agent_id=agent_id)


