"""The allocator's input: an immutable picture of what can be offered, read from the replicated state.

`snapshot_from_state(state, now)` is a pure function of `ClusterState` and the leader's clock. It copies
out everything `allocate` reads, so the allocation can run on a state that keeps changing underneath
(and a test can build a snapshot by hand). It never mutates the state.

What it holds, and the rules that decide what goes in:

- `agents`: only agents that can be offered right now (ACTIVE: not draining, not unreachable, not
  removed) *and* that have something free, sorted by agent id. `free` is total - used - offered (and
  - the `pending` offers still committing), with its reservation roles kept (`("cpus", "web")` is only
  for role web). An agent with nothing free is left
  out: the allocation costs what is allocatable, not what is registered.
- `frameworks`: only CONNECTED frameworks; a disconnected one gets no offers until it resubscribes.
  `allocated` is, per role, the scalar quantities of its non-terminal tasks plus its live offers;
  `suppressed_roles` as recorded by Suppress/Revive. `max_tasks_in_flight` as the framework declared it
  (0: no limit) and `in_flight`, its non-terminal tasks plus its live offers (what that limit counts);
  `min_offer`, the smallest offer it can use, as it declared it.
- `roles`: every role that is configured, subscribed to by a framework, holding allocations or owning a
  reservation: weight (1.0 unless set), quota guarantee and limit, `allocated` (scalars used + offered
  by *all* frameworks of the role, disconnected ones included: their tasks still run) and `reserved`
  (scalars reserved to the role on agents that are not removed, free or not: Mesos charges
  reservations against quota whether they are used or not).
- `total`: scalar quantities of every reachable agent (ACTIVE or DRAINING): the denominator of the
  dominant resource shares.
- `decline_filters`: (framework id, agent id) -> refuse_until, only filters still in force at `now`.
- `seq`: the state's event number, used as the seed of the agent order (see `allocator`).

Scalars are compared and summed in the core's fixed point (thousandths, `Resources.milli`), never in
floats, so every master computes the same snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from tessera.control_plane.core.resources import EMPTY, Interval, Key, Resources
from tessera.control_plane.core.state import AgentRecord, ClusterState, TaskKey
from tessera.control_plane.core.values import AgentState, FrameworkState, Labels, Offer

__all__ = [
    "AgentSnapshot",
    "AllocationSnapshot",
    "FrameworkSnapshot",
    "RoleSnapshot",
    "snapshot_from_state",
]


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    """An agent that can be offered: what is free on it, reservation roles kept."""

    agent_id: str
    hostname: str
    attributes: Labels
    free: Resources


@dataclass(frozen=True, slots=True)
class FrameworkSnapshot:
    """A connected framework: its roles, which of them are suppressed, and its allocation per role
    (scalars of its non-terminal tasks plus its live offers, reservation roles kept)."""

    framework_id: str
    roles: tuple[str, ...]
    suppressed_roles: frozenset[str] = frozenset()
    allocated: Mapping[str, Resources] = field(default_factory=dict)
    max_tasks_in_flight: int = 0  # 0: no limit
    in_flight: int = 0  # non-terminal tasks plus live offers
    min_offer: Resources = EMPTY  # no offer with less of a kind named here (FrameworkInfo.min_offer)

    @property
    def slots(self) -> int | None:
        """How many more offers the framework may be made (None: no limit); see `allocator`."""
        if self.max_tasks_in_flight <= 0:
            return None
        return max(0, self.max_tasks_in_flight - self.in_flight)

    def allocated_to(self, role: str) -> Resources:
        return self.allocated.get(role, EMPTY)


@dataclass(frozen=True, slots=True)
class RoleSnapshot:
    """A role's policy and what it holds: `allocated` (used + offered, scalars) and `reserved` (scalar
    reservations to it on agents that are not removed, used or not)."""

    role: str
    weight: float = 1.0
    quota_guarantee: Resources = EMPTY
    quota_limit: Resources = EMPTY
    allocated: Resources = EMPTY
    reserved: Resources = EMPTY


@dataclass(frozen=True, slots=True)
class AllocationSnapshot:
    """Everything `allocate` reads. Build it with `snapshot_from_state`, or by hand in tests."""

    agents: tuple[AgentSnapshot, ...]
    frameworks: tuple[FrameworkSnapshot, ...]
    roles: Mapping[str, RoleSnapshot]
    total: Resources
    decline_filters: Mapping[tuple[str, str], float] = field(default_factory=dict)
    now: float = 0.0
    seq: int = 0

    def role(self, role: str) -> RoleSnapshot:
        """The role's snapshot; a role nobody configured has weight 1, no quota and nothing allocated."""
        return self.roles.get(role) or RoleSnapshot(role)


