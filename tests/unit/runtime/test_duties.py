"""The leader's duties as data (`tessera.control_plane.runtime.duties`), without threads or clocks: timeouts and
grace periods of `tick`, what `react` sends after commit, offer chunking, message coalescing, the
orphaned-task rule of re-registration and the shells' `Ledger`."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tessera.control_plane.core import commands as c
from tessera.control_plane.core import events as ev
from tessera.control_plane.core.apply import ApplyResult
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import AgentState, Offer, TaskKey, TaskState, TaskStatus
from tessera.control_plane.runtime import duties
from tessera.control_plane.runtime.duties import (
    MAX_PER_MESSAGE,
    OFFERS_PER_ENTRY,
    AllocationRound,
    LeaderSettings,
    Ledger,
    Propose,
    SendUpdate,
    SlowRound,
    SoftState,
)
from tessera.control_plane.runtime.statemachine import Applied
from tests.unit.core.harness import Harness, task

SETTINGS = LeaderSettings(agent_timeout=10.0, reregistration_timeout=30.0, framework_reconnect_timeout=5.0,
                          allocation_interval=1.0, status_update_retry=10.0)
T0 = 1000.0  # when the leader started serving (the shell's clock)


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.run(c.ElectLeader(term=1, master="m1", grpc_address="127.0.0.1:5051", name="m1"))
    return harness


def soft(**kwargs: object) -> SoftState:
    """A leader that has served since T0 and just ran every timed round (nothing due but what a test sets)."""
    base = SoftState(serving_since=T0, last_allocation=T0 + 1e6, last_slow=T0 + 1e6)
    return replace(base, **kwargs)  # type: ignore[arg-type]


def proposed(todo: list[duties.Command]) -> list[c.Command]:
    return [command for item in todo if isinstance(item, Propose) for command in item.commands]


def unreachable(todo: list[duties.Command]) -> list[str]:
    return [command.agent_id for command in proposed(todo) if isinstance(command, c.MarkAgentUnreachable)]


# ---- agents: heartbeat timeout and the re-registration grace ----------------------------------------------
def test_agent_silent_longer_than_agent_timeout_is_marked_unreachable(h: Harness) -> None:
    agent = h.agent()
    seen = T0 + 50.0
    assert unreachable(duties.tick(soft(last_seen={agent: seen}), h.state, seen + 9.9, SETTINGS)) == []
    todo = duties.tick(soft(last_seen={agent: seen}), h.state, seen + 10.5, SETTINGS)
    assert unreachable(todo) == [agent]
    (command,) = proposed(todo)
    assert command == c.MarkAgentUnreachable(agent_id=agent, reason="no heartbeat for 10.5 s")


def test_agent_never_heard_from_is_marked_as_soon_as_the_reregistration_grace_ends(h: Harness) -> None:
    """The production leader's rule (kept): the grace replaces the timeout for an agent this leader never
    heard from. The simulation's old copy waited `reregistration_timeout + agent_timeout`."""
    agent = h.agent()
    assert unreachable(duties.tick(soft(), h.state, T0 + 29.9, SETTINGS)) == []
    assert unreachable(duties.tick(soft(), h.state, T0 + 30.5, SETTINGS)) == [agent]


def test_only_active_or_draining_agents_are_timed(h: Harness) -> None:
    agent = h.agent()
    h.run(c.MarkAgentUnreachable(agent_id=agent, reason="test"))
    assert h.state.agents[agent].state is AgentState.AGENT_UNREACHABLE
    assert unreachable(duties.tick(soft(), h.state, T0 + 100.0, SETTINGS)) == []


def test_the_stream_of_an_agent_marked_unreachable_ends_until_it_registers_again(h: Harness) -> None:
    agent = h.agent()
    assert duties.stream_ends(h.state, agent) is None
    h.run(c.MarkAgentUnreachable(agent_id=agent, reason="test"))
    assert duties.stream_ends(h.state, agent) == "the agent was marked unreachable: it must register again"
    assert duties.stream_ends(h.state, "no-such-agent") is None


