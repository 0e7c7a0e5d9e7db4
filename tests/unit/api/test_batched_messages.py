"""Batched messages over real gRPC against one in-process master: agents with the BATCHED_MESSAGES
capability get RunTasks together and report many updates in one message, frameworks with BATCHED_UPDATES
get updates together and acknowledge many in one call. Every update is still recorded once by its uuid,
acknowledged only after its commit, and one that cannot be recorded never holds back the others."""

from __future__ import annotations

import grpc
import pytest

from tessera.v1 import common_pb2, scheduler_pb2
from tests.support.cluster import wait_for
from tests.support.inprocess import InProcessMaster
from tests.support.scripted import ScriptedAgent, ScriptedFramework

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def node() -> InProcessMaster:
    with InProcessMaster() as m:
        yield m


@pytest.fixture
def offering_node() -> InProcessMaster:
    """A master that offers what a batch of updates frees in the batch's entry (`offers_with_frees`)."""
    from dataclasses import replace

    from tests.support.inprocess import FAST

    with InProcessMaster(settings=replace(FAST, offers_with_frees=True)) as m:
        yield m


def launch_many(fw: ScriptedFramework, offer: common_pb2.Offer, task_ids: list[str]) -> None:
    from tessera.control_plane.codec import resources_to_proto
    from tessera.control_plane.core.resources import Resources

    tasks = []
    for task_id in task_ids:
        task = common_pb2.TaskInfo(task_id=task_id, name=task_id, agent_id=offer.agent_id,
                                   command=common_pb2.CommandInfo(shell=True, value="true"))
        resources_to_proto(Resources.parse("cpus:0.1;mem:16"), task.resources)
        tasks.append(task)
    fw.stub.Accept(scheduler_pb2.AcceptRequest(header=fw.header(), offer_ids=[offer.offer_id], operations=[
        scheduler_pb2.Operation(type=scheduler_pb2.Operation.LAUNCH, tasks=tasks)]), timeout=5)


def started(node: InProcessMaster, task_ids: list[str], *, agent_batched: bool = True,
            framework_batched: bool = True) -> tuple[ScriptedAgent, ScriptedFramework]:
    agent = ScriptedAgent(node.channel, auto_run=False,
                          capabilities=("BATCHED_MESSAGES",) if agent_batched else ()).start()
    assert agent.registered.wait(5)
    fw = ScriptedFramework(node.channel, auto_ack=False,
                           capabilities=("BATCHED_UPDATES",) if framework_batched else ()).start()
    wait_for(lambda: fw.offers, 10, what="an offer")
    launch_many(fw, next(iter(fw.offers.values())), task_ids)
    wait_for(lambda: len(agent.run_tasks()) == len(task_ids), 10, what="the RunTasks")
    return agent, fw


def recorded(node: InProcessMaster, kind: str) -> list:
    node.events.flush()
    return [r for r in node.events.list(limit=10_000) if r.type == kind]


def test_batched_agent_gets_run_tasks_together_and_its_updates_commit_as_one_entry(node: InProcessMaster) -> None:
    ids = ["b-1", "b-2", "b-3"]
    agent, fw = started(node, ids)
    kinds = [m.WhichOneof("kind") for m in agent.received]
    assert "run_tasks" in kinds and "run_task" not in kinds
    batch = [agent.status(t, common_pb2.TASK_RUNNING) for t in ids]
    agent.send_batch(batch)
    wait_for(lambda: {u.status.uuid for u in batch} <= agent.acked, 5, what="acks of the batch")
    assert "acks" in [m.WhichOneof("kind") for m in agent.received]
    updates = recorded(node, "TaskStatusUpdated")
    assert sorted(r.task_id for r in updates) == ids
    assert len({(r.raft_index, r.request_id) for r in updates}) == 1  # one log entry
    # the framework that asked for batched updates got them in one event, in commit order
    wait_for(lambda: len(fw.updates) == 3, 5, what="updates to the framework")
    assert [u.task_id for u in fw.updates] == ids
    assert any(e.WhichOneof("kind") == "updates" for e in fw.events)
    fw.close()
    agent.close()


