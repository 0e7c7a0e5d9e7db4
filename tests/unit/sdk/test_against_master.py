"""The SDK against the real master (one in-process master on the in-memory twins, its real Scheduler
service on 127.0.0.1, and a scripted agent): what FakeMaster promises, the master does too."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tessera.sdk import FrameworkInfo, Resources, TaskState
from tessera.sdk.examples.batch import BatchRunner, run_batch
from tessera.sdk.run import RunOptions, run_task
from tests.support.inprocess import InProcessMaster
from tests.support.scripted import ScriptedAgent
from tests.unit.sdk.harness import AsyncHarness, Harness, SyncHarness

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def master() -> Iterator[InProcessMaster]:
    with InProcessMaster() as m:
        assert m.channel is not None
        agent = ScriptedAgent(m.channel, resources="cpus:2;mem:1024", attributes=(("rack", "r1"),)).start()
        assert agent.registered.wait(10)
        yield m
        agent.close()


def test_batch_runner_against_the_master(master: InProcessMaster) -> None:
    runner = BatchRunner(["true"] * 5, Resources.of(cpus=0.5, mem=64), max_retries=0)
    summary = run_batch(runner, FrameworkInfo(name="batch"), [master.grpc_address], call_timeout=10.0)
    assert summary.ok and len(summary.succeeded) == 5, summary.render()
    state = master.state()
    assert all(t.state is TaskState.TASK_FINISHED for t in state.completed_tasks.values())


@pytest.mark.parametrize("kind", [SyncHarness, AsyncHarness])
def test_driver_calls_against_the_master(master: InProcessMaster, kind: type[Harness]) -> None:
    h = kind(None, FrameworkInfo(name="calls"), masters=[master.grpc_address])
    try:
        _exercise(master, h)
    finally:
        if isinstance(h, AsyncHarness):
            h.close()


def _exercise(master: InProcessMaster, h: Harness) -> None:
    h.start()
    framework_id = h.subscribed()
    offers = h.rec.wait_for(h.rec.offers, "an offer from the master")
    assert offers[0].attributes == {"rack": "r1"} and offers[0].cpus == 2
    h.call("suppress")
    h.call("decline", offers)
    assert master.state().frameworks[framework_id].suppressed_roles == {"default"}
    h.call("revive")
    h.rec.wait_for(lambda: h.rec.offers()[1:], "an offer after revive")
    assert [s.state for s in h.call("reconcile", ["nope"])] == [TaskState.TASK_LOST]
    h.call("teardown")
    assert h.join()
    assert master.state().frameworks[framework_id].removed_reason


def test_tessera_run_against_the_master(master: InProcessMaster) -> None:
    lines: list[str] = []

    class Sink:
        def write(self, text: str) -> int:
            lines.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    code = run_task(RunOptions(command=("echo", "hi"), masters=(master.grpc_address,)), out=Sink(),  # type: ignore[arg-type]
                    err=Sink())  # type: ignore[arg-type]
    assert code == 0, "".join(lines)
    assert any("TASK_FINISHED" in line for line in lines)


@pytest.mark.parametrize("kind", [SyncHarness, AsyncHarness])
def test_a_standby_driver_takes_over_with_the_state_against_the_master(master: InProcessMaster,
                                                                       kind: type[Harness]) -> None:
    info = FrameworkInfo(name="services", failover_timeout=600.0)
    active = kind(None, info, masters=[master.grpc_address], standby=True)
    standby = kind(None, info, masters=[master.grpc_address], standby=True)
    try:
        fid = active.start().subscribed()
        assert active.rec.wait_for(lambda: active.rec.of("became_active"), "became_active") == [1]
        version = active.kv("put", "apps/web", '{"instances": 3}', version=0)
        standby.start()
        assert standby.rec.wait_for(lambda: standby.rec.of("standing_by"), "standing_by") == [(fid, 1)]
        active.stop()
        assert standby.subscribed() == fid
        assert standby.rec.wait_for(lambda: standby.rec.of("became_active"), "became_active") == [2]
        assert standby.kv("get", "apps/web").version == version
        assert [e.key for e in standby.kv("list", "apps/")] == ["apps/web"]
        standby.call("teardown")
        assert standby.join()
        assert fid not in master.state().framework_state
    finally:
        for h in (active, standby):
            if isinstance(h, AsyncHarness):
                h.close()
