"""A random cluster history driven through decide + apply, checked after every step.

The machine plays a leader: it registers agents, subscribes frameworks, issues offers computed naively
from what is free, accepts them with launches and reservations, declines, kills, reports statuses,
acknowledges, loses and brings back agents, removes things, sends invalid requests, holds decisions in
flight and commits them late, commits garbage and retries requests. After every step:

- decide either raised a domain error (InvalidRequest, NotFound or Conflict only) or returned events
  that apply accepts when committed at once: a fresh decision is never rejected;
- decide never mutated the state;
- a late (possibly stale) decision or garbage is applied or rejected, never raised, and a rejection
  changes nothing but the log;
- `check_invariants` finds nothing;
and at the end, replaying every committed entry into a fresh state gives an equal state, and so does a
pickle round trip (the Raft snapshot).
"""

from __future__ import annotations

import pickle
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tessera.control_plane.core import commands as c
from tessera.control_plane.core import events as ev
from tessera.control_plane.core.apply import ApplyResult, replay
from tessera.control_plane.core.errors import Conflict, InvalidRequest, NotFound, TesseraError
from tessera.control_plane.core.invariants import check_invariants
from tessera.control_plane.core.lifecycle import is_terminal
from tessera.control_plane.core.resources import SCALE, Resources
from tessera.control_plane.core.values import (
    AgentInfo,
    AgentState,
    CommandInfo,
    FrameworkInfo,
    FrameworkState,
    Offer,
    TaskInfo,
    TaskState,
    TaskStatus,
)

from .harness import Harness

DOMAIN_ERRORS = (InvalidRequest, NotFound, Conflict)
ROLE_SETS = [("a",), ("b",), ("a", "b")]
index = st.integers(min_value=0, max_value=10_000)


def pick(items: list[Any], i: int) -> Any:
    return items[i % len(items)] if items else None


