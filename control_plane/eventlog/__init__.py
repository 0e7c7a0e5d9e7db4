"""Event log: the history of every event a master applied, its state snapshots and tracing spans.

Each master writes every applied event here (never inside `apply`: appends only enqueue, a writer
thread stores them in batches). The history outlives Raft log compaction and serves tailing and
following with filters, per-task/agent/framework timelines, state "as of" an index (nearest snapshot
plus replay) and traces. `EventStore` is the port; `SqliteEventStore` is the real store (one SQLite
file per master, readable with sqlite-utils or Datasette, see `DATASETTE_METADATA`) and
`MemoryEventStore` its in-memory twin with the same semantics.
"""

from pathlib import Path

from tessera.control_plane.eventlog.errors import EventLogError, EventStoreClosed, HistoryPruned
from tessera.control_plane.eventlog.memory import MemoryEventStore
from tessera.control_plane.eventlog.records import EventFilter, EventRecord, SpanRecord
from tessera.control_plane.eventlog.sqlite import SqliteEventStore
from tessera.control_plane.eventlog.store import EventStore

# Canned Datasette queries for an events.db: `datasette serve events.db --metadata <this path>`.
DATASETTE_METADATA = Path(__file__).with_name("metadata.json")

__all__ = [
    "DATASETTE_METADATA",
    "EventFilter",
    "EventLogError",
    "EventRecord",
    "EventStore",
    "EventStoreClosed",
    "HistoryPruned",
    "MemoryEventStore",
    "SpanRecord",
    "SqliteEventStore",
]
