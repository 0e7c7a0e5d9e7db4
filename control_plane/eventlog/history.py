"""History: the cluster state as of any event, what changed between two points, one id's timeline.

What this module owns: turning the recorded history of a master (its `events.db`) back into
`ClusterState`s, diffs and timelines, the state snapshots that keep that fast, and retention. The
Operator service (`GetStateAt`) and the `tessera state/timeline/events` commands are thin shells over it.

Theory of operation
-------------------
The event log records *applied events*, not log entries: for each committed entry, the events `apply`
recorded, numbered by `seq`, with the entry's raft index, term, time and request id, and the event's
`position` inside what the entry recorded. So the entries can be rebuilt exactly: an entry starts at
every record with position 0 (positions count the recorded events 0, 1, 2, ... of one entry), and its
events are the payloads decoded back into core dataclasses (`from_jsonable`, the inverse of
`codec.to_jsonable`). Replaying an entry is the core's own `apply`, so replay can never disagree with
the masters about what an event means. Grouping is necessary, not cosmetic: a `TaskLaunched` is only
valid after the `OfferAccepted` of the same entry, and re-applying the events of one entry as separate
entries would make the second a duplicate of the request id.

A rejected entry recorded one `Rejected` event and otherwise changed nothing but the log: replay
reproduces it directly (seq, time, count and the de-duplication memory of its request id) rather than
through `apply`, which would record it as applied.

The property this keeps (pinned by tests/unit/inspect/test_replay.py): for every entry boundary `s`,
rebuilding from the log gives a state whose `fingerprint()` equals the live state's right after the
entry that recorded `s`. Two things a master applies leave nothing in the event log and so cannot be
rebuilt: the time of an entry that recorded no event (a read barrier; the next entry overwrites it) and
the request id of an entry whose every event turned out to be an idempotent no-op in flight (a race:
`decide` never proposes such an entry). Both are soft, de-duplication-only facts.

"State as of index N" is the state after the entry that recorded event N (an entry is atomic: no
master ever held a state in the middle of one). "As of time T" is the state after the last event
recorded at or before T. Rebuilding starts from the nearest stored snapshot at or before N, so it costs
at most the events since that snapshot.

Snapshots
---------
A snapshot is the pickled `ClusterState` after an entry boundary, stored with `put_snapshot(seq, blob)`
(header: magic, format version and a hash of the core record layout, so a snapshot written by another
version of the code is skipped, never half-loaded; loading uses an unpickler that only admits the core's
own classes). They are taken in the background:

- `Snapshotter` (one background thread per master): the state machine tells it that the log crossed a
  multiple of `every` events. When the entry that recorded that event ended its batch, the live state is
  exactly the state as of that event, and the apply thread pickles it (bounded: a pickle slower than
  `live_budget_s` turns this off for a while); otherwise the thread waits until the event store holds
  the events, rebuilds from the previous snapshot (at most `every` events of replay) and stores the new
  snapshot. The apply thread never compresses, writes or waits for this thread. A replay of every event
  cost ~17 us an event on each master, more than a write to a master at 10k writes/s could spare; a
  pickle of a state with 50,000 remembered requests ~20 ms per `every` (10,000) events. Also
  `Snapshotter.restored`: when a master installs a Raft snapshot its event log has a hole before it, so
  that state is pickled right there.
- Every rebuild on the serving side (`state_at` with a `sink`) stores the snapshots it passes on the
  way, so even a log without them becomes fast after the first query.
- `Retention` prunes in the background and always keeps a snapshot at the new start of history, so the
  state as of every kept index stays rebuildable.

Errors (`HistoryError` and subclasses) say in one sentence what is wrong: an index or time outside the
history (`PointOutOfRange`), history that is gone or was never here (`HistoryUnavailable`, with the
first index that can be served), a log that does not replay (`ReplayError`: an unknown event type from
a newer version, a corrupt payload, or a divergence, which would be a bug), a file that is not an event
log (`EventFileError`). `HistoryError.domain_error()` maps them onto the core's error tree for the API.
"""

from __future__ import annotations

import builtins
import dataclasses
import datetime as dt
import enum
import hashlib
import io
import json
import logging
import math
import pickle
import re
import sqlite3
import threading
import time
import types
import typing
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from control_plane.core import events as ev
from control_plane.core.apply import apply
from control_plane.core.errors import Conflict, InvalidRequest, TesseraError
from control_plane.core.resources import Resources
from control_plane.core.state import (
    MAX_ID_LENGTH,
    AgentRecord,
    ApplyResult,
    ClusterState,
    FrameworkRecord,
    TaskRecord,
)
from control_plane.core.values import Offer, RoleInfo
from control_plane.eventlog.errors import EventStoreClosed, HistoryPruned
from control_plane.eventlog.records import EVENT_COLUMNS, SPAN_COLUMNS, EventFilter, EventRecord

log = logging.getLogger(__name__)

DEFAULT_SNAPSHOT_EVERY = 10_000
PAGE = 5_000  # records read per query while replaying

__all__ = [
    "DEFAULT_SNAPSHOT_EVERY",
    "AmbiguousTask",
    "Change",
    "EventFile",
    "EventFileError",
    "FieldChange",
    "HistoryError",
    "HistorySource",
    "HistoryUnavailable",
    "Point",
    "PointOutOfRange",
    "RecordedEntry",
    "ReplayError",
    "Retention",
    "Snapshotter",
    "StateAt",
    "StateDiff",
    "TimelineItem",
    "decode_snapshot",
    "detect_kinds",
    "frameworks_naming_task",
    "resolve_task",
    "split_task_ref",
    "diff_states",
    "encode_snapshot",
    "entries_from_records",
    "export_events",
    "event_from_record",
    "format_time",
    "from_jsonable",
    "parse_point",
    "rebuild",
    "replay_records",
    "resolve_point",
    "retention_cut",
    "state_at",
    "timeline",
]


# ---- errors --------------------------------------------------------------------------------------
class HistoryError(Exception):
    """Base of what this module raises on purpose; `str()` is one sentence for an operator."""

    def domain_error(self) -> Exception:
        return Conflict(str(self))


class PointOutOfRange(HistoryError):
    """An index beyond the log, a time in the future or before the first event, a malformed point."""

    def domain_error(self) -> Exception:
        return InvalidRequest(str(self))


