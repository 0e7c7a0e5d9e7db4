"""Hostile input on the two streams (AgentLink.Connect, Scheduler.Subscribe): proper codes, the master
keeps serving, refusals change nothing (`python -m tests.unit.fuzz.run --cases 10000` runs it large)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from tessera.v1 import operator_pb2, scheduler_pb2
from tests.support.inprocess import InProcessMaster
from tests.support.scripted import ScriptedAgent, ScriptedFramework
from tests.unit.fuzz.requests import FUZZ_SETTINGS
from tests.unit.fuzz.streams import (
    OversizedOpening,
    check_first_message,
    check_follow_up,
    check_oversized_register,
    check_oversized_subscribe,
    check_subscribe,
    first_messages,
    follow_ups,
    framework_infos,
    oversized_framework_infos,
    oversized_registers,
    removed_waiter,
)

pytestmark = pytest.mark.timeout(300)
CASES = 60


@pytest.fixture
def node() -> Iterator[InProcessMaster]:
    with InProcessMaster(allocation=False, settings=FUZZ_SETTINGS) as master:
        yield master


def fingerprint_of(node: InProcessMaster) -> str:
    return str(node.master.read_state(lambda s: s.fingerprint()))


def still_serving(node: InProcessMaster) -> None:
    assert node.operator().GetQuorum(operator_pb2.GetQuorumRequest(), timeout=5).applied_index > 0


def test_hostile_first_messages_on_an_agent_stream_are_refused_or_register(node: InProcessMaster) -> None:
    stub = node.agent_link()
    codes: Counter[str] = Counter()
    registered: list[str] = []

    @settings(max_examples=CASES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(first_messages(["agent-that-never-was"]))
    def run(message: object) -> None:
        code, agent_id = check_first_message(stub, lambda: fingerprint_of(node), message)  # type: ignore[arg-type]
        codes[code.name] += 1
        if agent_id:
            registered.append(agent_id)

    run()
    still_serving(node)
    assert sum(codes.values()) >= CASES
    assert codes["INVALID_ARGUMENT"] > 0, codes  # the strategy does reach the refusals


def test_hostile_messages_on_a_registered_agent_stream_change_nothing(node: InProcessMaster) -> None:
    assert node.channel is not None
    agent = ScriptedAgent(node.channel).start()
    assert agent.registered.wait(5)
    kinds: Counter[str] = Counter()
    counter = [0]

    @settings(max_examples=CASES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(follow_ups([agent.agent_id, "some-other-agent"]))
    def run(message: object) -> None:
        kinds[check_follow_up(agent, lambda: fingerprint_of(node), message, counter)] += 1  # type: ignore[arg-type]

    run()
    assert not agent.ended.is_set()
    still_serving(node)
    assert kinds["status_update"] > 0, kinds
    agent.close()


def test_hostile_subscriptions_are_refused_or_subscribe(node: InProcessMaster) -> None:
    assert node.channel is not None
    gone = ScriptedFramework(node.channel, name="gone").start()
    assert gone.subscribed.wait(5)
    stub = node.scheduler()
    stub.Teardown(scheduler_pb2.TeardownRequest(header=gone.header()), timeout=5)
    wait_removed = removed_waiter(node.master)
    codes: Counter[str] = Counter()

    @settings(max_examples=CASES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(framework_infos([gone.framework_id]))
    def run(info: object) -> None:
        codes[check_subscribe(stub, lambda: fingerprint_of(node), info, wait_removed).name] += 1  # type: ignore[arg-type]

    run()
    still_serving(node)
    assert codes["OK"] > 0 and sum(codes.values()) > codes["OK"], codes
    gone.close()



def test_oversized_stream_openings_are_refused_with_clear_codes_and_change_nothing(node: InProcessMaster) -> None:
    link, scheduler = node.agent_link(), node.scheduler()
    codes: Counter[str] = Counter()

    @settings(max_examples=CASES // 2, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(oversized_registers())
    def registers(case: OversizedOpening) -> None:
        codes[check_oversized_register(link, lambda: fingerprint_of(node), case).name] += 1

    @settings(max_examples=CASES // 2, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(oversized_framework_infos())
    def subscriptions(case: OversizedOpening) -> None:
        codes[check_oversized_subscribe(scheduler, lambda: fingerprint_of(node), case).name] += 1

    registers()
    subscriptions()
    still_serving(node)
    assert codes["INVALID_ARGUMENT"] > 0, codes
