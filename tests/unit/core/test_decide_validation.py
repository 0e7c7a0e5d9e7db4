"""Every class of bad input gets the right domain error from decide, and decide never mutates state."""

from __future__ import annotations

import importlib
import pkgutil
import typing
from collections.abc import Callable
from dataclasses import dataclass

import pytest

import tessera.control_plane.core as core_package
from tessera.control_plane.core import commands as c
from tessera.control_plane.core import decide as decide_module
from tessera.control_plane.core.errors import (
    Conflict,
    Deposed,
    InvalidRequest,
    NotFound,
    TesseraError,
    VersionConflict,
)
from tessera.control_plane.core.resources import Resources, validate_role
from tessera.control_plane.core.state import check_id, check_role
from tessera.control_plane.core.values import (
    AgentInfo,
    CommandInfo,
    CommandURI,
    FrameworkInfo,
    Offer,
    TaskInfo,
    TaskState,
    TaskStatus,
)

from .harness import Harness, launch, task

NAN, INF = float("nan"), float("inf")
LONG_ID = "x" * 300


def raw(*scalars: tuple[str, float]) -> Resources:
    """A bag built by hand, bypassing Resources' own validation (as a buggy codec could)."""
    return Resources(scalars=tuple(((name, ""), value) for name, value in scalars))  # type: ignore[misc]


@pytest.fixture
def world() -> tuple[Harness, str, str, str]:
    """A harness with one agent, one framework (roles web, batch), one live offer and one running task."""
    h = Harness()
    aid = h.agent("cpus:8;mem:8192;ports:[31000-31009]")
    fid = h.framework(roles=("web", "batch"))
    h.launched(fid, aid, task("t1"))
    h.status("t1", TaskState.TASK_RUNNING, uuid="u1")
    oid = h.offer(fid, aid)
    return h, aid, fid, oid


Case = Callable[[str, str, str], c.Command]


def _agent_info(resources: Resources) -> AgentInfo:
    return AgentInfo(hostname="h", resources=resources)


def _fw(**kw: object) -> FrameworkInfo:
    base: dict[str, object] = {"name": "fw", "roles": ("web",)}
    base.update(kw)
    return FrameworkInfo(**base)  # type: ignore[arg-type]


