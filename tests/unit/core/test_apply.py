"""apply: atomic, idempotent, deterministic and total."""

from __future__ import annotations

import importlib
import pickle
import pkgutil
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tessera.control_plane.core as core_package
from tessera.control_plane.core import apply as apply_module
from tessera.control_plane.core import commands as c
from tessera.control_plane.core import events as ev
from tessera.control_plane.core.apply import ApplyResult, apply, replay
from tessera.control_plane.core.errors import Conflict
from tessera.control_plane.core.invariants import check_invariants
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.state import (
    APPLIED_SPAN,
    ClusterState,
    TaskKey,
    remembered,
    remembered_result,
)
from tessera.control_plane.core.values import (
    AgentInfo,
    FrameworkInfo,
    Offer,
    RoleInfo,
    TaskInfo,
    TaskState,
    TaskStatus,
)

from .harness import AGENT_RESOURCES, Harness, launch, task


def populated() -> tuple[Harness, str, str, str]:
    h = Harness()
    aid = h.agent()
    fid = h.framework(partition_aware=True)
    h.launched(fid, aid, task("t1", ports=[(31000, 31000)]))
    h.status("t1", TaskState.TASK_RUNNING, uuid="u1")
    oid = h.offer(fid, aid)
    return h, aid, fid, oid


def assert_only_a_rejection_was_recorded(before: ClusterState, after: ClusterState, result: ApplyResult) -> None:
    assert result.outcome == "rejected" and result.error_code
    assert len(result.events) == 1 and isinstance(result.events[0][1], ev.Rejected)
    assert result.events[0][0] == before.seq + 1 == after.seq == result.first_seq == result.last_seq
    expected = pickle.loads(pickle.dumps(before))
    expected.seq = after.seq
    expected.time = after.time
    expected.event_counts["Rejected"] = expected.event_counts.get("Rejected", 0) + 1
    if result.request_id:
        expected.requests[result.request_id] = after.requests[result.request_id]
    assert after == expected
    assert check_invariants(after) == []


# ---- numbering and results ---------------------------------------------------------------------------
def test_events_are_numbered_consecutively_across_entries() -> None:
    h = Harness()
    first = h.commit([ev.RoleWeightSet("a", 1), ev.RoleWeightSet("b", 2)])
    second = h.commit([ev.RoleWeightSet("c", 3)])
    assert [s for s, _ in first.events] == [1, 2] and (first.first_seq, first.last_seq) == (1, 2)
    assert [s for s, _ in second.events] == [3] and h.state.seq == 3
    assert h.state.event_counts == {"RoleWeightSet": 3}


def test_an_entry_with_nothing_to_record_has_an_empty_range_at_the_current_seq() -> None:
    h = Harness()
    h.commit([ev.RoleWeightSet("a", 1)])
    result = h.commit([])
    assert result.outcome == "applied" and result.events == ()
    assert (result.first_seq, result.last_seq) == (2, 1)


def test_rejected_entry_records_one_rejected_event_with_its_own_seq() -> None:
    h, aid, fid, oid = populated()
    before = h.copy()
    result = h.commit([ev.RoleWeightSet("web", 2), ev.OfferAccepted("offer-404", fid, aid)])
    assert_only_a_rejection_was_recorded(before, h.state, result)
    assert result.error_code == "NotFound" and "offer-404" in result.reason
    assert "web" not in h.state.roles  # the first event of the entry was rolled back too
    assert result.error() is not None and isinstance(result.error(), type(result.error()))


def test_entry_is_atomic_when_its_last_event_is_stale() -> None:
    h, aid, fid, oid = populated()
    events = h.decide(c.Accept(fid, (oid,), (launch(task("t2", cpus=1), task("t3", cpus=1)),)))
    stale = (*events[:-1], replace(events[-1], task_id="t1", task=replace(events[-1].task, task_id="t1")))
    before = h.copy()
    result = h.commit(stale)
    assert_only_a_rejection_was_recorded(before, h.state, result)
    assert oid in h.state.offers and not h.is_live("t2")


