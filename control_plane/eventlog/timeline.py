"""Which events name one task, framework or agent, and their timeline (`tessera timeline/events`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tessera.control_plane.eventlog.errors import AmbiguousTask, PointOutOfRange
from tessera.control_plane.eventlog.records import EventFilter, EventRecord
from tessera.control_plane.eventlog.source import HistorySource, iter_records

__all__ = ["KINDS", "TimelineItem", "detect_kinds", "frameworks_naming_task", "kind_filter", "resolve_task",
           "split_task_ref", "timeline"]

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
