"""The whole two-level flow over real gRPC against one in-process master (in-memory twins): an agent
registers, a framework subscribes, gets an offer, launches a task; the agent runs it and reports; the
framework is told and acknowledges; failures (silent agent, bad accepts, stale streams) are handled."""

from __future__ import annotations

import time
from dataclasses import replace

import grpc
import pytest

from tessera.control_plane.core.values import AgentState, TaskState
from tessera.v1 import common_pb2, scheduler_pb2
from tests.support.cluster import wait_for
from tests.support.inprocess import FAST, InProcessMaster
from tests.support.scripted import ScriptedAgent, ScriptedFramework

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def node() -> InProcessMaster:
    with InProcessMaster() as m:
        yield m


def launched_on_first_offer(task_id: str, resources: str = "cpus:0.5;mem:64"):
    done: list[str] = []

    def on_offers(fw: ScriptedFramework, offers: list[common_pb2.Offer]) -> None:
        if not done:
            done.append(offers[0].offer_id)
            fw.launch(offers[0], task_id, resources)

    return on_offers


def test_task_is_launched_run_reported_and_acknowledged(node: InProcessMaster) -> None:
    agent = ScriptedAgent(node.channel).start()
    assert agent.registered.wait(5)
    fw = ScriptedFramework(node.channel, on_offers=launched_on_first_offer("t-1")).start()
    assert fw.subscribed.wait(5)
    wait_for(lambda: fw.states_of("t-1")[-1:] == [common_pb2.TASK_FINISHED], 10, what="TASK_FINISHED")
    assert fw.states_of("t-1") == [common_pb2.TASK_STARTING, common_pb2.TASK_RUNNING, common_pb2.TASK_FINISHED]
    # the agent got RunTask only after TaskLaunched was committed, and every update was acknowledged
    assert [t.task_id for t in agent.run_tasks()] == ["t-1"]
    wait_for(lambda: len(agent.acked) == 3, 5, what="3 acks to the agent")
    # every update acknowledged by the framework: the task is complete and its resources are free again
    wait_for(lambda: (fw.framework_id, "t-1") not in node.state().tasks, 5, what="task to complete")
    assert node.state().completed_tasks[(fw.framework_id, "t-1")].state is TaskState.TASK_FINISHED
    node.events.flush()
    types = [r.type for r in node.events.list(limit=1000)]
    assert types.count("TaskStatusUpdated") == 3 and types.count("TaskStatusAcknowledged") == 3
    assert types.index("TaskLaunched") < types.index("TaskStatusUpdated")
    fw.close()
    agent.close()


def test_duplicate_status_update_is_recorded_once_and_acknowledged(node: InProcessMaster) -> None:
    agent = ScriptedAgent(node.channel, auto_run=False).start()
    assert agent.registered.wait(5)
    fw = ScriptedFramework(node.channel, on_offers=launched_on_first_offer("t-dup")).start()
    wait_for(lambda: agent.run_tasks(), 10, what="RunTask")
    from tessera.v1 import agent_pb2

    status = common_pb2.TaskStatus(task_id="t-dup", state=common_pb2.TASK_RUNNING, uuid="u-1",
                                   agent_id=agent.agent_id, source=common_pb2.SOURCE_AGENT)
    for _ in range(3):
        agent.outbox.put(agent_pb2.AgentMessage(status_update=agent_pb2.StatusUpdate(status=status)))
    # One stream is read in order and its proposals commit in order: once a later update is
    # acknowledged, every copy of u-1 has been decided.
    later = agent.send_status("t-dup", common_pb2.TASK_FINISHED)
    wait_for(lambda: {"u-1", later} <= agent.acked, 5, what="acks of u-1 and the later update")
    node.events.flush()
    updates = [r for r in node.events.list(limit=1000) if r.type == "TaskStatusUpdated"]
    assert len(updates) == 2  # u-1 once, then the later one
    fw.close()
    agent.close()


def test_silent_agent_becomes_unreachable_and_its_tasks_are_lost(node: InProcessMaster) -> None:
    agent = ScriptedAgent(node.channel, auto_run=False).start()
    assert agent.registered.wait(5)
    fw = ScriptedFramework(node.channel, on_offers=launched_on_first_offer("t-2")).start()
    wait_for(lambda: agent.run_tasks(), 10, what="RunTask")
    agent.send_status("t-2", common_pb2.TASK_RUNNING)
    wait_for(lambda: fw.states_of("t-2") == [common_pb2.TASK_RUNNING], 5, what="RUNNING")
    agent.stop_heartbeats()
    wait_for(lambda: node.state().agents[agent.agent_id].state is AgentState.AGENT_UNREACHABLE, 10,
             what="agent unreachable")
    wait_for(lambda: fw.states_of("t-2")[-1:] == [common_pb2.TASK_LOST], 5, what="TASK_LOST to the framework")
    fw.close()
    agent.close()


