"""Fixtures shared by the event log tests: both backends behind one parametrized `store` fixture,
and factories for records whose every field is derived from the seq (so a reader can check any
record it sees without knowing what was appended)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tessera.control_plane.eventlog import (
    EventRecord,
    EventStore,
    MemoryEventStore,
    SpanRecord,
    SqliteEventStore,
)

EventFactory = Callable[..., EventRecord]
SpanFactory = Callable[..., SpanRecord]

TYPES = ("AgentRegistered", "OfferMade", "TaskLaunched", "StatusUpdate", "Rejected")


def event(seq: int, **overrides: object) -> EventRecord:
    fields: dict[str, object] = {
        "seq": seq,
        "raft_index": 100 + seq // 4,
        "position": seq % 4,
        "type": TYPES[seq % len(TYPES)],
        "time": 1_700_000_000.0 + seq / 10,
        "term": 2,
        "request_id": f"req-{seq // 4}",
        "framework_id": f"fw-{seq % 3}",
        "agent_id": f"agent-{seq % 4}",
        "task_id": f"task-{seq % 6}" if seq % 2 else "",
        "offer_id": f"offer-{seq % 5}" if seq % 3 == 0 else "",
        "trace_id": f"{seq:032x}",
        "span_id": f"{seq:016x}",
        "payload": json.dumps({"seq": seq, "note": "é ✓"}),
    }
    fields.update(overrides)
    return EventRecord(**fields)  # type: ignore[arg-type]


def span(trace_id: str, span_id: str, start: float, **overrides: object) -> SpanRecord:
    fields: dict[str, object] = {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": "",
        "name": f"op-{span_id}",
        "service": "tessera-master",
        "kind": "internal",
        "start_time": start,
        "end_time": start + 0.25,
        "status": "OK",
        "attributes": json.dumps({"raft.index": 7}),
        "task_id": "",
    }
    fields.update(overrides)
    return SpanRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture
def make_event() -> EventFactory:
    return event


@pytest.fixture
def make_span() -> SpanFactory:
    return span


def _eventlog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("tessera-eventlog")]


@pytest.fixture
def eventlog_threads() -> Callable[[], list[threading.Thread]]:
    return _eventlog_threads


@pytest.fixture(params=["sqlite", "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], EventStore]]:
    """A factory opening a store of the parametrized kind (on the same file for SQLite); the stores it
    opened are closed after the test."""
    opened: list[EventStore] = []

    def open_store() -> EventStore:
        store: EventStore
        if request.param == "sqlite":
            store = SqliteEventStore(tmp_path / "events.db")
        else:
            store = MemoryEventStore()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
def store(backend: Callable[[], EventStore]) -> Iterator[EventStore]:
    yield backend()