INVALID: dict[str, Case] = {
    # resources
    "negative resources": lambda a, f, o: c.RegisterAgent(_agent_info(raw(("cpus", -1000)))),
    "NaN resources": lambda a, f, o: c.RegisterAgent(_agent_info(raw(("cpus", NAN)))),
    "infinite resources": lambda a, f, o: c.RegisterAgent(_agent_info(raw(("cpus", INF)))),
    "zero entry in resources": lambda a, f, o: c.RegisterAgent(_agent_info(raw(("cpus", 0)))),
    "inverted port range": lambda a, f, o: c.RegisterAgent(_agent_info(
        Resources(ranges=((("ports", ""), ((10, 5),)),)))),
    "not resources at all": lambda a, f, o: c.RegisterAgent(_agent_info("cpus:4")),  # type: ignore[arg-type]
    "agent without hostname": lambda a, f, o: c.RegisterAgent(AgentInfo(resources=Resources.of(cpus=1))),
    "negative task resources": lambda a, f, o: c.Accept(f, (o,), (launch(TaskInfo(
        "t9", resources=raw(("cpus", -5)), command=CommandInfo(value="x"))),)),
    "task without resources": lambda a, f, o: c.Accept(f, (o,), (launch(TaskInfo(
        "t9", command=CommandInfo(value="x"))),)),
    "task without command": lambda a, f, o: c.Accept(f, (o,), (launch(TaskInfo(
        "t9", resources=Resources.of(cpus=1))),)),
    "task for another agent": lambda a, f, o: c.Accept(f, (o,), (launch(TaskInfo(
        "t9", agent_id="agent-x", resources=Resources.of(cpus=1), command=CommandInfo(value="x"))),)),
    "task fetching an ftp URI": lambda a, f, o: c.Accept(f, (o,), (launch(TaskInfo(
        "t9", resources=Resources.of(cpus=1), command=CommandInfo(value="x"),
        uris=(CommandURI("ftp://127.0.0.1/tool"),))),)),
    "task fetching into a path": lambda a, f, o: c.Accept(f, (o,), (launch(TaskInfo(
        "t9", resources=Resources.of(cpus=1), command=CommandInfo(value="x"),
        uris=(CommandURI("http://127.0.0.1/tool", output_file="../tool"),))),)),
    "launch without tasks": lambda a, f, o: c.Accept(f, (o,), (c.Operation("LAUNCH"),)),
    "reserve with tasks": lambda a, f, o: c.Accept(f, (o,), (c.Operation("RESERVE", tasks=(task("t9"),),
                                                                          resources=Resources.of(role="web", cpus=1)),)),
    "reserve of unreserved resources": lambda a, f, o: c.Accept(f, (o,), (c.Operation(
        "RESERVE", resources=Resources.of(cpus=1)),)),
    "unknown operation": lambda a, f, o: c.Accept(f, (o,), (c.Operation("DESTROY"),)),  # type: ignore[arg-type]
    "no offer ids": lambda a, f, o: c.Accept(f, (), ()),
    "offer named twice": lambda a, f, o: c.Decline(f, (o, o)),
    # ids
    "empty agent id": lambda a, f, o: c.MarkAgentUnreachable(""),
    "oversized agent id": lambda a, f, o: c.DrainAgent(LONG_ID),
    "id with a space": lambda a, f, o: c.RemoveAgent("agent 1"),
    "non-string id": lambda a, f, o: c.Kill(f, 42),  # type: ignore[arg-type]
    "empty task id": lambda a, f, o: c.Accept(f, (o,), (launch(task("")),)),
    "oversized task id": lambda a, f, o: c.Accept(f, (o,), (launch(task(LONG_ID)),)),
    "oversized reason": lambda a, f, o: c.RemoveAgent(a, "x" * 5000),
    # numbers
    "zero weight": lambda a, f, o: c.SetRoleWeight("web", 0),
    "negative weight": lambda a, f, o: c.SetRoleWeight("web", -1),
    "NaN weight": lambda a, f, o: c.SetRoleWeight("web", NAN),
    "infinite weight": lambda a, f, o: c.SetRoleWeight("web", INF),
    "boolean weight": lambda a, f, o: c.SetRoleWeight("web", True),
    "negative refuse seconds": lambda a, f, o: c.Decline(f, (o,), refuse_seconds=-1),
    "NaN refuse seconds": lambda a, f, o: c.Decline(f, (o,), refuse_seconds=NAN),
    "infinite refuse seconds": lambda a, f, o: c.Decline(f, (o,), refuse_seconds=INF),
    "negative grace period": lambda a, f, o: c.Kill(f, "t1", grace_period_seconds=-1),
    "operator kill with a NaN grace period": lambda a, f, o: c.OperatorKill("t1", f, grace_period_seconds=NAN),
    "operator kill of an empty task id": lambda a, f, o: c.OperatorKill(""),
    "operator kill naming a malformed framework": lambda a, f, o: c.OperatorKill("t1", "framework 1"),
    "negative failover timeout": lambda a, f, o: c.SubscribeFramework(_fw(failover_timeout_seconds=-1)),
    "NaN failover timeout": lambda a, f, o: c.SubscribeFramework(_fw(failover_timeout_seconds=NAN)),
    "offer expiring in the past": lambda a, f, o: c.IssueOffers((Offer(
        "", f, a, role="web", resources=Resources.of(cpus=1), expires_at=1.0),)),
    "term zero": lambda a, f, o: c.ElectLeader(0, "m1"),
    # roles
    "invalid role name": lambda a, f, o: c.SetRoleWeight("no spaces allowed", 1),
    "empty role": lambda a, f, o: c.SetQuota("", Resources.of(cpus=1)),
    "framework without roles": lambda a, f, o: c.SubscribeFramework(_fw(roles=())),
    "framework naming a role twice": lambda a, f, o: c.SubscribeFramework(_fw(roles=("web", "web"))),
    "framework without a name": lambda a, f, o: c.SubscribeFramework(_fw(name="")),
    "suppress of a role not subscribed": lambda a, f, o: c.Suppress(f, ("ops",)),
    "revive of a role not subscribed": lambda a, f, o: c.Revive(f, ("ops",)),
    "offer for a role not subscribed": lambda a, f, o: c.IssueOffers((Offer(
        "", f, a, role="ops", resources=Resources.of(cpus=1)),)),
    # quota
    "quota on ranges": lambda a, f, o: c.SetQuota("web", Resources.of(ports=[(1, 2)])),
    "quota on reserved resources": lambda a, f, o: c.SetQuota("web", Resources.of(role="web", cpus=1)),
    "quota limit below guarantee": lambda a, f, o: c.SetQuota("web", Resources.of(cpus=4), Resources.of(cpus=2)),
    # status updates
    "status without uuid": lambda a, f, o: c.UpdateStatus(TaskStatus("t1", TaskState.TASK_FINISHED, agent_id=a)),
    "status in unknown state": lambda a, f, o: c.UpdateStatus(TaskStatus(
        "t1", TaskState.TASK_STATE_UNKNOWN, agent_id=a, uuid="u9")),
    "agent reporting unreachable": lambda a, f, o: c.UpdateStatus(TaskStatus(
        "t1", TaskState.TASK_UNREACHABLE, agent_id=a, uuid="u9")),
    "status with NaN timestamp": lambda a, f, o: c.UpdateStatus(TaskStatus(
        "t1", TaskState.TASK_FINISHED, agent_id=a, uuid="u9", timestamp=NAN)),
    "reregistration reporting a task twice": lambda a, f, o: c.ReregisterAgent(a, _agent_info(
        Resources.parse("cpus:8;mem:8192")), (TaskStatus("t1", TaskState.TASK_RUNNING),) * 2),
}

