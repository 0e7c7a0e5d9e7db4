"""Properties of allocation over random clusters built through the core (decide + apply).

A cluster gets random agents (scalars, port ranges, static reservations), roles with random weights,
guarantees and limits, frameworks in random roles; then a random history of rounds in which frameworks
use offers whole or in part, reserve, decline with filters or sit on them; then time passes, roles get
suppressed, frameworks disconnect, agents drain or become unreachable. On the final round:

- every offer passes the core's own validation (`decide(IssueOffers)` + `apply`) and the state keeps its
  invariants afterwards;
- nothing is offered that is not free, nothing twice (offers on one agent are disjoint and fit together),
  at most one offer per (framework, agent);
- suppressed roles, disconnected frameworks, filtered (framework, agent) pairs and agents that are not
  active get nothing; every offer is allocatable and only holds resources its role may use;
- quota limits are never exceeded, and unreserved resources the unmet guarantees need are held back
  (headroom);
- with enough free resources, every quota role with a framework that can take offers reaches its
  guarantee in one round;
- the same snapshot gives the same offers, `Allocator` gives the offers of `allocate`, and so does the
  general path alone (the fast path for plain agents is an optimisation, not a different policy).
"""

from __future__ import annotations

from collections.abc import Iterable
from unittest import mock

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tessera.control_plane.allocation import Allocator, allocate, is_allocatable
from tessera.control_plane.allocation import allocator as allocator_module
from tessera.control_plane.allocation.snapshot import AllocationSnapshot
from tessera.control_plane.core import commands as c
from tessera.control_plane.core.apply import apply
from tessera.control_plane.core.context import Context, sequential_ids
from tessera.control_plane.core.decide import decide
from tessera.control_plane.core.events import Entry
from tessera.control_plane.core.invariants import check_invariants
from tessera.control_plane.core.resources import EMPTY, SCALE, Resources
from tessera.control_plane.core.values import AgentState, FrameworkState, Offer, TaskInfo

from .cluster import Cluster