def test_a_duty_in_flight_is_not_proposed_again(h: Harness) -> None:
    agent = h.agent()
    pending = frozenset({("agent", agent), ("expiry", "")})
    todo = duties.tick(soft(pending=pending, last_slow=float("-inf")), h.state, T0 + 100.0, SETTINGS)
    assert proposed(todo) == []


# ---- frameworks, expiry and re-sent updates: the once-a-second round ----------------------------------------
def test_slow_duties_run_once_a_second(h: Harness) -> None:
    now = T0 + 100.0
    assert duties.tick(soft(last_slow=now - 0.5), h.state, now, SETTINGS) == []
    todo = duties.tick(soft(last_slow=now - 1.0), h.state, now, SETTINGS)
    assert SlowRound() in todo  # no framework: none seen without a stream
    assert proposed(todo) == [c.ExpireFrameworks(), c.ExpireOffers()]


def test_framework_without_a_stream_is_disconnected_after_the_reconnect_grace(h: Harness) -> None:
    gone, here = h.framework(), h.framework()
    due = {"last_slow": float("-inf")}
    within = duties.tick(soft(frameworks=frozenset({here}), **due), h.state, T0 + 4.0, SETTINGS)
    assert not [x for x in proposed(within) if isinstance(x, c.DisconnectFramework)]
    stream = h.state.frameworks[gone].stream_id
    assert SlowRound(missing={gone: stream}) in within
    first = duties.tick(soft(frameworks=frozenset({here}), **due), h.state, T0 + 5.0, SETTINGS)
    assert not [x for x in proposed(first) if isinstance(x, c.DisconnectFramework)]  # not seen missing before
    after = duties.tick(soft(frameworks=frozenset({here}), missing={gone: stream}, **due), h.state, T0 + 6.0,
                        SETTINGS)
    assert [x for x in proposed(after) if isinstance(x, c.DisconnectFramework)] == [
        c.DisconnectFramework(framework_id=gone, stream_id=stream)]


def test_a_framework_seen_without_a_stream_on_another_stream_before_is_not_disconnected(h: Harness) -> None:
    """A subscription is committed before the leader attaches its stream: a slow round in between sees the
    framework connected, on its new stream, without a stream to this leader. It is disconnected only when
    the next round (a second later) still sees that same stream missing; before, the first round did it,
    and a standby that had just taken over had every call refused as deposed (the services process test)."""
    fw = h.framework()
    stream = h.state.frameworks[fw].stream_id
    due = {"last_slow": float("-inf")}
    on_old = duties.tick(soft(missing={fw: "stream-before-the-takeover"}, **due), h.state, T0 + 100.0, SETTINGS)
    assert not [x for x in proposed(on_old) if isinstance(x, c.DisconnectFramework)]
    attached = duties.tick(soft(frameworks=frozenset({fw}), missing={fw: stream}, **due), h.state, T0 + 101.0,
                           SETTINGS)
    assert not [x for x in proposed(attached) if isinstance(x, c.DisconnectFramework)]
    assert SlowRound(missing={}) in attached


def test_the_ledger_keeps_the_frameworks_seen_without_a_stream_for_the_next_round() -> None:
    ledger = duties.Ledger()
    ledger.serving(T0)
    ledger.record([SlowRound(missing={"fw": "s1"})], T0 + 1)
    assert ledger.view(T0 + 2, last_seen={}, frameworks=(), update_sent={}).missing == {"fw": "s1"}
    ledger.serving(T0 + 3)  # a new term starts with nothing seen
    assert ledger.view(T0 + 4, last_seen={}, frameworks=(), update_sent={}).missing == {}


def test_unacknowledged_update_is_resent_after_status_update_retry(h: Harness) -> None:
    agent, fw = h.agent(), h.framework()
    h.launched(fw, agent, task("t1"))
    h.status("t1", TaskState.TASK_RUNNING, uuid="u-1")
    now = T0 + 100.0
    due = {"last_slow": float("-inf"), "frameworks": frozenset({fw})}

    def resent(sent: dict[str, float]) -> list[SendUpdate]:
        todo = duties.tick(soft(update_sent=sent, **due), h.state, now, SETTINGS)
        return [x for x in todo if isinstance(x, SendUpdate)]

    assert resent({"u-1": now - 9.0}) == []
    (update,) = resent({"u-1": now - 10.0})
    assert (update.framework_id, update.status.uuid) == (fw, "u-1")
    assert len(resent({})) == 1  # never sent by this leader
    no_stream = duties.tick(soft(last_slow=float("-inf")), h.state, now, SETTINGS)
    assert not [x for x in no_stream if isinstance(x, SendUpdate)]


