"""What only the SQLite store promises: durability across reopen, a file other tools can read, schema
migrations, and how the writer copes with errors (retry what may pass, isolate and drop what cannot)."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlite_utils

from tessera.control_plane.eventlog import (
    DATASETTE_METADATA,
    EventFilter,
    EventRecord,
    HistoryPruned,
    SpanRecord,
    SqliteEventStore,
)
from tessera.control_plane.eventlog.queued import Batch

EventFactory = Callable[..., EventRecord]
SpanFactory = Callable[..., SpanRecord]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "events.db"


def test_everything_survives_close_and_reopen(
    db_path: Path, make_event: EventFactory, make_span: SpanFactory
) -> None:
    # spans from after the kept history's start (pruning takes the spans that ended before it)
    later = 1_800_000_000.0
    spans = [make_span("a" * 32, "1" * 16, later + 1, task_id="task-1"), make_span("a" * 32, "2" * 16, later + 2)]
    with SqliteEventStore(db_path) as store:
        store.append([make_event(s) for s in range(1, 101)])
        store.append([make_event(s) for s in range(120, 131)])
        store.put_snapshot(100, b"\x00state\xff")
        store.append_spans(spans)
        assert store.prune(11) == 10
        # no flush: close() must have written everything
    with SqliteEventStore(db_path) as store:
        assert store.first_seq() == 11
        assert store.last_seq() == 130
        assert store.count() == 101
        assert store.list(from_seq=11, limit=1000) == [
            make_event(s) for s in [*range(11, 101), *range(120, 131)]
        ]
        assert store.gaps() == [(101, 119)]
        assert store.nearest_snapshot(125) == (100, b"\x00state\xff")
        assert store.spans_for_trace("a" * 32) == spans
        with pytest.raises(HistoryPruned) as caught:
            store.list(from_seq=5)
        assert caught.value.first_kept == 11
        # A restart replays the Raft log: nothing changes, nothing pruned comes back.
        store.append([make_event(s, payload="{}") for s in range(1, 131)])
        assert store.flush(5.0)
        assert store.count() == 120
        assert store.get(5) is None
        assert store.get(50) == make_event(50)


def test_pruning_past_the_end_survives_reopen(db_path: Path, make_event: EventFactory) -> None:
    with SqliteEventStore(db_path) as store:
        store.append([make_event(s) for s in range(1, 6)])
        store.prune(501)
    with SqliteEventStore(db_path) as store:
        assert (store.first_seq(), store.last_seq(), store.count()) == (501, 500, 0)


def test_the_file_opens_with_plain_sqlite_utils(db_path: Path, make_event: EventFactory) -> None:
    store = SqliteEventStore(db_path)
    try:
        store.append([make_event(s) for s in range(1, 61)])
        assert store.flush(5.0)
        # While the master is running (WAL lets another connection read alongside the writer).
        live = sqlite_utils.Database(db_path)
        rows = list(live["events"].rows_where("task_id = ?", ["task-1"], order_by="seq"))
        assert [r["seq"] for r in rows] == [s for s in range(1, 61) if make_event(s).task_id == "task-1"]
        assert rows[0] == {column: getattr(make_event(rows[0]["seq"]), column) for column in rows[0]}
        live.close()
    finally:
        store.close()

    db = sqlite_utils.Database(db_path)
    assert db.journal_mode == "wal"
    events = db["events"]
    assert isinstance(events, sqlite_utils.db.Table)
    assert events.pks == ["seq"]
    assert events.count == 60
    assert events.columns_dict["time"] is float
    indexed = {tuple(index.columns) for index in events.indexes}
    assert {
        ("type", "seq"),
        ("framework_id", "seq"),
        ("agent_id", "seq"),
        ("task_id", "seq"),
        ("offer_id", "seq"),
        ("time",),
        ("raft_index",),
    } <= indexed
    spans = db["spans"]
    assert isinstance(spans, sqlite_utils.db.Table)
    assert {"trace_id", "task_id"} <= {index.columns[0] for index in spans.indexes}
    assert set(db.table_names()) >= {"events", "spans", "snapshots", "meta"}
    db.close()


def test_schema_migrations_are_applied_once(db_path: Path) -> None:
    for _ in range(3):
        SqliteEventStore(db_path).close()
    db = sqlite_utils.Database(db_path)
    applied = list(db["_sqlite_migrations"].rows_where("migration_set = ?", ["tessera-eventlog"]))
    assert [row["name"] for row in applied] == ["m001_initial", "m002_partial_id_indexes",
                                                  "m003_trace_and_span_age_indexes"]
    db.close()


def test_id_filters_use_the_partial_indexes_and_rows_without_the_id_are_not_indexed(
    db_path: Path, make_event: EventFactory
) -> None:
    from tessera.control_plane.eventlog.records import EventFilter
    from tessera.control_plane.eventlog.sqlite import _SELECT_EVENTS, _filter_sql

    with SqliteEventStore(db_path) as store:
        store.append([make_event(s) for s in range(1, 61)])
        assert store.flush(5.0)
        with_task = [e.seq for e in store.list(limit=100, flt=EventFilter(task_id="task-1"))]
        assert with_task == [s for s in range(1, 61) if make_event(s).task_id == "task-1"]
    conn = sqlite3.connect(db_path)
    try:
        for column in ("framework_id", "agent_id", "task_id", "offer_id"):
            clauses, params = _filter_sql(EventFilter(**{column: "x"}))
            plan = " ".join(str(row[-1]) for row in conn.execute(
                f"EXPLAIN QUERY PLAN {_SELECT_EVENTS} WHERE seq >= ? AND {' AND '.join(clauses)} ORDER BY seq",
                [1, *params]))
            assert f"idx_events_{column}_seq" in plan, plan
            (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (f"idx_events_{column}_seq",)).fetchone()
            assert sql.endswith(f"WHERE {column} != ''")
    finally:
        conn.close()


def test_readers_are_not_blocked_by_a_writer_holding_the_lock(
    db_path: Path, make_event: EventFactory
) -> None:
    with SqliteEventStore(db_path) as store:
        store.append([make_event(s) for s in range(1, 11)])
        assert store.flush(5.0)
        other = sqlite3.connect(db_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock ...
        try:
            assert len(store.list(limit=100)) == 10  # ... reads still answer
            store.append([make_event(11)])
            assert not store.flush(0.2)  # the write waits for the lock
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert store.flush(10.0)  # and goes through once it is free
        assert store.last_seq() == 11


def _busy_error(path: Path) -> sqlite3.OperationalError:
    """A genuine "database is locked" error, as SQLite raises it."""
    holder = sqlite3.connect(path, timeout=0, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    contender = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        contender.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        return exc
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        contender.close()
    raise AssertionError("expected the database to be locked")


def test_transient_errors_are_retried_until_they_pass(
    db_path: Path, make_event: EventFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteEventStore(db_path)
    try:
        busy = _busy_error(db_path)
        real_write = store._write
        failures = [busy, busy]

        def flaky_write(batch: Batch) -> None:
            if failures:
                raise failures.pop()
            real_write(batch)

        monkeypatch.setattr(store, "_write", flaky_write)
        store.append([make_event(s) for s in range(1, 6)])
        assert store.flush(10.0)
        assert failures == []
        assert store.last_error is busy
        assert store.dropped_records == 0
        assert [r.seq for r in store.list()] == [1, 2, 3, 4, 5]
    finally:
        store.close()


def test_close_gives_up_on_a_write_that_keeps_failing(
    db_path: Path,
    make_event: EventFactory,
    monkeypatch: pytest.MonkeyPatch,
    eventlog_threads: Callable[[], list[threading.Thread]],
) -> None:
    before = set(eventlog_threads())
    store = SqliteEventStore(db_path)
    busy = _busy_error(db_path)

    def always_busy(batch: Batch) -> None:
        raise busy

    monkeypatch.setattr(store, "_write", always_busy)
    store.append([make_event(1)])
    assert not store.flush(0.2)
    started = time.monotonic()
    store.close(timeout=0.3)
    assert time.monotonic() - started < 10.0  # bounded: close() never hangs on a sick disk
    assert set(eventlog_threads()) - before == set()
    assert not store.flush(0.0)
    assert store.dropped_records == 1


def test_a_bad_record_is_dropped_alone_and_reported(db_path: Path, make_event: EventFactory) -> None:
    with SqliteEventStore(db_path) as store:
        store.append([make_event(1), make_event(2)])
        store.append([make_event(3, payload={"not": "text"})])  # cannot be bound: a bug upstream
        store.append([make_event(4, time="yesterday")])  # STRICT table refuses a text time
        store.append([make_event(5)])
        assert not store.flush(5.0)  # history now has holes: never claim it is durable
        assert store.dropped_records == 2
        assert store.last_error is not None
        assert [r.seq for r in store.list()] == [1, 2, 5]  # the neighbours were kept
        assert store.gaps() == [(3, 4)]
        store.append([make_event(6)])
        assert not store.flush(5.0)
        assert store.last_seq() == 6


def test_datasette_canned_queries_run_against_a_real_file(
    db_path: Path, make_event: EventFactory, make_span: SpanFactory
) -> None:
    metadata = json.loads(DATASETTE_METADATA.read_text())
    queries = metadata["databases"][db_path.stem]["queries"]  # Datasette names the db after the file
    assert {"task_history", "events_by_type", "spans_by_trace"} <= set(queries)
    with SqliteEventStore(db_path) as store:
        store.append([make_event(s) for s in range(1, 31)])
        store.append_spans(
            [make_span("f" * 32, "1" * 16, 5.0, task_id="task-1"), make_span("f" * 32, "2" * 16, 6.0)]
        )
        assert store.flush(5.0)
        expected_task_seqs = [r.seq for r in store.list(limit=100, flt=EventFilter(task_id="task-1"))]
        expected_traces = store.traces_for_task("task-1")
    params = {"task_id": "task-1", "type": "OfferMade", "trace_id": "f" * 32}
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        results = {}
        for name, query in queries.items():
            names = set(re.findall(r":(\w+)", query["sql"]))
            assert names <= set(params), f"{name} needs an unknown parameter"
            results[name] = conn.execute(query["sql"], {k: params[k] for k in names}).fetchall()
    finally:
        conn.close()
    assert [row["seq"] for row in results["task_history"]] == expected_task_seqs
    assert [row["seq"] for row in results["events_by_type"]] == [
        s for s in range(30, 0, -1) if make_event(s).type == "OfferMade"
    ]
    assert [row["span_id"] for row in results["spans_by_trace"]] == ["1" * 16, "2" * 16]
    assert [row["trace_id"] for row in results["traces_for_task"]] == expected_traces


def test_an_event_file_lists_exactly_as_the_store_that_wrote_it(db_path: Path, make_event: EventFactory) -> None:
    """`EventFile` (the `--db` reader) and `SqliteEventStore` read `list`'s arguments by the same rule
    (`store.list_start`) and build the same query: every listing agrees, and a negative limit is refused
    by both instead of meaning "no limit" to SQLite."""
    from tessera.control_plane.eventlog.eventfile import EventFile

    with SqliteEventStore(db_path) as store:
        store.append([make_event(s) for s in range(1, 41)])
        store.flush()
        with EventFile(db_path) as file:
            only_launches = EventFilter(types=("TaskLaunched",))
            for kwargs in ({}, {"from_seq": 0, "limit": 3}, {"from_seq": -5, "limit": 2}, {"limit": 0},
                           {"from_seq": 30, "limit": 4, "descending": True}, {"from_seq": 0, "descending": True},
                           {"from_seq": 1000, "limit": 2, "descending": True},
                           {"from_seq": 6, "limit": 100, "flt": only_launches}):
                assert file.list(**kwargs) == store.list(**kwargs), kwargs  # type: ignore[arg-type]
            for source in (store, file):
                with pytest.raises(ValueError):
                    source.list(from_seq=6, limit=-1)
            store.prune(6)
            store.flush()
            assert file.list(from_seq=6, limit=3) == store.list(from_seq=6, limit=3)
            for source in (store, file):
                with pytest.raises(HistoryPruned):
                    source.list(from_seq=5)
