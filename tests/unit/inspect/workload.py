"""A realistic master history for the inspection tests, produced the way a master produces it.

A `Leader` decides commands with the core (`decide`, a counter id source, a settable clock) and commits
every entry through the real `MasterStateMachine.apply_entries` (LogEntry bytes in, `EventRecord`s out
to the event store). So the event log under test is exactly what a master writes, and `live` holds the
state a master holds. `fingerprints[seq]` is the live state's fingerprint right after the entry that
recorded `seq` ended, for every entry boundary.
"""

from __future__ import annotations

import dataclasses
import random
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from tessera.control_plane.codec import entry_to_bytes
from tessera.control_plane.core import commands as c
from tessera.control_plane.core import events as ev
from tessera.control_plane.core.apply import ApplyResult
from tessera.control_plane.core.context import Context, sequential_ids
from tessera.control_plane.core.decide import decide
from tessera.control_plane.core.errors import Conflict, InvalidRequest, NotFound
from tessera.control_plane.core.lifecycle import is_terminal
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.state import ClusterState
from tessera.control_plane.core.values import (
    AgentInfo,
    CommandInfo,
    FrameworkInfo,
    Offer,
    TaskInfo,
    TaskState,
    TaskStatus,
)
from tessera.control_plane.eventlog import EventStore
from tessera.control_plane.runtime.statemachine import MasterStateMachine

T0 = 1_700_000_000.0


