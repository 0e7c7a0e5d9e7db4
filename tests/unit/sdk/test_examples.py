"""The example frameworks against FakeMaster: the batch runner finishes N jobs with retries, the service
keeper keeps K instances running, replaces failed ones, spreads them by attribute and scales."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from tessera.sdk import (
    Backoff,
    Filters,
    FrameworkInfo,
    Offer,
    Resources,
    SchedulerDriver,
    TaskInfo,
    TaskState,
)
from tessera.sdk.errors import Conflict, ServerError, Unavailable
from tessera.sdk.examples import batch, service
from tessera.sdk.examples.batch import BatchRunner, run_batch
from tessera.sdk.examples.service import ServiceKeeper
from tessera.sdk.protocol import AcceptCall, DeclineCall, KillCall, ReconcileCall, ReviveCall
from tessera.sdk.testing import FakeGrpcServer, FakeMaster, StatusStep, runs_and_finishes

pytestmark = pytest.mark.timeout(60)

JOB = Resources.of(cpus=0.5, mem=64)


def script(fail: dict[int, int], code: int = 3):  # type: ignore[no-untyped-def]
    """A behaviour: job i fails its first `fail[i]` attempts with exit `code`, then succeeds."""

    def behaviour(task: TaskInfo) -> list[TaskState | StatusStep]:
        index, attempt = int(task.env["BATCH_JOB_INDEX"]), int(task.env["BATCH_ATTEMPT"])
        if attempt <= fail.get(index, 0):
            return [TaskState.TASK_RUNNING, StatusStep(TaskState.TASK_FAILED, exit_code=code,
                                                       message=f"command exited with status {code}")]
        return [TaskState.TASK_RUNNING, StatusStep(TaskState.TASK_FINISHED, exit_code=0)]

    return behaviour


# ---- batch ---------------------------------------------------------------------------------------------------

def test_batch_runner_completes_n_jobs_retrying_failures() -> None:
    fake = FakeMaster(behaviour=script({1: 1, 4: 2}))
    fake.add_agent("cpus:1;mem:1024")
    fake.add_agent("cpus:1;mem:1024")
    runner = BatchRunner(["sleep 0.1"] * 10, JOB, max_retries=2)
    summary = run_batch(runner, FrameworkInfo(name="batch"), fake.addresses, transport=fake.transport())
    assert summary.ok and len(summary.succeeded) == 10 and summary.failed == []
    assert summary.retried == 3
    assert summary.exit_codes() == Counter({0: 10, 3: 3})
    finished = fake.tasks_in(TaskState.TASK_FINISHED)
    assert sorted(int(t.info.env["BATCH_JOB_INDEX"]) for t in finished) == list(range(10))
    assert len(fake.tasks()) == 13 and len(set(fake.tasks())) == 13  # a fresh task id per attempt
    assert fake.framework().removed  # torn down at the end
    assert "10 succeeded, 0 failed, 3 retried" in summary.render()


def test_batch_runner_gives_up_after_max_retries_and_reports_failure() -> None:
    fake = FakeMaster(behaviour=script({2: 99}, code=7))
    fake.add_agent("cpus:2;mem:1024")
    runner = BatchRunner(["true"] * 4, JOB, max_retries=1)
    summary = run_batch(runner, FrameworkInfo(name="batch"), fake.addresses, transport=fake.transport())
    assert not summary.ok
    (failed,) = summary.failed
    assert (failed.index, failed.attempts, failed.state, failed.exit_code) == (2, 2, TaskState.TASK_FAILED, 7)
    assert len(summary.succeeded) == 3 and summary.retried == 1
    assert "job 2 failed after 2 attempt(s): TASK_FAILED exit 7" in summary.render()


def test_batch_runner_packs_offers_declines_leftovers_and_suppresses_when_nothing_waits() -> None:
    fake = FakeMaster()  # tasks stay STAGING until the test says otherwise
    fake.add_agent("cpus:1.2;mem:1024")
    runner = BatchRunner(["true"] * 3, JOB, max_retries=0, refuse_seconds=42)
    driver = SchedulerDriver(runner, FrameworkInfo(name="batch"), fake.addresses, transport=fake.transport())
    with driver:
        fake.wait_for(lambda: len(fake.tasks()) == 2, what="two jobs packed into one offer")
        # the third job waits: the 0.2 cpus left were offered again and declined with the runner's refuse filter
        fake.wait_for(lambda: fake.calls_of(DeclineCall), what="a decline")
        assert fake.calls_of(DeclineCall)[0].filters == Filters(42)
        assert not fake.framework().suppressed_roles
        for task_id in list(fake.tasks()):
            fake.update(task_id, TaskState.TASK_FINISHED, exit_code=0)
        fake.wait_for(lambda: len(fake.tasks()) == 3, what="the third job launched on the freed cpus")
        fake.wait_for(lambda: fake.framework().suppressed_roles, what="suppression once nothing waits")
        fake.update(list(fake.tasks())[-1], TaskState.TASK_FINISHED, exit_code=0)
        assert runner.done.wait(10)
    assert runner.summary().ok


def test_batch_runner_resubscribes_and_finishes_after_a_failover() -> None:
    fake = FakeMaster(["m1:5050", "m2:5050"])
    fake.add_agent("cpus:1;mem:1024")
    runner = BatchRunner(["true"] * 2, JOB, max_retries=0)
    driver = SchedulerDriver(runner, FrameworkInfo(name="batch"), fake.addresses, transport=fake.transport())
    with driver:
        fake.wait_for(lambda: len(fake.tasks()) == 2, what="two launches")
        fake.failover("m2:5050")
        fake.wait_for(lambda: fake.framework().subscriptions == 2, what="re-subscription")
        first, second = list(fake.tasks())
        fake.update(first, TaskState.TASK_FINISHED, exit_code=0)
        fake.update(second, TaskState.TASK_FINISHED, exit_code=0)
        assert runner.done.wait(10)
    assert runner.summary().ok and driver.framework_id == fake.framework().framework_id


def test_batch_runner_declares_one_jobs_resources_as_the_smallest_offer_it_can_use() -> None:
    fake = FakeMaster(behaviour=script({}))
    fake.add_agent("cpus:1;mem:1024")
    runner = BatchRunner(["true"] * 2, JOB)
    assert run_batch(runner, FrameworkInfo(name="batch"), fake.addresses, transport=fake.transport()).ok
    assert fake.framework().info.min_offer == JOB
    own = FrameworkInfo(name="batch", min_offer=Resources.of(cpus=2))
    assert runner.framework_info(own) is own  # one it sets itself is kept
    # scalars by kind: reservation roles dropped, ranges (ports) not sized
    assert batch.min_offer_for(Resources.of(role="web", cpus=0.5, mem=64, ports=[(80, 80)])) == JOB


def test_batch_main_over_grpc_exits_zero_only_when_all_succeeded(capsys: pytest.CaptureFixture[str]) -> None:
    ok = FakeMaster(behaviour=script({0: 1}))
    ok.add_agent("cpus:1;mem:1024")
    with FakeGrpcServer(ok) as server:
        assert batch.main(["--masters", server.address, "--count", "3", "--command", "sleep 0.1"]) == 0
    assert "3 succeeded, 0 failed, 1 retried" in capsys.readouterr().out
    bad = FakeMaster(behaviour=script({0: 9}))
    bad.add_agent("cpus:1;mem:1024")
    with FakeGrpcServer(bad) as server:
        assert batch.main(["--masters", server.address, "--count", "2", "--command", "false",
                           "--max-retries", "0"]) == 1
    assert "1 succeeded, 1 failed" in capsys.readouterr().out


# ---- service keeper ------------------------------------------------------------------------------------------

@pytest.fixture
def racks() -> FakeMaster:
    fake = FakeMaster()
    fake.add_agent("cpus:4;mem:4096", hostname="a1", attributes={"rack": "r1"})
    fake.add_agent("cpus:4;mem:4096", hostname="a2", attributes={"rack": "r1"})
    fake.add_agent("cpus:4;mem:4096", hostname="a3", attributes={"rack": "r2"})
    return fake


@pytest.fixture
def keeper_driver(racks: FakeMaster) -> Iterator[tuple[ServiceKeeper, SchedulerDriver]]:
    keeper = ServiceKeeper("python3 -m http.server 0", JOB, 4, spread_by="rack", refuse_seconds=30)
    driver = SchedulerDriver(keeper, FrameworkInfo(name="web"), racks.addresses, transport=racks.transport())
    with driver:
        yield keeper, driver


def rack_of(fake: FakeMaster, agent_id: str) -> str:
    return next(a.attributes["rack"] for a in fake.agents() if a.agent_id == agent_id)


def live_by_rack(fake: FakeMaster) -> Counter[str]:
    return Counter(rack_of(fake, t.agent_id) for t in fake.live_tasks())


def run_all(fake: FakeMaster) -> None:
    for t in fake.tasks_in(TaskState.TASK_STAGING):
        fake.update(t.info.task_id, TaskState.TASK_RUNNING)


def test_keeper_launches_k_instances_spread_by_attribute_then_suppresses(
        racks: FakeMaster, keeper_driver: tuple[ServiceKeeper, SchedulerDriver]) -> None:
    keeper, _ = keeper_driver
    racks.wait_for(lambda: len(racks.live_tasks()) == 4, what="4 instances")
    assert live_by_rack(racks) == Counter({"r1": 2, "r2": 2})
    assert len({t.agent_id for t in racks.live_tasks()}) == 3  # both r1 agents used
    racks.wait_for(lambda: racks.framework().suppressed_roles == {"default"}, what="suppression")
    racks.wait_for(lambda: racks.offers() == [], what="leftovers declined")
    assert all(d.filters == Filters(30) for d in racks.calls_of(DeclineCall))
    run_all(racks)
    racks.wait_for(lambda: keeper.running() == 4, what="4 running")


def test_keeper_replaces_a_failed_instance(racks: FakeMaster,
                                           keeper_driver: tuple[ServiceKeeper, SchedulerDriver]) -> None:
    keeper, _ = keeper_driver
    racks.wait_for(lambda: len(racks.live_tasks()) == 4, what="4 instances")
    run_all(racks)
    victim = next(t for t in racks.live_tasks() if rack_of(racks, t.agent_id) == "r2")
    racks.update(victim.info.task_id, TaskState.TASK_FAILED, exit_code=1, message="crashed")
    racks.wait_for(lambda: len(racks.live_tasks()) == 4 and victim.info.task_id not in
                   {t.info.task_id for t in racks.live_tasks()}, what="a replacement")
    assert keeper.restarts == 1
    assert live_by_rack(racks) == Counter({"r1": 2, "r2": 2})  # the replacement went where it was missing
    racks.wait_for(lambda: racks.framework().suppressed_roles == {"default"}, what="suppressed again")


def test_keeper_scales_up_and_down_keeping_the_spread(racks: FakeMaster,
                                                      keeper_driver: tuple[ServiceKeeper, SchedulerDriver]) -> None:
    keeper, _ = keeper_driver
    racks.wait_for(lambda: len(racks.live_tasks()) == 4, what="4 instances")
    run_all(racks)
    keeper.scale(6)
    racks.wait_for(lambda: len(racks.live_tasks()) == 6, what="6 instances")
    assert live_by_rack(racks) == Counter({"r1": 3, "r2": 3})
    run_all(racks)
    keeper.scale(2)
    racks.wait_for(lambda: len(racks.live_tasks()) == 2, what="2 instances")
    assert len(racks.calls_of(KillCall)) == 4
    assert live_by_rack(racks) == Counter({"r1": 1, "r2": 1})
    assert keeper.restarts == 0  # killed on purpose: not replaced
    racks.wait_for(lambda: racks.framework().suppressed_roles == {"default"}, what="suppressed")


def test_keeper_waits_for_the_under_loaded_rack_when_offers_come_one_agent_at_a_time() -> None:
    fake = FakeMaster(auto_offer=False)
    a1 = fake.add_agent("cpus:4;mem:4096", attributes={"rack": "r1"})
    fake.add_agent("cpus:4;mem:4096", attributes={"rack": "r1"})
    a3 = fake.add_agent("cpus:4;mem:4096", attributes={"rack": "r2"})
    keeper = ServiceKeeper("serve", JOB, 2, spread_by="rack")
    driver = SchedulerDriver(keeper, FrameworkInfo(name="web"), fake.addresses, transport=fake.transport())
    with driver:
        fake.wait_for(lambda: fake.framework().connected, what="subscription")
        fake.send_offers()
        fake.wait_for(lambda: len(fake.live_tasks()) == 2, what="2 instances")
        assert live_by_rack(fake) == Counter({"r1": 1, "r2": 1})
        keeper.scale(4)
        fake.wait_for(lambda: not fake.framework().suppressed_roles, what="revive")
        fake.advance(60)
        fake.send_offers([a1])  # only rack r1 is offered: one instance there, the next waits for r2
        fake.wait_for(lambda: len(fake.live_tasks()) == 3 and not fake.offers(), what="one more, rest declined")
        assert live_by_rack(fake) == Counter({"r1": 2, "r2": 1})
        fake.advance(60)
        fake.send_offers([a3])
        fake.wait_for(lambda: len(fake.live_tasks()) == 4, what="the fourth, on r2")
        assert live_by_rack(fake) == Counter({"r1": 2, "r2": 2})


def test_keeper_places_anywhere_after_waiting_too_long_for_the_under_loaded_rack() -> None:
    fake = FakeMaster(auto_offer=False)
    a1 = fake.add_agent("cpus:4;mem:4096", attributes={"rack": "r1"})
    fake.add_agent("cpus:4;mem:4096", attributes={"rack": "r2"})
    keeper = ServiceKeeper("serve", JOB, 2, spread_by="rack")
    driver = SchedulerDriver(keeper, FrameworkInfo(name="web"), fake.addresses, transport=fake.transport())
    with driver:
        fake.wait_for(lambda: fake.framework().connected, what="subscription")
        fake.send_offers()
        fake.wait_for(lambda: len(fake.live_tasks()) == 2, what="2 instances")
        keeper.scale(4)
        fake.wait_for(lambda: not fake.framework().suppressed_roles, what="revive")
        rounds = 0
        while len(fake.live_tasks()) < 4 and rounds < 10:
            rounds += 1
            fake.advance(60)
            fake.send_offers([a1])
            fake.wait_for(lambda: not fake.offers(), what="the offer used or declined")
        assert live_by_rack(fake) == Counter({"r1": 3, "r2": 1})
        assert rounds > 1  # it did wait for r2 first


def test_keeper_scale_from_another_thread_while_offers_flow(racks: FakeMaster,
                                                           keeper_driver: tuple[ServiceKeeper, SchedulerDriver]) -> None:
    keeper, _ = keeper_driver
    racks.wait_for(lambda: len(racks.live_tasks()) == 4, what="4 instances")
    threads = [threading.Thread(target=keeper.scale, args=(n,)) for n in (5, 7, 3)]
    for t in threads:
        t.start()
        t.join(10)
    racks.wait_for(lambda: len(racks.live_tasks()) == 3, what="3 instances", timeout=30)
    assert keeper.desired == 3


def test_keeper_control_file_and_argument_checks(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "count"
    path.write_text("5\n")
    assert service._read_count(path) == 5
    path.write_text("many")
    assert service._read_count(path) is None
    with pytest.raises(SystemExit):
        service.main(["--command", "true", "--instances", "-1"])


# ---- batch: launches that failed (issue 15, item 8 b and c) -------------------------------------------------

def _one_job_run(fake: FakeMaster, **options: Any) -> tuple[BatchRunner, SchedulerDriver]:
    runner = BatchRunner(["true"], JOB, max_retries=0)
    driver = SchedulerDriver(runner, FrameworkInfo(name="batch"), fake.addresses, transport=fake.transport(),
                             **options)
    driver.start()
    return runner, driver


def _finish(runner: BatchRunner, driver: SchedulerDriver) -> None:
    finished = runner.done.wait(15.0)
    driver.stop()
    driver.join(5.0)
    assert finished, f"the batch never finished: {runner.summary().render()}"


def test_batch_launch_that_timed_out_after_it_was_applied_is_settled_by_reconciling() -> None:
    fake = FakeMaster(behaviour=runs_and_finishes)
    fake.add_agent("cpus:1;mem:1024")
    # The launch is applied, its answer lost, and no retry fits in the call's time: the driver raises
    # Unavailable although the task exists.
    fake.fail_next(AcceptCall, Unavailable("deadline exceeded"), after_apply=True)
    runner, driver = _one_job_run(fake, call_timeout=0.05, backoff=Backoff(initial=0.1, maximum=0.1, jitter=0))
    _finish(runner, driver)
    assert runner.summary().ok
    assert len(fake.tasks()) == 1  # launched once, not again under a fresh id
    # settled by reconciling, or (the launch is pipelined) by the task's own updates when they reached the
    # callback thread before the launch's failure did: either way the job ran once
    assert len(fake.calls_of(ReconcileCall)) >= 1 or runner.summary().results[0].attempts == 1


def test_batch_launch_of_unknown_outcome_that_was_not_applied_runs_the_job_once() -> None:
    fake = FakeMaster(behaviour=runs_and_finishes)
    fake.add_agent("cpus:1;mem:1024")
    fake.fail_next(AcceptCall, ServerError("the master failed", "INTERNAL"))  # before it was applied
    runner, driver = _one_job_run(fake)
    _finish(runner, driver)
    summary = runner.summary()
    assert summary.ok and summary.results[0].attempts == 1
    assert len(fake.tasks()) == 1 and len(fake.tasks_in(TaskState.TASK_FINISHED)) == 1


def test_batch_refused_launch_declines_the_offer_and_revives_instead_of_stalling() -> None:
    fake = FakeMaster(behaviour=runs_and_finishes)
    fake.add_agent("cpus:1;mem:1024")
    fake.fail_next(AcceptCall, Conflict("tasks do not fit"))  # a definite refusal: not applied
    runner, driver = _one_job_run(fake)
    _finish(runner, driver)
    kinds = [type(call).__name__ for _, _, call in fake.calls]
    refused = kinds.index("AcceptCall")
    assert "DeclineCall" in kinds[refused:] and "ReviveCall" in kinds[refused:]
    assert runner.summary().ok and len(fake.tasks()) == 1


def test_batch_runner_does_not_revive_per_ended_task_and_pipelines_its_launches() -> None:
    """A task that ended while jobs wait needs no revive (the master offers what it freed); the launches
    go out through `launch_async`, so a run of many jobs needs only the revive that asks for offers."""
    fake = FakeMaster(behaviour=runs_and_finishes)
    fake.add_agent("cpus:1;mem:1024")  # two jobs at a time, nothing left over to decline
    runner = BatchRunner(["true"] * 12, JOB, max_retries=0)
    driver = SchedulerDriver(runner, FrameworkInfo(name="batch"), fake.addresses, transport=fake.transport())
    with driver:
        assert runner.done.wait(30)
    assert runner.summary().ok and len(runner.summary().succeeded) == 12
    assert 6 <= len(fake.calls_of(AcceptCall)) <= 12
    assert len(fake.calls_of(ReviveCall)) <= 1  # the first one; none per ended task (12 of them)


def test_batch_launch_under_way_across_a_failover_runs_the_job_once() -> None:
    """A re-subscription while a pipelined launch is under way does not reconcile that task (the master
    has not applied it yet and would answer "unknown": the job would be launched again under a fresh id);
    the launch's own outcome settles it."""
    from tests.unit.sdk.test_pipelined_launches import GatedTransport

    fake = FakeMaster(["m1:5050", "m2:5050"], behaviour=runs_and_finishes)
    fake.add_agent("cpus:1;mem:1024")
    gated = GatedTransport(fake.transport())
    runner = BatchRunner(["true"], JOB, max_retries=0)
    driver = SchedulerDriver(runner, FrameworkInfo(name="batch"), fake.addresses, transport=gated)
    driver.start()
    try:
        with gated.lock:
            assert gated.lock.wait_for(lambda: gated.in_flight == 1, 15), "the launch under way"
        fake.failover("m2:5050")
        fake.wait_for(lambda: fake.framework().subscriptions == 2, what="re-subscription")
        gated.gate.set()
        assert runner.done.wait(15)
    finally:
        gated.gate.set()
        driver.stop()
        driver.join(5)
    summary = runner.summary()
    assert summary.ok and summary.results[0].attempts == 1
    assert len(fake.tasks()) == 1  # launched once


