"""The state snapshot format: a pickled `ClusterState` after an entry boundary.

A snapshot is stored with `put_snapshot(seq, blob)` (header: magic, format version and a hash of the core
record layout, so a snapshot written by another version of the code is skipped, never half-loaded;
loading uses an unpickler that only admits the core's own classes). Who takes them and when:
`tessera.control_plane.eventlog.background` (`Snapshotter`, `Retention`) and every rebuild with a sink
(`tessera.control_plane.eventlog.replay.rebuild`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import logging
import operator
import pickle
import re
import zlib
from collections import OrderedDict
from functools import cache
from typing import Any

from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.state import (
    AgentRecord,
    ApplyResult,
    ClusterState,
    FrameworkRecord,
    StateTable,
    TaskKey,
    TaskRecord,
)
from tessera.control_plane.core.values import Offer, RoleInfo, TaskInfo
from tessera.control_plane.legacy_names import current_name

log = logging.getLogger(__name__)

DEFAULT_SNAPSHOT_EVERY = 10_000

__all__ = ["DEFAULT_SNAPSHOT_EVERY", "decode_delta", "decode_snapshot", "delta_base", "encode_delta",
           "encode_pickled", "encode_snapshot"]

_MAGIC = b"TSNAP"
_FORMAT = 6  # as 7, the core's slots records and values pickled as calls of this module's `build_*` (5: as 4)
_PLAIN_FORMAT = 7  # zlib(pickle(ClusterState)), requests remembered as ints or tuples (`state.remembered`; 4:
#                    tuples only), tasks keyed by TaskKey(framework_id, task_id) (3: by task id; 2: requests as
#                    ApplyResult); another format or layout is skipped, never half-loaded. An older master
#                    skips 6 and 7 (it could not read the ints) and replays from an earlier snapshot instead.
_READ_FORMATS = frozenset({4, 5, _FORMAT, _PLAIN_FORMAT})
_DELTA_FORMAT = 8  # a delta: what changed since a full snapshot (its base), see `encode_delta`; an older master
#                   skips it as written by another version and starts from an earlier snapshot


@cache
def _layout() -> bytes:
    """A hash of the layout of every class a snapshot holds: another layout, another hash."""
    parts = []
    for cls in (ClusterState, AgentRecord, FrameworkRecord, TaskRecord, StateTable, ApplyResult, Offer, RoleInfo,
                Resources, *_value_classes()):
        parts.append(cls.__name__ + ":" + ",".join(f.name for f in dataclasses.fields(cls)))
    return hashlib.sha256("|".join(parts).encode()).digest()[:16]


def _value_classes() -> tuple[type, ...]:
    from tessera.control_plane.core import values

    return tuple(v for v in vars(values).values() if dataclasses.is_dataclass(v) and isinstance(v, type))


def encode_snapshot(state: ClusterState) -> bytes:
    """Serialize a state for `put_snapshot`: a versioned header, then the pickled state compressed
    (zlib level 1: about 6x smaller for ~15 ms on a 3 MB state, which is mostly de-dup memories). The
    core's records and values are pickled as calls of this module's builders (`_Pickler`): decoding
    then makes each with one call of C slot setters instead of a Python `__setstate__` loop."""
    out = io.BytesIO()
    _Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(state)
    return _MAGIC + bytes([_FORMAT]) + _layout() + zlib.compress(out.getbuffer(), 1)


def encode_pickled(raw: bytes) -> bytes:
    """`encode_snapshot` of a state already pickled by `pickle.dumps` (with the highest protocol: the
    Snapshotter's live pickles on the apply thread, where a plain pickle is the cheapest)."""
    return _MAGIC + bytes([_PLAIN_FORMAT]) + _layout() + zlib.compress(raw, 1)


def _slots_classes() -> tuple[type, ...]:
    """The slots dataclasses a state holds, by value: the core's records and values."""
    from tessera.control_plane.core import resources, state, values

    found: dict[type, None] = {}
    for module in (state, values, resources):
        for v in vars(module).values():
            if (isinstance(v, type) and dataclasses.is_dataclass(v) and "__slots__" in vars(v)
                    and v.__module__ == module.__name__):
                found[v] = None
    return tuple(found)


def _make_builder(cls: type) -> Any:
    """`build_<Class>(*field values)`: the instance, made through its slots' C setters (frozen or not)."""
    names = [f.name for f in dataclasses.fields(cls)]
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    for i, name in enumerate(names):
        env[f"_s{i}"] = vars(cls)[name].__set__
    args = ", ".join(f"a{i}" for i in range(len(names)))
    body = "".join(f"    _s{i}(o, a{i})\n" for i in range(len(names)))
    code = f"def build_{cls.__name__}({args}):\n    o = _new(_cls)\n{body}    return o\n"
    exec(code, env)  # noqa: S102 - generated from the class's own field names, no outside input
    fn = env[f"build_{cls.__name__}"]
    fn.__module__ = __name__
    fn.__qualname__ = fn.__name__
    return fn


_BUILDERS: dict[str, Any] = {}  # builder name -> builder (what a snapshot may call)
_REDUCE: dict[type, tuple[Any, Any]] = {}  # class -> (builder, getter of its field values as a tuple)


def _register_builders() -> None:
    for cls in _slots_classes():
        fn = _make_builder(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        getter = operator.attrgetter(*names) if len(names) > 1 else (lambda o, n=names[0]: (getattr(o, n),))
        _BUILDERS[fn.__name__] = fn
        globals()[fn.__name__] = fn
        _REDUCE[cls] = (fn, getter)


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        found = _REDUCE.get(type(obj))
        if found is None:
            return NotImplemented
        return found[0], found[1](obj)


_ALLOWED_MODULES = re.compile(r"^tessera\.control_plane\.core(\.[a-z_]+)?\Z")
_ALLOWED_GLOBALS = {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
                    ("copyreg", "_reconstructor"), ("builtins", "object"), ("builtins", "getattr")}


class _CoreUnpickler(pickle.Unpickler):
    """Admits only the core's own classes and a few containers: a snapshot read from a file that came
    from elsewhere cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        module = current_name(module)  # written before the tessera.* rename
        if module == __name__ and name in _BUILDERS:
            return _BUILDERS[name]
        if (module, name) in _ALLOWED_GLOBALS or (_ALLOWED_MODULES.match(module) and not name.startswith("_")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a state snapshot")


def decode_snapshot(blob: bytes) -> ClusterState | None:
    """The state a full snapshot holds, or None when it was written by another layout, is damaged or is a
    delta (`decode_delta`)."""
    head = len(_MAGIC) + 1 + 16
    if len(blob) < head or not blob.startswith(_MAGIC) or blob[len(_MAGIC)] not in _READ_FORMATS:
        return None
    if blob[len(_MAGIC) + 1: head] != _layout():
        return None
    try:
        state = _CoreUnpickler(io.BytesIO(zlib.decompress(blob[head:]))).load()
    except Exception as exc:  # noqa: BLE001 - any damage means "not usable", replay from earlier instead
        log.warning("ignoring a state snapshot that does not load: %r", exc)
        return None
    return state if isinstance(state, ClusterState) else None


# ---- deltas -----------------------------------------------------------------------------------------
# A delta snapshot holds a state as what changed since a full snapshot stored before it (its base): for
# each dict of the state (tasks, completed tasks, the de-dup memories, ...) the keys removed (a count
# when they are the oldest ones: the FIFO memories), the values that are not the base's own objects and
# the keys added, in order; every other field whole. Deltas are written by a replay that started from
# the base (`background.DeltaSnapshots`), so a value it did not touch is the base's object (`share_state`
# shares task records copy-on-write, containers of immutable values shallowly): only what changed is
# written. ~1/10 of a full snapshot's size 1,000 events after its base at 10,000 tasks. Reading one
# needs its base decoded (a master keeps a few, `statecache.SnapshotBases`): then starting from it costs
# a `share_state` of the base and decoding the changed records, not decoding every record.
_DELTA_HEAD = len(_MAGIC) + 1 + 16 + 8
_WHOLE, _PATCH = 0, 1


def _state_fields() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(ClusterState))


def _dict_patch(cur: dict[Any, Any], base: dict[Any, Any]) -> tuple[Any, list[Any], list[Any]] | None:
    """(removed, changed, added) turning a copy of `base` into `cur` with the same key order, or None when
    the order cannot be kept that way (a key removed and added again: then the dict is stored whole).
    `removed` is an int n when the removed keys are the first n of `base`."""
    changed: list[Any] = []
    added: list[Any] = []
    common: list[Any] = []
    for k, v in cur.items():
        bv = base.get(k, _MISSING)
        if bv is _MISSING:
            added.append((k, v))
        else:
            if added:
                return None  # a key of the base after a new one: the order would differ
            common.append(k)
            if bv is not v and bv != v:  # a record copied by the replay (or a copied container) yet equal
                changed.append((k, v))
    if len(common) == len(base):
        kept = list(base)
        removed: Any = 0
    else:
        kept = [k for k in base if k in cur]
        gone = [k for k in base if k not in cur]
        n = len(gone)
        removed = n if list(base)[:n] == gone else gone
    if kept != common:
        return None
    return removed, changed, added


_MISSING = object()


def encode_delta(state: ClusterState, base: ClusterState) -> bytes:
    """Serialize `state` as a delta from `base` (a state stored as a full snapshot at `base.seq`, which
    `state` was replayed from: see above); `decode_delta(blob, base)` gives `state` back."""
    fields: list[tuple[str, int, Any]] = []
    for name in _state_fields():
        v, b = getattr(state, name), getattr(base, name)
        patch = _dict_patch(v, b) if isinstance(v, dict) and type(v) is type(b) else None
        fields.append((name, _WHOLE, v) if patch is None else (name, _PATCH, patch))
    out = io.BytesIO()
    _DeltaPickler(out, base).dump((state.seq, fields))
    return (_MAGIC + bytes([_DELTA_FORMAT]) + _layout() + base.seq.to_bytes(8, "big")
            + zlib.compress(out.getbuffer(), 1))


class _DeltaPickler(_Pickler):
    """Writes a task's `TaskInfo` (most of a record, frozen, kept when a replay copies the record) that is
    the base's own object as a reference to the base's record: a task changed since the base (a status
    update) costs its status, not its whole record, to write and to read."""

    def __init__(self, out: io.BytesIO, base: ClusterState) -> None:
        super().__init__(out, protocol=pickle.HIGHEST_PROTOCOL)
        self._infos: dict[int, tuple[int, TaskKey]] = {}
        for table, which in ((base.tasks, 0), (base.completed_tasks, 1)):
            for key, record in table.items():
                self._infos[id(record.info)] = (which, key)

    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is TaskInfo:
            return self._infos.get(id(obj))
        return None


class _DeltaUnpickler(_CoreUnpickler):
    def __init__(self, raw: io.BytesIO, base: ClusterState) -> None:
        super().__init__(raw)
        self._tables = (base.tasks, base.completed_tasks)

    def persistent_load(self, pid: Any) -> Any:
        which, key = pid
        return self._tables[which][key].info  # KeyError: not this delta's base (refused by the caller)


def delta_base(blob: bytes) -> int | None:
    """The seq of the full snapshot a delta snapshot was written from; None for any other blob."""
    if len(blob) < _DELTA_HEAD or not blob.startswith(_MAGIC) or blob[len(_MAGIC)] != _DELTA_FORMAT:
        return None
    if blob[len(_MAGIC) + 1: len(_MAGIC) + 17] != _layout():
        return None
    return int.from_bytes(blob[len(_MAGIC) + 17: _DELTA_HEAD], "big")


def decode_delta(blob: bytes, base: ClusterState) -> ClusterState | None:
    """The state a delta snapshot holds, given its base (the state of the full snapshot at `delta_base`):
    a `share_state` copy of `base` (sharing its task records: replay must own a record before changing it,
    `statecache.TaskOwnership`) with the delta applied. None when the blob is not a delta of this layout
    from `base.seq`, or is damaged. `base` is not changed."""
    from tessera.control_plane.eventlog.statecache import share_state

    if delta_base(blob) != base.seq:
        return None
    try:
        seq, fields = _DeltaUnpickler(io.BytesIO(zlib.decompress(blob[_DELTA_HEAD:])), base).load()
        state = share_state(base)
        for name, kind, value in fields:
            if kind == _WHOLE:
                setattr(state, name, value)
                continue
            target = getattr(state, name)  # share_state's copy of the base's dict
            removed, changed, added = value
            if isinstance(removed, int):
                if isinstance(target, OrderedDict):
                    for _ in range(removed):
                        target.popitem(last=False)
                else:
                    for k in list(itertools.islice(target, removed)):
                        del target[k]
            else:
                for k in removed:
                    del target[k]
            for k, v in changed:
                target[k] = v
            for k, v in added:
                target[k] = v
    except Exception as exc:  # noqa: BLE001 - any damage means "not usable", replay from earlier instead
        log.warning("ignoring a delta state snapshot that does not load: %r", exc)
        return None
    return state if state.seq == seq else None


_register_builders()
