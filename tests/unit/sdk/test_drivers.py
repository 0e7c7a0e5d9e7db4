"""Both drivers (blocking and asyncio) against the in-memory FakeMaster: offers, launches, automatic and
explicit acknowledgements, decline filters, suppress/revive, reconcile, kill, failures and failover."""

from __future__ import annotations

from typing import Any

import pytest

from tessera.sdk import (
    Conflict,
    DriverStopped,
    Filters,
    InvalidRequest,
    NotFound,
    Resources,
    TaskInfo,
    TaskState,
    Unavailable,
)
from tessera.sdk.protocol import AcceptCall, AcknowledgeCall, KillCall, ReviveCall
from tessera.sdk.testing import FakeMaster, runs_and_finishes
from tests.unit.sdk.harness import Harness, on_offers, on_update

pytestmark = pytest.mark.timeout(60)

SMALL = Resources.of(cpus=0.5, mem=64)


def task(task_id: str, resources: Resources = SMALL) -> TaskInfo:
    return TaskInfo(task_id=task_id, resources=resources, command="sleep 1")


def started(make: Any, fake: FakeMaster, **options: Any) -> Harness:
    h = make(fake, **options).start()
    h.subscribed()
    return h


# ---- offers and launches --------------------------------------------------------------------------------

def test_offers_arrive_and_a_launch_goes_through(make: Any) -> None:
    fake = FakeMaster()
    agent = fake.add_agent("cpus:2;mem:512", attributes={"rack": "r1"})
    h = started(make, fake)
    offers = h.rec.wait_for(h.rec.offers, "an offer")
    assert offers[0].agent_id == agent and offers[0].cpus == 2 and offers[0].mem == 512
    assert offers[0].attributes == {"rack": "r1"}
    h.call("launch", offers[0], [task("t1")])
    assert fake.task("t1").state is TaskState.TASK_STAGING and fake.task("t1").agent_id == agent
    (address, header, call), = [c for c in fake.calls if isinstance(c[2], AcceptCall)]
    assert header.framework_id == h.driver.framework_id and header.stream_id == fake.framework().stream_id
    assert header.request_id and address == fake.leader


def test_launch_by_offer_id_places_the_task_on_that_offers_agent(make: Any) -> None:
    fake = FakeMaster()
    agent = fake.add_agent("cpus:1;mem:256")
    h = started(make, fake)
    offer = h.rec.wait_for(h.rec.offers, "an offer")[0]
    h.call("accept", offer.offer_id, [task("t1")])
    (launch,) = fake.calls_of(AcceptCall)[0].operations
    assert launch.tasks[0].agent_id == agent  # type: ignore[union-attr]


def test_calls_made_from_inside_callbacks(make: Any) -> None:
    fake = FakeMaster(behaviour=runs_and_finishes)
    fake.add_agent("cpus:1;mem:256")
    h = make(fake)
    launched: list[str] = []

    def plan(offers: list[Any]) -> list[tuple[Any, ...]]:
        if launched:
            return [("decline", offers, Filters(600))]
        launched.append("t1")
        return [("launch", offers[0], [task("t1")])]

    on_offers(h, plan)
    h.start()
    h.rec.wait_for(lambda: [s for s in h.rec.statuses("t1") if s.state is TaskState.TASK_FINISHED], "FINISHED")
    assert [s.state for s in h.rec.statuses("t1")] == [
        TaskState.TASK_STARTING, TaskState.TASK_RUNNING, TaskState.TASK_FINISHED]


def test_updates_are_acknowledged_automatically_after_the_callback(make: Any) -> None:
    fake = FakeMaster(behaviour=runs_and_finishes)
    fake.add_agent("cpus:1;mem:256")
    h = started(make, fake)
    h.call("launch", h.rec.wait_for(h.rec.offers, "an offer")[0], [task("t1")])
    fake.wait_for(lambda: len(fake.acknowledged) == 3, what="three acknowledgements")
    assert fake.acknowledged == [s.uuid for s in fake.task("t1").statuses if s.uuid]
    assert fake.framework().unacknowledged == ()


