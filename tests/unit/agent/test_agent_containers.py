"""Container tasks in the agent loop, against a fake master and the image store's twin: no container
support, a failed pull, a kill while the image is pulled, the pull off the loop (the agent keeps
heartbeating meanwhile), and what the agent announces. (runc itself: tests/integration.)"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tessera.agent.executor.images import FakeImageStore, Image, PullFailure
from tessera.control_plane.core.values import ContainerSupport
from tessera.v1 import common_pb2
from tests.unit.agent.conftest import AgentFactory, RunningAgent
from tests.unit.agent.fake_master import FakeMaster

Start = Callable[..., RunningAgent]
SUPPORT = ContainerSupport(runtime="runc 1.1.5", network="cni bridge tessera0 10.213.64.0/24")


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Start]:
    factory = AgentFactory(tmp_path)
    yield factory
    factory.stop_all()


def container_task(task_id: str, image: str) -> common_pb2.TaskInfo:
    return common_pb2.TaskInfo(
        task_id=task_id, framework_id="fw-1", command=common_pb2.CommandInfo(shell=True, value="true"),
        resources=[common_pb2.Resource(name="cpus", scalar=0.1), common_pb2.Resource(name="mem", scalar=32)],
        container=common_pb2.ContainerInfo(image=image))


def registered(master: FakeMaster) -> Callable[[], bool]:
    return lambda: len(master.streams) >= 1 and master.heartbeats > 0


def final_status(master: FakeMaster, task_id: str) -> common_pb2.TaskStatus:
    return next(u.status for u in reversed(master.updates) if u.status.task_id == task_id)


class GatedStore(FakeImageStore):
    """The twin, with pulls that wait until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.waiting = threading.Event()

    def pull(self, reference: str) -> Image:
        self.waiting.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return super().pull(reference)


def test_an_agent_without_container_support_fails_the_task_saying_why(fake_master: FakeMaster,
                                                                      start_agent: Start) -> None:
    start_agent([fake_master.address], containers=ContainerSupport(unavailable="runc not found on PATH"))
    fake_master.wait_for(registered(fake_master), what="registration")
    fake_master.run_task(container_task("c1", "busybox:1.35"))
    fake_master.wait_for(lambda: fake_master.states_of("c1"), what="a status")
    status = final_status(fake_master, "c1")
    assert fake_master.states_of("c1") == ["TASK_FAILED"]
    assert status.reason == "REASON_CONTAINER_LAUNCH_FAILED"
    assert "cannot run container tasks: runc not found on PATH" in status.message
    # the agent keeps serving command tasks
    fake_master.run_task(common_pb2.TaskInfo(
        task_id="cmd", framework_id="fw-1", command=common_pb2.CommandInfo(shell=True, value="true"),
        resources=[common_pb2.Resource(name="cpus", scalar=0.1), common_pb2.Resource(name="mem", scalar=32)]))
    fake_master.wait_for(lambda: "TASK_FINISHED" in fake_master.states_of("cmd"), what="the command task")


def test_the_agent_announces_its_container_support(fake_master: FakeMaster, start_agent: Start) -> None:
    start_agent([fake_master.address], images=FakeImageStore(), containers=SUPPORT)
    fake_master.wait_for(registered(fake_master), what="registration")
    info = fake_master.registers[0].info
    assert info.containers.runtime == "runc 1.1.5" and "tessera0" in info.containers.network


def test_a_failed_pull_fails_the_task_with_the_stores_reason(fake_master: FakeMaster, start_agent: Start) -> None:
    store = FakeImageStore()
    store.fail("127.0.0.1:5000/tools/busybox:9.99", PullFailure.NOT_FOUND, "manifest unknown")
    start_agent([fake_master.address], images=store, containers=SUPPORT)
    fake_master.wait_for(registered(fake_master), what="registration")
    fake_master.run_task(container_task("c1", "127.0.0.1:5000/tools/busybox:9.99"))
    fake_master.wait_for(lambda: fake_master.states_of("c1"), what="a status")
    assert fake_master.states_of("c1") == ["TASK_FAILED"]
    status = final_status(fake_master, "c1")
    assert status.reason == "REASON_CONTAINER_LAUNCH_FAILED" and "manifest unknown" in status.message
    assert store.pulls == {"127.0.0.1:5000/tools/busybox:9.99": 1}


def test_the_pull_runs_off_the_loop_and_a_kill_meanwhile_ends_the_task_killed(fake_master: FakeMaster,
                                                                             start_agent: Start) -> None:
    store = GatedStore()
    store.add("127.0.0.1:5000/tools/busybox:1.35")
    agent = start_agent([fake_master.address], images=store, containers=SUPPORT)
    fake_master.wait_for(registered(fake_master), what="registration")
    fake_master.run_task(container_task("slow", "127.0.0.1:5000/tools/busybox:1.35"))
    assert store.waiting.wait(10), "the pull did not start"
    beats = fake_master.heartbeats
    fake_master.wait_for(lambda: fake_master.heartbeats >= beats + 2, what="heartbeats while the pull waits")
    fake_master.kill_task("slow")
    task = next(t for t in list(agent.agent.tasks) if t.task_id == "slow")
    fake_master.wait_for(lambda: task.kill_requested, what="the kill recorded")
    store.gate.set()
    fake_master.wait_for(lambda: "TASK_KILLED" in fake_master.states_of("slow"), what="killed after the pull")
    assert fake_master.states_of("slow") == ["TASK_KILLED"]
    assert "while its image was pulled" in final_status(fake_master, "slow").message
