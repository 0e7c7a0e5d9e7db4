"""The transaction of one entry in `apply` (see `core/apply.py`): the undo log `Tx`, and the lookups and
mutations that the handlers of several topics share.

A handler (`Handler`) takes the state, its event and the entry's `Tx`; it re-checks the event against the
state, mutates only through the `Tx`, raises a domain error to refuse, and returns whether the event is
recorded (False: an idempotent repeat that changes nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from tessera.control_plane.core.errors import Conflict
from tessera.control_plane.core.state import (
    ClusterState,
    TaskKey,
    TaskRecord,
    check_text,
    compact_completed,
)
from tessera.control_plane.core.state import (
    known_agent as known_agent,  # the topic modules take their lookups from here
)
from tessera.control_plane.core.state import (
    known_framework as known_framework,
)

_MISSING: Any = object()
_ATTR, _ITEM, _ADDED, _DISCARDED = range(4)


class Tx:
    """Scratch of one entry: its time, the undo log, offer pools, post-checks, and the events recorded so
    far (`recorded`, filled by `apply`: a handler's event gets seq `first_seq + len(recorded)`)."""

    __slots__ = ("time", "log", "pools", "accepted", "post_checks", "recorded", "first_seq")

    def __init__(self, time: float, first_seq: int = 1, recorded: list[Any] | None = None) -> None:
        self.time = time
        self.log: list[tuple[int, Any, Any, Any]] = []
        self.pools: dict[tuple[str, str], list[Any]] = {}  # (fw, agent) -> [role, Resources left]
        self.accepted: dict[str, tuple[str, str]] = {}  # offer id -> (fw, agent), accepted in this entry
        self.post_checks: list[Callable[[], None]] = []
        self.recorded: list[Any] = [] if recorded is None else recorded
        self.first_seq = first_seq

    def seq(self) -> int:
        """The seq the event being applied gets when it is recorded."""
        return self.first_seq + len(self.recorded)

    def assign(self, obj: Any, name: str, value: Any) -> None:
        self.log.append((_ATTR, obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def put(self, mapping: dict[Any, Any], key: Any, value: Any) -> None:
        self.log.append((_ITEM, mapping, key, mapping.get(key, _MISSING)))
        mapping[key] = value

    def pop(self, mapping: dict[Any, Any], key: Any) -> Any:
        value = mapping.pop(key)
        self.log.append((_ITEM, mapping, key, value))
        return value

    def add(self, members: set[Any], item: Any) -> None:
        if item not in members:
            members.add(item)
            self.log.append((_ADDED, members, item, None))

    def discard(self, members: set[Any], item: Any) -> None:
        if item in members:
            members.remove(item)
            self.log.append((_DISCARDED, members, item, None))

    def rollback(self) -> None:
        for kind, target, key, old in reversed(self.log):
            if kind == _ATTR:
                setattr(target, key, old)
            elif kind == _ITEM:
                if old is _MISSING:
                    target.pop(key, None)
                else:
                    target[key] = old
            elif kind == _ADDED:
                target.discard(key)
            else:
                target.add(key)
        self.log.clear()


Handler = Callable[[ClusterState, Any, Tx], bool]


def no_offers(what: str, offer_ids: set[str]) -> None:
    if offer_ids:
        raise Conflict(f"{what} still has offers ({', '.join(sorted(offer_ids))}); rescind them first")


def drop_filters(state: ClusterState, tx: Tx, *, framework_id: str = "", agent_id: str = "") -> None:
    for key in [k for k in state.decline_filters if k[0] == framework_id or k[1] == agent_id]:
        tx.pop(state.decline_filters, key)  # dict order is insertion order: the same on every master


def complete_task(state: ClusterState, task: TaskRecord, tx: Tx) -> None:
    """A terminal task with nothing left to acknowledge leaves the live tables for `completed_tasks`."""
    key = task.key
    tx.pop(state.tasks, key)
    agent = state.agents.get(task.agent_id)
    if agent is not None:
        tx.discard(agent.task_keys, key)
    fw = state.frameworks.get(task.framework_id)
    if fw is not None:
        tx.discard(fw.task_ids, key.task_id)
    compact_completed(task)  # equal values shared with other records: only identity changes
    tx.put(state.completed_tasks, key, task)


def check_reason(value: object) -> str:
    return check_text(value, "reason")


def all_killed(state: ClusterState, keys: Iterable[TaskKey], what: str) -> None:
    """A removal or drain was decided with a kill for every live task; one without a kill was launched
    after it was decided (both in flight at once) and would be left running: decide it again."""
    for key in sorted(keys):
        task = state.tasks[key]
        if not task.terminal and not task.kill_requested:
            raise Conflict(f"task {key.task_id} of framework {key.framework_id} was launched after {what} "
                           "was decided; decide it again")
