"""Behaviour of decide + apply through the flows of ARCHITECTURE.md, one pinned behaviour per test."""

from __future__ import annotations

import pytest

from tessera.control_plane.core import commands as c
from tessera.control_plane.core.errors import Conflict, InvalidRequest, NotFound
from tessera.control_plane.core.events import (
    AgentReregistered,
    AgentUndrained,
    FrameworkRemoved,
    OfferAccepted,
    OfferDeclined,
    OfferRescinded,
    TaskKillRequested,
    TaskLaunched,
    TaskStatusAcknowledged,
    TaskStatusUpdated,
)
from tessera.control_plane.core.invariants import check_invariants
from tessera.control_plane.core.resources import EMPTY, Resources
from tessera.control_plane.core.values import (
    AgentInfo,
    AgentState,
    FrameworkInfo,
    FrameworkState,
    Offer,
    StatusSource,
    TaskState,
    TaskStatus,
)

from .harness import AGENT_RESOURCES, Harness, launch, task

S = TaskState


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.run(c.ElectLeader(term=1, master="m1", grpc_address="127.0.0.1:5051", name="m1"))
    return harness


def statuses(result_events: object) -> list[TaskStatusUpdated]:
    return [e for _, e in result_events if isinstance(e, TaskStatusUpdated)]  # type: ignore[attr-defined]


# ---- cluster ---------------------------------------------------------------------------------------
def test_elect_leader_barrier_is_idempotent_and_refuses_older_terms(h: Harness) -> None:
    assert (h.state.term, h.state.leader, h.state.leader_grpc) == (1, "m1", "127.0.0.1:5051")
    assert h.decide(c.ElectLeader(1, "m1", "127.0.0.1:5051", "m1")) == ()
    with pytest.raises(Conflict):
        h.decide(c.ElectLeader(1, "m2"))
    h.term = 2
    h.run(c.ElectLeader(2, "m2", "127.0.0.1:5052", "m2"))
    with pytest.raises(Conflict):
        h.decide(c.ElectLeader(1, "m1"))
    assert h.state.leader == "m2"


def test_announce_and_remove_master(h: Harness) -> None:
    h.run(c.AnnounceMaster("m2", "10.0.0.2:4321", "10.0.0.2:5051"))
    assert h.state.masters["10.0.0.2:4321"] == ("m2", "10.0.0.2:5051")
    assert h.decide(c.AnnounceMaster("m2", "10.0.0.2:4321", "10.0.0.2:5051")) == ()
    h.run(c.RemoveMaster("10.0.0.2:4321"))
    assert "10.0.0.2:4321" not in h.state.masters
    with pytest.raises(NotFound):
        h.decide(c.RemoveMaster("10.0.0.2:4321"))


def test_the_leader_cannot_be_removed_from_the_masters(h: Harness) -> None:
    h.run(c.AnnounceMaster("m1", "m1", "127.0.0.1:5051"))
    with pytest.raises(Conflict):
        h.decide(c.RemoveMaster("m1"))


def test_role_weight_and_quota_are_recorded_and_keep_each_other(h: Harness) -> None:
    h.run(c.SetRoleWeight("web", 3))
    h.run(c.SetQuota("web", Resources.of(cpus=2), Resources.of(cpus=4)))
    role = h.state.role("web")
    assert (role.weight, role.quota_guarantee, role.quota_limit) == (3.0, Resources.of(cpus=2), Resources.of(cpus=4))
    h.run(c.SetRoleWeight("web", 2))
    assert h.state.role("web").quota_limit == Resources.of(cpus=4)
    assert h.state.role("batch").weight == 1.0  # never configured: the default


# ---- agents and frameworks --------------------------------------------------------------------------
def test_register_agent_mints_an_id_and_records_its_resources(h: Harness) -> None:
    aid = h.agent()
    agent = h.state.agents[aid]
    assert agent.state is AgentState.AGENT_ACTIVE
    assert agent.info.agent_id == aid and agent.registered_at == h.now
    assert h.state.agent_free(aid) == Resources.parse(AGENT_RESOURCES)


def test_an_agent_with_an_id_must_reregister_not_register(h: Harness) -> None:
    with pytest.raises(InvalidRequest):
        h.decide(c.RegisterAgent(AgentInfo(agent_id="agent-9", hostname="h", resources=Resources.of(cpus=1))))


def test_subscribe_mints_framework_and_stream_ids(h: Harness) -> None:
    fid = h.framework()
    fw = h.state.frameworks[fid]
    assert fw.state is FrameworkState.FRAMEWORK_CONNECTED and fw.stream_id
    assert fw.info.framework_id == fid


