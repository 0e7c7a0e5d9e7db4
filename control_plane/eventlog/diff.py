"""What changed between two cluster states, as rows an operator reads (`tessera state --diff`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.state import ClusterState, TaskKey, TaskRecord

__all__ = ["Change", "Changes", "FieldChange", "StateDiff", "diff_states", "diff_to_jsonable"]


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


# a task that differs, found but not written out yet: its id as shown, how it changed, its key
_TaskEntry = tuple[str, str, TaskKey]


class Changes(Sequence[Change]):
    """The changes of a diff, in order (kind by kind, ids sorted), with the task rows written only when
    read: a diff between states far apart changes thousands of tasks, and a page of it (the web UI's
    `/api/v1/diff`, 100 rows) must not write them all. Equal to any sequence of the same changes."""

    __slots__ = ("_after", "_before", "_head", "_tail", "_tasks")

    def __init__(self, head: Sequence[Change], tasks: Sequence[_TaskEntry], tail: Sequence[Change],
                 before: ClusterState | None = None, after: ClusterState | None = None) -> None:
        self._head, self._tasks, self._tail = tuple(head), tuple(tasks), tuple(tail)
        self._before, self._after = before, after

    def __len__(self) -> int:
        return len(self._head) + len(self._tasks) + len(self._tail)

    @overload
    def __getitem__(self, i: int) -> Change: ...

    @overload
    def __getitem__(self, i: slice) -> tuple[Change, ...]: ...

    def __getitem__(self, i: int | slice) -> Change | tuple[Change, ...]:
        if isinstance(i, slice):
            return tuple(self._at(j) for j in range(*i.indices(len(self))))
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("change index out of range")
        return self._at(i)

    def _at(self, i: int) -> Change:
        if i < len(self._head):
            return self._head[i]
        i -= len(self._head)
        if i < len(self._tasks):
            return self._task_change(*self._tasks[i])
        return self._tail[i - len(self._tasks)]

    def _task_change(self, ident: str, change: str, key: TaskKey) -> Change:
        assert self._before is not None and self._after is not None
        if change == "added":
            return Change("task", ident, change, tuple(FieldChange(k, "", v) for k, v in
                                                       _task_row(_facts_of(self._after, key)).items()))
        if change == "removed":
            return Change("task", ident, change, tuple(FieldChange(k, v, "") for k, v in
                                                       _task_row(_facts_of(self._before, key)).items()))
        was, now = _task_row(_facts_of(self._before, key)), _task_row(_facts_of(self._after, key))
        return Change("task", ident, change, tuple(FieldChange(k, was[k], now[k]) for k in now if was[k] != now[k]))

    def __iter__(self) -> Iterator[Change]:
        yield from self._head
        for entry in self._tasks:
            yield self._task_change(*entry)
        yield from self._tail

    def count_of(self, kind: str, change: str) -> int:
        """How many changes of `kind` are `change` (task rows are not written for it)."""
        if kind == "task":
            return sum(1 for entry in self._tasks if entry[1] == change)
        return sum(1 for c in (*self._head, *self._tail) if c.kind == kind and c.change == change)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Changes({list(self)!r})"


@dataclass(frozen=True, slots=True)
class StateDiff:
    from_index: int
    to_index: int
    changes: Sequence[Change]  # a `Changes` from `diff_states`

    def count(self, kind: str, change: str) -> int:
        if isinstance(self.changes, Changes):
            return self.changes.count_of(kind, change)
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


_TaskFacts = tuple[Any, str, str, int, bool, bool]


def _task_facts(t: TaskRecord, completed: bool) -> _TaskFacts:
    """What a task's row shows, unformatted: cheap to compare, so only changed tasks get rows written."""
    return t.state, t.agent_id, t.framework_id, len(t.unacknowledged), t.kill_requested, completed


def _task_row(facts: _TaskFacts) -> dict[str, str]:
    state, agent, framework, unacknowledged, kill_requested, completed = facts
    return {"state": state.name.removeprefix("TASK_"), "agent": agent, "framework": framework,
            "unacknowledged": str(unacknowledged), "kill requested": "yes" if kill_requested else "no",
            "completed": "yes" if completed else "no"}


def _task_view(s: ClusterState) -> dict[str, _TaskFacts]:
    # keyed FRAMEWORK_ID/TASK_ID: task ids are scoped per framework
    view = {str(key): _task_facts(t, True) for key, t in s.completed_tasks.items()}
    view.update({str(key): _task_facts(t, False) for key, t in s.tasks.items()})
    return view


def _facts_of(s: ClusterState, key: TaskKey) -> _TaskFacts:
    """The facts of the task `key` in `s`, live or completed (it is one of them)."""
    live = s.tasks.get(key)
    return _task_facts(live, False) if live is not None else _task_facts(s.completed_tasks[key], True)


