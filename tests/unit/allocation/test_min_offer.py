"""`FrameworkInfo.min_offer` (Mesos' per-framework min_allocatable_resources): the allocator makes a framework
no offer with less of a kind it names, so a framework whose tasks need cpus and memory is never offered an
agent's leftover memory alone (an offer it could only decline, whose refuse filter would then hide the
agent's next freed cpus until a revive)."""

from __future__ import annotations

import pytest

from tessera.control_plane.allocation import (
    AgentSnapshot,
    AllocationSnapshot,
    FrameworkSnapshot,
    allocate,
)
from tessera.control_plane.allocation.agent_view import Proposal
from tessera.control_plane.allocation.allocator import holds_minimum
from tessera.control_plane.codec import from_proto
from tessera.control_plane.core import commands as c
from tessera.control_plane.core.context import Context, sequential_ids
from tessera.control_plane.core.decide import decide
from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.resources import EMPTY, Resources
from tessera.control_plane.core.state import ClusterState
from tessera.control_plane.core.values import (
    CommandInfo,
    FrameworkInfo,
    Offer,
    TaskInfo,
    TaskState,
    TaskStatus,
)
from tessera.v1 import common_pb2

from .cluster import Cluster, allocate_both_ways

ONE_TASK = Resources.parse("cpus:1;mem:32")


def subscribe(cl: Cluster, name: str, min_offer: Resources = EMPTY, role: str = "web") -> str:
    info = FrameworkInfo(name=name, principal="p", roles=(role,), failover_timeout_seconds=60, min_offer=min_offer)
    result = cl.run(c.SubscribeFramework(info))
    return result.events[-1][1].framework_id  # type: ignore[union-attr]


def launch(cl: Cluster, offer: Offer, tasks: int) -> list[str]:
    """The framework packs `tasks` one-task-sized tasks into the offer; the rest of it goes back."""
    ids = []
    for _ in range(tasks):
        cl.tasks += 1
        ids.append(f"task-{cl.tasks}")
    infos = tuple(TaskInfo(task_id=t, name="t", resources=ONE_TASK, command=CommandInfo(value="true")) for t in ids)
    cl.run(c.Accept(offer.framework_id, (offer.offer_id,), (c.Operation("LAUNCH", tasks=infos),)))
    return ids


def finish(cl: Cluster, framework_id: str, task_id: str, agent_id: str) -> None:
    cl.run(c.UpdateStatus(TaskStatus(task_id=task_id, state=TaskState.TASK_FINISHED, agent_id=agent_id,
                                     framework_id=framework_id, uuid=f"u-{task_id}")))


def test_an_agents_leftover_memory_alone_is_not_offered_to_a_framework_that_needs_cpus_too() -> None:
    cl = Cluster()
    agent = cl.agent("cpus:2;mem:4096")
    fid = subscribe(cl, "batch", ONE_TASK)
    (offer,) = cl.round()
    ran = launch(cl, offer, 2)  # both cpus taken, 4032 MiB left over
    assert cl.snapshot().agents[0].free == Resources.parse("mem:4032")
    assert cl.round() == ()  # nothing it could use: no offer, nothing to decline, no filter
    finish(cl, fid, ran[0], agent)
    (again,) = cl.round()  # the freed cpu comes with memory: offered at once
    assert again.resources == Resources.parse("cpus:1;mem:4064")


def test_without_a_minimum_the_leftover_memory_is_offered_alone_as_before() -> None:
    cl = Cluster()
    cl.agent("cpus:2;mem:4096")
    subscribe(cl, "plain")
    (offer,) = cl.round()
    launch(cl, offer, 2)
    (leftover,) = cl.round()
    assert leftover.resources == Resources.parse("mem:4032")


def test_what_one_framework_cannot_use_goes_to_the_next_in_line() -> None:
    agents = (AgentSnapshot("a0", "h0", (), Resources.parse("mem:1024")),
              AgentSnapshot("a1", "h1", (), Resources.parse("cpus:1;mem:1024")))
    frameworks = (FrameworkSnapshot("f1", ("web",), min_offer=ONE_TASK), FrameworkSnapshot("f2", ("web",)))
    snapshot = AllocationSnapshot(agents=agents, frameworks=frameworks, roles={},
                                  total=Resources.parse("cpus:1;mem:2048"))
    offers = allocate(snapshot, new_id=sequential_ids("o"), now=1.0)
    assert sorted((o.agent_id, o.framework_id) for o in offers) == [("a0", "f2"), ("a1", "f1")]


def _hand_built(free: str, min_offer: str) -> AllocationSnapshot:
    agents = tuple(AgentSnapshot(f"a{i}", f"h{i}", (), Resources.parse(free)) for i in range(3))
    fw = FrameworkSnapshot("f1", ("web",), min_offer=Resources.parse(min_offer) if min_offer else EMPTY)
    return AllocationSnapshot(agents=agents, frameworks=(fw,), roles={}, total=Resources.parse("cpus:30;mem:30720"))


@pytest.mark.parametrize(("free", "min_offer", "offered"), [
    ("cpus:1;mem:1024", "cpus:1;mem:32", 3),
    ("cpus:0.5;mem:1024", "cpus:1;mem:32", 0),
    ("mem:1024", "cpus:1;mem:32", 0),
    ("mem:1024", "", 3),
    ("cpus:4;mem:16", "cpus:1;mem:32", 0),
    ("cpus:4;mem:16", "cpus:1", 3),
])
def test_offers_hold_the_minimum_in_every_kind_named(free: str, min_offer: str, offered: int) -> None:
    snapshot = _hand_built(free, min_offer)
    assert len(allocate_both_ways(snapshot)) == offered


def test_holds_minimum_counts_reserved_and_unreserved_alike() -> None:
    p = Proposal({"cpus": 500, "mem": 64_000}, {"cpus": 500}, {}, (), None)
    assert holds_minimum(p, {"cpus": 1000, "mem": 32_000})
    assert not holds_minimum(p, {"cpus": 1001})
    assert not holds_minimum(p, {"disk": 1})
    assert holds_minimum(p, {})


def test_the_snapshot_carries_the_declared_minimum() -> None:
    cl = Cluster()
    cl.agent("cpus:2;mem:4096")
    subscribe(cl, "batch", ONE_TASK)
    (fw,) = cl.snapshot().frameworks
    assert fw.min_offer == ONE_TASK


@pytest.mark.parametrize("bad", [Resources.parse("ports:[1-2]"), Resources.of(role="web", cpus=1)])
def test_the_core_refuses_a_minimum_with_ranges_or_reservations(bad: Resources) -> None:
    info = FrameworkInfo(name="f", principal="p", roles=("web",), min_offer=bad)
    ctx = Context(now=1.0, term=1, leader="m1", new_id=sequential_ids())
    with pytest.raises(InvalidRequest, match="info.min_offer"):
        decide(ClusterState(), c.SubscribeFramework(info), ctx)


def test_the_wire_field_reaches_the_core_value() -> None:
    msg = common_pb2.FrameworkInfo(name="f", roles=["web"], min_offer=[common_pb2.Resource(name="cpus", scalar=1),
                                                                       common_pb2.Resource(name="mem", scalar=32)])
    assert from_proto(msg, FrameworkInfo).min_offer == ONE_TASK