# ---- allocation rounds ------------------------------------------------------------------------------------------
def test_allocation_round_when_wanted_or_interval_passed_but_not_while_offers_commit(h: Harness) -> None:
    now = T0 + 100.0
    assert AllocationRound() not in duties.tick(soft(last_allocation=now - 0.5), h.state, now, SETTINGS)
    assert AllocationRound() in duties.tick(soft(last_allocation=now - 1.0), h.state, now, SETTINGS)
    assert AllocationRound() in duties.tick(soft(last_allocation=now, allocation_wanted=True), h.state, now,
                                            SETTINGS)
    one_round = frozenset({("offers", "o-1/0"), ("offers", "o-1/1")})  # one round in two entries
    in_flight = soft(last_allocation=now - 5.0, allocation_wanted=True, pending=one_round)
    assert SETTINGS.allocation_rounds_in_flight == 1
    assert AllocationRound() not in duties.tick(in_flight, h.state, now, SETTINGS)


def test_an_allocation_round_runs_while_the_previous_rounds_offers_commit_up_to_the_setting(h: Harness) -> None:
    now = T0 + 100.0
    pipelined = replace(SETTINGS, allocation_rounds_in_flight=2)
    one_round = soft(last_allocation=now - 5.0, allocation_wanted=True,
                     pending=frozenset({("offers", "o-1/0"), ("offers", "o-1/1"), ("expiry", "")}))
    assert AllocationRound() in duties.tick(one_round, h.state, now, pipelined)
    two_rounds = replace(one_round, pending=one_round.pending | {("offers", "o-9/0")})
    assert AllocationRound() not in duties.tick(two_rounds, h.state, now, pipelined)


def _offers(n: int) -> list[Offer]:
    return [Offer(offer_id=f"o-{i}", framework_id="fw", agent_id="a", role="web",
                  resources=Resources.of(cpus=1)) for i in range(n)]


def test_offers_are_chunked_into_entries_of_offers_per_entry() -> None:
    offers = _offers(2 * OFFERS_PER_ENTRY + 50)
    proposals = duties.offer_proposals(offers)
    sizes = [len(p.commands[0].offers) for p in proposals]  # type: ignore[union-attr]
    assert sizes == [OFFERS_PER_ENTRY, OFFERS_PER_ENTRY, 50]
    assert [o for p in proposals for o in p.commands[0].offers] == offers  # type: ignore[union-attr]
    assert [p.key for p in proposals] == [("offers", "o-0/0"), ("offers", "o-0/1"), ("offers", "o-0/2")]
    assert duties.offer_proposals([]) == []


# ---- coalescing one stream's messages -------------------------------------------------------------------------------
def test_coalesce_joins_runs_up_to_the_limit_and_keeps_order() -> None:
    items = ["r0", "r1", "k", *[f"s{i}" for i in range(MAX_PER_MESSAGE + 1)]]

    def joinable(item: str) -> bool:
        return item != "k"

    groups = duties.coalesce(items, joinable, batched=True)
    assert [len(g) for g in groups] == [2, 1, MAX_PER_MESSAGE, 1]
    assert [x for g in groups for x in g] == items
    assert duties.coalesce(items, joinable, batched=False) == [(x,) for x in items]


def _result_with(*events: ev.Event) -> ApplyResult:
    """An applied result recording `events` as given (no state needed)."""
    return ApplyResult(outcome="applied", events=tuple((i, e) for i, e in enumerate(events, 1)))


# ---- reactions after commit ---------------------------------------------------------------------------------------------
def _applied(h: Harness, *events: ev.Event, traceparent: str = "00-tp") -> Applied:
    entry = replace(h.entry(events), traceparent=traceparent)
    return Applied(raft_index=1, entry=entry, result=h.commit_entry(entry))


