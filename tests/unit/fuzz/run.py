"""Large fuzz run (not part of the test suite): `python -m tests.unit.fuzz.run --cases 10000`.

Runs `--cases` fuzzed unary requests (and a twentieth as many oversized ones), then `--stream-cases` of each stream family (hostile first
messages on AgentLink.Connect, hostile messages on a registered agent stream, hostile subscriptions).
Prints how many ran, the status codes they got, and fails loudly on a wrong code, a refused call that
changed the state, or a master that stopped serving."""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter

from hypothesis import HealthCheck, given, settings

from tessera.v1 import agent_pb2, common_pb2, operator_pb2, operator_pb2_grpc, scheduler_pb2_grpc
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
from tests.unit.fuzz.streams import (
    check_first_message,
    check_follow_up,
    check_subscribe,
    first_messages,
    follow_ups,
    framework_infos,
    removed_waiter,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--stream-cases", type=int, default=None, help="per stream family (default: --cases / 3)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the master logs every refusal; the summary says enough
    unary = run_unary(args.cases)
    streams = run_streams(args.cases // 3 if args.stream_cases is None else args.stream_cases)
    print(f"in all: {unary + streams} fuzzed requests and stream messages, 0 wrong codes, 0 refusals that "
          f"changed the state")
    return 0


def run_unary(cases: int) -> int:
    # no allocation loop: its offers, committed concurrently, would make "refused but changed" ambiguous
    with InProcessMaster(allocation=False, settings=FUZZ_SETTINGS) as node:
        agent = ScriptedAgent(node.channel).start()
        agent.registered.wait(5)
        fw = ScriptedFramework(node.channel).start()
        fw.subscribed.wait(5)
        stubs = {"operator": operator_pb2_grpc.OperatorStub(node.channel),
                 "scheduler": scheduler_pb2_grpc.SchedulerStub(node.channel)}
        codes: Counter[str] = Counter()
        methods: Counter[str] = Counter()
        started = time.monotonic()

        @settings(max_examples=cases, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(calls([fw.framework_id]))
        def run(call: tuple[str, str, object]) -> None:
            service, method, request = call
            codes[check_call(stubs, lambda: str(node.master.read_state(lambda s: s.fingerprint())),
                             service, method, request).name] += 1
            methods[method] += 1

        run()
        oversized: Counter[str] = Counter()

        @settings(max_examples=max(1, cases // 20), deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        @given(oversized_calls(fw.framework_id))
        def run_oversized(case: Oversized) -> None:
            oversized[check_oversized(stubs, lambda: str(node.master.read_state(lambda s: s.fingerprint())),
                                      case).name] += 1

        run_oversized()
        stubs["operator"].GetQuorum(operator_pb2.GetQuorumRequest(), timeout=5)
        fw.close()
        agent.close()
    print(f"{sum(oversized.values())} oversized requests (thousands of arguments, megabyte strings, huge "
          f"repeated fields), all refused with a clear code, none changed the state:", dict(oversized.most_common()))
    print(f"{sum(codes.values())} fuzzed requests in {time.monotonic() - started:.0f} s, 0 wrong codes, "
          f"0 refused calls that changed the state; the master kept serving")
    print("codes:", dict(codes.most_common()))
    print("methods:", dict(methods.most_common()))
    return sum(codes.values())


def run_streams(cases: int) -> int:
    started = time.monotonic()
    first_codes: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    subscribe_codes: Counter[str] = Counter()
    with InProcessMaster(allocation=False, settings=FUZZ_SETTINGS) as node:
        assert node.channel is not None

        def fingerprint() -> str:
            return str(node.master.read_state(lambda s: s.fingerprint()))

        quick = settings(max_examples=cases, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        link = node.agent_link()

        @quick
        @given(first_messages(["agent-that-never-was"]))
        def first(message: agent_pb2.AgentMessage) -> None:
            first_codes[check_first_message(link, fingerprint, message)[0].name] += 1

        first()
        agent = ScriptedAgent(node.channel).start()
        assert agent.registered.wait(5)
        counter = [0]

        @quick
        @given(follow_ups([agent.agent_id, "some-other-agent"]))
        def follow(message: agent_pb2.AgentMessage) -> None:
            kinds[check_follow_up(agent, fingerprint, message, counter)] += 1

        follow()
        assert not agent.ended.is_set(), "the registered agent's stream ended"
        scheduler = node.scheduler()
        wait_removed = removed_waiter(node.master)

        @quick
        @given(framework_infos([]))
        def subscribe(info: common_pb2.FrameworkInfo) -> None:
            subscribe_codes[check_subscribe(scheduler, fingerprint, info, wait_removed).name] += 1

        subscribe()
        node.operator().GetQuorum(operator_pb2.GetQuorumRequest(), timeout=5)
        agent.close()
    total = sum(first_codes.values()) + sum(kinds.values()) + sum(subscribe_codes.values())
    print(f"{total} fuzzed stream cases in {time.monotonic() - started:.0f} s; the master kept serving")
    print("AgentLink first message:", dict(first_codes.most_common()))
    print("AgentLink on a registered stream (all refused, acknowledged, state unchanged):", dict(kinds.most_common()))
    print("Scheduler.Subscribe:", dict(subscribe_codes.most_common()))
    return total


if __name__ == "__main__":
    raise SystemExit(main())