def test_duplicate_request_id_is_applied_once() -> None:
    h, aid, fid, oid = populated()
    events = h.decide(c.Decline(fid, (oid,), refuse_seconds=10))
    first = h.commit(events, request_id="req-1")
    seq = h.state.seq
    again = h.commit(events, request_id="req-1")
    assert again.outcome == "duplicate" and again.events == ()
    assert (again.first_seq, again.last_seq, again.ok) == (first.first_seq, first.last_seq, True)
    assert h.state.seq == seq
    assert h.state.result_for_request("req-1") is not None


def test_duplicate_of_a_rejected_request_reports_the_original_error() -> None:
    h, aid, fid, oid = populated()
    rejected = h.commit([ev.OfferAccepted("offer-404", fid, aid)], request_id="req-2")
    again = h.commit([ev.RoleWeightSet("web", 5)], request_id="req-2")
    assert again.outcome == "duplicate" and not again.ok
    assert (again.error_code, again.reason) == (rejected.error_code, rejected.reason)
    with pytest.raises(Exception, match="offer-404"):
        again.raise_for_error()
    assert "web" not in h.state.roles


def test_request_table_is_bounded_and_forgets_the_oldest_first() -> None:
    h = Harness()
    h.state.request_limit = 3
    for n in range(5):
        h.commit([ev.RoleWeightSet("a", n + 1)], request_id=f"r{n}")
    assert list(h.state.requests) == ["r2", "r3", "r4"]
    assert h.commit([ev.RoleWeightSet("a", 9)], request_id="r0").outcome == "applied"  # forgotten: applies


def test_completed_tasks_and_retired_offers_are_bounded() -> None:
    h = Harness()
    h.state.completed_tasks_limit = 2
    h.state.retired_offers_limit = 2
    aid, fid = h.agent(), h.framework()
    for n in range(4):
        h.launched(fid, aid, task(f"t{n}"))
        h.status(f"t{n}", TaskState.TASK_FINISHED, uuid=f"end{n}")
        h.run(c.Acknowledge(fid, f"t{n}", f"end{n}"))
    assert list(h.state.completed_tasks) == [(fid, "t2"), (fid, "t3")]
    assert len(h.state.retired_offers) == 2
    assert check_invariants(h.state) == []


def test_status_update_uuid_already_applied_is_not_recorded_twice() -> None:
    h, aid, fid, _ = populated()
    update = ev.TaskStatusUpdated("t1", fid, aid, TaskStatus("t1", TaskState.TASK_RUNNING, agent_id=aid, uuid="u1"))
    result = h.commit([update])
    assert result.outcome == "applied" and result.events == ()
    assert [s.uuid for s in h.task("t1").unacknowledged] == ["u1"]


def test_acknowledgement_applied_twice_is_recorded_once() -> None:
    h, aid, fid, _ = populated()
    ack = ev.TaskStatusAcknowledged("t1", fid, aid, "u1")
    assert len(h.commit([ack]).events) == 1
    assert h.commit([ack]).events == ()


def test_illegal_transition_at_apply_time_is_rejected() -> None:
    h, aid, fid, _ = populated()
    before = h.copy()
    back = ev.TaskStatusUpdated("t1", fid, aid, TaskStatus("t1", TaskState.TASK_STAGING, agent_id=aid, uuid="u9"))
    assert_only_a_rejection_was_recorded(before, h.state, h.commit([back]))


# ---- stale decisions ---------------------------------------------------------------------------------------
def test_two_allocations_of_the_same_resources_in_flight_only_the_first_applies() -> None:
    h = Harness()
    aid, fid = h.agent(), h.framework()
    offer = Offer("", fid, aid, role="web", resources=h.state.agent_free(aid))
    first, second = h.decide(c.IssueOffers((offer,))), h.decide(c.IssueOffers((offer,)))
    assert h.commit(first).outcome == "applied"
    assert h.commit(second).outcome == "rejected"
    assert check_invariants(h.state) == []