class HistoryUnavailable(HistoryError):
    """The history needed is not here: pruned (and no snapshot covers it) or a hole in this master's log.

    `first_available` is the first index whose state this source can still rebuild (0 when none).
    """

    def __init__(self, message: str, first_available: int = 0, pruned: bool = False) -> None:
        super().__init__(message)
        self.first_available = first_available
        self.pruned = pruned

    def domain_error(self) -> Exception:
        # Pruned history is the event log's own error (OUT_OF_RANGE at the API), with this message.
        return _Pruned(self.first_available, str(self)) if self.pruned else Conflict(str(self))


class _Pruned(HistoryPruned):
    def __init__(self, first_kept: int, message: str) -> None:
        super().__init__(first_kept)
        self.message = message

    def __str__(self) -> str:
        return self.message


class AmbiguousTask(HistoryError):
    """A bare task id that tasks of several frameworks use (task ids are scoped per framework)."""

    def __init__(self, task_id: str, framework_ids: list[str]) -> None:
        super().__init__(f"task id {task_id} is used by {len(framework_ids)} frameworks "
                         f"({', '.join(framework_ids)}); name one as FRAMEWORK_ID/{task_id}")
        self.task_id = task_id
        self.framework_ids = framework_ids

    def domain_error(self) -> Exception:
        return InvalidRequest(str(self))


class ReplayError(HistoryError):
    """The recorded history does not replay: unknown event type, corrupt payload or a divergence."""


class EventFileError(HistoryError):
    """A path that is not a readable Tessera event log."""


# ---- the port this module reads --------------------------------------------------------------------
class HistorySource(Protocol):
    """What history needs from an event store; `EventStore` and `EventFile` both provide it."""

    def first_seq(self) -> int: ...

    def last_seq(self) -> int: ...

    def list(
        self, from_seq: int = 1, limit: int = 100, flt: EventFilter = ..., descending: bool = False
    ) -> builtins.list[EventRecord]: ...

    def nearest_snapshot(self, at_or_before_seq: int) -> tuple[int, bytes] | None: ...

    def gaps(self) -> builtins.list[tuple[int, int]]: ...


class SnapshotSink(Protocol):
    def put_snapshot(self, seq: int, blob: bytes) -> None: ...


_ALL = EventFilter()


# ---- JSON payload -> core values (the inverse of codec.to_jsonable) --------------------------------
_Decoder = Callable[[Any, str], Any]


class _PayloadError(ValueError):
    pass


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _resources(value: Any, where: str) -> Resources:
    if not isinstance(value, list):
        raise _PayloadError(f"{where}: expected a list of resources")
    items = []
    for r in value:
        if not isinstance(r, dict) or not isinstance(r.get("name"), str):
            raise _PayloadError(f"{where}: malformed resource {r!r}")
        ranges = tuple((int(b), int(e)) for b, e in r.get("ranges", ()))
        items.append((r["name"], r.get("role", ""), float(r.get("scalar", 0.0)), ranges))
    try:
        return Resources.from_items(items)
    except TesseraError as exc:
        raise _PayloadError(f"{where}: {exc}") from exc


def _labels(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = [tuple(p) for p in value]
    else:
        raise _PayloadError(f"{where}: expected an object of labels")
    if not all(len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], str) for p in pairs):
        raise _PayloadError(f"{where}: labels must map strings to strings")
    return tuple((k, v) for k, v in pairs)


def _scalar(kind: type) -> _Decoder:
    def decode(value: Any, where: str) -> Any:
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _PayloadError(f"{where}: expected a number, got {value!r}")
            return float(value)
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise _PayloadError(f"{where}: expected an integer, got {value!r}")
        if kind is not int and not isinstance(value, kind):
            raise _PayloadError(f"{where}: expected {kind.__name__}, got {value!r}")
        return value

    return decode


def _decoder_for(tp: Any) -> _Decoder:
    tp, optional = _unwrap_optional(tp)
    inner = _plain_decoder(tp)
    if not optional:
        return inner
    return lambda value, where: None if value is None else inner(value, where)


_LABELS = tuple[tuple[str, str], ...]


def _plain_decoder(tp: Any) -> _Decoder:
    if tp is Resources:
        return _resources
    if tp == _LABELS:
        return _labels
    if typing.get_origin(tp) is tuple:
        item = _decoder_for(typing.get_args(tp)[0])

        def decode_tuple(value: Any, where: str) -> Any:
            if not isinstance(value, list):
                raise _PayloadError(f"{where}: expected a list")
            return tuple(item(v, where) for v in value)

        return decode_tuple
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        enum_cls = tp

        def decode_enum(value: Any, where: str) -> Any:
            try:
                return enum_cls[value] if isinstance(value, str) else enum_cls(value)
            except (KeyError, ValueError) as exc:
                raise _PayloadError(f"{where}: unknown {enum_cls.__name__} {value!r}") from exc

        return decode_enum
    if dataclasses.is_dataclass(tp):
        cls = typing.cast(type, tp)
        return lambda value, where: from_jsonable(value, cls, where)
    if tp in (str, int, float, bool):
        return _scalar(tp)
    if tp is bytes:
        # to_jsonable stores bytes as UTF-8 text (undecodable bytes replaced): exact for text, lossy
        # otherwise, and replay can only be as exact as the payload.
        def decode_bytes(value: Any, where: str) -> Any:
            if not isinstance(value, str):
                raise _PayloadError(f"{where}: expected text, got {value!r}")
            return value.encode("utf-8")

        return decode_bytes
    raise TypeError(f"no JSON decoder for {tp!r}")