ROLES = ("a", "b", "c", "d")
PROPERTY_SETTINGS = settings(max_examples=120, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---- building random clusters -------------------------------------------------------------------------------
def draw_agent_resources(data: st.DataObject) -> Resources:
    cpus = data.draw(st.integers(0, 16)) / 2
    mem = data.draw(st.integers(0, 24)) * 128
    disk = data.draw(st.sampled_from([0, 0, 500]))
    text = f"cpus:{cpus};mem:{mem};disk:{disk}"
    first = data.draw(st.integers(31000, 31040))
    if data.draw(st.booleans()):
        text += f";ports:[{first}-{first + data.draw(st.integers(0, 9))}]"
    bag = Resources.parse(text)
    for n, role in enumerate(data.draw(st.lists(st.sampled_from(ROLES), max_size=2, unique=True))):
        r_cpus = data.draw(st.integers(0, 6)) / 2
        r_mem = data.draw(st.integers(0, 8)) * 128
        reserved = f"cpus:{r_cpus};mem:{r_mem}"
        if data.draw(st.booleans()):
            base = 32000 + 100 * n  # reserved ports never overlap the unreserved ones
            reserved += f";ports:[{base}-{base + data.draw(st.integers(0, 4))}]"
        bag = bag + Resources.parse(reserved, role=role)
    return bag


def draw_quantities(data: st.DataObject, max_cpus: int, max_mem: int) -> Resources:
    cpus = data.draw(st.integers(0, max_cpus))
    mem = data.draw(st.integers(0, max_mem)) * 256
    return Resources.parse(f"cpus:{cpus};mem:{mem}")


def part_of(resources: Resources, numerator: int, denominator: int) -> Resources:
    """A fraction of the scalars (fixed point, rounded down), no ranges."""
    scalars = tuple((k, v * numerator // denominator) for k, v in resources.scalars)
    return Resources(scalars=tuple(kv for kv in scalars if kv[1] > 0))


def play_history(cl: Cluster, data: st.DataObject) -> None:
    """A few rounds in which frameworks use, reserve, decline or keep what they are offered."""
    for _ in range(data.draw(st.integers(0, 3))):
        for offer in cl.round(offer_timeout=data.draw(st.sampled_from([None, 30.0]))):
            action = data.draw(st.sampled_from(["use", "use", "part", "part", "reserve", "decline", "keep"]))
            if action == "use":
                cl.use(offer)
            elif action == "part":
                part = part_of(offer.resources, 1, 2)
                if part:
                    cl.use(Offer(offer.offer_id, offer.framework_id, offer.agent_id, role=offer.role,
                                 resources=part))
                else:
                    cl.use(offer)
            elif action == "reserve":
                unreserved_cpus = offer.resources.milli("cpus", "")
                if unreserved_cpus >= 2:
                    amount = Resources.parse(f"cpus:{unreserved_cpus // 2 / SCALE}", role=offer.role)
                    cl.run(c.Accept(offer.framework_id, (offer.offer_id,), (c.Operation("RESERVE", resources=amount),)))
                else:
                    cl.use(offer)
            elif action == "decline":
                cl.decline(offer, refuse_seconds=data.draw(st.sampled_from([1.0, 5.0, 1000.0])))
        cl.now += data.draw(st.sampled_from([0.0, 2.0, 6.0]))


def build_cluster(data: st.DataObject) -> Cluster:
    cl = Cluster()
    for i in range(data.draw(st.integers(1, 7))):
        cl.agent(draw_agent_resources(data), hostname=f"h{i}", attributes=(("n", str(i)),))
    for role in ROLES:
        if data.draw(st.booleans()):
            cl.weight(role, data.draw(st.sampled_from([0.5, 1.0, 2.0, 3.0, 10.0])))
        if data.draw(st.integers(0, 2)) == 0:
            guarantee = draw_quantities(data, 6, 12)
            limit = EMPTY
            if data.draw(st.booleans()):
                limit = guarantee + draw_quantities(data, 6, 12)
            cl.run(c.SetQuota(role, guarantee, limit))
    frameworks = [
        cl.framework(*data.draw(st.lists(st.sampled_from(ROLES), min_size=1, max_size=3, unique=True)),
                     name=f"fw{n}")
        for n in range(data.draw(st.integers(1, 5)))
    ]
    play_history(cl, data)
    if data.draw(st.booleans()):  # offers of the history time out (and so do short filters)
        cl.now += 40.0
        cl.run(c.ExpireOffers())
    for fid in frameworks:
        fw = cl.state.frameworks[fid]
        if data.draw(st.integers(0, 2)) == 0:
            suppressed = data.draw(st.lists(st.sampled_from(fw.info.roles), min_size=1, max_size=2, unique=True))
            cl.run(c.Suppress(fid, tuple(suppressed)))
        if data.draw(st.integers(0, 5)) == 0:
            cl.run(c.DisconnectFramework(fid))
    if data.draw(st.integers(0, 3)) > 0:  # a late framework nobody suppressed or disconnected
        cl.framework(data.draw(st.sampled_from(ROLES)), name="late")
    for agent_id in sorted(cl.state.agents):
        fate = data.draw(st.sampled_from(["active"] * 8 + ["drain", "unreachable"]))
        if fate == "drain":
            cl.run(c.DrainAgent(agent_id))
        elif fate == "unreachable":
            cl.run(c.MarkAgentUnreachable(agent_id))
    return cl


# ---- what the checks measure --------------------------------------------------------------------------------
def by_name(resources: Resources, unreserved_only: bool = False) -> dict[str, int]:
    out: dict[str, int] = {}
    for (name, role), milli in resources.scalars:
        if not unreserved_only or not role:
            out[name] = out.get(name, 0) + milli
    return out


def total(bags: Iterable[Resources]) -> Resources:
    out = EMPTY
    for bag in bags:
        out = out + bag
    return out


def consumed_quota(snapshot: AllocationSnapshot, role: str, offers: tuple[Offer, ...]) -> dict[str, int]:
    """Mesos' consumed quota: reservations (used or not) + unreserved allocation, after `offers`."""
    info = snapshot.role(role)
    consumed = by_name(info.reserved)
    for kind, milli in by_name(info.allocated, unreserved_only=True).items():
        consumed[kind] = consumed.get(kind, 0) + milli
    for offer in offers:
        if offer.role == role:
            for kind, milli in by_name(offer.resources, unreserved_only=True).items():
                consumed[kind] = consumed.get(kind, 0) + milli
    return consumed


def unmet_guarantees(snapshot: AllocationSnapshot, offers: tuple[Offer, ...]) -> dict[str, int]:
    """Sum over roles of guarantee - consumed quota, floored at zero, per kind."""
    out: dict[str, int] = {}
    for role, info in snapshot.roles.items():
        consumed = consumed_quota(snapshot, role, offers)
        for kind, g in by_name(info.quota_guarantee).items():
            out[kind] = out.get(kind, 0) + max(0, g - consumed.get(kind, 0))
    return out


def commit(cl: Cluster, offers: tuple[Offer, ...]) -> None:
    """The offers pass the core's validation and apply cleanly; the invariants hold afterwards."""
    if not offers:
        return
    ctx = Context(now=cl.now, term=1, leader="m1", new_id=cl.new_id)
    events = decide(cl.state, c.IssueOffers(offers), ctx)
    result = apply(cl.state, Entry(term=1, leader="m1", time=cl.now, events=events))
    assert result.outcome == "applied", result
    assert check_invariants(cl.state) == []
    assert all(offer.offer_id in cl.state.offers for offer in offers)


# ---- the properties ---------------------------------------------------------------------------------------
@PROPERTY_SETTINGS
@given(st.data())
def test_offers_on_random_clusters_keep_every_rule_and_pass_the_core(data: st.DataObject) -> None:
    cl = build_cluster(data)
    snapshot = cl.snapshot()
    offers = allocate(snapshot, new_id=sequential_ids("final"), now=cl.now, offer_timeout=30.0)
    state = cl.state

    # deterministic, and the incremental allocator agrees
    assert allocate(snapshot, new_id=sequential_ids("final"), now=cl.now, offer_timeout=30.0) == offers
    allocator = Allocator()
    allocator.update(snapshot)
    assert allocator.allocate(new_id=sequential_ids("final"), now=cl.now, offer_timeout=30.0) == offers
    # the fast path for plain agents decides exactly as the general path would
    with mock.patch.object(allocator_module, "plain", lambda free: None):
        assert allocate(snapshot, new_id=sequential_ids("final"), now=cl.now, offer_timeout=30.0) == offers

    free = {a.agent_id: a.free for a in snapshot.agents}
    offerable = {aid for aid, a in state.agents.items() if a.state is AgentState.AGENT_ACTIVE}
    assert free == {aid: state.agent_free(aid) for aid in sorted(offerable) if state.agent_free(aid)}
    seen_pairs: set[tuple[str, str]] = set()
    for offer in offers:
        fw = state.frameworks[offer.framework_id]
        agent = state.agents[offer.agent_id]
        assert fw.state is FrameworkState.FRAMEWORK_CONNECTED
        assert agent.state is AgentState.AGENT_ACTIVE and offer.agent_id in free
        assert offer.role in fw.info.roles and offer.role not in fw.suppressed_roles
        assert not state.is_filtered(offer.framework_id, offer.agent_id, cl.now)
        assert offer.resources.allocatable_to(offer.role) == offer.resources
        assert is_allocatable(offer.resources)
        assert (offer.hostname, offer.attributes, offer.expires_at) == (
            agent.info.hostname, agent.info.attributes, cl.now + 30.0)
        assert (offer.framework_id, offer.agent_id) not in seen_pairs
        seen_pairs.add((offer.framework_id, offer.agent_id))

    for agent_id, agent_free in free.items():
        on_agent = [o.resources for o in offers if o.agent_id == agent_id]
        assert agent_free.contains(total(on_agent)), "offered more than is free"
        for i, a in enumerate(on_agent):
            for b in on_agent[i + 1:]:
                assert not a.intersects(b), "a range offered twice"

    for role, info in snapshot.roles.items():
        limit = by_name(info.quota_limit)
        offered = by_name(total(o.resources for o in offers if o.role == role))
        before = by_name(info.allocated)
        for kind, cap in limit.items():
            assert offered.get(kind, 0) <= max(0, cap - before.get(kind, 0)), f"role {role} over its {kind} limit"

    # headroom: what is left unreserved covers what the guarantees still miss (up to any shortfall there
    # was before the round: then the allocator cannot have made it worse)
    available = by_name(total(a.free for a in snapshot.agents), unreserved_only=True)
    given_away = by_name(total(o.resources for o in offers), unreserved_only=True)
    required_before, required_after = unmet_guarantees(snapshot, ()), unmet_guarantees(snapshot, offers)
    for kind, still_missing in required_after.items():
        left = available.get(kind, 0) - given_away.get(kind, 0)
        shortfall = max(0, required_before.get(kind, 0) - available.get(kind, 0))
        assert left >= still_missing - shortfall, f"{kind}: headroom for unmet guarantees was given away"

    commit(cl, offers)


@PROPERTY_SETTINGS
@given(st.data())
def test_quota_guarantees_are_met_in_one_round_when_there_is_room(data: st.DataObject) -> None:
    cl = Cluster()
    for i in range(data.draw(st.integers(1, 8))):
        cl.agent(f"cpus:{data.draw(st.integers(0, 8))};mem:{data.draw(st.integers(0, 16)) * 256}",
                 hostname=f"h{i}")
    # non-quota roles that would win on weighted DRF, and some history to start from
    for role in ("a", "b"):
        cl.weight(role, data.draw(st.sampled_from([1.0, 10.0, 100.0])))
        cl.framework(role)
    owed = data.draw(st.lists(st.sampled_from(("q1", "q2", "q3")), min_size=1, max_size=3, unique=True))
    for role in owed:
        guarantee = draw_quantities(data, 8, 16)
        limit = guarantee + draw_quantities(data, 4, 8) if data.draw(st.booleans()) else EMPTY
        cl.run(c.SetQuota(role, guarantee, limit))
        cl.framework(role)
    if data.draw(st.booleans()):
        cl.run(c.SetQuota("q-idle", draw_quantities(data, 4, 8)))  # a guarantee nobody can take
    snapshot = cl.snapshot()
    available = by_name(total(a.free for a in snapshot.agents), unreserved_only=True)
    needed = unmet_guarantees(snapshot, ())
    assume(all(needed[k] <= available.get(k, 0) for k in needed))

    offers = cl.round()
    for role in owed:
        consumed = consumed_quota(snapshot, role, offers)
        for kind, g in by_name(snapshot.roles[role].quota_guarantee).items():
            assert consumed.get(kind, 0) >= g, f"role {role} did not reach its {kind} guarantee"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_rounds_with_frameworks_using_offers_keep_the_state_valid(data: st.DataObject) -> None:
    cl = build_cluster(data)
    for _ in range(4):
        offers = cl.allocate(offer_timeout=data.draw(st.sampled_from([None, 5.0])))
        commit(cl, offers)
        for offer in offers:
            if data.draw(st.booleans()):
                cl.use(offer)
            elif data.draw(st.booleans()):
                cl.decline(offer, refuse_seconds=data.draw(st.sampled_from([1.0, 3.0])))
        cl.now += 2.0
        cl.run(c.ExpireOffers())


def test_part_of_takes_a_fraction_of_scalars_only() -> None:
    bag = Resources.parse("cpus:3;mem:100;ports:[1-5]")
    assert part_of(bag, 1, 2) == Resources.parse("cpus:1.5;mem:50")
    task = TaskInfo(task_id="t", resources=part_of(bag, 1, 3))
    assert task.resources.scalar("cpus") == 1.0
