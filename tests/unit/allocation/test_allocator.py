"""Behaviour of the allocator, one pinned behaviour per test. Clusters are built through the core's
decide + apply (see `cluster.Cluster`), and every round's offers are committed through `IssueOffers`,
so each test also proves the offers pass the core's own validation and invariants."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tessera.control_plane.allocation import (
    AgentSnapshot,
    AllocationSnapshot,
    Allocator,
    FrameworkSnapshot,
    RoleSnapshot,
    allocate,
    dominant_shares,
    is_allocatable,
    snapshot_from_state,
)
from tessera.control_plane.core import commands as c
from tessera.control_plane.core.context import sequential_ids
from tessera.control_plane.core.resources import EMPTY, Resources
from tessera.control_plane.core.values import Offer

from .cluster import Cluster


def res(unreserved: str = "", **reserved: str) -> Resources:
    """Resources.parse with reservations: res("cpus:2", r="cpus:1") is 2 unreserved cpus + 1 for role r."""
    bag = Resources.parse(unreserved)
    for role, text in reserved.items():
        bag = bag + Resources.parse(text, role=role)
    return bag


def by_framework(offers: tuple[Offer, ...]) -> dict[str, list[Offer]]:
    out: dict[str, list[Offer]] = {}
    for offer in offers:
        out.setdefault(offer.framework_id, []).append(offer)
    return out


def cpus(offers: list[Offer] | tuple[Offer, ...]) -> float:
    return sum(o.resources.scalar("cpus") for o in offers)


# ---- weighted DRF ----------------------------------------------------------------------------------------
def test_two_roles_with_weights_1_and_3_converge_to_a_1_to_3_cpu_split() -> None:
    cl = Cluster()
    for i in range(120):
        size = 2 + i % 4  # heterogeneous agents: 2 to 5 cpus, memory in proportion
        cl.agent(f"cpus:{size};mem:{size * 1024}", hostname=f"h{i}")
    cl.weight("light", 1)
    cl.weight("heavy", 3)
    for n in range(3):
        cl.framework("light", name=f"light-{n}")
        cl.framework("heavy", name=f"heavy-{n}")
    rounds = cl.fill()
    light, heavy = cl.role_scalar("light", "cpus"), cl.role_scalar("heavy", "cpus")
    assert light + heavy == cl.state.totals().total.scalar("cpus")
    assert heavy / light == pytest.approx(3.0, rel=0.10), (light, heavy, rounds)


def test_split_converges_when_agents_arrive_over_many_rounds() -> None:
    cl = Cluster()
    cl.weight("light", 1)
    cl.weight("heavy", 3)
    cl.framework("light")
    cl.framework("heavy")
    for batch in range(20):
        for i in range(5):
            cl.agent("cpus:4;mem:4096", hostname=f"h{batch}-{i}")
        cl.round()
        cl.use_all()
    light, heavy = cl.role_scalar("light", "cpus"), cl.role_scalar("heavy", "cpus")
    assert heavy / light == pytest.approx(3.0, rel=0.10), (light, heavy)


def test_frameworks_inside_a_role_share_it_by_drf() -> None:
    cl = Cluster()
    for i in range(60):
        cl.agent("cpus:2;mem:2048", hostname=f"h{i}")
    fws = [cl.framework("web", name=f"fw{n}") for n in range(3)]
    cl.fill()
    per_fw = [cl.state.frameworks[f].used.scalar("cpus") for f in fws]
    assert per_fw == [40.0, 40.0, 40.0]


def test_the_role_with_the_lowest_weighted_share_is_offered_first() -> None:
    cl = Cluster()
    agent = cl.agent("cpus:4;mem:4096")
    cl.agent("cpus:4;mem:4096")
    low, high = cl.framework("low"), cl.framework("high")
    # "high" already holds a task, so "low" sorts first although "high" < "low" by name
    cl.use(_offer_and_use(cl, high, agent, "high", "cpus:1;mem:512"))
    offers = cl.allocate(max_offers=1)
    assert [o.framework_id for o in offers] == [low]


def _offer_and_use(cl: Cluster, fid: str, aid: str, role: str, resources: str) -> Offer:
    result = cl.run(c.IssueOffers((Offer("", fid, aid, role=role, resources=Resources.parse(resources)),)))
    return result.events[0][1].offer  # type: ignore[union-attr]


def test_dominant_shares_are_weighted_and_use_the_dominant_kind() -> None:
    cl = Cluster()
    a1 = cl.agent("cpus:10;mem:1000")
    cl.weight("b", 2)
    fa, fb = cl.framework("a"), cl.framework("b")
    cl.use(_offer_and_use(cl, fa, a1, "a", "cpus:1;mem:500"))  # mem dominant: 0.5
    cl.use(_offer_and_use(cl, fb, a1, "b", "cpus:4;mem:100"))  # cpus dominant: 0.4, weight 2: 0.2
    shares = dominant_shares(cl.snapshot())
    assert shares["a"] == pytest.approx(0.5)
    assert shares["b"] == pytest.approx(0.2)


def test_roles_without_a_configured_weight_weigh_one() -> None:
    cl = Cluster()
    snapshot = cl.snapshot()
    assert snapshot.role("anything").weight == 1.0
    cl.framework("web")
    assert cl.snapshot().roles["web"].weight == 1.0


# ---- suppression, filters, connection, agent states -------------------------------------------------------
def test_suppressed_role_gets_no_offers() -> None:
    cl = Cluster()
    for i in range(4):
        cl.agent(hostname=f"h{i}")
    fw = cl.framework("a", "b")
    cl.run(c.Suppress(fw, ("a",)))
    offers = cl.round()
    assert offers and {o.role for o in offers} == {"b"}
    cl.run(c.Suppress(fw, ()))
    assert cl.allocate() == ()


def test_framework_with_only_suppressed_roles_gets_nothing_until_revived() -> None:
    cl = Cluster()
    cl.agent()
    fw = cl.framework("a")
    cl.run(c.Suppress(fw))
    assert cl.allocate() == ()
    cl.run(c.Revive(fw))
    assert [o.framework_id for o in cl.allocate()] == [fw]


def test_declined_agent_is_not_offered_to_that_framework_until_refuse_until() -> None:
    cl = Cluster()
    agent = cl.agent()
    picky = cl.framework("a", name="picky")
    (offer,) = cl.round()
    assert offer.framework_id == picky
    cl.decline(offer, refuse_seconds=10)
    other = cl.framework("a", name="other")
    cl.now += 5
    (offer,) = cl.round()
    assert offer.framework_id == other  # picky's share is 0, lower than other's would be: only the filter
    cl.run(c.RescindOffer(offer.offer_id))
    # `now` given to allocate decides, even against an older snapshot
    snapshot = cl.snapshot()
    assert [o.framework_id for o in allocate(snapshot, new_id=cl.offer_ids, now=cl.now + 5.0)] == [picky]
    assert [o.framework_id for o in allocate(snapshot, new_id=cl.offer_ids, now=cl.now + 4.9)] == [other]
    cl.now += 5
    assert cl.state.refused_until(picky, agent) == cl.now  # the filter ends exactly now
    assert [o.framework_id for o in cl.round()] == [picky]


def test_disconnected_framework_gets_no_offers() -> None:
    cl = Cluster()
    cl.agent()
    fw = cl.framework("a")
    cl.run(c.DisconnectFramework(fw))
    assert cl.snapshot().frameworks == ()
    assert cl.allocate() == ()
    info = cl.state.frameworks[fw].info
    cl.run(c.SubscribeFramework(info))
    assert [o.framework_id for o in cl.allocate()] == [fw]


def test_tasks_of_a_disconnected_framework_still_count_for_its_role() -> None:
    cl = Cluster()
    a1 = cl.agent("cpus:4;mem:4096")
    gone = cl.framework("a")
    cl.use(_offer_and_use(cl, gone, a1, "a", "cpus:2;mem:2048"))
    cl.run(c.DisconnectFramework(gone))
    assert cl.snapshot().roles["a"].allocated.scalar("cpus") == 2.0


def test_draining_or_unreachable_agent_is_not_offered() -> None:
    cl = Cluster()
    draining, unreachable, active = cl.agent(hostname="d"), cl.agent(hostname="u"), cl.agent(hostname="a")
    cl.framework("a")
    cl.run(c.DrainAgent(draining))
    cl.run(c.MarkAgentUnreachable(unreachable))
    snapshot = cl.snapshot()
    assert [a.agent_id for a in snapshot.agents] == [active]
    assert snapshot.total.scalar("cpus") == 8.0  # draining still counts in the total, unreachable not
    assert [o.agent_id for o in cl.round()] == [active]


def test_agents_with_nothing_free_are_left_out_of_the_snapshot() -> None:
    cl = Cluster()
    full = cl.agent()
    cl.agent()
    fw = cl.framework("a")
    cl.use(_offer_and_use(cl, fw, full, "a", "cpus:4;mem:4096"))
    assert [a.agent_id for a in cl.snapshot().agents] != [full]
    assert full not in {a.agent_id for a in cl.snapshot().agents}


def test_offered_resources_are_not_offered_again() -> None:
    cl = Cluster()
    for i in range(3):
        cl.agent(hostname=f"h{i}")
    cl.framework("a")
    assert len(cl.round()) == 3
    assert cl.allocate() == ()


def test_offers_still_committing_are_not_offered_again_and_count_as_held() -> None:
    """A round that runs while the previous round's offers commit (`pending`) offers only what they leave."""
    cl = Cluster()
    a1, a2 = cl.agent(hostname="h1"), cl.agent(hostname="h2")
    cl.framework("a")
    first = cl.allocate()  # proposed, not applied yet
    assert {o.agent_id for o in first} == {a1, a2}
    assert {a.agent_id for a in cl.snapshot().agents} == {a1, a2}
    pending = snapshot_from_state(cl.state, cl.now, pending=first)
    assert pending.agents == () and pending.frameworks[0].in_flight == 2
    # half of one agent's offer in flight: the other half is offered, nothing twice
    (half,) = [replace(o, resources=Resources.parse("cpus:2;mem:2048")) for o in first if o.agent_id == a1]
    free = {a.agent_id: a.free for a in snapshot_from_state(cl.state, cl.now, pending=[half]).agents}
    assert free == {a1: Resources.parse("cpus:2;mem:2048"), a2: Resources.parse("cpus:4;mem:4096")}
    # once applied (its id among the state's offers), a pending offer is not counted twice: the view is
    # the same as while it was in flight
    cl.issue(first)
    applied = snapshot_from_state(cl.state, cl.now, pending=first)
    assert applied.agents == () and applied.frameworks == pending.frameworks and applied.roles == pending.roles


