"""Rebuilt states kept in memory, so time travel near a point already asked for replays a few events, not
thousands (`replay.rebuild(..., cache=...)`; one cache per master, shared by its Operator API and web UI).

Theory of operation
-------------------
The state after event `seq` never changes once the entry holding `seq` is in the log (the log is append-only;
retention removes whole old ranges, never rewrites one). So a state rebuilt once can answer every later
request for that index, and is a starting point for any later index, exactly as a stored snapshot is, but
without decoding one (~1 MB compressed pickle: hundreds of ms for 10,000 tasks).

Starting from a cached state needs a copy replay may mutate. `share_state` makes one that copies the
containers and the few agent, framework and key/value records, but shares every task record with the
state it came from (copy-on-write): before each replayed entry, `TaskOwnership.before` copies the task
records that entry's events may change (the core changes a task record only in the handlers of the
task events, which name it, and of `FrameworkRemoved`, which names its framework; any event type it does
not know makes it copy them all). The copy then costs about the copy of the request de-dup memory
(~50,000 entries), a fifth of what `clone_state` (every record copied) costs; the states kept along one
replay share every record no entry between them touched, so `diff.diff_states` compares only the rest.
A state in the cache, and one a rebuild returns, is read-only from then on: the callers convert it
(`codec.operator_api.state_at_to_proto`) or compare it (`diff.diff_states`).

A replay also keeps copies of the states it passes each time it crosses a multiple of `CHECKPOINT_EVERY`,
and of `CHECKPOINT_NEAR_EVERY` in the last `CHECKPOINT_NEAR` events before the point asked
(`checkpoint_due`), so a later point before the one asked (a slider moved back) starts near it too; they
are kept apart from the states asked for, so a long replay's checkpoints never push those out. A kept
state also answers every index inside the entry it ends (an entry is atomic: a launch of 500 tasks).

`choose_start` (pure) picks between the nearest cached state and the nearest snapshot by a cost counted
in replayed events: a snapshot costs `SNAPSHOT_DECODE_EVENTS` to decode, a cached state
`CLONE_EVENTS` to copy.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
from collections import OrderedDict
from typing import Any

from tessera.control_plane.core import events as ev
from tessera.control_plane.core.state import ClusterState, TaskKey

__all__ = ["CHECKPOINT_EVERY", "CHECKPOINT_NEAR", "CHECKPOINT_NEAR_EVERY", "CLONE_EVENTS", "DEFAULT_CACHED_STATES",
           "DEFAULT_SNAPSHOT_BASES", "DELTA_START_EVENTS", "SNAPSHOT_DECODE_EVENTS", "SnapshotBases", "StateCache", "TaskOwnership", "checkpoint_due", "choose_start", "clone_state",
           "share_state"]

DEFAULT_CACHED_STATES = 16  # ~7 MB each with 10,000 tasks (values are shared between them)
# a replay leaves a copy of its state in the cache at every multiple of CHECKPOINT_EVERY, so a later point
# between snapshots, before the one asked (a slider moved back, a diff's earlier end), starts near it
CHECKPOINT_EVERY = 1_000
# ... and, in the last CHECKPOINT_NEAR events before the point asked, at every multiple of
# CHECKPOINT_NEAR_EVERY: a slider stepping back from a point finds one at most that many events before it
CHECKPOINT_NEAR = 1_000
CHECKPOINT_NEAR_EVERY = 250
# what starting from each costs, in events replayed. Measured (2026-12-07, CPU time with the master's
# collector settings, gcpolicy.tune_gc, load ~15 on 2 cores; docs/benchmarks.md): replay 62-105 us an event,
# decoding a snapshot of 5,500 / 8,500 tasks 196 / 269 ms (format 5) and 234 / 464 ms (format 4, the
# Snapshotter's live pickles), i.e. ~2,600-7,500 events; `share_state` of a cached state 4-18 ms, i.e.
# ~60-180 events (it was ~30 ms for `clone_state`: 700)
SNAPSHOT_DECODE_EVENTS = 5_000
CLONE_EVENTS = 150
# starting from a delta snapshot whose base is decoded already (`SnapshotBases`): a `share_state` of the
# base and decoding the task records changed since it (up to a few thousand, ~23 us each)
DELTA_START_EVENTS = 500
# decoded full snapshots a master keeps as the bases of delta snapshots: ~32 MB each at 8,500 tasks
DEFAULT_SNAPSHOT_BASES = 8

_ATOMIC: frozenset[type] = frozenset({str, int, float, bool, bytes, type(None), tuple, frozenset})
_kinds: dict[type, str] = {}


def _kind(t: type) -> str:
    """How a value of type `t` is copied: "keep" (immutable), "record" (a mutable dataclass), "dict",
    "set", "list"; TypeError for a mutable type a state is not expected to hold (so a new one is noticed)."""
    known = _kinds.get(t)
    if known is not None:
        return known
    if t in _ATOMIC or issubclass(t, (tuple, frozenset, enum.Enum)):
        kind = "keep"
    elif dataclasses.is_dataclass(t):
        kind = "keep" if t.__dataclass_params__.frozen else "record"  # type: ignore[attr-defined]
    elif issubclass(t, dict):
        kind = "dict"
    elif issubclass(t, set):
        kind = "set"
    elif issubclass(t, list):
        kind = "list"
    else:
        raise TypeError(f"clone_state: a state holds a {t.__name__}, which it does not know how to copy")
    _kinds[t] = kind
    return kind


def _copy(value: Any) -> Any:
    t = type(value)
    kind = _kinds.get(t) or _kind(t)
    if kind == "keep":
        return value
    if kind == "dict":
        if not value:
            return t()
        if all((_kinds.get(type(v)) or _kind(type(v))) == "keep" for v in value.values()):
            return t(value)
        return t({k: _copy(v) for k, v in value.items()})
    if kind == "set":
        return set(value)
    if kind == "list":
        return [_copy(v) for v in value]
    # built field by field (copy.copy goes through __reduce_ex__ and the records' __getstate__: ~4x slower)
    new = object.__new__(t)
    if hasattr(value, "__dict__"):
        new.__dict__.update(value.__dict__)
    for name in _fields_of(t):
        v = getattr(value, name)
        object.__setattr__(new, name, v if (_kinds.get(type(v)) or _kind(type(v))) == "keep" else _copy(v))
    return new


_field_names: dict[type, tuple[str, ...]] = {}


def _fields_of(t: type) -> tuple[str, ...]:
    names = _field_names.get(t)
    if names is None:
        names = _field_names[t] = tuple(f.name for f in dataclasses.fields(t))
    return names


def clone_state(state: ClusterState) -> ClusterState:
    """A copy of `state` that replay may mutate without touching `state` (immutable values shared)."""
    out: ClusterState = _copy(state)
    return out


# The task records (the bulk of a state: one per task, live and completed) are shared copy-on-write by
# `share_state`: the core mutates a `TaskRecord` only in the handlers of these events, each of which
# names the task (`framework_id`, `task_id`) ...
_NAMES_ITS_TASK: frozenset[type] = frozenset({ev.TaskLaunched, ev.TaskKillRequested, ev.TaskStatusUpdated,
                                              ev.TaskStatusAcknowledged})
# ... and in the handler of `FrameworkRemoved`, which touches the tasks of the framework it names; every
# other event type leaves task records alone (tests/unit/inspect/test_statecache.py checks this table
# against the core's handlers; a type in neither set makes the replay own every record before it).
_LEAVES_TASKS: frozenset[type] = frozenset({
    ev.LeaderElected, ev.MasterAdded, ev.MasterRemoved,
    ev.AgentRegistered, ev.AgentReregistered, ev.AgentUnreachable, ev.AgentRemoved, ev.AgentDrainStarted,
    ev.AgentUndrained, ev.FrameworkSubscribed, ev.FrameworkDisconnected, ev.FrameworkSuppressed,
    ev.FrameworkRevived, ev.OfferIssued, ev.OfferAccepted, ev.OfferDeclined, ev.OfferRescinded,
    ev.RoleWeightSet, ev.QuotaSet, ev.ResourcesReserved, ev.ResourcesUnreserved, ev.FrameworkStatePut,
    ev.FrameworkStateDeleted, ev.Rejected, ev.UnknownEvent})


def share_state(state: ClusterState) -> ClusterState:
    """A copy of `state` for replay that shares its task records with it (copy-on-write): every container
    is copied, agents, frameworks and key/value tables too, but a `TaskRecord` is copied only when a replay
    is about to change it (`TaskOwnership.before`). ~1 ms for 10,000 tasks, against ~30 ms for
    `clone_state`; and states kept along one replay share every record none of its entries touched."""
    new: ClusterState = object.__new__(type(state))
    for name in _fields_of(type(state)):
        v = getattr(state, name)
        if name in _SHARED_RECORDS:
            v = type(v)(v)
        elif name in _SHALLOW:
            v = type(v)(v)
        else:
            v = v if (_kinds.get(type(v)) or _kind(type(v))) == "keep" else _copy(v)
        object.__setattr__(new, name, v)
    return new


_SHARED_RECORDS = frozenset({"tasks", "completed_tasks"})  # records shared, copied by TaskOwnership
# containers whose values are immutable by their declared types (copied without looking at each value)
_SHALLOW = frozenset({"masters", "offers", "roles", "decline_filters", "requests", "retired_offers", "event_counts"})


class TaskOwnership:
    """Which task records of a replayed state are its own (copied from the states it shares them with,
    or made by the replay), so that replay mutates a shared record never: `before(events)` copies the
    records an entry's events may change, `shared()` says a copy was just kept (a checkpoint: from then on
    both share every record again)."""

    __slots__ = ("_all", "_keys", "state")

    def __init__(self, state: ClusterState, owns_all: bool) -> None:
        self.state = state
        self._all = owns_all
        self._keys: set[TaskKey] = set()

    def shared(self) -> None:
        self._all = False
        self._keys.clear()

    def before(self, events: tuple[Any, ...]) -> None:
        """Own every task record that applying `events` (one entry) may mutate."""
        if self._all:
            return
        for e in events:
            t = type(e)
            if t in _NAMES_ITS_TASK:
                fid, tid = e.framework_id, e.task_id
                if type(fid) is not str or type(tid) is not str:
                    self._own_all()  # a malformed event: its handler refuses it, but be safe
                    return
                self._own(TaskKey(fid, tid))
            elif t is ev.FrameworkRemoved:
                fw = self.state.frameworks.get(e.framework_id) if type(e.framework_id) is str else None
                if fw is None:
                    continue
                for tid in list(fw.task_ids):
                    self._own(TaskKey(e.framework_id, tid))
            elif t not in _LEAVES_TASKS:
                self._own_all()
                return

    def _own(self, key: TaskKey) -> None:
        if key in self._keys:
            return
        self._keys.add(key)
        for table in (self.state.tasks, self.state.completed_tasks):
            record = table.get(key)
            if record is not None:
                table[key] = _copy(record)

    def _own_all(self) -> None:
        for table in (self.state.tasks, self.state.completed_tasks):
            for key, record in table.items():
                if key not in self._keys:
                    table[key] = _copy(record)
        self._all = True


def choose_start(target: int, cached: int | None, snapshot: int | None,
                 snapshot_cost: int = SNAPSHOT_DECODE_EVENTS) -> str:
    """Where a rebuild of `target` starts: "cached" (the nearest cached state, seq `cached`), "snapshot"
    (the nearest stored one, seq `snapshot`), whichever replays less counting what starting costs, or
    "empty" when there is neither (the empty state is never chosen over a snapshot: the events before
    the snapshot may be pruned); `snapshot` is at or before `target`, `cached` too or the state of the
    entry holding `target` (then it is the answer)."""
    if cached is None:
        return "empty" if snapshot is None else "snapshot"
    if snapshot is None or cached >= target:  # `target` itself: its entry's state is kept
        return "cached"
    return "cached" if CLONE_EVENTS + target - cached <= snapshot_cost + target - snapshot else "snapshot"


def checkpoint_due(seq: int, last_kept: int, target: int, every: int = CHECKPOINT_EVERY,
                   near_every: int = CHECKPOINT_NEAR_EVERY, near: int = CHECKPOINT_NEAR) -> bool:
    """Whether a replay towards `target`, now at `seq` and last kept at `last_kept` (where it started, or
    its last checkpoint), keeps a copy of its state now: when it has crossed a multiple of `every` (a
    grid, so a slider stepping back finds one at most `every` events before it), or, within `near`
    events of the target, a multiple of `near_every` (a finer grid where a slider steps back first); not
    at the target (its own state is kept anyway)."""
    if every <= 0 or seq >= target:
        return False
    if seq // every > last_kept // every:
        return True
    return 0 < near_every and target - seq <= near and seq // near_every > last_kept // near_every


class StateCache:
    """The last `size` states asked for and the last `checkpoints` states a replay passed (two tables,
    so a long replay's checkpoints never push out the states people asked for), by index, least recently
    used dropped first; thread-safe. The states it holds are never mutated: `rebuild` replays on a
    `share_state` copy of one."""

    def __init__(self, size: int = DEFAULT_CACHED_STATES, checkpoints: int | None = None,
                 bases: SnapshotBases | None = None) -> None:
        self.size = size
        # the decoded full snapshots rebuilds start from (directly, or as the bases of delta snapshots)
        self.bases = bases if bases is not None else SnapshotBases()
        self.checkpoints = size if checkpoints is None else checkpoints
        self._lock = threading.Lock()
        self._states: OrderedDict[int, ClusterState] = OrderedDict()
        self._passed: OrderedDict[int, ClusterState] = OrderedDict()
        self._entry_first: dict[int, int] = {}  # seq of a kept state -> the first event of its last entry

    def nearest(self, target: int) -> tuple[int, ClusterState] | None:
        """The cached state of `target` itself (the state after the entry holding event `target`: its seq
        may be higher, when that entry recorded several events), else the one with the highest index
        before `target` (marked as used), or None."""
        with self._lock:
            best = max((seq for table in (self._states, self._passed) for seq in table
                        if seq <= target or self._entry_first.get(seq, seq) <= target), default=None)
            if best is None:
                return None
            table = self._states if best in self._states else self._passed
            table.move_to_end(best)
            return best, table[best]

    def put(self, state: ClusterState, *, checkpoint: bool = False, entry_first: int | None = None) -> None:
        """Keep `state` (after the entry holding event `state.seq`): one asked for, or with `checkpoint`
        one a replay passed; it must not be mutated afterwards. `entry_first`: the first event of that
        entry, when known (then the state also answers for the indexes from there to `state.seq`)."""
        table, size = (self._passed, self.checkpoints) if checkpoint else (self._states, self.size)
        if size <= 0:
            return
        with self._lock:
            if entry_first is not None and entry_first < state.seq:
                self._entry_first[state.seq] = entry_first
            if checkpoint and state.seq in self._states:
                return
            self._passed.pop(state.seq, None)
            table[state.seq] = state
            table.move_to_end(state.seq)
            while len(table) > size:
                gone, _ = table.popitem(last=False)
                if gone not in self._states and gone not in self._passed:
                    self._entry_first.pop(gone, None)

    def indexes(self) -> list[int]:
        """The cached indexes: the checkpoints, then the states asked for, least recently used first."""
        with self._lock:
            return [*self._passed, *self._states]


class SnapshotBases:
    """Decoded full snapshots, by seq: the bases delta snapshots are read from (`snapshots.decode_delta`),
    kept so that starting from any delta of the same stretch costs a `share_state` of the base and the
    changed records rather than decoding every record again. At most `size` (least recently used dropped
    first; ~32 MB each at 8,500 tasks); thread-safe; the states are never mutated (a start from one replays
    on a `share_state` copy). Also remembers, per stored snapshot seq seen, the seq of its base (0: it is a
    full one), so `choose_start` can tell what starting there costs without reading the blob again. (The
    empty state, the base of the deltas before the first full snapshot, is not kept: it is made.)"""

    def __init__(self, size: int = DEFAULT_SNAPSHOT_BASES, remembered: int = 100_000) -> None:
        self.size = size
        self._remembered = remembered
        self._lock = threading.Lock()
        self._states: OrderedDict[int, ClusterState] = OrderedDict()
        self._kinds: OrderedDict[int, int] = OrderedDict()
        self.decoded = 0  # full snapshots decoded into it, for tests and metrics

    def get(self, seq: int) -> ClusterState | None:
        with self._lock:
            state = self._states.get(seq)
            if state is not None:
                self._states.move_to_end(seq)
            return state

    def nearest(self, target: int) -> tuple[int, ClusterState] | None:
        """The kept state with the highest seq at or before `target` (marked as used), or None."""
        with self._lock:
            best = max((seq for seq in self._states if seq <= target), default=None)
            if best is None:
                return None
            self._states.move_to_end(best)
            return best, self._states[best]

    def put(self, state: ClusterState) -> None:
        """Keep `state`, the decoded full snapshot at `state.seq` (never mutated from now on)."""
        if self.size <= 0:
            return
        with self._lock:
            self._states[state.seq] = state
            self._states.move_to_end(state.seq)
            while len(self._states) > self.size:
                self._states.popitem(last=False)

    def has_room(self) -> bool:
        with self._lock:
            return len(self._states) < self.size

    def offer(self, state: ClusterState) -> bool:
        """Keep `state` (a full snapshot decoded in advance, `background.DeltaSnapshots`) only if there is
        room, as the least recently used (the first dropped); whether it was kept."""
        with self._lock:
            if len(self._states) >= self.size:
                return False
            self._states[state.seq] = state
            self._states.move_to_end(state.seq, last=False)
            return True

    def note(self, seq: int, base: int | None) -> None:
        """The snapshot stored at `seq` is a delta from the full one at `base` (0: from the empty state;
        None: it is a full one)."""
        with self._lock:
            self._kinds[seq] = -1 if base is None else base
            while len(self._kinds) > self._remembered:
                self._kinds.popitem(last=False)

    def start_cost(self, seq: int) -> int | None:
        """What starting from the snapshot stored at `seq` costs, in replayed events (see `choose_start`),
        or None when it has not been read yet."""
        with self._lock:
            base = self._kinds.get(seq)
            if base is None:
                return None
            if base < 0:
                return CLONE_EVENTS if seq in self._states else SNAPSHOT_DECODE_EVENTS
            if base == 0 or base in self._states:
                return DELTA_START_EVENTS
            return SNAPSHOT_DECODE_EVENTS + DELTA_START_EVENTS

    def seqs(self) -> list[int]:
        with self._lock:
            return list(self._states)
