"""Conversion between the core's frozen dataclasses and the protobuf messages of proto/tessera/v1.

The core never sees protobuf. Every core value mirrors a message field for field (same names, same enum
numbers), so conversion is generic: for each dataclass a plan is built once from its type hints, and
`to_proto` / `from_proto` follow it. Special cases are the few types that are not plain fields:
`Resources` (a repeated `Resource`), labels (repeated `Label`), enums, optional scalars and nested values.

Input from the network goes through `from_proto`, which validates resources (negative, NaN, infinite,
malformed ranges raise `InvalidRequest`) and refuses unknown enum numbers the same way.

Also here: `entry_to_bytes` / `entry_from_bytes` (the replicated `LogEntry`), `to_jsonable` (the
payload stored in the event log) and `operation_from_proto` (a framework's offer operations). The
Operator API's records, spans, filters and state views, for the master and the CLI alike, are in
`codec.operator_api`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import operator
import types
import typing
from collections.abc import Callable
from functools import cache
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any, TypeVar

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from tessera.control_plane.core import commands as cmd
from tessera.control_plane.core import events as ev
from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import TaskInfo
from tessera.v1 import common_pb2, log_pb2, scheduler_pb2

T = TypeVar("T")

_LABELS = tuple[tuple[str, str], ...]

# ---- resources ---------------------------------------------------------------------------------


def resources_to_proto(resources: Resources, out: Any) -> None:
    """Append `resources` to a repeated `Resource` field."""
    for name, role, scalar, ranges in resources.items():
        r = out.add()
        r.name = name
        if ranges:
            for b, e in ranges:
                r.ranges.add(begin=b, end=e)
        else:
            r.scalar = scalar
        if role:
            r.reservation_role = role


def resources_from_proto(items: Any) -> Resources:
    """Validate and convert a repeated `Resource` field (raises InvalidRequest)."""
    return Resources.from_items(
        (r.name, r.reservation_role, r.scalar, tuple((x.begin, x.end) for x in r.ranges)) for r in items
    )


# ---- generic plan ------------------------------------------------------------------------------

_Encoder = Callable[[Any, Any], None]  # (value, message) -> None, sets one field
_Decoder = Callable[[Any], Any]  # message -> value of one field


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _enum_decoder(enum_cls: type[enum.IntEnum], name: str) -> Callable[[int], Any]:
    valid = {m.value for m in enum_cls}

    def decode(number: int) -> Any:
        if number not in valid:
            raise InvalidRequest(f"{name}: unknown {enum_cls.__name__} value {number}")
        return enum_cls(number)

    return decode


@cache
def _plan(cls: type) -> tuple[tuple[str, _Encoder, _Decoder], ...]:
    hints = typing.get_type_hints(cls)
    plan: list[tuple[str, _Encoder, _Decoder]] = []
    for f in dataclasses.fields(cls):
        name = f.name
        tp, optional = _unwrap_optional(hints[name])
        if f.metadata.get("wire_optional"):
            plan.append((name, *_wire_optional_codec(name, f.default)))
        else:
            plan.append((name, *_field_codec(name, tp, optional)))
    return tuple(plan)


def _wire_optional_codec(name: str, default: Any) -> tuple[_Encoder, _Decoder]:
    """A scalar `optional` on the wire whose core default is not the wire's zero (`values.WIRE_OPTIONAL`):
    always written, so a 0 stays a 0; read as the core default when the sender left it unset."""

    def enc(v: Any, m: Any) -> None:
        setattr(m, name, v)

    def dec(m: Any) -> Any:
        return getattr(m, name) if m.HasField(name) else default

    return enc, dec


def _field_codec(name: str, tp: Any, optional: bool) -> tuple[_Encoder, _Decoder]:
    if tp is Resources:

        def enc(v: Any, m: Any) -> None:
            resources_to_proto(v, getattr(m, name))

        def dec(m: Any) -> Any:
            return resources_from_proto(getattr(m, name))

        return enc, dec
    if tp == _LABELS:

        def enc(v: Any, m: Any) -> None:
            field = getattr(m, name)
            for k, val in v:
                field.add(key=k, value=val)

        def dec(m: Any) -> Any:
            return tuple((x.key, x.value) for x in getattr(m, name))

        return enc, dec
    element = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple and typing.get_args(tp) else None
    if element is not None and dataclasses.is_dataclass(element):  # a repeated message
        item = typing.cast(type, element)

        def enc(v: Any, m: Any) -> None:
            field = getattr(m, name)
            for x in v:
                _encode_into(x, field.add())

        def dec(m: Any) -> Any:
            return tuple(from_proto(x, item) for x in getattr(m, name))

        return enc, dec
    if typing.get_origin(tp) is tuple:

        def enc(v: Any, m: Any) -> None:
            getattr(m, name).extend(v)

        def dec(m: Any) -> Any:
            return tuple(getattr(m, name))

        return enc, dec
    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        decode_enum = _enum_decoder(tp, name)

        def enc(v: Any, m: Any) -> None:
            setattr(m, name, int(v))

        def dec(m: Any) -> Any:
            return decode_enum(getattr(m, name))

        return enc, dec
    if dataclasses.is_dataclass(tp) and optional:  # an optional message: None when not set
        sub = typing.cast(type, tp)

        def enc(v: Any, m: Any) -> None:
            if v is not None:
                _encode_into(v, getattr(m, name))
                getattr(m, name).SetInParent()

        def dec(m: Any) -> Any:
            return from_proto(getattr(m, name), sub) if m.HasField(name) else None

        return enc, dec
    if dataclasses.is_dataclass(tp):
        sub = typing.cast(type, tp)

        def enc(v: Any, m: Any) -> None:
            _encode_into(v, getattr(m, name))

        def dec(m: Any) -> Any:
            return from_proto(getattr(m, name), sub)

        return enc, dec
    if optional:

        def enc(v: Any, m: Any) -> None:
            if v is not None:
                setattr(m, name, v)

        def dec(m: Any) -> Any:
            return getattr(m, name) if m.HasField(name) else None

        return enc, dec

    def enc(v: Any, m: Any) -> None:
        if v:
            setattr(m, name, v)

    return enc, operator.attrgetter(name)


def _encode_into(value: Any, msg: Any) -> None:
    for name, enc, _ in _plan(type(value)):
        enc(getattr(value, name), msg)


def to_proto(value: Any, msg_cls: type[ProtoMessage]) -> Any:
    """A new `msg_cls` message holding the core `value`."""
    msg = msg_cls()
    _encode_into(value, msg)
    return msg


def from_proto(msg: Any, cls: type[T]) -> T:
    """The core value `cls` read from `msg`; raises InvalidRequest on invalid content."""
    return typing.cast(T, _decoder(cls)(msg))


@cache
def _decoder(cls: type) -> Callable[[Any], Any]:
    """One function that reads a `cls` from its message, decided once per type: when every field is a
    plain scalar, one C-level getter reads them all and they are passed positionally (an event decoded
    on every master: half the cost of a decoder per field and keyword arguments)."""
    plan = _plan(cls)
    if not all(f.init and f.kw_only is not True for f in dataclasses.fields(cls)):  # not positional
        return lambda msg: cls(**{name: dec(msg) for name, _, dec in plan})
    decoders = [dec for _, _, dec in plan]
    if decoders and all(isinstance(dec, operator.attrgetter) for dec in decoders):
        if len(plan) == 1:
            only = decoders[0]
            return lambda msg: cls(only(msg))
        every = operator.attrgetter(*[name for name, _, _ in plan])
        return lambda msg: cls(*every(msg))
    return lambda msg: cls(*[dec(msg) for dec in decoders])


# ---- events and log entries --------------------------------------------------------------------

_CLASS_BY_FIELD: dict[str, type] = {f: c for c, f in ev.EVENT_FIELDS.items()}


def event_type_name(event: object) -> str:
    return type(event).__name__


def event_to_proto(event: ev.Event, out: log_pb2.Event) -> None:
    if isinstance(event, ev.UnknownEvent):
        raise ValueError("an unknown event cannot be re-encoded")
    out.ignorable_if_unknown = False
    _encode_into(event, getattr(out, ev.EVENT_FIELDS[type(event)]))


def event_from_proto(msg: log_pb2.Event) -> ev.Event:
    kind = msg.WhichOneof("kind")
    decode = _EVENT_DECODERS.get(kind)  # type: ignore[arg-type]
    if decode is None:
        if kind is None:
            return ev.UnknownEvent(type_number=0, ignorable=msg.ignorable_if_unknown)
        decode = _EVENT_DECODERS[kind] = _decoder(_CLASS_BY_FIELD[kind])
    return typing.cast(ev.Event, decode(getattr(msg, kind)))


# The decoder of each event kind (the oneof field's name), looked up once per event on every follower:
# one dict lookup instead of the class lookup and the cached `_decoder` call.
_EVENT_DECODERS: dict[str, Callable[[Any], Any]] = {}


def entry_to_proto(entry: ev.Entry) -> log_pb2.LogEntry:
    msg = log_pb2.LogEntry(
        term=entry.term, leader=entry.leader, time=entry.time,
        traceparent=entry.traceparent, request_id=entry.request_id,
    )
    for event in entry.events:
        event_to_proto(event, msg.events.add())
    return msg


def entry_to_bytes(entry: ev.Entry) -> bytes:
    return entry_to_proto(entry).SerializeToString()


def entry_from_bytes(data: bytes) -> ev.Entry:
    """Decode a replicated entry. Raises ValueError on bytes that are not a LogEntry."""
    try:
        msg = _parse_entry(data)
    except DecodeError as exc:
        raise ValueError(f"not a LogEntry: {exc}") from exc
    events = msg.events
    # Most entries hold one event: indexing the repeated field makes one wrapper, iterating it makes an
    # iterator too (with the dict of decoders: 2.5 -> 1.9 us per entry, on every follower).
    return ev.Entry(  # positional: term, leader, time, request_id, traceparent, events
        msg.term, msg.leader, msg.time, msg.request_id, msg.traceparent,
        (event_from_proto(events[0]),) if len(events) == 1 else tuple([event_from_proto(e) for e in events]),
    )


_parse_entry = log_pb2.LogEntry.FromString


# ---- JSON (event log payloads, CLI --json) ------------------------------------------------------


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _no_default(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
# The C encoder made once: `JSONEncoder.encode` builds a new one on every call, which is most of the
# cost of a small object (an event payload: 0.6 us instead of 1.5 us, on every master, per event).
_c_encoder = (c_make_encoder(None, _no_default, encode_basestring, None, ":", ",", False, False, True)
              if c_make_encoder is not None else None)


def json_text(value: Any) -> str:
    """Compact JSON text (`,`/`:` separators, UTF-8 kept) of plain JSON values, as `to_jsonable` makes."""
    if _c_encoder is not None and type(value) is dict:
        return "".join(_c_encoder(value, 0))
    return _compact(value)


def event_json(event: ev.Event) -> str:
    """`json_text(to_jsonable(event))`, the event log's payload of `event`, written field by field when
    every field is a plain JSON scalar (most events): no dict is built and no encoder walks it (0.6
    instead of 1.4 us per event, on every master). Other events take `to_jsonable`."""
    plan = _event_json_plans.get(type(event))
    if plan is None:
        plan = _event_json_plans[type(event)] = _event_json_plan(type(event))
    prefixes, values = plan
    if not prefixes:
        return json_text(to_jsonable(event))
    parts = []
    for prefix, value in zip(prefixes, values(event), strict=True):
        encode = _SCALAR_JSON.get(type(value))
        if encode is None:  # a nested value: the general path
            return json_text(to_jsonable(event))
        parts.append(prefix)
        parts.append(encode(value))
    parts.append("}")
    return "".join(parts)


def _float_json(value: float) -> str:
    # what the C encoder writes (allow_nan): repr, or the JavaScript names of the non-finite values
    if value != value:
        return "NaN"
    if value == _INFINITY:
        return "Infinity"
    if value == -_INFINITY:
        return "-Infinity"
    return _float_repr(value)


_INFINITY = float("inf")
_float_repr = float.__repr__
# exact types only: an IntEnum, a str subclass ... take to_jsonable's path
_SCALAR_JSON: dict[type, Callable[[Any], str]] = {
    str: encode_basestring, float: _float_json, int: int.__repr__,
    bool: lambda v: "true" if v else "false", type(None): lambda v: "null",
}
_event_json_plans: dict[type, tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]] = {}


def _event_json_plan(cls: type) -> tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]:
    """The JSON text before each field's value (`{"name":`, `,"name":` ...) and a getter of the values;
    no prefixes for a type the general path must encode (not a dataclass, or one without fields)."""
    plan = _json_plan(cls)
    if plan is None or not plan[0] or isinstance(cls, enum.EnumMeta) or issubclass(cls, Resources):
        return (), lambda v: ()
    names, values = plan
    prefixes = tuple(("{" if i == 0 else ",") + encode_basestring(name) + ":" for i, name in enumerate(names))
    return prefixes, values


def to_jsonable(value: Any) -> Any:
    """Plain JSON types for any core value: dataclasses become objects, enums their names,
    resources a list of {name, role?, scalar | ranges}, labels an object."""
    if type(value) in _PLAIN:  # most fields: checked first, this runs for every event on every master
        return value
    if isinstance(value, Resources):
        out = []
        for name, role, scalar, ranges in value.items():
            item: dict[str, Any] = {"name": name}
            if role:
                item["role"] = role
            if ranges:
                item["ranges"] = [[b, e] for b, e in ranges]
            else:
                item["scalar"] = scalar
            out.append(item)
        return out
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    plan = _json_plan(type(value))
    if plan is not None:
        names, values = plan
        return {name: v if type(v) in _PLAIN else _json_field(v) for name, v in zip(names, values(value), strict=True)}
    if isinstance(value, tuple):
        return [to_jsonable(v) for v in value]
    return value


@cache
def _json_plan(cls: type) -> tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]] | None:
    """A dataclass type's field names and one C-level getter of all their values (None otherwise)."""
    names = _field_names(cls)
    if names is None:
        return None
    if len(names) == 1:
        one = operator.attrgetter(names[0])
        return names, lambda v: (one(v),)
    return names, operator.attrgetter(*names) if names else (lambda v: ())