@cache
def _plan(cls: type) -> tuple[tuple[str, _Decoder, bool], ...]:
    hints = typing.get_type_hints(cls)
    return tuple(
        (f.name, _decoder_for(hints[f.name]),
         f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        for f in dataclasses.fields(cls)
    )


def from_jsonable(data: Any, cls: type[Any], where: str = "") -> Any:
    """The core dataclass `cls` from its `to_jsonable` form; raises ValueError on malformed data.

    Generic over the dataclasses like the codec: each field is decoded from its type hint. A field
    missing from the data takes its default (a payload written before the field existed); keys the
    dataclass does not have are ignored, as protobuf ignores unknown fields.
    """
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise _PayloadError(f"{where}: expected an object, got {type(data).__name__}")
    kwargs: dict[str, Any] = {}
    for name, decode, required in _plan(typing.cast(Any, cls)):
        if name in data:
            kwargs[name] = decode(data[name], f"{where}.{name}")
        elif required:
            raise _PayloadError(f"{where}: missing field {name}")
    return cls(**kwargs)


_EVENT_CLASSES: dict[str, type] = {cls.__name__: cls for cls in (*ev.EVENT_FIELDS, ev.UnknownEvent)}


def event_from_record(record: EventRecord) -> Any:
    """The core event a record stores; `ReplayError` when it cannot be decoded."""
    cls = _EVENT_CLASSES.get(record.type)
    if cls is None:
        raise ReplayError(f"event {record.seq} has type {record.type!r}, unknown to this version of "
                          "tessera; use the version of the masters that wrote it")
    try:
        return from_jsonable(json.loads(record.payload), cls)
    except (ValueError, TypeError) as exc:
        raise ReplayError(f"event {record.seq} ({record.type}) has a payload that does not decode: {exc}") from exc


# ---- records -> entries -> state -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RecordedEntry:
    """The recorded part of one committed entry: its events and where they are in the log."""

    first_seq: int
    last_seq: int
    raft_index: int
    term: int
    time: float
    request_id: str
    records: tuple[EventRecord, ...]

    @property
    def rejected(self) -> bool:
        """A rejected entry records exactly one `Rejected` event (decide never proposes one)."""
        return len(self.records) == 1 and self.records[0].type == "Rejected"


def entries_from_records(records: Iterable[EventRecord]) -> Iterator[RecordedEntry]:
    """Group records (in seq order) into the entries that recorded them.

    A new entry starts at position 0, and also whenever the entry's own fields change (defensive: a
    hole in the records must not glue two entries together).
    """
    group: list[EventRecord] = []
    for r in records:
        if group:
            head = group[-1]
            if (r.position == 0 or r.seq != head.seq + 1 or r.position != head.position + 1
                    or (r.raft_index, r.request_id, r.term, r.time)
                    != (head.raft_index, head.request_id, head.term, head.time)):
                yield _entry(group)
                group = []
        group.append(r)
    if group:
        yield _entry(group)


def _entry(group: list[EventRecord]) -> RecordedEntry:
    head = group[0]
    return RecordedEntry(head.seq, group[-1].seq, head.raft_index, head.term, head.time, head.request_id,
                         tuple(group))


def _replay_rejection(state: ClusterState, entry: RecordedEntry) -> None:
    """What `apply` did for a rejected entry: one recorded `Rejected`, its request id remembered."""
    rejected = event_from_record(entry.records[0])
    state.seq += 1
    state.time = float(entry.time)
    state.event_counts["Rejected"] = state.event_counts.get("Rejected", 0) + 1
    rid = entry.request_id
    # apply remembers the request id of a rejection only when the id itself was valid
    if rid and len(rid) <= MAX_ID_LENGTH:
        state.requests[rid] = ("rejected", state.seq, state.seq, rejected.code, rejected.reason)
        while len(state.requests) > max(state.request_limit, 0):
            state.requests.popitem(last=False)


def replay_entry(state: ClusterState, entry: RecordedEntry) -> None:
    """Apply one recorded entry to `state`; `ReplayError` when the outcome differs from the record."""
    if entry.first_seq != state.seq + 1:
        raise ReplayError(f"event {entry.first_seq} does not follow the state's last event {state.seq}")
    if entry.records[0].position != 0:
        raise ReplayError(f"event {entry.first_seq} is not the first event of its entry (position "
                          f"{entry.records[0].position}); the log or the snapshot before it is damaged")
    if entry.rejected:
        _replay_rejection(state, entry)
        return
    events = tuple(event_from_record(r) for r in entry.records)
    result = apply(state, ev.Entry(term=entry.term, leader="", time=entry.time, request_id=entry.request_id,
                                   events=events))
    if result.outcome != "applied" or (result.first_seq, result.last_seq) != (entry.first_seq, entry.last_seq):
        raise ReplayError(
            f"replaying events {entry.first_seq}..{entry.last_seq} gave {result.outcome} "
            f"{result.first_seq}..{result.last_seq} ({result.reason or 'no reason'}); "
            "the event log does not match what the masters applied")


def replay_records(state: ClusterState, records: Iterable[EventRecord]) -> ClusterState:
    """Apply every entry the records hold, in order, to `state` (mutated and returned)."""
    for entry in entries_from_records(records):
        replay_entry(state, entry)
    return state


# ---- snapshots -----------------------------------------------------------------------------------
_MAGIC = b"TSNAP"
_FORMAT = 4  # zlib(pickle(ClusterState)), tasks keyed by TaskKey(framework_id, task_id) (3: by task id),
#             requests as plain `Remembered` tuples (2: as ApplyResult); another format or layout is skipped,
#             never half-loaded


@cache
def _layout() -> bytes:
    """A hash of the layout of every class a snapshot holds: another layout, another hash."""
    parts = []
    for cls in (ClusterState, AgentRecord, FrameworkRecord, TaskRecord, ApplyResult, Offer, RoleInfo,
                Resources, *_value_classes()):
        parts.append(cls.__name__ + ":" + ",".join(f.name for f in dataclasses.fields(cls)))
    return hashlib.sha256("|".join(parts).encode()).digest()[:16]


def _value_classes() -> tuple[type, ...]:
    from control_plane.core import values

    return tuple(v for v in vars(values).values() if dataclasses.is_dataclass(v) and isinstance(v, type))


def encode_snapshot(state: ClusterState) -> bytes:
    """Serialize a state for `put_snapshot`: a versioned header, then the pickled state compressed
    (zlib level 1: about 6x smaller for ~15 ms on a 3 MB state, which is mostly de-dup memories)."""
    return encode_pickled(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))


def encode_pickled(raw: bytes) -> bytes:
    """`encode_snapshot` of a state already pickled (with the highest protocol)."""
    return _MAGIC + bytes([_FORMAT]) + _layout() + zlib.compress(raw, 1)


