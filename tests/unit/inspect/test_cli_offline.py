"""`tessera state/timeline/events --db FILE` and `tessera events export`: offline, on a master's events.db."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from tessera.control_plane.eventlog import SqliteEventStore
from tessera.control_plane.eventlog.eventfile import EventFile
from tessera.control_plane.eventlog.replay import rebuild
from tessera.control_plane.eventlog.source import iter_records
from tessera.control_plane.eventlog.timepoints import format_time

from .cli import ok, one_line_error, tessera
from .workload import Leader

pytestmark = pytest.mark.timeout(120)


def ndjson(text: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ---- state ---------------------------------------------------------------------------------------------
def test_state_at_an_index_prints_the_rebuilt_state(db_history: tuple[Path, Leader]) -> None:
    db, leader = db_history
    index = sorted(leader.fingerprints)[len(leader.fingerprints) // 2]
    out = ok("state", "--db", str(db), "--at", str(index)).stdout
    assert out.splitlines()[0].startswith(f"state at index {index},")
    with EventFile(db) as source:
        state = rebuild(source, index).state
    assert f"agents {len(state.agents)}  frameworks {len(state.frameworks)}  tasks {len(state.tasks)}" in out
    for agent in state.agents.values():
        assert agent.info.hostname in out


def test_state_json_is_the_get_state_at_answer(db_history: tuple[Path, Leader]) -> None:
    db, leader = db_history
    data = json.loads(ok("state", "--db", str(db), "--at", "60", "--json").stdout)
    with EventFile(db) as source:
        state = rebuild(source, 60).state
    assert int(data["at"]["requested_index"]) == 60 and int(data["at"]["index"]) == state.seq
    assert {(t["task"]["framework_id"], t["task"]["task_id"]) for t in data["state"].get("tasks", [])} == \
        set(state.tasks)
    assert {r["role"] for r in data["state"].get("roles", [])} == set(state.roles)


def test_state_without_at_is_the_last_state_of_the_file(db_history: tuple[Path, Leader]) -> None:
    db, leader = db_history
    data = json.loads(ok("--json", "state", "--db", str(db)).stdout)
    assert int(data["at"]["index"]) == leader.live.seq


def test_state_at_a_time_uses_the_last_event_at_or_before_it(db_history: tuple[Path, Leader]) -> None:
    db, leader = db_history
    seq, when = sorted(leader.entry_times.items())[40]
    data = json.loads(ok("state", "--db", str(db), "--at", format_time(when + 0.0001), "--json").stdout)
    with EventFile(db) as source:
        expected = max(r.seq for r in iter_records(source) if r.time <= when + 0.0001)
    assert int(data["at"]["requested_index"]) == expected
    assert ok("state", "--db", str(db), "--at", f"@{when + 0.0001}", "--json").stdout == \
        ok("state", "--db", str(db), "--at", format_time(when + 0.0001), "--json").stdout
    del seq


def test_state_diff_prints_what_changed(db_history: tuple[Path, Leader]) -> None:
    db, _ = db_history
    out = ok("state", "--db", str(db), "--at", "120", "--diff", "20").stdout
    first = out.splitlines()[0]
    assert first.startswith("changes from index 20") and "to index 12" in first
    assert "+ task" in out and "~ agent" in out
    data = json.loads(ok("state", "--db", str(db), "--at", "120", "--diff", "20", "--json").stdout)
    kinds = {(c["kind"], c["change"]) for c in data["changes"]}
    assert ("task", "added") in kinds and ("agent", "changed") in kinds
    assert int(data["diff_from"]["index"]) >= 20


# ---- timeline ------------------------------------------------------------------------------------------
def test_timeline_of_a_task_lists_its_events_in_order_with_gaps(db_history: tuple[Path, Leader]) -> None:
    db, _ = db_history
    out = ok("timeline", "--db", str(db), "t1a").stdout.splitlines()
    framework_id = out[0].removeprefix("task ").removesuffix("/t1a")  # the bare id, resolved to its framework
    assert out[0] == f"task {framework_id}/t1a" and framework_id.startswith("framework-")
    seqs = [int(line.split()[0]) for line in out[1:]]
    assert seqs == sorted(seqs) and len(seqs) >= 6
    assert "TaskLaunched" in out[1] and "+" not in out[1].split("TaskLaunched")[0].split("Z", 1)[1]
    assert all("+" in line.split("Task")[0] for line in out[2:])
    items = ndjson(ok("timeline", "--db", str(db), "t1a", "--json").stdout)
    assert [i["seq"] for i in items] == seqs
    assert items[0]["gap_seconds"] is None
    assert all(abs(b["gap_seconds"] - (b["time"] - a["time"])) < 1e-9 for a, b in zip(items, items[1:], strict=False))


def test_timeline_detects_frameworks_and_agents(db_history: tuple[Path, Leader]) -> None:
    db, leader = db_history
    fid = next(iter(leader.live.frameworks))
    aid = next(iter(leader.live.agents))
    assert ok("timeline", "--db", str(db), fid).stdout.startswith(f"framework {fid}")
    assert ok("timeline", "--db", str(db), aid, "--kind", "agent").stdout.startswith(f"agent {aid}")


# ---- events --------------------------------------------------------------------------------------------
def test_events_lists_with_filters_limit_and_since(db_history: tuple[Path, Leader]) -> None:
    db, leader = db_history
    lines = ok("events", "--db", str(db), "--limit", "5").stdout.splitlines()
    assert [int(line.split()[0]) for line in lines] == [1, 2, 3, 4, 5]
    assert "LeaderElected" in lines[0] and "2023-11-14T22:13:20.000Z" in lines[0]
    rows = ndjson(ok("events", "--db", str(db), "--type", "TaskStatusUpdated", "--task", "t2b", "--json").stdout)
    assert rows and all(r["type"] == "TaskStatusUpdated" and r["task_id"] == "t2b" for r in rows)
    assert rows[0]["payload"]["status"]["task_id"] == "t2b" and rows[0]["at"].endswith("Z")
    since = ndjson(ok("events", "--db", str(db), "--since", "50", "--limit", "3", "--json").stdout)
    assert [r["seq"] for r in since] == [50, 51, 52]
    when = leader.entry_times[max(leader.entry_times)]
    late = ndjson(ok("events", "--db", str(db), "--since", format_time(when), "--json").stdout)
    assert late and all(r["time"] >= when - 0.001 for r in late)


def test_events_human_lines_show_ids_and_a_compact_payload(db_history: tuple[Path, Leader]) -> None:
    db, _ = db_history
    line = next(line for line in ok("events", "--db", str(db), "--limit", "1000").stdout.splitlines()
                if "TaskStatusUpdated" in line)
    assert "task=" in line and "status.state=TASK_" in line and '"' not in line.split("status.state")[0]


# ---- export --------------------------------------------------------------------------------------------
def test_export_writes_the_same_rows_in_a_file_sqlite_utils_opens(db_history: tuple[Path, Leader], tmp_path: Path) -> None:
    db, leader = db_history
    dest = tmp_path / "out.db"
    result = ok("events", "export", str(dest), "--db", str(db))
    assert f"exported {leader.live.seq} events" in result.stderr
    exported = sqlite_utils.Database(dest)
    assert {"events", "spans", "snapshots", "meta"} <= set(exported.table_names())
    original = sqlite_utils.Database(db)
    assert list(exported["events"].rows) == list(original["events"].rows)
    assert exported["events"].pks == ["seq"]
    # and every tessera command reads it like the master's file
    assert ok("state", "--db", str(dest), "--json").stdout == ok("state", "--db", str(db), "--json").stdout


def test_export_since_keeps_whole_entries_and_marks_the_rest_as_pruned(db_history: tuple[Path, Leader],
                                                                       tmp_path: Path) -> None:
    db, leader = db_history
    store = SqliteEventStore(db)  # leave snapshots in the source, as a master's snapshotter does
    rebuild(store, store.last_seq(), sink=store, every=25)
    assert store.flush()
    store.close()
    with EventFile(db) as source:
        mid = next(r for r in iter_records(source, from_seq=60) if r.position > 0)
    dest = tmp_path / "since.db"
    ok("events", "export", str(dest), "--db", str(db), "--since", str(mid.seq))
    start = mid.seq - mid.position
    rows = list(sqlite_utils.Database(dest)["events"].rows)
    assert rows[0]["seq"] == start and rows[-1]["seq"] == leader.live.seq
    with EventFile(dest) as exported:
        assert exported.first_seq() == start
        snap = exported.nearest_snapshot(leader.live.seq)
        assert snap is not None and snap[0] >= start - 1
        assert rebuild(exported, leader.live.seq).state.fingerprint() == leader.live.fingerprint()
    one_line_error(tessera("events", "--db", str(dest), "--since", "1"), "pruned", str(start))


def test_export_refuses_to_overwrite_without_force(db_history: tuple[Path, Leader], tmp_path: Path) -> None:
    db, _ = db_history
    dest = tmp_path / "x.db"
    dest.write_text("keep me")
    one_line_error(tessera("events", "export", str(dest), "--db", str(db)), "exists", "--force")
    assert dest.read_text() == "keep me"
    ok("events", "export", str(dest), "--db", str(db), "--force")
    assert sqlite_utils.Database(dest)["events"].count > 0


# ---- bad input: one line, non-zero, never a traceback ------------------------------------------------------
@pytest.fixture
def foreign_db(tmp_path: Path) -> Path:
    path = tmp_path / "foreign.db"
    sqlite_utils.Database(path)["things"].insert({"id": 1, "name": "x"})
    return path


@pytest.fixture
def wrong_events_db(tmp_path: Path) -> Path:
    path = tmp_path / "wrong.db"
    sqlite_utils.Database(path)["events"].insert({"seq": 1, "kind": "x"})
    return path


@pytest.fixture
def not_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not a database\n" * 100)
    return path


def test_bad_input_gives_one_line_and_a_non_zero_exit(db_history: tuple[Path, Leader], foreign_db: Path,
                                                     wrong_events_db: Path, not_sqlite: Path, tmp_path: Path) -> None:
    db, leader = db_history
    last = leader.live.seq
    cases = [
        (("timeline", "--db", str(db), "no-such-id"), ("no event names 'no-such-id'",)),
        (("timeline", "--db", str(db), "t1a", "--kind", "agent"), ("no event names agent 't1a'", "task")),
        (("state", "--db", str(db), "--at", str(last + 1)), (f"index {last + 1} is beyond the last event",)),
        (("state", "--db", str(db), "--at", "2999-01-01T00:00:00Z"), ("in the future",)),
        (("state", "--db", str(db), "--at", "2001-09-10T00:00:00Z"), ("no event at or before",)),
        (("state", "--db", str(db), "--at", "yesterday-ish"), ("--at", "expected an event index")),
        (("state", "--db", str(db), "--at", "5", "--diff", str(last + 7)), ("beyond",)),
        (("events", "--db", str(db), "--since", str(last + 10)), ("beyond the last event",)),
        (("events", "--db", str(db), "--since", "2999-01-01"), ("in the future",)),
        (("state", "--db", str(foreign_db), "--at", "1"), ("not a Tessera event log", "no events table")),
        (("events", "--db", str(wrong_events_db)), ("not a Tessera event log", "lacks")),
        (("timeline", "--db", str(not_sqlite), "x"), ("not a readable SQLite database",)),
        (("state", "--db", str(tmp_path / "missing.db"), "--at", "1"), ("no such file",)),
        (("events", "export", str(tmp_path / "e.db"), "--db", str(db), "--since", str(last + 1)), ("beyond",)),
    ]
    for args, needles in cases:
        one_line_error(tessera(*args), *needles)


def test_a_directory_or_unreadable_file_is_one_line(tmp_path: Path) -> None:
    one_line_error(tessera("events", "--db", str(tmp_path)), "not a file")
    locked = tmp_path / "locked.db"
    sqlite3.connect(locked).execute("create table t(x)").connection.close()
    locked.chmod(0)
    result = tessera("events", "--db", str(locked))
    locked.chmod(0o600)
    if result.exit_code != 0:  # root reads anything; others get one line
        one_line_error(result)


def test_follow_on_a_file_streams_what_a_master_appends(tmp_path: Path) -> None:
    import os
    import select
    import signal
    import subprocess
    import sys
    import time

    from tessera.control_plane.core import commands as c

    from .workload import Leader

    path = tmp_path / "events.db"
    store = SqliteEventStore(path)
    leader = Leader(store)
    leader.run(c.SetRoleWeight("first", 1.0))
    assert store.flush()
    proc = subprocess.Popen([sys.executable, "-m", "tessera.control_plane.cli.main", "events", "--db", str(path), "--follow",
                             "--type", "RoleWeightSet", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline, line = time.monotonic() + 30, ""
        while not line and time.monotonic() < deadline:
            leader.run(c.SetRoleWeight("later", 2.0))
            assert store.flush()
            if select.select([proc.stdout], [], [], 1.0)[0]:
                line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line and json.loads(line)["payload"]["role"] == "later"  # only new events, like the cluster
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        store.close()


def test_last_shows_the_most_recent_matching_events_in_order(db_history: tuple[Path, Leader]) -> None:
    db, leader = db_history
    rows = ndjson(ok("events", "--db", str(db), "--last", "4", "--json").stdout)
    assert [r["seq"] for r in rows] == list(range(leader.live.seq - 3, leader.live.seq + 1))
    acks = ndjson(ok("events", "--db", str(db), "--last", "2", "--type", "TaskStatusAcknowledged", "--json").stdout)
    assert len(acks) == 2 and acks[0]["seq"] < acks[1]["seq"]
    assert all(r["type"] == "TaskStatusAcknowledged" for r in acks)
    one_line_error(tessera("events", "--db", str(db), "--last", "2", "--since", "3"), "--last and --since")