def _same_row(was: TaskRecord, now: TaskRecord) -> bool:
    """Whether two records of one task, both live or both completed, show the same row (`_task_facts`
    equal), compared field by field: a diff between states of different lineages (no record shared)
    compares every task, ~10,000 of them."""
    if was.state != now.state or was.kill_requested != now.kill_requested \
            or len(was.unacknowledged) != len(now.unacknowledged):
        return False
    a, b = was.info, now.info
    return a is b or (a.agent_id == b.agent_id and a.framework_id == b.framework_id)


def _task_entries(before: ClusterState, after: ClusterState) -> list[_TaskEntry]:
    """The tasks that differ (what `_task_view` of both would show differently), sorted by id: added and
    removed ones by their keys alone, the others by their facts; their rows are written when read.

    One pass over each table. A record both states hold as the same object in the same table is the same
    row, not compared (a rebuilt state shares the records no replayed entry touched:
    `statecache.share_state`; a record the replay may change is copied first). A task's facts are those
    of its live record when it has one, else of its completed one (`_facts_of`)."""
    out: list[_TaskEntry] = []
    b_live, b_done, a_live, a_done = before.tasks, before.completed_tasks, after.tasks, after.completed_tasks
    for key, now in a_live.items():
        was = b_live.get(key)
        if was is now:
            continue
        if was is None:
            # completed before and live now: `completed` differs
            out.append((str(key), "added" if key not in b_done else "changed", key))
        elif not _same_row(was, now):
            out.append((str(key), "changed", key))
    for key, now in a_done.items():
        if key in a_live:
            continue  # its live record is its row
        was = b_live.get(key)
        if was is not None:  # live before, completed now: `completed` differs
            out.append((str(key), "changed", key))
            continue
        was = b_done.get(key)
        if was is now:
            continue
        if was is None:
            out.append((str(key), "added", key))
        elif not _same_row(was, now):
            out.append((str(key), "changed", key))
    for key in b_live:
        if key not in a_live and key not in a_done:
            out.append((str(key), "removed", key))
    for key in b_done:
        if key not in b_live and key not in a_live and key not in a_done:
            out.append((str(key), "removed", key))
    out.sort()
    return out


def _role_view(s: ClusterState) -> dict[str, dict[str, str]]:
    return {name: {"weight": f"{r.weight:g}", "guarantee": _res(r.quota_guarantee), "limit": _res(r.quota_limit)}
            for name, r in s.roles.items()}


def _offer_view(s: ClusterState) -> dict[str, dict[str, str]]:
    return {oid: {"framework": o.framework_id, "agent": o.agent_id, "role": o.role, "resources": _res(o.resources)}
            for oid, o in s.offers.items()}


def _as_row(row: Any) -> dict[str, str]:
    return row  # type: ignore[no-any-return]


# each kind: its view (id -> what its row shows, comparable) and how that becomes the row's fields
_VIEWS: tuple[tuple[str, Callable[[ClusterState], dict[str, Any]], Callable[[Any], dict[str, str]]], ...] = (
    ("cluster", _cluster_view, _as_row), ("agent", _agent_view, _as_row), ("framework", _framework_view, _as_row),
    ("task", _task_view, _task_row), ("role", _role_view, _as_row), ("offer", _offer_view, _as_row),
)


def diff_states(before: ClusterState, after: ClusterState) -> StateDiff:
    """What changed from `before` to `after`, kind by kind, ids sorted: added, removed, changed fields.

    Tasks include the completed ones the states remember, so a task that finished and was acknowledged
    shows as changed (to FINISHED, completed), not removed.
    """
    head: list[Change] = []
    changes = head
    tasks: list[_TaskEntry] = []
    tail: list[Change] = []
    for kind, view, row in _VIEWS:
        if view is _task_view:  # only the tasks that can differ; their rows are written when read
            tasks = _task_entries(before, after)
            changes = tail
            continue
        a, b = view(before), view(after)
        for key in sorted(a.keys() | b.keys()):
            if key not in a:
                changes.append(Change(kind, key, "added", tuple(FieldChange(k, "", v) for k, v in row(b[key]).items())))
            elif key not in b:
                changes.append(Change(kind, key, "removed",
                                      tuple(FieldChange(k, v, "") for k, v in row(a[key]).items())))
            elif a[key] != b[key]:
                was, now = row(a[key]), row(b[key])
                fields_changed = tuple(FieldChange(k, was[k], now[k]) for k in now if was[k] != now[k])
                if fields_changed:
                    changes.append(Change(kind, key, "changed", fields_changed))
    return StateDiff(before.seq, after.seq, Changes(head, tasks, tail, before, after))


# The history-side counterpart of codec.to_jsonable for CLI --json output of diffs.
def diff_to_jsonable(diff: StateDiff) -> dict[str, Any]:
    return {"from_index": diff.from_index, "to_index": diff.to_index, "changes": [
        {"kind": c.kind, "id": c.id, "change": c.change,
         "fields": {f.field: {"before": f.before, "after": f.after} for f in c.fields}} for c in diff.changes]}