def test_resubscribe_rescinds_outstanding_offers_keeps_tasks_and_changes_stream(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    h.launched(fid, aid, task("t1"))
    oid = h.offer(fid, aid)
    old_stream = h.state.frameworks[fid].stream_id
    info = FrameworkInfo(framework_id=fid, name="fw", principal="alice", roles=("web",))
    result = h.run(c.SubscribeFramework(info))
    assert [type(e) for _, e in result.events] == [OfferRescinded, type(result.events[-1][1])]
    assert oid not in h.state.offers and h.is_live("t1")
    assert h.state.frameworks[fid].stream_id not in ("", old_stream)


def test_resubscribe_with_a_different_principal_is_a_conflict(h: Harness) -> None:
    fid = h.framework(principal="alice")
    with pytest.raises(Conflict):
        h.decide(c.SubscribeFramework(FrameworkInfo(framework_id=fid, name="fw", principal="mallory",
                                                    roles=("web",))))


def test_resubscribe_with_an_unknown_framework_id_is_not_found(h: Harness) -> None:
    with pytest.raises(NotFound):
        h.decide(c.SubscribeFramework(FrameworkInfo(framework_id="nope", name="fw", roles=("web",))))


# ---- offers ------------------------------------------------------------------------------------------
def test_offered_resources_are_not_free_until_declined(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    oid = h.offer(fid, aid, Resources.of(cpus=1, mem=100))
    assert h.state.agent_free(aid) == Resources.parse(AGENT_RESOURCES) - Resources.of(cpus=1, mem=100)
    assert h.state.frameworks[fid].offered == Resources.of(cpus=1, mem=100)
    h.run(c.Decline(fid, (oid,)))
    assert h.state.agent_free(aid) == Resources.parse(AGENT_RESOURCES)
    assert h.state.frameworks[fid].offered == EMPTY


def test_issue_offers_refuses_offers_that_exceed_what_is_free(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    with pytest.raises(Conflict):
        h.decide(c.IssueOffers((Offer("", fid, aid, role="web", resources=Resources.of(cpus=5)),)))


def test_issue_offers_refuses_two_offers_of_the_same_port(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    port = Resources.of(ports=[(31000, 31000)])
    with pytest.raises(Conflict):
        h.decide(c.IssueOffers((Offer("", fid, aid, role="web", resources=port),
                                Offer("", fid, aid, role="web", resources=port))))


def test_issue_offers_refuses_disconnected_frameworks_and_draining_agents(h: Harness) -> None:
    aid, fid = h.agent(), h.framework(failover=60)
    other = h.agent()
    h.run(c.DrainAgent(other))
    with pytest.raises(Conflict):
        h.decide(c.IssueOffers((Offer("", fid, other, role="web", resources=Resources.of(cpus=1)),)))
    h.run(c.DisconnectFramework(fid))
    with pytest.raises(Conflict):
        h.decide(c.IssueOffers((Offer("", fid, aid, role="web", resources=Resources.of(cpus=1)),)))


def test_issue_offers_refuses_resources_reserved_to_another_role(h: Harness) -> None:
    aid = h.agent(Resources.of(cpus=2) + Resources.of(role="batch", cpus=2))
    fid = h.framework(roles=("web",))
    with pytest.raises(InvalidRequest):
        h.decide(c.IssueOffers((Offer("", fid, aid, role="web", resources=Resources.of(role="batch", cpus=1)),)))
    with pytest.raises(InvalidRequest):  # not one of the framework's roles
        h.decide(c.IssueOffers((Offer("", fid, aid, role="batch", resources=Resources.of(role="batch", cpus=1)),)))


def test_issued_offers_get_the_agents_hostname(h: Harness) -> None:
    aid, fid = h.agent(hostname="node-7"), h.framework()
    oid = h.offer(fid, aid)
    assert h.state.offers[oid].hostname == "node-7"


def test_decline_filter_blocks_the_agent_until_refuse_until(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    oid = h.offer(fid, aid)
    h.run(c.Decline(fid, (oid,), refuse_seconds=30))
    assert h.state.refused_until(fid, aid) == h.now + 30
    offer = Offer("", fid, aid, role="web", resources=Resources.of(cpus=1))
    h.now += 29.9
    with pytest.raises(Conflict):
        h.decide(c.IssueOffers((offer,)))
    h.now += 0.1
    h.run(c.IssueOffers((offer,)))
    assert (fid, aid) not in h.state.decline_filters  # an expired filter is forgotten when it stops mattering


def test_decline_with_zero_refuse_seconds_uses_the_five_second_default(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    h.run(c.Decline(fid, (h.offer(fid, aid),), refuse_seconds=0))
    assert h.state.refused_until(fid, aid) == h.now + 5


def test_decline_filters_only_that_framework(h: Harness) -> None:
    aid, fid, other = h.agent(), h.framework(), h.framework()
    h.run(c.Decline(fid, (h.offer(fid, aid, Resources.of(cpus=1)),), refuse_seconds=60))
    h.offer(other, aid, Resources.of(cpus=1))


def test_decline_of_another_frameworks_offer_is_a_conflict(h: Harness) -> None:
    aid, fid, other = h.agent(), h.framework(), h.framework()
    oid = h.offer(fid, aid)
    with pytest.raises(Conflict):
        h.decide(c.Decline(other, (oid,)))


def test_revive_clears_decline_filters_and_suppression(h: Harness) -> None:
    aid, fid = h.agent(), h.framework(roles=("web", "batch"))
    h.run(c.Decline(fid, (h.offer(fid, aid),), refuse_seconds=600))
    h.run(c.Suppress(fid, ("batch",)))
    assert h.state.frameworks[fid].suppressed_roles == {"batch"}
    h.run(c.Revive(fid, ("batch",)))
    assert h.state.frameworks[fid].suppressed_roles == frozenset()
    assert not h.state.is_filtered(fid, aid, h.now)
    assert h.decide(c.Revive(fid)) == ()  # nothing left to revive


def test_suppressed_role_gets_no_offers(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    h.run(c.Suppress(fid))
    with pytest.raises(Conflict):
        h.decide(c.IssueOffers((Offer("", fid, aid, role="web", resources=Resources.of(cpus=1)),)))


def test_suppress_of_a_role_the_framework_does_not_have_is_invalid(h: Harness) -> None:
    fid = h.framework(roles=("web",))
    with pytest.raises(InvalidRequest):
        h.decide(c.Suppress(fid, ("batch",)))


def test_expire_offers_rescinds_only_offers_past_their_deadline(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    soon = h.offer(fid, aid, Resources.of(cpus=1), expires_at=h.now + 10)
    later = h.offer(fid, aid, Resources.of(cpus=1), expires_at=h.now + 60)
    never = h.offer(fid, aid, Resources.of(cpus=1))
    h.now += 10
    result = h.run(c.ExpireOffers())
    assert [e.offer_id for _, e in result.events] == [soon]  # type: ignore[union-attr]
    assert set(h.state.offers) == {later, never}
    assert h.state.retired_offers[soon] == "rescinded: offer expired"


def test_rescind_of_an_offer_already_gone_is_a_no_op(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    oid = h.offer(fid, aid)
    h.run(c.RescindOffer(oid, "allocator changed its mind"))
    assert h.decide(c.RescindOffer(oid)) == ()
    with pytest.raises(NotFound):
        h.decide(c.RescindOffer("offer-never"))


# ---- accept ------------------------------------------------------------------------------------------
def test_accept_launches_tasks_in_staging_and_returns_unused_resources_to_the_pool(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    oid = h.offer(fid, aid)
    result = h.run(c.Accept(fid, (oid,), (launch(task("t1", cpus=1, mem=256, ports=[(31000, 31000)])),)))
    assert [type(e) for _, e in result.events] == [OfferAccepted, TaskLaunched]
    record = h.task("t1")
    assert record.state is S.TASK_STAGING and record.role == "web"
    assert (record.framework_id, record.agent_id) == (fid, aid)
    used = Resources.of(cpus=1, mem=256, ports=[(31000, 31000)])
    assert h.state.agents[aid].used == used
    assert h.state.frameworks[fid].used == Resources.of(cpus=1, mem=256)  # per framework: scalars only
    assert h.state.agent_free(aid) == Resources.parse(AGENT_RESOURCES) - used
    assert oid not in h.state.offers and h.state.agents[aid].offered == EMPTY


def test_accept_of_rescinded_offer_is_rejected_and_resources_are_not_lost(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    oid = h.offer(fid, aid)
    accept = c.Accept(fid, (oid,), (launch(task("t1")),))
    in_flight = h.decide(accept)  # decided while the offer was live...
    h.run(c.RescindOffer(oid, "agent is being drained"))  # ...but the rescind commits first
    with pytest.raises(Conflict, match="rescinded"):
        h.decide(accept)
    result = h.commit(in_flight)
    assert result.outcome == "rejected" and result.error_code == "Conflict"
    assert not h.is_live("t1")
    assert h.state.agent_free(aid) == Resources.parse(AGENT_RESOURCES)
    assert check_invariants(h.state) == []


def test_accept_of_another_frameworks_offer_is_a_conflict(h: Harness) -> None:
    aid, fid, other = h.agent(), h.framework(), h.framework()
    oid = h.offer(fid, aid)
    with pytest.raises(Conflict):
        h.decide(c.Accept(other, (oid,), (launch(task("t1")),)))


def test_accept_of_an_unknown_offer_is_not_found(h: Harness) -> None:
    fid = h.framework()
    with pytest.raises(NotFound):
        h.decide(c.Accept(fid, ("offer-unknown",), (launch(task("t1")),)))


def test_accept_with_duplicate_task_ids_is_a_conflict(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    oid = h.offer(fid, aid)
    with pytest.raises(Conflict, match="already used"):
        h.decide(c.Accept(fid, (oid,), (launch(task("t1"), task("t1")),)))
    h.run(c.Accept(fid, (oid,), (launch(task("t1")),)))
    with pytest.raises(Conflict, match="already used"):
        h.decide(c.Accept(fid, (h.offer(fid, aid),), (launch(task("t1")),)))


@pytest.mark.parametrize("tasks", [
    (task("big", cpus=5),),
    (task("a", cpus=3), task("b", cpus=2)),
    (task("port", ports=[(40000, 40000)]),),
    (task("p1", ports=[(31000, 31001)]), task("p2", ports=[(31001, 31002)])),
    (task("reserved", cpus=1, role="web"),),  # the agent has no reservation for web
])
def test_tasks_that_do_not_fit_their_offers_are_a_conflict(h: Harness, tasks: tuple) -> None:  # type: ignore[type-arg]
    aid, fid = h.agent(), h.framework()
    oid = h.offer(fid, aid)
    with pytest.raises(Conflict, match="needs"):
        h.decide(c.Accept(fid, (oid,), (launch(*tasks),)))


def test_accept_pools_several_offers_on_one_agent(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    first = h.offer(fid, aid, Resources.of(cpus=2, mem=100))
    second = h.offer(fid, aid, Resources.of(cpus=2, mem=100))
    h.run(c.Accept(fid, (first, second), (launch(task("t1", cpus=3, mem=200)),)))
    assert h.task("t1").resources == Resources.of(cpus=3, mem=200)


def test_accept_of_offers_on_two_agents_is_invalid(h: Harness) -> None:
    a1, a2, fid = h.agent(), h.agent(), h.framework()
    with pytest.raises(InvalidRequest):
        h.decide(c.Accept(fid, (h.offer(fid, a1), h.offer(fid, a2)), (launch(task("t1")),)))


def test_accept_with_refuse_seconds_filters_the_agent(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    result = h.run(c.Accept(fid, (h.offer(fid, aid),), (launch(task("t1")),), refuse_seconds=20))
    assert isinstance(result.events[-1][1], OfferDeclined)
    assert h.state.refused_until(fid, aid) == h.now + 20
    assert h.is_live("t1")


def test_accept_without_operations_gives_everything_back(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    h.run(c.Accept(fid, (h.offer(fid, aid),), ()))
    assert h.state.agent_free(aid) == Resources.parse(AGENT_RESOURCES) and not h.state.offers


def test_reserve_then_launch_on_the_reserved_resources_in_one_accept(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    reserve = c.Operation("RESERVE", resources=Resources.of(role="web", cpus=2, mem=1024))
    h.run(c.Accept(fid, (h.offer(fid, aid),), (reserve, launch(task("t1", cpus=2, mem=1024, role="web")))))
    agent = h.state.agents[aid]
    assert agent.reserved == Resources.of(role="web", cpus=2, mem=1024)
    assert agent.total.scalar("cpus", "web") == 2 and agent.total.scalar("cpus", "") == 2
    assert agent.used == Resources.of(role="web", cpus=2, mem=1024)


def test_unreserve_returns_a_dynamic_reservation_to_the_unreserved_pool(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    reserved = Resources.of(role="web", cpus=1)
    h.run(c.Accept(fid, (h.offer(fid, aid),), (c.Operation("RESERVE", resources=reserved),)))
    h.run(c.Accept(fid, (h.offer(fid, aid),), (c.Operation("UNRESERVE", resources=reserved),)))
    assert h.state.agents[aid].reserved == EMPTY
    assert h.state.agents[aid].total == Resources.parse(AGENT_RESOURCES)


def test_unreserve_of_a_static_reservation_is_a_conflict(h: Harness) -> None:
    aid, fid = h.agent(Resources.parse("cpus:2;mem:100", role="web")), h.framework()
    with pytest.raises(Conflict, match="dynamic"):
        h.decide(c.Accept(fid, (h.offer(fid, aid),),
                          (c.Operation("UNRESERVE", resources=Resources.of(role="web", cpus=1)),)))


def test_reserve_for_another_role_is_invalid(h: Harness) -> None:
    aid, fid = h.agent(), h.framework(roles=("web", "batch"))
    with pytest.raises(InvalidRequest):
        h.decide(c.Accept(fid, (h.offer(fid, aid),),
                          (c.Operation("RESERVE", resources=Resources.of(role="batch", cpus=1)),)))


# ---- status updates and acknowledgements -------------------------------------------------------------
def test_status_update_moves_the_task_and_waits_for_the_frameworks_ack(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    h.launched(fid, aid, task("t1"))
    h.status("t1", S.TASK_RUNNING, uuid="u1")
    assert h.task("t1").state is S.TASK_RUNNING
    assert [s.uuid for s in h.state.unacknowledged_updates(fid)] == ["u1"]
    h.run(c.Acknowledge(fid, "t1", "u1"))
    assert h.state.unacknowledged_updates() == []


def test_status_update_uuid_is_recorded_once(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    h.launched(fid, aid, task("t1"))
    update = c.UpdateStatus(TaskStatus("t1", S.TASK_RUNNING, agent_id=aid, uuid="u1"))
    events = h.decide(update)
    assert len(h.commit(events).events) == 1
    again = h.commit(events)  # the same update committed twice (a retry that raced the first commit)
    assert again.outcome == "applied" and again.events == ()
    assert h.decide(update) == ()  # and a later retry is answered without committing anything
    assert len(h.task("t1").unacknowledged) == 1


def test_status_update_without_uuid_is_invalid(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    h.launched(fid, aid, task("t1"))
    with pytest.raises(InvalidRequest):
        h.decide(c.UpdateStatus(TaskStatus("t1", S.TASK_RUNNING, agent_id=aid)))


def test_illegal_transition_is_a_conflict(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    h.launched(fid, aid, task("t1"))
    h.status("t1", S.TASK_RUNNING)
    with pytest.raises(Conflict):
        h.decide(c.UpdateStatus(TaskStatus("t1", S.TASK_STARTING, agent_id=aid, uuid="late")))


def test_status_update_from_the_wrong_agent_is_a_conflict(h: Harness) -> None:
    aid, other, fid = h.agent(), h.agent(), h.framework()
    h.launched(fid, aid, task("t1"))
    with pytest.raises(Conflict):
        h.decide(c.UpdateStatus(TaskStatus("t1", S.TASK_RUNNING, agent_id=other, framework_id=fid, uuid="u")))


def test_terminal_status_frees_resources(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    h.launched(fid, aid, task("t1", cpus=2))
    h.status("t1", S.TASK_FINISHED)
    assert h.state.agents[aid].used == EMPTY and h.state.frameworks[fid].used == EMPTY
    assert h.task("t1").state is S.TASK_FINISHED  # kept until the framework acknowledges it


def test_acknowledged_terminal_task_moves_to_completed_and_retries_are_no_ops(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    h.launched(fid, aid, task("t1"))
    h.status("t1", S.TASK_FAILED, uuid="u-end")
    h.run(c.Acknowledge(fid, "t1", "u-end"))
    assert not h.is_live("t1") and h.is_completed("t1")
    assert (fid, "t1") not in h.state.agents[aid].task_keys
    assert h.decide(c.Acknowledge(fid, "t1", "u-end")) == ()
    assert h.decide(c.UpdateStatus(TaskStatus("t1", S.TASK_FAILED, agent_id=aid, framework_id=fid, uuid="u-end"))) == ()
    assert h.decide(c.Kill(fid, "t1")) == ()
    with pytest.raises(Conflict):  # the id cannot be reused while it is remembered
        h.decide(c.Accept(fid, (h.offer(fid, aid),), (launch(task("t1")),)))


def test_an_acknowledgement_decided_before_a_teardown_but_committed_after_it_is_refused(h: Harness) -> None:
    # The framework acknowledges on one thread and tears down on another: both are decided against
    # the same state and committed in one batch, the teardown first.
    aid, fid = h.agent(), h.framework()
    h.launched(fid, aid, task("t1"))
    h.status("t1", S.TASK_KILLED, uuid="u-end")
    teardown = h.decide(c.Teardown(fid))
    ack = h.decide(c.Acknowledge(fid, "t1", "u-end"))
    assert h.commit(teardown).outcome == "applied"
    assert h.is_completed("t1")  # the removal dropped what was left to acknowledge
    result = h.commit(ack)
    # not answered as if it had been recorded: nothing acknowledged it, and the framework is gone
    assert result.outcome == "rejected" and result.error_code == Conflict.code
    assert not any(isinstance(e, TaskStatusAcknowledged) for _, e in result.events)
    assert check_invariants(h.state) == []


def test_acknowledge_of_an_unknown_uuid_is_not_found(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    h.launched(fid, aid, task("t1"))
    with pytest.raises(NotFound):
        h.decide(c.Acknowledge(fid, "t1", "u-never"))


def test_terminal_task_never_goes_back_and_a_late_agent_update_is_dropped(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    h.launched(fid, aid, task("t1"))
    h.status("t1", S.TASK_RUNNING)
    h.run(c.Kill(fid, "t1"))
    h.status("t1", S.TASK_KILLED)
    # the master holds the task terminal; an agent update about it is acknowledged and dropped
    assert h.decide(c.UpdateStatus(TaskStatus("t1", S.TASK_RUNNING, agent_id=aid, uuid="late"))) == ()
    forged = TaskStatusUpdated("t1", fid, aid, TaskStatus("t1", S.TASK_RUNNING, agent_id=aid, uuid="forged"))
    assert h.commit([forged]).outcome == "rejected"
    assert h.task("t1").state is S.TASK_KILLED


def test_master_generated_statuses_carry_a_uuid_to_acknowledge(h: Harness) -> None:
    aid, fid = h.agent(), h.framework(partition_aware=True)
    h.launched(fid, aid, task("t1"))
    result = h.run(c.MarkAgentUnreachable(aid, "no heartbeats"))
    (update,) = statuses(result.events)
    assert update.status.source is StatusSource.SOURCE_MASTER and update.status.uuid
    assert update.status.timestamp == h.now
    h.run(c.Acknowledge(fid, "t1", update.status.uuid))


# ---- kill ----------------------------------------------------------------------------------------------
def test_kill_records_the_request_with_the_tasks_grace_period(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    h.launched(fid, aid, task("t1", grace=7))
    result = h.run(c.Kill(fid, "t1"))
    assert result.events[0][1] == TaskKillRequested("t1", fid, aid, 7.0)
    assert h.task("t1").kill_requested
    h.run(c.Kill(fid, "t1", grace_period_seconds=2))
    assert h.task("t1").kill_grace_period_seconds == 2


def test_kill_of_another_frameworks_task_is_not_found(h: Harness) -> None:
    aid, fid, other = h.agent(), h.framework(), h.framework()
    h.launched(fid, aid, task("t1"))
    with pytest.raises(NotFound):
        h.decide(c.Kill(other, "t1"))


def test_calls_on_a_stale_stream_are_a_conflict(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    h.launched(fid, aid, task("t1"))
    with pytest.raises(Conflict, match="stream"):
        h.decide(c.Kill(fid, "t1", stream_id="stream-old"))
    h.decide(c.Kill(fid, "t1", stream_id=h.state.frameworks[fid].stream_id))


# ---- agents lost, back, removed, drained ---------------------------------------------------------------
def test_unreachable_agent_tasks_become_unreachable_for_partition_aware_frameworks(h: Harness) -> None:
    aid, fid = h.agent(), h.framework(partition_aware=True)
    h.launched(fid, aid, task("t1"))
    oid = h.offer(fid, aid)
    h.run(c.MarkAgentUnreachable(aid))
    assert h.state.agents[aid].state is AgentState.AGENT_UNREACHABLE
    assert h.task("t1").state is S.TASK_UNREACHABLE
    assert oid not in h.state.offers
    assert h.state.agents[aid].used == h.task("t1").resources  # unreachable is not terminal


def test_unreachable_agent_tasks_are_lost_for_other_frameworks(h: Harness) -> None:
    aid, fid = h.agent(), h.framework(partition_aware=False)
    h.launched(fid, aid, task("t1"))
    h.run(c.MarkAgentUnreachable(aid))
    assert h.task("t1").state is S.TASK_LOST
    assert h.state.agents[aid].used == EMPTY


def test_reregistered_agent_brings_unreachable_tasks_back_to_running(h: Harness) -> None:
    aid, fid = h.agent(), h.framework(partition_aware=True)
    h.launched(fid, aid, task("t1"))
    h.status("t1", S.TASK_RUNNING)
    h.run(c.MarkAgentUnreachable(aid))
    info = AgentInfo(hostname="host", resources=Resources.parse(AGENT_RESOURCES))
    result = h.run(c.ReregisterAgent(aid, info, (TaskStatus("t1", S.TASK_RUNNING, agent_id=aid),)))
    assert [type(e) for _, e in result.events] == [AgentReregistered, TaskStatusUpdated]
    assert h.task("t1").state is S.TASK_RUNNING
    assert h.state.agents[aid].state is AgentState.AGENT_ACTIVE


def test_reregistered_agent_without_a_task_ends_it_lost_dropped_or_gone(h: Harness) -> None:
    aid = h.agent("cpus:8;mem:8192")
    classic, aware = h.framework(), h.framework(partition_aware=True)
    h.launched(classic, aid, task("lost", cpus=1))
    h.launched(aware, aid, task("staging", cpus=1))
    h.run(c.Accept(aware, (h.offer(aware, aid),), (launch(task("running", cpus=1)),)))
    h.status("running", S.TASK_RUNNING)
    info = AgentInfo(hostname="host", resources=Resources.parse("cpus:8;mem:8192"))
    h.run(c.ReregisterAgent(aid, info, ()))
    assert {k.task_id: r.state for k, r in h.state.tasks.items()} == {
        "lost": S.TASK_LOST, "staging": S.TASK_DROPPED, "running": S.TASK_GONE}


def test_a_reregistration_decided_before_a_launch_but_committed_after_it_is_refused(h: Harness) -> None:
    # Found by the fault suite (seed 7): the agent reregistered while a framework's Accept on its offer
    # was in flight; both were decided against the same state and committed in one batch, the launch
    # first. Recorded as decided, the reregistration left the task STAGING on an agent that never had
    # it, so nothing would ever end it. Decided again, it ends the task.
    aid, fid = h.agent(), h.framework()
    offer_id = h.offer(fid, aid)
    info = AgentInfo(hostname="host", resources=Resources.parse(AGENT_RESOURCES))
    reregistration = h.decide(c.ReregisterAgent(aid, info, ()))
    launched = h.decide(c.Accept(fid, (offer_id,), (launch(task("t1")),)))
    assert h.commit(launched).outcome == "applied"
    result = h.commit(reregistration)
    assert result.outcome == "rejected" and result.error_code == Conflict.code
    assert "t1" in result.reason
    assert h.task("t1").state is S.TASK_STAGING  # the launch stands, nothing half-applied
    h.run(c.ReregisterAgent(aid, info, ()))
    assert h.task("t1").state is S.TASK_LOST
    assert check_invariants(h.state) == []


@pytest.mark.parametrize("kind", ["teardown", "drain"])
def test_a_teardown_or_drain_decided_before_a_launch_but_committed_after_it_is_refused(h: Harness, kind: str) -> None:
    # Recorded as decided, the framework's removal would have left the new task running for a framework
    # that no longer exists, and the drain would have waited for a task nobody asked to end. Decided
    # again, either kills that task too.
    aid, fid = h.agent(), h.framework()
    offer_id = h.offer(fid, aid)
    command = c.Teardown(fid) if kind == "teardown" else c.DrainAgent(aid)

    def took_effect() -> bool:
        if kind == "teardown":
            return h.state.frameworks[fid].state is FrameworkState.FRAMEWORK_REMOVED
        return h.state.agents[aid].state is AgentState.AGENT_DRAINING

    decided = h.decide(command)
    assert h.commit(h.decide(c.Accept(fid, (offer_id,), (launch(task("t1")),)))).outcome == "applied"
    result = h.commit(decided)
    assert result.outcome == "rejected" and result.error_code == Conflict.code and "t1" in result.reason
    assert not took_effect()
    h.run(command)
    assert h.task("t1").kill_requested and took_effect()
    assert check_invariants(h.state) == []


def test_reregistered_agent_reporting_a_task_gone_marks_it_gone(h: Harness) -> None:
    aid, fid = h.agent(), h.framework(partition_aware=True)
    h.launched(fid, aid, task("t1"))
    info = AgentInfo(hostname="host", resources=Resources.parse(AGENT_RESOURCES))
    h.run(c.ReregisterAgent(aid, info, (TaskStatus("t1", S.TASK_GONE, agent_id=aid),)))
    assert h.task("t1").state is S.TASK_GONE


def test_reregistration_records_the_agents_own_update_under_its_uuid(h: Harness) -> None:
    aid, fid = h.agent(), h.framework(partition_aware=True)
    h.launched(fid, aid, task("t1"))
    h.run(c.MarkAgentUnreachable(aid))
    info = AgentInfo(hostname="host", resources=Resources.parse(AGENT_RESOURCES))
    finished = TaskStatus("t1", S.TASK_FINISHED, agent_id=aid, uuid="agent-u7")
    h.run(c.ReregisterAgent(aid, info, (finished,)))
    assert h.task("t1").state is S.TASK_FINISHED
    assert h.decide(c.UpdateStatus(finished)) == ()  # the agent's retry of that update is already done


def test_reregistration_keeps_dynamic_reservations(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    reserved = Resources.of(role="web", cpus=1)
    h.run(c.Accept(fid, (h.offer(fid, aid),), (c.Operation("RESERVE", resources=reserved),)))
    info = AgentInfo(hostname="host", resources=Resources.parse(AGENT_RESOURCES))
    h.run(c.ReregisterAgent(aid, info, ()))
    assert h.state.agents[aid].total.scalar("cpus", "web") == 1


def test_reregistration_with_fewer_resources_than_running_tasks_is_a_conflict(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    h.launched(fid, aid, task("t1", cpus=3))
    small = AgentInfo(hostname="host", resources=Resources.parse("cpus:1;mem:4096"))
    with pytest.raises(Conflict):
        h.decide(c.ReregisterAgent(aid, small, (TaskStatus("t1", S.TASK_RUNNING, agent_id=aid),)))


def test_removed_agent_cannot_reregister(h: Harness) -> None:
    aid = h.agent()
    h.run(c.RemoveAgent(aid, "decommissioned"))
    info = AgentInfo(hostname="host", resources=Resources.parse(AGENT_RESOURCES))
    with pytest.raises(Conflict, match="removed"):
        h.decide(c.ReregisterAgent(aid, info, ()))
    assert h.decide(c.RemoveAgent(aid)) == ()


def test_remove_agent_ends_its_tasks_as_gone_or_lost(h: Harness) -> None:
    aid = h.agent("cpus:8;mem:8192")
    classic, aware = h.framework(), h.framework(partition_aware=True)
    h.launched(classic, aid, task("c1"))
    h.launched(aware, aid, task("a1"))
    h.run(c.RemoveAgent(aid, "host died"))
    assert h.task("c1").state is S.TASK_LOST and h.task("a1").state is S.TASK_GONE
    assert h.state.agents[aid].state is AgentState.AGENT_REMOVED


def test_drain_rescinds_offers_kills_tasks_and_blocks_new_offers(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    h.launched(fid, aid, task("t1", grace=3))
    oid = h.offer(fid, aid)
    result = h.run(c.DrainAgent(aid))
    assert oid not in h.state.offers
    assert TaskKillRequested("t1", fid, aid, 3.0) in [e for _, e in result.events]
    assert h.state.agents[aid].state is AgentState.AGENT_DRAINING
    assert not h.state.agent_drained(aid)
    h.status("t1", S.TASK_KILLED)
    assert h.state.agent_drained(aid)


def test_a_draining_agent_that_comes_back_is_still_draining(h: Harness) -> None:
    aid = h.agent()
    h.run(c.DrainAgent(aid))
    h.run(c.MarkAgentUnreachable(aid))
    h.run(c.ReregisterAgent(aid, AgentInfo(hostname="host", resources=Resources.parse(AGENT_RESOURCES)), ()))
    assert h.state.agents[aid].state is AgentState.AGENT_DRAINING


def test_undrain_offers_a_draining_agent_again_and_its_killed_tasks_stay_ended(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    h.launched(fid, aid, task("t1"))
    h.run(c.DrainAgent(aid))
    result = h.run(c.UndrainAgent(aid))
    assert [e for _, e in result.events] == [AgentUndrained(aid)]
    agent = h.state.agents[aid]
    assert agent.state is AgentState.AGENT_ACTIVE and not agent.draining
    assert h.task("t1").kill_requested  # the drain's kill stands
    h.offer(fid, aid)  # offered again
    assert h.decide(c.UndrainAgent(aid)) == ()  # not draining: nothing to do
    assert check_invariants(h.state) == []


def test_an_unreachable_draining_agent_undrained_comes_back_active(h: Harness) -> None:
    aid = h.agent()
    h.run(c.DrainAgent(aid))
    h.run(c.MarkAgentUnreachable(aid))
    h.run(c.UndrainAgent(aid))
    assert h.state.agents[aid].state is AgentState.AGENT_UNREACHABLE and not h.state.agents[aid].draining
    h.run(c.ReregisterAgent(aid, AgentInfo(hostname="host", resources=Resources.parse(AGENT_RESOURCES)), ()))
    assert h.state.agents[aid].state is AgentState.AGENT_ACTIVE
    assert check_invariants(h.state) == []


def test_a_removed_agent_cannot_be_undrained(h: Harness) -> None:
    aid = h.agent()
    h.run(c.DrainAgent(aid))
    h.run(c.RemoveAgent(aid, "decommissioned"))
    with pytest.raises(Conflict, match="removed"):
        h.decide(c.UndrainAgent(aid))


def test_an_undrain_committed_after_the_agent_stopped_draining_is_refused(h: Harness) -> None:
    aid = h.agent()
    h.run(c.DrainAgent(aid))
    first, second = h.decide(c.UndrainAgent(aid)), h.decide(c.UndrainAgent(aid))
    assert h.commit(first).outcome == "applied"
    result = h.commit(second)
    assert result.outcome == "rejected" and result.error_code == Conflict.code and "not draining" in result.reason


def test_operator_kill_finds_the_one_framework_whose_live_task_has_the_id(h: Harness) -> None:
    aid = h.agent("cpus:8;mem:8192")
    web, batch = h.framework(), h.framework()
    h.launched(web, aid, task("t1", grace=4))
    result = h.run(c.OperatorKill("t1"))
    assert [e for _, e in result.events] == [TaskKillRequested("t1", web, aid, 4.0)]
    h.launched(batch, aid, task("t1"))  # the same id in another framework: a bare id is now ambiguous
    with pytest.raises(InvalidRequest, match=f"{min(web, batch)}, {max(web, batch)}"):
        h.decide(c.OperatorKill("t1"))
    result = h.run(c.OperatorKill("t1", batch, grace_period_seconds=2))
    assert [e for _, e in result.events] == [TaskKillRequested("t1", batch, aid, 2.0)]


def test_operator_kill_of_an_ended_task_changes_nothing(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    h.launched(fid, aid, task("t1"))
    h.status("t1", S.TASK_FINISHED)
    assert h.decide(c.OperatorKill("t1")) == ()
    assert h.decide(c.OperatorKill("t1", fid)) == ()
    h.run(c.RemoveFramework(fid, "gone"))  # a framework's kill would be refused now; the task has ended anyway
    assert h.decide(c.OperatorKill("t1", fid)) == ()


def test_status_update_from_an_unreachable_agent_must_wait_for_reregistration(h: Harness) -> None:
    aid, fid = h.agent(), h.framework(partition_aware=True)
    h.launched(fid, aid, task("t1"))
    h.run(c.MarkAgentUnreachable(aid))
    with pytest.raises(Conflict, match="reregister"):
        h.decide(c.UpdateStatus(TaskStatus("t1", S.TASK_RUNNING, agent_id=aid, uuid="u")))


# ---- frameworks leaving -----------------------------------------------------------------------------------
def test_disconnect_starts_the_failover_timeout_and_expiry_removes_the_framework(h: Harness) -> None:
    aid, fid = h.agent(), h.framework(failover=30)
    h.launched(fid, aid, task("t1"))
    oid = h.offer(fid, aid)
    h.run(c.DisconnectFramework(fid))
    fw = h.state.frameworks[fid]
    assert fw.state is FrameworkState.FRAMEWORK_DISCONNECTED and fw.failover_deadline == h.now + 30
    assert oid not in h.state.offers
    h.now += 29
    assert h.decide(c.ExpireFrameworks()) == ()
    h.now += 1
    result = h.run(c.ExpireFrameworks())
    kinds = [type(e) for _, e in result.events]
    assert kinds == [TaskKillRequested, FrameworkRemoved]
    assert h.state.frameworks[fid].state is FrameworkState.FRAMEWORK_REMOVED
    assert h.task("t1").kill_requested  # still running until the agent reports it killed


def test_a_framework_that_reconnects_in_time_is_kept(h: Harness) -> None:
    fid = h.framework(failover=30)
    h.run(c.DisconnectFramework(fid))
    h.run(c.SubscribeFramework(FrameworkInfo(framework_id=fid, name="fw", principal="alice", roles=("web",))))
    h.now += 60
    assert h.decide(c.ExpireFrameworks()) == ()


def test_disconnect_from_an_old_stream_after_resubscription_is_a_no_op(h: Harness) -> None:
    fid = h.framework(failover=30)
    old_stream = h.state.frameworks[fid].stream_id
    h.run(c.SubscribeFramework(FrameworkInfo(framework_id=fid, name="fw", principal="alice", roles=("web",))))
    assert h.decide(c.DisconnectFramework(fid, stream_id=old_stream)) == ()


def test_remove_framework_rescinds_offers_kills_tasks_and_drops_pending_acks(h: Harness) -> None:
    aid, fid = h.agent(), h.framework()
    h.launched(fid, aid, task("t1"))
    h.launched(fid, aid, task("t2"))
    h.status("t1", S.TASK_RUNNING)
    h.status("t2", S.TASK_FINISHED)
    oid = h.offer(fid, aid)
    h.run(c.RemoveFramework(fid, "operator"))
    assert oid not in h.state.offers
    assert h.state.unacknowledged_updates() == []
    assert h.is_completed("t2")  # ended, and nobody is left to acknowledge it
    assert h.task("t1").kill_requested
    h.status("t1", S.TASK_KILLED)
    assert h.is_completed("t1") and h.state.agents[aid].used == EMPTY
    with pytest.raises(Conflict, match="removed"):
        h.decide(c.SubscribeFramework(FrameworkInfo(framework_id=fid, name="fw", roles=("web",))))


def test_teardown_removes_the_framework_and_repeats_are_no_ops(h: Harness) -> None:
    fid = h.framework()
    h.run(c.Teardown(fid, stream_id=h.state.frameworks[fid].stream_id))
    assert h.state.frameworks[fid].state is FrameworkState.FRAMEWORK_REMOVED
    assert h.decide(c.Teardown(fid)) == ()


def test_teardown_with_a_stale_stream_is_a_conflict(h: Harness) -> None:
    fid = h.framework()
    with pytest.raises(Conflict):
        h.decide(c.Teardown(fid, stream_id="stream-0"))


def test_disconnect_decided_for_an_old_stream_is_rejected_after_a_resubscription(h: Harness) -> None:
    fid = h.framework()
    old_stream = h.state.frameworks[fid].stream_id
    stale = h.decide(c.DisconnectFramework(framework_id=fid, stream_id=old_stream))
    info = h.state.frameworks[fid].info
    h.run(c.SubscribeFramework(info=info))  # the framework reconnects before the disconnect is applied
    new_stream = h.state.frameworks[fid].stream_id
    assert new_stream != old_stream
    result = h.commit(stale)
    assert result.outcome == "rejected"
    assert h.state.frameworks[fid].state is FrameworkState.FRAMEWORK_CONNECTED
    assert h.state.frameworks[fid].stream_id == new_stream