def scaled(resources: Resources, numerator: int, denominator: int) -> Resources:
    """A fraction of the scalars (in fixed point, rounded down) and of each range."""
    items: list[tuple[str, str, float, tuple[tuple[int, int], ...]]] = []
    for (name, role), milli in resources.scalars:
        part = milli * numerator // denominator
        if part:
            items.append((name, role, part / SCALE, ()))
    for (name, role), intervals in resources.ranges:
        begin, end = intervals[0]
        width = max((end - begin + 1) * numerator // denominator, 1)
        items.append((name, role, 0.0, ((begin, begin + width - 1),)))
    return Resources.from_items(items)


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h = Harness()
        self.h.run(c.ElectLeader(1, "m1", "127.0.0.1:5051", "m1"))
        self.pending: list[ev.Entry] = []
        self.requests: list[tuple[ev.Entry, ApplyResult]] = []
        self.tasks_made: dict[str, int] = {}
        self.requests_made = 0

    # ---- plumbing --------------------------------------------------------------------------------------
    @property
    def state(self) -> Any:
        return self.h.state

    def attempt(self, command: c.Command, *, later: bool = False, request: bool = False,
                expect: type[TesseraError] | None = None) -> ApplyResult | None:
        before = self.state.fingerprint()
        try:
            events = self.h.decide(command)
        except TesseraError as exc:
            assert isinstance(exc, DOMAIN_ERRORS), repr(exc)
            assert expect is None or isinstance(exc, expect), (command, exc)
            return None
        finally:
            assert self.state.fingerprint() == before, f"decide mutated the state on {command}"
        assert expect is None, f"{command} should have raised {expect}"
        if later:
            self.pending.append(self.h.entry(events))
            return None
        request_id = ""
        if request:
            self.requests_made += 1
            request_id = f"req-{self.requests_made}"
        result = self.h.commit(events, request_id=request_id)
        assert result.outcome == "applied", (command, result)
        if request_id:
            self.requests.append((self.h.entries[-1], result))
        return result

    def agents(self, *states: AgentState) -> list[str]:
        return [a for a, r in sorted(self.state.agents.items()) if not states or r.state in states]

    def frameworks(self, *states: FrameworkState) -> list[str]:
        return [f for f, r in sorted(self.state.frameworks.items()) if not states or r.state in states]

    def new_task_id(self, framework_id: str) -> str:
        """Counted per framework: task ids are scoped per framework, so two frameworks run tasks of the
        same ids (an id reused within a framework is the "duplicate" mistake)."""
        made = self.tasks_made[framework_id] = self.tasks_made.get(framework_id, 0) + 1
        return f"task-{made}"

    @initialize(agents=st.integers(1, 3), frameworks=st.sampled_from([(False,), (True,), (False, True)]))
    def start(self, agents: int, frameworks: tuple[bool, ...]) -> None:
        for n in range(agents):
            self.register_agent(cpus=4, mem=4096, ports=4, static_role="a" if n == 2 else "")
        for n, partition_aware in enumerate(frameworks):
            self.subscribe(roles=ROLE_SETS[n], partition_aware=partition_aware, failover=30.0)

    # ---- time --------------------------------------------------------------------------------------------
    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 5.0, 30.0, 120.0]))
    def tick(self, seconds: float) -> None:
        self.h.now += seconds

    # ---- agents --------------------------------------------------------------------------------------------
    @rule(cpus=st.integers(1, 8), mem=st.sampled_from([256, 1024, 4096]), ports=st.integers(0, 6),
          static_role=st.sampled_from(["", "", "a"]))
    def register_agent(self, cpus: int, mem: int, ports: int, static_role: str) -> None:
        resources = Resources.of(cpus=cpus, mem=mem, ports=[(31000, 31000 + ports - 1)] if ports else ())
        if static_role:
            resources = resources + Resources.of(role=static_role, cpus=1)
        self.attempt(c.RegisterAgent(AgentInfo(hostname=f"host-{len(self.state.agents)}", resources=resources)),
                     request=True)

    @rule(i=index, later=st.booleans())
    def mark_unreachable(self, i: int, later: bool) -> None:
        aid = pick(self.agents(), i)
        if aid:
            self.attempt(c.MarkAgentUnreachable(aid, "no heartbeats"), later=later)

    @rule(i=index, mask=st.integers(0, 255), state_choice=st.sampled_from(list(TaskState)),
          shrink=st.booleans(), ghost=st.booleans(), later=st.booleans())
    def reregister(self, i: int, mask: int, state_choice: TaskState, shrink: bool, ghost: bool,
                   later: bool) -> None:
        aid = pick(self.agents(), i)
        if not aid:
            return
        agent = self.state.agents[aid]
        reported: list[TaskStatus] = []
        for n, record in enumerate(self.state.tasks_on_agent(aid)):
            if not mask >> (n % 8) & 1:
                continue
            if n % 3 == 0:
                state = state_choice
            elif record.state in (TaskState.TASK_UNREACHABLE, TaskState.TASK_STAGING) or is_terminal(record.state):
                state = TaskState.TASK_RUNNING
            else:
                state = record.state
            reported.append(TaskStatus(record.task_id, state, agent_id=aid, framework_id=record.framework_id,
                                       uuid=f"rr-{n}" if n % 2 else ""))
        if ghost:
            reported.append(TaskStatus("task-ghost", TaskState.TASK_RUNNING, agent_id=aid))
        info = agent.info
        if shrink:
            info = AgentInfo(hostname=info.hostname, resources=scaled(info.resources, 1, 2))
        self.attempt(c.ReregisterAgent(aid, info, tuple(reported)), later=later)

    @rule(i=index, really=st.integers(0, 3))
    def remove_agent(self, i: int, really: int) -> None:
        aid = pick(self.agents(), i)
        if aid and really == 0:
            self.attempt(c.RemoveAgent(aid, "operator"))

    @rule(i=index, really=st.integers(0, 3))
    def drain_agent(self, i: int, really: int) -> None:
        aid = pick(self.agents(), i)
        if aid and really == 0:
            self.attempt(c.DrainAgent(aid))

    @rule(i=index, really=st.integers(0, 3))
    def undrain_agent(self, i: int, really: int) -> None:
        aid = pick(self.agents(), i)
        if aid and really == 0:
            self.attempt(c.UndrainAgent(aid))

    # ---- frameworks ----------------------------------------------------------------------------------------
    @rule(roles=st.sampled_from(ROLE_SETS), partition_aware=st.booleans(),
          failover=st.sampled_from([0.0, 10.0, 60.0]))
    def subscribe(self, roles: tuple[str, ...], partition_aware: bool, failover: float) -> None:
        info = FrameworkInfo(name="fw", principal="p", roles=roles, partition_aware=partition_aware,
                             failover_timeout_seconds=failover)
        self.attempt(c.SubscribeFramework(info), request=True)

    @rule(i=index, roles=st.sampled_from(ROLE_SETS))
    def resubscribe(self, i: int, roles: tuple[str, ...]) -> None:
        fid = pick(self.frameworks(), i)
        if fid:
            old = self.state.frameworks[fid].info
            info = FrameworkInfo(framework_id=fid, name=old.name, principal=old.principal, roles=roles,
                                 partition_aware=old.partition_aware,
                                 failover_timeout_seconds=old.failover_timeout_seconds)
            self.attempt(c.SubscribeFramework(info))

    @rule(i=index, stale=st.booleans(), later=st.booleans())
    def disconnect(self, i: int, stale: bool, later: bool) -> None:
        fid = pick(self.frameworks(), i)
        if fid:
            stream = "stream-stale" if stale else self.state.frameworks[fid].stream_id
            self.attempt(c.DisconnectFramework(fid, stream), later=later)

    @rule()
    def expire_frameworks(self) -> None:
        self.attempt(c.ExpireFrameworks())

    @rule(i=index, teardown=st.booleans(), really=st.integers(0, 3))
    def remove_framework(self, i: int, teardown: bool, really: int) -> None:
        fid = pick(self.frameworks(), i)
        if fid and really == 0:
            self.attempt(c.Teardown(fid) if teardown else c.RemoveFramework(fid, "operator"))

    @rule(i=index, roles=st.sampled_from([(), ("a",), ("b",)]), revive=st.booleans())
    def suppress_or_revive(self, i: int, roles: tuple[str, ...], revive: bool) -> None:
        fid = pick(self.frameworks(), i)
        if fid:
            self.attempt(c.Revive(fid, roles) if revive else c.Suppress(fid, roles))

    @rule(role=st.sampled_from(["a", "b", "bad role", ""]),
          weight=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 5)))
    def set_weight(self, role: str, weight: float) -> None:
        self.attempt(c.SetRoleWeight(role, weight), request=True)

    # ---- offers ------------------------------------------------------------------------------------------------
    @rule(fi=index, ai=index, ri=index, share=st.sampled_from([(1, 1), (1, 2), (1, 3)]),
          expires=st.sampled_from([0.0, 0.0, 5.0, 60.0]), later=st.booleans())
    def issue_offer(self, fi: int, ai: int, ri: int, share: tuple[int, int], expires: float, later: bool) -> None:
        fid = pick(self.frameworks(FrameworkState.FRAMEWORK_CONNECTED), fi)
        aid = pick(self.agents(AgentState.AGENT_ACTIVE), ai)
        if not fid or not aid:
            return
        role = pick(list(self.state.frameworks[fid].info.roles), ri)
        resources = scaled(self.state.agent_free(aid).allocatable_to(role), *share)
        if not resources:
            return
        offer = Offer("", fid, aid, role=role, resources=resources,
                      expires_at=self.h.now + expires if expires else 0.0)
        self.attempt(c.IssueOffers((offer,)), later=later)

    @rule(oi=index, refuse=st.sampled_from([0.0, 1.0, 10.0, 100.0]), later=st.booleans())
    def decline(self, oi: int, refuse: float, later: bool) -> None:
        oid = pick(sorted(self.state.offers), oi)
        if oid:
            self.attempt(c.Decline(self.state.offers[oid].framework_id, (oid,), refuse), later=later)

    @rule(oi=index)
    def rescind(self, oi: int) -> None:
        oid = pick(sorted(self.state.offers), oi)
        if oid:
            self.attempt(c.RescindOffer(oid, "allocator"))

    @rule()
    def expire_offers(self) -> None:
        self.attempt(c.ExpireOffers())

    @rule(oi=index, tasks=st.integers(0, 3), reserve=st.booleans(), unreserve=st.booleans(),
          mistake=st.sampled_from([None, None, None, "oversize", "duplicate", "other-framework"]),
          refuse=st.sampled_from([0.0, 0.0, 30.0]), later=st.booleans())
    def accept(self, oi: int, tasks: int, reserve: bool, unreserve: bool, mistake: str | None,
               refuse: float, later: bool) -> None:
        oid = pick(sorted(self.state.offers), oi)
        if not oid:
            return
        offer = self.state.offers[oid]
        fid = offer.framework_id
        pool = offer.resources
        operations: list[c.Operation] = []
        if unreserve and pool.filter_role(offer.role):
            dynamic = self.state.agents[offer.agent_id].reserved
            target = pool.filter_role(offer.role)
            if dynamic.contains(target):
                operations.append(c.Operation("UNRESERVE", resources=target))
                pool = pool - target + target.flatten()
        if reserve and pool.milli("cpus", "") >= 1000:
            reserved = Resources.of(role=offer.role, cpus=1)
            operations.append(c.Operation("RESERVE", resources=reserved))
            pool = pool - reserved.flatten() + reserved
        infos: list[TaskInfo] = []
        for n in range(tasks):
            resources = scaled(pool, 1, tasks + 1)
            if mistake == "oversize" and n == 0:
                resources = resources + Resources.of(cpus=1000)
            task_id = self.new_task_id(fid)
            own = sorted(k.task_id for k in [*self.state.tasks, *self.state.completed_tasks] if k.framework_id == fid)
            if mistake == "duplicate" and n == 0 and own:
                task_id = own[0]
            if resources:
                infos.append(TaskInfo(task_id, name=task_id, resources=resources,
                                      command=CommandInfo(value="sleep 1")))
        if infos:
            operations.append(c.Operation("LAUNCH", tasks=tuple(infos)))
        if mistake == "other-framework":
            others = [f for f in self.frameworks() if f != fid]
            if not others:
                return
            self.attempt(c.Accept(others[0], (oid,), tuple(operations)), expect=Conflict)
            return
        expect: type[TesseraError] | None = None
        if mistake in ("oversize", "duplicate") and infos and (
            mistake == "oversize" or (fid, infos[0].task_id) in self.state.tasks
            or (fid, infos[0].task_id) in self.state.completed_tasks
        ):
            expect = Conflict
        self.attempt(c.Accept(fid, (oid,), tuple(operations), refuse), later=later, expect=expect)

    @rule(fi=index, ai=index, ri=index, tasks=st.integers(1, 3), reserve=st.booleans())
    def offer_and_launch(self, fi: int, ai: int, ri: int, tasks: int, reserve: bool) -> None:
        before = set(self.state.offers)
        self.issue_offer(fi=fi, ai=ai, ri=ri, share=(1, 2), expires=0.0, later=False)
        new = sorted(set(self.state.offers) - before)
        if new:
            self.accept(oi=sorted(self.state.offers).index(new[0]), tasks=tasks, reserve=reserve,
                        unreserve=not reserve, mistake=None, refuse=0.0, later=False)

    # ---- tasks ---------------------------------------------------------------------------------------------------
    @precondition(lambda self: bool(self.state.tasks))
    @rule(ti=index, finish=st.sampled_from(list(TaskState)))
    def progress(self, ti: int, finish: TaskState) -> None:
        """Move a task along its normal life: STAGING -> RUNNING -> an ending."""
        key = pick(sorted(self.state.tasks), ti)
        record = self.state.tasks[key]
        if record.terminal or not self.state.agents[record.agent_id].reachable:
            return
        nxt = finish if record.state is TaskState.TASK_RUNNING else TaskState.TASK_RUNNING
        update = TaskStatus(key.task_id, nxt, agent_id=record.agent_id, framework_id=key.framework_id,
                            uuid=f"agent-{self.h.uuid()}")
        self.attempt(c.UpdateStatus(update))

    @rule(ti=index, later=st.booleans())
    def kill(self, ti: int, later: bool) -> None:
        key = pick(sorted(self.state.tasks), ti)
        if key:
            self.attempt(c.Kill(key.framework_id, key.task_id), later=later)

    @rule(ti=index, state=st.sampled_from(list(TaskState)), reuse=st.booleans(), later=st.booleans())
    def status_update(self, ti: int, state: TaskState, reuse: bool, later: bool) -> None:
        key = pick(sorted([*self.state.tasks, *self.state.completed_tasks]), ti)
        if not key:
            return
        record = self.state.find_task(*key)
        uuid = record.applied_uuids[-1] if reuse and record.applied_uuids else f"agent-{self.h.uuid()}"
        update = TaskStatus(key.task_id, state, agent_id=record.agent_id, framework_id=key.framework_id, uuid=uuid)
        self.attempt(c.UpdateStatus(update), later=later, request=True)

    @rule(ui=index, later=st.booleans())
    def acknowledge(self, ui: int, later: bool) -> None:
        update = pick(self.state.unacknowledged_updates(), ui)
        if update:
            self.attempt(c.Acknowledge(update.framework_id, update.task_id, update.uuid), later=later)

    # ---- in flight, garbage, retries --------------------------------------------------------------------------
    @rule(pi=index)
    def commit_late(self, pi: int) -> None:
        if not self.pending:
            return
        entry = self.pending.pop(pi % len(self.pending))
        before = pickle.loads(pickle.dumps(self.state))
        result = self.h.commit_entry(entry)
        assert result.outcome in ("applied", "rejected")
        if result.outcome == "rejected":
            self.assert_only_rejection(before, result)

    @rule(events=st.lists(st.sampled_from([
        ev.AgentRemoved("agent-1"), ev.FrameworkRemoved("framework-2"), ev.OfferAccepted("offer-3", "f", "a"),
        ev.TaskLaunched("t", "f", "a", TaskInfo("t")), ev.UnknownEvent(5, ignorable=False),
        ev.RoleWeightSet("a", -1.0), ev.TaskStatusAcknowledged("task-1", "f", "a", "u"),
        ev.UnknownEvent(6, ignorable=True), ev.RoleWeightSet("b", 2.0),
    ]), min_size=1, max_size=3))
    def commit_garbage(self, events: list[ev.Event]) -> None:
        before = pickle.loads(pickle.dumps(self.state))
        result = self.h.commit(events)
        if result.outcome == "rejected":
            self.assert_only_rejection(before, result)

    @rule(ri=index)
    def retry_request(self, ri: int) -> None:
        if not self.requests:
            return
        entry, original = self.requests[ri % len(self.requests)]
        if entry.request_id not in self.state.requests:
            return  # forgotten: would apply again
        seq = self.state.seq
        result = self.h.commit_entry(entry)
        assert result.outcome == "duplicate" and result.events == ()
        assert (result.first_seq, result.last_seq, result.error_code) == (
            original.first_seq, original.last_seq, original.error_code)
        assert self.state.seq == seq

    def assert_only_rejection(self, before: Any, result: ApplyResult) -> None:
        assert len(result.events) == 1 and isinstance(result.events[0][1], ev.Rejected)
        before.seq, before.time = self.state.seq, self.state.time
        before.event_counts["Rejected"] = before.event_counts.get("Rejected", 0) + 1
        assert before == self.state, result.reason

    # ---- checks ------------------------------------------------------------------------------------------------
    @invariant()
    def invariants_hold(self) -> None:
        assert check_invariants(self.state) == []

    def teardown(self) -> None:
        rebuilt = replay(self.h.entries)
        assert rebuilt == self.state
        assert rebuilt.fingerprint() == self.state.fingerprint()
        assert pickle.loads(pickle.dumps(self.state)) == self.state


CoreMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestCoreMachine = CoreMachine.TestCase
