"""A master's health: the pure decisions (per-service gRPC health, `/health`, `/leader`, systemd's status
line) over every role and phase, and `MasterHealth` publishing them to a real gRPC health servicer on a
leadership change, only what changed."""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tessera.control_plane.runtime.health import (
    AGENT_LINK,
    OPERATOR,
    SCHEDULER,
    HealthView,
    LeaderRef,
    MasterHealth,
    health_response,
    leader_response,
    service_statuses,
    status_line,
)
from tests.support.inprocess import InProcessMaster

pytestmark = pytest.mark.timeout(60)

M1 = LeaderRef("10.0.0.1:7000", "m1", "10.0.0.1:7001")


def view(phase: str = "serving", *, is_leader: bool = False, leader: LeaderRef | None = M1,
         name: str = "m2", raft: str = "10.0.0.2:7000") -> HealthView:
    return HealthView(name=name, raft_address=raft, phase=phase, is_leader=is_leader,  # type: ignore[arg-type]
                      term=4, commit_index=120, applied_index=118, leader=leader)


LEADER = view(is_leader=True, leader=M1, name="m1", raft=M1.raft_address)


def test_only_the_serving_leader_serves_scheduler_and_agent_link_every_master_serves_operator() -> None:
    assert service_statuses(LEADER) == {"": True, OPERATOR: True, SCHEDULER: True, AGENT_LINK: True}
    assert service_statuses(view()) == {"": True, OPERATOR: True, SCHEDULER: False, AGENT_LINK: False}
    assert service_statuses(view(leader=None)) == {"": True, OPERATOR: True, SCHEDULER: False, AGENT_LINK: False}
    elected = view(leader=LeaderRef("10.0.0.2:7000", "m2", "10.0.0.2:7001"))  # barrier not applied yet
    assert service_statuses(elected)[SCHEDULER] is False


@pytest.mark.parametrize("phase", ["starting", "stopping"])
def test_nothing_serves_while_starting_or_stopping(phase: str) -> None:
    for v in (view(phase), view(phase, is_leader=True)):
        assert set(service_statuses(v).values()) == {False}
        assert health_response(v)[0] == 503
        assert leader_response(v)[0] == 503
        assert status_line(v) == phase


def test_health_is_200_on_every_serving_master_with_role_indexes_and_the_leader() -> None:
    code, body = health_response(view())
    assert code == 200
    assert body == {"status": "serving", "name": "m2", "role": "follower", "is_leader": False, "term": 4,
                    "commit_index": 120, "applied_index": 118,
                    "leader": {"name": "m1", "grpc_address": "10.0.0.1:7001", "raft_address": "10.0.0.1:7000"}}
    assert health_response(LEADER) == (200, {**body, "name": "m1", "role": "leader", "is_leader": True})


def test_leader_is_200_on_the_leader_and_503_naming_the_leader_elsewhere() -> None:
    assert leader_response(LEADER)[0] == 200
    code, body = leader_response(view())
    assert code == 503 and body["leader"]["grpc_address"] == "10.0.0.1:7001" and body["role"] == "follower"
    code, body = leader_response(view(leader=None))
    assert code == 503 and body["leader"] is None
    code, body = leader_response(view(leader=LeaderRef("10.0.0.2:7000", "m2", "10.0.0.2:7001")))
    assert code == 503 and body["role"] == "elected"


def test_status_line_names_the_role_and_the_leader() -> None:
    assert status_line(LEADER) == "leader in term 4"
    assert status_line(view()) == "follower of m1 at 10.0.0.1:7001 (term 4)"
    assert status_line(view(leader=LeaderRef("10.0.0.1:7000"))) == "follower of 10.0.0.1:7000 (term 4)"
    assert status_line(view(leader=None)) == "follower, no leader known (term 4)"
    elected = view(leader=LeaderRef("10.0.0.2:7000", "m2", "10.0.0.2:7001"))
    assert status_line(elected) == "elected in term 4, applying the leader barrier"


def _check(channel: grpc.Channel, service: str) -> int:
    return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                          timeout=5).status)


def test_master_health_publishes_changes_to_the_grpc_health_service(monkeypatch: pytest.MonkeyPatch) -> None:
    SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    with InProcessMaster() as m:
        published: list[tuple[str, bool]] = []
        statuses: list[str] = []

        def set_service(service: str, serving: bool) -> None:
            published.append((service, serving))
            m.server.set_serving(service, serving)

        health = MasterHealth(m.master, set_service=set_service, status=statuses.append)
        assert health.health()[0] == 503 and health.view().phase == "starting"
        v = health.mark_serving()
        assert v.is_leader and v.leader == LeaderRef("local:0", "m1", m.grpc_address)
        assert dict(published) == {"": True, OPERATOR: True, SCHEDULER: True, AGENT_LINK: True}
        assert statuses == []  # mark_serving leaves the line to READY=1
        assert [_check(m.channel, s) for s in ("", OPERATOR, SCHEDULER, AGENT_LINK)] == [SERVING] * 4
        assert health.leader()[0] == 200

        published.clear()
        health.refresh()
        assert published == []  # nothing changed, nothing sent to the watchers
        assert statuses == ["leader in term 1"]

        monkeypatch.setattr(m.master, "is_serving", lambda: False)  # as after a lost election
        health.on_leadership_change()
        assert dict(published) == {SCHEDULER: False, AGENT_LINK: False}
        assert [_check(m.channel, s) for s in ("", OPERATOR, SCHEDULER, AGENT_LINK)] == \
            [SERVING, SERVING, NOT_SERVING, NOT_SERVING]
        assert health.leader()[0] == 503

        health.mark_stopping()
        assert health.health()[0] == 503
        assert _check(m.channel, OPERATOR) == NOT_SERVING


def test_the_master_tells_its_leadership_observers_once_it_serves() -> None:
    m = InProcessMaster()
    seen: list[bool] = []
    served = threading.Event()

    def observer() -> None:
        seen.append(m.master.is_serving())
        if seen[-1]:
            served.set()

    m.master.add_leadership_observer(observer)
    with m:
        assert served.wait(10)
    # elected (Raft leadership gained, not serving yet), then serving once the barrier is applied
    assert seen[:2] == [False, True]


def test_a_new_server_serves_operator_and_not_the_leader_only_services_until_told() -> None:
    with InProcessMaster() as m:  # nothing published: the server's own defaults
        assert [_check(m.channel, s) for s in ("", OPERATOR, SCHEDULER, AGENT_LINK)] == [
            health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.NOT_SERVING]