def test_an_offer_in_flight_to_a_framework_that_suppressed_meanwhile_is_rejected() -> None:
    h = Harness()
    aid, fid = h.agent(), h.framework()
    offers = h.decide(c.IssueOffers((Offer("", fid, aid, role="web", resources=Resources.of(cpus=1)),)))
    h.run(c.Suppress(fid))
    assert h.commit(offers).outcome == "rejected"


def test_reregistration_racing_an_unreachable_mark_is_rejected_and_can_be_decided_again() -> None:
    h, aid, fid, _ = populated()
    info = AgentInfo(hostname="host", resources=Resources.parse(AGENT_RESOURCES))
    reregister = c.ReregisterAgent(aid, info, (TaskStatus("t1", TaskState.TASK_RUNNING, agent_id=aid),))
    in_flight = h.decide(reregister)  # decided while t1 was RUNNING: nothing to bring back
    h.run(c.MarkAgentUnreachable(aid))  # committed first: t1 becomes UNREACHABLE
    result = h.commit(in_flight)
    assert result.outcome == "rejected" and "unreachable" in result.reason
    h.run(reregister)
    assert h.task("t1").state is TaskState.TASK_RUNNING


def test_unreachable_mark_racing_a_launch_is_rejected() -> None:
    h, aid, fid, oid = populated()
    mark = h.decide(c.MarkAgentUnreachable(aid))
    h.run(c.Accept(fid, (oid,), (launch(task("t2")),)))  # t2 launched after the mark was decided
    assert h.commit(mark).outcome == "rejected"
    h.run(c.MarkAgentUnreachable(aid))
    assert h.task("t2").state is TaskState.TASK_UNREACHABLE


def test_launch_needs_an_offer_accepted_in_the_same_entry() -> None:
    h, aid, fid, oid = populated()
    before = h.copy()
    bare = ev.TaskLaunched("t9", fid, aid, replace(task("t9"), framework_id=fid, agent_id=aid))
    assert_only_a_rejection_was_recorded(before, h.state, h.commit([bare]))


def test_entry_from_an_older_term_is_rejected() -> None:
    h = Harness(term=1)
    h.term = 3
    h.run(c.ElectLeader(3, "m3"))
    before = h.copy()
    assert_only_a_rejection_was_recorded(before, h.state, h.commit([ev.RoleWeightSet("a", 1)], term=2))


# ---- unknown events and totality -------------------------------------------------------------------------
def test_ignorable_unknown_event_is_skipped_and_a_non_ignorable_one_rejects() -> None:
    h = Harness()
    result = h.commit([ev.UnknownEvent(99, ignorable=True), ev.RoleWeightSet("a", 2)])
    assert result.outcome == "applied" and h.state.roles["a"].weight == 2
    assert [type(e) for _, e in result.events] == [ev.UnknownEvent, ev.RoleWeightSet]  # numbered alike
    before = h.copy()
    assert_only_a_rejection_was_recorded(before, h.state, h.commit([ev.UnknownEvent(98, ignorable=False)]))


@pytest.mark.parametrize("garbage", [None, "entry", 42, object(), ev.RoleWeightSet("a", 1)])
def test_apply_of_something_that_is_not_an_entry_is_rejected_not_raised(garbage: Any) -> None:
    state = ClusterState()
    result = apply(state, garbage)
    assert result.outcome == "rejected" and result.error_code == "InvalidRequest"
    assert state.seq == 1 and check_invariants(state) == []


@pytest.mark.parametrize("entry", [
    ev.Entry(term=-1, leader="m", time=1.0, events=()),
    ev.Entry(term=1, leader="m", time=float("nan"), events=()),
    ev.Entry(term=1, leader="m", time=1.0, request_id=None, events=()),  # type: ignore[arg-type]
    ev.Entry(term=1, leader="m", time=1.0, events="not events"),  # type: ignore[arg-type]
    ev.Entry(term=1, leader="m", time=1.0, events=(object(),)),  # type: ignore[arg-type]
])
def test_malformed_entries_are_rejected_not_raised(entry: ev.Entry) -> None:
    state = ClusterState()
    assert apply(state, entry).outcome == "rejected"


