"""A small leader for allocation tests: builds a `ClusterState` only through the core's decide + apply,
runs allocation rounds and commits their offers through `IssueOffers`, checking the invariants each time.

`Cluster.round()` is what the master's leader loop does: snapshot, allocate, decide(IssueOffers), apply.
`Cluster.use_all()` plays frameworks that launch one task on every offer they hold, using all of it, so
that repeated rounds fill the cluster (the convergence tests).
"""

from __future__ import annotations

from collections.abc import Iterable

from tessera.control_plane.allocation import AllocationSnapshot, Allocator, allocate, snapshot_from_state
from tessera.control_plane.core import commands as c
from tessera.control_plane.core.apply import ApplyResult, apply
from tessera.control_plane.core.context import Context, sequential_ids
from tessera.control_plane.core.decide import decide
from tessera.control_plane.core.events import Entry
from tessera.control_plane.core.invariants import check_invariants
from tessera.control_plane.core.resources import EMPTY, Resources
from tessera.control_plane.core.state import ClusterState
from tessera.control_plane.core.values import AgentInfo, CommandInfo, FrameworkInfo, Offer, TaskInfo

Labels = tuple[tuple[str, str], ...]


def allocate_both_ways(snapshot: AllocationSnapshot) -> tuple[Offer, ...]:
    """`allocate(snapshot)` at now = 1.0, checked against the incremental `Allocator` (the same offers)."""
    offers = allocate(snapshot, new_id=sequential_ids("o"), now=1.0)
    incremental = Allocator()
    incremental.update(snapshot)
    assert incremental.allocate(new_id=sequential_ids("o"), now=1.0) == offers
    return offers


class Cluster:
    def __init__(self, now: float = 1000.0) -> None:
        self.state = ClusterState()
        self.now = now
        self.new_id = sequential_ids()
        self.offer_ids = sequential_ids("alloc")
        self.tasks = 0
        self.run(c.ElectLeader(term=1, master="m1"))

    # ---- core plumbing -------------------------------------------------------------------------------
    def ctx(self) -> Context:
        return Context(now=self.now, term=1, leader="m1", new_id=self.new_id)

    def run(self, command: c.Command) -> ApplyResult:
        events = decide(self.state, command, self.ctx())
        result = apply(self.state, Entry(term=1, leader="m1", time=self.now, events=events))
        assert result.outcome == "applied", result
        problems = check_invariants(self.state)
        assert problems == [], problems
        return result

    # ---- building a cluster --------------------------------------------------------------------------
    def agent(self, resources: str | Resources = "cpus:4;mem:4096", hostname: str = "host",
              attributes: Labels = ()) -> str:
        if isinstance(resources, str):
            resources = Resources.parse(resources)
        result = self.run(c.RegisterAgent(AgentInfo(hostname=hostname, resources=resources,
                                                    attributes=attributes)))
        return result.events[0][1].agent_id  # type: ignore[union-attr]

    def framework(self, *roles: str, name: str = "fw") -> str:
        info = FrameworkInfo(name=name, principal="p", roles=roles or ("web",), failover_timeout_seconds=60)
        result = self.run(c.SubscribeFramework(info))
        return result.events[-1][1].framework_id  # type: ignore[union-attr]

    def weight(self, role: str, weight: float) -> None:
        self.run(c.SetRoleWeight(role, weight))

    def quota(self, role: str, guarantee: str = "", limit: str = "") -> None:
        self.run(c.SetQuota(role, Resources.parse(guarantee), Resources.parse(limit)))

    def reserve(self, agent_id: str, framework_id: str, role: str, resources: str) -> None:
        """RESERVE through an offer, as Mesos frameworks do: offer the agent's free resources to the
        framework, accept with a RESERVE operation, and let the rest go back to the pool."""
        free = self.state.agent_free(agent_id).allocatable_to(role)
        offer = Offer(offer_id="", framework_id=framework_id, agent_id=agent_id, role=role, resources=free)
        issued = self.run(c.IssueOffers((offer,)))
        offer_id = issued.events[0][1].offer_id  # type: ignore[union-attr]
        op = c.Operation("RESERVE", resources=Resources.parse(resources, role=role))
        self.run(c.Accept(framework_id, (offer_id,), (op,)))

    # ---- allocation rounds ---------------------------------------------------------------------------
    def snapshot(self) -> AllocationSnapshot:
        return snapshot_from_state(self.state, self.now)

    def allocate(self, **kwargs: object) -> tuple[Offer, ...]:
        return allocate(self.snapshot(), new_id=self.offer_ids, now=self.now, **kwargs)  # type: ignore[arg-type]

    def issue(self, offers: Iterable[Offer]) -> tuple[Offer, ...]:
        offers = tuple(offers)
        if offers:
            self.run(c.IssueOffers(offers))
        return offers

    def round(self, **kwargs: object) -> tuple[Offer, ...]:
        return self.issue(self.allocate(**kwargs))

    def use(self, offer: Offer) -> None:
        """The framework launches one task using the whole offer."""
        self.tasks += 1
        task = TaskInfo(task_id=f"task-{self.tasks}", name="t", resources=offer.resources,
                        command=CommandInfo(value="sleep 1"))
        self.run(c.Accept(offer.framework_id, (offer.offer_id,), (c.Operation("LAUNCH", tasks=(task,)),)))

    def use_all(self) -> None:
        for offer_id in sorted(self.state.offers):
            self.use(self.state.offers[offer_id])

    def decline(self, offer: Offer, refuse_seconds: float) -> None:
        self.run(c.Decline(offer.framework_id, (offer.offer_id,), refuse_seconds))

    def fill(self, max_rounds: int = 1000) -> int:
        """Allocate and use every offer until a round makes no offer; returns the number of rounds."""
        for n in range(max_rounds):
            if not self.round():
                return n
            self.use_all()
        raise AssertionError("the cluster did not fill up")

    # ---- reading the state ---------------------------------------------------------------------------
    def role_scalar(self, role: str, name: str) -> float:
        return self.state.role_allocations().get(role, EMPTY).scalar(name)