def test_an_update_whose_callback_raises_is_not_acknowledged(make: Any) -> None:
    fake = FakeMaster()
    fake.add_agent("cpus:1;mem:256")
    h = make(fake)
    if h.kind == "sync":
        def boom(driver: Any, status: Any) -> None:
            if status.state is TaskState.TASK_RUNNING:
                raise RuntimeError("scheduler bug")
    else:
        async def boom(driver: Any, status: Any) -> None:  # type: ignore[misc]
            if status.state is TaskState.TASK_RUNNING:
                raise RuntimeError("scheduler bug")
    h.rec.on_update = boom
    h.start()
    h.call("launch", h.rec.wait_for(h.rec.offers, "an offer")[0], [task("t1")])
    running = fake.update("t1", TaskState.TASK_RUNNING)
    finished = fake.update("t1", TaskState.TASK_FINISHED, exit_code=0)
    fake.wait_for(lambda: finished.uuid in fake.acknowledged, what="the FINISHED acknowledgement")
    assert running.uuid not in fake.acknowledged
    assert [s.uuid for s in fake.framework().unacknowledged] == [running.uuid]


def test_explicit_acknowledgements(make: Any) -> None:
    fake = FakeMaster(behaviour=runs_and_finishes)
    fake.add_agent("cpus:1;mem:256")
    h = started(make, fake, implicit_acknowledgements=False)
    h.call("launch", h.rec.wait_for(h.rec.offers, "an offer")[0], [task("t1")])
    statuses = h.rec.wait_for(lambda: h.rec.statuses("t1")[2:], "three updates") and h.rec.statuses("t1")
    assert len(fake.framework().unacknowledged) == 3 and not fake.calls_of(AcknowledgeCall)
    for status in statuses:
        h.call("acknowledge", status)
    assert fake.acknowledged == [s.uuid for s in statuses]
    assert fake.framework().unacknowledged == ()


def test_acknowledge_is_refused_when_the_driver_acknowledges_itself(make: Any) -> None:
    fake = FakeMaster(behaviour=runs_and_finishes)
    fake.add_agent("cpus:1;mem:256")
    h = started(make, fake)
    h.call("launch", h.rec.wait_for(h.rec.offers, "an offer")[0], [task("t1")])
    status = h.rec.wait_for(lambda: h.rec.statuses("t1"), "an update")[0]
    with pytest.raises(InvalidRequest):
        h.call("acknowledge", status)


# ---- declines, suppress, revive --------------------------------------------------------------------------

def test_decline_with_filters_keeps_the_agent_away_for_refuse_seconds(make: Any) -> None:
    fake = FakeMaster()
    agent = fake.add_agent("cpus:1;mem:256")
    h = started(make, fake)
    offer = h.rec.wait_for(h.rec.offers, "an offer")[0]
    h.call("decline", [offer], Filters(refuse_seconds=60))
    assert fake.framework().refused_agents == {agent: fake.now + 60}
    assert fake.offers() == [] and h.driver.outstanding_offers() == ()
    fake.advance(59)
    assert fake.offers() == []
    fake.advance(2)
    again = h.rec.wait_for(lambda: h.rec.offers()[1:], "the agent offered again")
    assert again[0].agent_id == agent and again[0].offer_id != offer.offer_id


def test_decline_without_filters_takes_the_masters_default(make: Any) -> None:
    fake = FakeMaster()
    agent = fake.add_agent("cpus:1;mem:256")
    h = started(make, fake)
    h.call("decline", h.rec.wait_for(h.rec.offers, "an offer")[0])
    assert fake.framework().refused_agents == {agent: fake.now + 5.0}