def test_react_sends_in_event_order_with_offers_last(h: Harness) -> None:
    agent, fw = h.agent(), h.framework()
    offer_id = h.offer(fw, agent)
    events = h.decide(c.Accept(fw, (offer_id,), (c.Operation("LAUNCH", tasks=(task("t1"),)),)))
    launched = _applied(h, *events)
    out = duties.react([launched], term=3)
    (run,) = [o for o in out if isinstance(o, duties.RunTask)]
    assert (run.agent_id, run.term, run.task.task_id, run.traceparent) == (agent, 3, "t1", "00-tp")
    # the framework's principal rides with the RunTask: the agent's file service checks readers against it
    owned = duties.react([launched], term=3, principal_of=lambda framework_id: f"owner-of-{framework_id}")
    (run,) = [o for o in owned if isinstance(o, duties.RunTask)]
    assert run.principal == f"owner-of-{fw}"
    kill = _applied(h, *h.decide(c.Kill(fw, "t1")))
    offer2 = Offer(offer_id="", framework_id=fw, agent_id=agent, role="web", resources=Resources.of(cpus=0.5))
    issued = _applied(h, *h.decide(c.IssueOffers((offer2,))))
    out = duties.react([issued, kill], term=3)
    assert [type(o) for o in out] == [duties.KillTask, duties.SendOffers]
    assert isinstance(out[0], duties.KillTask) and (out[0].framework_id, out[0].task_id) == (fw, "t1")


@pytest.mark.parametrize(("state", "wants_allocation"), [
    (TaskState.TASK_RUNNING, False),
    (TaskState.TASK_FINISHED, True),
    (TaskState.TASK_LOST, True),
    (TaskState.TASK_UNREACHABLE, False),  # `state >= 5` took it for terminal: it is not, and frees nothing
])
def test_only_terminal_updates_want_an_allocation_round(h: Harness, state: TaskState, wants_allocation: bool) -> None:
    agent, fw = h.agent(), h.framework()
    h.launched(fw, agent, task("t1"))
    status = TaskStatus(task_id="t1", state=state, agent_id=agent, framework_id=fw, uuid="u-9")
    updated = ev.TaskStatusUpdated(framework_id=fw, agent_id=agent, task_id="t1", status=status)
    out = duties.react([Applied(1, h.entry([updated]), _result_with(updated))], term=1)
    assert SendUpdate(fw, status) in out
    assert (duties.WantAllocation() in out) is wants_allocation


def test_framework_removal_is_sent_after_its_earlier_messages(h: Harness) -> None:
    fw = h.framework()
    rescinded = ev.OfferRescinded(offer_id="o-1", framework_id=fw, agent_id="a", reason="x")
    removed = ev.FrameworkRemoved(framework_id=fw, reason="teardown")
    out = duties.react([Applied(1, h.entry([rescinded, removed]),
                                _result_with(rescinded, removed))], term=1)
    assert out[:2] == [duties.SendRescind(fw, "o-1"), duties.RemoveFramework(fw, "teardown")]


# ---- orphaned tasks of a re-registering agent --------------------------------------------------------------------------
def test_orphaned_tasks_are_the_ones_the_master_holds_ended_or_never_knew(h: Harness) -> None:
    agent, other, fw = h.agent(), h.agent(hostname="other"), h.framework()
    h.launched(fw, agent, task("live"), task("ended", cpus=0.5))
    h.status("ended", TaskState.TASK_FINISHED)
    h.launched(fw, other, task("elsewhere"))

    def report(task_id: str, state: TaskState = TaskState.TASK_RUNNING, framework_id: str = fw) -> TaskStatus:
        return TaskStatus(task_id=task_id, state=state, agent_id=agent, framework_id=framework_id)

    reported = [report("live"), report("ended"), report("elsewhere"), report("unknown")]
    assert duties.orphaned(h.state, agent, reported) == (
        TaskKey(fw, "ended"), TaskKey(fw, "elsewhere"), TaskKey(fw, "unknown"))