def test_an_agent_whose_free_resources_no_longer_hold_its_pending_offers_is_left_out() -> None:
    cl = Cluster()
    a1 = cl.agent(hostname="h1")
    cl.framework("a")
    (stale,) = cl.allocate()  # the whole agent, never applied
    (other,) = cl.allocate()
    cl.issue([replace(other, offer_id="o-other", resources=Resources.parse("cpus:2;mem:2048"))])
    assert a1 in {a.agent_id for a in cl.snapshot().agents}  # half of it is still free
    assert a1 not in {a.agent_id for a in snapshot_from_state(cl.state, cl.now, pending=[stale]).agents}


# ---- quota ---------------------------------------------------------------------------------------------
def test_quota_guarantee_is_met_before_other_roles_grow() -> None:
    cl = Cluster()
    for i in range(10):
        cl.agent("cpus:4;mem:4096", hostname=f"h{i}")
    cl.weight("a-greedy", 100)  # would win every agent on weighted DRF alone
    cl.quota("q", guarantee="cpus:10;mem:10240")
    greedy, owed = cl.framework("a-greedy"), cl.framework("q")
    got = by_framework(cl.round())
    # 4 + 4 + 2 towards the guarantee; the third agent's other 2 cpus go along (bursting within headroom,
    # as in Mesos, rather than leaving a fragment), and weighted DRF gives everything else to a-greedy
    assert cpus(got[owed]) == 12.0
    assert cpus(got[greedy]) == 28.0


