"""The Operator API over a real gRPC server and the in-memory twins: status codes for bad input, state
unchanged after a refusal, idempotent retries, event listing and watching."""

from __future__ import annotations

import math
import threading

import grpc
import pytest

from tessera.v1 import common_pb2, operator_pb2
from tests.support.cluster import wait_for
from tests.support.inprocess import InProcessMaster
from tests.support.scripted import ScriptedAgent, ScriptedFramework

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def node() -> InProcessMaster:
    with InProcessMaster() as m:
        yield m


def code_of(fn, *args, **kw) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, timeout=5, **kw)
    return info.value.code()


def test_set_weight_is_committed_as_an_event_and_visible_in_state(node: InProcessMaster) -> None:
    op = node.operator()
    resp = op.SetWeight(operator_pb2.SetWeightRequest(role="analytics", weight=3.0), timeout=5)
    assert resp.index > 0
    state = op.GetState(operator_pb2.GetStateRequest(consistent=True), timeout=5)
    assert [(r.role, r.weight) for r in state.roles] == [("analytics", 3.0)]
    node.events.flush()
    events = op.ListEvents(operator_pb2.ListEventsRequest(filter=operator_pb2.EventFilter(
        types=["RoleWeightSet"])), timeout=5).events
    assert [e.index for e in events] == [resp.index]
    assert '"analytics"' in events[0].payload_json