class Leader:
    def __init__(self, store: EventStore, *, term: int = 1, start: float = T0, snapshot_every: int = 0,
                 fingerprints: bool = True, delta_every: int = 0) -> None:
        self.sm = MasterStateMachine(store, snapshot_every=snapshot_every, delta_every=delta_every)
        self.store = store
        self.now = start
        self.term = term
        self.new_id = sequential_ids()
        self.raft_index = 0
        self.fingerprints: dict[int, str] = {}  # O(state) per entry: off for long histories
        self._keep_fingerprints = fingerprints
        self.entry_times: dict[int, float] = {}
        self._uuid = 0
        self._req = 0
        # request ids of entries that applied without recording any event (an in-flight race made every
        # event a no-op): the one thing the event log cannot give back (see history's docstring)
        self.unrecorded: set[str] = set()

    @property
    def live(self) -> ClusterState:
        return self.sm.state

    def tick(self, seconds: float = 1.0) -> None:
        self.now += seconds

    def ctx(self) -> Context:
        return Context(now=self.now, term=self.term, leader="m1", new_id=self.new_id)

    def decide(self, *commands: c.Command) -> tuple[ev.Event, ...]:
        out: list[ev.Event] = []
        for command in commands:
            out.extend(decide(self.live, command, self.ctx()))
        return tuple(out)

    def commit_events(self, events: Sequence[ev.Event], request_id: str | None = None) -> ApplyResult:
        if request_id is None:
            self._req += 1
            request_id = f"req-{self._req}"
        entry = ev.Entry(term=self.term, leader="m1", time=self.now, request_id=request_id, events=tuple(events))
        return self.commit_batch([entry])[0]

    def commit_batch(self, entries: Sequence[ev.Entry]) -> list[ApplyResult]:
        """Entries group-committed in one Raft call (one raft index for all of them)."""
        self.raft_index += 1
        results = self.sm.apply_entries(self.raft_index, [entry_to_bytes(e) for e in entries])
        assert all(isinstance(r, ApplyResult) for r in results)
        for entry, result in zip(entries, results, strict=True):
            if result.outcome == "applied" and not result.events and entry.request_id:  # type: ignore[union-attr]
                self.unrecorded.add(entry.request_id)
        # every entry boundary of this batch: the state after the last one is what we can observe here
        if self._keep_fingerprints and self.live.seq and self.live.seq not in self.fingerprints:
            self.fingerprints[self.live.seq] = self.comparable_fingerprint()
            self.entry_times[self.live.seq] = self.now
        return results  # type: ignore[return-value]

    def comparable_fingerprint(self) -> str:
        """The live state's fingerprint, without the request ids the event log cannot know about."""
        if not self.unrecorded:
            return self.live.fingerprint()
        requests = OrderedDict((k, v) for k, v in self.live.requests.items() if k not in self.unrecorded)
        return dataclasses.replace(self.live, requests=requests).fingerprint()

    def run(self, *commands: c.Command, request_id: str | None = None) -> ApplyResult:
        result = self.commit_events(self.decide(*commands), request_id)
        assert result.outcome == "applied", result
        return result

    def barrier(self) -> None:
        """A consistent read's barrier: an entry without events (changes only the state's time)."""
        self.raft_index += 1
        self.sm.apply_entries(self.raft_index, [entry_to_bytes(ev.Entry(term=self.term, leader="m1",
                                                                         time=self.now))])

    def uuid(self) -> str:
        self._uuid += 1
        return f"uuid-{self._uuid}"

    # ---- helpers -------------------------------------------------------------------------------
    def agent(self, hostname: str, resources: str = "cpus:4;mem:4096;ports:[31000-31009]") -> str:
        r = self.run(c.RegisterAgent(AgentInfo(hostname=hostname, resources=Resources.parse(resources),
                                               attributes=(("rack", hostname[-1]),))))
        return r.events[0][1].agent_id  # type: ignore[union-attr]

    def framework(self, name: str, roles: tuple[str, ...] = ("web",), failover: float = 60.0) -> str:
        r = self.run(c.SubscribeFramework(FrameworkInfo(name=name, principal=name, roles=roles,
                                                        failover_timeout_seconds=failover)))
        return r.events[0][1].framework_id  # type: ignore[union-attr]

    def offer(self, fid: str, aid: str, role: str = "web") -> str:
        free = self.live.agent_free(aid).allocatable_to(role)
        r = self.run(c.IssueOffers((Offer(offer_id="", framework_id=fid, agent_id=aid, role=role,
                                          resources=free, expires_at=self.now + 300),)))
        return r.events[0][1].offer_id  # type: ignore[union-attr]

    def launch(self, fid: str, aid: str, *task_ids: str, cpus: float = 1, mem: float = 128) -> str:
        oid = self.offer(fid, aid)
        tasks = tuple(TaskInfo(task_id=t, name=t, resources=Resources.of(cpus=cpus, mem=mem),
                               command=CommandInfo(value="sleep 10"), labels=(("app", "demo"),))
                      for t in task_ids)
        self.run(c.Accept(fid, (oid,), (c.Operation("LAUNCH", tasks=tasks),), refuse_seconds=2))
        return oid

    def _task(self, task_id: str) -> Any:
        """The live or completed task `task_id` (this workload's ids are unique across its frameworks)."""
        (task,) = [t for k, t in (*self.live.tasks.items(), *self.live.completed_tasks.items()) if k.task_id == task_id]
        return task

    def status(self, task_id: str, state: TaskState, message: str = "", exit_code: int | None = None) -> str:
        task = self._task(task_id)
        uuid = self.uuid()
        self.run(c.UpdateStatus(TaskStatus(task_id=task_id, state=state, agent_id=task.agent_id, uuid=uuid,
                                           framework_id=task.framework_id, message=message, timestamp=self.now,
                                           exit_code=exit_code)))
        return uuid

    def ack(self, task_id: str, uuid: str) -> None:
        fid = self._task(task_id).framework_id
        self.run(c.Acknowledge(fid, task_id, uuid))