def test_a_quota_role_bursts_above_its_guarantee_only_within_its_limit() -> None:
    cl = Cluster()
    cl.agent("cpus:8;mem:8192")
    cl.quota("q", guarantee="cpus:2", limit="cpus:3")
    owed, other = cl.framework("q"), cl.framework("a")
    got = by_framework(cl.round())
    assert got[owed][0].resources == Resources.parse("cpus:3;mem:8192")
    assert got[other][0].resources == Resources.parse("cpus:5")


def test_a_quota_role_bursts_above_its_guarantee_only_within_the_headroom_surplus() -> None:
    cl = Cluster()
    cl.agent("cpus:8;mem:8192")
    cl.quota("q1", guarantee="cpus:2")
    cl.quota("q2", guarantee="cpus:5")  # no framework: its 5 cpus are held back
    owed = cl.framework("q1")
    cl.framework("a")
    (offer,) = cl.round()
    # 2 for the guarantee + 1 of surplus (8 free - 7 required); all the memory (no guarantee needs it)
    assert (offer.framework_id, offer.resources) == (owed, Resources.parse("cpus:3;mem:8192"))
    assert cl.state.totals().free.scalar("cpus") == 5.0


def test_a_quota_role_is_offered_a_whole_agent_in_one_offer_when_headroom_allows() -> None:
    cl = Cluster()
    cl.agent("cpus:8;mem:8192")
    cl.quota("q", guarantee="cpus:2;mem:1024")
    fw = cl.framework("q")
    offers = cl.round()
    assert [(o.framework_id, o.resources) for o in offers] == [(fw, Resources.parse("cpus:8;mem:8192"))]


