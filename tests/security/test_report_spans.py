"""Issue 14, item 6: `ReportSpans` takes spans only from whom they concern, within limits, and spans go
with the events retention prunes.

- who (the pure rule, `core.spans.check_span_report`): an agent reports spans only for tasks on itself, a
  principal (framework or operator certificate, with its token) only for its own frameworks' tasks; a
  span concerns the task it names and every task its trace already belongs to, so a span that only
  borrows another tenant's trace id is refused too;
- end to end (real processes): alice's forged span in bob's task's trace is PERMISSION_DENIED and does
  not appear in that trace; without a token a framework certificate is UNAUTHENTICATED;
- limits (the in-process master's real gRPC API): an oversized call is INVALID_ARGUMENT, a reporter over
  its rate is RESOURCE_EXHAUSTED, and neither stores anything;
- retention: pruning events prunes the spans older than the first kept event (both event stores).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tessera.control_plane.api.operator import OperatorService
from tessera.control_plane.api.server import MasterServer
from tessera.control_plane.core.acl import Caller, Grant
from tessera.control_plane.core.errors import PermissionDenied
from tessera.control_plane.core.spans import SpanLimits, TaskPlacement, check_span_report
from tessera.control_plane.eventlog import (
    EventRecord,
    EventStore,
    MemoryEventStore,
    SpanRecord,
    SqliteEventStore,
)
from tessera.v1 import operator_pb2, operator_pb2_grpc
from tests.security.tenant_cluster import tenant_cluster, tenants_acl
from tests.support.cluster import free_port, wait_for
from tests.support.inprocess import InProcessMaster
from tests.support.secure_cluster import SecureCluster, Tenant, code_of, launch, subscribe

# ---- who may report: the pure rule ------------------------------------------------------------------
TASKS = {"bob-1": (TaskPlacement(principal="bob", agent_id="agent-b"),),
         "alice-1": (TaskPlacement(principal="alice", agent_id="agent-a"),),
         # task ids are per framework: both tenants run a "web-1"
         "web-1": (TaskPlacement(principal="alice", agent_id="agent-a"),
                   TaskPlacement(principal="bob", agent_id="agent-b"))}
ALICE = Caller("framework", Grant("alice", "0" * 64, actions=frozenset({"read"})))
AGENT = Caller("agent", None)


def test_a_principal_reports_spans_only_for_its_own_tasks() -> None:
    check_span_report(ALICE, frozenset(), "alice-1", ["alice-1"], TASKS)
    check_span_report(ALICE, frozenset(), "", [], TASKS)  # a trace of its own that names no task yet
    for span_task, trace in (("bob-1", []), ("", ["bob-1"]), ("alice-1", ["alice-1", "bob-1"]),
                             ("unknown-task", [])):
        with pytest.raises(PermissionDenied):
            check_span_report(ALICE, frozenset(), span_task, trace, TASKS)


def test_an_agent_reports_spans_only_for_tasks_on_itself() -> None:
    check_span_report(AGENT, frozenset({"agent-a"}), "alice-1", ["alice-1"], TASKS)
    check_span_report(AGENT, frozenset({"agent-a"}), "", [], TASKS)
    # one launch call, tasks on two agents, one trace: each agent takes part with its own task
    check_span_report(AGENT, frozenset({"agent-a"}), "alice-1", ["alice-1", "bob-1"], TASKS)
    for agents, span_task, trace in ((frozenset({"agent-a"}), "bob-1", []),
                                     (frozenset({"agent-a"}), "", ["bob-1"]),
                                     (frozenset({"agent-a"}), "alice-1", ["bob-1"]),
                                     (frozenset(), "alice-1", []),
                                     (frozenset({"agent-a"}), "gone", [])):
        with pytest.raises(PermissionDenied):
            check_span_report(AGENT, agents, span_task, trace, TASKS)


def test_a_task_id_two_tenants_share_opens_neither_tenant_s_trace_to_the_other() -> None:
    # bob's trace names bob's web-1; alice (and alice's agent) also run a web-1: the shared bare id must
    # not let them into bob's trace, so it counts as nobody's alone
    for caller, agents in ((ALICE, frozenset()), (AGENT, frozenset({"agent-a"}))):
        for span_task, trace in (("web-1", ["web-1"]), ("", ["web-1"]), ("web-1", [])):
            with pytest.raises(PermissionDenied):
                check_span_report(caller, agents, span_task, trace, TASKS)
    check_span_report(AGENT, frozenset({"agent-a", "agent-b"}), "web-1", ["web-1"], TASKS)


def test_masters_and_the_insecure_dev_mode_report_anything() -> None:
    check_span_report(Caller("master", None), frozenset(), "gone", ["bob-1"], TASKS)
    check_span_report(Caller(None, None), frozenset(), "gone", ["bob-1"], TASKS)


# ---- end to end: a forged span in another tenant's trace ------------------------------------------------
TRACE_ID = "f0e1d2c3" * 4
TOKENS = {"ops": "tok-ops-spans-1", "alice": "tok-alice-spans-2", "bob": "tok-bob-spans-3"}
ACL = tenants_acl(TOKENS, ops_actions=("read",))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    if shutil.which("sh") is None:
        pytest.fail("tasks run with /bin/sh")
    yield from tenant_cluster(tmp_path_factory.mktemp("spans"), ACL, TOKENS)


@pytest.fixture(scope="module")
def bob(cluster: SecureCluster) -> Iterator[Tenant]:
    tenant = subscribe(cluster, "bob", ["web"], "bob-web")
    launch(cluster, tenant, "bob-task", "sleep 300", trace_id=TRACE_ID)
    yield tenant
    tenant.stream.call.cancel()


def _span(name: str, span_id: str, task_id: str = "", trace_id: str = TRACE_ID) -> operator_pb2.Span:
    now = time.time()
    return operator_pb2.Span(trace_id=trace_id, span_id=span_id, name=name, service="forger", kind="internal",
                             start_time=now, end_time=now, status="OK", task_id=task_id,
                             attributes_json=json.dumps({"tessera.task_id": task_id} if task_id else {}))


def _trace_spans(cluster: SecureCluster) -> list[operator_pb2.Span]:
    c = cluster.client("operator", "ops")
    try:
        resp = c.call(lambda s: s.GetTrace, operator_pb2.GetTraceRequest(task_id="bob-task"))
    finally:
        c.close()
    return [s for t in resp.traces for s in t.spans]


def _trace_span_names(cluster: SecureCluster) -> set[str]:
    return {s.name for s in _trace_spans(cluster)}


def test_a_forged_span_in_another_tenants_trace_is_refused_and_not_shown(cluster: SecureCluster, bob: Tenant
                                                                         ) -> None:
    alice, metadata = cluster.operator_stub("framework", "alice")
    for span in (_span("forged.with-task", "a1" * 8, task_id="bob-task"),
                 _span("forged.trace-only", "a2" * 8)):
        code = code_of(alice.ReportSpans, operator_pb2.ReportSpansRequest(spans=[span]), metadata=metadata,
                       timeout=10)
        assert code == grpc.StatusCode.PERMISSION_DENIED, span.name
    no_token, _ = cluster.operator_stub("framework", None)
    assert code_of(no_token.ReportSpans, operator_pb2.ReportSpansRequest(
        spans=[_span("forged.no-token", "a3" * 8, task_id="bob-task")]), timeout=10) \
        == grpc.StatusCode.UNAUTHENTICATED
    # bob reports for his own task; that one is stored
    owner, bob_md = cluster.operator_stub("framework", "bob")
    owner.ReportSpans(operator_pb2.ReportSpansRequest(spans=[_span("bob.own", "b1" * 8, task_id="bob-task")]),
                      metadata=bob_md, timeout=10)
    deadline = time.monotonic() + 20
    names = _trace_span_names(cluster)
    while "bob.own" not in names and time.monotonic() < deadline:
        time.sleep(0.2)
        names = _trace_span_names(cluster)
    assert "bob.own" in names
    assert not {n for n in names if n.startswith("forged.")}


# ---- limits: per call and per peer ----------------------------------------------------------------------
def _spans(n: int, prefix: str, attributes: str = "{}") -> list[operator_pb2.Span]:
    now = time.time()
    return [operator_pb2.Span(trace_id=f"{prefix}{i:024x}", span_id=f"{i + 1:016x}", name="flood",
                              service="flooder", kind="internal", start_time=now, end_time=now, status="OK",
                              attributes_json=attributes) for i in range(n)]


def test_an_oversized_call_is_invalid_and_a_reporter_over_its_rate_is_exhausted() -> None:
    limits = SpanLimits(max_spans_per_call=100, spans_per_second=1.0, span_burst=300)
    with InProcessMaster(allocation=False) as m:
        service = OperatorService(m.master, duties=m.duties, span_limits=limits)
        server = MasterServer(service, max_workers=8)  # the same master behind a service with small limits
        address = f"127.0.0.1:{free_port()}"
        server.bind(address)
        server.start()
        channel = grpc.insecure_channel(address)
        try:
            stub = operator_pb2_grpc.OperatorStub(channel)
            too_many = operator_pb2.ReportSpansRequest(spans=_spans(101, "aaaaaaaa"))
            assert code_of(stub.ReportSpans, too_many, timeout=10) == grpc.StatusCode.INVALID_ARGUMENT
            huge = operator_pb2.ReportSpansRequest(spans=_spans(1, "bbbbbbbb", json.dumps({"x": "y" * 100_000})))
            assert code_of(stub.ReportSpans, huge, timeout=10) == grpc.StatusCode.INVALID_ARGUMENT
            future = operator_pb2.ReportSpansRequest(spans=_spans(1, "eeeeeeee"))
            future.spans[0].end_time += 86_400  # would outlive retention, which prunes by end time
            assert code_of(stub.ReportSpans, future, timeout=10) == grpc.StatusCode.INVALID_ARGUMENT
            for i in range(3):  # the burst
                stub.ReportSpans(operator_pb2.ReportSpansRequest(spans=_spans(100, f"c{i:07x}")), timeout=10)
            assert code_of(stub.ReportSpans, operator_pb2.ReportSpansRequest(spans=_spans(100, "dddddddd")),
                           timeout=10) == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert m.events.flush(10)
            assert m.events.spans_for_trace(f"{'a' * 8}{0:024x}") == []
            assert m.events.spans_for_trace(f"{'b' * 8}{0:024x}") == []
            assert m.events.spans_for_trace(f"{'e' * 8}{0:024x}") == []
            assert m.events.spans_for_trace(f"{'d' * 8}{0:024x}") == []
            assert len(m.events.spans_for_trace(f"c{2:07x}{99:024x}")) == 1
        finally:
            channel.close()
            server.stop(0.2)


# ---- retention: spans are pruned with the events -----------------------------------------------------
def _event(seq: int, t: float) -> EventRecord:
    return EventRecord(seq=seq, raft_index=seq, position=0, type="RoleWeightSet", time=t, term=1, request_id="",
                       framework_id="", agent_id="", task_id="", offer_id="", trace_id="", span_id="",
                       payload="{}")


def _record(trace: str, start: float, end: float) -> SpanRecord:
    return SpanRecord(trace_id=trace, span_id="1" * 16, parent_span_id="", name="s", service="x", kind="internal",
                      start_time=start, end_time=end, status="OK", attributes="{}", task_id="")


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_spans_older_than_the_first_kept_event_are_pruned_with_the_events(backend: str, tmp_path: Path) -> None:
    store: EventStore = MemoryEventStore() if backend == "memory" else SqliteEventStore(tmp_path / "events.db")
    with store:
        store.append([_event(seq, 1000.0 + seq) for seq in range(1, 11)])  # times 1001 .. 1010
        old, straddling, new, later = ("0" * 31 + str(i) for i in range(1, 5))
        store.append_spans([_record(old, 1001.0, 1004.5), _record(straddling, 1003.0, 1007.0),
                            _record(new, 1008.0, 1008.5), _record(later, 1020.0, 1021.0)])
        assert store.flush(10)
        store.prune(6)  # the first kept event is seq 6, at 1006
        assert store.spans_for_trace(old) == []
        assert len(store.spans_for_trace(straddling)) == 1  # still running when the kept history starts
        assert len(store.spans_for_trace(new)) == 1
        store.prune(100)  # past the end: every span that ended before the last pruned event goes
        assert store.spans_for_trace(straddling) == [] and store.spans_for_trace(new) == []
        assert len(store.spans_for_trace(later)) == 1


def test_the_agent_running_a_task_still_reports_its_spans(cluster: SecureCluster, bob: Tenant) -> None:
    """The agent's own spans of bob's task (sent with its agent certificate, no token) pass the check."""
    wait_for(lambda: any(s.service == "tessera-agent" and s.task_id == "bob-task" for s in _trace_spans(cluster)),
             timeout=60, what="the agent's spans of bob's task in its trace")
