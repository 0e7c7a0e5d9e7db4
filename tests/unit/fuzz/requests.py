"""Hypothesis strategies for malformed and hostile requests on every unary gRPC method of the master,
and the check each one must pass: a proper status code, the master still serving, state unchanged when
the call was refused. Used by the test in this folder (small) and `python -m tests.unit.fuzz.run` (large)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import grpc
from hypothesis import strategies as st

from tessera.v1 import common_pb2, operator_pb2, scheduler_pb2
from tests.support.inprocess import FAST

# A master whose agent misses heartbeats for a second (a loaded machine) would mark it unreachable in the
# middle of a case, which reads as "refused but changed the state"; and an agent whose fuzzed stream ended
# would be. With this timeout nothing changes the state between and during cases but what the cases do.
FUZZ_SETTINGS = replace(FAST, agent_timeout=3600.0)

ALLOWED = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

texts = st.one_of(st.just(""), st.text(max_size=40), st.text(alphabet="abcdef-0123456789", max_size=12),
                  st.just("x" * 300), st.just("../../etc"), st.just("\x00"))
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(-1.0), st.just(0.0),
                    st.just(1e300), st.integers(-10, 10).map(float))
resources = st.lists(st.builds(
    lambda name, scalar, begin, end, role: common_pb2.Resource(
        name=name, scalar=0.0 if math.isnan(scalar) and name == "ports" else scalar,
        ranges=[common_pb2.Range(begin=begin, end=end)] if name == "ports" else [], reservation_role=role),
    st.sampled_from(["cpus", "mem", "disk", "ports", "gpus", "BAD NAME", ""]), numbers,
    st.integers(0, 70000), st.integers(0, 70000), st.sampled_from(["", "web", "bad role"])), max_size=4)


def header(framework_ids: list[str]) -> st.SearchStrategy[scheduler_pb2.CallHeader]:
    return st.builds(scheduler_pb2.CallHeader, framework_id=st.one_of(texts, st.sampled_from(framework_ids or [""])),
                     stream_id=texts, request_id=texts)


def task_infos() -> st.SearchStrategy[common_pb2.TaskInfo]:
    return st.builds(lambda tid, aid, res, cmd, grace: common_pb2.TaskInfo(
        task_id=tid, name=tid, agent_id=aid, resources=res, kill_grace_period_seconds=grace,
        command=common_pb2.CommandInfo(shell=True, value=cmd)), texts, texts, resources, texts, numbers)


def calls(framework_ids: list[str]) -> st.SearchStrategy[tuple[str, str, Any]]:
    """(service, method, request) triples."""
    h = header(framework_ids)
    operation = st.builds(lambda t, tasks, res: scheduler_pb2.Operation(type=t, tasks=tasks, resources=res),
                          st.integers(0, 5), st.lists(task_infos(), max_size=3), resources)
    return st.one_of(
        st.builds(lambda r, w, rid: ("operator", "SetWeight", operator_pb2.SetWeightRequest(role=r, weight=w,
                                                                                           request_id=rid)),
                  texts, numbers, texts),
        st.builds(lambda r, g, lim: ("operator", "SetQuota", operator_pb2.SetQuotaRequest(role=r, guarantee=g,
                                                                                         limit=lim)),
                  texts, resources, resources),
        st.builds(lambda a: ("operator", "DrainAgent", operator_pb2.DrainAgentRequest(agent_id=a)), texts),
        st.builds(lambda a: ("operator", "UndrainAgent", operator_pb2.UndrainAgentRequest(agent_id=a)), texts),
        st.builds(lambda t, f, g: ("operator", "KillTask", operator_pb2.KillTaskRequest(
            task_id=t, framework_id=f, grace_period_seconds=g)), texts, texts, numbers),
        st.builds(lambda f: ("operator", "TeardownFramework", operator_pb2.TeardownFrameworkRequest(framework_id=f)),
                  st.one_of(texts, st.sampled_from(framework_ids or [""]))),
        st.builds(lambda i, n: ("operator", "ListEvents", operator_pb2.ListEventsRequest(from_index=i, limit=n)),
                  st.integers(0, 2**63), st.integers(0, 2**31)),
        st.builds(lambda a: ("operator", "AddMaster", operator_pb2.AddMasterRequest(raft_address=a)), texts),
        st.builds(lambda a: ("operator", "GetTrace", operator_pb2.GetTraceRequest(task_id=a)), texts),
        st.builds(lambda hd, offers, ops, f: ("scheduler", "Accept", scheduler_pb2.AcceptRequest(
            header=hd, offer_ids=offers, operations=ops, filters=common_pb2.Filters(refuse_seconds=f))),
                  h, st.lists(texts, max_size=3), st.lists(operation, max_size=2), numbers),
        st.builds(lambda hd, offers, f: ("scheduler", "Decline", scheduler_pb2.DeclineRequest(
            header=hd, offer_ids=offers, filters=common_pb2.Filters(refuse_seconds=f))),
                  h, st.lists(texts, max_size=3), numbers),
        st.builds(lambda hd, t, g: ("scheduler", "Kill", scheduler_pb2.KillRequest(
            header=hd, task_id=t, grace_period_seconds=g)), h, texts, numbers),
        st.builds(lambda hd, t, u: ("scheduler", "Acknowledge", scheduler_pb2.AcknowledgeRequest(
            header=hd, task_id=t, uuid=u)), h, texts, texts),
        st.builds(lambda hd, roles: ("scheduler", "Suppress", scheduler_pb2.SuppressRequest(header=hd, roles=roles)),
                  h, st.lists(texts, max_size=2)),
        st.builds(lambda hd, roles: ("scheduler", "Revive", scheduler_pb2.ReviveRequest(header=hd, roles=roles)),
                  h, st.lists(texts, max_size=2)),
        st.builds(lambda hd, ids: ("scheduler", "Reconcile", scheduler_pb2.ReconcileRequest(header=hd, task_ids=ids)),
                  h, st.lists(texts, max_size=3)),
        st.builds(lambda hd: ("scheduler", "Teardown", scheduler_pb2.TeardownRequest(header=hd)),
                  st.builds(scheduler_pb2.CallHeader, framework_id=texts, stream_id=texts)),
    )


def check_call(stubs: dict[str, Any], fingerprint: Callable[[], str], service: str, method: str,
               request: Any) -> grpc.StatusCode:
    """Make the call; assert a proper status, and an unchanged state when it was refused."""
    before = fingerprint()
    try:
        getattr(stubs[service], method)(request, timeout=10)
        code = grpc.StatusCode.OK
    except grpc.RpcError as err:
        code = err.code()
    assert code in ALLOWED, f"{service}.{method} answered {code} to {request!r}"
    if code is not grpc.StatusCode.OK:
        assert fingerprint() == before, f"{service}.{method} was refused ({code}) but changed the state"
    return code


# ---- oversized and many-argument requests ----------------------------------------------------------------
# Each case is (service, method, request, the codes it may get, a text INVALID_ARGUMENT's details must hold).
# Every one is refused (the fuzzed framework holds no offer, so nothing can launch) and must change nothing;
# the size caps are checked before the offers, so an oversized launch is INVALID_ARGUMENT naming the field.
# A message over the master's 4 MiB receive limit is refused by gRPC itself with RESOURCE_EXHAUSTED.
Oversized = tuple[str, str, Any, frozenset[grpc.StatusCode], str]

_INVALID = frozenset({grpc.StatusCode.INVALID_ARGUMENT})
_TOO_BIG = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED})
_CPU = [common_pb2.Resource(name="cpus", scalar=0.1)]


def _task(n: int = 0, **fields: Any) -> common_pb2.TaskInfo:
    command = fields.pop("command", common_pb2.CommandInfo(shell=True, value="true"))
    task = common_pb2.TaskInfo(task_id=fields.pop("task_id", f"big-{n}"), name=fields.pop("name", "big"),
                               command=command, **fields)
    if not task.resources:
        task.resources.extend(_CPU)
    return task


def _over_launch_limit(tasks: list[common_pb2.TaskInfo]) -> bool:
    """Whether `core.limits` counts these tasks together over its MAX_LAUNCH_LENGTH."""
    from tessera.control_plane.codec import from_proto
    from tessera.control_plane.core.limits import MAX_LAUNCH_LENGTH, task_length
    from tessera.control_plane.core.values import TaskInfo

    return sum(task_length(from_proto(t, TaskInfo)) for t in tasks) > MAX_LAUNCH_LENGTH


def _launch(framework_id: str, tasks: list[common_pb2.TaskInfo]) -> scheduler_pb2.AcceptRequest:
    return scheduler_pb2.AcceptRequest(
        header=scheduler_pb2.CallHeader(framework_id=framework_id), offer_ids=["offer-that-never-was"],
        operations=[scheduler_pb2.Operation(type=scheduler_pb2.Operation.LAUNCH, tasks=tasks)])


def oversized_calls(framework_id: str) -> st.SearchStrategy[Oversized]:
    """Thousands of arguments, megabyte strings and huge repeated fields, from a subscribed framework (so the
    size checks, not an unknown framework id, answer) and from operators."""
    def accept(tasks: list[common_pb2.TaskInfo], codes: frozenset[grpc.StatusCode], text: str) -> Oversized:
        return "scheduler", "Accept", _launch(framework_id, tasks), codes, text

    many_arguments = st.builds(
        lambda n, length: accept([_task(command=common_pb2.CommandInfo(value="prog", arguments=["a" * length] * n))],
                                 _TOO_BIG, "command.arguments"),
        st.integers(257, 6000), st.sampled_from([0, 1, 16, 500]))
    long_arguments = st.builds(
        lambda n, length: accept([_task(command=common_pb2.CommandInfo(value="prog", arguments=["b" * length] * n))],
                                 _TOO_BIG, "command.arguments"),
        st.integers(9, 250), st.integers(3700, 4096))
    environment = st.builds(
        lambda n: accept([_task(command=common_pb2.CommandInfo(value="prog", environment=[
            common_pb2.Label(key=f"V{i}", value="v") for i in range(n)]))], _TOO_BIG, "command.environment"),
        st.integers(257, 20_000))
    labels = st.builds(lambda n: accept([_task(labels=[common_pb2.Label(key=f"k{i}", value="") for i in range(n)])],
                                        _TOO_BIG, "labels"), st.integers(65, 20_000))
    resources = st.builds(
        lambda n: accept([_task(resources=[common_pb2.Resource(name=f"r{i}", scalar=1.0) for i in range(n)])],
                         _TOO_BIG, "resources"), st.integers(65, 5000))
    strings = st.builds(
        lambda field, size: accept(
            [_task(**{field: "x" * size})] if field in ("task_id", "name") else
            [_task(command=common_pb2.CommandInfo(value="x" * size if field == "value" else "true",
                                                  **({} if field == "value" else {field: "x" * size})))],
            _TOO_BIG, "" if size > 4 * 1024 * 1024 else field),
        st.sampled_from(["task_id", "name", "value", "working_dir", "user"]),
        st.sampled_from([5000, 100_000, 1_000_000, 3_000_000, 5 * 1024 * 1024]))
    # many small tasks pass the size caps and reach the (unknown) offer; together over 512 KiB they do not
    def many(n: int, length: int) -> Oversized:
        tasks = [_task(i, command=common_pb2.CommandInfo(value="prog", arguments=["c" * length])) for i in range(n)]
        over = _over_launch_limit(tasks)  # the core's own estimate decides, not a guess
        return accept(tasks, _TOO_BIG if over else frozenset({grpc.StatusCode.NOT_FOUND}), "operations" if over else "")

    many_tasks = st.builds(many, st.integers(200, 3000), st.sampled_from([1, 1000, 3000]))
    many_offers = st.builds(lambda n: ("scheduler", "Decline", scheduler_pb2.DeclineRequest(
        header=scheduler_pb2.CallHeader(framework_id=framework_id), offer_ids=[f"o-{i}" for i in range(n)]),
        frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}), ""), st.integers(1000, 50_000))
    many_roles = st.builds(lambda n: ("scheduler", "Suppress", scheduler_pb2.SuppressRequest(
        header=scheduler_pb2.CallHeader(framework_id=framework_id), roles=[f"role-{i}" for i in range(n)]),
        _INVALID, "roles"), st.integers(1000, 50_000))
    big_role = st.builds(lambda size: ("operator", "SetWeight", operator_pb2.SetWeightRequest(
        role="r" * size, weight=2.0), _TOO_BIG, ""), st.sampled_from([1000, 1_000_000, 5 * 1024 * 1024]))
    return st.one_of(many_arguments, long_arguments, environment, labels, resources, strings, many_tasks,
                     many_offers, many_roles, big_role)


def check_oversized(stubs: dict[str, Any], fingerprint: Callable[[], str], case: Oversized) -> grpc.StatusCode:
    """Make an oversized call: one of the codes the case allows (never OK, never INTERNAL), the field named
    when it is INVALID_ARGUMENT, and the state unchanged."""
    service, method, request, codes, text = case
    before = fingerprint()
    try:
        getattr(stubs[service], method)(request, timeout=30)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""
    assert code in codes, f"{service}.{method} answered {code} ({details[:200]}) to an oversized request"
    if code is grpc.StatusCode.INVALID_ARGUMENT and text:
        assert text in details, f"{service}.{method}: {details[:200]!r} does not name {text}"
    assert fingerprint() == before, f"{service}.{method} was refused ({code}) but changed the state"
    return code
