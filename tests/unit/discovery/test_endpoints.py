"""Which tasks discovery publishes (`endpoints.is_ready`): running, healthy when checked, and not being
killed — the first step of the drain sequence (docs/load-balancing.md)."""

from __future__ import annotations

from tessera.control_plane.discovery.endpoints import endpoints_from_state, is_ready
from tessera.v1 import common_pb2, operator_pb2
from tests.unit.discovery.test_dns import state_with

CHECK = common_pb2.HealthCheck(type=common_pb2.HealthCheck.TCP, tcp=common_pb2.HealthCheck.TCPCheckInfo(port=31000))
PORTS = [common_pb2.Resource(name="ports", ranges=[common_pb2.Range(begin=31000, end=31000)])]


def view(task_id: str, state: int, healthy: bool | None = None, checked: bool = True) -> operator_pb2.TaskView:
    info = common_pb2.TaskInfo(task_id=task_id, name="web", framework_id="f1", agent_id="a1", resources=PORTS,
                               shutdown_delay_seconds=3)
    if checked:
        info.health_check.CopyFrom(CHECK)
    status = common_pb2.TaskStatus(task_id=task_id, state=state)  # type: ignore[arg-type]
    if healthy is not None:
        status.healthy = healthy
    return operator_pb2.TaskView(task=info, state=state, last_status=status)  # type: ignore[arg-type]


def test_a_killing_task_leaves_discovery_even_while_it_is_healthy() -> None:
    assert is_ready(view("web.1", common_pb2.TASK_RUNNING, healthy=True))
    assert not is_ready(view("web.1", common_pb2.TASK_KILLING, healthy=True))
    assert not is_ready(view("web.1", common_pb2.TASK_KILLING, checked=False))


def test_a_checked_task_joins_only_once_seen_healthy() -> None:
    assert not is_ready(view("web.1", common_pb2.TASK_RUNNING))  # not checked yet
    assert not is_ready(view("web.1", common_pb2.TASK_RUNNING, healthy=False))
    assert not is_ready(view("web.1", common_pb2.TASK_STARTING, healthy=True))
    assert is_ready(view("web.1", common_pb2.TASK_RUNNING, checked=False))  # no check: running is enough


def test_the_endpoints_of_a_rolling_update_are_the_ready_instances_only() -> None:
    state = state_with(view("old.1", common_pb2.TASK_KILLING, healthy=True),
                       view("old.2", common_pb2.TASK_RUNNING, healthy=True),
                       view("new.1", common_pb2.TASK_RUNNING, healthy=True),
                       view("new.2", common_pb2.TASK_RUNNING))
    assert [e.task_id for e in endpoints_from_state(state)] == ["old.2", "new.1"]
