"""What changed between two cluster states, as rows an operator reads (`tessera state --diff`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.state import ClusterState, TaskKey, TaskRecord

__all__ = ["Change", "FieldChange", "StateDiff", "diff_states", "diff_to_jsonable"]


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


def _changed_task_keys(before: ClusterState, after: ClusterState) -> set[TaskKey]:
    """The tasks whose row may differ: all but those both states hold as the same record object in the
    same table (a rebuilt state shares the records no replayed entry touched: `statecache.share_state`;
    a record the replay may change is copied first, so the same object means the same row)."""
    candidates: set[TaskKey] = set()
    a_live, a_done = before.tasks, before.completed_tasks
    for key, record in after.tasks.items():
        if a_live.get(key) is not record:
            candidates.add(key)
    for key, record in after.completed_tasks.items():
        if key not in after.tasks and (key in a_live or a_done.get(key) is not record):
            candidates.add(key)
    b_live, b_done = after.tasks, after.completed_tasks
    candidates.update(k for k in a_live if k not in b_live and k not in b_done)
    candidates.update(k for k in a_done if k not in b_live and k not in b_done)
    return candidates


def _task_view_of(s: ClusterState, keys: set[TaskKey]) -> dict[str, _TaskFacts]:
    """`_task_view` restricted to `keys`."""
    view = {str(key): _task_facts(t, True) for key in keys if key not in s.tasks
            and (t := s.completed_tasks.get(key)) is not None}
    view.update({str(key): _task_facts(t, False) for key in keys if (t := s.tasks.get(key)) is not None})
    return view


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
    changes: list[Change] = []
    tasks = _changed_task_keys(before, after)
    for kind, view, row in _VIEWS:
        if view is _task_view:  # only the tasks that can differ (the rest give no rows)
            a, b = _task_view_of(before, tasks), _task_view_of(after, tasks)
        else:
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
    return StateDiff(before.seq, after.seq, tuple(changes))


# The history-side counterpart of codec.to_jsonable for CLI --json output of diffs.
def diff_to_jsonable(diff: StateDiff) -> dict[str, Any]:
    return {"from_index": diff.from_index, "to_index": diff.to_index, "changes": [
        {"kind": c.kind, "id": c.id, "change": c.change,
         "fields": {f.field: {"before": f.before, "after": f.after} for f in c.fields}} for c in diff.changes]}