def garbage_events(h: Harness, aid: str, fid: str, oid: str) -> list[ev.Event]:
    nan = float("nan")
    bad_res = Resources(scalars=((("cpus", ""), -5),))
    info = TaskInfo("t1", framework_id=fid, agent_id=aid, resources=Resources.of(cpus=1))
    return [
        ev.AgentRegistered("agent-1", AgentInfo(agent_id="agent-1", hostname="h")),  # already registered
        ev.AgentRegistered("agent-x", AgentInfo(agent_id="agent-y", hostname="h")),
        ev.AgentRegistered("agent-x", AgentInfo(agent_id="agent-x", hostname="h", resources=bad_res)),
        ev.AgentReregistered("agent-404", AgentInfo(agent_id="agent-404", hostname="h")),
        ev.AgentUnreachable("agent-404"),
        ev.AgentUnreachable(aid),  # it still has offers and a running task
        ev.AgentRemoved(aid),
        ev.AgentDrainStarted(aid),
        ev.FrameworkSubscribed(fid, FrameworkInfo(framework_id=fid, name="x", roles=("web",)), "s", False),
        ev.FrameworkSubscribed("fw-x", FrameworkInfo(framework_id="fw-x", name="x", roles=()), "s", False),
        ev.FrameworkDisconnected(fid, nan),
        ev.FrameworkRemoved(fid),  # still has offers
        ev.FrameworkSuppressed(fid, ("ops",)),
        ev.FrameworkRevived("fw-404"),
        ev.OfferIssued(oid, fid, aid, h.state.offers[oid]),  # id already used
        ev.OfferIssued("o2", fid, aid, Offer("o2", fid, aid, role="web", resources=Resources.of(cpus=100))),
        ev.OfferIssued("o3", fid, aid, Offer("o4", fid, aid, role="web", resources=Resources.of(cpus=1))),
        ev.OfferIssued("o5", fid, aid, "not an offer"),  # type: ignore[arg-type]
        ev.OfferDeclined(oid, "fw-other", aid, 10.0),
        ev.OfferDeclined(oid, fid, aid, float("inf")),
        ev.OfferRescinded("offer-404", fid, aid),
        ev.OfferAccepted(oid, fid, "agent-other"),
        ev.TaskLaunched("t1", fid, aid, info),  # duplicate id
        ev.TaskKillRequested("t404", fid, aid),
        ev.TaskKillRequested("t1", fid, aid, -1.0),
        ev.TaskStatusUpdated("t1", fid, aid, TaskStatus("t2", TaskState.TASK_RUNNING)),
        ev.TaskStatusUpdated("t1", fid, aid, TaskStatus("t1", 77)),  # type: ignore[arg-type]
        ev.TaskStatusUpdated("t1", "fw-other", aid, TaskStatus("t1", TaskState.TASK_FINISHED, uuid="x")),
        ev.TaskStatusAcknowledged("t1", fid, aid, "u-404"),
        ev.RoleWeightSet("web", 0.0),
        ev.RoleWeightSet("web", nan),
        ev.RoleWeightSet("bad role!", 1.0),
        ev.RoleWeightSet(None, 1.0),  # type: ignore[arg-type]
        ev.QuotaSet("web", bad_res),
        ev.ResourcesReserved(aid, fid, "web", Resources.of(cpus=1)),  # not reserved form
        ev.ResourcesReserved(aid, fid, "web", Resources.of(role="web", cpus=99)),
        ev.ResourcesUnreserved(aid, fid, "web", Resources.of(role="web", cpus=1)),
        ev.MasterRemoved("nobody"),
        ev.LeaderElected(0, "m0"),
    ]


