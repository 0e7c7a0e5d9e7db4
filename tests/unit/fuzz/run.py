"""Large fuzz run (not part of the test suite): `python -m tests.unit.fuzz.run --cases 10000`.

Prints how many requests ran, the status codes they got, and fails loudly on a wrong code, a refused
call that changed the state, or a master that stopped serving."""

from __future__ import annotations

import argparse
import time
from collections import Counter

from hypothesis import HealthCheck, given, settings

from tessera.v1 import operator_pb2, operator_pb2_grpc, scheduler_pb2_grpc
from tests.support.inprocess import InProcessMaster
from tests.support.scripted import ScriptedAgent, ScriptedFramework
from tests.unit.fuzz.requests import calls, check_call


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    args = parser.parse_args()
    # no allocation loop: its offers, committed concurrently, would make "refused but changed" ambiguous
    with InProcessMaster(allocation=False) as node:
        agent = ScriptedAgent(node.channel).start()
        agent.registered.wait(5)
        fw = ScriptedFramework(node.channel).start()
        fw.subscribed.wait(5)
        stubs = {"operator": operator_pb2_grpc.OperatorStub(node.channel),
                 "scheduler": scheduler_pb2_grpc.SchedulerStub(node.channel)}
        codes: Counter[str] = Counter()
        methods: Counter[str] = Counter()
        started = time.monotonic()

        @settings(max_examples=args.cases, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(calls([fw.framework_id]))
        def run(call: tuple[str, str, object]) -> None:
            service, method, request = call
            codes[check_call(stubs, lambda: str(node.master.read_state(lambda s: s.fingerprint())),
                             service, method, request).name] += 1
            methods[method] += 1

        run()
        stubs["operator"].GetQuorum(operator_pb2.GetQuorumRequest(), timeout=5)
        fw.close()
        agent.close()
    print(f"{sum(codes.values())} fuzzed requests in {time.monotonic() - started:.0f} s, 0 wrong codes, "
          f"0 refused calls that changed the state; the master kept serving")
    print("codes:", dict(codes.most_common()))
    print("methods:", dict(methods.most_common()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
