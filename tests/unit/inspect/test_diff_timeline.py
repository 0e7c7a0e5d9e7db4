"""What `--diff` reports between two states, and what a timeline holds."""

from __future__ import annotations

from tessera.control_plane.core import commands as c
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import TaskState
from tessera.control_plane.eventlog import MemoryEventStore
from tessera.control_plane.eventlog.diff import Change, StateDiff, diff_states
from tessera.control_plane.eventlog.replay import rebuild
from tessera.control_plane.eventlog.source import iter_records
from tessera.control_plane.eventlog.timeline import detect_kinds, kind_filter, timeline

from .workload import Leader


def changes(diff: StateDiff, kind: str) -> dict[str, Change]:
    return {ch.id: ch for ch in diff.changes if ch.kind == kind}


def fields(change: Change) -> dict[str, tuple[str, str]]:
    return {f.field: (f.before, f.after) for f in change.fields}


def build() -> tuple[MemoryEventStore, Leader, dict[str, int]]:
    store = MemoryEventStore()
    L = Leader(store)
    marks: dict[str, int] = {}
    L.run(c.ElectLeader(term=1, master="m1", name="m1"))
    L.run(c.SetRoleWeight("web", 2.0))
    a1 = L.agent("host1")
    web = L.framework("web")
    L.launch(web, a1, "t1", "t2")
    u1 = L.status("t1", TaskState.TASK_RUNNING)
    L.ack("t1", u1)
    marks["before"] = L.live.seq
    L.tick(5)
    a2 = L.agent("host2")
    L.run(c.SetRoleWeight("web", 3.0))
    L.run(c.SetQuota("batch", guarantee=Resources.parse("cpus:1")))
    done = L.status("t1", TaskState.TASK_FINISHED, "ok", exit_code=0)
    L.ack("t1", done)  # t1 is completed: it leaves the live tasks
    L.tick(2)
    L.status("t2", TaskState.TASK_FAILED, "boom", exit_code=1)
    L.offer(web, a2)
    marks["after"] = L.live.seq
    L.store.flush()
    return store, L, marks


def test_diff_reports_added_changed_and_completed_things() -> None:
    store, L, marks = build()
    before = rebuild(store, marks["before"]).state
    after = rebuild(store, marks["after"]).state
    diff = diff_states(before, after)
    assert (diff.from_index, diff.to_index) == (marks["before"], marks["after"])
    agents = changes(diff, "agent")
    added = [a for a in agents.values() if a.change == "added"]
    assert len(added) == 1 and fields(added[0])["hostname"] == ("", "host2")
    # keyed FRAMEWORK_ID/TASK_ID (task ids are scoped per framework); this history's ids are unique
    tasks = {key.split("/", 1)[1]: change for key, change in changes(diff, "task").items()}
    assert fields(tasks["t1"])["state"] == ("RUNNING", "FINISHED")
    assert fields(tasks["t1"])["completed"] == ("no", "yes")
    assert tasks["t1"].change == "changed"
    assert fields(tasks["t2"])["state"] == ("STAGING", "FAILED")
    roles = changes(diff, "role")
    assert fields(roles["web"])["weight"] == ("2", "3")
    assert roles["batch"].change == "added" and fields(roles["batch"])["guarantee"] == ("", "cpus:1")
    offers = changes(diff, "offer")
    assert [o.change for o in offers.values()] == ["added"]
    assert diff.count("agent", "added") == 1


def test_diff_of_a_state_with_itself_is_empty_and_reversed_diffs_mirror() -> None:
    store, _, marks = build()
    a = rebuild(store, marks["before"]).state
    b = rebuild(store, marks["after"]).state
    assert diff_states(a, a).changes == ()
    forward, backward = diff_states(a, b), diff_states(b, a)
    assert {(ch.kind, ch.id) for ch in forward.changes} == {(ch.kind, ch.id) for ch in backward.changes}
    flip = {"added": "removed", "removed": "added", "changed": "changed"}
    assert sorted((ch.kind, ch.id, flip[ch.change]) for ch in forward.changes) == \
        sorted((ch.kind, ch.id, ch.change) for ch in backward.changes)


def test_timeline_is_in_order_with_gaps_between_events() -> None:
    store, _, _ = build()
    items = list(timeline(iter_records(store, kind_filter("task", "t1"))))
    seqs = [i.record.seq for i in items]
    assert seqs == sorted(seqs) and len(seqs) >= 5
    assert items[0].gap is None and items[0].since_start == 0
    for prev, cur in zip(items, items[1:], strict=False):
        assert cur.gap == cur.record.time - prev.record.time
        assert cur.since_start == cur.record.time - items[0].record.time
    assert [i.record.type for i in items][:1] == ["TaskLaunched"]
    assert any(i.gap == 5.0 for i in items)


def test_the_kind_of_an_id_is_detected() -> None:
    store, L, _ = build()
    web = next(iter(L.live.frameworks))
    agent = next(iter(L.live.agents))
    assert detect_kinds(store, "t1") == ["task"]
    assert detect_kinds(store, web) == ["framework"]
    assert detect_kinds(store, agent) == ["agent"]
    assert detect_kinds(store, "nobody") == []