def test_garbage_events_are_rejected_and_leave_the_state_unchanged() -> None:
    h, aid, fid, oid = populated()
    for event in garbage_events(h, aid, fid, oid):
        before = h.copy()
        result = h.commit([ev.RoleWeightSet("canary", 3), event])
        assert result.outcome == "rejected", event
        assert_only_a_rejection_was_recorded(before, h.state, result)


def test_a_bug_in_a_handler_becomes_an_internal_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()

    def broken(state: ClusterState, event: Any, tx: Any) -> bool:
        tx.put(state.roles, "half-done", RoleInfo("half-done"))
        raise ZeroDivisionError("bug")

    monkeypatch.setitem(apply_module._HANDLERS, ev.QuotaSet, broken)
    before = h.copy()
    result = h.commit([ev.RoleWeightSet("a", 2), ev.QuotaSet("a")])
    assert result.error_code == "Internal" and "ZeroDivisionError" in result.reason
    assert_only_a_rejection_was_recorded(before, h.state, result)
    assert isinstance(result.error(), Conflict)  # callers see an unknown code as a conflict


def test_every_event_type_has_one_handler_in_one_topic() -> None:
    modules = [importlib.import_module(f"{core_package.__name__}.{m.name}")
               for m in pkgutil.iter_modules(core_package.__path__) if m.name.startswith("apply_")]
    tables = [module.HANDLERS for module in modules if hasattr(module, "HANDLERS")]
    assert len(tables) >= 6, "the topic modules (apply_agents, apply_offers, ...) each have a HANDLERS table"
    topics = [event_type for table in tables for event_type in table]
    assert len(topics) == len(set(topics)), "an event type is in two topics' tables: one would hide the other"
    assert set(apply_module._HANDLERS) == {*ev.EVENT_FIELDS, ev.UnknownEvent}
    assert set(apply_module._HANDLERS) == {*topics, ev.Rejected, ev.UnknownEvent}


_ids = st.sampled_from(["", "agent-1", "framework-2", "t1", "offer-5", "x" * 300, "a b", "u1"])
_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.none())
_values: st.SearchStrategy[Any] = st.one_of(_ids, _numbers, st.booleans(),
                                             st.sampled_from([Resources.of(cpus=1), Resources.of(role="web", cpus=1),
                                                              (), ("web",), TaskState.TASK_RUNNING]))
_event_classes = [cls for cls in ev.EVENT_FIELDS if cls is not ev.Rejected]


@st.composite
def _random_event(draw: st.DrawFn) -> Any:
    cls = draw(st.sampled_from(_event_classes))
    fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    return cls(**{name: draw(_values) for name in fields})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_random_event(), min_size=1, max_size=4))
def test_apply_never_raises_on_random_garbage(events: list[Any]) -> None:
    h, aid, fid, oid = populated()
    before = h.copy()
    result = h.commit(events)
    if result.outcome == "rejected":
        assert_only_a_rejection_was_recorded(before, h.state, result)
    else:
        assert check_invariants(h.state) == []


# ---- determinism -------------------------------------------------------------------------------------------
def test_replay_of_the_log_rebuilds_an_equal_state_and_pickling_preserves_it() -> None:
    h, aid, fid, oid = populated()
    h.run(c.Decline(fid, (oid,), refuse_seconds=60))
    h.commit([ev.OfferAccepted("offer-404", fid, aid)])
    h.run(c.MarkAgentUnreachable(aid))
    rebuilt = replay(h.entries)
    assert rebuilt == h.state and rebuilt.fingerprint() == h.state.fingerprint()
    restored = pickle.loads(pickle.dumps(h.state))
    assert restored == h.state and restored.fingerprint() == h.state.fingerprint()


def test_fingerprint_differs_when_anything_differs() -> None:
    h, aid, fid, oid = populated()
    other = h.copy()
    other.agents[aid].draining = True
    assert other.fingerprint() != h.state.fingerprint() and other != h.state