def test_reregistered_agent_brings_its_partition_aware_tasks_back(node: InProcessMaster) -> None:
    agent = ScriptedAgent(node.channel, auto_run=False).start()
    assert agent.registered.wait(5)
    fw = ScriptedFramework(node.channel, partition_aware=True, on_offers=launched_on_first_offer("t-3")).start()
    wait_for(lambda: agent.run_tasks(), 10, what="RunTask")
    agent.send_status("t-3", common_pb2.TASK_RUNNING)
    wait_for(lambda: fw.states_of("t-3") == [common_pb2.TASK_RUNNING], 5, what="RUNNING")
    agent.stop_heartbeats()
    wait_for(lambda: fw.states_of("t-3")[-1:] == [common_pb2.TASK_UNREACHABLE], 10, what="UNREACHABLE")
    agent.close()
    back = ScriptedAgent(node.channel, auto_run=False, agent_id=agent.agent_id).start(tasks=(
        common_pb2.TaskStatus(task_id="t-3", state=common_pb2.TASK_RUNNING, agent_id=agent.agent_id),))
    assert back.registered.wait(5)
    wait_for(lambda: fw.states_of("t-3")[-1:] == [common_pb2.TASK_RUNNING], 5, what="RUNNING again")
    assert node.state().agents[agent.agent_id].state is AgentState.AGENT_ACTIVE
    fw.close()
    back.close()