def test_updates_that_cannot_be_recorded_are_acknowledged_and_do_not_hold_back_the_others(
        node: InProcessMaster) -> None:
    agent, fw = started(node, ["c-1", "c-2"])
    first = agent.status("c-1", common_pb2.TASK_RUNNING)
    agent.send_batch([first])
    wait_for(lambda: first.status.uuid in agent.acked, 5, what="ack of the first update")
    unknown = agent.status("no-such-task", common_pb2.TASK_RUNNING)
    good = agent.status("c-2", common_pb2.TASK_RUNNING)
    agent.send_batch([first, unknown, good])  # a retry, an update nobody can record, a new one
    wait_for(lambda: {unknown.status.uuid, good.status.uuid} <= agent.acked, 5, what="acks of the second batch")
    updates = recorded(node, "TaskStatusUpdated")
    assert sorted((r.task_id, r.payload.count(first.status.uuid)) for r in updates) == [("c-1", 1), ("c-2", 0)]
    assert node.state().tasks[(fw.framework_id, "c-2")].state.name == "TASK_RUNNING"
    fw.close()
    agent.close()


def test_a_tasks_updates_in_one_message_are_decided_in_order(node: InProcessMaster) -> None:
    """RUNNING then STARTING of one task: each passes `decide` alone (STAGING may become either), but they
    are decided in order, against the state the earlier ones leave (`core.decide.decide_each`): RUNNING
    is recorded, STARTING (RUNNING cannot go back to STARTING) refused at once and acknowledged, and no
    entry has to be rejected and committed again update by update."""
    agent, fw = started(node, ["d-1"])
    running = agent.status("d-1", common_pb2.TASK_RUNNING)
    starting = agent.status("d-1", common_pb2.TASK_STARTING)
    agent.send_batch([running, starting])
    wait_for(lambda: {running.status.uuid, starting.status.uuid} <= agent.acked, 10, what="both acknowledged")
    updates = recorded(node, "TaskStatusUpdated")
    assert [(r.task_id, running.status.uuid in r.payload) for r in updates] == [("d-1", True)]
    assert not recorded(node, "Rejected")
    assert node.state().tasks[(fw.framework_id, "d-1")].state.name == "TASK_RUNNING"
    fw.close()
    agent.close()


def test_a_tasks_whole_stream_in_one_message_is_recorded_in_one_entry(node: InProcessMaster) -> None:
    """STARTING, RUNNING and FINISHED of a task in one message (an agent told `ordered_streams` sends a
    task's whole pending stream): FINISHED is legal only after the two before it, and all three are
    recorded, in order, in one entry, and acknowledged."""
    agent, fw = started(node, ["w-1", "w-2"])
    assert agent.registered_message.ordered_streams
    streams = [agent.status(t, s) for t in ("w-1", "w-2")
               for s in (common_pb2.TASK_STARTING, common_pb2.TASK_RUNNING, common_pb2.TASK_FINISHED)]
    agent.send_batch(streams)
    wait_for(lambda: {u.status.uuid for u in streams} <= agent.acked, 10, what="all acknowledged")
    updates = recorded(node, "TaskStatusUpdated")
    assert [(r.task_id, r.payload.count('"TASK_FINISHED"') == 1) for r in updates][-1] == ("w-2", True)
    assert len({r.raft_index for r in updates}) == 1
    assert [r.task_id for r in updates] == ["w-1"] * 3 + ["w-2"] * 3
    assert node.state().tasks[(fw.framework_id, "w-1")].state.name == "TASK_FINISHED"
    fw.close()
    agent.close()


