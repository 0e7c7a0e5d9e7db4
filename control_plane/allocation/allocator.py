"""allocate: one round of Mesos' hierarchical allocation over an `AllocationSnapshot`.

Theory of operation
-------------------
A round walks the agents that have something free and, for each agent, asks the DRF sorters who should
get it: the role with the lowest weighted dominant share first, then, inside that role, the framework
with the lowest dominant share (`sorter.DRFSorter`, heaps keyed by (share, name)). The chosen framework
is offered everything on the agent its role may use (unreserved resources plus those reserved to its
role) within the caps below; shares are updated at once, and the walk goes on with whatever is left on
the agent (resources reserved to other roles, or held back by a cap) before moving to the next agent.
As in Mesos, a role takes a whole agent's worth at a time: DRF converges over rounds and over many agents,
not by slicing each agent.

There are two stages, as in Mesos' hierarchical allocator:

1. **Quota guarantees.** Only roles below their guarantee take part. On each agent such a role is offered
   the unreserved scalars that bring it towards its guarantee ("guarantee offering", chopped to what is
   still missing), plus its reservations and the agent's unreserved ranges (ports), plus further
   unreserved scalars within its limit and the headroom surplus (bursting). A role that gets nothing
   towards its guarantee from an agent is not offered that agent in this stage.
2. **Fair share.** Every role with a framework that can take offers, in weighted DRF order, on every
   agent, within its quota limit and the headroom surplus.

Quota accounting follows Mesos: a role's *consumed quota* is its reservations (used or not) plus its
unreserved allocation (used + offered). Its unmet guarantee is guarantee - consumed, floored at zero.

- **Headroom.** The unreserved free resources must keep covering every role's unmet guarantee
  (required headroom = the sum of unmet guarantees, roles without a framework included). Unreserved
  scalars beyond a guarantee offering are chopped to the surplus (available - required), so non-quota
  roles never eat what a quota role is still owed.
- **Limits.** Unreserved scalars are chopped to limit - consumed; the role's reservations to
  limit - (allocation + the offer's unreserved part), so the role's allocation plus its offers never
  exceeds its limit in any kind the limit names (kinds it does not name are unlimited).

Every offer also keeps these rules (each one pinned by a test):

- never more than is free on the agent, never a resource twice in one round (each proposal is carved out
  of the agent's remaining free resources), and at most one offer per (framework, agent) per round:
  when stage 2 gives more of an agent to a framework stage 1 already offered it to, for the same role,
  it is merged into that offer; a framework already holding an offer on the agent for another role is
  skipped for that agent;
- a suppressed role of a framework gets nothing; a decline filter in force at `now` keeps the agent from
  that framework; a framework with no roles, or only suppressed ones, is not in any sorter;
- a framework that declared `max_tasks_in_flight = K` (> 0) is made at most K - (its non-terminal tasks +
  its live offers) new offers (merging into its offer on the same agent takes no slot); with no slot
  left it is in no sorter, so it is offered nothing until a task of it ends or an offer goes: the
  K-in-flight pattern without a Suppress and a Revive (two commits) per freed slot;
- an offer must be allocatable: at least 0.01 cpus or 32 MiB of memory (Mesos' default minimum);
  nothing smaller is offered; a framework that declared a `min_offer` (Mesos' per-framework
  min_allocatable_resources) is not offered an agent whose proposal holds less of a kind it names — the
  agent goes to the next framework in line, or stays free for a later round. Without it a framework
  whose tasks each need cpus and memory is offered an agent's leftover memory alone once its cpus are
  taken, can only decline it, and its decline filter then hides that agent's next freed cpus until it
  revives (two commits more per freed slot on the short-tasks benchmark, docs/benchmarks.md);
- offers carry the role, the agent's hostname and attributes, and `expires_at = now + offer_timeout`
  (0 = never) when a timeout is given; ids come from `new_id("offer")`, in the order offers were made.

Determinism: the agent order is a pseudo-random permutation (rotation and coprime stride over the agents
sorted by id) seeded by a hash of `snapshot.seq` and the stage, so the same snapshot always yields the
same offers and successive rounds start at different agents (Mesos shuffles agents for the same
reason). Ties in the sorters break by name. Nothing reads a clock, a random source or a hash seed.

Cost: O(agents with free resources × log(roles + frameworks)) in the common case, where the first role
and framework popped take the whole agent. Roles that cannot use what is left on an agent, frameworks
filtered on it, and held-back leftovers cost extra pops on that agent only. An agent whose free
resources are all unreserved and uncapped is offered as-is, without rebuilding its `Resources`.

`Allocator` wraps the same algorithm for the leader loop: `update(snapshot)` then `allocate(...)`. It
keeps the per-agent decomposition of free resources between rounds for agents whose free resources
did not change, and must give exactly the offers `allocate(snapshot, ...)` gives (a test checks it).
The sorters themselves are rebuilt from the snapshot every round: shares move with events the allocator
does not see (tasks ending, offers declined or rescinded), and rebuilding them costs O(roles +
frameworks), nothing next to the agents.

Not modelled (differences from Mesos): roles are flat names (no hierarchy: "a/b" neither inherits nor
counts towards "a"'s quota or weight); a decline filter covers the whole agent for the framework, in
every role, whatever resources it declined; there is one minimum offer size for everyone (no
per-framework min_allocatable_resources); no revocable, shared or capability-gated resources.

Garbage collection: a round at tens of thousands of agents makes tens of thousands of offers, enough
new objects to trigger CPython full collections over the whole replicated state, which can cost as much
as the round itself (see tests/bench/bench_allocator.py). That is the shell's business, not this pure
module's: a leader loop may pause the collector around the round or freeze the long-lived state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tessera.control_plane.allocation.agent_view import (
    EXHAUSTED,
    MIN_ALLOCATABLE_CPUS,
    MIN_ALLOCATABLE_MEM,
    AgentView,
    Proposal,
    Ranges,
    Work,
    add_into,
    agent_order,
    allocatable,
    by_name,
    carve,
    is_allocatable,
    offer_resources,
    plain,
)
from tessera.control_plane.allocation.snapshot import AgentSnapshot, AllocationSnapshot
from tessera.control_plane.allocation.sorter import DRFSorter, dominant_share
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import Offer

__all__ = [
    "MIN_ALLOCATABLE_CPUS",
    "MIN_ALLOCATABLE_MEM",
    "Allocator",
    "allocate",
    "dominant_shares",
    "is_allocatable",
]


# ---- one round -----------------------------------------------------------------------------------------
class _Round:
    def __init__(self, snapshot: AllocationSnapshot, views: dict[str, AgentView], now: float,
                 max_offers: int | None) -> None:
        self.snapshot = snapshot
        self.views = views
        self.now = now
        self.max_offers = max_offers
        self.inverse_total = {k: 1.0 / v for k, v in by_name(snapshot.total).items() if v > 0}

        # roles: weights, allocations, quota
        self.weight: dict[str, float] = {}
        self.role_alloc: dict[str, dict[str, int]] = {}
        self.limit: dict[str, dict[str, int]] = {}
        self.consumed: dict[str, dict[str, int]] = {}
        self.unmet: dict[str, dict[str, int]] = {}
        for name, role in snapshot.roles.items():
            self.weight[name] = role.weight
            self.role_alloc[name] = by_name(role.allocated)
            if role.quota_guarantee or role.quota_limit:
                consumed = by_name(role.reserved)
                for (kind, reservation_role), milli in role.allocated.scalars:
                    if not reservation_role:
                        consumed[kind] = consumed.get(kind, 0) + milli
                self.consumed[name] = consumed
                if role.quota_limit:
                    self.limit[name] = by_name(role.quota_limit)
                unmet = {k: g - consumed.get(k, 0) for k, g in by_name(role.quota_guarantee).items()}
                unmet = {k: v for k, v in unmet.items() if v > 0}
                if unmet:
                    self.unmet[name] = unmet
        self.required: dict[str, int] = {}
        for unmet in self.unmet.values():
            add_into(self.required, unmet)
        self.available: dict[str, int] = {}
        if self.required:
            for kind in self.required:
                self.available[kind] = 0
            for agent in snapshot.agents:
                for (kind, reservation_role), milli in agent.free.scalars:
                    if not reservation_role and kind in self.available:
                        self.available[kind] += milli
        self.capped_by_headroom = any(self.required.values())

        # frameworks: who may take offers, per role
        members: dict[str, list[str]] = {}
        self.fw_alloc: dict[tuple[str, str], dict[str, int]] = {}
        roles_per_fw: dict[str, int] = {}
        # Offers each framework with a max_tasks_in_flight may still be made this round; one at 0 takes no part.
        self.slots: dict[str, int] = {}
        self.fw_roles: dict[str, list[str]] = {}
        # The smallest offer each framework that declared one can use, by kind (milli units).
        self.min_offer: dict[str, dict[str, int]] = {}
        for fw in snapshot.frameworks:
            if fw.min_offer:
                self.min_offer[fw.framework_id] = by_name(fw.min_offer)
            slots = fw.slots
            if slots is not None:
                if slots <= 0:
                    continue
                self.slots[fw.framework_id] = slots
            active = [r for r in dict.fromkeys(fw.roles) if r not in fw.suppressed_roles]
            self.fw_roles[fw.framework_id] = active
            roles_per_fw[fw.framework_id] = len(active)
            for r in active:
                members.setdefault(r, []).append(fw.framework_id)
                self.fw_alloc[(r, fw.framework_id)] = by_name(fw.allocated_to(r))
                if r not in self.weight:
                    self.weight[r] = 1.0
                    self.role_alloc[r] = {}
        self.multi_role = {f for f, n in roles_per_fw.items() if n > 1}
        # Unweighted dominant shares. Allocations only grow during a round, so a share is updated from
        # the kinds an offer adds: max(old share, new fractions of those kinds) is exactly the new share.
        self.role_dominant = {r: dominant_share(self.role_alloc[r], self.inverse_total) for r in self.weight}
        self.fw_dominant = {key: dominant_share(alloc, self.inverse_total) for key, alloc in self.fw_alloc.items()}
        self.fw_sorters = {
            r: DRFSorter((f, self.fw_dominant[(r, f)]) for f in fws) for r, fws in members.items()
        }
        self.role_sorter = DRFSorter((r, self.role_share(r)) for r in members)
        self.quota_roles = {r for r in members if r in self.unmet}  # the roles in stage 1's sorter
        self.quota_sorter = DRFSorter((r, self.role_share(r)) for r in sorted(self.quota_roles))
        # What the roles in stage 1 still miss, summed: an agent with none of it is skipped in stage 1.
        self.need: dict[str, int] = {}
        for r in members:
            if r in self.unmet:
                add_into(self.need, self.unmet[r])

        self.filters = snapshot.decline_filters
        self.filtered = {f for f, _ in self.filters}
        self.works: dict[str, Work] = {}
        # This round's offers, by (framework id, agent id) in the order they were made, with their role.
        # (Plain dicts rather than an object per offer: fewer objects for the garbage collector to track.)
        self.offered: dict[tuple[str, str], Resources] = {}
        self.offered_role: dict[tuple[str, str], str] = {}
        self.offered_agent: dict[tuple[str, str], AgentSnapshot] = {}

    def view_of(self, agent: AgentSnapshot) -> AgentView:
        """The agent's parsed view, made on first need (plain agents offered whole never need one)."""
        view = self.views.get(agent.agent_id)
        if view is None:
            view = self.views[agent.agent_id] = AgentView(agent)
        return view

    # ---- shares -------------------------------------------------------------------------------------
    def role_share(self, role: str) -> float:
        weight = self.weight.get(role, 1.0)
        return self.role_dominant[role] / weight if weight > 0 else float("inf")

    def full(self) -> bool:
        return self.max_offers is not None and len(self.offered) >= self.max_offers

    # ---- proposals ------------------------------------------------------------------------------------
    def surplus(self, kind: str) -> int:
        return max(0, self.available.get(kind, 0) - self.required[kind])

    def propose(self, role: str, view: AgentView, work: Work | None, stage: int) -> Proposal | None:
        """What `role` would be offered from the agent now, or None if nothing allocatable."""
        limit = self.limit.get(role)
        if work is None and view.pristine and stage == 2 and limit is None and not self.capped_by_headroom:
            return view.whole() if view.whole_allocatable else None

        if work is None:
            unreserved_free, unreserved_ranges, reserved_by_role = view.split()
        else:
            unreserved_free, unreserved_ranges = work.unreserved, work.unreserved_ranges
            reserved_by_role = work.reserved
        reserved_free = reserved_by_role.get(role)
        consumed = self.consumed.get(role, {})

        guarantee: dict[str, int] = {}
        if stage == 1:
            unmet = self.unmet.get(role)
            if not unmet:
                return None
            for kind, missing in unmet.items():
                amount = min(unreserved_free.get(kind, 0), missing)
                if amount > 0:
                    guarantee[kind] = amount
            if not guarantee:
                return None
        take: dict[str, int] = {}
        for kind, amount in unreserved_free.items():
            extra = amount - guarantee.get(kind, 0)
            if extra > 0 and limit is not None and kind in limit:
                extra = min(extra, limit[kind] - consumed.get(kind, 0) - guarantee.get(kind, 0))
            if extra > 0 and self.required.get(kind, 0) > 0:
                extra = min(extra, self.surplus(kind))
            total = guarantee.get(kind, 0) + max(0, extra)
            if total > 0:
                take[kind] = total
        reserved: dict[str, int] = {}
        ranges: Ranges = unreserved_ranges
        if reserved_free is not None:
            alloc = self.role_alloc.get(role, {})
            for kind, amount in reserved_free[0].items():
                if limit is not None and kind in limit:
                    amount = min(amount, limit[kind] - alloc.get(kind, 0) - take.get(kind, 0))
                if amount > 0:
                    reserved[kind] = amount
            ranges = (*ranges, *reserved_free[1])
        cpus = take.get("cpus", 0) + reserved.get("cpus", 0)
        mem = take.get("mem", 0) + reserved.get("mem", 0)
        if not allocatable(cpus, mem):
            return None
        whole = None
        if work is None and take == unreserved_free and (
            not reserved_by_role or (len(reserved_by_role) == 1 and reserved_free is not None
                                     and reserved == reserved_free[0])
        ):
            whole = view.agent.free
        return Proposal(take, reserved, guarantee, ranges, whole)

    def pick_framework(self, role: str, agent_id: str, p: Proposal) -> str | None:
        """The framework of `role` with the lowest share that may be offered this agent's proposal `p`,
        popped out of its sorter (`commit` pushes it back with its new share); the others are pushed back."""
        sorter = self.fw_sorters[role]
        skipped: list[str] = []
        chosen: str | None = None
        while True:
            fid = sorter.pop()
            if fid is None:
                break
            if fid in self.filtered and self.filters.get((fid, agent_id), 0.0) > self.now:
                skipped.append(fid)
                continue
            minimum = self.min_offer.get(fid)
            if minimum is not None and not holds_minimum(p, minimum):
                skipped.append(fid)
                continue
            if fid in self.multi_role and self.offered_role.get((fid, agent_id), role) != role:
                skipped.append(fid)
                continue
            chosen = fid
            break
        for fid in skipped:
            sorter.push_back(fid)
        return chosen

    # ---- committing --------------------------------------------------------------------------------------
    def commit(self, role: str, fid: str, agent: AgentSnapshot, p: Proposal, stage: int) -> None:
        agent_id = agent.agent_id
        if p.whole is not None:
            self.works[agent_id] = EXHAUSTED
        else:
            work = self.works.get(agent_id)
            if work is None:
                work = self.works[agent_id] = Work.of(self.view_of(agent))
            carve(work, role, p)
        flat: Mapping[str, int] = p.unreserved
        if p.reserved:
            flat = dict(p.unreserved)
            add_into(flat, p.reserved)

        # accounting
        inverse_total = self.inverse_total
        role_alloc = self.role_alloc[role]
        fw_alloc = self.fw_alloc[(role, fid)]
        role_dominant = self.role_dominant[role]
        fw_dominant = self.fw_dominant[(role, fid)]
        for kind, amount in flat.items():
            allocated = role_alloc[kind] = role_alloc.get(kind, 0) + amount
            inverse = inverse_total.get(kind)
            if inverse is not None and allocated * inverse > role_dominant:
                role_dominant = allocated * inverse
            allocated = fw_alloc[kind] = fw_alloc.get(kind, 0) + amount
            if inverse is not None and allocated * inverse > fw_dominant:
                fw_dominant = allocated * inverse
        self.role_dominant[role] = role_dominant
        self.fw_dominant[(role, fid)] = fw_dominant
        if role in self.consumed or (self.available and (stage == 1 or self.capped_by_headroom)):
            self._account_quota(role, p, stage)

        share = self.role_share(role)
        self.role_sorter.update(role, share)
        if role in self.quota_roles:
            if role in self.unmet:
                self.quota_sorter.update(role, share)
            else:
                self.quota_sorter.remove(role)
                self.quota_roles.discard(role)
        fw_sorter = self.fw_sorters[role]
        fw_sorter.update(fid, fw_dominant)
        fw_sorter.push_back(fid)

        # the offer (merged into this round's offer of the same framework on the same agent, if any)
        resources = p.whole if p.whole is not None else offer_resources(p, role)
        key = (fid, agent_id)
        earlier = self.offered.get(key)
        if earlier is None:
            self.offered[key] = resources
            self.offered_role[key] = role
            self.offered_agent[key] = agent
            if fid in self.slots:
                self._take_slot(fid)
        else:
            self.offered[key] = earlier + resources

    def _take_slot(self, fid: str) -> None:
        """One offer made to a framework with a max_tasks_in_flight: at its last slot it leaves the sorters."""
        self.slots[fid] -= 1
        if self.slots[fid] > 0:
            return
        for r in self.fw_roles[fid]:
            self.fw_sorters[r].remove(fid)

    def _account_quota(self, role: str, p: Proposal, stage: int) -> None:
        consumed = self.consumed.get(role)
        if consumed is not None:
            add_into(consumed, p.unreserved)
        unmet = self.unmet.get(role)
        if unmet is not None:
            for kind, amount in p.unreserved.items():
                missing = unmet.get(kind, 0)
                if missing > 0:
                    got = min(missing, amount)
                    unmet[kind] = missing - got
                    if role in self.fw_sorters:
                        self.need[kind] -= got
            for kind in [k for k, v in unmet.items() if v <= 0]:
                del unmet[kind]
            if not unmet:
                del self.unmet[role]
        if stage == 1:
            for kind, amount in p.guarantee.items():
                self.required[kind] = max(0, self.required.get(kind, 0) - amount)
        if self.available:
            for kind, amount in p.unreserved.items():
                if kind in self.available:
                    self.available[kind] -= amount

    # ---- the stages ----------------------------------------------------------------------------------------
    def stage1(self, agents: tuple[AgentSnapshot, ...]) -> None:
        for index in agent_order(len(agents), self.snapshot.seq * 2 + 1):
            if not len(self.quota_sorter) or self.full():
                return
            agent = agents[index]
            view = self.view_of(agent)
            work = self.works.get(agent.agent_id)
            unreserved = view.split()[0] if work is None else work.unreserved
            if not any(unreserved.get(k, 0) > 0 for k, v in self.need.items() if v > 0):
                continue
            popped: list[str] = []
            while not self.full():
                role = self.quota_sorter.pop()
                if role is None:
                    break
                popped.append(role)
                proposal = self.propose(role, view, self.works.get(agent.agent_id), 1)
                if proposal is None:
                    continue
                fid = self.pick_framework(role, agent.agent_id, proposal)
                if fid is None:
                    continue
                self.commit(role, fid, agent, proposal, 1)
            for role in popped:
                if role in self.unmet:
                    self.quota_sorter.push_back(role)

    def stage2(self, agents: tuple[AgentSnapshot, ...]) -> None:
        # Required headroom no longer changes in stage 2 (only stage 1's guarantee offerings reduce it).
        self.capped_by_headroom = capped = any(self.required.values())
        works, role_sorter = self.works, self.role_sorter
        for index in agent_order(len(agents), self.snapshot.seq * 2 + 2):
            if self.full():
                return
            agent = agents[index]
            agent_id = agent.agent_id
            work = works.get(agent_id)
            if work is EXHAUSTED:
                continue
            if work is None and not capped:
                flat = plain(agent.free)
                if flat is not None:  # the common case: nothing reserved, nothing taken yet
                    if not allocatable(flat.get("cpus", 0), flat.get("mem", 0)):
                        continue  # nobody can be offered anything here
                    if self.place_whole(agent, flat) is not None:
                        continue
            view = self.view_of(agent)
            popped: list[str] = []
            tried: list[str] = []  # asked for their reservations only (not popped)
            while True:
                if work is None and view.pristine and not capped:
                    useful = view.whole_allocatable  # the common case, without a call
                else:
                    useful = self.unreserved_useful(view, work)
                if useful:
                    role = role_sorter.pop()
                    if role is None:
                        break
                    popped.append(role)
                else:
                    held = (view.split()[2] if work is None else work.reserved).keys()
                    candidates = [r for r in held if r in role_sorter and r not in popped and r not in tried]
                    if not candidates:
                        break
                    role = min(candidates, key=lambda r: (role_sorter.share(r), r))
                    tried.append(role)
                proposal = self.propose(role, view, work, 2)
                if proposal is None:
                    continue
                fid = self.pick_framework(role, agent_id, proposal)
                if fid is None:
                    continue
                self.commit(role, fid, agent, proposal, 2)
                work = works[agent_id]
                if work is EXHAUSTED or self.full():
                    break
            for role in popped:
                role_sorter.push_back(role)

    def place_whole(self, agent: AgentSnapshot, flat: dict[str, int]) -> bool | None:
        """Offer a plain agent whole to the lowest-share role without a quota limit that has a framework
        it may go to. True: offered; False: no role could take it; None: the walk reached a role with a
        limit, which needs the general path (it then walks again from the start, to the same effect)."""
        role_sorter = self.role_sorter
        popped: list[str] = []
        outcome: bool | None = False
        while True:
            role = role_sorter.pop()
            if role is None:
                break
            popped.append(role)
            if role in self.limit:
                outcome = None
                break
            proposal = Proposal(flat, {}, {}, agent.free.ranges, agent.free)
            fid = self.pick_framework(role, agent.agent_id, proposal)
            if fid is None:
                continue
            self.commit(role, fid, agent, proposal, 2)
            outcome = True
            break
        for role in popped:
            role_sorter.push_back(role)
        return outcome

    def unreserved_useful(self, view: AgentView, work: Work | None) -> bool:
        """Could any role be offered something allocatable from the agent's unreserved resources, headroom
        permitting? (When not, only roles holding reservations on the agent are worth asking.)"""
        if work is None:
            if view.pristine and not self.capped_by_headroom:
                return view.whole_allocatable
            unreserved = view.split()[0]
        else:
            unreserved = work.unreserved
        cpus, mem = unreserved.get("cpus", 0), unreserved.get("mem", 0)
        if self.required.get("cpus", 0) > 0:
            cpus = min(cpus, self.surplus("cpus"))
        if self.required.get("mem", 0) > 0:
            mem = min(mem, self.surplus("mem"))
        return allocatable(cpus, mem)