@cache
def _field_names(cls: type) -> tuple[str, ...] | None:
    """Field names of a dataclass type (None for anything else), computed once per type."""
    if dataclasses.is_dataclass(cls):
        return tuple(f.name for f in dataclasses.fields(cls))
    return None


def _json_field(value: Any) -> Any:
    if type(value) in _PLAIN:
        return value
    if isinstance(value, tuple) and value and all(
        isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in value
    ):
        return {k: v for k, v in value}
    return to_jsonable(value)


# ---- resources text helpers shared by CLI and API ------------------------------------------------


def resource_list(items: list[tuple[str, float]]) -> list[common_pb2.Resource]:
    return [common_pb2.Resource(name=n, scalar=v) for n, v in items]



# ---- scheduler operations ----------------------------------------------------------------------

_OPERATION_TYPES = {
    scheduler_pb2.Operation.LAUNCH: "LAUNCH",
    scheduler_pb2.Operation.RESERVE: "RESERVE",
    scheduler_pb2.Operation.UNRESERVE: "UNRESERVE",
}


def operation_from_proto(op: scheduler_pb2.Operation) -> cmd.Operation:
    """A framework's offer operation as a command's (raises InvalidRequest)."""
    kind = _OPERATION_TYPES.get(op.type)
    if kind is None:
        raise InvalidRequest(f"operations[].type: unknown operation type {op.type}")
    return cmd.Operation(
        type=kind,  # type: ignore[arg-type]
        tasks=tuple(from_proto(t, TaskInfo) for t in op.tasks),
        resources=resources_from_proto(op.resources),
    )
