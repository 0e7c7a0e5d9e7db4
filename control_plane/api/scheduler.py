"""The Scheduler gRPC service: how frameworks subscribe and act on offers (see docs/protocol.md).

Thin: each call converts its request to a core command naming the framework and stream id, proposes it
on the leader (errors map to status codes in `api.errors`), and converts back. `Subscribe` commits
`FrameworkSubscribed` (`runtime.subscriptions`, which decides a stale subscription again) before the
first `Subscribed` event, then streams what the leader's reactor queues for the framework, plus
heartbeats; when the stream ends it records the disconnect, which starts the framework's failover
timeout. `Reconcile` is answered by `runtime.reconcile` from replicated state.

Authorization (`api.auth`, decisions in `core.acl`): every call names a framework that must belong to
the caller's principal; `Subscribe` records the token's principal and checks the roles, `Accept` the
users launched tasks run as. The checks run before anything is proposed.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import grpc

from tessera.control_plane.api.auth import Guard
from tessera.control_plane.api.errors import grpc_errors
from tessera.control_plane.codec import from_proto, operation_from_proto, to_proto
from tessera.control_plane.core import commands as cmd
from tessera.control_plane.core.acl import Caller, check_framework_call, check_launch, check_subscribe
from tessera.control_plane.core.errors import NotLeader
from tessera.control_plane.core.values import FrameworkInfo
from tessera.control_plane.runtime.acknowledgements import acknowledge_many
from tessera.control_plane.runtime.leader import CLOSE, LeaderDuties
from tessera.control_plane.runtime.reconcile import reconcile
from tessera.control_plane.runtime.subscriptions import Subscriptions
from tessera.control_plane.tracing import request_traceparent
from tessera.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc

log = logging.getLogger(__name__)

BATCHED_UPDATES = "BATCHED_UPDATES"  # SubscribeRequest.capabilities: send updates as `updates` events
BATCHED_ACKNOWLEDGEMENTS = "BATCHED_ACKNOWLEDGEMENTS"  # Subscribed.capabilities: AcknowledgeRequest.updates

class SchedulerService(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, duties: LeaderDuties, guard: Guard | None = None) -> None:
        self.duties = duties
        self.master = duties.master
        self.guard = guard or Guard.open()
        self.subscriptions = Subscriptions(self.master)

    def _caller_of(self, framework_id: str, call: str, context: grpc.ServicerContext) -> Caller:
        """The caller, who must be the principal of the framework the call names (`core.acl`)."""
        caller = self.guard.caller(context, f"Scheduler/{call}")
        if caller.grant is not None:
            owner = self.master.read_state(
                lambda s: s.frameworks[framework_id].info.principal if framework_id in s.frameworks else None)
            check_framework_call(caller, owner, call)
        return caller

    def _propose(self, commands: list[cmd.Command], header: scheduler_pb2.CallHeader,
                 context: grpc.ServicerContext) -> Any:
        return self.master.propose(commands, request_id=header.request_id, traceparent=request_traceparent(context))

    # ---- the event stream ------------------------------------------------------------------------
    @grpc_errors
    def Subscribe(self, request: scheduler_pb2.SubscribeRequest, context: grpc.ServicerContext
                  ) -> Iterator[scheduler_pb2.SchedulerEvent]:
        if not self.master.is_serving():
            raise NotLeader("frameworks subscribe with the leader", self.master.leader_grpc_hint())
        info = from_proto(request.info, FrameworkInfo)
        caller = self._caller_of(info.framework_id, "Subscribe", context)
        info = replace(info, principal=check_subscribe(caller, info.principal, info.roles))
        subscribed = self.subscriptions.subscribe(info, request_traceparent(context))
        session = self.duties.attach_framework(subscribed.framework_id, subscribed.stream_id,
                                               batched_updates=BATCHED_UPDATES in request.capabilities)
        log.info("framework %s (%s) subscribed on stream %s", subscribed.framework_id, info.name,
                 subscribed.stream_id)
        interval = self.duties.settings.framework_heartbeat_interval
        try:
            yield scheduler_pb2.SchedulerEvent(subscribed=scheduler_pb2.Subscribed(
                framework_id=subscribed.framework_id, stream_id=subscribed.stream_id,
                heartbeat_interval_seconds=interval, master=self.master.identity.grpc_address,
                capabilities=[BATCHED_ACKNOWLEDGEMENTS]))
            self.duties.resend_unacknowledged(session)
            self.duties.send_outstanding_offers(session)
            self.duties.want_allocation()
            next_heartbeat = time.monotonic() + interval
            while context.is_active():
                try:
                    item = session.out.get(timeout=max(0.05, min(0.5, next_heartbeat - time.monotonic())))
                except queue.Empty:
                    if not self.master.is_serving():
                        break
                    if time.monotonic() >= next_heartbeat:
                        next_heartbeat = time.monotonic() + interval
                        yield scheduler_pb2.SchedulerEvent(heartbeat=scheduler_pb2.Heartbeat())
                    continue
                if item is CLOSE:
                    break
                yield item
            if not self.master.is_serving() and context.is_active():
                raise NotLeader("this master stopped leading", self.master.leader_grpc_hint())
        finally:
            if self.duties.detach_framework(session):
                self.subscriptions.disconnect(session.framework_id, session.stream_id)

    # ---- calls ---------------------------------------------------------------------------------------
    @grpc_errors
    def Accept(self, request: scheduler_pb2.AcceptRequest, context: grpc.ServicerContext) -> Any:
        h = request.header
        caller = self._caller_of(h.framework_id, "Accept", context)
        operations = tuple(operation_from_proto(op) for op in request.operations)
        check_launch(caller, (t.command.user for op in operations for t in op.tasks))
        self._propose([cmd.Accept(
            framework_id=h.framework_id, offer_ids=tuple(request.offer_ids), operations=operations,
            refuse_seconds=request.filters.refuse_seconds, stream_id=h.stream_id,
        )], h, context)
        return scheduler_pb2.AcceptResponse()

    @grpc_errors
    def Decline(self, request: scheduler_pb2.DeclineRequest, context: grpc.ServicerContext) -> Any:
        h = request.header
        self._caller_of(h.framework_id, "Decline", context)
        self._propose([cmd.Decline(framework_id=h.framework_id, offer_ids=tuple(request.offer_ids),
                                   refuse_seconds=request.filters.refuse_seconds, stream_id=h.stream_id)],
                      h, context)
        return scheduler_pb2.DeclineResponse()

    @grpc_errors
    def Revive(self, request: scheduler_pb2.ReviveRequest, context: grpc.ServicerContext) -> Any:
        h = request.header
        self._caller_of(h.framework_id, "Revive", context)
        self._propose([cmd.Revive(framework_id=h.framework_id, roles=tuple(request.roles),
                                  stream_id=h.stream_id)], h, context)
        self.duties.want_allocation()
        return scheduler_pb2.ReviveResponse()

    @grpc_errors
    def Suppress(self, request: scheduler_pb2.SuppressRequest, context: grpc.ServicerContext) -> Any:
        h = request.header
        self._caller_of(h.framework_id, "Suppress", context)
        self._propose([cmd.Suppress(framework_id=h.framework_id, roles=tuple(request.roles),
                                    stream_id=h.stream_id)], h, context)
        return scheduler_pb2.SuppressResponse()

    @grpc_errors
    def Kill(self, request: scheduler_pb2.KillRequest, context: grpc.ServicerContext) -> Any:
        h = request.header
        self._caller_of(h.framework_id, "Kill", context)
        self._propose([cmd.Kill(framework_id=h.framework_id, task_id=request.task_id,
                                grace_period_seconds=request.grace_period_seconds, stream_id=h.stream_id)],
                      h, context)
        return scheduler_pb2.KillResponse()

    @grpc_errors
    def Acknowledge(self, request: scheduler_pb2.AcknowledgeRequest, context: grpc.ServicerContext) -> Any:
        h = request.header
        self._caller_of(h.framework_id, "Acknowledge", context)
        if not request.updates:
            self._propose([cmd.Acknowledge(framework_id=h.framework_id, task_id=request.task_id,
                                           uuid=request.uuid, stream_id=h.stream_id)], h, context)
            return scheduler_pb2.AcknowledgeResponse()
        return self._acknowledge_many(request, context)

    def _acknowledge_many(self, request: scheduler_pb2.AcknowledgeRequest, context: grpc.ServicerContext) -> Any:
        h = request.header
        items = [(request.task_id, request.uuid)] if request.task_id or request.uuid else []
        items.extend((a.task_id, a.uuid) for a in request.updates)
        refused = acknowledge_many(self.master, h.framework_id, h.stream_id, items, request_traceparent(context))
        return scheduler_pb2.AcknowledgeResponse(refused=[
            scheduler_pb2.Acknowledgement(task_id=task_id, uuid=uuid) for task_id, uuid in refused])

    @grpc_errors
    def Teardown(self, request: scheduler_pb2.TeardownRequest, context: grpc.ServicerContext) -> Any:
        h = request.header
        self._caller_of(h.framework_id, "Teardown", context)
        # an allocation round or a launch committed while the removal was in flight rejects the entry
        self.master.propose_redeciding([cmd.Teardown(framework_id=h.framework_id, stream_id=h.stream_id)],
                                       request_id=h.request_id, traceparent=request_traceparent(context))
        return scheduler_pb2.TeardownResponse()

    @grpc_errors
    def Reconcile(self, request: scheduler_pb2.ReconcileRequest, context: grpc.ServicerContext) -> Any:
        """Answer from replicated state: the latest status of the named tasks (all of the framework's
        when none are named); a task the master does not know is TASK_LOST, as in Mesos."""
        h = request.header
        self._caller_of(h.framework_id, "Reconcile", context)
        if not self.master.is_serving():
            raise NotLeader("reconciliation is answered by the leader", self.master.leader_grpc_hint())

        statuses = self.master.read_state(
            lambda state: reconcile(state, h.framework_id, h.stream_id, request.task_ids))
        return scheduler_pb2.ReconcileResponse(statuses=[to_proto(st, common_pb2.TaskStatus) for st in statuses])

    @grpc_errors
    def Message(self, request: scheduler_pb2.MessageRequest, context: grpc.ServicerContext) -> Any:
        # Command tasks have no executor to receive framework messages (Mesos delivers them to executors).
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "framework messages need an executor; Tessera runs command tasks, which have none")