def test_agent_free_is_total_minus_used_minus_offered() -> None:
    h, aid, fid, oid = populated()
    agent = h.state.agents[aid]
    assert h.state.agent_free(aid) == agent.total - agent.used - agent.offered
    totals = h.state.totals()
    assert totals.total == Resources.of(cpus=4, mem=4096)  # scalars: ports do not add up across agents
    assert totals.used + totals.offered + totals.free == totals.total
    assert h.state.role_allocations() == {"web": totals.used + totals.offered}


def test_framework_accounting_is_per_scalar_so_equal_ports_on_two_agents_do_not_merge() -> None:
    h = Harness()
    a1, a2, fid = h.agent(), h.agent(), h.framework()
    o1 = h.offer(fid, a1, Resources.of(cpus=1, mem=64, ports=[(31000, 31001)]))
    h.offer(fid, a2, Resources.of(cpus=1, mem=64, ports=[(31000, 31001)]))  # the same ports, another machine
    h.run(c.Accept(fid, (o1,), (launch(task("t1", cpus=1, mem=64, ports=[(31000, 31000)])),)))
    h.run(c.DisconnectFramework(fid))  # rescinding the second offer must not trip over merged ports
    assert h.state.frameworks[fid].used == Resources.of(cpus=1, mem=64)
    assert h.state.frameworks[fid].offered == Resources()


def test_a_retry_is_answered_from_a_remembered_result_old_or_new_form() -> None:
    h = Harness()
    first = h.commit([ev.RoleWeightSet("a", 2.0)], request_id="r-new")
    assert h.state.requests["r-new"] == first.last_seq * APPLIED_SPAN + 1  # applied, one event: one int
    again = h.commit([ev.RoleWeightSet("a", 3.0)], request_id="r-new")
    assert (again.outcome, again.first_seq, again.last_seq, again.ok) == ("duplicate", first.first_seq,
                                                                          first.last_seq, True)
    rejected = h.commit([ev.RoleWeightSet("", 3.0)], request_id="r-bad")
    assert h.state.requests["r-bad"] == ("rejected", rejected.first_seq, rejected.last_seq, rejected.error_code,
                                         rejected.reason)  # not the common case: the tuple
    # states restored from Raft snapshots written before the ints (tuples), and before the tuples
    h.state.requests["r-tuple"] = ("applied", 3, 4, "", "")
    h.state.requests["r-old"] = ApplyResult("rejected", (), 7, 7, "Conflict", "stale offer", "r-old")
    old = h.commit([ev.RoleWeightSet("a", 4.0)], request_id="r-old")
    assert (old.outcome, old.first_seq, old.error_code, old.reason) == ("duplicate", 7, "Conflict", "stale offer")
    tup = h.commit([ev.RoleWeightSet("a", 4.0)], request_id="r-tuple")
    assert (tup.outcome, tup.first_seq, tup.last_seq, tup.ok) == ("duplicate", 3, 4, True)
    assert h.state.roles["a"].weight == 2.0
    assert pickle.loads(pickle.dumps(h.state)) == h.state


@pytest.mark.parametrize(("first", "last"), [(5, 5), (5, 9), (10, 9), (1, APPLIED_SPAN - 1), (1, APPLIED_SPAN)])
def test_a_remembered_applied_result_gives_back_its_seqs(first: int, last: int) -> None:
    """(10, 9): an entry that recorded no event; (1, APPLIED_SPAN): too many events for the int, a tuple."""
    result = ApplyResult("applied", (), first, last, "", "", "r")
    value = remembered(result)
    assert isinstance(value, int) is (last - first + 1 < APPLIED_SPAN)
    assert remembered_result(value, "r") == result