NOT_FOUND: dict[str, Case] = {
    "unknown agent": lambda a, f, o: c.MarkAgentUnreachable("agent-404"),
    "unknown agent to drain": lambda a, f, o: c.DrainAgent("agent-404"),
    "unknown agent to undrain": lambda a, f, o: c.UndrainAgent("agent-404"),
    "operator kill of a task no framework has": lambda a, f, o: c.OperatorKill("t-404"),
    "operator kill naming an unknown framework": lambda a, f, o: c.OperatorKill("t1", "framework-404"),
    "unknown agent to reregister": lambda a, f, o: c.ReregisterAgent("agent-404", _agent_info(Resources.of(cpus=1))),
    "unknown framework": lambda a, f, o: c.Kill("framework-404", "t1"),
    "unknown framework to remove": lambda a, f, o: c.RemoveFramework("framework-404"),
    "unknown framework resubscribing": lambda a, f, o: c.SubscribeFramework(_fw(framework_id="framework-404")),
    "offer to unknown framework": lambda a, f, o: c.IssueOffers((Offer(
        "", "framework-404", a, role="web", resources=Resources.of(cpus=1)),)),
    "offer on unknown agent": lambda a, f, o: c.IssueOffers((Offer(
        "", f, "agent-404", role="web", resources=Resources.of(cpus=1)),)),
    "unknown task to kill": lambda a, f, o: c.Kill(f, "t404"),
    "unknown task status": lambda a, f, o: c.UpdateStatus(TaskStatus("t404", TaskState.TASK_RUNNING, uuid="u")),
    "unknown task to acknowledge": lambda a, f, o: c.Acknowledge(f, "t404", "u1"),
    "unknown status uuid": lambda a, f, o: c.Acknowledge(f, "t1", "u404"),
    "unknown offer to accept": lambda a, f, o: c.Accept(f, ("offer-404",), ()),
    "unknown offer to decline": lambda a, f, o: c.Decline(f, ("offer-404",)),
    "unknown offer to rescind": lambda a, f, o: c.RescindOffer("offer-404"),
    "unknown master": lambda a, f, o: c.RemoveMaster("10.9.9.9:1"),
}

CONFLICT: dict[str, Case] = {
    "duplicate task id": lambda a, f, o: c.Accept(f, (o,), (launch(task("t1")),)),
    "task that does not fit": lambda a, f, o: c.Accept(f, (o,), (launch(task("t9", cpus=100)),)),
    "port outside the offer": lambda a, f, o: c.Accept(f, (o,), (launch(task("t9", ports=[(1, 1)])),)),
    "offer id reused": lambda a, f, o: c.IssueOffers((Offer(o, f, a, role="web", resources=Resources.of(cpus=1)),)),
    "offer over free resources": lambda a, f, o: c.IssueOffers((Offer(
        "", f, a, role="web", resources=Resources.of(cpus=1)),)),  # the live offer holds every free cpu
    "stale stream": lambda a, f, o: c.Decline(f, (o,), stream_id="stream-404"),
    "illegal transition": lambda a, f, o: c.UpdateStatus(TaskStatus("t1", TaskState.TASK_STARTING, agent_id=a,
                                                                    uuid="u9")),
    "update from the wrong agent": lambda a, f, o: c.UpdateStatus(TaskStatus("t1", TaskState.TASK_FINISHED,
                                                                             agent_id="agent-x", framework_id=f,
                                                                             uuid="u9")),
    "older term": lambda a, f, o: c.ElectLeader(1, "m2"),
    "agent shrunk below its tasks": lambda a, f, o: c.ReregisterAgent(a, _agent_info(Resources.of(cpus=0.5)), (
        TaskStatus("t1", TaskState.TASK_RUNNING),)),
    "state put expecting a version the key is not at": lambda a, f, o: c.WriteFrameworkState(
        f, (c.StateWrite("k", "v", expected_version=7),), stream_id="stream-3"),
}
# the Conflict subclass each case is refused with (a bare Conflict when not named)
CONFLICT_CLASS: dict[str, type[Conflict]] = {
    "stale stream": Deposed,
    "state put expecting a version the key is not at": VersionConflict,
}


