"""Value types of the event log: one applied event, one tracing span, and a query filter.

Rules kept here:
- Records are immutable and carry only plain values (ints, floats, strings), so they can cross
  threads, be compared in tests and be written to SQLite column by column without conversion.
- An id that does not apply is the empty string, never None: the columns are NOT NULL and indexes
  stay simple.
- `EventFilter.matches` is the single definition of what a filter means; the SQLite backend
  translates the same rules to SQL and the contract tests hold the two together.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event as applied by a master, with where it came from in the Raft log."""

    seq: int  # global event index, 1-based, gap-free and identical on every master
    raft_index: int  # Raft log index of the batch that carried it (0 when unknown)
    position: int  # position of the event inside its log entry
    type: str  # event type name, e.g. "AgentRegistered", "RoleWeightSet", "Rejected"
    time: float  # unix seconds, the leader's clock when the entry was proposed
    term: int
    request_id: str
    framework_id: str  # "" when the event does not concern one; same for the other ids
    agent_id: str
    task_id: str
    offer_id: str
    trace_id: str  # 32 hex or ""
    span_id: str  # 16 hex or ""
    payload: str  # the event as a JSON object text


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One finished tracing span, stored next to the events so traces need no collector."""

    trace_id: str  # 32 hex
    span_id: str  # 16 hex
    parent_span_id: str  # 16 hex or "" for a root span
    name: str
    service: str
    kind: str  # "internal", "server", "client", ...
    start_time: float  # unix seconds
    end_time: float  # unix seconds
    status: str  # "OK", "ERROR" or "UNSET"
    attributes: str  # JSON object text
    task_id: str  # "" when the span concerns no task


@dataclass(frozen=True)
class EventFilter:
    """Which events a listing returns. Every given criterion must hold; empty ones match anything.

    `types` matches any of the listed type names. Times are a half-open range,
    `since_time <= time < until_time`, so consecutive windows neither overlap nor miss an event.
    """

    types: tuple[str, ...] = ()  # any of these types; () = all
    framework_id: str = ""
    agent_id: str = ""
    task_id: str = ""
    offer_id: str = ""
    since_time: float | None = None
    until_time: float | None = None

    def __post_init__(self) -> None:
        # A bare string would turn `type in types` into a substring test; a list would make the
        # frozen filter unhashable. Normalise both to a tuple of names.
        types: object = self.types
        if isinstance(types, str):
            object.__setattr__(self, "types", (types,))
        elif not isinstance(types, tuple):
            object.__setattr__(self, "types", tuple(self.types))

    def matches(self, record: EventRecord) -> bool:
        if self.types and record.type not in self.types:
            return False
        if self.framework_id and record.framework_id != self.framework_id:
            return False
        if self.agent_id and record.agent_id != self.agent_id:
            return False
        if self.task_id and record.task_id != self.task_id:
            return False
        if self.offer_id and record.offer_id != self.offer_id:
            return False
        if self.since_time is not None and record.time < self.since_time:
            return False
        if self.until_time is not None and record.time >= self.until_time:
            return False
        return True

    def is_empty(self) -> bool:
        return self == EventFilter()


# Column order of the tables is the field order of the records, so a row tuple builds a record with
# `EventRecord(*row)` and a record becomes a row with one attrgetter call.
EVENT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(EventRecord))
# An event record as a plain tuple, in EVENT_COLUMNS order (see `EventStore.append_rows`).
EventRow = tuple[int, int, int, str, float, int, str, str, str, str, str, str, str, str]
SPAN_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(SpanRecord))
