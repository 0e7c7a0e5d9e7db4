"""Issue 14, item 4: `read` does not show another tenant's secrets.

Real processes: a secured master and an agent; tenants alice and bob hold `read` (as `tessera certs init`
grants frameworks), ops holds `read_all`. Bob runs a task whose environment, command and labels carry
the secret `s3cret`, launched in a trace of his own, and reports a span of that trace with the secret
in an attribute. Whatever alice reads — GetState, ListEvents, WatchEvents, GetStateAt, GetTrace — never
contains it; she still sees that the task exists and how it is doing. Bob sees his own task in full, and
so does an operator with `read_all`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from tessera.v1 import common_pb2, operator_pb2
from tests.security.tenant_cluster import tenant_cluster, tenants_acl
from tests.support.secure_cluster import SecureCluster, Tenant, launch, subscribe

SECRET = "s3cret"
TRACE_ID = "5ec2e7" + "ab" * 13
TOKENS = {"ops": "tok-ops-read-all-1", "alice": "tok-alice-reader-2", "bob": "tok-bob-reader-3"}
ACL = tenants_acl(TOKENS, ops_actions=("read", "read_all"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    yield from tenant_cluster(tmp_path_factory.mktemp("reads"), ACL, TOKENS)


@pytest.fixture(scope="module")
def bob(cluster: SecureCluster) -> Iterator[Tenant]:
    tenant = subscribe(cluster, "bob", ["web"], "bob-web")
    launch(cluster, tenant, "bob-db-client", f"sleep 300 # --password={SECRET}",
           environment={"DB_PASSWORD": SECRET, "PLAIN": "visible-name"}, labels={"secret": SECRET},
           trace_id=TRACE_ID)
    reporter, metadata = cluster.operator_stub("framework", "bob")
    reporter.ReportSpans(operator_pb2.ReportSpansRequest(spans=[operator_pb2.Span(
        trace_id=TRACE_ID, span_id="b0b0" * 4, name="bob.connect", service="bob-web", kind="client",
        start_time=time.time(), end_time=time.time(), status="OK", task_id="bob-db-client",
        attributes_json=json.dumps({"db.password": SECRET, "tessera.task_id": "bob-db-client"}))]),
        metadata=metadata, timeout=10)
    yield tenant
    tenant.stream.call.cancel()


def _reads(cluster: SecureCluster, kind: str, principal: str) -> dict[str, str]:
    """Every read path's answer, as text, for one caller."""
    c = cluster.client(kind, principal)
    try:
        state = c.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True))
        events = c.call(lambda s: s.ListEvents, operator_pb2.ListEventsRequest(limit=10_000))
        at = c.call(lambda s: s.GetStateAt, operator_pb2.GetStateAtRequest(
            at=operator_pb2.HistoryPoint(index=events.last_index), diff_from=operator_pb2.HistoryPoint(index=1)))
        trace = c.call(lambda s: s.GetTrace, operator_pb2.GetTraceRequest(task_id="bob-db-client"))
    finally:
        c.close()
    return {"GetState": str(state), "ListEvents": str(events), "GetStateAt": str(at), "GetTrace": str(trace),
            "WatchEvents": _watched(cluster, kind, principal)}


def _watched(cluster: SecureCluster, kind: str, principal: str) -> str:
    """WatchEvents from the first index until the stream has passed the current last index."""
    stub, metadata = cluster.operator_stub(kind, principal)
    c = cluster.client("operator", "ops")
    try:
        last = c.call(lambda s: s.ListEvents, operator_pb2.ListEventsRequest(limit=1)).last_index
    finally:
        c.close()
    call = stub.WatchEvents(operator_pb2.WatchEventsRequest(from_index=1), metadata=metadata, timeout=30)
    seen: list[Any] = []
    timer = threading.Timer(25, call.cancel)
    timer.start()
    try:
        for resp in call:
            seen.extend(resp.events)
            if seen and seen[-1].index >= last:
                break
    except grpc.RpcError as err:
        raise AssertionError(f"WatchEvents ended early: {err}") from err
    finally:
        timer.cancel()
        call.cancel()
    assert seen and seen[-1].index >= last, "the watch did not reach the current index"
    return "\n".join(str(e) for e in seen)


def test_another_tenants_reader_never_sees_the_secret(cluster: SecureCluster, bob: Tenant) -> None:
    for kind in ("framework", "operator"):
        reads = _reads(cluster, kind, "alice")
        for path, text in reads.items():
            assert SECRET not in text, f"{path} showed bob's secret to alice ({kind} certificate)"
    # what is not secret stays visible: the task, its framework, its state, its environment's names
    st = cluster.state("framework", "alice")
    task = next(t for t in st.tasks if t.task.task_id == "bob-db-client")
    assert task.state == common_pb2.TASK_RUNNING and task.task.framework_id
    assert {e.key for e in task.task.command.environment} == {"DB_PASSWORD", "PLAIN"}
    assert SECRET not in str(task)


def test_the_owner_and_a_read_all_operator_see_the_task_in_full(cluster: SecureCluster, bob: Tenant) -> None:
    for kind, principal in (("framework", "bob"), ("operator", "ops")):
        reads = _reads(cluster, kind, principal)
        for path in ("GetState", "ListEvents", "WatchEvents", "GetStateAt", "GetTrace"):
            assert SECRET in reads[path], f"{path} hid the secret from {principal}"
        st = cluster.state(kind, principal)
        task = next(t for t in st.tasks if t.task.task_id == "bob-db-client")
        assert {e.key: e.value for e in task.task.command.environment}["DB_PASSWORD"] == SECRET
