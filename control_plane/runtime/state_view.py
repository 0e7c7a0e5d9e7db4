"""The current state as a reader of the Operator API gets it: replicated state plus the leader's soft state.

`StateView.read(fn, consistent=...)` runs `fn(state, soft)` under the master's apply lock, where `soft`
(`SoftState`) carries what only the serving leader knows, as values: the leader and term to report, the
latest usage sample of each task, and how long ago each connected agent was last heard from. With
`consistent`, a barrier is committed first so the state is not stale. Redaction for the reader is not
decided here: `fn` (the edge's conversion) applies `core.visibility`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class SoftState:
    """`usage`: (framework id, task id) -> the task's latest usage sample (task ids are scoped per
    framework); `heartbeat_ages`: agent id -> seconds since its connected session last heard from it."""

    leader: str
    term: int
    usage: Mapping[tuple[str, str], Any] | None
    heartbeat_ages: Mapping[str, float] | None


def soft_state(duties: Any, leader: str, term: int, now: float) -> SoftState:
    """What `duties` (a `LeaderDuties`, or None on a master without them) knows at monotonic time `now`."""
    if duties is None:
        return SoftState(leader=leader, term=term, usage=None, heartbeat_ages=None)
    usage = {(u.framework_id, u.task_id): u for sample in list(duties.usage.values()) for u in sample.tasks}
    ages = {agent_id: max(0.0, now - session.last_seen) for agent_id, session in list(duties.agents.items())}
    return SoftState(leader=leader, term=term, usage=usage, heartbeat_ages=ages)


class StateView:
    def __init__(self, master: Any, duties: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.master = master
        self.duties = duties
        self._clock = clock

    def read(self, fn: Callable[[Any, SoftState], T], *, consistent: bool = False) -> T:
        if consistent:
            self.master.barrier()
        replicator = self.master.replicator

        def view(state: Any) -> T:
            # a state whose entries named no term yet reports the replicator's
            return fn(state, soft_state(self.duties, state.leader, state.term or replicator.term(), self._clock()))

        result: T = self.master.read_state(view)
        return result