def test_bad_accepts_get_precise_codes_and_lose_no_resources(node: InProcessMaster) -> None:
    agent = ScriptedAgent(node.channel, resources="cpus:2;mem:1024").start()
    assert agent.registered.wait(5)
    fw = ScriptedFramework(node.channel).start()
    wait_for(lambda: fw.offers, 10, what="an offer")
    offer = next(iter(fw.offers.values()))

    def code(fn) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as info:
            fn()
        return info.value.code()

    # a task larger than the offer
    assert code(lambda: fw.launch(offer, "big", "cpus:64;mem:64")) == grpc.StatusCode.FAILED_PRECONDITION
    # an offer that does not exist
    ghost = common_pb2.Offer(offer_id="offer-nope", agent_id=offer.agent_id)
    assert code(lambda: fw.launch(ghost, "t-x")) in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
    # negative resources
    negative = [common_pb2.Resource(name="cpus", scalar=-1), common_pb2.Resource(name="mem", scalar=64)]
    assert code(lambda: fw.launch(offer, "neg", negative)) == grpc.StatusCode.INVALID_ARGUMENT
    nan = [common_pb2.Resource(name="cpus", scalar=float("nan"))]
    assert code(lambda: fw.launch(offer, "nan", nan)) == grpc.StatusCode.INVALID_ARGUMENT
    # a stale stream id
    stale = scheduler_pb2.CallHeader(framework_id=fw.framework_id, stream_id="stream-old", request_id="r")
    with pytest.raises(grpc.RpcError) as info:
        fw.stub.Decline(scheduler_pb2.DeclineRequest(header=stale, offer_ids=[offer.offer_id]), timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # none of that consumed the offer: it still launches
    fw.launch(offer, "ok-1")
    # and using it twice is refused
    assert code(lambda: fw.launch(offer, "ok-2")) == grpc.StatusCode.FAILED_PRECONDITION
    wait_for(lambda: fw.states_of("ok-1")[-1:] == [common_pb2.TASK_FINISHED], 10, what="ok-1 finished")
    assert not node.master.read_state(lambda s: __import__(
        "tessera.control_plane.core.invariants", fromlist=["check_invariants"]).check_invariants(s))
    fw.close()
    agent.close()


def test_framework_that_does_not_come_back_is_removed_after_its_failover_timeout(node: InProcessMaster) -> None:
    agent = ScriptedAgent(node.channel, auto_run=False).start()
    assert agent.registered.wait(5)
    fw = ScriptedFramework(node.channel, failover_timeout=0.5, on_offers=launched_on_first_offer("t-4")).start()
    wait_for(lambda: agent.run_tasks(), 10, what="RunTask")
    agent.send_status("t-4", common_pb2.TASK_RUNNING)
    wait_for(lambda: fw.states_of("t-4") == [common_pb2.TASK_RUNNING], 5, what="RUNNING")
    fw.close()
    # the master kills the task of the removed framework on the agent
    wait_for(lambda: any(m.WhichOneof("kind") == "kill_task" for m in agent.received), 10, what="KillTask")
    fid = fw.framework_id
    from tessera.control_plane.core.values import FrameworkState

    assert node.state().frameworks[fid].state is FrameworkState.FRAMEWORK_REMOVED
    agent.close()


def test_framework_failover_within_timeout_keeps_tasks_and_gets_updates(node: InProcessMaster) -> None:
    agent = ScriptedAgent(node.channel, auto_run=False).start()
    assert agent.registered.wait(5)
    fw = ScriptedFramework(node.channel, failover_timeout=30, on_offers=launched_on_first_offer("t-5")).start()
    wait_for(lambda: agent.run_tasks(), 10, what="RunTask")
    fw.close()
    wait_for(lambda: fw.ended.is_set(), 5)
    agent.send_status("t-5", common_pb2.TASK_RUNNING)  # while the framework is away
    again = ScriptedFramework(node.channel, framework_id=fw.framework_id).start()
    assert again.subscribed.wait(5)
    wait_for(lambda: again.states_of("t-5")[-1:] == [common_pb2.TASK_RUNNING], 10, what="update after failover")
    assert node.state().tasks[(fw.framework_id, "t-5")].state is TaskState.TASK_RUNNING
    again.close()
    agent.close()


def test_agent_that_reconnects_within_its_timeout_keeps_its_tasks() -> None:
    # timeouts long enough that a loaded machine cannot stretch the reconnect past them
    with InProcessMaster(settings=replace(FAST, agent_timeout=3.0, reregistration_timeout=3.0)) as node:
        _reconnect_within_timeout(node)


def _reconnect_within_timeout(node: InProcessMaster) -> None:
    agent = ScriptedAgent(node.channel, auto_run=False).start()
    assert agent.registered.wait(5)
    fw = ScriptedFramework(node.channel, on_offers=launched_on_first_offer("t-6")).start()
    wait_for(lambda: agent.run_tasks(), 10, what="RunTask")
    agent.send_status("t-6", common_pb2.TASK_RUNNING)
    wait_for(lambda: fw.states_of("t-6") == [common_pb2.TASK_RUNNING], 5, what="RUNNING")
    agent.close()  # the agent restarts...
    wait_for(lambda: agent.agent_id not in node.duties.agents, 5, what="the stream to close")
    back = ScriptedAgent(node.channel, auto_run=False, agent_id=agent.agent_id).start(tasks=(
        common_pb2.TaskStatus(task_id="t-6", state=common_pb2.TASK_RUNNING, agent_id=agent.agent_id),))
    assert back.registered.wait(5)  # ...and is back before agent_timeout
    time.sleep(3.5)  # longer than agent_timeout: heartbeats keep it reachable
    assert node.state().agents[agent.agent_id].state is AgentState.AGENT_ACTIVE
    assert node.state().tasks[(fw.framework_id, "t-6")].state is TaskState.TASK_RUNNING
    assert fw.states_of("t-6") == [common_pb2.TASK_RUNNING]
    fw.close()
    back.close()


def test_reregistering_agent_is_told_to_kill_tasks_the_master_does_not_run(node: InProcessMaster) -> None:
    agent = ScriptedAgent(node.channel, auto_run=False).start()
    assert agent.registered.wait(5)
    agent.close()
    back = ScriptedAgent(node.channel, auto_run=False, agent_id=agent.agent_id).start(tasks=(
        common_pb2.TaskStatus(task_id="ghost", state=common_pb2.TASK_RUNNING, agent_id=agent.agent_id),))
    assert back.registered.wait(5)
    wait_for(lambda: [m.kill_task.task_id for m in back.received if m.WhichOneof("kind") == "kill_task"] == ["ghost"],
             5, what="KillTask for the orphan")
    back.close()


def test_unknown_agent_id_must_register_anew(node: InProcessMaster) -> None:
    ghost = ScriptedAgent(node.channel, agent_id="agent-never-registered").start()
    assert ghost.ended.wait(5)
    assert ghost.error is not None and ghost.error.code() == grpc.StatusCode.NOT_FOUND


def test_a_retried_accept_with_the_same_request_id_succeeds_once(node: InProcessMaster) -> None:
    """A framework that lost the reply (leader killed) retries with the same request id: the master
    answers from the recorded result instead of refusing the now-used offer."""
    agent = ScriptedAgent(node.channel).start()
    assert agent.registered.wait(5)
    fw = ScriptedFramework(node.channel).start()
    wait_for(lambda: fw.offers, 10, what="an offer")
    offer = next(iter(fw.offers.values()))
    task = common_pb2.TaskInfo(task_id="once", name="once", agent_id=offer.agent_id,
                               command=common_pb2.CommandInfo(shell=True, value="true"))
    task.resources.extend([common_pb2.Resource(name="cpus", scalar=0.5), common_pb2.Resource(name="mem", scalar=64)])
    header = scheduler_pb2.CallHeader(framework_id=fw.framework_id, stream_id=fw.stream_id, request_id="accept-1")
    request = scheduler_pb2.AcceptRequest(header=header, offer_ids=[offer.offer_id], operations=[
        scheduler_pb2.Operation(type=scheduler_pb2.Operation.LAUNCH, tasks=[task])])
    fw.stub.Accept(request, timeout=5)
    fw.stub.Accept(request, timeout=5)  # the retry: no FAILED_PRECONDITION
    node.events.flush()
    assert sum(1 for r in node.events.list(limit=1000) if r.type == "TaskLaunched") == 1
    fw.close()
    agent.close()
