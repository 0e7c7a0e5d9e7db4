"""Malformed and hostile requests on every unary method: a proper status code, the master keeps serving,
and a refused call changes nothing. (`python -m tests.unit.fuzz.run --cases 10000` runs it large.)"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from tessera.v1 import operator_pb2, operator_pb2_grpc, scheduler_pb2_grpc
from tests.support.inprocess import InProcessMaster
from tests.support.scripted import ScriptedAgent, ScriptedFramework
from tests.unit.fuzz.requests import (
    FUZZ_SETTINGS,
    Oversized,
    calls,
    check_call,
    check_oversized,
    oversized_calls,
)

pytestmark = pytest.mark.timeout(300)


@contextmanager
def fuzzed_master() -> Iterator[tuple[Any, ScriptedFramework, dict[str, Any], Callable[[], str]]]:
    """A master with a registered agent and a subscribed framework, the stubs to call it and a
    fingerprint of its state. No allocation loop: its offers, committed concurrently, would make
    "refused but changed" ambiguous."""
    with InProcessMaster(allocation=False, settings=FUZZ_SETTINGS) as node:
        agent = ScriptedAgent(node.channel).start()
        assert agent.registered.wait(5)
        fw = ScriptedFramework(node.channel).start()
        assert fw.subscribed.wait(5)
        stubs = {"operator": operator_pb2_grpc.OperatorStub(node.channel),
                 "scheduler": scheduler_pb2_grpc.SchedulerStub(node.channel)}
        try:
            yield node, fw, stubs, lambda: str(node.master.read_state(lambda s: s.fingerprint()))
        finally:
            fw.close()
            agent.close()


def test_fuzzed_requests_get_proper_codes_and_refusals_change_nothing() -> None:
    with fuzzed_master() as (node, fw, stubs, fingerprint):
        codes: Counter[str] = Counter()

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(calls([fw.framework_id]))
        def run(call: tuple[str, str, object]) -> None:
            service, method, request = call
            codes[check_call(stubs, fingerprint, service, method, request).name] += 1

        run()
        # still serving
        assert stubs["operator"].GetQuorum(operator_pb2.GetQuorumRequest(), timeout=5).applied_index > 0
        assert sum(codes.values()) >= 150


def test_oversized_and_many_argument_requests_get_clear_codes_and_change_nothing() -> None:
    with fuzzed_master() as (node, fw, stubs, fingerprint):
        codes: Counter[str] = Counter()

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(oversized_calls(fw.framework_id))
        def run(case: Oversized) -> None:
            codes[check_oversized(stubs, fingerprint, case).name] += 1

        run()
        assert stubs["operator"].GetQuorum(operator_pb2.GetQuorumRequest(), timeout=5).applied_index > 0
        assert codes["INVALID_ARGUMENT"] > 0, codes
