"""The Operator gRPC service: thin — convert, call the master or the event log, convert back.

Conversions are in `codec.operator_api` (shared with the CLI); the replicator is reached only through
`runtime.quorum.Quorum` (membership changes, this master's view) and the leader's soft state through
`runtime.state_view.StateView`.

Validation that needs state lives in `decide`; this module only checks the shape of requests that never
reach the core (limits, addresses) and maps results. Errors go through `@grpc_errors`. Each method
first asks the guard whether the caller's principal may take the action it needs (`core.acl`).

Read calls show other principals' tasks redacted (`core.visibility`): every task, event payload and
span a read returns passes through the caller's `Visibility` here, at the edge, so no read path can
forget it. Span reports are checked against the tasks they concern and the reporter's budget
(`core.spans`) before anything is stored. The sandbox-file calls are authorized per task
(`core.acl.check_file_read`) and forwarded to the task's agent by `api.files_proxy`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from tessera.control_plane.api.auth import Guard
from tessera.control_plane.api.errors import grpc_errors
from tessera.control_plane.api.files_proxy import FilesProxy
from tessera.control_plane.codec import resources_from_proto
from tessera.control_plane.codec.operator_api import (
    event_filter_from_proto,
    events_to_proto,
    framework_state_to_proto,
    history_point_from_proto,
    quorum_to_proto,
    span_from_proto,
    span_to_proto,
    state_at_to_proto,
    state_to_proto,
)
from tessera.control_plane.core import commands as cmd
from tessera.control_plane.core.acl import Caller, check_operator
from tessera.control_plane.core.decide_tasks import task_framework
from tessera.control_plane.core.errors import InvalidRequest, NotFound, NotLeader
from tessera.control_plane.core.events import FrameworkRemoved, TaskKillRequested
from tessera.control_plane.core.spans import (
    SpanLimits,
    check_span_call,
    check_span_report,
    checks_span_owners,
    placements,
)
from tessera.control_plane.core.values import TaskState
from tessera.control_plane.core.visibility import Visibility, framework_owners, visibility_for
from tessera.control_plane.eventlog import EventFilter, EventRecord
from tessera.control_plane.eventlog.background import DeferredSnapshots
from tessera.control_plane.eventlog.errors import HistoryPruned
from tessera.control_plane.eventlog.statecache import StateCache
from tessera.control_plane.eventlog.timeline import resolve_task
from tessera.control_plane.runtime.framework_state import write_values
from tessera.control_plane.runtime.master import Master
from tessera.control_plane.runtime.quorum import Quorum
from tessera.control_plane.runtime.state_view import StateView
from tessera.control_plane.tls import peer_agent_identity
from tessera.control_plane.tracing import SpanReporters, request_traceparent
from tessera.v1 import files_pb2, operator_pb2, operator_pb2_grpc

log = logging.getLogger(__name__)

MAX_LIST_LIMIT = 10_000
DEFAULT_LIST_LIMIT = 100
WATCH_BATCH = 1_000
WATCH_HEARTBEAT_SECONDS = 1.0
ADDRESS_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}\Z")


def check_address(value: str, field: str) -> str:
    if not ADDRESS_RE.match(value) or not (0 < int(value.rsplit(":", 1)[1]) < 65536):
        raise InvalidRequest(f"{field}: expected HOST:PORT, got {value!r}")
    return value


class OperatorService(operator_pb2_grpc.OperatorServicer):
    def __init__(self, master: Master, peer_quorum: Any = None, duties: Any = None,
                 guard: Guard | None = None, span_limits: SpanLimits | None = None,
                 files: FilesProxy | None = None) -> None:
        self.master = master
        self.files = files or FilesProxy(master)  # sandbox files through this master (api/files_proxy.py)
        self.guard = guard or Guard.open()
        self.span_limits = span_limits or SpanLimits()
        self._span_reporters = SpanReporters(self.span_limits)
        self.duties = duties  # LeaderDuties, for soft state (usage samples, connected agents)
        # callable(grpc_address) -> GetQuorumResponse for a member's own view; injected so tests can twin it
        self._peer_quorum = peer_quorum
        self._fanout = ThreadPoolExecutor(max_workers=8, thread_name_prefix="quorum-fanout")
        self.quorum = Quorum(master)
        self.state_view = StateView(master, duties)
        # the states rebuilt lately for GetStateAt and the web UI's time travel (eventlog/statecache.py)
        # (starting from the decoded full snapshots the state machine keeps, shared with its delta writer)
        self.history_cache = StateCache(bases=master.sm.history_bases)
        self._history_snapshots: DeferredSnapshots | None = None

    def history_snapshots(self) -> DeferredSnapshots:
        """Stores the snapshots the rebuilds of GetStateAt and the web UI pass, off the request's thread
        (eventlog/background.py), in this master's event log."""
        found = self._history_snapshots
        if found is None or found.store is not self.master.events:
            found = self._history_snapshots = DeferredSnapshots(self.master.events)
        return found

    def _authorize(self, context: grpc.ServicerContext, method: str) -> Caller:
        """The caller's principal may take the action `method` needs (see `core.acl.OPERATOR_ACTIONS`)."""
        caller = self.guard.caller(context, f"Operator/{method}")
        check_operator(caller, method)
        return caller

    def _visibility(self, context: grpc.ServicerContext, method: str) -> Visibility:
        """A read call: authorized, and what its caller sees of each principal's tasks."""
        return visibility_for(self._authorize(context, method))

    def _owners(self, visibility: Visibility) -> dict[str, str] | None:
        """framework id -> principal, from the current state; None when the reader sees everything."""
        if visibility.sees_all:
            return None
        owners: dict[str, str] = self.master.read_state(framework_owners)
        return owners

    # ---- state -----------------------------------------------------------------------------------
    @grpc_errors
    def GetState(self, request: operator_pb2.GetStateRequest, context: grpc.ServicerContext) -> Any:
        visibility = self._visibility(context, "GetState")
        resp = self.state_view.read(lambda s, soft: state_to_proto(
            s, soft.leader, soft.term, visibility, usage=soft.usage, heartbeat_ages=soft.heartbeat_ages),
            consistent=request.consistent)
        resp.from_leader = self.master.is_serving()
        return resp

    @grpc_errors
    def GetFrameworkState(self, request: operator_pb2.GetFrameworkStateRequest, context: grpc.ServicerContext
                          ) -> Any:
        visibility = self._visibility(context, "GetFrameworkState")
        return self.state_view.read(lambda s, soft: framework_state_to_proto(
            s, request.framework_id, request.prefix, request.start_after, request.limit, visibility),
            consistent=request.consistent)

    @grpc_errors
    def WriteFrameworkState(self, request: operator_pb2.WriteFrameworkStateRequest,
                            context: grpc.ServicerContext) -> Any:
        caller = self._authorize(context, "WriteFrameworkState")
        writes = [cmd.StateWrite(key=w.key, value=w.value, delete=w.delete, expected_version=w.expected_version)
                  for w in request.writes]
        versions = write_values(self.master, request.framework_id, "", writes, request_id=request.request_id,
                                traceparent=request_traceparent(context), operator=caller.principal or "")
        return operator_pb2.WriteFrameworkStateResponse(versions=versions)

    # ---- event log -------------------------------------------------------------------------------
    @grpc_errors
    def ListEvents(self, request: operator_pb2.ListEventsRequest, context: grpc.ServicerContext) -> Any:
        visibility = self._visibility(context, "ListEvents")
        limit = request.limit or DEFAULT_LIST_LIMIT
        if limit > MAX_LIST_LIMIT:
            raise InvalidRequest(f"limit: at most {MAX_LIST_LIMIT}, got {limit}")
        flt = event_filter_from_proto(request.filter)
        store = self.master.events
        first, last = store.first_seq(), store.last_seq()
        if request.descending:
            start = request.from_index or last
        else:
            start = request.from_index or first
        if last and start > last and not request.descending:
            records: list[EventRecord] = []
        else:
            records = store.list(from_seq=max(start, 1), limit=limit, flt=flt, descending=request.descending)
        resp = operator_pb2.ListEventsResponse(first_index=first, last_index=last)
        resp.events.extend(events_to_proto(records, visibility, self._owners(visibility)))
        return resp

    @grpc_errors
    def WatchEvents(
        self, request: operator_pb2.WatchEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[operator_pb2.WatchEventsResponse]:
        visibility = self._visibility(context, "WatchEvents")
        flt = event_filter_from_proto(request.filter)
        store = self.master.events
        cursor = request.from_index or store.last_seq() + 1
        if cursor < store.first_seq():
            raise HistoryPruned(store.first_seq())
        while context.is_active():
            last = store.last_seq()
            if cursor <= last:
                records = [r for r in store.list(from_seq=cursor, limit=WATCH_BATCH, flt=flt) if r.seq <= last]
                if len(records) == WATCH_BATCH:
                    cursor = records[-1].seq + 1
                else:
                    cursor = last + 1
                if records:
                    resp = operator_pb2.WatchEventsResponse(last_index=last)
                    resp.events.extend(events_to_proto(records, visibility, self._owners(visibility)))
                    yield resp
                    continue
            if store.wait(after_seq=cursor - 1, timeout=WATCH_HEARTBEAT_SECONDS) <= cursor - 1:
                yield operator_pb2.WatchEventsResponse(last_index=store.last_seq())

    @grpc_errors
    def GetStateAt(self, request: operator_pb2.GetStateAtRequest, context: grpc.ServicerContext) -> Any:
        visibility = self._visibility(context, "GetStateAt")
        from tessera.control_plane.eventlog.replay import state_and_diff

        if not request.HasField("at"):
            raise InvalidRequest("at: give an index or a time")
        at_point = history_point_from_proto(request.at, "at")
        from_point = history_point_from_proto(request.diff_from, "diff_from") if request.HasField(
            "diff_from") else None
        store = self.master.events
        at, before, diff = state_and_diff(store, at_point, from_point, time.time(), cache=self.history_cache,
                                          keep=self.history_snapshots().keep)
        return state_at_to_proto(at, before, diff, store.first_seq(), store.last_seq(), visibility)

    # ---- tracing ---------------------------------------------------------------------------------
    @grpc_errors
    def ReportSpans(self, request: operator_pb2.ReportSpansRequest, context: grpc.ServicerContext) -> Any:
        caller = self.guard.caller(context, "Operator/ReportSpans")  # no action: checked per span below
        limits = self.span_limits
        size = request.ByteSize()
        check_span_call(limits, len(request.spans), size)
        now = time.time()
        records = [span_from_proto(s, limits, now) for s in request.spans]
        if not self.master.is_serving():
            raise NotLeader("spans are stored by the leader", self.master.leader_grpc_hint())
        # charged before the owner check, so refused calls cost the reporter too (and bound its lookups)
        self._span_reporters.charge(self._reporter(context, caller), len(records), size)
        if checks_span_owners(caller):
            store = self.master.events
            in_trace = {trace_id: store.trace_tasks(trace_id) for trace_id in {r.trace_id for r in records}}
            named = {r.task_id for r in records} | {t for ts in in_trace.values() for t in ts}
            tasks = self.master.read_state(lambda s: placements(s, named - {""}))
            agents = self._caller_agents(context, caller)
            for task_id, trace_id in {(r.task_id, r.trace_id) for r in records}:
                check_span_report(caller, agents, task_id, in_trace[trace_id], tasks)
        self.master.events.append_spans(records)
        return operator_pb2.ReportSpansResponse()

    def _caller_agents(self, context: grpc.ServicerContext, caller: Caller) -> frozenset[str]:
        """The agents an agent certificate's call speaks for: those with a live session opened under the
        same agent name (`urn:tessera:agent:<name>` in the verified certificate)."""
        if caller.kind != "agent" or self.duties is None:
            return frozenset()
        identity = peer_agent_identity(context)
        if not identity:
            return frozenset()
        return frozenset(agent_id for agent_id, session in list(self.duties.agents.items())
                         if not session.closed and session.identity == identity)

    @staticmethod
    def _reporter(context: grpc.ServicerContext, caller: Caller) -> str:
        """Whose span budget a call spends: its principal's, else its certificate kind's on its host."""
        if caller.principal is not None:
            return f"principal:{caller.principal}"
        return f"{caller.kind or 'peer'}@{peer_host(context.peer() or '')}"

    @grpc_errors
    def GetTrace(self, request: operator_pb2.GetTraceRequest, context: grpc.ServicerContext) -> Any:
        visibility = self._visibility(context, "GetTrace")
        if not request.task_id:
            raise InvalidRequest("task_id: required")
        if not self.master.is_serving():
            # spans are stored where they are reported: on the leader (agents and frameworks send theirs
            # there); the caller follows the hint
            raise NotLeader("traces are served by the leader", self.master.leader_grpc_hint())
        store = self.master.events
        framework_id = request.framework_id
        if not framework_id:  # a bare task id: the one framework whose task uses it (ids are per framework)
            framework_id, _ = resolve_task(store, request.task_id)
        trace_ids = store.traces_for_task(request.task_id, framework_id)
        named = f"{framework_id}/{request.task_id}" if framework_id else request.task_id
        if not trace_ids:
            raise NotFound(f"no trace names task {named}")
        task_events = store.list(limit=MAX_LIST_LIMIT, flt=EventFilter(task_id=request.task_id,
                                                                        framework_id=framework_id))
        owners = self._owners(visibility)
        full = True
        if owners is not None:  # the trace is the task's: its spans are shown as the task is
            owner = owners.get(framework_id) if framework_id else None
            if owner is None:  # forgotten by the state: its events still name the framework
                owner = next((owners[e.framework_id] for e in task_events if e.framework_id in owners), None)
            full = visibility.sees_in_full(owner)
        resp = operator_pb2.GetTraceResponse()
        for trace_id in trace_ids:
            t = resp.traces.add(trace_id=trace_id)
            t.spans.extend(span_to_proto(s, full) for s in store.spans_for_trace(trace_id))
            t.events.extend(events_to_proto([e for e in task_events if e.trace_id == trace_id], visibility, owners))
        return resp

    # ---- sandbox files, forwarded to the task's agent (api/files_proxy.py) -------------------------
    def _file_target(self, context: grpc.ServicerContext, method: str, task: Any) -> Any:
        caller = self.guard.caller(context, f"Operator/{method}")  # authorized per task, not by an action
        return self.files.authorize(caller, task)

    @grpc_errors
    def ListFiles(self, request: files_pb2.ListFilesRequest, context: grpc.ServicerContext) -> Any:
        placement, task = self._file_target(context, "ListFiles", request.task)
        forwarded = files_pb2.ListFilesRequest(task=task, path=request.path)
        return self.files.unary(placement, lambda stub: stub.List, forwarded, context)

    @grpc_errors
    def StatFile(self, request: files_pb2.StatFileRequest, context: grpc.ServicerContext) -> Any:
        placement, task = self._file_target(context, "StatFile", request.task)
        forwarded = files_pb2.StatFileRequest(task=task, path=request.path, since_time=request.since_time)
        return self.files.unary(placement, lambda stub: stub.Stat, forwarded, context)

    @grpc_errors
    def ReadFile(self, request: files_pb2.ReadFileRequest, context: grpc.ServicerContext) -> Any:
        placement, task = self._file_target(context, "ReadFile", request.task)
        forwarded = files_pb2.ReadFileRequest(task=task, path=request.path, offset=request.offset,
                                              length=request.length)
        return self.files.unary(placement, lambda stub: stub.Read, forwarded, context)

    @grpc_errors
    def FollowFile(self, request: files_pb2.FollowFileRequest,
                   context: grpc.ServicerContext) -> Iterator[files_pb2.FollowFileResponse]:
        placement, task = self._file_target(context, "FollowFile", request.task)
        forwarded = files_pb2.FollowFileRequest(task=task, path=request.path, offset=request.offset,
                                                inode=request.inode)
        yield from self.files.stream(placement, forwarded, context)

    # ---- quorum ----------------------------------------------------------------------------------
    @grpc_errors
    def GetQuorum(self, request: operator_pb2.GetQuorumRequest, context: grpc.ServicerContext) -> Any:
        self._authorize(context, "GetQuorum")
        return self.quorum_view(local_only=request.local_only)

    def quorum_view(self, *, local_only: bool = False, peer_timeout: float = 3.0) -> operator_pb2.GetQuorumResponse:
        """This master's view of the quorum; unless `local_only`, each member's own figures, asked in
        parallel (a member that does not answer within `peer_timeout` is marked unreachable). The web UI's
        overview reads the same answer (`web.service`)."""
        resp = quorum_to_proto(self.quorum.local())
        if local_only or self._peer_quorum is None:
            return resp
        others = [m for m in resp.members if not m.is_self and m.grpc_address]
        futures = {m.raft_address: self._fanout.submit(self._peer_quorum, m.grpc_address) for m in others}
        for m in resp.members:
            fut = futures.get(m.raft_address)
            if fut is None:
                if not m.is_self:
                    m.error = "gRPC address not announced yet"
                continue
            try:
                peer = fut.result(timeout=peer_timeout)
                m.commit_index, m.applied_index, m.term = peer.commit_index, peer.applied_index, peer.term
                own = next((x for x in peer.members if x.is_self), None)
                m.event_index = own.event_index if own is not None else 0
                m.ui_url = own.ui_url if own is not None else ""
                m.reachable = True
            except TimeoutError:
                m.reachable = False
                m.error = f"no answer within {peer_timeout:g} s"
            except Exception as exc:  # noqa: BLE001 - one member down must not fail the whole answer
                m.reachable = False
                details = exc.details() if isinstance(exc, grpc.RpcError) else None
                m.error = str(details or exc)[:200] or type(exc).__name__
        return resp

    @grpc_errors
    def AddMaster(self, request: operator_pb2.AddMasterRequest, context: grpc.ServicerContext) -> Any:
        self._authorize(context, "AddMaster")
        self.quorum.add_member(check_address(request.raft_address, "raft_address"))
        return operator_pb2.AddMasterResponse()

    @grpc_errors
    def RemoveMaster(self, request: operator_pb2.RemoveMasterRequest, context: grpc.ServicerContext) -> Any:
        self._authorize(context, "RemoveMaster")
        self.quorum.remove_member(check_address(request.raft_address, "raft_address"))
        return operator_pb2.RemoveMasterResponse()

    @grpc_errors
    def TransferLeadership(
        self, request: operator_pb2.TransferLeadershipRequest, context: grpc.ServicerContext
    ) -> Any:
        self._authorize(context, "TransferLeadership")
        target = check_address(request.raft_address, "raft_address") if request.raft_address else None
        self.quorum.transfer_leadership(target)
        return operator_pb2.TransferLeadershipResponse()

    @grpc_errors
    def AnnounceMaster(self, request: operator_pb2.AnnounceMasterRequest, context: grpc.ServicerContext) -> Any:
        self._authorize(context, "AnnounceMaster")
        check_address(request.raft_address, "raft_address")
        check_address(request.grpc_address, "grpc_address")
        result = self.master.propose([cmd.AnnounceMaster(
            name=request.name, raft_address=request.raft_address, grpc_address=request.grpc_address,
        )])  # decide makes a repeat of a known announcement a no-op; a fixed request id would stop a
        # master that was removed and added again from announcing itself a second time
        return operator_pb2.AnnounceMasterResponse(index=result.last_seq)

    # ---- policy ----------------------------------------------------------------------------------
    @grpc_errors
    def SetWeight(self, request: operator_pb2.SetWeightRequest, context: grpc.ServicerContext) -> Any:
        self._authorize(context, "SetWeight")
        result = self.master.propose(
            [cmd.SetRoleWeight(role=request.role, weight=request.weight)],
            request_id=request.request_id, traceparent=request_traceparent(context),
        )
        return operator_pb2.SetWeightResponse(index=result.last_seq)

    @grpc_errors
    def SetQuota(self, request: operator_pb2.SetQuotaRequest, context: grpc.ServicerContext) -> Any:
        self._authorize(context, "SetQuota")
        result = self.master.propose(
            [cmd.SetQuota(
                role=request.role, guarantee=resources_from_proto(request.guarantee),
                limit=resources_from_proto(request.limit),
            )],
            request_id=request.request_id, traceparent=request_traceparent(context),
        )
        return operator_pb2.SetQuotaResponse(index=result.last_seq)

    @grpc_errors
    def DrainAgent(self, request: operator_pb2.DrainAgentRequest, context: grpc.ServicerContext) -> Any:
        self._authorize(context, "DrainAgent")
        result = self.master.propose_redeciding(  # a launch committed meanwhile: its task is killed too
            [cmd.DrainAgent(agent_id=request.agent_id)],
            request_id=request.request_id, traceparent=request_traceparent(context),
        )
        return operator_pb2.DrainAgentResponse(index=result.last_seq)

    @grpc_errors
    def UndrainAgent(self, request: operator_pb2.UndrainAgentRequest, context: grpc.ServicerContext) -> Any:
        self._authorize(context, "UndrainAgent")
        result = self.master.propose([cmd.UndrainAgent(agent_id=request.agent_id)],
                                     request_id=request.request_id, traceparent=request_traceparent(context))
        return operator_pb2.UndrainAgentResponse(index=result.last_seq, undrained=bool(result.events))

    # ---- tasks and frameworks ----------------------------------------------------------------------
    @grpc_errors
    def KillTask(self, request: operator_pb2.KillTaskRequest, context: grpc.ServicerContext) -> Any:
        self._authorize(context, "KillTask")
        result = self.master.propose(
            [cmd.OperatorKill(task_id=request.task_id, framework_id=request.framework_id,
                              grace_period_seconds=request.grace_period_seconds)],
            request_id=request.request_id, traceparent=request_traceparent(context),
        )
        kill = next((e for _, e in result.events if isinstance(e, TaskKillRequested)), None)

        def task_now(s: Any) -> tuple[str, TaskState]:  # the task's framework and state after the call
            fid = kill.framework_id if kill is not None else task_framework(s, request.task_id, request.framework_id)
            task = s.find_task(fid, request.task_id)
            return fid, task.state if task is not None else TaskState.TASK_STATE_UNKNOWN

        framework_id, state = self.master.read_state(task_now)
        return operator_pb2.KillTaskResponse(index=result.last_seq, framework_id=framework_id,
                                             kill_requested=kill is not None, state=int(state))

    @grpc_errors
    def TeardownFramework(self, request: operator_pb2.TeardownFrameworkRequest,
                          context: grpc.ServicerContext) -> Any:
        caller = self._authorize(context, "TeardownFramework")
        who = f"operator {caller.principal}" if caller.principal else "an operator"
        result = self.master.propose_redeciding(  # a launch committed meanwhile: its task is killed too
            [cmd.RemoveFramework(framework_id=request.framework_id, reason=f"torn down by {who}")],
            request_id=request.request_id, traceparent=request_traceparent(context),
        )
        events = [e for _, e in result.events]
        return operator_pb2.TeardownFrameworkResponse(
            index=result.last_seq, removed=any(isinstance(e, FrameworkRemoved) for e in events),
            tasks_killed=sum(1 for e in events if isinstance(e, TaskKillRequested)))


def peer_host(peer: str) -> str:
    """The host of a gRPC peer string: "127.0.0.1" of "ipv4:127.0.0.1:5000", "[::1]" of "ipv6:[::1]:5000"."""
    scheme, _, rest = peer.partition(":")
    if scheme in ("ipv4", "ipv6") and rest:
        return rest.rsplit(":", 1)[0]
    return peer