def _run_case(world: tuple[Harness, str, str, str], case: Case, error: type[TesseraError]) -> None:
    h, aid, fid, oid = world
    if case is CONFLICT["older term"]:
        h.term = 2
        h.run(c.ElectLeader(2, "m1"))
    before = h.state.fingerprint()
    with pytest.raises(error) as info:
        h.decide(case(aid, fid, oid))
    assert type(info.value) is error, f"{info.value!r} is not a bare {error.__name__}"
    assert h.state.fingerprint() == before, "decide mutated the state"


@pytest.mark.parametrize("name", sorted(INVALID))
def test_bad_input_is_an_invalid_request(world: tuple[Harness, str, str, str], name: str) -> None:
    _run_case(world, INVALID[name], InvalidRequest)


@pytest.mark.parametrize("name", sorted(NOT_FOUND))
def test_unknown_ids_are_not_found(world: tuple[Harness, str, str, str], name: str) -> None:
    _run_case(world, NOT_FOUND[name], NotFound)


@pytest.mark.parametrize("name", sorted(CONFLICT))
def test_state_conflicts_are_conflicts(world: tuple[Harness, str, str, str], name: str) -> None:
    _run_case(world, CONFLICT[name], CONFLICT_CLASS.get(name, Conflict))


def test_stale_offer_is_a_conflict_that_says_why(world: tuple[Harness, str, str, str]) -> None:
    h, aid, fid, oid = world
    h.run(c.Decline(fid, (oid,)))
    with pytest.raises(Conflict, match="declined"):
        h.decide(c.Accept(fid, (oid,), ()))


def test_resources_refuse_negative_nan_and_infinite_quantities_at_construction() -> None:
    for bad in (-1, NAN, INF):
        with pytest.raises(InvalidRequest):
            Resources.of(cpus=bad)


def test_an_unknown_command_is_an_invalid_request() -> None:
    @dataclass(frozen=True)
    class Reboot:
        agent_id: str

    with pytest.raises(InvalidRequest):
        Harness().decide(Reboot("agent-1"))  # type: ignore[arg-type]


def test_refuse_seconds_over_a_year_are_clamped_like_mesos(world: tuple[Harness, str, str, str]) -> None:
    h, aid, fid, oid = world
    h.run(c.Decline(fid, (oid,), refuse_seconds=1e12))
    assert h.state.refused_until(fid, aid) == h.now + 365 * 24 * 3600


def test_a_colliding_id_source_is_refused_not_recorded() -> None:
    h = Harness()
    h.agent()
    h.new_id = lambda prefix: "agent-1"
    with pytest.raises(Conflict):
        h.decide(c.RegisterAgent(AgentInfo(hostname="h", resources=Resources.of(cpus=1))))


@pytest.mark.parametrize("check", [
    lambda: check_id("task-1\n", "task_id"),
    lambda: check_role("web\n"),
    lambda: Resources.from_items([("cpus\n", "", 1.0, ())]),
])
def test_a_trailing_newline_is_not_part_of_a_valid_name(check: Callable[[], object]) -> None:
    # `$` in a pattern matches before a final newline: the name patterns end with `\Z` instead
    with pytest.raises(InvalidRequest):
        check()


def test_a_role_refused_once_is_refused_again_and_a_valid_one_stays_valid() -> None:
    for _ in range(2):
        with pytest.raises(InvalidRequest):
            validate_role("no spaces")
        assert validate_role("web/prod") == "web/prod"


def test_every_command_type_has_one_decider_in_one_topic() -> None:
    modules = [importlib.import_module(f"{core_package.__name__}.{m.name}")
               for m in pkgutil.iter_modules(core_package.__path__) if m.name.startswith("decide_")]
    tables = [module.DECIDERS for module in modules if hasattr(module, "DECIDERS")]
    assert len(tables) >= 6, "the topic modules (decide_agents, decide_launch, ...) each have a DECIDERS table"
    topics = [command_type for table in tables for command_type in table]
    assert len(topics) == len(set(topics)), "a command type is in two topics' tables: one would hide the other"
    assert set(decide_module._DECIDERS) == set(topics) == set(typing.get_args(c.Command))
