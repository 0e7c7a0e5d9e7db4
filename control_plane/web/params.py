"""Query parameters of the JSON API (docs/http-api.md), parsed into values. Pure: no I/O, no clock (`now`
comes in), no aiohttp.

Every refusal is `ParamError` — an `InvalidRequest` naming the parameter in `field` — so the edge answers
400 `invalid_argument` with it. The rules keep hostile query strings harmless: integers are decimal digits
only, at most 19 of them (so no parse of a megabyte of digits, no float, no sign, no overflow of SQLite's
64-bit integers); text is at most `MAX_TEXT` characters without control characters; every enumeration
(sort keys, orders, states, event types) is checked against what exists. Filters are compared with
equality (or substring on values already in memory) and reach SQLite only as bound parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.lifecycle import TERMINAL_STATES
from tessera.control_plane.core.values import AgentState, FrameworkState, TaskState
from tessera.control_plane.eventlog.timepoints import Point, parse_point

MAX_DIGITS = 19
MAX_INDEX = 2**63 - 1
MAX_TEXT = 256
MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_TAIL = 1 << 20
DEFAULT_TAIL = 16384
MAX_TYPES = 32

TASK_SORTS = ("id", "name", "state", "framework", "agent", "launched_at", "updated_at", "cpus", "mem")
AGENT_SORTS = ("id", "hostname", "state", "registered_at", "tasks", "cpus", "mem")
FRAMEWORK_SORTS = ("id", "name", "state", "subscribed_at", "tasks", "cpus", "mem")
TIME_SORTS = frozenset({"launched_at", "updated_at", "registered_at", "subscribed_at"})
STREAMS = ("stdout", "stderr")


class ParamError(InvalidRequest):
    """A malformed or out-of-range query parameter; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


Query = Mapping[str, str]


def _raw(query: Query, name: str) -> str | None:
    value = query.get(name)
    return None if value is None else str(value)


