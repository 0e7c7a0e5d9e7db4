"""`FrameworkInfo.max_tasks_in_flight`: the allocator offers a framework at most K - (its unfinished tasks
+ its live offers) new offers, so keeping K tasks in flight needs no Suppress/Revive per freed slot."""

from __future__ import annotations

import pytest

from tessera.control_plane.allocation import (
    AgentSnapshot,
    AllocationSnapshot,
    FrameworkSnapshot,
)
from tessera.control_plane.codec import from_proto
from tessera.control_plane.core import commands as c
from tessera.control_plane.core.context import Context, sequential_ids
from tessera.control_plane.core.decide import decide
from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.state import ClusterState
from tessera.control_plane.core.values import FrameworkInfo, TaskState, TaskStatus
from tessera.v1 import common_pb2

from .cluster import Cluster, allocate_both_ways


def limited(cl: Cluster, limit: int, role: str = "web", name: str = "limited") -> str:
    info = FrameworkInfo(name=name, principal="p", roles=(role,), failover_timeout_seconds=60,
                         max_tasks_in_flight=limit)
    result = cl.run(c.SubscribeFramework(info))
    return result.events[-1][1].framework_id  # type: ignore[union-attr]


def finish(cl: Cluster, framework_id: str) -> None:
    """One running task of the framework finishes (the oldest by task id)."""
    key = min(k for k, t in cl.state.tasks.items() if k.framework_id == framework_id and not t.terminal)
    record = cl.state.tasks[key]
    cl.run(c.UpdateStatus(TaskStatus(task_id=key.task_id, state=TaskState.TASK_FINISHED, agent_id=record.agent_id,
                                     framework_id=framework_id, uuid=f"u-{key.task_id}")))


def test_a_framework_is_offered_no_more_than_its_free_slots_and_the_rest_goes_to_others() -> None:
    cl = Cluster()
    for i in range(6):
        cl.agent("cpus:2;mem:2048", hostname=f"h{i}")
    fid = limited(cl, 2)
    other = cl.framework("web", name="unlimited")
    offers = cl.round()
    assert sum(o.framework_id == fid for o in offers) == 2
    assert sum(o.framework_id == other for o in offers) == 4


def test_at_its_limit_a_framework_gets_nothing_until_a_task_ends_then_one_offer_per_freed_slot() -> None:
    cl = Cluster()
    for i in range(6):
        cl.agent("cpus:1;mem:1024", hostname=f"h{i}")
    fid = limited(cl, 3)
    assert len(cl.round()) == 3
    cl.use_all()
    assert sum(not t.terminal for t in cl.state.tasks.values()) == 3
    assert cl.round() == ()  # three agents are free, but the framework is at its limit: no Suppress needed
    finish(cl, fid)
    offers = cl.round()
    assert [o.framework_id for o in offers] == [fid]  # exactly one slot freed, no Revive needed
    assert cl.round() == ()  # the outstanding offer holds the slot
    cl.use_all()
    assert cl.round() == ()


def test_zero_means_no_limit() -> None:
    cl = Cluster()
    for i in range(4):
        cl.agent("cpus:1;mem:1024", hostname=f"h{i}")
    limited(cl, 0)
    assert len(cl.round()) == 4


def _hand_built(max_in_flight: int, in_flight: int) -> AllocationSnapshot:
    agents = tuple(AgentSnapshot(f"a{i}", f"h{i}", (), Resources.parse("cpus:1;mem:1024")) for i in range(5))
    fw = FrameworkSnapshot("f1", ("web",), max_tasks_in_flight=max_in_flight, in_flight=in_flight)
    return AllocationSnapshot(agents=agents, frameworks=(fw,), roles={},
                              total=Resources.parse("cpus:5;mem:5120"))


@pytest.mark.parametrize(("limit", "in_flight", "expected"), [(0, 9, 5), (3, 0, 3), (3, 1, 2), (3, 3, 0), (3, 7, 0)])
def test_slots_are_the_limit_minus_tasks_and_offers_in_flight(limit: int, in_flight: int, expected: int) -> None:
    snapshot = _hand_built(limit, in_flight)
    assert len(allocate_both_ways(snapshot)) == expected


def test_the_snapshot_counts_unfinished_tasks_and_live_offers_per_framework() -> None:
    cl = Cluster()
    for i in range(4):
        cl.agent("cpus:1;mem:1024", hostname=f"h{i}")
    fid = limited(cl, 5)
    cl.round()
    offers = sorted(cl.state.offers.values(), key=lambda o: o.offer_id)
    cl.use(offers[0])
    (fw,) = cl.snapshot().frameworks
    assert (fw.max_tasks_in_flight, fw.in_flight, fw.slots) == (5, 4, 1)
    finish(cl, fid)
    (fw,) = cl.snapshot().frameworks
    assert (fw.in_flight, fw.slots) == (3, 2)


@pytest.mark.parametrize("bad", [-1, -(2**31), True, 1.5, 2**31])
def test_the_core_refuses_a_limit_that_is_not_a_whole_number_from_0_to_int32_max(bad: object) -> None:
    info = FrameworkInfo(name="f", principal="p", roles=("web",), max_tasks_in_flight=bad)  # type: ignore[arg-type]
    ctx = Context(now=1.0, term=1, leader="m1", new_id=sequential_ids())
    with pytest.raises(InvalidRequest, match="info.max_tasks_in_flight"):
        decide(ClusterState(), c.SubscribeFramework(info), ctx)


def test_the_wire_field_reaches_the_core_value() -> None:
    info = from_proto(common_pb2.FrameworkInfo(name="f", roles=["web"], max_tasks_in_flight=-3), FrameworkInfo)
    assert info.max_tasks_in_flight == -3  # decoded as sent, refused by the core (above)