def test_unmet_guarantee_of_a_role_without_frameworks_is_held_back_as_headroom() -> None:
    cl = Cluster()
    for i in range(10):
        cl.agent("cpus:4;mem:4096", hostname=f"h{i}")
    cl.quota("q", guarantee="cpus:12")
    cl.framework("a")
    cl.fill()
    assert cl.role_scalar("a", "cpus") == 28.0
    assert cl.state.totals().free.scalar("cpus") == 12.0
    # once a framework of the quota role shows up, it gets what was held back
    cl.framework("q")
    cl.fill()
    assert cl.role_scalar("q", "cpus") == 12.0


def test_reservations_count_towards_the_guarantee() -> None:
    cl = Cluster()
    cl.agent(res("cpus:4;mem:4096", q="cpus:6;mem:1024"))
    for i in range(3):
        cl.agent("cpus:4;mem:4096", hostname=f"h{i}")
    cl.quota("q", guarantee="cpus:6")
    cl.framework("a")
    cl.fill()
    assert cl.role_scalar("a", "cpus") == 16.0  # nothing held back: q's reservation covers its guarantee


def test_quota_limit_is_never_exceeded() -> None:
    cl = Cluster()
    for i in range(6):
        cl.agent("cpus:4;mem:4096", hostname=f"h{i}")
    cl.quota("capped", limit="cpus:6")
    cl.weight("capped", 50)
    cl.framework("capped")
    cl.framework("other")
    for _ in range(10):
        for offer in cl.round():
            cl.use(offer)
            assert cl.role_scalar("capped", "cpus") <= 6.0
    assert cl.role_scalar("capped", "cpus") == 6.0
    assert cl.role_scalar("other", "cpus") == 18.0


def test_quota_limit_caps_reservations_too() -> None:
    cl = Cluster()
    cl.agent(res(capped="cpus:8;mem:1024"))
    cl.quota("capped", limit="cpus:3")
    cl.framework("capped")
    (offer,) = cl.round()
    assert offer.resources == Resources.parse("cpus:3;mem:1024", role="capped")


