"""The history checker catches each violation it claims to: it is run on a correct hand-made history
(it passes) and on copies broken in one way each (it reports exactly that kind of violation)."""

from __future__ import annotations

import copy
import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest

from tessera.control_plane.core import commands as c
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.state import ClusterState
from tessera.control_plane.core.values import CommandInfo, TaskInfo, TaskState
from tessera.control_plane.eventlog import EventRecord, MemoryEventStore
from tessera.control_plane.eventlog.replay import entries_from_records, replay_records
from tessera.control_plane.eventlog.snapshots import encode_snapshot
from tests.faults.checker import AgentUpdate, History, check, read_agent_pruning
from tests.unit.inspect.workload import Leader


def _history() -> History:
    """One leader per term, an agent, a framework that launches two tasks (one finishes, one is killed),
    every update acknowledged, a second term; three masters, the third one a little behind."""
    store = MemoryEventStore()
    L = Leader(store)
    L.run(c.ElectLeader(term=1, master="m1", grpc_address="127.0.0.1:5050", name="m1"))
    aid = L.agent("host1")
    fid = L.framework("fw", ("web",))
    oid = L.offer(fid, aid)
    tasks = tuple(TaskInfo(task_id=t, name=t, resources=Resources.of(cpus=1, mem=64), command=CommandInfo(value="x"))
                  for t in ("t1", "t2"))
    L.run(c.Accept(fid, (oid,), (c.Operation("LAUNCH", tasks=tasks),)), request_id="req-launch")
    fw: list[dict[str, object]] = [
        {"kind": "subscribed", "framework_id": fid, "t": 1.0},
        {"kind": "call", "call": "launch", "ok": True, "request_id": "req-launch", "task_ids": ["t1", "t2"]},
    ]
    agent: list[AgentUpdate] = []
    for task_id, states in (("t1", (TaskState.TASK_RUNNING, TaskState.TASK_FINISHED)),
                            ("t2", (TaskState.TASK_RUNNING, TaskState.TASK_KILLED))):
        for state in states:
            if state is TaskState.TASK_KILLED:
                L.run(c.Kill(fid, task_id), request_id="req-kill")
                fw.append({"kind": "call", "call": "kill", "ok": True, "request_id": "req-kill",
                           "task_ids": [task_id]})
            uuid = L.status(task_id, state)
            agent.append(AgentUpdate(len(agent) + 1, task_id, uuid, state.name))
            fw.append({"kind": "update", "task_id": task_id, "state": state.name, "uuid": uuid})
            L.ack(task_id, uuid)
            fw.append({"kind": "call", "call": "acknowledge", "ok": True, "request_id": "", "uuid": uuid,
                       "task_ids": [task_id]})
    L.term = 2
    L.run(c.ElectLeader(term=2, master="m2", grpc_address="127.0.0.1:5051", name="m2"))
    L.run(c.Teardown(fid), request_id="req-teardown")
    fw.append({"kind": "call", "call": "teardown", "ok": True, "request_id": "req-teardown"})
    assert store.flush()
    records = store.list(1, 10_000)
    store.close()
    return History(masters={"m1": list(records), "m2": list(records), "m3": list(records[:-3])},
                   frameworks={"fw": fw}, agents={"a1": agent}, agent_ids={"a1": aid}, agent_rows_gone={"a1": 0})


def _kinds(history: History) -> set[str]:
    return {v.split("]")[0].lstrip("[") for v in check(history).violations}


@pytest.fixture(scope="module")
def good() -> History:
    return _history()


def test_a_correct_history_passes(good: History) -> None:
    report = check(good)
    assert report.ok, report.violations
    assert report.stats["tasks_launched"] == 2 and report.stats["acknowledged_calls"] == 7


def _at(records: list[EventRecord], type_: str, nth: int = 0) -> int:
    return [i for i, r in enumerate(records) if r.type == type_][nth]


def test_a_divergent_log_is_caught(good: History) -> None:
    bad = copy.deepcopy(good)
    m3 = bad.masters["m3"]
    i = _at(m3, "TaskStatusUpdated")
    m3[i] = dataclasses.replace(m3[i], payload=m3[i].payload.replace("TASK_RUNNING", "TASK_FAILED"))
    assert _kinds(bad) == {"logs"}


def test_a_hole_in_a_log_is_caught(good: History) -> None:
    bad = copy.deepcopy(good)
    del bad.masters["m3"][5]
    assert _kinds(bad) == {"logs"}


def test_two_leaders_in_one_term_are_caught(good: History) -> None:
    bad = copy.deepcopy(good)
    for name in bad.masters:  # every master agrees on the log, which names two leaders for term 2
        records = bad.masters[name]
        for i, r in enumerate(records):
            if r.type == "LeaderElected" and json.loads(r.payload)["term"] == 1:
                payload = json.loads(r.payload)
                payload.update(term=2)
                records[i] = dataclasses.replace(r, payload=json.dumps(payload))
    assert "leaders" in _kinds(bad)
    assert any("term 2 has 2 leaders" in v for v in check(bad).violations)