def test_suppress_stops_offers_until_revive(make: Any) -> None:
    fake = FakeMaster()
    fake.add_agent("cpus:1;mem:256")
    h = started(make, fake)
    h.call("suppress")
    h.call("decline", h.rec.wait_for(h.rec.offers, "an offer"), Filters(1))
    assert fake.framework().suppressed_roles == {"default"}
    fake.advance(100)
    assert fake.offers() == [] and len(h.rec.offers()) == 1
    h.call("revive")
    assert fake.framework().suppressed_roles == frozenset()
    h.rec.wait_for(lambda: h.rec.offers()[1:], "an offer after revive")


def test_rescinded_offers_are_reported_and_forgotten(make: Any) -> None:
    fake = FakeMaster(auto_offer=False)
    fake.add_agent("cpus:1;mem:256")
    h = started(make, fake)
    (offer,) = fake.send_offers()
    h.rec.wait_for(h.rec.offers, "the offer")
    assert [o.offer_id for o in h.driver.outstanding_offers()] == [offer.offer_id]
    fake.rescind(offer.offer_id)
    h.rec.wait_for(lambda: h.rec.of("rescinded"), "the rescind")
    assert h.rec.of("rescinded") == [offer.offer_id] and h.driver.outstanding_offers() == ()
    with pytest.raises(Conflict):
        h.call("launch", offer, [task("t1")])


# ---- reconcile, kill, message ----------------------------------------------------------------------------

def test_reconcile_explicit_and_implicit(make: Any) -> None:
    fake = FakeMaster()
    fake.add_agent("cpus:2;mem:512")
    h = started(make, fake)
    h.call("launch", h.rec.wait_for(h.rec.offers, "an offer")[0], [task("t1"), task("t2")])
    fake.update("t1", TaskState.TASK_RUNNING)
    explicit = h.call("reconcile", ["t1", "unknown"])
    assert [(s.task_id, s.state) for s in explicit] == [("t1", TaskState.TASK_RUNNING),
                                                        ("unknown", TaskState.TASK_LOST)]
    implicit = h.call("reconcile")
    assert {(s.task_id, s.state) for s in implicit} == {("t1", TaskState.TASK_RUNNING),
                                                        ("t2", TaskState.TASK_STAGING)}


def test_kill_reaches_the_master_with_its_grace_and_the_task_ends_killed(make: Any) -> None:
    fake = FakeMaster()
    fake.add_agent("cpus:1;mem:256")
    h = started(make, fake)
    h.call("launch", h.rec.wait_for(h.rec.offers, "an offer")[0], [task("t1")])
    h.call("kill", "t1", 3.0)
    assert fake.calls_of(KillCall) == [KillCall("t1", 3.0)]
    killed = h.rec.wait_for(lambda: [s for s in h.rec.statuses("t1") if s.state is TaskState.TASK_KILLED],
                            "TASK_KILLED")
    assert killed[0].is_terminal
    with pytest.raises(NotFound):
        h.call("kill", "no-such-task")


def test_messages_both_ways(make: Any) -> None:
    fake = FakeMaster()
    agent = fake.add_agent("cpus:1;mem:256")
    h = started(make, fake)
    h.call("message", agent, b"ping")
    assert fake.messages == [(h.driver.framework_id, agent, b"ping")]
    fake.send_message(h.driver.framework_id, agent, b"pong")
    assert h.rec.wait_for(lambda: h.rec.of("message"), "a message") == [(agent, b"pong")]


# ---- errors ------------------------------------------------------------------------------------------------

def test_domain_errors_surface_as_typed_exceptions(make: Any) -> None:
    fake = FakeMaster(auto_offer=False)
    fake.add_agent("cpus:1;mem:256")
    fake.add_agent("cpus:1;mem:256")
    h = started(make, fake)
    o1, o2 = fake.send_offers()
    h.rec.wait_for(lambda: len(h.rec.offers()) == 2, "two offers")
    with pytest.raises(NotFound):
        h.call("decline", "no-such-offer")
    with pytest.raises(Conflict):  # does not fit
        h.call("launch", o1, [task("big", Resources.of(cpus=8, mem=64))])
    with pytest.raises(InvalidRequest):  # offers on two agents
        h.call("launch", [o1, o2], [task("t1")])
    h.call("launch", o1, [task("t1")])
    with pytest.raises(Conflict):  # offer used
        h.call("launch", o1, [task("t2")])
    with pytest.raises(Conflict):  # task id used
        h.call("launch", o2, [task("t1")])