# ---- building it from the state ----------------------------------------------------------------------
def _scalars_of(resources: Resources) -> Resources:
    return Resources(scalars=resources.scalars) if resources.ranges else resources


def _bag(scalars: Mapping[Key, int]) -> Resources:
    """A scalar-only Resources in normal form from fixed-point sums."""
    return Resources(scalars=tuple(sorted((k, v) for k, v in scalars.items() if v > 0)))


def _minus_intervals(have: tuple[Interval, ...], take: list[Interval]) -> tuple[Interval, ...] | None:
    """`have` (sorted, merged) without every interval of `take`; None when `take` is not inside `have`."""
    pieces = list(have)
    for begin, end in sorted(take):
        for i, (b, e) in enumerate(pieces):
            if b <= begin and end <= e:
                pieces[i:i + 1] = [p for p in ((b, begin - 1), (end + 1, e)) if p[0] <= p[1]]
                break
        else:
            return None
    return tuple(pieces)


def _free(agent: AgentRecord) -> Resources:
    """total - used - offered, in fixed point and interval arithmetic. Should anything not fit (a state
    that broke its invariants), `Resources` arithmetic redoes it and raises, saying what is wrong."""
    used, offered = agent.used, agent.offered
    if not used:
        if not offered:
            return agent.total
        if offered.scalars == agent.total.scalars and offered.ranges == agent.total.ranges:
            return EMPTY  # the steady state: the whole agent is offered
    elif not offered and used.scalars == agent.total.scalars and used.ranges == agent.total.ranges:
        return EMPTY
    scalars = dict(agent.total.scalars)
    for key, milli in (*used.scalars, *offered.scalars):
        left = scalars.get(key, 0) - milli
        if left < 0:
            return agent.total - used - offered
        scalars[key] = left
    ranges = agent.total.ranges
    if used.ranges or offered.ranges:
        taken: dict[Key, list[Interval]] = {}
        for key, intervals in (*used.ranges, *offered.ranges):
            taken.setdefault(key, []).extend(intervals)
        remaining: list[tuple[Key, tuple[Interval, ...]]] = []
        for key, intervals in ranges:
            take = taken.pop(key, None)
            left_ranges = intervals if take is None else _minus_intervals(intervals, take)
            if left_ranges is None:
                return agent.total - used - offered
            if left_ranges:
                remaining.append((key, left_ranges))
        if taken:
            return agent.total - used - offered
        ranges = tuple(remaining)
    return Resources(scalars=tuple(kv for kv in sorted(scalars.items()) if kv[1] > 0), ranges=ranges)