_ALLOWED_MODULES = re.compile(r"^control_plane\.core(\.[a-z_]+)?\Z")
_ALLOWED_GLOBALS = {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
                    ("copyreg", "_reconstructor"), ("builtins", "object"), ("builtins", "getattr")}


class _CoreUnpickler(pickle.Unpickler):
    """Admits only the core's own classes and a few containers: a snapshot read from a file that came
    from elsewhere cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS or (_ALLOWED_MODULES.match(module) and not name.startswith("_")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a state snapshot")


def decode_snapshot(blob: bytes) -> ClusterState | None:
    """The state a snapshot holds, or None when it was written by another layout or is damaged."""
    head = len(_MAGIC) + 1 + 16
    if len(blob) < head or not blob.startswith(_MAGIC) or blob[len(_MAGIC)] != _FORMAT:
        return None
    if blob[len(_MAGIC) + 1: head] != _layout():
        return None
    try:
        state = _CoreUnpickler(io.BytesIO(zlib.decompress(blob[head:]))).load()
    except Exception as exc:  # noqa: BLE001 - any damage means "not usable", replay from earlier instead
        log.warning("ignoring a state snapshot that does not load: %r", exc)
        return None
    return state if isinstance(state, ClusterState) else None


# ---- points in history ---------------------------------------------------------------------------
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
    snap = source.nearest_snapshot(_NO_LIMIT)
    return max(source.last_seq(), snap[0] if snap is not None else 0)


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
    try:
        found = source.list(from_seq=max(last, 1), limit=1, flt=EventFilter(until_time=math.nextafter(t, math.inf)),
                            descending=True)
    except HistoryPruned as exc:  # only when everything was pruned
        raise HistoryUnavailable(str(exc), exc.first_kept, pruned=True) from exc
    if not found:
        first = source.list(from_seq=source.first_seq(), limit=1)
        if first:
            raise PointOutOfRange(f"no event at or before {format_time(t)}: this log starts at "
                                  f"{format_time(first[0].time)} (index {first[0].seq})")
        raise PointOutOfRange(f"no event at or before {format_time(t)}: this log holds no event")
    return found[0].seq


# ---- rebuilding ------------------------------------------------------------------------------------
@dataclass
class StateAt:
    """A rebuilt state and how it was obtained."""

    requested: int  # the index asked for (or resolved from a time)
    state: ClusterState  # its `seq` is the last event of the entry holding `requested`
    snapshot_seq: int  # the snapshot replay started from (0: from the empty state)
    replayed: int  # events replayed on top of it

    @property
    def index(self) -> int:
        return self.state.seq


def _start(source: HistorySource, target: int) -> tuple[ClusterState, int]:
    """The state to replay from for `target`: the nearest usable snapshot, or the empty state."""
    at = target
    while True:
        snap = source.nearest_snapshot(at)
        if snap is None:
            return ClusterState(), 0
        seq, blob = snap
        state = decode_snapshot(blob)
        if state is not None and state.seq == seq:
            return state, seq
        log.info("skipping the snapshot at %d: written by another version of tessera or damaged", seq)
        if seq <= 0:
            return ClusterState(), 0
        at = seq - 1


def _first_available(source: HistorySource) -> int:
    """The lowest index whose state can be rebuilt: the first kept event's entry, or a snapshot."""
    first = source.first_seq()
    if first <= 1:
        return 0
    snap = source.nearest_snapshot(first - 1)
    return snap[0] if snap is not None and snap[0] >= first - 1 else 0


def rebuild(source: HistorySource, target: int, *, sink: SnapshotSink | None = None,
            every: int = DEFAULT_SNAPSHOT_EVERY, on_page: Callable[[int, int], None] | None = None) -> StateAt:
    """The state after the entry that recorded event `target` (the empty state for 0).

    Replays from the nearest usable snapshot. With a `sink`, a snapshot is stored whenever the replay
    crosses a multiple of `every` events, so the next rebuild near here is short. `on_page(seq,
    target)` is called after each page of records (progress bars, pacing a background thread).
    """
    last = known_last(source)
    if target < 0 or target > last:
        raise PointOutOfRange(f"index {target} is beyond the last event of this log ({last})")
    state, snap_seq = _start(source, target)
    if snap_seq == target:
        return StateAt(target, state, snap_seq, 0)
    first = source.first_seq()
    if snap_seq + 1 < first:
        available = _first_available(source)
        where = f"; the earliest state available is at index {available}" if available else ""
        raise HistoryUnavailable(f"history before index {first} was pruned and no snapshot covers index "
                                 f"{target}{where}", available, pruned=True)
    replayed = 0
    cursor = snap_seq + 1
    last_bucket = snap_seq // every if every > 0 else 0
    pending: list[EventRecord] = []  # records of an entry not complete yet
    done = False
    while not done:
        try:
            page = source.list(from_seq=cursor, limit=PAGE)
        except HistoryPruned as exc:
            raise HistoryUnavailable(f"history before index {exc.first_kept} was pruned while replaying",
                                     exc.first_kept, pruned=True) from exc
        if not page:
            done = True
        for r in page:
            expected = (pending[-1].seq if pending else state.seq) + 1
            if r.seq != expected:
                raise HistoryUnavailable(
                    f"events {expected}..{r.seq - 1} are missing from this log (the master installed a Raft "
                    "snapshot or could not write them); ask another master")
            if r.position == 0 and pending:
                if pending[-1].seq >= target:
                    done = True
                    break
                for entry in entries_from_records(pending):
                    replay_entry(state, entry)
                replayed += len(pending)
                pending = []
                if sink is not None and every > 0 and state.seq // every > last_bucket:
                    last_bucket = state.seq // every
                    sink.put_snapshot(state.seq, encode_snapshot(state))
            pending.append(r)
        if page:
            cursor = page[-1].seq + 1
            if on_page is not None:
                on_page(state.seq, target)
    if pending:
        if pending[-1].seq < target:
            raise HistoryUnavailable(f"events {pending[-1].seq + 1}..{target} are missing from this log")
        for entry in entries_from_records(pending):
            replay_entry(state, entry)
        replayed += len(pending)
    elif state.seq < target:
        raise HistoryUnavailable(f"events {state.seq + 1}..{target} are missing from this log")
    return StateAt(target, state, snap_seq, replayed)