def realistic_history(store: EventStore, *, rounds: int = 3, snapshot_every: int = 0,
                      fingerprints: bool = True, delta_every: int = 0) -> Leader:
    """Leadership, policy, agents, frameworks, offers, launches, status updates and acks, kills,
    declines, reservations, a stale accept rejected in apply, an agent lost and back, a framework
    failing over and one torn down, group-committed batches and read barriers."""
    L = Leader(store, snapshot_every=snapshot_every, fingerprints=fingerprints, delta_every=delta_every)
    L.run(c.ElectLeader(term=1, master="m1", grpc_address="127.0.0.1:5050", name="m1"),
          c.AnnounceMaster(name="m1", raft_address="m1", grpc_address="127.0.0.1:5050"))
    L.run(c.SetRoleWeight("web", 2.0))
    L.run(c.SetQuota("batch", guarantee=Resources.parse("cpus:1;mem:256"), limit=Resources.parse("cpus:8;mem:8192")))
    agents = [L.agent(f"host{i}") for i in range(1, 4)]
    web = L.framework("web", ("web",))
    batch = L.framework("batch", ("batch",))
    n = 0
    for rnd in range(rounds):
        L.tick(2)
        for aid in agents:
            n += 1
            tids = [f"t{n}a", f"t{n}b"]
            L.launch(web, aid, *tids)
            L.tick(0.5)
            uuids = {t: L.status(t, TaskState.TASK_STARTING) for t in tids}
            for t in tids:
                L.ack(t, uuids[t])
                uuids[t] = L.status(t, TaskState.TASK_RUNNING, "running")
            L.barrier()
            L.tick(1.5)
            # one finishes and is acknowledged (completed), the other is killed
            done = L.status(tids[0], TaskState.TASK_FINISHED, "done", exit_code=0)
            L.ack(tids[0], uuids[tids[0]])
            L.ack(tids[0], done)
            L.run(c.Kill(web, tids[1]))
            L.tick(0.2)
            killed = L.status(tids[1], TaskState.TASK_KILLED, "killed", exit_code=137)
            if rnd % 2 == 0:
                L.ack(tids[1], uuids[tids[1]])
                L.ack(tids[1], killed)
        # decline an offer with a filter, then revive
        oid = L.offer(batch, agents[0], role="batch")
        L.run(c.Decline(batch, (oid,), refuse_seconds=30))
        L.run(c.Revive(batch))
        # a stale decision: the offer is rescinded while the accept is in flight -> Rejected at apply
        oid = L.offer(web, agents[1])
        stale = L.decide(c.Accept(web, (oid,), (c.Operation("LAUNCH", tasks=(TaskInfo(
            task_id=f"stale{rnd}", resources=Resources.of(cpus=1, mem=64), command=CommandInfo(value="true")),)),)))
        L.run(c.RescindOffer(oid, "agent busy"))
        rejected = L.commit_events(stale)
        assert rejected.outcome == "rejected", rejected
        if rnd == 0:  # a reservation through an accept
            oid = L.offer(batch, agents[2], role="batch")
            L.run(c.Accept(batch, (oid,), (c.Operation("RESERVE", resources=Resources.parse(
                "cpus:1;mem:128", role="batch")),)))
        # group commit: three entries in one raft call
        L.tick(0.1)
        entries = [ev.Entry(term=L.term, leader="m1", time=L.now, request_id=f"w{rnd}-{i}",
                            events=L.decide(c.SetRoleWeight(f"r{i}", 1.0 + rnd + i))) for i in range(3)]
        L.commit_batch(entries)
    # an agent is lost and comes back; a framework fails over; the other tears down
    L.tick(5)
    L.run(c.MarkAgentUnreachable(agents[0], "no heartbeat"))
    L.tick(3)
    info = L.live.agents[agents[0]].info
    L.run(c.ReregisterAgent(agents[0], info))
    L.run(c.DisconnectFramework(web))
    L.tick(1)
    fw = L.live.frameworks[web]
    L.run(c.SubscribeFramework(FrameworkInfo(framework_id=web, name="web", principal="web", roles=("web",),
                                             failover_timeout_seconds=60.0)))
    assert fw.framework_id == web
    L.run(c.Teardown(batch))
    L.run(c.DrainAgent(agents[2]))
    return L