def snapshot_from_state(state: ClusterState, now: float, *, ended: Mapping[TaskKey, str] | None = None,
                        pending: Iterable[Offer] = ()) -> AllocationSnapshot:
    """The allocator's view of `state` at `now` (see the module docstring). Pure; reads only.

    `ended` (task -> its agent id): the view once these tasks have ended — the updates that end them are
    decided, in the entry these offers go into (`core.decide.decide_each`'s `follow`): their resources
    are free on their agents and no longer held by their frameworks, and only those agents are offered
    (the allocation of what those updates free; the rest waits for the next round).

    `pending`: offers proposed and not yet applied (an earlier round's entries still committing): counted
    as live offers are — their resources are not free on their agents, and they are held by their
    frameworks — so a round that runs before they commit never offers the same resources twice. One
    already applied (its id among the state's offers) is not counted again; an agent whose free
    resources no longer hold its pending offers (the state moved on) is left out of this round."""
    agents: list[AgentSnapshot] = []
    total: dict[Key, int] = {}
    reserved: dict[str, dict[Key, int]] = {}
    released: dict[str, Resources] = {}
    proposed = [o for o in pending if o.offer_id not in state.offers]
    offered_pending: dict[str, Resources] = {}
    for offer in proposed:
        offered_pending[offer.agent_id] = offered_pending.get(offer.agent_id, EMPTY) + offer.resources
    if ended is not None:
        for ended_key in ended:
            task = state.tasks.get(ended_key)
            if task is not None and not task.terminal:
                released[task.agent_id] = released.get(task.agent_id, EMPTY) + task.resources
    for agent_id in sorted(state.agents):
        agent = state.agents[agent_id]
        if agent.state is AgentState.AGENT_REMOVED:
            continue
        reachable = agent.reachable
        for key, milli in agent.total.scalars:
            if key[1]:
                reserved_to = reserved.setdefault(key[1], {})
                reserved_to[key] = reserved_to.get(key, 0) + milli
            if reachable:
                total[key] = total.get(key, 0) + milli
        if agent.state is not AgentState.AGENT_ACTIVE or agent.draining:
            continue
        if ended is not None and agent_id not in released:
            continue
        free = _free(agent) + released[agent_id] if agent_id in released else _free(agent)
        if agent_id in offered_pending:
            if not free.contains(offered_pending[agent_id]):
                continue
            free = free - offered_pending[agent_id]
        if free:
            agents.append(AgentSnapshot(agent_id, agent.info.hostname, agent.info.attributes, free))

    # One pass over non-terminal tasks and live offers, summing per (framework, role); the roles' sums
    # (every framework, connected or not) are added up from those. Sums of integers: the iteration order
    # does not matter.
    connected = {fid for fid, fw in state.frameworks.items() if fw.state is FrameworkState.FRAMEWORK_CONNECTED}
    held: dict[tuple[str, str], dict[Key, int]] = {}
    in_flight: dict[str, int] = {}
    holders = [(t.framework_id, t.role, t.info.resources) for task_key, t in state.tasks.items()
               if not t.terminal and (ended is None or task_key not in ended)]
    holders.extend((o.framework_id, o.role, o.resources) for o in state.offers.values())
    holders.extend((o.framework_id, o.role, o.resources) for o in proposed)
    for framework_id, role, resources in holders:
        in_flight[framework_id] = in_flight.get(framework_id, 0) + 1
        sums = held.get((framework_id, role))
        if sums is None:
            sums = held[(framework_id, role)] = {}
        for key, milli in resources.scalars:
            sums[key] = sums.get(key, 0) + milli
    role_allocated: dict[str, dict[Key, int]] = {}
    fw_roles: dict[str, list[str]] = {}
    for framework_id, role in sorted(held):
        to_role = role_allocated.setdefault(role, {})
        for key, milli in held[(framework_id, role)].items():
            to_role[key] = to_role.get(key, 0) + milli
        if framework_id in connected:
            fw_roles.setdefault(framework_id, []).append(role)

    frameworks: list[FrameworkSnapshot] = []
    role_names: set[str] = set(state.roles) | set(role_allocated) | set(reserved)
    for framework_id in sorted(connected):
        fw = state.frameworks[framework_id]
        role_names.update(fw.info.roles)
        frameworks.append(FrameworkSnapshot(
            framework_id=framework_id,
            roles=fw.info.roles,
            suppressed_roles=fw.suppressed_roles,
            allocated=MappingProxyType({r: _bag(held[(framework_id, r)])
                                        for r in fw_roles.get(framework_id, ())}),
            max_tasks_in_flight=fw.info.max_tasks_in_flight,
            in_flight=in_flight.get(framework_id, 0),
            min_offer=fw.info.min_offer,
        ))

    roles: dict[str, RoleSnapshot] = {}
    for name in sorted(role_names):
        info = state.role(name)
        roles[name] = RoleSnapshot(
            role=name,
            weight=info.weight,
            quota_guarantee=_scalars_of(info.quota_guarantee),
            quota_limit=_scalars_of(info.quota_limit),
            allocated=_bag(role_allocated.get(name, {})),
            reserved=_bag(reserved.get(name, {})),
        )

    filters = {key: until for key, until in sorted(state.decline_filters.items()) if until > now}
    return AllocationSnapshot(
        agents=tuple(agents),
        frameworks=tuple(frameworks),
        roles=MappingProxyType(roles),
        total=_bag(total),
        decline_filters=MappingProxyType(filters),
        now=now,
        seq=state.seq,
    )