def test_a_role_at_its_limit_in_one_kind_still_leaves_the_agent_to_others() -> None:
    cl = Cluster()
    cl.agent("cpus:4;mem:4096")
    cl.quota("capped", limit="cpus:1")
    cl.weight("capped", 10)
    capped, other = cl.framework("capped"), cl.framework("other")
    offers = by_framework(cl.round())
    assert offers[capped][0].resources == Resources.parse("cpus:1;mem:4096")
    # the leftover 3 cpus without memory are still allocatable (>= 0.01 cpus), so "other" gets them
    assert offers[other][0].resources == Resources.parse("cpus:3")


# ---- reservations ------------------------------------------------------------------------------------------
def test_reserved_resources_are_only_offered_to_their_role() -> None:
    cl = Cluster()
    cl.agent(res("cpus:2;mem:2048;ports:[31000-31009]", r="cpus:2;mem:1024;ports:[32000-32001]"))
    s_fw, r_fw = cl.framework("s", name="s-fw"), cl.framework("r", name="r-fw")
    offers = by_framework(cl.round())
    for offer in offers.get(s_fw, []):
        assert offer.resources.roles() == {""}
    r_offer = offers[r_fw][0]
    assert r_offer.resources.filter_role("r") == Resources.parse(
        "cpus:2;mem:1024;ports:[32000-32001]", role="r")


def test_reservations_are_offered_to_their_role_after_another_role_took_the_unreserved_part() -> None:
    cl = Cluster()
    cl.agent(res("cpus:2;mem:2048", zz="cpus:1;mem:512"))
    first, reserved_to = cl.framework("aa"), cl.framework("zz")  # "aa" wins the tie on name
    offers = cl.round()
    assert [(o.framework_id, o.resources) for o in offers] == [
        (first, Resources.parse("cpus:2;mem:2048")),
        (reserved_to, Resources.parse("cpus:1;mem:512", role="zz")),
    ]


def test_dynamic_reservations_are_offered_to_their_role() -> None:
    cl = Cluster()
    agent = cl.agent("cpus:4;mem:4096")
    r_fw = cl.framework("r")
    cl.reserve(agent, r_fw, "r", "cpus:1;mem:256")
    other = cl.framework("aa")
    cl.run(c.Suppress(r_fw))
    (offer,) = cl.round()
    assert offer.framework_id == other and offer.resources == Resources.parse("cpus:3;mem:3840")
    cl.run(c.Revive(r_fw))
    (offer,) = cl.round()
    assert offer.framework_id == r_fw and offer.resources == Resources.parse("cpus:1;mem:256", role="r")


# ---- offer shape -----------------------------------------------------------------------------------------
def test_offers_below_the_minimum_allocatable_size_are_not_made() -> None:
    cl = Cluster()
    cl.agent("cpus:0.005;mem:16;disk:1000;ports:[31000-31010]")
    cl.agent("cpus:0.01;disk:10", hostname="just-cpus")
    cl.agent("mem:32", hostname="just-mem")
    cl.framework("a")
    offers = cl.round()
    assert sorted(o.hostname for o in offers) == ["just-cpus", "just-mem"]
    assert all(is_allocatable(o.resources) for o in offers)
    assert not is_allocatable(Resources.parse("cpus:0.009;mem:31.999"))


def test_offers_carry_expiry_role_hostname_and_attributes() -> None:
    cl = Cluster()
    cl.agent(hostname="node-7", attributes=(("rack", "r1"),))
    fw = cl.framework("web")
    (offer,) = cl.round(offer_timeout=30.0)
    assert (offer.framework_id, offer.role, offer.hostname, offer.attributes) == (fw, "web", "node-7",
                                                                                  (("rack", "r1"),))
    assert offer.expires_at == cl.now + 30.0
    assert offer.offer_id == "offer-alloc-1"
    cl.run(c.RescindOffer(offer.offer_id))
    (offer,) = cl.allocate()
    assert offer.expires_at == 0.0