def test_agent_without_the_capability_gets_single_messages(node: InProcessMaster) -> None:
    agent, fw = started(node, ["e-1", "e-2"], agent_batched=False, framework_batched=False)
    for task_id in ("e-1", "e-2"):
        agent.send_status(task_id, common_pb2.TASK_RUNNING)
    wait_for(lambda: len(agent.acked) == 2 and len(fw.updates) == 2, 5, what="acks and updates")
    assert {m.WhichOneof("kind") for m in agent.received} <= {"registered", "run_task", "ack", "heartbeat_ack"}
    assert {e.WhichOneof("kind") for e in fw.events} <= {"subscribed", "offers", "update", "heartbeat", "rescind"}
    fw.close()
    agent.close()


def test_many_acknowledgements_in_one_call(node: InProcessMaster) -> None:
    ids = ["f-1", "f-2", "f-3"]
    agent, fw = started(node, ids)
    agent.send_batch([agent.status(t, common_pb2.TASK_RUNNING) for t in ids])
    wait_for(lambda: len(fw.updates) == 3, 5, what="updates to the framework")
    subscribed = next(e.subscribed for e in fw.events if e.WhichOneof("kind") == "subscribed")
    assert "BATCHED_ACKNOWLEDGEMENTS" in subscribed.capabilities
    acks = [scheduler_pb2.Acknowledgement(task_id=u.task_id, uuid=u.uuid) for u in fw.updates]
    unknown = scheduler_pb2.Acknowledgement(task_id="f-1", uuid="never-sent")
    response = fw.stub.Acknowledge(scheduler_pb2.AcknowledgeRequest(header=fw.header(), updates=[*acks, unknown]),
                                   timeout=5)
    assert [(a.task_id, a.uuid) for a in response.refused] == [("f-1", "never-sent")]
    assert sorted(r.task_id for r in recorded(node, "TaskStatusAcknowledged")) == ids
    assert all(not node.state().tasks[(fw.framework_id, t)].unacknowledged for t in ids)
    # sent again: nothing changes, nothing is refused
    again = fw.stub.Acknowledge(scheduler_pb2.AcknowledgeRequest(header=fw.header(), updates=acks), timeout=5)
    assert list(again.refused) == [] and len(recorded(node, "TaskStatusAcknowledged")) == 3
    # on a stream that is not the framework's current one the whole call is refused
    stale = scheduler_pb2.CallHeader(framework_id=fw.framework_id, stream_id="stream-old", request_id="r")
    with pytest.raises(grpc.RpcError) as err:
        fw.stub.Acknowledge(scheduler_pb2.AcknowledgeRequest(header=stale, updates=acks), timeout=5)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    fw.close()
    agent.close()


def test_sdk_framework_and_emulated_agents_launch_many_tasks_with_batched_messages(node: InProcessMaster) -> None:
    """End to end: emulated agents with BATCHED_MESSAGES, the SDK's driver (batched updates and
    acknowledgements): every task reaches TASK_RUNNING, each update is recorded and acknowledged once,
    and the batches really are batches (fewer log entries than updates)."""
    import threading

    from tessera.agent.emulated import EmulatedAgents, EmulatedConfig
    from tessera.sdk import FrameworkInfo as SdkFrameworkInfo
    from tessera.sdk import Offer, Resources, Scheduler, SchedulerDriver, TaskInfo, TaskState, TaskStatus

    total = 40
    need = Resources.of(cpus=0.1, mem=16)
    running: set[str] = set()
    waiting = list(range(total))
    done = threading.Event()

    class Launcher(Scheduler):
        def offers(self, driver: SchedulerDriver, offers: list[Offer]) -> None:
            for offer in offers:
                left, tasks = offer.resources, []
                while waiting and left.contains(need):
                    left = left - need
                    tasks.append(TaskInfo(task_id=f"g-{waiting.pop()}", name="g", resources=need, command="true"))
                if tasks:
                    driver.launch(offer, tasks)

        def update(self, driver: SchedulerDriver, status: TaskStatus) -> None:
            if status.state is TaskState.TASK_RUNNING:
                running.add(status.task_id)
                if len(running) == total:
                    done.set()

    config = EmulatedConfig(masters=(node.grpc_address,), count=2, resources="cpus:2;mem:4096", task_duration=3600,
                            seed=3, batch_messages=True)
    with EmulatedAgents(config) as agents:
        agents.wait_registered(timeout=30)
        driver = SchedulerDriver(Launcher(), SdkFrameworkInfo(name="batched"), [node.grpc_address])
        with driver:
            assert done.wait(30), f"{len(running)} of {total} tasks running"
            wait_for(lambda: len(recorded(node, "TaskStatusAcknowledged")) == 2 * total, 10,
                     what="every update acknowledged")
        stats = agents.stats()
    updates = recorded(node, "TaskStatusUpdated")
    uuids = [r.payload for r in updates]
    assert len(updates) == 2 * total and len(set(uuids)) == len(uuids)  # STARTING and RUNNING, each once
    assert len({(r.raft_index, r.request_id) for r in updates}) < len(updates)
    acks = recorded(node, "TaskStatusAcknowledged")
    assert len({(r.raft_index, r.request_id) for r in acks}) < len(acks)
    assert stats.updates_acked == 2 * total and stats.tasks_launched == total



