"""Property test: the SQLite store and its in-memory twin answer every query the same way after any
random mix of appends (with holes and replays), prunes, snapshots and spans.

Field values come from small alphabets so filters and ties actually hit; payloads are arbitrary text
(including NUL and non-ASCII) to check that what goes in comes back."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.control_plane.eventlog import (
    EventFilter,
    EventRecord,
    EventStore,
    MemoryEventStore,
    SpanRecord,
    SqliteEventStore,
)

TYPES = ["A", "B", "C"]
IDS = ["", "x", "y"]
# Few distinct times, so time filters hit their boundaries; some arbitrary ones for the round trip.
TIMES = st.sampled_from([0.0, 1.0, 1.5, 2.0, 3.25]) | st.floats(0, 5, allow_nan=False)
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)  # any text SQLite can hold

event_fields = st.fixed_dictionaries(
    {
        "raft_index": st.integers(0, 5),
        "position": st.integers(0, 3),
        "type": st.sampled_from(TYPES),
        "time": TIMES,
        "term": st.integers(0, 3),
        "request_id": TEXT,
        "framework_id": st.sampled_from(IDS),
        "agent_id": st.sampled_from(IDS),
        "task_id": st.sampled_from(IDS),
        "offer_id": st.sampled_from(IDS),
        "trace_id": st.sampled_from(["", "t1", "t2"]),
        "span_id": TEXT,
        "payload": TEXT,
    }
)

span_records = st.builds(
    SpanRecord,
    trace_id=st.sampled_from(["t1", "t2"]),
    span_id=st.sampled_from(["s1", "s2", "s3"]),
    parent_span_id=st.sampled_from(["", "s1"]),
    name=TEXT,
    service=st.just("svc"),
    kind=st.just("internal"),
    start_time=TIMES,
    end_time=TIMES,
    status=st.sampled_from(["OK", "ERROR", "UNSET"]),
    attributes=st.just("{}"),
    task_id=st.sampled_from(IDS),
)

# Mostly-empty criteria: a filter naming every id would match almost nothing and test little.
FILTER_ID = st.sampled_from(["", "", "", "", "x", "y"])
FILTER_TIME = st.sampled_from([None, None, 0.0, 1.0, 1.5, 2.0, 3.25])
filters = st.builds(
    EventFilter,
    types=st.sampled_from([(), (), ("A",), ("B", "C")]),
    framework_id=FILTER_ID,
    agent_id=FILTER_ID,
    task_id=FILTER_ID,
    offer_id=FILTER_ID,
    since_time=FILTER_TIME,
    until_time=FILTER_TIME,
)

SEQ = st.integers(-1, 45)

queries = st.one_of(
    st.tuples(st.just("list"), SEQ, st.integers(0, 12), filters, st.booleans()),
    st.tuples(st.just("get"), SEQ),
    st.tuples(st.just("nearest_snapshot"), SEQ),
    st.tuples(st.just("traces_for_task"), st.sampled_from(IDS)),
    st.tuples(st.just("spans_for_trace"), st.sampled_from(["t1", "t2", "t3"])),
)

operations = st.one_of(
    # (first seq, [(step to the next seq, fields)]): increasing seqs with holes, replays when low
    st.tuples(
        st.just("append"),
        st.integers(1, 40),
        st.lists(st.tuples(st.integers(1, 3), event_fields), max_size=6),
    ),
    st.tuples(st.just("prune"), st.integers(0, 45)),
    st.tuples(st.just("snapshot"), st.integers(0, 45), st.binary(max_size=6)),
    st.tuples(st.just("spans"), st.lists(span_records, max_size=4)),
    st.tuples(st.just("check"), st.lists(queries, max_size=6)),
)

# Every filter criterion alone, and a few together, on the whole history: asked at each check so
# that every criterion meets every generated history.
GRID_FILTERS = [
    EventFilter(),
    EventFilter(types=("A",)),
    EventFilter(types=("B", "C")),
    *(EventFilter(framework_id=v) for v in ("x", "y")),
    *(EventFilter(agent_id=v) for v in ("x", "y")),
    *(EventFilter(task_id=v) for v in ("x", "y")),
    *(EventFilter(offer_id=v) for v in ("x", "y")),
    *(EventFilter(since_time=t) for t in (1.0, 1.5, 2.0)),
    *(EventFilter(until_time=t) for t in (1.0, 1.5, 2.0)),
    EventFilter(since_time=1.0, until_time=2.0),
    EventFilter(types=("A", "B"), task_id="x", until_time=3.25),
]
WHOLE_STATE_QUERIES: list[tuple[Any, ...]] = [
    ("first_seq",),
    ("last_seq",),
    ("count",),
    ("gaps",),
    ("type_counts",),
    *(("list", 1, 1000, flt, False) for flt in GRID_FILTERS),
    *(("list", 1000, 1000, flt, True) for flt in GRID_FILTERS),
]


def answer(store: EventStore, query: tuple[Any, ...]) -> tuple[str, Any]:
    name, *args = query
    try:
        return "ok", getattr(store, name)(*args)
    except Exception as exc:  # the two stores must fail alike, too
        return "error", (type(exc).__name__, exc.args)


def apply(store: EventStore, operation: tuple[Any, ...]) -> Any:
    kind = operation[0]
    if kind == "append":
        _, seq, steps = operation
        records = []
        for step, fields in steps:
            records.append(EventRecord(seq=seq, **fields))
            seq += step
        store.append(records)
    elif kind == "prune":
        return store.prune(operation[1])
    elif kind == "snapshot":
        store.put_snapshot(operation[1], operation[2])
    elif kind == "spans":
        store.append_spans(operation[1])
    return None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operations, min_size=1, max_size=12))
def test_sqlite_store_matches_the_memory_twin(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = SqliteEventStore(Path(tmp) / "events.db")
        memory = MemoryEventStore()
        try:
            for operation in ops:
                # prune returns how many it deleted: that must agree as well
                assert apply(sqlite, operation) == apply(memory, operation), operation
                if operation[0] == "check":
                    assert sqlite.flush(5.0) and memory.flush(5.0)
                    for query in [*operation[1], *WHOLE_STATE_QUERIES]:
                        assert answer(sqlite, query) == answer(memory, query), query
            assert sqlite.flush(5.0) and memory.flush(5.0)
            for query in WHOLE_STATE_QUERIES:
                assert answer(sqlite, query) == answer(memory, query), query
        finally:
            sqlite.close()
            memory.close()
