"""The replay property: the state rebuilt from the event log equals the state the master held.

The history goes through the real path (decide -> LogEntry bytes -> MasterStateMachine.apply_entries ->
EventRecords in the store), and the comparison is `ClusterState.fingerprint()` at every entry boundary.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tessera.control_plane.core import commands as c
from tessera.control_plane.core import events as ev
from tessera.control_plane.core.state import ClusterState
from tessera.control_plane.eventlog import EventRecord, MemoryEventStore, SqliteEventStore
from tessera.control_plane.eventlog.decode import event_from_record
from tessera.control_plane.eventlog.errors import HistoryUnavailable, ReplayError
from tessera.control_plane.eventlog.eventfile import EventFile
from tessera.control_plane.eventlog.records import EventFilter
from tessera.control_plane.eventlog.replay import entries_from_records, rebuild, replay_records

from .workload import Leader, random_history, realistic_history


def test_rebuilt_state_equals_live_state_at_every_entry_boundary(memory_history: tuple[MemoryEventStore, Leader]) -> None:
    store, leader = memory_history
    assert len(leader.fingerprints) > 100
    for seq, fingerprint in leader.fingerprints.items():
        assert rebuild(store, seq, every=0).state.fingerprint() == fingerprint, f"diverged at {seq}"


def test_rebuilt_state_from_an_sqlite_log_equals_the_final_live_state(db_history: tuple[Path, Leader]) -> None:
    path, leader = db_history
    with EventFile(path) as source:
        rebuilt = rebuild(source, source.last_seq(), every=0)
    assert rebuilt.state.fingerprint() == leader.live.fingerprint()
    assert rebuilt.index == leader.live.seq


@pytest.mark.parametrize("seed", range(12))
def test_random_histories_with_late_and_retried_decisions_replay_exactly(seed: int) -> None:
    store = MemoryEventStore()
    leader = random_history(store, seed)
    assert store.flush()
    for seq, fingerprint in leader.fingerprints.items():
        assert rebuild(store, seq, every=0).state.fingerprint() == fingerprint, f"seed {seed}: diverged at {seq}"
    store.close()


def test_entries_that_recorded_nothing_are_the_only_difference() -> None:
    # a late decision whose every event became a no-op in flight is applied but records nothing: its
    # request id is remembered by the live state and cannot be rebuilt from the log
    store = MemoryEventStore()
    leader = realistic_history(store, rounds=1)
    aid = next(iter(leader.live.agents))
    fid = next(iter(leader.live.frameworks))
    oid = leader.offer(fid, aid)
    stale_rescind = leader.decide(c.RescindOffer(oid))
    leader.run(c.RescindOffer(oid))
    result = leader.commit_events(stale_rescind, "late-rescind")
    assert result.outcome == "applied" and not result.events
    assert store.flush()
    rebuilt = rebuild(store, store.last_seq(), every=0).state
    assert rebuilt.fingerprint() != leader.live.fingerprint()
    assert rebuilt.fingerprint() == leader.comparable_fingerprint()
    assert "late-rescind" in leader.live.requests and "late-rescind" not in rebuilt.requests


def test_an_index_inside_an_entry_gives_the_state_after_the_whole_entry(
        memory_history: tuple[MemoryEventStore, Leader]) -> None:
    store, leader = memory_history
    # an accept records OfferAccepted (position 0) and TaskLaunched (position 1) in one entry
    launched = store.list(flt=EventFilter(types=("TaskLaunched",)), limit=1)[0]
    accepted_seq = launched.seq - launched.position
    rebuilt = rebuild(store, accepted_seq, every=0)
    assert rebuilt.requested == accepted_seq
    assert rebuilt.index >= launched.seq
    assert (launched.framework_id, launched.task_id) in rebuilt.state.tasks
    assert rebuilt.state.fingerprint() == leader.fingerprints[rebuilt.index]


def test_a_rejected_entry_replays_as_a_rejection_with_its_request_remembered(
        memory_history: tuple[MemoryEventStore, Leader]) -> None:
    store, leader = memory_history
    rejected = store.list(flt=EventFilter(types=("Rejected",)), limit=1)[0]
    rebuilt = rebuild(store, rejected.seq, every=0).state
    remembered = rebuilt.requests[rejected.request_id]
    answer = rebuilt.result_for_request(rejected.request_id)
    assert answer is not None and answer.outcome == "rejected"
    assert answer.error_code == json.loads(rejected.payload)["code"]
    assert remembered == leader.live.requests.get(rejected.request_id, remembered)


def test_group_committed_entries_share_a_raft_index_and_replay_one_by_one(
        memory_history: tuple[MemoryEventStore, Leader]) -> None:
    store, _ = memory_history
    records = [r for r in store.list(limit=10_000) if r.type == "RoleWeightSet" and r.request_id.startswith("w0-")]
    assert len(records) == 3 and len({r.raft_index for r in records}) == 1
    entries = list(entries_from_records(records))
    assert [e.request_id for e in entries] == ["w0-0", "w0-1", "w0-2"]


def test_payloads_decode_back_to_the_events_that_were_applied(memory_history: tuple[MemoryEventStore, Leader]) -> None:
    from tessera.control_plane.codec import to_jsonable

    store, _ = memory_history
    for r in store.list(limit=10_000):
        event = event_from_record(r)
        assert type(event).__name__ == r.type
        assert to_jsonable(event) == json.loads(r.payload)


def test_an_unknown_event_type_is_named_in_one_sentence() -> None:
    record = EventRecord(1, 1, 0, "FromTheFuture", 1.0, 1, "", "", "", "", "", "", "", "{}")
    with pytest.raises(ReplayError, match="FromTheFuture.*unknown to this version"):
        replay_records(ClusterState(), [record])


def test_a_corrupt_payload_is_a_replay_error(memory_history: tuple[MemoryEventStore, Leader]) -> None:
    store, _ = memory_history
    records = store.list(limit=10)
    broken = [replace(r, payload='{"term": "not a number"}') if r.type == "LeaderElected" else r for r in records]
    with pytest.raises(ReplayError, match="does not decode"):
        replay_records(ClusterState(), broken)


def test_a_log_that_does_not_match_what_was_applied_is_reported(memory_history: tuple[MemoryEventStore, Leader]) -> None:
    store, _ = memory_history
    records = store.list(limit=40)
    # drop an AgentRegistered: later events about that agent no longer apply
    i = next(i for i, r in enumerate(records) if r.type == "AgentRegistered")
    shifted = [replace(r, seq=r.seq - 1) if k > i else r for k, r in enumerate(records) if k != i]
    with pytest.raises(ReplayError, match="does not match|does not follow"):
        replay_records(ClusterState(), shifted)


def test_a_hole_in_the_log_is_reported_with_the_missing_range(tmp_path: Path) -> None:
    source = MemoryEventStore()
    leader = realistic_history(source, rounds=1)
    assert source.flush()
    holed = SqliteEventStore(tmp_path / "holed.db")
    holed.append([r for r in source.list(limit=10_000) if not 20 <= r.seq <= 25])
    assert holed.flush()
    with pytest.raises(HistoryUnavailable, match="events 20..25 are missing"):
        rebuild(holed, leader.live.seq, every=0)
    assert rebuild(holed, 10, every=0).state.fingerprint() == leader.fingerprints[rebuild(holed, 10, every=0).index]
    holed.close()
    source.close()


def test_framework_state_and_lease_moves_replay_exactly() -> None:
    """Key/value writes (a put's version is its event's seq), a write rejected in flight by a competing one,
    a lease move that makes an in-flight write Deposed, group-committed entries and the framework's removal
    rebuild to the live state at every entry boundary."""
    store = MemoryEventStore()
    leader = Leader(store)
    fid = leader.framework("svc")
    sid = leader.live.frameworks[fid].stream_id
    put = leader.run(c.WriteFrameworkState(fid, (c.StateWrite("apps/web", "ü" * 300, expected_version=0),
                                                 c.StateWrite("apps/db", "db")), stream_id=sid))
    first, second = (leader.decide(c.WriteFrameworkState(fid, (c.StateWrite("apps/web", text,
                                                                            expected_version=put.first_seq),),
                                                         stream_id=sid)) for text in ("a", "b"))
    # group-committed in one Raft call: the second was decided against the version the first replaces
    results = leader.commit_batch([ev.Entry(1, "m1", leader.now, "race-a", "", first),
                                   ev.Entry(1, "m1", leader.now, "race-b", "", second)])
    assert results[0].ok and results[1].error_code == "VersionConflict"
    in_flight = leader.decide(c.WriteFrameworkState(fid, (c.StateWrite("apps/db", delete=True),), stream_id=sid))
    leader.run(c.SubscribeFramework(replace(leader.live.frameworks[fid].info)))  # the lease moves: term 2
    assert leader.commit_events(in_flight).error_code == "Deposed"
    sid = leader.live.frameworks[fid].stream_id
    leader.run(c.WriteFrameworkState(fid, (c.StateWrite("apps/db", delete=True), c.StateWrite("new", "n")),
                                     stream_id=sid))
    leader.run(c.RemoveFramework(fid))
    assert store.flush()
    for seq, fingerprint in leader.fingerprints.items():
        assert rebuild(store, seq, every=0).state.fingerprint() == fingerprint, f"diverged at {seq}"
    store.close()

