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