def holds_minimum(p: Proposal, minimum: Mapping[str, int]) -> bool:
    """Whether proposal `p` (unreserved plus reserved scalars) holds at least `minimum` of every kind it
    names (a framework's `min_offer`, by kind, in milli units)."""
    return all(p.unreserved.get(kind, 0) + p.reserved.get(kind, 0) >= amount for kind, amount in minimum.items())


# ---- the public surface ----------------------------------------------------------------------------------
def _run(snapshot: AllocationSnapshot, views: dict[str, AgentView], new_id: Callable[[str], str],
         now: float, offer_timeout: float | None, max_offers: int | None) -> tuple[Offer, ...]:
    if offer_timeout is not None and offer_timeout < 0:
        raise ValueError(f"offer_timeout must not be negative, got {offer_timeout!r}")
    if max_offers is not None and max_offers < 0:
        raise ValueError(f"max_offers must not be negative, got {max_offers!r}")
    expires_at = now + offer_timeout if offer_timeout else 0.0
    if offer_timeout and expires_at <= now:
        raise ValueError(f"offer_timeout {offer_timeout!r} is lost in the precision of now={now!r}")
    if max_offers == 0:
        return ()
    round_ = _Round(snapshot, views, now, max_offers)
    if round_.role_sorter:
        if round_.quota_sorter:
            round_.stage1(snapshot.agents)
        round_.stage2(snapshot.agents)
    roles = round_.offered_role
    offers: list[Offer] = []
    for key, resources in round_.offered.items():
        agent = round_.offered_agent[key]
        fid, aid = key
        offers.append(Offer(offer_id=new_id("offer"), framework_id=fid, agent_id=aid, hostname=agent.hostname,
                            role=roles[(fid, aid)], resources=resources, attributes=agent.attributes,
                            expires_at=expires_at))
    return tuple(offers)


