"""Fixtures of the inspection tests: event logs holding a realistic master history, in memory and in
an SQLite file (as a master writes it), with the live states to compare against."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.control_plane.eventlog import MemoryEventStore, SqliteEventStore

from .workload import Leader, realistic_history


@pytest.fixture
def memory_history() -> Iterator[tuple[MemoryEventStore, Leader]]:
    store = MemoryEventStore()
    leader = realistic_history(store)
    assert store.flush()
    yield store, leader
    store.close()


@pytest.fixture
def db_history(tmp_path: Path) -> tuple[Path, Leader]:
    """An events.db written by a SqliteEventStore fed by the state machine, then closed."""
    path = tmp_path / "events.db"
    store = SqliteEventStore(path)
    leader = realistic_history(store)
    assert store.flush()
    store.close()
    return path, leader
