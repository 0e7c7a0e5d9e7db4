"""How to test a scheduler with `tessera.sdk.testing.FakeMaster` (the example of its docstring, run), and the
fake's own rules: reservations, agent loss, request de-duplication, the state it refuses."""

from __future__ import annotations

import pytest

from tessera.sdk import (
    Conflict,
    Filters,
    FrameworkInfo,
    InvalidRequest,
    NotFound,
    Offer,
    Reserve,
    Resources,
    Scheduler,
    SchedulerDriver,
    TaskInfo,
    TaskState,
    TaskStatus,
    Unreserve,
)
from tessera.sdk.protocol import AcceptCall, CallHeader, ReviveCall, SubscribedEvent
from tessera.sdk.testing import FakeMaster, runs_and_finishes

pytestmark = pytest.mark.timeout(60)


# ---- the example: a user's scheduler and its unit test --------------------------------------------------------

class OnePerRack(Scheduler):
    """Runs one `hostname` task on each rack it is offered, declines everything else for a minute."""

    def __init__(self) -> None:
        self.racks_done: set[str] = set()
        self.finished: list[str] = []

    def offers(self, driver: SchedulerDriver, offers: list[Offer]) -> None:
        for offer in offers:
            rack = offer.attributes.get("rack", "")
            need = Resources.of(cpus=0.1, mem=16)
            if rack not in self.racks_done and offer.fits(need):
                self.racks_done.add(rack)
                driver.launch(offer, [TaskInfo(task_id=f"hostname-{rack}", resources=need, command="hostname")])
            else:
                driver.decline(offer, Filters(refuse_seconds=60))

    def update(self, driver: SchedulerDriver, status: TaskStatus) -> None:
        if status.state is TaskState.TASK_FINISHED:
            self.finished.append(status.task_id)


def test_example_one_task_per_rack() -> None:
    fake = FakeMaster(behaviour=runs_and_finishes)  # every task starts, runs and exits 0
    fake.add_agent("cpus:1;mem:256", attributes={"rack": "r1"})
    fake.add_agent("cpus:1;mem:256", attributes={"rack": "r1"})
    fake.add_agent("cpus:1;mem:256", attributes={"rack": "r2"})
    scheduler = OnePerRack()
    driver = SchedulerDriver(scheduler, FrameworkInfo(name="per-rack"), fake.addresses, transport=fake.transport())
    with driver:
        fake.wait_for(lambda: len(fake.tasks_in(TaskState.TASK_FINISHED)) == 2, what="two finished tasks")
        fake.wait_for(lambda: not fake.framework().unacknowledged, what="every update acknowledged")
        # everything else it was offered (the second r1 agent, leftovers, freed resources) it declines
        fake.wait_for(lambda: not fake.offers() and len(fake.framework().refused_agents) == 3,
                      what="every agent declined")
    assert sorted(fake.tasks()) == ["hostname-r1", "hostname-r2"]
    assert sorted(scheduler.finished) == ["hostname-r1", "hostname-r2"]


# ---- the fake's own rules -------------------------------------------------------------------------------------

def subscribed(fake: FakeMaster) -> CallHeader:
    stream = fake.transport().subscribe(fake.leader, FrameworkInfo(name="raw", roles=("web",)))
    event = stream.next(5.0)
    assert isinstance(event, SubscribedEvent)
    return CallHeader(event.framework_id, event.stream_id, "")


def accept(fake: FakeMaster, header: CallHeader, offer_id: str, *ops: object) -> None:
    fake.transport().call(fake.leader, header, AcceptCall((offer_id,), tuple(ops)), 5.0)  # type: ignore[arg-type]