def allocate(snapshot: AllocationSnapshot, *, new_id: Callable[[str], str], now: float,
             offer_timeout: float | None = None, max_offers: int | None = None) -> tuple[Offer, ...]:
    """The offers of one allocation round over `snapshot`, ready for `IssueOffers` (see the module
    docstring for the rules). Pure: the same snapshot and arguments give the same offers."""
    return _run(snapshot, {}, new_id, now, offer_timeout, max_offers)


def dominant_shares(snapshot: AllocationSnapshot) -> dict[str, float]:
    """Weighted dominant share of every role in the snapshot (allocation / cluster total, max over kinds,
    divided by the role's weight), before any new offer."""
    inverse_total = {k: 1.0 / v for k, v in by_name(snapshot.total).items() if v > 0}
    out: dict[str, float] = {}
    for name in sorted(snapshot.roles):
        role = snapshot.roles[name]
        share = dominant_share(by_name(role.allocated), inverse_total)
        out[name] = share / role.weight if role.weight > 0 else float("inf")
    return out


class Allocator:
    """The allocation round for a long-lived leader: `update(snapshot)`, then `allocate(...)`.

    It keeps each agent's parsed free resources between rounds and re-parses only agents whose free
    resources changed, so a round over a mostly idle cluster costs little more than the walk itself. Its
    offers are exactly those of `allocate(snapshot, ...)`. Soft state: a new leader starts a fresh one.
    """

    def __init__(self) -> None:
        self._snapshot: AllocationSnapshot | None = None
        self._views: dict[str, AgentView] = {}

    @property
    def snapshot(self) -> AllocationSnapshot | None:
        return self._snapshot

    def update(self, snapshot: AllocationSnapshot) -> None:
        """Take the next round's snapshot; parsed agents whose free resources changed are dropped (they
        are parsed again when a round needs them)."""
        old = self._views
        views: dict[str, AgentView] = {}
        for agent in snapshot.agents:
            view = old.get(agent.agent_id)
            if view is not None and view.agent == agent:
                views[agent.agent_id] = view
        self._views = views
        self._snapshot = snapshot

    def allocate(self, *, new_id: Callable[[str], str], now: float, offer_timeout: float | None = None,
                 max_offers: int | None = None) -> tuple[Offer, ...]:
        if self._snapshot is None:
            raise RuntimeError("Allocator.allocate before the first update(snapshot)")
        return _run(self._snapshot, self._views, new_id, now, offer_timeout, max_offers)

    def dominant_shares(self) -> dict[str, float]:
        return {} if self._snapshot is None else dominant_shares(self._snapshot)
