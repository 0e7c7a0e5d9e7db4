"""The Scheduler gRPC service: how frameworks subscribe and act on offers (see docs/protocol.md).

Thin: each call converts its request to a core command naming the framework and stream id, proposes it
on the leader (errors map to status codes in `api.errors`), and converts back. `Subscribe` commits
`FrameworkSubscribed` (`runtime.subscriptions`, which decides a stale subscription again) before the
first `Subscribed` event, then streams what the leader's reactor queues for the framework, plus
heartbeats; when the stream ends it records the disconnect, which starts the framework's failover
timeout. `Reconcile` is answered by `runtime.reconcile` from replicated state.

The framework lease (`core.leases`, docs/protocol.md): a `standby` subscription that must wait is held
open here (`Standby`, heartbeats) and polls until it may take over; then it goes on as any subscription.
The stream it replaces gets an `Error` carrying the new lease term. The framework's key/value state
(`GetValue`, `ListValues`, `WriteValues`) is served by `runtime.framework_state`.

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
from tessera.control_plane.core import leases
from tessera.control_plane.core.acl import Caller, check_framework_call, check_launch, check_subscribe
from tessera.control_plane.core.errors import NotLeader
from tessera.control_plane.core.values import FrameworkInfo
from tessera.control_plane.runtime.acknowledgements import acknowledge_many
from tessera.control_plane.runtime.framework_state import list_values, read_value, write_values
from tessera.control_plane.runtime.leader import CLOSE, LeaderDuties
from tessera.control_plane.runtime.reconcile import reconcile
from tessera.control_plane.runtime.subscriptions import Subscriptions
from tessera.control_plane.tracing import request_traceparent
from tessera.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc

log = logging.getLogger(__name__)

BATCHED_UPDATES = "BATCHED_UPDATES"  # SubscribeRequest.capabilities: send updates as `updates` events
BATCHED_ACKNOWLEDGEMENTS = "BATCHED_ACKNOWLEDGEMENTS"  # Subscribed.capabilities: AcknowledgeRequest.updates
STANDBY_POLL_SECONDS = 0.1  # how often a waiting standby asks whether it may take the lease

class SchedulerService(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, duties: LeaderDuties, guard: Guard | None = None) -> None:
        self.duties = duties
        self.master = duties.master
        self.guard = guard or Guard.open()
        self.subscriptions = Subscriptions(self.master,
                                           takeover_delay=duties.settings.framework_takeover_delay)

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
        traceparent = request_traceparent(context)
        outcome = self.subscriptions.subscribe(info, traceparent, standby=request.standby,
                                               lease_term=request.lease_term)
        if isinstance(outcome, leases.Wait):
            outcome = yield from self._stand_by(info, outcome, traceparent, context)
            if outcome is None:
                return
        subscribed = outcome
        session = self.duties.attach_framework(subscribed.framework_id, subscribed.stream_id,
                                               batched_updates=BATCHED_UPDATES in request.capabilities,
                                               lease_term=subscribed.lease_term, lease_moved=subscribed.lease_moved)
        log.info("framework %s (%s) subscribed on stream %s, lease term %d", subscribed.framework_id, info.name,
                 subscribed.stream_id, subscribed.lease_term)
        interval = self.duties.settings.framework_heartbeat_interval
        try:
            yield scheduler_pb2.SchedulerEvent(subscribed=scheduler_pb2.Subscribed(
                framework_id=subscribed.framework_id, stream_id=subscribed.stream_id,
                heartbeat_interval_seconds=interval, master=self.master.identity.grpc_address,
                capabilities=[BATCHED_ACKNOWLEDGEMENTS], lease_term=subscribed.lease_term))
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

    def _stand_by(self, info: FrameworkInfo, waiting: leases.Wait, traceparent: str,
                  context: grpc.ServicerContext) -> Iterator[Any]:
        """A standby's stream while another instance holds the framework's lease: `Standby` (again whenever
        the lease term changes) and heartbeats, until this one takes over (returns its FrameworkSubscribed),
        the caller goes away (None) or this master stops leading (NotLeader, so it follows the leader). A
        stale lease term was answered with a Wait: from then on it claims as any standby."""
        interval = self.duties.settings.framework_heartbeat_interval
        log.info("framework %s (%s): a standby waits, lease term %d", waiting.framework_id, info.name,
                 waiting.lease_term)
        told: int | None = None
        next_heartbeat = time.monotonic() + interval
        while context.is_active():
            if not self.master.is_serving():
                raise NotLeader("this master stopped leading", self.master.leader_grpc_hint())
            if waiting.lease_term != told:
                told = waiting.lease_term
                next_heartbeat = time.monotonic() + interval
                yield scheduler_pb2.SchedulerEvent(standby=scheduler_pb2.Standby(
                    framework_id=waiting.framework_id, lease_term=waiting.lease_term,
                    heartbeat_interval_seconds=interval, master=self.master.identity.grpc_address))
            elif time.monotonic() >= next_heartbeat:
                next_heartbeat = time.monotonic() + interval
                yield scheduler_pb2.SchedulerEvent(heartbeat=scheduler_pb2.Heartbeat())
            time.sleep(STANDBY_POLL_SECONDS)
            outcome = self.subscriptions.subscribe(info, traceparent, standby=True)
            if not isinstance(outcome, leases.Wait):
                return outcome
            waiting = outcome
        return None

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

    # ---- the framework's key/value state ---------------------------------------------------------------
    @grpc_errors
    def GetValue(self, request: scheduler_pb2.GetValueRequest, context: grpc.ServicerContext) -> Any:
        h = request.header
        self._caller_of(h.framework_id, "GetValue", context)
        entry = read_value(self.master, h.framework_id, h.stream_id, request.key)
        if entry is None:
            return scheduler_pb2.GetValueResponse(found=False)
        return scheduler_pb2.GetValueResponse(found=True, value=scheduler_pb2.StateValue(
            key=request.key, value=entry.value, version=entry.version))

    @grpc_errors
    def ListValues(self, request: scheduler_pb2.ListValuesRequest, context: grpc.ServicerContext) -> Any:
        h = request.header
        self._caller_of(h.framework_id, "ListValues", context)
        page = list_values(self.master, h.framework_id, h.stream_id, request.prefix, request.start_after,
                           request.limit)
        return scheduler_pb2.ListValuesResponse(more=page.more, values=[
            scheduler_pb2.StateValue(key=key, value="" if request.keys_only else entry.value, version=entry.version)
            for key, entry in page.entries])

    @grpc_errors
    def WriteValues(self, request: scheduler_pb2.WriteValuesRequest, context: grpc.ServicerContext) -> Any:
        h = request.header
        self._caller_of(h.framework_id, "WriteValues", context)
        writes = [cmd.StateWrite(key=w.key, value=w.value, delete=w.delete, expected_version=w.expected_version)
                  for w in request.writes]
        versions = write_values(self.master, h.framework_id, h.stream_id, writes, request_id=h.request_id,
                                traceparent=request_traceparent(context))
        return scheduler_pb2.WriteValuesResponse(versions=versions)