def test_calls_before_start_are_refused(make: Any) -> None:
    h = make(FakeMaster())
    with pytest.raises(DriverStopped):
        h.call("revive")
    h.start()


def test_a_removed_framework_hears_error_and_the_driver_stops(make: Any) -> None:
    fake = FakeMaster()
    h = started(make, fake)
    fake.remove_framework(h.driver.framework_id, "failover timeout expired")
    assert h.join()
    assert "failover timeout expired" in h.rec.of("error")[0]
    assert h.rec.names()[-2:] == ["disconnected", "error"]
    assert h.driver.failure
    with pytest.raises(DriverStopped):
        h.call("revive")


def test_no_master_answering_ends_with_error(make: Any) -> None:
    fake = FakeMaster(["m1:5050", "m2:5050"])
    fake.set_down("m1:5050")
    fake.set_down("m2:5050")
    h = make(fake, give_up_after=0.3).start()
    assert h.join()
    assert "no master answered" in h.rec.of("error")[0]
    assert h.rec.of("subscribed") == []
    assert len(fake.subscribe_requests) >= 2


def test_teardown_removes_the_framework_and_stops_the_driver(make: Any) -> None:
    fake = FakeMaster()
    fake.add_agent("cpus:1;mem:256")
    h = started(make, fake)
    h.call("launch", h.rec.wait_for(h.rec.offers, "an offer")[0], [task("t1")])
    h.call("teardown")
    assert h.join()
    assert fake.framework().removed and fake.task("t1").state is TaskState.TASK_KILLED
    assert h.rec.of("error") == []


def test_stop_from_a_callback_still_acknowledges_the_update_being_handled(make: Any) -> None:
    fake = FakeMaster(behaviour=runs_and_finishes)
    fake.add_agent("cpus:1;mem:256")
    h = make(fake)
    on_update(h, lambda status: [("stop",)] if status.is_terminal else [])
    h.start()
    h.call("launch", h.rec.wait_for(h.rec.offers, "an offer")[0], [task("t1")])
    assert h.join()
    assert len(fake.acknowledged) == 3 and fake.framework().unacknowledged == ()
    assert h.rec.names()[-1] == "update"


# ---- reconnection and failover ------------------------------------------------------------------------------

def test_a_broken_stream_resubscribes_with_the_same_framework_id(make: Any) -> None:
    fake = FakeMaster()
    fake.add_agent("cpus:1;mem:256")
    h = started(make, fake, implicit_acknowledgements=False)
    first_id = h.driver.framework_id
    h.call("launch", h.rec.wait_for(h.rec.offers, "an offer")[0], [task("t1")])
    running = fake.update("t1", TaskState.TASK_RUNNING)
    h.rec.wait_for(lambda: h.rec.statuses("t1"), "the RUNNING update")

    fake.drop_stream()
    h.rec.wait_for(lambda: len(h.rec.of("subscribed")) == 2, "a second subscription")
    assert h.rec.of("subscribed") == [first_id, first_id]
    assert "disconnected" in h.rec.names()
    assert [info.framework_id for _, info in fake.subscribe_requests] == ["", first_id]
    assert fake.framework().subscriptions == 2 and fake.task("t1").state is TaskState.TASK_RUNNING
    # the unacknowledged update is delivered again after the re-subscription
    again = h.rec.wait_for(lambda: h.rec.statuses("t1")[1:], "the update re-sent")
    assert again[0].uuid == running.uuid
    h.call("acknowledge", again[0])
    assert fake.acknowledged == [running.uuid]