def random_history(store: EventStore, seed: int, steps: int = 150) -> Leader:
    """A seeded random history: every command a leader could get, refused ones skipped, decisions held
    in flight and committed late (rejected at apply, or applied with nothing to record), retried
    request ids, group commits and barriers."""
    rnd = random.Random(seed)
    L = Leader(store, start=T0 + seed)
    L.run(c.ElectLeader(term=1, master="m1", grpc_address="127.0.0.1:5050", name="m1"))
    held: list[tuple[tuple[ev.Event, ...], str]] = []
    tasks = 0

    def pick(items: Sequence[Any]) -> Any:
        return rnd.choice(sorted(items)) if items else None

    for _ in range(steps):
        L.tick(rnd.choice((0.0, 0.01, 0.5, 3.0)))
        st = L.live
        agent, fw, offer = pick(list(st.agents)), pick(list(st.frameworks)), pick(list(st.offers))
        task = pick([t for t, r in st.tasks.items() if not r.terminal])
        ended = pick([t for t, r in st.tasks.items() if r.unacknowledged])
        choice = rnd.randrange(19)
        command: c.Command | None = None
        if choice == 0 or not st.agents:
            command = c.RegisterAgent(AgentInfo(hostname=f"h{rnd.randrange(5)}", resources=Resources.parse(
                "cpus:4;mem:2048;ports:[31000-31004]")))
        elif choice == 1 or not st.frameworks:
            roles = rnd.choice((("web",), ("batch",), ("web", "batch")))
            command = c.SubscribeFramework(FrameworkInfo(name="f", principal="p", roles=roles,
                                                         failover_timeout_seconds=rnd.choice((0.0, 30.0))))
        elif choice in (2, 3) and fw and agent:
            role = rnd.choice(st.frameworks[fw].info.roles)
            free = st.agent_free(agent).allocatable_to(role) if st.agents[agent].reachable else Resources()
            command = c.IssueOffers((Offer(offer_id="", framework_id=fw, agent_id=agent, role=role, resources=free),))
        elif choice in (4, 5) and offer:
            o = st.offers[offer]
            tasks += 1
            t = TaskInfo(task_id=f"t{tasks}", resources=Resources.of(cpus=1, mem=64),
                         command=CommandInfo(value="true"))
            command = c.Accept(o.framework_id, (offer,), (c.Operation("LAUNCH", tasks=(t,)),),
                               refuse_seconds=rnd.choice((0.0, 5.0)))
        elif choice == 6 and offer:
            command = c.Decline(st.offers[offer].framework_id, (offer,), refuse_seconds=rnd.choice((0.0, 10.0)))
        elif choice == 7 and offer:
            command = c.RescindOffer(offer, "random")
        elif choice in (8, 9, 10) and task:
            r = st.tasks[task]
            nxt = {TaskState.TASK_STAGING: TaskState.TASK_STARTING, TaskState.TASK_STARTING: TaskState.TASK_RUNNING,
                   TaskState.TASK_KILLING: TaskState.TASK_KILLED}.get(r.state, TaskState.TASK_FINISHED)
            if rnd.random() < 0.2:
                nxt = TaskState.TASK_FAILED
            command = c.UpdateStatus(TaskStatus(task_id=task.task_id, state=nxt, agent_id=r.agent_id,
                                                framework_id=task.framework_id, uuid=L.uuid(),
                                                data=b"tail\n" if is_terminal(nxt) else b""))
        elif choice == 11 and ended:
            r = st.tasks[ended]
            command = c.Acknowledge(r.framework_id, ended.task_id, r.unacknowledged[0].uuid)
        elif choice == 12 and task:
            command = c.Kill(task.framework_id, task.task_id)
        elif choice == 13 and agent:
            command = rnd.choice((c.MarkAgentUnreachable(agent, "lost"), c.DrainAgent(agent),
                                  c.ReregisterAgent(agent, st.agents[agent].info), c.RemoveAgent(agent, "gone")))
        elif choice == 14 and fw:
            command = rnd.choice((c.DisconnectFramework(fw), c.Revive(fw), c.Suppress(fw),
                                  c.SubscribeFramework(st.frameworks[fw].info), c.Teardown(fw)))
        elif choice == 15:
            command = rnd.choice((c.SetRoleWeight(rnd.choice(("web", "batch")), rnd.choice((1.0, 2.5))),
                                  c.SetQuota("web", guarantee=Resources.parse("cpus:1"))))
        elif choice == 16:
            L.barrier()
        elif choice == 17 and held:
            events, rid = held.pop(rnd.randrange(len(held)))
            L.commit_events(events, rid)  # late: applied, rejected, or applied with nothing to record
        elif choice == 18 and L._req:
            L.commit_events((), f"req-{rnd.randint(1, L._req)}")  # a retried request id: a duplicate
        if command is None:
            continue
        try:
            events = L.decide(command)
        except (InvalidRequest, NotFound, Conflict):
            continue
        if not events:
            continue
        if rnd.random() < 0.15:
            L._req += 1
            held.append((events, f"req-{L._req}"))
        elif rnd.random() < 0.1:
            L.tick(0.001)
            L.commit_batch([ev.Entry(term=L.term, leader="m1", time=L.now, request_id=f"g{L.raft_index}-{i}",
                                     events=events if i == 0 else ()) for i in range(2)])
        else:
            L.commit_events(events)
    return L