def test_a_completed_task_shares_its_values_with_other_records_and_keeps_them_equal() -> None:
    """Completed records hold equal ids, resources and commands as one object each (the soak's memory):
    the state, its fingerprint and its pickle round trip are unchanged."""
    h = Harness()
    aid, fid = h.agent(), h.framework()
    h.launched(fid, aid, task("t1"), task("t2"))
    before = {k: (t.info, t.last_status) for k, t in h.state.tasks.items()}
    for tid in ("t1", "t2"):
        h.status(tid, TaskState.TASK_FINISHED, uuid=f"end-{tid}")
        h.run(c.Acknowledge(fid, tid, f"end-{tid}"))
    one, two = (h.state.completed_tasks[TaskKey(fid, t)] for t in ("t1", "t2"))
    assert one.info.resources is two.info.resources and one.info.command is two.info.command
    assert one.info.framework_id is two.info.framework_id is one.last_status.framework_id  # type: ignore[union-attr]
    assert one.last_status.uuid is one.applied_uuids[-1]  # type: ignore[union-attr]
    assert {k: t.info for k, t in h.state.completed_tasks.items()} == {k: i for k, (i, _) in before.items()}
    assert check_invariants(h.state) == []
    assert pickle.loads(pickle.dumps(h.state)).fingerprint() == h.state.fingerprint()


def test_values_equal_but_of_another_type_or_repr_are_not_shared() -> None:
    from tessera.control_plane.core.state import _share

    assert _share((("cpus", ""), 1)) == (("cpus", ""), 1)
    shared = _share((("cpus", ""), 1.0))
    assert shared == (("cpus", ""), 1) and repr(shared) == "(('cpus', ''), 1.0)"  # equal, never merged


def test_a_state_keyed_by_bare_task_ids_is_upgraded_to_task_keys() -> None:
    """A Raft snapshot taken before task ids were scoped per framework holds tasks keyed by task id and
    agents listing bare ids; restoring it upgrades it to exactly the state the log now builds."""
    from collections import OrderedDict

    from tessera.control_plane.core.state import upgrade_task_keys

    h = Harness()
    aid, fid = h.agent(), h.framework()
    h.launched(fid, aid, task("t1"), task("t2", cpus=1))
    h.status("t1", TaskState.TASK_FINISHED, uuid="end1")
    h.run(c.Acknowledge(fid, "t1", "end1"))
    expected = h.state.fingerprint()
    old = h.copy()
    old.tasks = {k.task_id: t for k, t in old.tasks.items()}  # type: ignore[misc]
    old.completed_tasks = OrderedDict((k.task_id, t) for k, t in old.completed_tasks.items())  # type: ignore[misc]
    for agent in old.agents.values():
        agent.task_keys = {k.task_id for k in agent.task_keys}  # type: ignore[misc]
    assert old.fingerprint() != expected
    assert upgrade_task_keys(old) is old and old.fingerprint() == expected
    assert check_invariants(old) == []
    assert upgrade_task_keys(old).fingerprint() == expected  # a current state is left alone


def test_a_reregistration_recorded_with_bare_task_ids_still_replays() -> None:
    """Entries written before task ids were scoped per framework list the agent's tasks by bare id (no
    task_framework_ids); they name the one task of that id on the agent, as they did then."""
    h = Harness()
    aid, fid = h.agent(), h.framework()
    h.launched(fid, aid, task("t1"), task("t2", cpus=1))
    info = h.state.agents[aid].info
    legacy = ev.AgentReregistered(aid, info, ("t1", "t2"))
    assert h.commit([legacy]).outcome == "applied"
    missing = ev.AgentReregistered(aid, info, ("t1",))  # t2 live and not reported: launched after it
    result = h.commit([missing])
    assert result.outcome == "rejected" and "t2" in result.reason
    paired = ev.AgentReregistered(aid, info, ("t1", "t2"), (fid, fid))
    assert h.commit([paired]).outcome == "applied"
    other = ev.AgentReregistered(aid, info, ("t1", "t2"), ("framework-other", fid))  # not fid's t1
    assert h.commit([other]).outcome == "rejected"
    assert check_invariants(h.state) == []