def text(query: Query, name: str, default: str = "") -> str:
    """Free text: at most MAX_TEXT characters, no control characters (NUL, newlines...)."""
    value = _raw(query, name)
    if value is None:
        return default
    if len(value) > MAX_TEXT:
        raise ParamError(name, f"at most {MAX_TEXT} characters, got {len(value)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ParamError(name, "control characters are not allowed")
    return value


def integer(query: Query, name: str, default: int | None, *, minimum: int = 0,
            maximum: int = MAX_INDEX) -> int | None:
    """A decimal integer from `minimum` to `maximum` (digits only)."""
    value = _raw(query, name)
    if value is None or value == "":
        return default
    if len(value) > MAX_DIGITS or not value.isascii() or not value.isdigit():
        raise ParamError(name, f"expected an integer from {minimum} to {maximum}, got {value[:40]!r}")
    n = int(value)
    if not minimum <= n <= maximum:
        raise ParamError(name, f"expected an integer from {minimum} to {maximum}, got {n}")
    return n


@dataclass(frozen=True)
class Page:
    offset: int = 0
    limit: int = DEFAULT_PAGE


def page(query: Query) -> Page:
    offset = integer(query, "offset", 0, maximum=10**9)
    limit = integer(query, "limit", DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE)
    assert offset is not None and limit is not None
    return Page(offset, limit)


def choice(query: Query, name: str, choices: tuple[str, ...], default: str) -> str:
    value = text(query, name, default) or default
    if value not in choices:
        raise ParamError(name, f"expected one of {', '.join(choices)}, got {value[:40]!r}")
    return value


@dataclass(frozen=True)
class Listing:
    """Sorting, filtering and paging of a table (agents, frameworks, tasks)."""

    q: str = ""
    states: frozenset[str] = frozenset()
    sort: str = "id"
    descending: bool = False
    page: Page = Page()
    framework: str = ""
    agent: str = ""


_TERMINAL = frozenset(s.name for s in TERMINAL_STATES)


def _states(query: Query, names: list[str], prefix: str, groups: Mapping[str, frozenset[str]]) -> frozenset[str]:
    raw = text(query, "state")
    if not raw:
        return frozenset()
    out: set[str] = set()
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        if part.lower() in groups:
            out |= groups[part.lower()]
            continue
        name = part.upper() if part.upper().startswith(prefix) else prefix + part.upper()
        if name not in names:
            raise ParamError("state", f"unknown state {part[:40]!r} (expected e.g. {names[1]})")
        out.add(name)
    return frozenset(out)


def _listing(query: Query, sorts: tuple[str, ...], default_sort: str, names: list[str], prefix: str,
             groups: Mapping[str, frozenset[str]] | None = None) -> Listing:
    sort = choice(query, "sort", sorts, default_sort)
    order = choice(query, "order", ("asc", "desc"), "desc" if sort in TIME_SORTS else "asc")
    return Listing(q=text(query, "q"), states=_states(query, names, prefix, groups or {}), sort=sort,
                   descending=order == "desc", page=page(query), framework=text(query, "framework"),
                   agent=text(query, "agent"))


def task_listing(query: Query) -> Listing:
    names = [s.name for s in TaskState]
    active = frozenset(n for n in names if n not in _TERMINAL and n != "TASK_STATE_UNKNOWN")
    return _listing(query, TASK_SORTS, "launched_at", names, "TASK_", {"active": active, "terminal": _TERMINAL})


def agent_listing(query: Query) -> Listing:
    return _listing(query, AGENT_SORTS, "id", [s.name for s in AgentState], "AGENT_")


def framework_listing(query: Query) -> Listing:
    return _listing(query, FRAMEWORK_SORTS, "id", [s.name for s in FrameworkState], "FRAMEWORK_")


@dataclass(frozen=True)
class EventQuery:
    """`GET /api/v1/events` and the stream's filters: `after` xor `before` (neither: the newest)."""

    after: int | None = None
    before: int | None = None
    limit: int = DEFAULT_PAGE
    types: tuple[str, ...] = ()
    framework: str = ""
    agent: str = ""
    task: str = ""


def _types(query: Query) -> tuple[str, ...]:
    raw = text(query, "type")
    types = tuple(sorted({t.strip() for t in raw.split(",") if t.strip()}))
    if len(types) > MAX_TYPES:
        raise ParamError("type", f"at most {MAX_TYPES} types")
    for t in types:
        if not (t.isascii() and t.isalnum() and len(t) <= 64):
            raise ParamError("type", f"not an event type: {t[:40]!r}")
    return types


def event_query(query: Query) -> EventQuery:
    after = integer(query, "after", None)
    before = integer(query, "before", None, minimum=1)
    if after is not None and before is not None:
        raise ParamError("before", "give after or before, not both")
    limit = integer(query, "limit", DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE)
    assert limit is not None
    return EventQuery(after=after, before=before, limit=limit, types=_types(query),
                      framework=text(query, "framework"), agent=text(query, "agent"), task=text(query, "task"))


def stream_start(query: Query, last_event_id: str | None) -> int | None:
    """The first index a stream sends: after `Last-Event-ID`, else `from`; None: only new events."""
    if last_event_id:
        resumed = integer({"Last-Event-ID": last_event_id}, "Last-Event-ID", None)
        assert resumed is not None
        return resumed + 1
    return integer(query, "from", None, minimum=1)


def point(query: Query, name: str, now: float, *, required: bool = False) -> Point | None:
    """A point in history: an index, `#index`, `@unix`, ISO-8601 or a relative time."""
    raw = text(query, name)
    if not raw:
        if required:
            raise ParamError(name, "required: an event index or a time")
        return None
    try:
        p = parse_point(raw, now)
    except (ValueError, OverflowError) as exc:
        raise ParamError(name, str(exc)) from exc
    if p.index is not None and p.index > MAX_INDEX:
        raise ParamError(name, f"index {p.index} is out of range")
    return p


@dataclass(frozen=True)
class OutputQuery:
    stream: str = "stdout"
    tail: int = DEFAULT_TAIL


def output_query(query: Query) -> OutputQuery:
    tail = integer(query, "tail", DEFAULT_TAIL, minimum=1, maximum=MAX_TAIL)
    assert tail is not None
    return OutputQuery(stream=choice(query, "stream", STREAMS, "stdout"), tail=tail)
