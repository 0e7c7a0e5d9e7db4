"""An events.db read directly, read-only: the second reader of the event log's SQLite schema.

`EventFile` serves the `--db` commands (and exports) from a file, with the same `HistorySource` surface
as a running master's `EventStore`.
"""

from __future__ import annotations

import builtins
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tessera.control_plane.eventlog.errors import EventFileError, HistoryPruned
from tessera.control_plane.eventlog.records import EVENT_COLUMNS, SPAN_COLUMNS, EventFilter, EventRecord
from tessera.control_plane.eventlog.source import ALL
from tessera.control_plane.eventlog.store import list_start
from tessera.control_plane.eventlog.timeindex import TimeBlocks

__all__ = ["EventFile"]

_SELECT = "SELECT {} FROM events".format(", ".join(EVENT_COLUMNS))


class EventFile:
    """A master's `events.db` (or an export) opened read-only, for `--db` commands.

    Reads the same schema `SqliteEventStore` writes, without its writer thread and without changing
    the file (no migration, no journal mode change), so it is safe on the file of a running master.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise EventFileError(f"{self.path}: no such file")
        if not self.path.is_file():
            raise EventFileError(f"{self.path}: not a file")
        try:
            self._conn = sqlite3.connect(f"file:{self.path.resolve()}?mode=ro", uri=True, isolation_level=None,
                                         check_same_thread=False)
            columns = [row[1] for row in self._conn.execute("PRAGMA table_info(events)")]
        except sqlite3.DatabaseError as exc:
            raise EventFileError(f"{self.path}: not a readable SQLite database ({exc})") from exc
        if not columns:
            self._conn.close()
            raise EventFileError(f"{self.path}: not a Tessera event log (it has no events table)")
        missing = [c for c in EVENT_COLUMNS if c not in columns]
        if missing:
            self._conn.close()
            raise EventFileError(f"{self.path}: not a Tessera event log (its events table lacks "
                                 f"{', '.join(missing)})")
        tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        self._has_meta = "meta" in tables
        self._has_snapshots = "snapshots" in tables
        self._lock = threading.Lock()  # one connection: serialise its users
        self._time_blocks = TimeBlocks()

    def _query(self, sql: str, params: Sequence[object] = ()) -> builtins.list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise EventFileError(f"{self.path}: cannot read ({exc})") from exc

    def first_seq(self) -> int:
        if not self._has_meta:
            return 1
        rows = self._query("SELECT value FROM meta WHERE key = 'first_seq'")
        return int(rows[0][0]) if rows else 1

    def last_seq(self) -> int:
        (high,) = self._query("SELECT max(seq) FROM events")[0]
        return max(int(high or 0), self.first_seq() - 1)

    def count(self) -> int:
        return int(self._query("SELECT count(*) FROM events")[0][0])

    def list(self, from_seq: int = 1, limit: int = 100, flt: EventFilter = ALL,
             descending: bool = False) -> builtins.list[EventRecord]:
        from tessera.control_plane.eventlog.sqlite import (
            _list_sql,  # the one translation of a listing to SQL
        )

        start = list_start(from_seq, limit, descending)
        if start is None:
            return []
        first = self.first_seq()
        if start < first:
            raise HistoryPruned(first)
        sql, params = _list_sql(flt, start, limit, descending)
        try:
            return [EventRecord(*row) for row in self._query(sql, params)]
        except TypeError as exc:
            raise EventFileError(f"{self.path}: rows do not have the event log's types ({exc})") from exc

    def seq_before_time(self, until: float) -> int | None:
        """`EventStore.seq_before_time`: through `timeindex.TimeBlocks`, as the SQLite store does."""
        from tessera.control_plane.eventlog.sqlite import seq_before_time

        first = self.first_seq()
        if max(self.last_seq(), 1) < first:  # everything was pruned
            raise HistoryPruned(first)
        with self._lock:
            try:
                return seq_before_time(self._time_blocks, self._conn, until, first)
            except sqlite3.DatabaseError as exc:
                raise EventFileError(f"{self.path}: cannot read ({exc})") from exc

    def get(self, seq: int) -> EventRecord | None:
        rows = self._query(f"{_SELECT} WHERE seq = ?", (seq,))
        return EventRecord(*rows[0]) if rows else None

    def gaps(self) -> builtins.list[tuple[int, int]]:
        first = self.first_seq()
        n, low, high = self._query("SELECT count(*), min(seq), max(seq) FROM events")[0]
        if n == 0 or (low == first and high - low + 1 == n):
            return []
        found: builtins.list[tuple[int, int]] = []
        if low > first:
            found.append((first, low - 1))
        found.extend(self._query(
            "SELECT seq + 1, next_seq - 1 FROM (SELECT seq, lead(seq) OVER (ORDER BY seq) AS next_seq "
            "FROM events) WHERE next_seq > seq + 1 ORDER BY seq"))
        return [(int(a), int(b)) for a, b in found]

    def nearest_snapshot(self, at_or_before_seq: int) -> tuple[int, bytes] | None:
        if not self._has_snapshots:
            return None
        rows = self._query("SELECT seq, blob FROM snapshots WHERE seq <= ? ORDER BY seq DESC LIMIT 1",
                           (at_or_before_seq,))
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else None

    def snapshot_seq(self, at_or_before_seq: int) -> int | None:
        """The seq of `nearest_snapshot(at_or_before_seq)`, without reading its blob."""
        if not self._has_snapshots:
            return None
        (found,) = self._query("SELECT max(seq) FROM snapshots WHERE seq <= ?", (at_or_before_seq,))[0]
        return None if found is None else int(found)

    def snapshots(self, from_seq: int = 0) -> builtins.list[tuple[int, bytes]]:
        if not self._has_snapshots:
            return []
        return [(int(s), bytes(b)) for s, b in self._query(
            "SELECT seq, blob FROM snapshots WHERE seq >= ? ORDER BY seq", (from_seq,))]

    def spans(self) -> builtins.list[dict[str, Any]]:
        """Every stored span as a row dict (for exports)."""
        tables = {row[0] for row in self._query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "spans" not in tables:
            return []
        columns = [row[1] for row in self._query("PRAGMA table_info(spans)")]
        if any(c not in columns for c in SPAN_COLUMNS):
            return []
        rows = self._query("SELECT {} FROM spans".format(", ".join(SPAN_COLUMNS)))
        return [dict(zip(SPAN_COLUMNS, row, strict=True)) for row in rows]

    def type_counts(self) -> dict[str, int]:
        return {t: int(n) for t, n in self._query("SELECT type, count(*) FROM events GROUP BY type ORDER BY type")}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> EventFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