def test_one_offer_per_framework_and_agent_per_round() -> None:
    cl = Cluster()
    cl.agent(res("cpus:2;mem:2048", b="cpus:1;mem:512"))
    fw = cl.framework("a", "b")
    offers = cl.round()
    assert len(offers) == 1 and offers[0].framework_id == fw
    # the part reserved to b stays free for this round; the next round offers it for role b
    (offer,) = cl.round()
    assert offer.role == "b" and offer.resources == Resources.parse("cpus:1;mem:512", role="b")


def test_max_offers_caps_the_round() -> None:
    cl = Cluster()
    for i in range(10):
        cl.agent(hostname=f"h{i}")
    cl.framework("a")
    assert len(cl.round(max_offers=3)) == 3
    assert len(cl.round()) == 7
    assert cl.allocate(max_offers=0) == ()


def test_bad_arguments_are_refused() -> None:
    cl = Cluster()
    with pytest.raises(ValueError):
        cl.allocate(offer_timeout=-1.0)
    with pytest.raises(ValueError):
        cl.allocate(max_offers=-1)
    with pytest.raises(ValueError):
        cl.allocate(offer_timeout=1e-20)  # now + timeout == now: the core would refuse such offers
    with pytest.raises(RuntimeError):
        Allocator().allocate(new_id=cl.offer_ids, now=0.0)


# ---- determinism and the incremental allocator --------------------------------------------------------------
def _busy_cluster() -> Cluster:
    cl = Cluster()
    for i in range(30):
        cl.agent(f"cpus:{1 + i % 5};mem:{1024 * (1 + i % 3)};ports:[31000-31005]", hostname=f"h{i}")
    cl.weight("b", 2)
    cl.quota("c", guarantee="cpus:5", limit="cpus:9")
    for role in ("a", "b", "c", "a"):
        cl.framework(role)
    return cl


def test_the_same_snapshot_gives_the_same_offers() -> None:
    cl = _busy_cluster()
    snapshot = cl.snapshot()
    first = allocate(snapshot, new_id=sequential_ids("x"), now=cl.now)
    second = allocate(snapshot, new_id=sequential_ids("x"), now=cl.now)
    assert first == second and first


def test_successive_rounds_start_at_different_agents() -> None:
    cl = _busy_cluster()
    starts = set()
    for _ in range(5):
        offers = cl.round()
        starts.add(offers[0].agent_id)
        for offer in offers:
            cl.run(c.RescindOffer(offer.offer_id))
    assert len(starts) > 1


def test_allocator_gives_the_offers_of_allocate_round_after_round() -> None:
    cl = _busy_cluster()
    allocator = Allocator()
    for n in range(6):
        snapshot = cl.snapshot()
        allocator.update(snapshot)
        incremental = allocator.allocate(new_id=sequential_ids(f"x{n}"), now=cl.now, offer_timeout=10)
        pure = allocate(snapshot, new_id=sequential_ids(f"x{n}"), now=cl.now, offer_timeout=10)
        assert incremental == pure
        assert allocator.dominant_shares() == dominant_shares(snapshot)
        offers = cl.issue(pure)
        for offer in offers[::2]:
            cl.use(offer)
        for offer in offers[1::2]:
            cl.decline(offer, refuse_seconds=1)
        cl.now += 0.6


def test_a_hand_built_snapshot_is_allocated() -> None:
    snapshot = AllocationSnapshot(
        agents=(AgentSnapshot("ag1", "h1", (), Resources.parse("cpus:4;mem:1024")),),
        frameworks=(FrameworkSnapshot("f1", ("r",)),),
        roles={"r": RoleSnapshot("r")},
        total=Resources.parse("cpus:4;mem:1024"),
    )
    (offer,) = allocate(snapshot, new_id=sequential_ids(), now=0.0)
    assert (offer.agent_id, offer.framework_id, offer.role) == ("ag1", "f1", "r")
    assert snapshot.frameworks[0].allocated_to("r") == EMPTY