@pytest.mark.parametrize("weight", [0.0, -1.0, math.nan, math.inf])
def test_invalid_weight_is_invalid_argument_and_changes_nothing(node: InProcessMaster, weight: float) -> None:
    op = node.operator()
    before = op.GetState(operator_pb2.GetStateRequest(), timeout=5)
    assert code_of(op.SetWeight, operator_pb2.SetWeightRequest(role="web", weight=weight)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    after = op.GetState(operator_pb2.GetStateRequest(), timeout=5)
    assert after.index == before.index and list(after.roles) == list(before.roles)


@pytest.mark.parametrize("role", ["", "bad role", "../x", "x" * 300])
def test_invalid_role_name_is_invalid_argument(node: InProcessMaster, role: str) -> None:
    assert code_of(node.operator().SetWeight, operator_pb2.SetWeightRequest(role=role, weight=1.0)) == \
        grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("resource", [
    common_pb2.Resource(name="cpus", scalar=-1),
    common_pb2.Resource(name="cpus", scalar=math.nan),
    common_pb2.Resource(name="mem", scalar=math.inf),
    common_pb2.Resource(name="BAD NAME", scalar=1),
    common_pb2.Resource(name="ports", ranges=[common_pb2.Range(begin=10, end=5)]),
])
def test_bad_quota_resources_are_invalid_argument(node: InProcessMaster, resource: common_pb2.Resource) -> None:
    req = operator_pb2.SetQuotaRequest(role="web")
    req.guarantee.append(resource)
    assert code_of(node.operator().SetQuota, req) == grpc.StatusCode.INVALID_ARGUMENT


def test_quota_guarantee_above_limit_is_refused(node: InProcessMaster) -> None:
    req = operator_pb2.SetQuotaRequest(role="web")
    req.guarantee.append(common_pb2.Resource(name="cpus", scalar=8))
    req.limit.append(common_pb2.Resource(name="cpus", scalar=4))
    assert code_of(node.operator().SetQuota, req) == grpc.StatusCode.INVALID_ARGUMENT


def test_drain_of_unknown_agent_is_not_found(node: InProcessMaster) -> None:
    assert code_of(node.operator().DrainAgent, operator_pb2.DrainAgentRequest(agent_id="no-such-agent")) == \
        grpc.StatusCode.NOT_FOUND


def test_operator_kill_teardown_and_undrain_commit_their_events(node: InProcessMaster) -> None:
    agent = ScriptedAgent(node.channel, final_state=common_pb2.TASK_RUNNING).start()  # runs until killed
    assert agent.registered.wait(5)
    fw = ScriptedFramework(node.channel).start()
    try:
        offer = wait_for(lambda: next(iter(fw.offers.values()), None), 10, what="an offer")
        fw.launch(offer, "t1")
        wait_for(lambda: _task_state(node, "t1") == common_pb2.TASK_RUNNING, 10, what="the task to run")
        op = node.operator()
        killed = op.KillTask(operator_pb2.KillTaskRequest(task_id="t1", grace_period_seconds=2), timeout=5)
        assert killed.kill_requested and killed.framework_id == fw.framework_id
        node.events.flush()
        kill_events = op.ListEvents(operator_pb2.ListEventsRequest(filter=operator_pb2.EventFilter(
            types=["TaskKillRequested"])), timeout=5).events
        assert [e.index for e in kill_events] == [killed.index] and '"grace_period_seconds":2.0' in \
            kill_events[0].payload_json
        wait_for(lambda: _task_state(node, "t1") == common_pb2.TASK_KILLED, 10, what="the task to end")
        again = op.KillTask(operator_pb2.KillTaskRequest(task_id="t1", framework_id=fw.framework_id), timeout=5)
        assert not again.kill_requested and again.state == common_pb2.TASK_KILLED
        assert code_of(op.KillTask, operator_pb2.KillTaskRequest(task_id="t-404")) == grpc.StatusCode.NOT_FOUND

        aid = agent.agent_id
        assert not op.UndrainAgent(operator_pb2.UndrainAgentRequest(agent_id=aid), timeout=5).undrained
        op.DrainAgent(operator_pb2.DrainAgentRequest(agent_id=aid), timeout=5)
        undrained = op.UndrainAgent(operator_pb2.UndrainAgentRequest(agent_id=aid), timeout=5)
        assert undrained.undrained
        state = op.GetState(operator_pb2.GetStateRequest(consistent=True), timeout=5)
        assert state.index >= undrained.index and state.from_leader
        assert [a.state for a in state.agents] == [common_pb2.AGENT_ACTIVE]

        removed = op.TeardownFramework(operator_pb2.TeardownFrameworkRequest(framework_id=fw.framework_id),
                                       timeout=5)
        assert removed.removed and removed.tasks_killed == 0
        state = op.GetState(operator_pb2.GetStateRequest(consistent=True), timeout=5)
        assert [f.state for f in state.frameworks] == [common_pb2.FRAMEWORK_REMOVED]
        assert not op.TeardownFramework(operator_pb2.TeardownFrameworkRequest(framework_id=fw.framework_id),
                                        timeout=5).removed
        assert code_of(op.TeardownFramework, operator_pb2.TeardownFrameworkRequest(framework_id="fw-404")) == \
            grpc.StatusCode.NOT_FOUND
    finally:
        fw.close()
        agent.close()


def _task_state(node: InProcessMaster, task_id: str) -> int:
    state = node.operator().GetState(operator_pb2.GetStateRequest(consistent=True), timeout=5)
    return next((t.state for t in state.tasks if t.task.task_id == task_id), 0)


def test_retry_with_the_same_request_id_is_applied_once(node: InProcessMaster) -> None:
    op = node.operator()
    first = op.SetWeight(operator_pb2.SetWeightRequest(role="web", weight=2.0, request_id="r-1"), timeout=5)
    again = op.SetWeight(operator_pb2.SetWeightRequest(role="web", weight=2.0, request_id="r-1"), timeout=5)
    assert again.index == first.index
    node.events.flush()
    events = op.ListEvents(operator_pb2.ListEventsRequest(filter=operator_pb2.EventFilter(
        types=["RoleWeightSet"])), timeout=5).events
    assert len(events) == 1


def test_oversized_request_is_refused_and_the_master_keeps_serving(node: InProcessMaster) -> None:
    op = node.operator()
    code = code_of(op.SetWeight, operator_pb2.SetWeightRequest(role="web", weight=1.0, request_id="x" * (5 << 20)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code_of(op.SetWeight, operator_pb2.SetWeightRequest(role="web", weight=1.0, request_id="y" * 500)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert op.SetWeight(operator_pb2.SetWeightRequest(role="web", weight=1.5), timeout=5).index > 0


def test_list_limit_above_maximum_is_invalid_argument(node: InProcessMaster) -> None:
    assert code_of(node.operator().ListEvents, operator_pb2.ListEventsRequest(limit=1_000_000)) == \
        grpc.StatusCode.INVALID_ARGUMENT


def test_watch_from_a_pruned_index_is_out_of_range(node: InProcessMaster) -> None:
    op = node.operator()
    for i in range(5):
        op.SetWeight(operator_pb2.SetWeightRequest(role=f"r{i}", weight=1.0), timeout=5)
    node.events.flush()
    node.events.prune(before_seq=4)
    stream = op.WatchEvents(operator_pb2.WatchEventsRequest(from_index=1), timeout=5)
    with pytest.raises(grpc.RpcError) as info:
        next(iter(stream))
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert code_of(op.ListEvents, operator_pb2.ListEventsRequest(from_index=1)) == grpc.StatusCode.OUT_OF_RANGE


def test_watch_streams_new_events_with_a_filter(node: InProcessMaster) -> None:
    op = node.operator()
    got: list[operator_pb2.EventRecord] = []
    stream = op.WatchEvents(operator_pb2.WatchEventsRequest(
        from_index=1, filter=operator_pb2.EventFilter(types=["RoleWeightSet"])), timeout=20)
    done = threading.Event()

    def consume() -> None:
        for batch in stream:
            got.extend(batch.events)
            if len(got) >= 3:
                done.set()
                return

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    for i in range(3):
        op.SetWeight(operator_pb2.SetWeightRequest(role=f"w{i}", weight=1.0 + i), timeout=5)
    assert done.wait(10), f"only {len(got)} events arrived"
    stream.cancel()
    assert [e.type for e in got] == ["RoleWeightSet"] * 3
    assert [e.index for e in got] == sorted(e.index for e in got)


def test_quorum_status_of_a_single_local_master(node: InProcessMaster) -> None:
    q = node.operator().GetQuorum(operator_pb2.GetQuorumRequest(), timeout=5)
    assert q.leader_grpc == node.grpc_address
    assert q.applied_index > 0


def test_membership_changes_are_refused_on_a_local_log(node: InProcessMaster) -> None:
    op = node.operator()
    assert code_of(op.AddMaster, operator_pb2.AddMasterRequest(raft_address="not an address")) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(op.AddMaster, operator_pb2.AddMasterRequest(raft_address="127.0.0.1:7999")) in (
        grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE)