def test_a_missing_acknowledged_launch_is_caught(good: History) -> None:
    bad = copy.deepcopy(good)
    bad.frameworks["fw"].append({"kind": "call", "call": "launch", "ok": True, "request_id": "req-lost",
                                 "task_ids": ["t9"]})
    assert _kinds(bad) == {"acknowledged"}


def test_a_missing_acknowledged_acknowledgement_is_caught(good: History) -> None:
    bad = copy.deepcopy(good)
    bad.frameworks["fw"].append({"kind": "call", "call": "acknowledge", "ok": True, "request_id": "r",
                                 "uuid": "uuid-never", "task_ids": ["t1"]})
    assert _kinds(bad) == {"acknowledged"}


def test_a_failed_call_is_not_required_to_be_in_the_log(good: History) -> None:
    ok = copy.deepcopy(good)
    ok.frameworks["fw"].append({"kind": "call", "call": "launch", "ok": False, "request_id": "req-failed",
                                "task_ids": ["t9"]})
    assert check(ok).ok


def test_a_duplicate_status_update_is_caught(good: History) -> None:
    bad = copy.deepcopy(good)
    for name in ("m1", "m2"):
        records = bad.masters[name]
        dup = records[_at(records, "TaskStatusUpdated")]
        last = records[-1]
        records.append(dataclasses.replace(dup, seq=last.seq + 1, raft_index=last.raft_index + 1, position=0,
                                           request_id="req-dup", time=last.time))
    kinds = _kinds(bad)
    assert "updates" in kinds
    assert any("recorded 2 times" in v for v in check(bad).violations)


def test_an_update_never_delivered_to_its_framework_is_caught(good: History) -> None:
    bad = copy.deepcopy(good)
    first = next(r for r in bad.frameworks["fw"] if r["kind"] == "update")
    bad.frameworks["fw"].remove(first)
    assert _kinds(bad) == {"updates"}


def test_an_agent_update_the_master_never_recorded_is_caught(good: History) -> None:
    bad = copy.deepcopy(good)
    bad.agents["a1"].append(AgentUpdate(99, "t1", "uuid-unrecorded", "TASK_FINISHED"))
    assert _kinds(bad) == {"updates"}


def test_a_final_state_the_agent_did_not_see_is_caught(good: History) -> None:
    bad = copy.deepcopy(good)
    bad.agents["a1"] = [dataclasses.replace(u, state="TASK_FAILED") if u.state == "TASK_FINISHED" else u
                        for u in bad.agents["a1"]]
    assert _kinds(bad) == {"tasks"}


def _t1_pruned(good: History, rows_gone: int) -> History:
    """`good` with t1's records gone from a1's checkpoint (an agent prunes its oldest done tasks), and
    `rows_gone` update rows counted as gone there."""
    h = copy.deepcopy(good)
    h.agents["a1"] = [u for u in h.agents["a1"] if u.task_id != "t1"]
    h.agent_rows_gone["a1"] = rows_gone
    return h


def test_a_finished_task_its_agent_pruned_passes_within_the_rows_its_checkpoint_lost(good: History) -> None:
    report = check(_t1_pruned(good, rows_gone=2))
    assert report.ok, report.violations
    assert report.stats["tasks_pruned_by_their_agent"] == 1


def test_a_finished_task_no_agent_ran_is_caught_when_its_agent_lost_no_rows(good: History) -> None:
    assert _kinds(_t1_pruned(good, rows_gone=0)) == {"tasks"}
    other = _t1_pruned(good, rows_gone=2)
    other.agent_ids["a1"] = "agent-of-another-task"  # rows gone on an agent the task was not launched to
    assert _kinds(other) == {"tasks"}


