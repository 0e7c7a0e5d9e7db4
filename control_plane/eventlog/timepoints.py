"""Points in history: an event index or a time, as an operator gives it, and the index it names."""

from __future__ import annotations

import datetime as dt
import math
import re
import typing
from dataclasses import dataclass

from tessera.control_plane.eventlog.errors import HistoryPruned, HistoryUnavailable, PointOutOfRange
from tessera.control_plane.eventlog.source import HistorySource

__all__ = ["UNIX_THRESHOLD", "Point", "format_time", "known_last", "parse_point", "resolve_point"]


@dataclass(frozen=True)
class Point:
    """An event index or a unix time, as the operator gave it."""

    index: int | None = None
    time: float | None = None

    def __post_init__(self) -> None:
        if (self.index is None) == (self.time is None):
            raise ValueError("a point is an index or a time")

    def __str__(self) -> str:
        return f"index {self.index}" if self.index is not None else format_time(typing.cast(float, self.time))


# Plain integers below this are event indexes; larger numbers are unix seconds (2001-09-09 onwards).
UNIX_THRESHOLD = 1_000_000_000
_RELATIVE = re.compile(r"^-?\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)(?:\s+ago)?\Z")
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_point(text: str, now: float) -> Point:
    """An index or a time from the command line; ValueError with a one-line reason.

    Accepted: `42` or `#42` (event index); `@1700000000.5` or a number >= 1e9 (unix seconds);
    ISO-8601 (`2025-01-31T12:00:00Z`, `2025-01-31 12:00`; without an offset it is UTC, like every time
    tessera prints); a relative time `10m`, `-2h`, `90s ago` (before `now`).
    """
    s = text.strip()
    if not s:
        raise ValueError("expected an event index or a time, got nothing")
    if s.startswith("#"):
        if not s[1:].isdigit():
            raise ValueError(f"{text!r}: expected #INDEX")
        return Point(index=int(s[1:]))
    if s.isdigit():
        n = int(s)
        return Point(index=n) if n < UNIX_THRESHOLD else Point(time=float(n))
    number = s[1:] if s.startswith("@") else s
    try:
        t = float(number)
    except ValueError:
        pass
    else:
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"{text!r}: not a time")
        if t < UNIX_THRESHOLD and not s.startswith("@"):
            raise ValueError(f"{text!r}: an event index is a whole number; unix seconds are given as @SECONDS")
        return Point(time=t)
    rel = _RELATIVE.match(s.lower())
    if rel:
        return Point(time=now - float(rel.group(1)) * _UNITS[rel.group(2)])
    try:
        when = dt.datetime.fromisoformat(s)
    except ValueError as exc:
        raise ValueError(f"{text!r}: expected an event index (42), unix seconds (@1700000000), "
                         "ISO-8601 (2025-01-31T12:00:00Z) or a relative time (10m)") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return Point(time=when.timestamp())


def format_time(t: float) -> str:
    """UTC ISO-8601 with milliseconds, the form every tessera command prints."""
    if not math.isfinite(t) or not 0 <= t < 1e11:
        return str(t)
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


_NO_LIMIT = 2**63 - 1


def known_last(source: HistorySource) -> int:
    """The last index whose state this source knows: its last event, or a later snapshot (a master
    that installed a Raft snapshot has the state at its index before any event after it)."""
    snap = source.snapshot_seq(_NO_LIMIT)
    return max(source.last_seq(), snap or 0)


def resolve_point(source: HistorySource, point: Point, now: float) -> int:
    """The event index a point names: the index itself, or the last event at or before the time.

    Raises `PointOutOfRange` for an index beyond the log, a time in the future or before every kept
    event, and `HistoryUnavailable` for an index that was pruned.
    """
    last = known_last(source)
    if point.index is not None:
        n = point.index
        if n < 0:
            raise PointOutOfRange(f"index {n} is negative")
        if n > last:
            raise PointOutOfRange(f"index {n} is beyond the last event of this log ({last})")
        return n
    t = typing.cast(float, point.time)
    if t > now + 1.0:  # a second of slack for clocks
        raise PointOutOfRange(f"{format_time(t)} is in the future (now is {format_time(now)})")
    try:  # the last event at or before t (an index over the times: timeindex.TimeBlocks)
        found = source.seq_before_time(math.nextafter(t, math.inf))
    except HistoryPruned as exc:  # only when everything was pruned
        raise HistoryUnavailable(str(exc), exc.first_kept, pruned=True) from exc
    if found is None:
        first = source.list(from_seq=source.first_seq(), limit=1)
        if first:
            raise PointOutOfRange(f"no event at or before {format_time(t)}: this log starts at "
                                  f"{format_time(first[0].time)} (index {first[0].seq})")
        raise PointOutOfRange(f"no event at or before {format_time(t)}: this log holds no event")
    return found
