"""The master's checks of a task's health check (control_plane/core/health_checks.py), at the launch, and the
health of a task through decide and apply (a RUNNING -> RUNNING update that only changes health)."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from tessera.control_plane.codec import from_proto, to_proto
from tessera.control_plane.core import commands as c
from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.health_checks import (
    check_health_check,
    check_health_check_form,
    healthy_status_code,
    http_path,
)
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import (
    CommandInfo,
    ContainerInfo,
    HealthCheck,
    HealthCheckType,
    HttpCheck,
    PortMapping,
    TaskInfo,
    TaskState,
    TaskStatus,
    TcpCheck,
)
from tessera.v1 import common_pb2
from tests.unit.core.harness import Harness, launch

HTTP = HealthCheck(type=HealthCheckType.HTTP, http=HttpCheck(port=31005, path="/health"))
TCP = HealthCheck(type=HealthCheckType.TCP, tcp=TcpCheck(port=31005))
COMMAND = HealthCheck(type=HealthCheckType.COMMAND, command=CommandInfo(value="test -f ready"))


def task(check: HealthCheck | None, container: ContainerInfo | None = None, user: str = "",
         ports: tuple[tuple[int, int], ...] = ((31000, 31009),)) -> TaskInfo:
    return TaskInfo("t1", resources=Resources.of(cpus=0.1, mem=32, ports=ports),
                    command=CommandInfo(value="serve", user=user), container=container, health_check=check)


def refused(check: HealthCheck, field: str, **kw: object) -> str:
    with pytest.raises(InvalidRequest) as caught:
        check_health_check(task(check, **kw), "task t1")  # type: ignore[arg-type]
    assert f"task t1.health_check.{field}" in caught.value.message, caught.value.message
    return caught.value.message


def test_well_formed_checks_pass_and_a_task_without_one_too() -> None:
    for check in (HTTP, TCP, COMMAND, None):
        check_health_check(task(check), "task t1")


def test_the_defaults_are_mesos_except_the_timeout_which_may_not_exceed_the_interval() -> None:
    check = HealthCheck()
    assert (check.delay_seconds, check.interval_seconds, check.timeout_seconds, check.grace_period_seconds,
            check.consecutive_failures) == (15.0, 10.0, 10.0, 10.0, 3)


@pytest.mark.parametrize(("changes", "field"), [
    ({"interval_seconds": 1.0, "timeout_seconds": 2.0}, "interval_seconds"),
    ({"timeout_seconds": 0.0}, "timeout_seconds"),
    ({"interval_seconds": 0.0, "timeout_seconds": 0.0}, "interval_seconds"),
    ({"interval_seconds": float("nan")}, "interval_seconds"),
    ({"delay_seconds": -1.0}, "delay_seconds"),
    ({"grace_period_seconds": float("inf")}, "grace_period_seconds"),
    ({"delay_seconds": 86_401.0}, "delay_seconds"),
    ({"consecutive_failures": 0}, "consecutive_failures"),
    ({"consecutive_failures": 1001}, "consecutive_failures"),
    ({"consecutive_failures": True}, "consecutive_failures"),
])
def test_bad_times_and_counts_are_refused_naming_the_field(changes: dict[str, object], field: str) -> None:
    refused(dataclasses.replace(TCP, **changes), field)  # type: ignore[arg-type]


def test_an_interval_below_the_timeout_says_why() -> None:
    message = refused(dataclasses.replace(TCP, interval_seconds=1.0, timeout_seconds=2.0), "interval_seconds")
    assert "below timeout_seconds 2" in message


def test_the_type_names_exactly_one_kind_of_check() -> None:
    refused(dataclasses.replace(TCP, type=HealthCheckType.TYPE_UNKNOWN), "type")
    refused(dataclasses.replace(TCP, type=HealthCheckType.HTTP), "http")  # HTTP without http
    refused(dataclasses.replace(HTTP, tcp=TcpCheck(31005)), "tcp")  # two kinds
    refused(dataclasses.replace(COMMAND, command=None), "command")


def test_http_paths_schemes_and_statuses() -> None:
    refused(dataclasses.replace(HTTP, http=HttpCheck(port=31005, path="health")), "http.path")
    refused(dataclasses.replace(HTTP, http=HttpCheck(port=31005, path="/a b")), "http.path")
    refused(dataclasses.replace(HTTP, http=HttpCheck(port=31005, path="/a\nb")), "http.path")
    refused(dataclasses.replace(HTTP, http=HttpCheck(port=31005, scheme="https")), "http.scheme")
    refused(dataclasses.replace(HTTP, http=HttpCheck(port=31005, statuses=(200, 99))), "http.statuses")
    check_health_check(task(dataclasses.replace(HTTP, http=HttpCheck(port=31005, path="", scheme=""))), "task t1")
    assert http_path(HttpCheck(port=1, path="")) == "/"
    assert healthy_status_code(HttpCheck(port=1), 302) and not healthy_status_code(HttpCheck(port=1), 404)
    assert not healthy_status_code(HttpCheck(port=1), 199)
    only = HttpCheck(port=1, statuses=(204,))
    assert healthy_status_code(only, 204) and not healthy_status_code(only, 200)


def test_a_command_task_is_checked_on_one_of_its_ports() -> None:
    message = refused(dataclasses.replace(HTTP, http=HttpCheck(port=8080)), "http.port")
    assert "31000-31009" in message and "127.0.0.1" in message
    refused(TCP, "tcp.port", ports=())
    refused(dataclasses.replace(TCP, tcp=TcpCheck(port=0)), "tcp.port")
    refused(dataclasses.replace(TCP, tcp=TcpCheck(port=65536)), "tcp.port")


def test_a_bridge_container_is_checked_on_a_container_port_it_maps() -> None:
    mapped = ContainerInfo(image="busybox", port_mappings=(PortMapping(8080, 31005),))
    check_health_check(task(dataclasses.replace(HTTP, http=HttpCheck(port=8080)), mapped), "task t1")
    message = refused(dataclasses.replace(HTTP, http=HttpCheck(port=31005)), "http.port", container=mapped)
    assert "container port" in message and "8080" in message
    udp = ContainerInfo(image="busybox", port_mappings=(PortMapping(8080, 31005, "udp"),))
    refused(dataclasses.replace(TCP, tcp=TcpCheck(port=8080)), "tcp.port", container=udp)
    # a container that maps nothing is reached at its own address, on any port
    check_health_check(task(dataclasses.replace(TCP, tcp=TcpCheck(port=6379)), ContainerInfo(image="redis")),
                       "task t1")


def test_host_and_none_network_containers() -> None:
    host = ContainerInfo(image="busybox", network="host")
    check_health_check(task(TCP, host), "task t1")
    refused(dataclasses.replace(TCP, tcp=TcpCheck(port=8080)), "tcp.port", container=host)
    none = ContainerInfo(image="busybox", network="none")
    assert "COMMAND" in refused(TCP, "tcp.port", container=none)
    check_health_check(task(COMMAND, none), "task t1")


def test_a_command_check_runs_as_the_tasks_user_inside_its_sandbox() -> None:
    check_health_check(task(dataclasses.replace(COMMAND, command=CommandInfo(value="true", user="nobody")),
                            user="nobody"), "task t1")
    refused(dataclasses.replace(COMMAND, command=CommandInfo(value="true", user="root")), "command.user",
            user="nobody")
    refused(dataclasses.replace(COMMAND, command=CommandInfo(value="true", working_dir="../up")),
            "command.working_dir")
    refused(dataclasses.replace(COMMAND, command=CommandInfo(value="")), "command.value")


def test_the_form_alone_is_checked_without_a_task() -> None:
    assert check_health_check_form(TCP, "HealthCheck") is TCP
    with pytest.raises(InvalidRequest, match="HealthCheck: must be a HealthCheck"):
        check_health_check_form("tcp", "HealthCheck")


def test_an_unset_timing_field_on_the_wire_is_the_default_and_a_zero_stays_zero() -> None:
    msg = common_pb2.HealthCheck(type=common_pb2.HealthCheck.TCP, tcp=common_pb2.HealthCheck.TCPCheckInfo(port=5))
    assert from_proto(msg, HealthCheck) == HealthCheck(type=HealthCheckType.TCP, tcp=TcpCheck(5))
    zero = dataclasses.replace(TCP, delay_seconds=0.0, grace_period_seconds=0.0)
    encoded = to_proto(zero, common_pb2.HealthCheck)
    assert encoded.HasField("delay_seconds") and encoded.delay_seconds == 0.0
    assert from_proto(encoded, HealthCheck) == zero
    status = TaskStatus(task_id="t", state=TaskState.TASK_RUNNING, healthy=False)
    assert from_proto(to_proto(status, common_pb2.TaskStatus), TaskStatus).healthy is False
    assert from_proto(to_proto(TaskStatus(task_id="t", state=TaskState.TASK_RUNNING), common_pb2.TaskStatus),
                      TaskStatus).healthy is None


def test_values_from_before_health_checks_unpickle_with_none() -> None:
    # a snapshot of an earlier release pickled TaskInfo and TaskStatus without the trailing fields
    info = task(None)
    state = [getattr(info, f.name) for f in dataclasses.fields(TaskInfo)][:-1]
    old = TaskInfo.__new__(TaskInfo)
    old.__setstate__(state)  # type: ignore[attr-defined]
    assert old.health_check is None and old == info
    status = TaskStatus(task_id="t", state=TaskState.TASK_RUNNING)
    old_status = TaskStatus.__new__(TaskStatus)
    old_status.__setstate__([getattr(status, f.name) for f in dataclasses.fields(TaskStatus)][:-1])  # type: ignore[attr-defined]
    assert old_status.healthy is None
    assert pickle.loads(pickle.dumps(task(HTTP))) == task(HTTP)


# ---- through decide and apply ---------------------------------------------------------------------------

def test_a_launch_with_a_bad_check_is_refused_and_nothing_is_recorded() -> None:
    h = Harness()
    agent_id, framework_id = h.agent(), h.framework()
    offer_id = h.offer(framework_id, agent_id)
    before = h.copy()
    bad = task(dataclasses.replace(TCP, interval_seconds=1.0, timeout_seconds=5.0))
    with pytest.raises(InvalidRequest, match=r"task t1\.health_check\.interval_seconds"):
        h.decide(c.Accept(framework_id, (offer_id,), (launch(bad),)))
    assert h.state.tasks == before.tasks and offer_id in h.state.offers


def test_a_running_task_may_report_running_again_with_only_its_health_changed() -> None:
    h = Harness()
    agent_id, framework_id = h.agent(), h.framework()
    h.launched(framework_id, agent_id, task(HTTP))
    h.status("t1", TaskState.TASK_RUNNING)
    for healthy in (True, False):
        record = h.task("t1")
        update = TaskStatus(task_id="t1", state=TaskState.TASK_RUNNING, agent_id=agent_id, framework_id=framework_id,
                            uuid=h.uuid(), healthy=healthy, reason="REASON_TASK_HEALTH_CHECK_STATUS_UPDATED")
        result = h.run(c.UpdateStatus(update))
        assert [type(e).__name__ for _, e in result.events] == ["TaskStatusUpdated"]
        assert record.state is TaskState.TASK_RUNNING and record.last_status is not None
        assert record.last_status.healthy is healthy
    assert h.task("t1").info.health_check == HTTP