def test_an_agent_db_says_how_many_update_rows_it_no_longer_holds(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('agent_id', 'agent-1')")
    conn.execute("CREATE TABLE updates (seq INTEGER PRIMARY KEY, task_id TEXT, uuid TEXT, state INTEGER)")
    conn.executemany("INSERT INTO updates VALUES (?, ?, ?, 1)", [(i, f"t{i}", f"u{i}") for i in range(1, 11)])
    conn.execute("DELETE FROM updates WHERE seq IN (1, 2, 5)")
    conn.commit()
    conn.close()
    assert read_agent_pruning(db) == ("agent-1", 3)


def test_a_resource_offered_twice_is_caught(good: History) -> None:
    bad = copy.deepcopy(good)
    for name in bad.masters:
        records = bad.masters[name]
        i = _at(records, "OfferIssued")
        # the same offer id issued again right after: a second grant of the same resources
        again = dataclasses.replace(records[i], seq=records[i].seq + 1, raft_index=records[i].raft_index,
                                    position=1)
        shifted = [dataclasses.replace(r, seq=r.seq + 1) for r in records[i + 1:]]
        records[i + 1:] = [again, *shifted]
    kinds = _kinds(bad)
    assert "twice" in kinds and "replay" in kinds


def _boundaries(records: list[EventRecord]) -> list[int]:
    return [e.last_seq for e in entries_from_records(records)]


def _state_after(records: list[EventRecord], seq: int) -> bytes:
    return encode_snapshot(replay_records(ClusterState(), [r for r in records if r.seq <= seq]))


def test_a_hole_ending_at_an_installed_state_that_matches_the_log_passes(good: History) -> None:
    ok = copy.deepcopy(good)
    records = ok.masters["m3"]
    first, end = records[3].seq, _boundaries(records)[6]
    ok.masters["m3"] = [r for r in records if not first <= r.seq <= end]
    ok.snapshots["m3"] = {end: _state_after(records, end)}
    report = check(ok)
    assert report.ok, report.violations
    assert report.stats["holes_covered_by_installed_snapshots"] == 1


def test_a_master_with_fewer_events_may_hold_the_last_commits_the_longest_log_lacks(good: History) -> None:
    """The hour-long soak's shape: m3 installed a snapshot (fewer rows) and holds the last entry, which
    m1 and m2, stopped first, never received."""
    ok = copy.deepcopy(good)
    full = ok.masters["m1"]
    first, end = full[3].seq, _boundaries(full)[6]
    ok.masters["m3"] = [r for r in full if not first <= r.seq <= end]
    ok.snapshots["m3"] = {end: _state_after(full, end)}
    last = _boundaries(full)[-2]
    ok.masters["m1"] = ok.masters["m2"] = [r for r in full if r.seq <= last]
    assert len(ok.masters["m1"]) > len(ok.masters["m3"]) and ok.masters["m3"][-1].seq > last
    report = check(ok)
    assert report.ok, report.violations
    assert report.stats["events"] == len(full)


def test_two_masters_that_differ_past_the_longest_logs_end_are_caught(good: History) -> None:
    bad = copy.deepcopy(good)
    full = bad.masters["m1"]
    first, end = full[3].seq, _boundaries(full)[6]
    bad.masters["m1"] = [r for r in full if r.seq <= _boundaries(full)[-2]]
    holed = [r for r in full if not first <= r.seq <= end]
    bad.masters["m2"] = holed
    bad.masters["m3"] = holed[:-1] + [dataclasses.replace(holed[-1], term=holed[-1].term + 7)]
    bad.snapshots["m2"] = bad.snapshots["m3"] = {end: _state_after(full, end)}
    assert len(bad.masters["m1"]) > len(holed)
    assert _kinds(bad) == {"logs"}


def test_an_installed_state_that_differs_from_the_log_is_caught(good: History) -> None:
    bad = copy.deepcopy(good)
    records = bad.masters["m3"]
    bounds = _boundaries(records)
    first, end = records[3].seq, bounds[6]
    bad.masters["m3"] = [r for r in records if not first <= r.seq <= end]
    bad.snapshots["m3"] = {end: _state_after(records, bounds[5])}  # an older state under the later seq
    assert _kinds(bad) == {"logs"}


def _master_ended(agent_state: str) -> History:
    """A task marked TASK_LOST by the master (its agent unreachable); the agent, back, ends it as
    `agent_state` (an update the master acknowledges without recording: its own decision stands)."""
    store = MemoryEventStore()
    L = Leader(store)
    L.run(c.ElectLeader(term=1, master="m1", grpc_address="127.0.0.1:5050", name="m1"))
    aid = L.agent("host1")
    fid = L.framework("fw", ("web",))
    oid = L.offer(fid, aid)
    task = TaskInfo(task_id="t1", name="t1", resources=Resources.of(cpus=1, mem=64), command=CommandInfo(value="x"))
    L.run(c.Accept(fid, (oid,), (c.Operation("LAUNCH", tasks=(task,)),)), request_id="req-launch")
    running = L.status("t1", TaskState.TASK_RUNNING)
    L.ack("t1", running)
    result = L.run(c.MarkAgentUnreachable(aid, "no heartbeat"))
    lost = next(e for _, e in result.events if type(e).__name__ == "TaskStatusUpdated")
    L.ack("t1", lost.status.uuid)
    L.run(c.ReregisterAgent(aid, L.live.agents[aid].info))
    assert store.flush()
    records = list(store.list(1, 10_000))
    store.close()
    fw = [{"kind": "subscribed", "framework_id": fid},
          {"kind": "call", "call": "launch", "ok": True, "request_id": "req-launch", "task_ids": ["t1"]},
          {"kind": "update", "task_id": "t1", "state": "TASK_RUNNING", "uuid": running},
          {"kind": "update", "task_id": "t1", "state": lost.status.state.name, "uuid": lost.status.uuid}]
    agent = [AgentUpdate(1, "t1", running, "TASK_RUNNING"), AgentUpdate(2, "t1", "uuid-late", agent_state)]
    return History(masters={"m1": records, "m2": records}, frameworks={"fw": fw}, agents={"a1": agent})


def test_a_task_the_master_ended_and_the_agent_killed_later_passes() -> None:
    report = check(_master_ended("TASK_KILLED"))
    assert report.ok, report.violations
    assert report.stats["tasks_ended_by_master_then_on_agent"] == 1


def test_a_task_the_master_ended_that_still_runs_on_its_agent_is_caught() -> None:
    assert _kinds(_master_ended("TASK_RUNNING")) == {"tasks"}