def test_reserve_and_unreserve_change_what_the_agent_offers() -> None:
    fake = FakeMaster()
    agent = fake.add_agent("cpus:4;mem:1024")
    header = subscribed(fake)
    (offer,) = fake.offers()
    accept(fake, header, offer.offer_id, Reserve(Resources.of(role="web", cpus=2)))
    (view,) = fake.agents()
    assert view.resources.scalar("cpus", "web") == 2 and view.resources.scalar("cpus", "") == 2
    (offer,) = fake.offers()  # what is left, offered again at once
    assert offer.agent_id == agent and offer.resources.scalar("cpus", "web") == 2
    accept(fake, header, offer.offer_id, Unreserve(Resources.of(role="web", cpus=2)))
    assert fake.agents()[0].resources == Resources.parse("cpus:4;mem:1024")
    (offer,) = fake.offers()
    with pytest.raises(InvalidRequest):  # a reservation for a role the offer is not for
        accept(fake, header, offer.offer_id, Reserve(Resources.of(role="other", cpus=1)))
    with pytest.raises(Conflict):  # more than the offer has
        accept(fake, header, offer.offer_id, Reserve(Resources.of(role="web", cpus=5)))


def test_a_removed_agent_loses_its_tasks_and_offers() -> None:
    fake = FakeMaster(auto_offer=False)
    agent = fake.add_agent("cpus:1;mem:256")
    header = subscribed(fake)
    (offer,) = fake.send_offers()
    from tessera.sdk import Launch

    accept(fake, header, offer.offer_id, Launch((TaskInfo(task_id="t", resources=Resources.of(cpus=1),
                                                          command="x"),)))
    fake.remove_agent(agent)
    task = fake.task("t")
    assert task.state is TaskState.TASK_LOST and task.statuses[-1].reason == "REASON_AGENT_REMOVED"
    with pytest.raises(Conflict):
        fake.update("t", TaskState.TASK_RUNNING)
    with pytest.raises(NotFound):
        fake.update("ghost", TaskState.TASK_RUNNING)


def test_a_repeated_request_id_is_answered_without_applying_again() -> None:
    fake = FakeMaster()
    header = subscribed(fake)
    retry = CallHeader(header.framework_id, header.stream_id, "req-1")
    transport = fake.transport()
    transport.call(fake.leader, retry, ReviveCall(), 1.0)
    fake.fail_next(ReviveCall, InvalidRequest("would fail if applied"), after_apply=True)
    with pytest.raises(InvalidRequest):
        transport.call(fake.leader, retry, ReviveCall(), 1.0)
    transport.call(fake.leader, retry, ReviveCall(), 1.0)
    assert len(fake.calls_of(ReviveCall)) == 3


def test_wait_for_is_bounded() -> None:
    fake = FakeMaster()
    with pytest.raises(TimeoutError):
        fake.wait_for(lambda: fake.tasks(), timeout=0.05, what="tasks that never come")


def test_health_checks_are_checked_at_the_launch_and_health_is_reported_as_the_agent_would() -> None:
    from tessera.sdk import HealthCheck, HttpCheck, Launch

    fake = FakeMaster(auto_offer=False)
    fake.add_agent("cpus:1;mem:256;ports:[31000-31010]")
    header = subscribed(fake)
    (offer,) = fake.send_offers()
    resources = Resources.of(cpus=0.1, ports=[(31005, 31005)])
    unheld = TaskInfo(task_id="web", resources=resources, command="serve",
                      health_check=HealthCheck(http=HttpCheck(port=8080)))
    with pytest.raises(InvalidRequest, match=r"task web\.health_check\.http\.port"):
        accept(fake, header, offer.offer_id, Launch((unheld,)))
    held = TaskInfo(task_id="web", resources=resources, command="serve",
                    health_check=HealthCheck(http=HttpCheck(port=31005)))
    accept(fake, header, offer.offer_id, Launch((held,)))
    fake.update("web", TaskState.TASK_RUNNING)
    status = fake.update("web", TaskState.TASK_RUNNING, healthy=True, reason="REASON_TASK_HEALTH_CHECK_STATUS_UPDATED")
    assert status.healthy is True and fake.task("web").statuses[-1].healthy is True
