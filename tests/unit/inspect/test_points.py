"""Points in history: how operators name an index or a time, and how a time becomes an index."""

from __future__ import annotations

import pytest

from tessera.control_plane.eventlog import MemoryEventStore
from tessera.control_plane.eventlog.errors import PointOutOfRange
from tessera.control_plane.eventlog.replay import rebuild, state_at
from tessera.control_plane.eventlog.timepoints import Point, format_time, parse_point, resolve_point

from .workload import T0, Leader

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(("text", "expected"), [
    ("42", Point(index=42)),
    ("0", Point(index=0)),
    ("#1700000000", Point(index=1_700_000_000)),
    ("@1700000000.5", Point(time=1_700_000_000.5)),
    ("@12", Point(time=12.0)),
    ("1700000000", Point(time=1_700_000_000.0)),
    ("1700000000.25", Point(time=1_700_000_000.25)),
    ("2026-01-01T00:00:00Z", Point(time=NOW)),
    ("2026-01-01T00:00:00+00:00", Point(time=NOW)),
    ("2026-01-01T01:00:00+01:00", Point(time=NOW)),
    ("2026-01-01 00:00", Point(time=NOW)),  # no offset: UTC, as tessera prints
    ("2026-01-01", Point(time=NOW)),
    ("10m", Point(time=NOW - 600)),
    ("-2h", Point(time=NOW - 7200)),
    ("90s ago", Point(time=NOW - 90)),
    ("1d", Point(time=NOW - 86400)),
])
def test_points_are_parsed(text: str, expected: Point) -> None:
    assert parse_point(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "  ", "abc", "-5", "4.5", "#x", "@nan", "@-3", "2026-13-01", "10 parsecs"])
def test_malformed_points_are_refused_in_one_sentence(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_point(text, NOW)
    assert "\n" not in str(info.value) and str(info.value)


def test_times_print_as_utc_iso_with_milliseconds() -> None:
    assert format_time(NOW + 0.1234) == "2026-01-01T00:00:00.123Z"
    assert parse_point(format_time(NOW + 0.5), NOW) == Point(time=NOW + 0.5)


@pytest.fixture
def log() -> MemoryEventStore:
    from tessera.control_plane.core import commands as c

    store = MemoryEventStore()
    leader = Leader(store)
    for i in range(5):  # one event per second: T0, T0+1, ... T0+4
        leader.run(c.SetRoleWeight(f"r{i}", 1.0 + i))
        leader.tick(1.0)
    assert store.flush()
    return store


def test_a_time_names_the_last_event_at_or_before_it(log: MemoryEventStore) -> None:
    now = T0 + 100
    assert resolve_point(log, Point(time=T0), now) == 1
    assert resolve_point(log, Point(time=T0 + 2.5), now) == 3
    assert resolve_point(log, Point(time=T0 + 3), now) == 4
    assert resolve_point(log, Point(time=T0 + 50), now) == 5


def test_a_time_before_the_first_event_is_out_of_range(log: MemoryEventStore) -> None:
    with pytest.raises(PointOutOfRange, match="no event at or before .* starts at"):
        resolve_point(log, Point(time=T0 - 1), T0 + 100)


def test_a_time_in_the_future_is_out_of_range(log: MemoryEventStore) -> None:
    with pytest.raises(PointOutOfRange, match="in the future"):
        resolve_point(log, Point(time=T0 + 1000), T0 + 100)


def test_an_index_beyond_the_log_is_out_of_range(log: MemoryEventStore) -> None:
    assert resolve_point(log, Point(index=5), T0) == 5
    with pytest.raises(PointOutOfRange, match="index 6 is beyond the last event of this log \\(5\\)"):
        resolve_point(log, Point(index=6), T0)
    with pytest.raises(PointOutOfRange):
        rebuild(log, 6)


def test_index_zero_is_the_empty_state(log: MemoryEventStore) -> None:
    state = state_at(log, Point(index=0), T0).state
    assert state.seq == 0 and not state.roles