def test_leader_failover_follows_the_hint_and_keeps_the_framework(make: Any) -> None:
    fake = FakeMaster(["m1:5050", "m2:5050", "m3:5050"])
    h = started(make, fake)
    fid = h.driver.framework_id
    assert h.driver.master == "m1:5050"
    fake.failover("m3:5050")
    h.rec.wait_for(lambda: len(h.rec.of("subscribed")) == 2, "re-subscription")
    assert fake.subscribe_requests[-1] == ("m3:5050", fake.subscribe_requests[-1][1])
    assert fake.subscribe_requests[-1][1].framework_id == fid
    h.call("revive")
    assert fake.calls[-1][0] == "m3:5050"


def test_a_call_answered_by_a_deposed_leader_moves_to_the_new_one(make: Any) -> None:
    fake = FakeMaster(["m1:5050", "m2:5050"])
    h = started(make, fake)
    fake.add_address("m2:5050", leader=True)  # leadership moved; the old stream has not noticed yet
    h.call("revive")
    revives = [(address, header) for address, header, call in fake.calls if isinstance(call, ReviveCall)]
    assert [a for a, _ in revives] == ["m1:5050", "m2:5050"]
    assert revives[0][1].request_id == revives[1][1].request_id
    assert revives[0][1].stream_id != revives[1][1].stream_id  # resent on the new subscription
    assert h.driver.master == "m2:5050"


def test_a_call_whose_answer_was_lost_is_retried_with_the_same_request_id_and_applied_once(make: Any) -> None:
    fake = FakeMaster()
    fake.add_agent("cpus:1;mem:256")
    h = started(make, fake)
    fake.fail_next(AcceptCall, Unavailable("commit outcome unknown"), after_apply=True)
    h.call("launch", h.rec.wait_for(h.rec.offers, "an offer")[0], [task("t1")])
    attempts = [header for _, header, call in fake.calls if isinstance(call, AcceptCall)]
    assert len(attempts) == 2 and attempts[0].request_id == attempts[1].request_id
    assert list(fake.tasks()) == ["t1"]


def test_a_call_failing_for_good_is_not_retried(make: Any) -> None:
    fake = FakeMaster()
    h = started(make, fake)
    fake.fail_next(ReviveCall, NotFound("gone"))
    with pytest.raises(NotFound):
        h.call("revive")
    assert len(fake.calls_of(ReviveCall)) == 1


def test_unavailable_calls_give_up_at_the_call_timeout(make: Any) -> None:
    fake = FakeMaster()
    h = started(make, fake, call_timeout=0.5)
    for _ in range(100):
        fake.fail_next(ReviveCall, Unavailable("no quorum"))
    with pytest.raises(Unavailable):
        h.call("revive")
    assert len(fake.calls_of(ReviveCall)) >= 2


def test_a_silent_stream_is_abandoned_and_the_driver_resubscribes(make: Any) -> None:
    fake = FakeMaster(heartbeat_interval=0.05)  # the fake sends no heartbeat unless told to
    h = started(make, fake)
    h.rec.wait_for(lambda: len(h.rec.of("subscribed")) >= 2, "a re-subscription after silence")
    assert len(set(h.rec.of("subscribed"))) == 1
    assert "disconnected" in h.rec.names()


def test_not_leader_on_subscribe_is_followed(make: Any) -> None:
    fake = FakeMaster(["m1:5050", "m2:5050"])
    fake.add_address("m2:5050", leader=True)
    h = started(make, fake)
    assert [a for a, _ in fake.subscribe_requests] == ["m1:5050", "m2:5050"]
    assert h.driver.master == "m2:5050"


def test_both_drivers_dispatch_every_effect_through_the_one_callback_table() -> None:
    import typing

    from tessera.sdk import AsyncScheduler, Scheduler
    from tessera.sdk._shell import CALLBACKS
    from tessera.sdk.session import Effect

    assert set(CALLBACKS) == set(typing.get_args(Effect))
    for name, _ in CALLBACKS.values():
        assert callable(getattr(Scheduler, name)) and callable(getattr(AsyncScheduler, name))