def state_at(source: HistorySource, point: Point, now: float, *, sink: SnapshotSink | None = None,
             every: int = DEFAULT_SNAPSHOT_EVERY) -> StateAt:
    """`rebuild` at the index a point names (see `resolve_point`)."""
    return rebuild(source, resolve_point(source, point, now), sink=sink, every=every)


# ---- diff ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FieldChange:
    field: str
    before: str
    after: str


@dataclass(frozen=True, slots=True)
class Change:
    """One thing that differs: kind is cluster, agent, framework, task, role or offer."""

    kind: str
    id: str
    change: str  # "added", "removed" or "changed"
    fields: tuple[FieldChange, ...] = ()


@dataclass(frozen=True, slots=True)
class StateDiff:
    from_index: int
    to_index: int
    changes: tuple[Change, ...]

    def count(self, kind: str, change: str) -> int:
        return sum(1 for c in self.changes if c.kind == kind and c.change == change)


def _res(r: Resources) -> str:
    return str(r) if r else "-"


def _cluster_view(s: ClusterState) -> dict[str, dict[str, str]]:
    return {"": {"term": str(s.term), "leader": s.leader_name or s.leader or "-",
                 "masters": ",".join(sorted(f"{n or '?'}={g}" for n, g in s.masters.values())) or "-"}}


def _agent_view(s: ClusterState) -> dict[str, dict[str, str]]:
    return {aid: {"state": a.state.name.removeprefix("AGENT_"), "hostname": a.info.hostname,
                  "total": _res(a.total), "used": _res(a.used), "reserved": _res(a.reserved),
                  "tasks": str(len(a.task_keys)), "draining": "yes" if a.draining else "no"}
            for aid, a in s.agents.items()}


def _framework_view(s: ClusterState) -> dict[str, dict[str, str]]:
    return {fid: {"state": f.state.name.removeprefix("FRAMEWORK_"), "name": f.info.name,
                  "roles": ",".join(f.info.roles), "used": _res(f.used), "tasks": str(len(f.task_ids)),
                  "suppressed": ",".join(sorted(f.suppressed_roles)) or "-"}
            for fid, f in s.frameworks.items()}


def _task_row(t: TaskRecord, completed: bool) -> dict[str, str]:
    return {"state": t.state.name.removeprefix("TASK_"), "agent": t.agent_id, "framework": t.framework_id,
            "unacknowledged": str(len(t.unacknowledged)), "kill requested": "yes" if t.kill_requested else "no",
            "completed": "yes" if completed else "no"}


def _task_view(s: ClusterState) -> dict[str, dict[str, str]]:
    # keyed FRAMEWORK_ID/TASK_ID: task ids are scoped per framework
    view = {str(key): _task_row(t, True) for key, t in s.completed_tasks.items()}
    view.update({str(key): _task_row(t, False) for key, t in s.tasks.items()})
    return view


def _role_view(s: ClusterState) -> dict[str, dict[str, str]]:
    return {name: {"weight": f"{r.weight:g}", "guarantee": _res(r.quota_guarantee), "limit": _res(r.quota_limit)}
            for name, r in s.roles.items()}


def _offer_view(s: ClusterState) -> dict[str, dict[str, str]]:
    return {oid: {"framework": o.framework_id, "agent": o.agent_id, "role": o.role, "resources": _res(o.resources)}
            for oid, o in s.offers.items()}


_VIEWS: tuple[tuple[str, Callable[[ClusterState], dict[str, dict[str, str]]]], ...] = (
    ("cluster", _cluster_view), ("agent", _agent_view), ("framework", _framework_view), ("task", _task_view),
    ("role", _role_view), ("offer", _offer_view),
)


def diff_states(before: ClusterState, after: ClusterState) -> StateDiff:
    """What changed from `before` to `after`, kind by kind, ids sorted: added, removed, changed fields.

    Tasks include the completed ones the states remember, so a task that finished and was acknowledged
    shows as changed (to FINISHED, completed), not removed.
    """
    changes: list[Change] = []
    for kind, view in _VIEWS:
        a, b = view(before), view(after)
        for key in sorted(a.keys() | b.keys()):
            if key not in a:
                changes.append(Change(kind, key, "added", tuple(FieldChange(k, "", v) for k, v in b[key].items())))
            elif key not in b:
                changes.append(Change(kind, key, "removed",
                                      tuple(FieldChange(k, v, "") for k, v in a[key].items())))
            else:
                fields_changed = tuple(FieldChange(k, a[key][k], b[key][k]) for k in b[key] if a[key][k] != b[key][k])
                if fields_changed:
                    changes.append(Change(kind, key, "changed", fields_changed))
    return StateDiff(before.seq, after.seq, tuple(changes))


# ---- timelines -----------------------------------------------------------------------------------
KINDS = ("task", "framework", "agent")
_ID_COLUMN = {"task": "task_id", "framework": "framework_id", "agent": "agent_id"}


def split_task_ref(ident: str) -> tuple[str, str]:
    """`FRAMEWORK_ID/TASK_ID` as (framework_id, task_id); a bare task id as ("", task_id). Framework ids
    are minted by the master and never hold a '/', so the first '/' separates them (a task id may hold
    more)."""
    framework_id, sep, task_id = ident.partition("/")
    return (framework_id, task_id) if sep and framework_id and task_id else ("", ident)