def test_snapshot_reads_the_state_without_changing_it() -> None:
    cl = _busy_cluster()
    cl.round()
    before = cl.state.fingerprint()
    snapshot_from_state(cl.state, cl.now)
    assert cl.state.fingerprint() == before


# ---- the offers of what a batch of status updates frees (decide_each's `follow`) ---------------------------
def _end_with_offers(cl: Cluster, task_id: str, framework_id: str) -> tuple[Offer, ...]:
    """Decide the task's TASK_FINISHED and, in the same entry, the allocation of what it frees, as the
    leader does (`LeaderDuties.offers_for_ended`); apply the entry; return the offers it issued."""
    from tessera.control_plane.core.apply import apply
    from tessera.control_plane.core.decide import decide_each
    from tessera.control_plane.core.events import Entry, OfferIssued
    from tessera.control_plane.core.invariants import check_invariants
    from tessera.control_plane.core.values import TaskState, TaskStatus

    task = cl.state.tasks[(framework_id, task_id)]
    status = TaskStatus(task_id=task_id, state=TaskState.TASK_FINISHED, agent_id=task.agent_id,
                        uuid=f"u-{task_id}", framework_id=framework_id)
    seen: list[object] = []

    def follow(state: object, ended: object) -> tuple[c.Command, ...]:
        seen.append(dict(ended))  # type: ignore[call-overload]
        offers = allocate(snapshot_from_state(state, cl.now, ended=ended), new_id=cl.offer_ids,  # type: ignore[arg-type]
                          now=cl.now)
        return (c.IssueOffers(offers),) if offers else ()

    outcomes = decide_each(cl.state, [c.UpdateStatus(status)], cl.ctx(), follow)
    assert seen == [{(framework_id, task_id): task.agent_id}]
    events = tuple(e for o in outcomes if isinstance(o, tuple) for e in o)
    result = apply(cl.state, Entry(term=1, leader="m1", time=cl.now, events=events))
    assert result.outcome == "applied", result
    assert check_invariants(cl.state) == []
    return tuple(e.offer for e in events if isinstance(e, OfferIssued))


def test_what_an_ended_task_frees_is_offered_in_its_entry_to_the_framework_drf_picks() -> None:
    cl = Cluster()
    a1, a2 = cl.agent("cpus:4;mem:4096", hostname="h1"), cl.agent("cpus:4;mem:4096", hostname="h2")
    fa = cl.framework("a", name="fa")
    for offer in cl.round():
        cl.use(offer)  # fa holds both agents whole
    fb = cl.framework("b", name="fb")
    task_on_a1 = next(t for t in cl.state.tasks.values() if t.agent_id == a1)
    offers = _end_with_offers(cl, task_on_a1.task_id, fa)
    # fa still holds a2 (share 1/2), fb nothing: DRF offers the freed agent to fb, not back to fa
    assert [(o.framework_id, o.agent_id, o.resources) for o in offers] == [(fb, a1, Resources.parse("cpus:4;mem:4096"))]
    assert cl.state.agent_free(a1) == EMPTY and a2 not in {o.agent_id for o in offers}


def test_what_an_ended_task_frees_goes_back_to_its_framework_when_it_is_the_one_drf_picks() -> None:
    cl = Cluster()
    a1 = cl.agent("cpus:4;mem:4096")
    fa = cl.framework("a", name="fa")
    (offer,) = cl.round()
    cl.use(offer)
    offers = _end_with_offers(cl, next(iter(cl.state.tasks.values())).task_id, fa)
    assert [(o.framework_id, o.agent_id) for o in offers] == [(fa, a1)]


def test_a_suppressed_framework_gets_nothing_from_what_it_frees() -> None:
    cl = Cluster()
    cl.agent("cpus:4;mem:4096")
    fa = cl.framework("a", name="fa")
    (offer,) = cl.round()
    cl.use(offer)
    cl.run(c.Suppress(fa, ("a",)))
    assert _end_with_offers(cl, next(iter(cl.state.tasks.values())).task_id, fa) == ()
