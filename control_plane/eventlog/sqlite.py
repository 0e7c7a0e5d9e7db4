"""SqliteEventStore: each master's event history in one SQLite file (`events.db`), via sqlite-utils.

What it owns: the file's schema (tables `events`, `spans`, `snapshots`, `meta`, evolved through
sqlite-utils `Migrations`), the single writer connection and a pool of reader connections.

Rules it keeps:
- WAL journal: readers never wait for the writer and the writer never waits for readers. A master
  opens it `durable` (`synchronous=FULL`: each batch's commit is fsynced, so a commit survives a power
  loss, and `flush()` returning True means on disk: the Raft dump waits for it, see
  replication/durability.py); `--unsafe-no-fsync` and tools open it with `synchronous=NORMAL` (a commit
  survives a process crash, not a power loss).
- Only the writer thread writes, through one connection, one transaction per batch. Rows go in with
  `executemany` on the raw connection: building rows through sqlite-utils' `insert_all` is about
  four times slower, too slow for the apply path.
- `ON CONFLICT(seq) DO NOTHING` rather than `INSERT OR IGNORE`: both make a replayed seq a no-op,
  but OR IGNORE would also silently skip a row that breaks NOT NULL, hiding a bug as a hole.
- Tables are STRICT, so a wrongly typed value fails its write instead of being stored as something
  else (needs SQLite >= 3.37 to open the file).
- Every read that checks retention runs in one read transaction with the query it guards, so a
  concurrent prune cannot make it skip history silently.
- The file stays a plain SQLite database: `sqlite-utils`, `sqlite3` and Datasette open it as is
  (see metadata.json next to this module for canned queries).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import operator
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils
from sqlite_utils.migrations import Migrations

from tessera.control_plane.eventlog.errors import EventStoreClosed, HistoryPruned
from tessera.control_plane.eventlog.queued import Batch, QueuedEventStore
from tessera.control_plane.eventlog.records import (
    EVENT_COLUMNS,
    SPAN_COLUMNS,
    EventFilter,
    EventRecord,
    SpanRecord,
)
from tessera.control_plane.eventlog.store import _NO_FILTER, list_start
from tessera.control_plane.eventlog.timeindex import TimeBlocks

log = logging.getLogger(__name__)

# -- schema ------------------------------------------------------------------------------------------

MIGRATIONS = Migrations("tessera-eventlog")


@MIGRATIONS()
def m001_initial(db: sqlite_utils.Database) -> None:
    events = db.table("events")
    events.create(
        {
            "seq": int,
            "raft_index": int,
            "position": int,
            "type": str,
            "time": float,
            "term": int,
            "request_id": str,
            "framework_id": str,
            "agent_id": str,
            "task_id": str,
            "offer_id": str,
            "trace_id": str,
            "span_id": str,
            "payload": str,
        },
        pk="seq",
        column_order=list(EVENT_COLUMNS),
        not_null=set(EVENT_COLUMNS),
        strict=True,
    )
    # (column, seq) indexes serve "this task/agent/... from seq N on, in order" without a sort.
    for column in ("type", "framework_id", "agent_id", "task_id", "offer_id"):
        events.create_index([column, "seq"], index_name=f"idx_events_{column}_seq")
    events.create_index(["time"], index_name="idx_events_time")
    events.create_index(["raft_index"], index_name="idx_events_raft_index")

    spans = db.table("spans")
    spans.create(
        {
            "trace_id": str,
            "span_id": str,
            "parent_span_id": str,
            "name": str,
            "service": str,
            "kind": str,
            "start_time": float,
            "end_time": float,
            "status": str,
            "attributes": str,
            "task_id": str,
        },
        pk=("trace_id", "span_id"),
        column_order=list(SPAN_COLUMNS),
        not_null=set(SPAN_COLUMNS),
        strict=True,
    )
    spans.create_index(["trace_id", "start_time"], index_name="idx_spans_trace_id_start_time")
    spans.create_index(["task_id", "start_time"], index_name="idx_spans_task_id_start_time")

    db.table("snapshots").create({"seq": int, "blob": bytes}, pk="seq", not_null={"blob"}, strict=True)
    # Small key/value facts about the log that must survive restarts, e.g. the first kept seq.
    db.table("meta").create({"key": str, "value": int}, pk="key", not_null={"value"}, strict=True)


# Ids an event does not name are stored as ''; most events name few of them (a role weight none, an
# offer never a task). Indexing those rows only costs every insert on every master (about 2 us a row
# of the ~6 us an insert took with seven indexes) and never serves a query: `_filter_sql` filters on a
# non-empty id only, and says so (`column != ''`), so the planner can use these partial indexes.
ID_COLUMNS = ("framework_id", "agent_id", "task_id", "offer_id")


@MIGRATIONS()
def m002_partial_id_indexes(db: sqlite_utils.Database) -> None:
    for column in ID_COLUMNS:
        db.execute(f"DROP INDEX IF EXISTS idx_events_{column}_seq")
        db.execute(f"CREATE INDEX idx_events_{column}_seq ON events ({column}, seq) WHERE {column} != ''")


@MIGRATIONS()
def m003_trace_and_span_age_indexes(db: sqlite_utils.Database) -> None:
    # "which tasks does this trace name" (span reports are checked against them): only task events
    # with a trace are indexed; and "spans that ended before T" (pruned with the events).
    db.execute("CREATE INDEX IF NOT EXISTS idx_events_trace_id_task ON events (trace_id, task_id)"
               " WHERE trace_id != '' AND task_id != ''")
    db.execute("CREATE INDEX IF NOT EXISTS idx_spans_end_time ON spans (end_time)")


_INSERT_EVENTS = "INSERT INTO events ({}) VALUES ({}) ON CONFLICT(seq) DO NOTHING".format(
    ", ".join(EVENT_COLUMNS), ", ".join("?" * len(EVENT_COLUMNS))
)
_INSERT_SPANS = "INSERT INTO spans ({}) VALUES ({}) ON CONFLICT(trace_id, span_id) DO NOTHING".format(
    ", ".join(SPAN_COLUMNS), ", ".join("?" * len(SPAN_COLUMNS))
)
_UPSERT_SNAPSHOT = (
    "INSERT INTO snapshots (seq, blob) VALUES (?, ?) ON CONFLICT(seq) DO UPDATE SET blob = excluded.blob"
)
_SET_FIRST_SEQ = "INSERT INTO meta (key, value) VALUES ('first_seq', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
_GET_FIRST_SEQ = "SELECT value FROM meta WHERE key = 'first_seq'"
_SELECT_EVENTS = "SELECT {} FROM events".format(", ".join(EVENT_COLUMNS))
_SELECT_SPANS = "SELECT {} FROM spans".format(", ".join(SPAN_COLUMNS))

# One C-level call per record turns it into a row tuple in column order: the hot path.
_event_row = operator.attrgetter(*EVENT_COLUMNS)
_span_row = operator.attrgetter(*SPAN_COLUMNS)

# Primary result codes worth retrying: the same write can succeed later.
_TRANSIENT_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_PROTOCOL,
    }
)

# Idle reader connections kept for reuse; more are opened on demand and closed when returned.
_MAX_IDLE_READERS = 8


def _open_database(path: Path, durable: bool = False) -> sqlite_utils.Database:
    # check_same_thread=False: the connection is made here and used by the writer thread.
    db = sqlite_utils.Database(sqlite3.connect(str(path), check_same_thread=False))
    db.enable_wal()
    db.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
    return db


class _ReaderPool:
    """Read-only connections handed out one per concurrent reader (a connection is not shared)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._idle: builtins.list[sqlite3.Connection] = []
        self._closed = False

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; reads open an explicit BEGIN when they
        # need one consistent view, and otherwise each statement sees the latest commit.
        conn = sqlite3.connect(str(self._path), check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA query_only = ON")
        return conn

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise EventStoreClosed("event store is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._open()
        try:
            yield conn
        finally:
            if conn.in_transaction:  # an exception left a read transaction open
                conn.execute("ROLLBACK")
            with self._lock:
                keep = not self._closed and len(self._idle) < _MAX_IDLE_READERS
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _filter_sql(flt: EventFilter) -> tuple[builtins.list[str], builtins.list[object]]:
    """WHERE clauses and parameters meaning exactly `EventFilter.matches`."""
    clauses: builtins.list[str] = []
    params: builtins.list[object] = []
    if flt.types:
        clauses.append("type IN ({})".format(", ".join("?" * len(flt.types))))
        params.extend(flt.types)
    for column in ID_COLUMNS:
        value = getattr(flt, column)
        if value:
            # the redundant `!= ''` lets the planner use the partial index on the column
            clauses.append(f"{column} = ? AND {column} != ''")
            params.append(value)
    if flt.since_time is not None:
        clauses.append("time >= ?")
        params.append(flt.since_time)
    if flt.until_time is not None:
        clauses.append("time < ?")
        params.append(flt.until_time)
    return clauses, params


def _list_sql(flt: EventFilter, from_seq: int, limit: int, descending: bool
              ) -> tuple[str, builtins.list[object]]:
    """The query of `EventStore.list` over an `events` table (the store's and an exported file's), with
    `from_seq` as `list_start` gave it."""
    clauses, params = _filter_sql(flt)
    clauses.insert(0, "seq <= ?" if descending else "seq >= ?")
    params.insert(0, from_seq)
    params.append(limit)
    sql = "{} WHERE {} ORDER BY seq {} LIMIT ?".format(
        _SELECT_EVENTS, " AND ".join(clauses), "DESC" if descending else "ASC"
    )
    return sql, params


# `timeindex.TimeBlocks`' two queries over an `events` table. `+time` keeps the planner on the seq range
# (the primary key): the index on time would visit every event before the time.
_BLOCK_MINIMA = "SELECT (seq - 1) / ?, min(time), count(*) FROM events WHERE seq BETWEEN ? AND ? GROUP BY 1"
_LAST_BEFORE = "SELECT max(seq) FROM events WHERE seq BETWEEN ? AND ? AND +time < ?"


def seq_before_time(blocks: TimeBlocks, conn: sqlite3.Connection, until: float, first: int) -> int | None:
    """`EventStore.seq_before_time` over an `events` table through `blocks` (the store's and an events
    file's), in the caller's read transaction."""
    (high,) = conn.execute("SELECT max(seq) FROM events").fetchone()

    def minima(low: int, top: int) -> builtins.list[tuple[int, float, int]]:
        rows = conn.execute(_BLOCK_MINIMA, (blocks.block, low, top)).fetchall()
        return [(int(b), float(t), int(n)) for b, t, n in rows]

    def last_before(low: int, top: int, until: float) -> int | None:
        (found,) = conn.execute(_LAST_BEFORE, (low, top, until)).fetchone()
        return None if found is None else int(found)

    return blocks.seq_before(until, first, int(high or 0), minima, last_before)


class SqliteEventStore(QueuedEventStore):
    """The event store of a master: one SQLite file, written by one background thread."""

    WRITES_ROWS = True

    def __init__(self, path: Path | str, *, durable: bool = False) -> None:
        super().__init__(writer_name="tessera-eventlog-writer")
        self.path = Path(path)
        self._db = _open_database(self.path, durable)
        try:
            MIGRATIONS.apply(self._db)  # idempotent: applies only what this file lacks
            first = self._read_first_seq(self._db.conn)
            (high,) = self._db.conn.execute("SELECT max(seq) FROM events").fetchone()
        except BaseException:
            self._db.close()
            raise
        self._conn = self._db.conn  # the writer's; used only by the writer thread from now on
        self._readers = _ReaderPool(self.path)
        self._time_blocks = TimeBlocks()
        self._start_writer(first_seq=first, last_seq=high or 0)

    @staticmethod
    def _read_first_seq(conn: sqlite3.Connection) -> int:
        row = conn.execute(_GET_FIRST_SEQ).fetchone()
        return int(row[0]) if row else 1

    # -- writer side -----------------------------------------------------------------------------------

    def _write(self, batch: Batch) -> None:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            if batch.events:
                conn.executemany(_INSERT_EVENTS, map(_event_row, batch.events))
            if batch.rows:
                conn.executemany(_INSERT_EVENTS, batch.rows)
            if batch.spans:
                conn.executemany(_INSERT_SPANS, map(_span_row, batch.spans))
            if batch.snapshots:
                conn.executemany(_UPSERT_SNAPSHOT, batch.snapshots)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _prune_stored(self, before_seq: int) -> int:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            row = conn.execute("SELECT time FROM events WHERE seq >= ? ORDER BY seq LIMIT 1", (before_seq,)).fetchone()
            if row is None:
                row = conn.execute("SELECT max(time) FROM events WHERE seq < ?", (before_seq,)).fetchone()
            if row is not None and row[0] is not None:
                conn.execute("DELETE FROM spans WHERE end_time < ?", (row[0],))
            deleted = conn.execute("DELETE FROM events WHERE seq < ?", (before_seq,)).rowcount
            conn.execute("DELETE FROM snapshots WHERE seq < ?", (before_seq - 1,))
            conn.execute(_SET_FIRST_SEQ, (before_seq,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return int(deleted)

    def _is_transient(self, exc: Exception) -> bool:
        code = getattr(exc, "sqlite_errorcode", None)
        return isinstance(exc, sqlite3.Error) and code is not None and (code & 0xFF) in _TRANSIENT_CODES

    def _writer_exiting(self) -> None:
        try:
            # Keeps the planner's statistics fresh for the readers of the next run; cheap.
            self._conn.execute("PRAGMA optimize")
        except sqlite3.Error as exc:
            log.warning("PRAGMA optimize failed on close: %r", exc)
        self._db.close()

    def _release(self) -> None:
        self._readers.close()

    # -- reads -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self, consistent: bool = False) -> Iterator[sqlite3.Connection]:
        self._check_open()
        with self._readers.connection() as conn:
            if not consistent:
                yield conn
                return
            conn.execute("BEGIN")  # one snapshot of the file for every statement inside
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def count(self) -> int:
        with self._reading() as conn:
            (n,) = conn.execute("SELECT count(*) FROM events").fetchone()
        return int(n)

    def list(
        self,
        from_seq: int = 1,
        limit: int = 100,
        flt: EventFilter = _NO_FILTER,
        descending: bool = False,
    ) -> builtins.list[EventRecord]:
        start = list_start(from_seq, limit, descending)
        if start is None:
            self._check_open()
            return []
        from_seq = start
        sql, params = _list_sql(flt, from_seq, limit, descending)
        with self._reading(consistent=True) as conn:
            first = self._read_first_seq(conn)
            if from_seq < first:
                raise HistoryPruned(first)
            rows = conn.execute(sql, params).fetchall()
        return [EventRecord(*row) for row in rows]

    def seq_before_time(self, until: float) -> int | None:
        with self._reading(consistent=True) as conn:
            first = self._read_first_seq(conn)
            if max(self.last_seq(), 1) < first:  # everything was pruned
                raise HistoryPruned(first)
            return seq_before_time(self._time_blocks, conn, until, first)

    def get(self, seq: int) -> EventRecord | None:
        with self._reading() as conn:
            row = conn.execute(f"{_SELECT_EVENTS} WHERE seq = ?", (seq,)).fetchone()
        return EventRecord(*row) if row else None

    def gaps(self) -> builtins.list[tuple[int, int]]:
        with self._reading(consistent=True) as conn:
            first = self._read_first_seq(conn)
            n, low, high = conn.execute("SELECT count(*), min(seq), max(seq) FROM events").fetchone()
            if n == 0 or (low == first and high - low + 1 == n):
                return []  # the common case, answered without walking the table
            found: builtins.list[tuple[int, int]] = []
            if low > first:
                found.append((first, low - 1))
            found.extend(
                conn.execute(
                    "SELECT seq + 1, next_seq - 1 FROM ("
                    " SELECT seq, lead(seq) OVER (ORDER BY seq) AS next_seq FROM events"
                    ") WHERE next_seq > seq + 1 ORDER BY seq"
                ).fetchall()
            )
        return [(int(a), int(b)) for a, b in found]

    def nearest_snapshot(self, at_or_before_seq: int) -> tuple[int, bytes] | None:
        with self._reading() as conn:
            row = conn.execute(
                "SELECT seq, blob FROM snapshots WHERE seq <= ? ORDER BY seq DESC LIMIT 1",
                (at_or_before_seq,),
            ).fetchone()
        return (int(row[0]), bytes(row[1])) if row else None

    def snapshot_seq(self, at_or_before_seq: int) -> int | None:
        with self._reading() as conn:
            row = conn.execute("SELECT max(seq) FROM snapshots WHERE seq <= ?", (at_or_before_seq,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def spans_for_trace(self, trace_id: str) -> builtins.list[SpanRecord]:
        with self._reading() as conn:
            rows = conn.execute(
                f"{_SELECT_SPANS} WHERE trace_id = ? ORDER BY start_time, span_id", (trace_id,)
            ).fetchall()
        return [SpanRecord(*row) for row in rows]

    def traces_for_task(self, task_id: str, framework_id: str = "") -> builtins.list[str]:
        if not task_id:
            self._check_open()
            return []
        if framework_id:
            with self._reading() as conn:
                rows = conn.execute(
                    "WITH t AS (SELECT trace_id, time FROM events WHERE task_id = ?1 AND framework_id = ?2"
                    " AND trace_id <> '')"
                    " SELECT trace_id FROM ("
                    " SELECT trace_id, time AS at FROM t"
                    " UNION ALL"
                    " SELECT trace_id, start_time AS at FROM spans WHERE task_id = ?1"
                    " AND trace_id IN (SELECT trace_id FROM t)"
                    ") GROUP BY trace_id ORDER BY min(at), trace_id",
                    (task_id, framework_id),
                ).fetchall()
            return [row[0] for row in rows]
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT trace_id FROM ("
                " SELECT trace_id, start_time AS t FROM spans WHERE task_id = ?1"
                " UNION ALL"
                " SELECT trace_id, time AS t FROM events WHERE task_id = ?1 AND task_id != '' AND trace_id <> ''"
                ") GROUP BY trace_id ORDER BY min(t), trace_id",
                (task_id,),
            ).fetchall()
        return [row[0] for row in rows]

    def trace_tasks(self, trace_id: str) -> builtins.list[str]:
        if not trace_id:
            self._check_open()
            return []
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT task_id FROM spans WHERE trace_id = ?1 AND task_id != ''"
                " UNION"
                " SELECT task_id FROM events WHERE trace_id = ?1 AND trace_id != '' AND task_id != ''"
                " ORDER BY task_id",
                (trace_id,),
            ).fetchall()
        return [row[0] for row in rows]

    def type_counts(self) -> dict[str, int]:
        with self._reading() as conn:
            rows = conn.execute("SELECT type, count(*) FROM events GROUP BY type ORDER BY type").fetchall()
        return {row[0]: int(row[1]) for row in rows}