# ---- batch: several offers of one agent in one Accept (issue 22) ---------------------------------------------

def _offer(offer_id: str, agent: str, cpus: float, role: str = "default") -> Offer:
    return Offer(offer_id=offer_id, agent_id=agent, resources=Resources.of(cpus=cpus, mem=256), role=role)


def test_offers_by_agent_groups_what_one_accept_may_name() -> None:
    a1, b1, a2, a3 = (_offer("o1", "a", 1), _offer("o2", "b", 1), _offer("o3", "a", 1),
                      _offer("o4", "a", 1, role="other"))
    assert batch.offers_by_agent([a1, b1, a2, a3]) == [[a1, a2], [b1], [a3]]
    assert batch.offers_by_agent([]) == []


class _LaunchRecorder:
    """Stands in for the driver in one `offers()` callback: records the launches, each future done at once."""

    def __init__(self) -> None:
        self.launches: list[tuple[list[str], list[str]]] = []
        self.declined: list[str] = []

    def launch_async(self, offers: list[Offer], tasks: list[TaskInfo]) -> Future[None]:
        self.launches.append(([o.offer_id for o in offers], [t.task_id for t in tasks]))
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def call_soon(self, fn: Any, *args: Any) -> None:
        pass

    def decline(self, offers: list[Offer], filters: Filters | None = None) -> None:
        self.declined.extend(o.offer_id for o in offers)

    def revive(self) -> None:
        pass

    def suppress(self) -> None:
        pass


def test_batch_runner_launches_on_all_offers_of_an_agent_in_one_accept() -> None:
    """Two half-cpu offers of one agent fit a one-cpu job only together: one Accept names both; the other
    agent's offer gets its own Accept."""
    runner = BatchRunner(["true"] * 3, Resources.of(cpus=1, mem=64), max_retries=0)
    driver = _LaunchRecorder()
    runner.offers(driver, [_offer("o1", "a", 0.5), _offer("o2", "b", 1), _offer("o3", "a", 0.5)])  # type: ignore[arg-type]
    assert [offers for offers, _ in driver.launches] == [["o1", "o3"], ["o2"]]
    assert [len(tasks) for _, tasks in driver.launches] == [1, 1]
    assert driver.declined == []