def test_an_entry_that_ends_tasks_carries_the_offers_of_what_they_free(offering_node: InProcessMaster) -> None:
    """The leader allocates what a batch's TASK_FINISHED frees into the batch's own entry
    (`LeaderDuties.offers_for_ended`): the framework is offered it with that commit, not one later."""
    node = offering_node
    agent, fw = started(node, ["f-1"])
    batch = [agent.status("f-1", s) for s in (common_pb2.TASK_STARTING, common_pb2.TASK_RUNNING,
                                                common_pb2.TASK_FINISHED)]
    agent.send_batch(batch)
    wait_for(lambda: {u.status.uuid for u in batch} <= agent.acked, 10, what="all acknowledged")
    finished = [r for r in recorded(node, "TaskStatusUpdated") if '"TASK_FINISHED"' in r.payload]
    assert len(finished) == 1
    offered = [r for r in recorded(node, "OfferIssued") if r.raft_index == finished[0].raft_index]
    assert [(r.framework_id, r.agent_id) for r in offered] == [(fw.framework_id, agent.agent_id)]
    fw.close()
    agent.close()


def test_a_single_update_that_ends_a_task_carries_the_offers_of_what_it_frees(offering_node: InProcessMaster) -> None:
    node = offering_node
    agent, fw = started(node, ["s-1"])
    for state in (common_pb2.TASK_RUNNING, common_pb2.TASK_FINISHED):
        agent.send_status("s-1", state)  # one `status_update` message each
        wait_for(lambda s=state: fw.states_of("s-1")[-1:] == [s], 10, what=f"state {state}")
    finished = [r for r in recorded(node, "TaskStatusUpdated") if '"TASK_FINISHED"' in r.payload]
    offered = [r for r in recorded(node, "OfferIssued") if r.raft_index == finished[0].raft_index]
    assert [(r.framework_id, r.agent_id) for r in offered] == [(fw.framework_id, agent.agent_id)]
    fw.close()
    agent.close()


def test_by_default_the_offers_of_what_a_batch_frees_wait_for_the_allocation_round(node: InProcessMaster) -> None:
    agent, fw = started(node, ["n-1"])
    batch = [agent.status("n-1", s) for s in (common_pb2.TASK_RUNNING, common_pb2.TASK_FINISHED)]
    agent.send_batch(batch)
    wait_for(lambda: {u.status.uuid for u in batch} <= agent.acked, 10, what="all acknowledged")
    finished = [r for r in recorded(node, "TaskStatusUpdated") if '"TASK_FINISHED"' in r.payload]
    assert not [r for r in recorded(node, "OfferIssued") if r.raft_index == finished[0].raft_index]
    fw.close()
    agent.close()
