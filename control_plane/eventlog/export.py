"""Export: recorded events (and snapshots, spans) written to a new SQLite file (`tessera events export`)."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tessera.control_plane.eventlog.records import EVENT_COLUMNS, EventRecord

__all__ = ["export_events", "payload_of", "record_json"]

ID_KEYS = ("framework_id", "agent_id", "task_id", "offer_id")


def payload_of(r: EventRecord) -> Any:
    """The record's payload parsed (the text itself when it is not JSON)."""
    import json

    try:
        return json.loads(r.payload)
    except ValueError:
        return r.payload


def record_json(r: EventRecord, **extra: Any) -> dict[str, Any]:
    """One event as JSON, as `tessera events --json` prints it and the web API answers it: the event log's
    columns, `at` (ISO time) and the payload parsed."""
    from tessera.control_plane.eventlog.timepoints import format_time

    out: dict[str, Any] = {"seq": r.seq, "raft_index": r.raft_index, "position": r.position, "type": r.type,
                           "time": r.time, "at": format_time(r.time), "term": r.term,
                           "request_id": r.request_id, "trace_id": r.trace_id, "span_id": r.span_id,
                           "payload": payload_of(r)}
    for key in ID_KEYS:
        out[key] = getattr(r, key)
    out.update(extra)
    return out


def export_events(dest: Path, first_seq: int, records: Iterable[EventRecord], *,
                  snapshots: Iterable[tuple[int, bytes]] = (), spans: Iterable[dict[str, Any]] = (),
                  on_batch: Callable[[int], None] | None = None, batch: int = 5_000) -> int:
    """Write `records` (and snapshots, spans) to a new SQLite file with the event log's own schema,
    through sqlite-utils. History before `first_seq` is marked as pruned, like a master's log after
    retention. The file appears at `dest` only once complete. Returns the number of events written."""
    import sqlite_utils

    from tessera.control_plane.eventlog.sqlite import MIGRATIONS

    tmp = dest.with_name(f".{dest.name}.partial")
    tmp.unlink(missing_ok=True)
    db = sqlite_utils.Database(tmp)
    events, snapshot_table, span_table, meta = db.table("events"), db.table("snapshots"), db.table("spans"), \
        db.table("meta")
    written = 0
    try:
        MIGRATIONS.apply(db)
        if first_seq > 1:
            meta.insert({"key": "first_seq", "value": first_seq}, replace=True)
        rows: builtins.list[dict[str, Any]] = []

        def flush_rows() -> None:
            nonlocal written, rows
            if rows:
                events.insert_all(rows, batch_size=len(rows))
                written += len(rows)
                if on_batch is not None:
                    on_batch(len(rows))
                rows = []

        for r in records:
            rows.append({name: getattr(r, name) for name in EVENT_COLUMNS})
            if len(rows) >= batch:
                flush_rows()
        flush_rows()
        snapshot_table.insert_all(({"seq": seq, "blob": blob} for seq, blob in snapshots), replace=True)
        span_table.insert_all(spans, ignore=True)
    except BaseException:
        db.close()
        tmp.unlink(missing_ok=True)
        raise
    db.close()
    tmp.replace(dest)
    return written
