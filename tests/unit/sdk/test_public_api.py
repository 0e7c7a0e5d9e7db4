"""The SDK's public surface: `sdk.__all__` is exactly what we promise, the values behave as documented,
status codes map to one error class each, and every value survives the trip through protobuf."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import pytest

import tessera.sdk as sdk
from tessera.sdk import _convert as cv
from tessera.sdk.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    NotLeader,
    PermissionDenied,
    ServerError,
    TesseraError,
    Unauthenticated,
    Unavailable,
    error_for_status,
)
from tessera.sdk.protocol import (
    AcceptCall,
    AcknowledgeCall,
    CallHeader,
    DeclineCall,
    ErrorEvent,
    GetValueCall,
    HeartbeatEvent,
    KillCall,
    ListValuesCall,
    MessageCall,
    MessageEvent,
    OffersEvent,
    ReconcileCall,
    RescindEvent,
    ReviveCall,
    StandbyEvent,
    SubscribedEvent,
    SuppressCall,
    TeardownCall,
    UpdateEvent,
    WriteValuesCall,
)
from tessera.sdk.types import (
    ABSENT,
    Filters,
    FrameworkInfo,
    KvDelete,
    KvPut,
    Launch,
    Offer,
    Reserve,
    Resources,
    TaskInfo,
    TaskSpec,
    TaskState,
    TaskStatus,
    Unreserve,
)

PUBLIC = {
    "AsyncScheduler", "AsyncSchedulerDriver", "Backoff", "CommandURI", "Conflict", "ContainerInfo", "DEFAULT_ROLE",
    "DriverStopped", "Filters", "NetworkInfo", "PortMapping", "Volume",
    "HealthCheck", "HealthCheckType", "HttpCheck", "TcpCheck",
    "FrameworkInfo", "InvalidRequest", "Launch", "NotFound", "NotLeader", "Offer", "Operation",
    "PermissionDenied", "Reserve", "Resources", "Scheduler", "SchedulerDriver", "ServerError", "TaskInfo",
    "TaskSpec", "TaskState", "TaskStatus", "TesseraError", "Unauthenticated", "Unavailable", "Unreserve",
    # the framework's key/value state (driver.kv) and its lease
    "ABSENT", "KvEntry", "KvPut", "KvDelete", "VersionConflict", "Deposed",
}


def test_all_is_exactly_the_promised_public_api() -> None:
    assert set(sdk.__all__) == PUBLIC
    assert len(sdk.__all__) == len(PUBLIC)  # no duplicates
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None


def test_no_other_public_name_leaks_from_the_package() -> None:
    # The package serves `__all__` from its `__getattr__` (see sdk/__init__.py); its namespace holds submodules.
    modules = {m.name for m in pkgutil.iter_modules(sdk.__path__)}
    assert {n for n in vars(sdk) if not n.startswith("_")} <= modules
    assert {n for n in PUBLIC if hasattr(sdk, n)} == PUBLIC


@pytest.mark.parametrize("module", ["tessera.sdk.errors", "tessera.sdk.types", "tessera.sdk.testing"])
def test_submodule_all_names_exist(module: str) -> None:
    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert hasattr(mod, name), name


def test_every_module_has_a_docstring() -> None:
    names = ["sdk"] + [f"sdk.{m.name}" for m in pkgutil.iter_modules(sdk.__path__)]
    names += [f"tessera.sdk.examples.{m.name}" for m in pkgutil.iter_modules(importlib.import_module("tessera.sdk.examples").__path__)]
    for name in names:
        assert (importlib.import_module(name).__doc__ or "").strip(), name


# ---- values ---------------------------------------------------------------------------------------------------

def test_values_are_frozen_and_hashable() -> None:
    offer = Offer(offer_id="o", agent_id="a", resources=Resources.of(cpus=1), attributes={"rack": "r1"})
    task = TaskInfo(task_id="t", resources=Resources.of(cpus=1), command=["ls", "-l"], env={"A": "1"})
    for value in (offer, task, FrameworkInfo(name="f"), TaskStatus(task_id="t", state=TaskState.TASK_RUNNING),
                  Filters(3)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            value.task_id = "x"  # type: ignore[union-attr]
        hash(value)
    with pytest.raises(TypeError):
        offer.attributes["rack"] = "r2"  # type: ignore[index]
    assert task.command == ("ls", "-l") and not task.shell
    assert TaskSpec is TaskInfo


def test_offer_helpers_do_arithmetic_on_resources() -> None:
    offer = Offer(offer_id="o", agent_id="a",
                  resources=Resources.parse("cpus:2;mem:1024;disk:10;ports:[31000-31010]"))
    assert (offer.cpus, offer.mem, offer.disk, offer.ports) == (2, 1024, 10, ((31000, 31010),))
    need = Resources.of(cpus=0.5, mem=256)
    assert offer.fits(need) and (offer.resources - need).scalar("cpus") == 1.5
    assert not offer.fits(Resources.of(cpus=3))


@pytest.mark.parametrize("make", [
    lambda: Filters(0),
    lambda: Filters(float("inf")),
    lambda: TaskInfo(task_id="", resources=Resources(), command="x"),
    lambda: TaskInfo(task_id="t", resources=Resources(), command=""),
    lambda: TaskInfo(task_id="t", resources=Resources(), command=()),
    lambda: TaskInfo(task_id="t", resources=Resources(), command="x", kill_grace_period=-1),
    lambda: FrameworkInfo(name=""),
    lambda: FrameworkInfo(name="f", roles=()),
    lambda: FrameworkInfo(name="f", failover_timeout=-1),
    lambda: Launch(()),
    lambda: Resources.of(cpus=-1),
    lambda: KvPut("k", b"bytes"),  # values are text
    lambda: KvPut("k", "v", -1),  # None is "any version"; versions are never negative
    lambda: KvDelete("k", True),
])
def test_bad_values_are_refused_with_invalid_request(make: object) -> None:
    with pytest.raises(InvalidRequest):
        make()  # type: ignore[operator]


def test_a_single_role_string_is_one_role() -> None:
    assert FrameworkInfo(name="f", roles="analytics").roles == ("analytics",)  # type: ignore[arg-type]


def test_terminal_statuses() -> None:
    assert TaskStatus(task_id="t", state=TaskState.TASK_LOST).is_terminal
    assert not TaskStatus(task_id="t", state=TaskState.TASK_UNREACHABLE).is_terminal


# ---- error mapping ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "cls"), [
    ("INVALID_ARGUMENT", InvalidRequest), ("OUT_OF_RANGE", InvalidRequest), ("NOT_FOUND", NotFound),
    ("FAILED_PRECONDITION", Conflict), ("ALREADY_EXISTS", Conflict), ("ABORTED", Conflict),
    ("UNAUTHENTICATED", Unauthenticated), ("PERMISSION_DENIED", PermissionDenied),
    ("UNAVAILABLE", Unavailable), ("DEADLINE_EXCEEDED", Unavailable), ("RESOURCE_EXHAUSTED", Unavailable),
    ("CANCELLED", Unavailable), ("INTERNAL", ServerError), ("UNKNOWN", ServerError),
    ("UNIMPLEMENTED", ServerError), ("DATA_LOSS", ServerError),
])
def test_each_status_code_maps_to_one_error_class(status: str, cls: type[TesseraError]) -> None:
    err = error_for_status(status, "details")
    assert type(err) is cls
    assert "details" in str(err)


def test_unavailable_with_a_leader_hint_is_not_leader() -> None:
    err = error_for_status("UNAVAILABLE", "follower", "m2:5050")
    assert isinstance(err, NotLeader) and err.leader_hint == "m2:5050"
    assert isinstance(error_for_status("UNIMPLEMENTED", "no"), ServerError)
    assert error_for_status("UNIMPLEMENTED", "no").status == "UNIMPLEMENTED"  # type: ignore[attr-defined]


def test_a_failed_precondition_the_metadata_names_is_a_version_conflict_or_a_deposition() -> None:
    from tessera.control_plane.wire import conflict_detail, conflict_trailers
    from tessera.sdk.errors import Deposed, VersionConflict, conflict_for_error

    err = error_for_status("FAILED_PRECONDITION", "stale", None, conflict_detail(conflict_trailers("version", 17)))
    assert isinstance(err, VersionConflict) and isinstance(err, Conflict) and err.current_version == 17
    err = error_for_status("FAILED_PRECONDITION", "gone", None, conflict_detail(conflict_trailers("deposed", 3)))
    assert isinstance(err, Deposed) and err.lease_term == 3
    assert conflict_for_error(err) == ("deposed", 3)
    assert type(error_for_status("FAILED_PRECONDITION", "plain", None, None)) is Conflict
    assert conflict_detail([("tessera-conflict", b"version")]) == ("version", None)


def test_sdk_errors_are_the_masters_error_classes() -> None:
    from tessera.control_plane.core import errors as core

    assert sdk.Conflict is core.Conflict and sdk.NotFound is core.NotFound
    with pytest.raises(sdk.InvalidRequest):
        Resources.of(cpus=1) - Resources.of(cpus=2)


# ---- protobuf round trips -------------------------------------------------------------------------------------

OFFER = Offer(offer_id="o1", agent_id="a1", framework_id="f1", hostname="h", role="web",
              resources=Resources.parse("cpus:1.5;mem:256;ports:[31000-31002,31005-31005]", role="web")
              + Resources.of(disk=100), attributes={"rack": "r1"}, expires_at=123.5)
TASK = TaskInfo(task_id="t1", name="job", agent_id="a1", resources=Resources.of(cpus=0.25, mem=32),
                command=("python3", "-c", "print(1)"), env={"A": "1"}, kill_grace_period=4.0,
                labels={"team": "x"}, working_dir="w", user="u")
STATUS = TaskStatus(task_id="t1", state=TaskState.TASK_FAILED, message="m", reason="r", exit_code=0,
                    agent_id="a1", uuid="u1", timestamp=5.5, framework_id="f1")


@pytest.mark.parametrize("event", [
    SubscribedEvent("f1", "s1", 2.5, "m1:5050"), OffersEvent((OFFER,)), RescindEvent("o1"),
    UpdateEvent(STATUS), UpdateEvent(TaskStatus(task_id="t", state=TaskState.TASK_RUNNING)),
    MessageEvent("a1", b"\x01\x02"), HeartbeatEvent(), ErrorEvent("removed"),
    SubscribedEvent("f1", "s1", 2.5, "m1:5050", ("BATCHED_ACKNOWLEDGEMENTS",), 4),
    StandbyEvent("f1", 3, 1.5, "m1:5050"), ErrorEvent("deposed", 5),
])
def test_events_survive_protobuf(event: object) -> None:
    assert cv.event_from_proto(cv.event_to_proto(event)) == event  # type: ignore[arg-type]


@pytest.mark.parametrize("call", [
    AcceptCall(("o1", "o2"), (Launch((TASK, TaskInfo(task_id="t2", resources=Resources.of(cpus=1), command="sh -c x"))),
                              Reserve(Resources.of(role="web", cpus=1)), Unreserve(Resources.of(role="web", mem=5))),
               Filters(7.5)),
    AcceptCall(("o1",), (), None), DeclineCall(("o1",), Filters(60)), DeclineCall(("o1",)),
    ReviveCall(("a", "b")), SuppressCall(), KillCall("t1", 3.0), AcknowledgeCall("t1", "a1", "u1"),
    ReconcileCall(("t1",)), ReconcileCall(), TeardownCall(), MessageCall("a1", b"data"),
    GetValueCall("apps/web"), ListValuesCall("apps/", "apps/a", 10, True), ListValuesCall(),
    WriteValuesCall((KvPut("a", "1"), KvPut("b", "ü", ABSENT), KvPut("c", "", 17), KvDelete("d"), KvDelete("e", 9))),
])
def test_calls_survive_protobuf(call: object) -> None:
    header = CallHeader("f1", "s1", "r1")
    _, request = cv.call_to_proto(header, call)  # type: ignore[arg-type]
    assert cv.call_from_proto(request) == (header, call)


def test_framework_info_survives_protobuf() -> None:
    info = FrameworkInfo(name="f", roles=("a", "b"), principal="p", failover_timeout=9.0, partition_aware=True,
                         user="u", hostname="h", framework_id="f1", max_tasks_in_flight=3,
                         min_offer=Resources.of(cpus=1, mem=32))
    assert cv.info_from_proto(cv.info_to_proto(info)) == info
    assert cv.info_to_proto(info).min_offer[0].name == "cpus"


@pytest.mark.parametrize("bad", [Resources.of(ports=[(1, 2)]), Resources.of(role="web", cpus=1)])
def test_framework_info_min_offer_is_scalars_by_kind(bad: Resources) -> None:
    with pytest.raises(InvalidRequest, match="min_offer"):
        FrameworkInfo(name="f", min_offer=bad)


def test_argv_goes_out_as_program_and_arguments_after_it() -> None:
    cmd = cv.task_to_proto(TASK).command
    assert (cmd.shell, cmd.value, list(cmd.arguments)) == (False, "python3", ["-c", "print(1)"])
    shell = cv.task_to_proto(TaskInfo(task_id="t", resources=Resources(), command="echo hi")).command
    assert (shell.shell, shell.value, list(shell.arguments)) == (True, "echo hi", [])


def test_an_unknown_event_kind_is_skipped() -> None:
    from tessera.v1 import scheduler_pb2

    assert cv.event_from_proto(scheduler_pb2.SchedulerEvent()) is None


def test_a_container_task_and_its_network_cross_the_wire_unchanged() -> None:
    from tessera.sdk.types import ContainerInfo, NetworkInfo, PortMapping, Volume

    task = TaskInfo(task_id="web", resources=Resources.of(cpus=0.1, mem=32, ports=[(31005, 31005)]),
                    container=ContainerInfo(image="127.0.0.1:5000/tools/busybox:1.35", network="bridge",
                                            port_mappings=[PortMapping(8080, 31005)],
                                            volumes=[Volume(container_path="/data", host_path="/srv/d", mode="ro")],
                                            readonly_rootfs=True, hostname="web-1"))
    assert isinstance(task.container.port_mappings, tuple)  # lists are stored as tuples (hashable)
    back = cv.task_from_proto(cv.task_to_proto(task))
    assert back.container == task.container and not back.command  # no command: the image's own
    status = TaskStatus(task_id="web", state=TaskState.TASK_RUNNING, network=NetworkInfo("bridge", ("10.213.64.2",)))
    assert cv.status_from_proto(cv.status_to_proto(status)).network == status.network
    assert cv.status_from_proto(cv.status_to_proto(TaskStatus(task_id="t", state=TaskState.TASK_RUNNING))).network is None


def test_a_health_check_and_health_cross_the_wire_unchanged() -> None:
    from tessera.sdk.types import HealthCheck, HealthCheckType, HttpCheck, TcpCheck

    http = HealthCheck(http=HttpCheck(port=31005, path="/health", statuses=(200, 204)), delay=0, interval=2,
                       grace_period=0, consecutive_failures=1)
    assert http.type is HealthCheckType.HTTP and http.timeout == 2  # the default timeout: at most the interval
    tcp = HealthCheck(tcp=TcpCheck(31005), timeout=0.5)
    command = HealthCheck(command=("test", "-f", "ready"), env={"X": "1"}, working_dir="w")
    shell = HealthCheck(command="curl -f localhost:31005")
    for check in (http, tcp, command, shell):
        task = TaskInfo(task_id="web", resources=Resources.of(cpus=0.1, ports=[(31005, 31005)]), command="serve",
                        health_check=check)
        back = cv.task_from_proto(cv.task_to_proto(task))
        assert back.health_check == check, (back.health_check, check)
        assert back.on_agent("a1").health_check == check
    for healthy in (True, False, None):
        status = TaskStatus(task_id="web", state=TaskState.TASK_RUNNING, healthy=healthy,
                            reason="REASON_TASK_HEALTH_CHECK_STATUS_UPDATED")
        assert cv.status_from_proto(cv.status_to_proto(status)).healthy is healthy


def test_an_unset_timing_field_on_the_wire_takes_the_mesos_default() -> None:
    from tessera.v1 import common_pb2

    msg = common_pb2.TaskInfo(task_id="t", command=common_pb2.CommandInfo(shell=True, value="x"),
                              health_check=common_pb2.HealthCheck(type=common_pb2.HealthCheck.TCP,
                                                                  tcp=common_pb2.HealthCheck.TCPCheckInfo(port=1)))
    check = cv.task_from_proto(msg).health_check
    assert check is not None
    assert (check.delay, check.interval, check.timeout, check.grace_period, check.consecutive_failures) == (
        15.0, 10.0, 10.0, 10.0, 3)


@pytest.mark.parametrize(("make", "field"), [
    (lambda h: h.HealthCheck(), "give one of"),
    (lambda h: h.HealthCheck(tcp=h.TcpCheck(80), command="true"), "give one of"),
    (lambda h: h.HealthCheck(tcp=h.TcpCheck(80), interval=1, timeout=2), "interval_seconds"),
    (lambda h: h.HealthCheck(tcp=h.TcpCheck(80), timeout=0), "timeout_seconds"),
    (lambda h: h.HealthCheck(tcp=h.TcpCheck(80), consecutive_failures=0), "consecutive_failures"),
    (lambda h: h.HealthCheck(tcp=h.TcpCheck(0)), "tcp.port"),
    (lambda h: h.HealthCheck(http=h.HttpCheck(port=80, path="no-slash")), "http.path"),
    (lambda h: h.HealthCheck(http=h.HttpCheck(port=80, scheme="https")), "http.scheme"),
    (lambda h: h.HealthCheck(tcp=h.TcpCheck(80), delay=-1), "delay_seconds"),
])
def test_a_bad_health_check_is_refused_when_it_is_made(make: object, field: str) -> None:
    import tessera.sdk.types as h

    with pytest.raises(InvalidRequest, match=field):
        make(h)  # type: ignore[operator]


def test_a_tasks_uris_cross_the_wire_unchanged_and_strings_are_plain_uris() -> None:
    from tessera.sdk.types import CommandURI

    task = TaskInfo(task_id="fetching", resources=Resources.of(cpus=0.1, mem=32), command="./tool",
                    uris=["http://127.0.0.1:8000/tool",
                          CommandURI("https://example.invalid/data.tgz", extract=True, no_cache=True),
                          CommandURI("file:///srv/bin/tool", executable=True, output_file="tool2")])
    assert isinstance(task.uris, tuple) and task.uris[0] == CommandURI("http://127.0.0.1:8000/tool")
    back = cv.task_from_proto(cv.task_to_proto(task))
    assert back.uris == task.uris
    assert back.on_agent("a1").uris == task.uris
