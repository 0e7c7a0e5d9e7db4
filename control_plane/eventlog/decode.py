"""Recorded event payloads back into core values: the inverse of `codec.to_jsonable`.

The event log stores each applied event as JSON; `event_from_record` turns one record back into the core
dataclass `apply` recorded (`ReplayError` when it cannot: an unknown event type from a newer version or
a corrupt payload).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any

from tessera.control_plane.core import events as ev
from tessera.control_plane.core.errors import TesseraError
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.eventlog.errors import ReplayError
from tessera.control_plane.eventlog.records import EventRecord

__all__ = ["event_from_record", "from_jsonable"]

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
