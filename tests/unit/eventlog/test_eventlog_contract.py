"""The EventStore contract, run against both backends (the `store`/`backend` fixtures are
parametrized over SQLite and memory). Every wait in here is bounded."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import pytest

from tessera.control_plane.eventlog import (
    EventFilter,
    EventRecord,
    EventStore,
    EventStoreClosed,
    HistoryPruned,
    SpanRecord,
)

EventFactory = Callable[..., EventRecord]
SpanFactory = Callable[..., SpanRecord]


def fill(store: EventStore, make_event: EventFactory, seqs: range | list[int]) -> list[EventRecord]:
    records = [make_event(s) for s in seqs]
    store.append(records)
    assert store.flush(5.0)
    return records


# -- append / flush / basic reads ---------------------------------------------------------------------


def test_empty_store(store: EventStore) -> None:
    assert store.last_seq() == 0
    assert store.first_seq() == 1
    assert store.count() == 0
    assert store.list() == []
    assert store.list(from_seq=5, descending=True) == []
    assert store.get(1) is None
    assert store.gaps() == []
    assert store.nearest_snapshot(10) is None
    assert store.type_counts() == {}
    assert store.spans_for_trace("nope") == []
    assert store.traces_for_task("task-1") == []
    assert store.trace_tasks("a" * 32) == []
    assert store.flush(1.0)
    assert store.backlog() == 0


def test_append_then_flush_makes_events_readable_in_order(
    store: EventStore, make_event: EventFactory
) -> None:
    first = [make_event(s) for s in range(1, 41)]
    second = [make_event(s) for s in range(41, 61)]
    store.append(first)
    store.append(second)
    assert store.flush(5.0)
    assert store.backlog() == 0
    assert store.last_seq() == 60
    assert store.count() == 60
    assert store.list(limit=1000) == first + second
    assert store.get(17) == first[16]
    assert store.get(61) is None
    assert store.last_error is None


def test_many_small_appends_are_all_stored(store: EventStore, make_event: EventFactory) -> None:
    # Hundreds of one-event appends get merged into few transactions by the writer; none may be lost
    # or reordered.
    for seq in range(1, 501):
        store.append([make_event(seq)])
    assert store.flush(10.0)
    assert [r.seq for r in store.list(limit=1000)] == list(range(1, 501))


def test_append_copies_the_callers_sequence(store: EventStore, make_event: EventFactory) -> None:
    batch = [make_event(1), make_event(2)]
    store.append(batch)
    batch.append(make_event(3))  # the Raft apply thread reuses its buffers
    batch[0] = make_event(99)
    assert store.flush(5.0)
    assert [r.seq for r in store.list()] == [1, 2]


def test_empty_append_is_a_no_op(store: EventStore) -> None:
    store.append([])
    store.append_spans([])
    assert store.flush(1.0)
    assert store.count() == 0


def test_limit_and_from_seq(store: EventStore, make_event: EventFactory) -> None:
    fill(store, make_event, range(1, 31))
    assert [r.seq for r in store.list(from_seq=10, limit=5)] == [10, 11, 12, 13, 14]
    assert [r.seq for r in store.list(from_seq=28, limit=5)] == [28, 29, 30]
    assert store.list(from_seq=31) == []
    assert store.list(limit=0) == []
    assert [r.seq for r in store.list(from_seq=0, limit=2)] == [1, 2]  # seqs start at 1
    assert [r.seq for r in store.list(from_seq=-5, limit=2)] == [1, 2]
    with pytest.raises(ValueError):
        store.list(limit=-1)


def test_descending(store: EventStore, make_event: EventFactory) -> None:
    fill(store, make_event, range(1, 21))
    assert [r.seq for r in store.list(from_seq=20, limit=3, descending=True)] == [20, 19, 18]
    assert [r.seq for r in store.list(from_seq=3, limit=10, descending=True)] == [3, 2, 1]
    assert [r.seq for r in store.list(from_seq=1000, limit=2, descending=True)] == [20, 19]
    assert store.list(from_seq=0, descending=True) == []
    only_launches = EventFilter(types=("TaskLaunched",))
    got = store.list(from_seq=20, limit=100, flt=only_launches, descending=True)
    assert [r.seq for r in got] == [s for s in range(20, 0, -1) if make_event(s).type == "TaskLaunched"]


# -- filters: each criterion against a brute-force expectation ------------------------------------------

SEQS = range(1, 121)

FILTER_CASES: list[tuple[str, EventFilter, Callable[[EventRecord], bool]]] = [
    ("one type", EventFilter(types=("OfferMade",)), lambda r: r.type == "OfferMade"),
    (
        "two types",
        EventFilter(types=("OfferMade", "Rejected")),
        lambda r: r.type in {"OfferMade", "Rejected"},
    ),
    ("type given as a bare string", EventFilter(types="Rejected"), lambda r: r.type == "Rejected"),  # type: ignore[arg-type]
    ("framework", EventFilter(framework_id="fw-1"), lambda r: r.framework_id == "fw-1"),
    ("agent", EventFilter(agent_id="agent-3"), lambda r: r.agent_id == "agent-3"),
    ("task", EventFilter(task_id="task-5"), lambda r: r.task_id == "task-5"),
    ("offer", EventFilter(offer_id="offer-0"), lambda r: r.offer_id == "offer-0"),
    ("since (inclusive)", EventFilter(since_time=1_700_000_005.0), lambda r: r.seq >= 50),
    ("until (exclusive)", EventFilter(until_time=1_700_000_005.0), lambda r: r.seq < 50),
    (
        "time window",
        EventFilter(since_time=1_700_000_002.0, until_time=1_700_000_003.0),
        lambda r: 20 <= r.seq < 30,
    ),
    (
        "everything at once",
        EventFilter(
            types=("TaskLaunched", "StatusUpdate"),
            framework_id="fw-0",
            task_id="task-3",
            since_time=1_700_000_001.0,
            until_time=1_700_000_010.0,
        ),
        lambda r: (
            r.type in {"TaskLaunched", "StatusUpdate"}
            and r.framework_id == "fw-0"
            and r.task_id == "task-3"
            and 10 <= r.seq < 100
        ),
    ),
    ("unknown id matches nothing", EventFilter(agent_id="agent-404"), lambda r: False),
]


@pytest.mark.parametrize(
    ("flt", "expected"), [(f, e) for _, f, e in FILTER_CASES], ids=[name for name, _, _ in FILTER_CASES]
)
def test_filter(
    store: EventStore, make_event: EventFactory, flt: EventFilter, expected: Callable[[EventRecord], bool]
) -> None:
    records = fill(store, make_event, SEQS)
    want = [r for r in records if expected(r)]
    assert store.list(limit=1000, flt=flt) == want
    # Paging with from_seq and limit gives the same sequence, in pieces.
    paged: list[EventRecord] = []
    cursor = 1
    while True:
        page = store.list(from_seq=cursor, limit=7, flt=flt)
        if not page:
            break
        paged += page
        cursor = page[-1].seq + 1
    assert paged == want
    assert store.list(from_seq=10_000, limit=1000, flt=flt, descending=True) == want[::-1]


# -- retention ------------------------------------------------------------------------------------------


def test_pruned_history_raises_instead_of_skipping(store: EventStore, make_event: EventFactory) -> None:
    fill(store, make_event, range(1, 51))
    assert store.prune(21) == 20
    assert store.first_seq() == 21
    assert store.last_seq() == 50
    assert store.count() == 30
    with pytest.raises(HistoryPruned) as caught:
        store.list(from_seq=1)
    assert caught.value.first_kept == 21
    with pytest.raises(HistoryPruned):
        store.list(from_seq=20, flt=EventFilter(task_id="task-1"))
    with pytest.raises(HistoryPruned):
        store.list(from_seq=20, descending=True)
    assert [r.seq for r in store.list(from_seq=21, limit=2)] == [21, 22]
    assert [r.seq for r in store.list(from_seq=22, limit=5, descending=True)] == [22, 21]
    assert store.get(20) is None
    assert store.gaps() == []
    # Pruning again below the kept start changes nothing.
    assert store.prune(10) == 0
    assert store.first_seq() == 21


def test_replayed_pruned_events_do_not_come_back(store: EventStore, make_event: EventFactory) -> None:
    fill(store, make_event, range(1, 11))
    store.prune(6)
    fill(store, make_event, range(1, 13))  # a restart replays the whole Raft log
    assert [r.seq for r in store.list(from_seq=6, limit=100)] == list(range(6, 13))
    assert store.count() == 7


def test_rows_are_stored_as_the_records_they_spell(store: EventStore, make_event: EventFactory) -> None:
    records = [make_event(s) for s in range(1, 21)]
    store.append_rows([dataclasses.astuple(r) for r in records[:10]])
    store.append(records[10:15])  # records and rows mix in one log
    store.append_rows([dataclasses.astuple(r) for r in records[15:]])
    assert store.flush(5.0)
    assert store.list(limit=100) == records
    assert store.last_seq() == 20
    store.prune(8)
    store.append_rows([dataclasses.astuple(make_event(s)) for s in range(1, 23)])  # replayed, partly pruned
    assert store.flush(5.0)
    assert [r.seq for r in store.list(from_seq=8, limit=100)] == list(range(8, 23))


def test_rows_made_later_are_made_on_the_writer_thread_in_append_order(store: EventStore,
                                                                         make_event: EventFactory) -> None:
    records = [make_event(s) for s in range(1, 21)]
    threads: list[str] = []

    def later(part: list[EventRecord]) -> Callable[[], list[tuple[object, ...]]]:
        def build() -> list[tuple[object, ...]]:
            threads.append(threading.current_thread().name)
            return [dataclasses.astuple(r) for r in part]
        return build

    store.append_rows_later(later(records[:10]), 10)  # type: ignore[arg-type]
    store.append(records[10:15])  # records, rows and rows made later mix in one log, in append order
    store.append_rows_later(later(records[15:]), 5)  # type: ignore[arg-type]
    assert store.flush(5.0)
    assert store.list(limit=100) == records
    assert store.last_seq() == 20
    assert len(threads) == 2
    assert threading.current_thread().name not in threads  # not made by the appending thread


def test_rows_that_cannot_be_made_are_dropped_and_reported(store: EventStore, make_event: EventFactory) -> None:
    fill(store, make_event, range(1, 6))

    def broken() -> list[tuple[object, ...]]:
        raise ValueError("no JSON for this event")

    store.append_rows_later(broken, 3)
    store.append([make_event(s) for s in range(9, 11)])  # the appends after it are stored
    assert not store.flush(5.0)  # history has a hole now
    assert [r.seq for r in store.list(limit=100)] == [1, 2, 3, 4, 5, 9, 10]


def test_prune_past_the_end_moves_the_start(store: EventStore, make_event: EventFactory) -> None:
    fill(store, make_event, range(1, 11))
    assert store.prune(501) == 10  # e.g. history restarts after an installed Raft snapshot
    assert store.count() == 0
    assert store.first_seq() == 501
    assert store.last_seq() == 500  # a follower resumes at 500 + 1
    assert store.list(from_seq=501) == []
    assert store.wait(after_seq=499, timeout=5.0) == 500
    fill(store, make_event, range(501, 504))
    assert [r.seq for r in store.list(from_seq=501)] == [501, 502, 503]
    assert store.gaps() == []


def test_prune_is_ordered_after_earlier_appends(store: EventStore, make_event: EventFactory) -> None:
    store.append([make_event(s) for s in range(1, 101)])  # not flushed on purpose
    assert store.prune(51) == 50  # must see all 100 appended before it
    assert [r.seq for r in store.list(from_seq=51, limit=1)] == [51]
    assert store.count() == 50


# -- wait -----------------------------------------------------------------------------------------------


def test_wait_wakes_up_on_append(store: EventStore, make_event: EventFactory) -> None:
    fill(store, make_event, range(1, 4))
    seen: list[int] = []
    waiter = threading.Thread(target=lambda: seen.append(store.wait(after_seq=3, timeout=30.0)))
    waiter.start()
    time.sleep(0.05)  # let it block; correctness does not depend on this
    store.append([make_event(4), make_event(5)])
    waiter.join(timeout=10.0)
    assert not waiter.is_alive(), "wait() did not wake up on append"
    assert seen and seen[0] >= 4
    assert store.flush(5.0)
    assert store.wait(after_seq=3, timeout=0.0) == 5


def test_wait_times_out_without_new_events(store: EventStore, make_event: EventFactory) -> None:
    fill(store, make_event, range(1, 4))
    started = time.monotonic()
    assert store.wait(after_seq=3, timeout=0.1) == 3
    assert time.monotonic() - started >= 0.09  # it did wait, rather than return at once
    assert store.wait(after_seq=2, timeout=10.0) == 3  # already satisfied: returns at once


def test_wait_returns_when_the_store_closes(backend: Callable[[], EventStore]) -> None:
    store = backend()
    seen: list[int] = []
    waiter = threading.Thread(target=lambda: seen.append(store.wait(after_seq=0, timeout=30.0)))
    waiter.start()
    time.sleep(0.05)
    store.close()
    waiter.join(timeout=10.0)
    assert not waiter.is_alive(), "wait() kept a follower hanging after close()"
    assert seen == [0]


# -- idempotence and gaps ---------------------------------------------------------------------------------


def test_reappending_the_same_seqs_is_harmless(store: EventStore, make_event: EventFactory) -> None:
    originals = fill(store, make_event, range(1, 21))
    store.append([make_event(s, payload='{"replayed": true}') for s in range(1, 21)])
    store.append([make_event(s) for s in range(15, 26)])  # overlaps the end, then goes on
    assert store.flush(5.0)
    assert store.count() == 25
    assert store.list(limit=20) == originals  # the first version of a seq wins
    assert store.last_seq() == 25
    assert store.type_counts() == {
        t: sum(1 for s in range(1, 26) if make_event(s).type == t)
        for t in sorted({make_event(s).type for s in range(1, 26)})
    }


def test_gaps_are_reported(store: EventStore, make_event: EventFactory) -> None:
    fill(store, make_event, [1, 2, 3, 4, 5, 10, 11, 12, 20])
    assert store.gaps() == [(6, 9), (13, 19)]
    assert store.last_seq() == 20
    fill(store, make_event, range(6, 10))  # a replay fills the first hole
    assert store.gaps() == [(13, 19)]
    store.prune(15)
    assert store.gaps() == [(15, 19)]
    store.prune(21)
    assert store.gaps() == []


def test_a_store_that_starts_late_reports_the_leading_hole(
    store: EventStore, make_event: EventFactory
) -> None:
    # A master that installed a Raft snapshot at 500 only ever sees events from 501 on.
    fill(store, make_event, range(501, 506))
    assert store.first_seq() == 1
    assert store.gaps() == [(1, 500)]


# -- snapshots --------------------------------------------------------------------------------------------


def test_nearest_snapshot(store: EventStore, make_event: EventFactory) -> None:
    fill(store, make_event, range(1, 41))
    store.put_snapshot(10, b"state@10")
    store.put_snapshot(20, b"state@20")
    store.put_snapshot(30, bytearray(b"state@30"))  # type: ignore[arg-type]
    assert store.flush(5.0)
    assert store.nearest_snapshot(9) is None
    assert store.nearest_snapshot(10) == (10, b"state@10")
    assert store.nearest_snapshot(25) == (20, b"state@20")
    assert store.nearest_snapshot(10_000) == (30, b"state@30")
    store.put_snapshot(20, b"state@20 again")
    assert store.flush(5.0)
    assert store.nearest_snapshot(29) == (20, b"state@20 again")
    # Retention drops the snapshots no kept seq can be replayed from; 20 still serves seq 21.
    store.prune(21)
    assert store.nearest_snapshot(15) is None
    assert store.nearest_snapshot(25) == (20, b"state@20 again")
    store.put_snapshot(5, b"too old")  # older than anything kept: ignored
    assert store.flush(5.0)
    assert store.nearest_snapshot(19) is None


# -- spans ------------------------------------------------------------------------------------------------


def test_spans_round_trip(store: EventStore, make_span: SpanFactory, make_event: EventFactory) -> None:
    trace = "ab" * 16
    other = "cd" * 16
    root = make_span(trace, "1" * 16, 100.0, name="framework.accept", kind="client")
    child = make_span(
        trace,
        "2" * 16,
        100.5,
        parent_span_id="1" * 16,
        task_id="task-1",
        status="ERROR",
        attributes='{"a": 1}',
    )
    sibling = make_span(trace, "3" * 16, 100.5, parent_span_id="1" * 16)
    elsewhere = make_span(other, "4" * 16, 50.0, task_id="task-1")
    store.append_spans([child, elsewhere])
    store.append_spans([sibling, root])
    store.append_spans([make_span(trace, "1" * 16, 999.0, name="duplicate export")])
    assert store.flush(5.0)
    assert store.spans_for_trace(trace) == [root, child, sibling]  # by start time, then span id
    assert store.spans_for_trace(other) == [elsewhere]
    assert store.traces_for_task("task-1") == [other, trace]  # earliest first

    # Events that name the task bring their traces in too; events without a trace do not.
    third = "ef" * 16
    store.append(
        [
            make_event(1, task_id="task-2"),
            make_event(2, task_id="task-1", trace_id=third, time=10.0),
            make_event(3, task_id="task-1", trace_id=""),
        ]
    )
    assert store.flush(5.0)
    assert store.traces_for_task("task-1") == [third, other, trace]
    assert store.traces_for_task("task-404") == []
    assert store.traces_for_task("") == []
    # and the other way round: the tasks a trace names, from its spans and its events
    assert store.trace_tasks(third) == ["task-1"]
    assert store.trace_tasks(trace) == ["task-1"] and store.trace_tasks(other) == ["task-1"]
    assert store.trace_tasks("") == [] and store.trace_tasks("0" * 32) == []


def test_type_counts(store: EventStore, make_event: EventFactory) -> None:
    fill(store, make_event, range(1, 11))
    fill(store, make_event, [11, 12])
    expected: dict[str, int] = {}
    for seq in range(1, 13):
        expected[make_event(seq).type] = expected.get(make_event(seq).type, 0) + 1
    counts = store.type_counts()
    assert counts == expected
    assert list(counts) == sorted(counts)


# -- closing and threads ------------------------------------------------------------------------------------


def test_close_stores_pending_work_and_leaves_no_thread(
    backend: Callable[[], EventStore],
    make_event: EventFactory,
    make_span: SpanFactory,
    eventlog_threads: Callable[[], list[threading.Thread]],
) -> None:
    before = set(eventlog_threads())
    store = backend()
    assert set(eventlog_threads()) - before, "the store should run a writer thread"
    store.append([make_event(s) for s in range(1, 1001)])  # no flush: close() must store it
    store.close()
    store.close()  # idempotent
    assert set(eventlog_threads()) - before == set()
    assert store.flush(0.0)  # everything appended before close() is stored
    # The Raft apply thread may still append during shutdown: that must not raise (it would stall
    # replication), only be dropped, and flush() must stop claiming durability.
    store.append([make_event(1001)])
    store.append_spans([make_span("a" * 32, "b" * 16, 1.0)])
    store.put_snapshot(1001, b"late")
    assert not store.flush(0.0)
    with pytest.raises(EventStoreClosed):
        store.list()
    with pytest.raises(EventStoreClosed):
        store.prune(5)
    assert store.wait(after_seq=0, timeout=5.0) == 1000


def test_context_manager_closes(
    backend: Callable[[], EventStore], eventlog_threads: Callable[[], list[threading.Thread]]
) -> None:
    before = set(eventlog_threads())
    with backend() as store:
        assert store.count() == 0
    assert set(eventlog_threads()) - before == set()


def test_concurrent_readers_while_the_writer_writes(store: EventStore, make_event: EventFactory) -> None:
    total = 6000
    errors: list[BaseException] = []
    done = threading.Event()

    def read_loop() -> None:
        last_count = 0
        try:
            while not done.is_set():
                last = store.last_seq()
                page = store.list(from_seq=max(1, last - 150), limit=200)
                seqs = [r.seq for r in page]
                if seqs:
                    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "hole or disorder"
                assert not seqs or seqs[-1] >= last, "a reader saw less than last_seq() promised"
                for record in page:
                    assert record == make_event(record.seq), "torn or foreign record"
                count = store.count()
                assert count >= last_count
                last_count = count
                tail = store.list(from_seq=last, limit=5, descending=True)
                assert [r.seq for r in tail] == list(range(last, max(last - 5, 0), -1))
                store.list(limit=20, flt=EventFilter(task_id="task-3", since_time=1_700_000_000.0))
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    readers = [threading.Thread(target=read_loop) for _ in range(4)]
    for reader in readers:
        reader.start()
    for start in range(1, total + 1, 50):
        store.append([make_event(s) for s in range(start, start + 50)])
    assert store.flush(30.0)
    done.set()
    for reader in readers:
        reader.join(timeout=30.0)
    assert not any(r.is_alive() for r in readers)
    assert errors == []
    assert store.count() == total
    assert store.last_seq() == total


def test_a_malformed_append_is_dropped_alone_and_the_writer_survives(
    store: EventStore, make_event: EventFactory
) -> None:
    store.append([make_event(1), make_event(2)])
    store.append([{"seq": 3}])  # type: ignore[list-item]  # a bug upstream, not an EventRecord
    store.append([make_event(4)])
    assert not store.flush(5.0)  # something appended was not stored: never claim durability
    assert store.last_error is not None
    assert [r.seq for r in store.list()] == [1, 2, 4]
    assert store.gaps() == [(3, 3)]
    store.append([make_event(5)])
    assert not store.flush(5.0)
    assert store.last_seq() == 5
    with pytest.raises(TypeError):
        store.prune("10")  # type: ignore[arg-type]


def test_a_crashed_writer_leaves_nobody_hanging(
    backend: Callable[[], EventStore],
    make_event: EventFactory,
    monkeypatch: pytest.MonkeyPatch,
    eventlog_threads: Callable[[], list[threading.Thread]],
) -> None:
    before = set(eventlog_threads())
    store = backend()

    def broken(items: object) -> None:
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(store, "_process", broken)
    store.append([make_event(1)])
    started = time.monotonic()
    assert not store.flush(30.0)
    assert time.monotonic() - started < 20.0  # answered because the writer ended, not by timeout
    assert isinstance(store.last_error, RuntimeError)
    store.append([make_event(2)])  # still never raises on the apply thread
    assert not store.flush(1.0)
    store.close()
    assert set(eventlog_threads()) - before == set()
