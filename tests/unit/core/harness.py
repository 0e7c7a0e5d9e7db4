"""A tiny leader for core tests: decide with a counter id source and a settable clock, apply, keep the log.

`Harness.run` is the happy path (decide + commit, asserting the entry applied and the invariants hold);
`decide` and `commit` are separate so tests can hold a decision in flight and commit it late.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Sequence

from tessera.control_plane.core import commands as c
from tessera.control_plane.core.apply import ApplyResult, apply
from tessera.control_plane.core.context import Context, sequential_ids
from tessera.control_plane.core.decide import decide
from tessera.control_plane.core.events import Entry, Event
from tessera.control_plane.core.invariants import check_invariants
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.state import ClusterState, TaskKey, TaskRecord
from tessera.control_plane.core.values import (
    AgentInfo,
    CommandInfo,
    FrameworkInfo,
    Offer,
    TaskInfo,
    TaskState,
    TaskStatus,
)

AGENT_RESOURCES = "cpus:4;mem:4096;ports:[31000-31009]"


def task(task_id: str, cpus: float = 1, mem: float = 128, ports: Sequence[tuple[int, int]] = (),
         role: str = "", grace: float = 0.0) -> TaskInfo:
    return TaskInfo(
        task_id=task_id, name=task_id, resources=Resources.of(role=role, cpus=cpus, mem=mem, ports=ports),
        command=CommandInfo(value="sleep 60"), kill_grace_period_seconds=grace,
    )


def launch(*tasks: TaskInfo) -> c.Operation:
    return c.Operation("LAUNCH", tasks=tuple(tasks))


class Harness:
    def __init__(self, now: float = 1000.0, term: int = 1) -> None:
        self.state = ClusterState()
        self.new_id = sequential_ids()
        self.now = now
        self.term = term
        self.entries: list[Entry] = []
        self._uuids = 0

    # ---- the pure functions ------------------------------------------------------------------------
    def ctx(self) -> Context:
        return Context(now=self.now, term=self.term, leader="m1", new_id=self.new_id)

    def decide(self, command: c.Command) -> tuple[Event, ...]:
        return decide(self.state, command, self.ctx())

    def entry(self, events: Iterable[Event], request_id: str = "", time: float | None = None,
              term: int | None = None) -> Entry:
        return Entry(term=self.term if term is None else term, leader="m1",
                     time=self.now if time is None else time, request_id=request_id, events=tuple(events))

    def commit(self, events: Iterable[Event], request_id: str = "", time: float | None = None,
               term: int | None = None) -> ApplyResult:
        entry = self.entry(events, request_id, time, term)
        self.entries.append(entry)
        return apply(self.state, entry)

    def commit_entry(self, entry: Entry) -> ApplyResult:
        self.entries.append(entry)
        return apply(self.state, entry)

    def run(self, command: c.Command, request_id: str = "") -> ApplyResult:
        result = self.commit(self.decide(command), request_id)
        assert result.outcome == "applied", result
        assert check_invariants(self.state) == []
        return result

    def copy(self) -> ClusterState:
        return pickle.loads(pickle.dumps(self.state))

    # ---- setup helpers -------------------------------------------------------------------------------
    def agent(self, resources: str | Resources = AGENT_RESOURCES, hostname: str = "host") -> str:
        if isinstance(resources, str):
            resources = Resources.parse(resources)
        result = self.run(c.RegisterAgent(AgentInfo(hostname=hostname, resources=resources)))
        return result.events[0][1].agent_id  # type: ignore[union-attr]

    def framework(self, roles: tuple[str, ...] = ("web",), partition_aware: bool = False,
                  failover: float = 0.0, principal: str = "alice") -> str:
        info = FrameworkInfo(name="fw", principal=principal, roles=roles, partition_aware=partition_aware,
                             failover_timeout_seconds=failover)
        result = self.run(c.SubscribeFramework(info))
        return result.events[0][1].framework_id  # type: ignore[union-attr]

    def offer(self, framework_id: str, agent_id: str, resources: Resources | None = None,
              role: str = "web", expires_at: float = 0.0) -> str:
        if resources is None:
            resources = self.state.agent_free(agent_id).allocatable_to(role)
        offer = Offer(offer_id="", framework_id=framework_id, agent_id=agent_id, role=role,
                      resources=resources, expires_at=expires_at)
        result = self.run(c.IssueOffers((offer,)))
        return result.events[0][1].offer_id  # type: ignore[union-attr]

    def launched(self, framework_id: str, agent_id: str, *tasks: TaskInfo) -> str:
        """Offer the agent's free resources and launch `tasks` on them; returns the used offer's id."""
        offer_id = self.offer(framework_id, agent_id)
        self.run(c.Accept(framework_id, (offer_id,), (launch(*tasks),)))
        return offer_id

    def uuid(self) -> str:
        self._uuids += 1
        return f"uuid-{self._uuids}"

    def task(self, task_id: str, framework_id: str | None = None) -> TaskRecord:
        """The live task `task_id` of `framework_id` (of the only framework that has one, when None)."""
        if framework_id is not None:
            return self.state.tasks[TaskKey(framework_id, task_id)]
        (record,) = [t for k, t in self.state.tasks.items() if k.task_id == task_id]
        return record

    def is_live(self, task_id: str) -> bool:
        """Whether some framework has a live task `task_id`."""
        return any(k.task_id == task_id for k in self.state.tasks)

    def is_completed(self, task_id: str) -> bool:
        """Whether some framework has a completed task `task_id` the state remembers."""
        return any(k.task_id == task_id for k in self.state.completed_tasks)

    def status(self, task_id: str, state: TaskState, uuid: str | None = None,
               framework_id: str | None = None) -> ApplyResult:
        record = self.task(task_id, framework_id)
        update = TaskStatus(task_id=task_id, state=state, agent_id=record.agent_id,
                            framework_id=record.framework_id, uuid=uuid or self.uuid())
        return self.run(c.UpdateStatus(update))