def test_orphaned_keeps_the_agent_links_rule_for_terminal_reports_and_bare_ids(h: Harness) -> None:
    """The agent link's version is kept: a report that is itself terminal is nothing to kill, and a bare
    task id (an agent from before ids were scoped per framework) names the agent's one task of that id.
    The simulation's old copy returned both of these as orphans."""
    agent, fw = h.agent(), h.framework()
    h.launched(fw, agent, task("live"))
    finished_elsewhere = TaskStatus(task_id="gone", state=TaskState.TASK_FINISHED, agent_id=agent, framework_id=fw)
    bare = TaskStatus(task_id="live", state=TaskState.TASK_RUNNING, agent_id=agent, framework_id="")
    assert duties.orphaned(h.state, agent, [finished_elsewhere, bare]) == ()
    bare_unknown = replace(bare, task_id="nobody")
    assert duties.orphaned(h.state, agent, [bare_unknown]) == (TaskKey("", "nobody"),)


# ---- election and the ledger -----------------------------------------------------------------------------------------------
def test_elected_rescinds_offers_of_older_leaders(h: Harness) -> None:
    agent, fw = h.agent(), h.framework()
    offer_id = h.offer(fw, agent)
    (proposal,) = duties.elected(h.state)
    assert proposal.commands == (c.RescindOffer(offer_id=offer_id, reason="leader changed"),)
    h.run(c.RescindOffer(offer_id=offer_id, reason="x"))
    assert duties.elected(h.state) == []


def test_ledger_records_what_a_tick_decided_until_done() -> None:
    ledger = Ledger()
    ledger.serving(T0)
    assert ledger.allocation_wanted
    ledger.record([Propose(("expiry", ""), ()), AllocationRound(), SlowRound()], T0 + 1)
    view = ledger.view(T0 + 2, last_seen={}, frameworks=["fw"], update_sent={})
    assert (view.pending, view.allocation_wanted, view.last_allocation, view.last_slow) == (
        frozenset({("expiry", "")}), False, T0 + 1, T0 + 1)
    assert view.serving_since == T0 and view.frameworks == frozenset({"fw"})
    ledger.done(("expiry", ""))
    ledger.record([duties.WantAllocation()], T0 + 3)
    assert ledger.pending == set() and ledger.allocation_wanted
    ledger.deposed()
    assert ledger.serving_since is None


def test_ledger_keeps_the_offers_of_offer_entries_in_flight_until_done() -> None:
    ledger = Ledger()
    ledger.serving(T0)
    first, second = duties.offer_proposals(_offers(OFFERS_PER_ENTRY + 1))
    ledger.record([first, second, Propose(("expiry", ""), (c.ExpireOffers(),))], T0 + 1)
    assert ledger.pending_offers() == (*first.commands[0].offers, *second.commands[0].offers)  # type: ignore[union-attr]
    ledger.done(first.key)
    assert ledger.pending_offers() == second.commands[0].offers  # type: ignore[union-attr]
    ledger.deposed()
    assert ledger.pending_offers() == ()
    ledger.record([second], T0 + 2)
    ledger.serving(T0 + 3)  # a new term starts with nothing in flight
    assert ledger.pending_offers() == ()


# ---- purity ---------------------------------------------------------------------------------------------------------------
def test_duties_module_imports_only_the_pure_core() -> None:
    """No I/O, clock, threads or protobuf: from the control plane only `tessera.control_plane.core` (the
    statemachine import is for type checking only, under TYPE_CHECKING)."""
    import ast
    import pathlib

    from tests.unit.core.test_purity import ALLOWED, FORBIDDEN, FORBIDDEN_CALLS, _top

    path = pathlib.Path(duties.__file__)
    tree = ast.parse(path.read_text(), str(path))
    type_only = {id(n) for top in tree.body if isinstance(top, ast.If) for n in ast.walk(top)}
    imported: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in FORBIDDEN_CALLS, f"duties.py calls {node.func.id}"
    roots = {_top(name) for name in imported}
    assert not roots & FORBIDDEN and roots <= ALLOWED, sorted(roots)
    assert all(n.startswith("tessera.control_plane.core") for n in imported if n.startswith("tessera.")), imported