def kind_filter(kind: str, ident: str) -> EventFilter:
    """The events naming `ident` as a task, framework or agent; a task as `FRAMEWORK_ID/TASK_ID` names
    that framework's task only, a bare task id the tasks of that id of every framework."""
    if kind not in _ID_COLUMN:
        raise PointOutOfRange(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
    column = _ID_COLUMN[kind]
    if column == "task_id":
        framework_id, task_id = split_task_ref(ident)
        return EventFilter(task_id=task_id, framework_id=framework_id)
    return EventFilter(framework_id=ident if column == "framework_id" else "",
                       agent_id=ident if column == "agent_id" else "")


def frameworks_naming_task(records: Iterable[EventRecord]) -> list[str]:
    """The distinct framework ids of `records` (the events of one bare task id), sorted."""
    return sorted({r.framework_id for r in records if r.framework_id})


def resolve_task(source: HistorySource, ident: str) -> tuple[str, str]:
    """(framework_id, task_id) of `FRAMEWORK_ID/TASK_ID`, or of a bare task id that one framework's
    tasks use; raises `AmbiguousTask` (listing them) when several frameworks use it. A task no event
    names comes back with framework_id "" (the caller reports it as not found)."""
    framework_id, task_id = split_task_ref(ident)
    if framework_id:
        return framework_id, task_id
    named = frameworks_naming_task(iter_records(source, EventFilter(task_id=task_id)))
    if len(named) > 1:
        raise AmbiguousTask(task_id, named)
    return (named[0] if named else ""), task_id


def detect_kinds(source: HistorySource, ident: str) -> list[str]:
    """Which kinds of id (task, framework, agent) `ident` names in this history."""
    start = source.first_seq()
    return [kind for kind in KINDS if source.list(from_seq=start, limit=1, flt=kind_filter(kind, ident))]


def iter_records(source: HistorySource, flt: EventFilter = _ALL, from_seq: int | None = None,
                 until_seq: int | None = None) -> Iterator[EventRecord]:
    """Every stored record matching `flt` from `from_seq` (the first kept by default), page by page."""
    cursor = source.first_seq() if from_seq is None else from_seq
    while True:
        page = source.list(from_seq=cursor, limit=PAGE, flt=flt)
        for r in page:
            if until_seq is not None and r.seq > until_seq:
                return
            yield r
        if len(page) < PAGE:
            return
        cursor = page[-1].seq + 1


@dataclass(frozen=True, slots=True)
class TimelineItem:
    record: EventRecord
    gap: float | None  # seconds since the previous event of the timeline; None for the first
    since_start: float  # seconds since the first event of the timeline


def timeline(records: Iterable[EventRecord]) -> Iterator[TimelineItem]:
    """Records (given in seq order), each with the time since the previous one and since the first."""
    previous: float | None = None
    start: float | None = None
    for r in records:
        if start is None:
            start = r.time
        yield TimelineItem(r, None if previous is None else r.time - previous, r.time - start)
        previous = r.time


# ---- offline: an events.db read directly, read-only --------------------------------------------------
_SELECT = "SELECT {} FROM events".format(", ".join(EVENT_COLUMNS))


class EventFile:
    """A master's `events.db` (or an export) opened read-only, for `--db` commands.

    Reads the same schema `SqliteEventStore` writes, without its writer thread and without changing
    the file (no migration, no journal mode change), so it is safe on the file of a running master.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise EventFileError(f"{self.path}: no such file")
        if not self.path.is_file():
            raise EventFileError(f"{self.path}: not a file")
        try:
            self._conn = sqlite3.connect(f"file:{self.path.resolve()}?mode=ro", uri=True, isolation_level=None,
                                         check_same_thread=False)
            columns = [row[1] for row in self._conn.execute("PRAGMA table_info(events)")]
        except sqlite3.DatabaseError as exc:
            raise EventFileError(f"{self.path}: not a readable SQLite database ({exc})") from exc
        if not columns:
            self._conn.close()
            raise EventFileError(f"{self.path}: not a Tessera event log (it has no events table)")
        missing = [c for c in EVENT_COLUMNS if c not in columns]
        if missing:
            self._conn.close()
            raise EventFileError(f"{self.path}: not a Tessera event log (its events table lacks "
                                 f"{', '.join(missing)})")
        tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        self._has_meta = "meta" in tables
        self._has_snapshots = "snapshots" in tables
        self._lock = threading.Lock()  # one connection: serialise its users

    def _query(self, sql: str, params: Sequence[object] = ()) -> builtins.list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise EventFileError(f"{self.path}: cannot read ({exc})") from exc

    def first_seq(self) -> int:
        if not self._has_meta:
            return 1
        rows = self._query("SELECT value FROM meta WHERE key = 'first_seq'")
        return int(rows[0][0]) if rows else 1

    def last_seq(self) -> int:
        (high,) = self._query("SELECT max(seq) FROM events")[0]
        return max(int(high or 0), self.first_seq() - 1)

    def count(self) -> int:
        return int(self._query("SELECT count(*) FROM events")[0][0])

    def list(self, from_seq: int = 1, limit: int = 100, flt: EventFilter = _ALL,
             descending: bool = False) -> builtins.list[EventRecord]:
        from control_plane.eventlog.sqlite import _filter_sql  # the one translation of EventFilter to SQL

        if descending and from_seq < 1:
            return []
        from_seq = max(from_seq, 1)
        first = self.first_seq()
        if from_seq < first:
            raise HistoryPruned(first)
        clauses, params = _filter_sql(flt)
        clauses.insert(0, "seq <= ?" if descending else "seq >= ?")
        params.insert(0, from_seq)
        params.append(limit)
        sql = "{} WHERE {} ORDER BY seq {} LIMIT ?".format(_SELECT, " AND ".join(clauses),
                                                            "DESC" if descending else "ASC")
        try:
            return [EventRecord(*row) for row in self._query(sql, params)]
        except TypeError as exc:
            raise EventFileError(f"{self.path}: rows do not have the event log's types ({exc})") from exc

    def get(self, seq: int) -> EventRecord | None:
        rows = self._query(f"{_SELECT} WHERE seq = ?", (seq,))
        return EventRecord(*rows[0]) if rows else None

    def gaps(self) -> builtins.list[tuple[int, int]]:
        first = self.first_seq()
        n, low, high = self._query("SELECT count(*), min(seq), max(seq) FROM events")[0]
        if n == 0 or (low == first and high - low + 1 == n):
            return []
        found: builtins.list[tuple[int, int]] = []
        if low > first:
            found.append((first, low - 1))
        found.extend(self._query(
            "SELECT seq + 1, next_seq - 1 FROM (SELECT seq, lead(seq) OVER (ORDER BY seq) AS next_seq "
            "FROM events) WHERE next_seq > seq + 1 ORDER BY seq"))
        return [(int(a), int(b)) for a, b in found]

    def nearest_snapshot(self, at_or_before_seq: int) -> tuple[int, bytes] | None:
        if not self._has_snapshots:
            return None
        rows = self._query("SELECT seq, blob FROM snapshots WHERE seq <= ? ORDER BY seq DESC LIMIT 1",
                           (at_or_before_seq,))
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else None

    def snapshots(self, from_seq: int = 0) -> builtins.list[tuple[int, bytes]]:
        if not self._has_snapshots:
            return []
        return [(int(s), bytes(b)) for s, b in self._query(
            "SELECT seq, blob FROM snapshots WHERE seq >= ? ORDER BY seq", (from_seq,))]

    def spans(self) -> builtins.list[dict[str, Any]]:
        """Every stored span as a row dict (for exports)."""
        tables = {row[0] for row in self._query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "spans" not in tables:
            return []
        columns = [row[1] for row in self._query("PRAGMA table_info(spans)")]
        if any(c not in columns for c in SPAN_COLUMNS):
            return []
        rows = self._query("SELECT {} FROM spans".format(", ".join(SPAN_COLUMNS)))
        return [dict(zip(SPAN_COLUMNS, row, strict=True)) for row in rows]

    def type_counts(self) -> dict[str, int]:
        return {t: int(n) for t, n in self._query("SELECT type, count(*) FROM events GROUP BY type ORDER BY type")}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> EventFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def export_events(dest: Path, first_seq: int, records: Iterable[EventRecord], *,
                  snapshots: Iterable[tuple[int, bytes]] = (), spans: Iterable[dict[str, Any]] = (),
                  on_batch: Callable[[int], None] | None = None, batch: int = 5_000) -> int:
    """Write `records` (and snapshots, spans) to a new SQLite file with the event log's own schema,
    through sqlite-utils. History before `first_seq` is marked as pruned, like a master's log after
    retention. The file appears at `dest` only once complete. Returns the number of events written."""
    import sqlite_utils

    from control_plane.eventlog.sqlite import MIGRATIONS

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


# ---- the imperative shell: background snapshots and retention --------------------------------------
class _Store(HistorySource, SnapshotSink, Protocol):
    def wait(self, after_seq: int, timeout: float) -> int: ...

    def flush(self, timeout: float = 5.0) -> bool: ...

    def prune(self, before_seq: int) -> int: ...


def ensure_snapshot(store: _Store, target: int, every: int = DEFAULT_SNAPSHOT_EVERY,
                    on_page: Callable[[int, int], None] | None = None) -> int:
    """Store a snapshot at the end of the entry holding `target` (and every `every` events on the way
    there). Returns the snapshot's seq."""
    snap = store.nearest_snapshot(target)
    if snap is not None and snap[0] == target and decode_snapshot(snap[1]) is not None:
        return target
    rebuilt = rebuild(store, target, sink=store, every=every, on_page=on_page)
    if rebuilt.snapshot_seq != rebuilt.index:
        store.put_snapshot(rebuilt.index, encode_snapshot(rebuilt.state))
    return rebuilt.index


class _SnapshotterStopped(Exception):
    """Raised from a rebuild's page callback to abandon it when the snapshotter stops."""


class Snapshotter:
    """Takes a state snapshot every `every` events, on its own thread.

    `observe(seq, state)` is what the Raft apply thread calls after each batch. When the batch crossed a
    multiple of `every` and `state` is given (the live state right after the entry that recorded `seq`),
    the state is pickled right there — a small state pickles in a few milliseconds (50,000 remembered
    requests: ~20 ms), far less than replaying the `every` events since the last snapshot (~17 us each)
    — and the thread compresses and stores it; crossings that come too soon after the last pickle are
    skipped (`LIVE_DUTY`). A pickle that took longer than `live_budget_s` (a big
    state: the pause is on the thread that also runs Raft elections) turns that off for the next
    `LIVE_BACKOFF` crossings; those snapshots are rebuilt from the event log instead, as when no state is
    given: the thread waits until the store holds the events, replays from the previous snapshot and
    stores the result. Crossings that arrive while a snapshot is being built are coalesced into the
    latest one, and a replay pauses after each page so that it takes at most `duty` of one core (10 % by
    default: it shares the GIL with the apply thread; at 50 % it cost the leader a fifth of its write
    throughput), so under a heavy write load replayed snapshots become rarer rather than taking the GIL
    from the apply thread.
    """

    LIVE_BACKOFF = 8
    # Live pickles take at most this share of the apply thread: under a heavy write load a crossing that
    # comes sooner after the last pickle is skipped (a 20 ms pickle: at most one a second), so snapshots
    # are then further apart than `every` events.
    LIVE_DUTY = 0.02

    def __init__(self, store: _Store, every: int = DEFAULT_SNAPSHOT_EVERY, duty: float = 0.1,
                 live_budget_s: float = 0.05) -> None:
        if every <= 0:
            raise ValueError("every must be positive")
        if not 0 < duty <= 1:
            raise ValueError("duty must be in (0, 1]")
        self.store = store
        self.every = every
        self.duty = duty
        self.live_budget_s = live_budget_s  # 0: never pickle the live state
        self._live_after = 0  # the bucket from which live pickles are tried again after a slow one
        self._next_live = 0.0  # monotonic time before which a crossing is not pickled (LIVE_DUTY)
        self._worked_since = 0.0
        self._cond = threading.Condition()
        self._wanted = 0  # the latest seq that crossed a multiple of `every`
        self._captured: tuple[int, bytes] | None = None  # (seq, pickled live state) to store
        self._bucket: int | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._halt = threading.Event()  # set by stop(): ends a paced rebuild's pause at once
        self.taken = 0  # snapshots stored, for tests and metrics
        self.captured = 0  # of which pickled from the live state
        self.pickled = 0  # live states pickled (a pickle is dropped when a later crossing overtakes it)
        self.last_error: BaseException | None = None

    def observe(self, seq: int, state: ClusterState | None = None) -> None:
        bucket = seq // self.every
        if self._bucket is None:
            self._bucket = bucket  # the first batch after start: nothing crossed yet
            return
        if bucket <= self._bucket:
            return
        self._bucket = bucket
        if state is not None and self._live_ok(bucket) and time.monotonic() < self._next_live:
            return  # pickled recently: this crossing is skipped (see LIVE_DUTY)
        try:
            raw = self._pickle_live(bucket, seq, state)
            with self._cond:
                self._wanted = max(self._wanted, seq)
                if raw is not None:
                    self._captured = (seq, raw)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="tessera-snapshotter", daemon=True)
                    self._thread.start()
                self._cond.notify()
        except Exception as exc:  # noqa: BLE001 - runs on the apply thread: log, never raise
            self.last_error = exc
            log.warning("state snapshotter not started: %r", exc)

    def _live_ok(self, bucket: int) -> bool:
        return self.live_budget_s > 0 and bucket >= self._live_after

    def _pickle_live(self, bucket: int, seq: int, state: ClusterState | None) -> bytes | None:
        if state is None or state.seq != seq or not self._live_ok(bucket):
            return None
        # CPU time of this thread: what grows with the state (wall time also counts waits for the GIL)
        started = time.thread_time()
        raw = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        took = time.thread_time() - started
        self.pickled += 1
        self._next_live = time.monotonic() + took * (1 - self.LIVE_DUTY) / self.LIVE_DUTY
        if took > self.live_budget_s:
            self._live_after = bucket + self.LIVE_BACKOFF
            log.info("pickling the state for a snapshot took %.0f ms (budget %.0f ms): the next %d snapshots "
                     "are rebuilt from the event log instead", took * 1e3, self.live_budget_s * 1e3,
                     self.LIVE_BACKOFF)
        return raw

    def restored(self, state: ClusterState) -> None:
        """A Raft snapshot was installed: when the event log lacks the history up to it, store the
        state itself, so states after it stay rebuildable (see the module docstring)."""
        try:
            if self.store.last_seq() < state.seq:
                self.store.put_snapshot(state.seq, encode_snapshot(state))
                self._bucket = state.seq // self.every
        except Exception as exc:  # noqa: BLE001 - runs on the apply thread: log, never raise
            log.warning("could not store the installed state as a snapshot: %r", exc)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking snapshots and wait (bounded) for the thread, so that nothing reaches the store
        after its owner closes it. A rebuild under way is abandoned at its next page; the snapshot it
        would have stored is taken again from the log after a restart."""
        self._halt.set()
        with self._cond:
            self._stopped = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("state snapshotter still busy after %.0f s; closing without it", timeout)

    def _pace(self, seq: int, target: int) -> None:
        worked = time.monotonic() - self._worked_since
        if self._halt.wait(worked * (1 - self.duty) / self.duty if self.duty < 1 else 0):
            raise _SnapshotterStopped
        self._worked_since = time.monotonic()

    def _run(self) -> None:
        done = 0
        while True:
            with self._cond:
                while self._wanted <= done and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                target = self._wanted
                captured, self._captured = self._captured, None
            try:
                # the store writes asynchronously: wait until it holds the target (bounded)
                if self.store.wait(after_seq=target - 1, timeout=30.0) < target:
                    continue
                if captured is not None and captured[0] == target:
                    self.store.put_snapshot(target, encode_pickled(captured[1]))
                    self.captured += 1
                else:
                    self._worked_since = time.monotonic()
                    ensure_snapshot(self.store, target, self.every, on_page=self._pace)
                self.taken += 1
                done = target
            except (EventStoreClosed, _SnapshotterStopped):
                return
            except HistoryError as exc:
                # e.g. history with a hole: nothing to build from; wait for the next crossing
                self.last_error = exc
                done = target
                log.warning("state snapshot at %d not taken: %s", target, exc)
            except Exception as exc:  # noqa: BLE001 - a bug here must not kill the master
                self.last_error = exc
                done = target
                log.exception("state snapshot at %d failed", target)


def retention_cut(source: HistorySource, keep: int) -> int:
    """The `before_seq` to prune at so that at least the last `keep` events stay and kept history
    starts at an entry boundary; 0 when nothing needs pruning."""
    if keep < 0:
        raise ValueError("keep must be >= 0")
    last, first = source.last_seq(), source.first_seq()
    oldest_kept = last - keep + 1
    if oldest_kept <= first:
        return 0
    records = source.list(from_seq=oldest_kept, limit=1)
    if not records:
        return 0
    r = records[0]
    cut = r.seq - r.position  # the start of the entry holding the oldest kept event
    return cut if cut > first else 0


class Retention:
    """Keeps at least the last `keep` events: every `interval` seconds, on its own thread, it stores a
    snapshot at the new start of history, then prunes before it (in steps of at most `step` events, so
    one prune never holds the writer long)."""

    def __init__(self, store: _Store, keep: int, *, interval: float = 60.0, step: int = 100_000,
                 every: int = DEFAULT_SNAPSHOT_EVERY) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.store, self.keep, self.interval, self.step, self.every = store, keep, interval, step, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tessera-retention", daemon=True)
        self.pruned = 0
        self.last_error: BaseException | None = None

    def start(self) -> Retention:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def run_once(self) -> int:
        """Prune what is due now; returns the number of events deleted."""
        deleted = 0
        while not self._stop.is_set():
            cut = retention_cut(self.store, self.keep)
            if cut == 0:
                break
            first = self.store.first_seq()
            if cut - first > self.step:
                records = self.store.list(from_seq=first + self.step, limit=1)
                if records:
                    cut = records[0].seq - records[0].position
                if cut <= first:
                    break
            boundary = ensure_snapshot(self.store, cut - 1, self.every)
            if boundary != cut - 1:
                raise ReplayError(f"expected an entry boundary at {cut - 1}, got {boundary}")
            if not self.store.flush(timeout=30.0):
                raise HistoryUnavailable("the event store did not store the snapshot; not pruning")
            deleted += self.store.prune(cut)
        self.pruned += deleted
        return deleted

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except EventStoreClosed:
                return
            except Exception as exc:  # noqa: BLE001 - retried next interval; logged
                self.last_error = exc
                log.warning("event log retention failed: %s", exc)


# The history-side counterpart of codec.to_jsonable for CLI --json output of diffs.
def diff_to_jsonable(diff: StateDiff) -> dict[str, Any]:
    return {"from_index": diff.from_index, "to_index": diff.to_index, "changes": [
        {"kind": c.kind, "id": c.id, "change": c.change,
         "fields": {f.field: {"before": f.before, "after": f.after} for f in c.fields}} for c in diff.changes]}

