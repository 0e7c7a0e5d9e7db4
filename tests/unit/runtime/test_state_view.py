"""runtime.state_view: the state an Operator reader gets comes with the leader's soft state as values
(usage samples by framework and task, heartbeat ages by the injected clock)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tessera.control_plane.runtime.state_view import StateView, soft_state


class Master:
    def __init__(self) -> None:
        self.state = SimpleNamespace(leader="m1", term=0)
        self.replicator = SimpleNamespace(term=lambda: 5)
        self.barriers = 0

    def barrier(self) -> None:
        self.barriers += 1

    def read_state(self, fn: Any) -> Any:
        return fn(self.state)


def _duties() -> Any:
    task = SimpleNamespace(framework_id="fw-1", task_id="t-1")
    return SimpleNamespace(usage={"ag-1": SimpleNamespace(tasks=[task])},
                           agents={"ag-1": SimpleNamespace(last_seen=100.0), "ag-2": SimpleNamespace(last_seen=103.0)})


def test_soft_state_is_values_taken_at_the_given_time() -> None:
    soft = soft_state(_duties(), "m1", 3, now=102.0)
    assert soft.heartbeat_ages == {"ag-1": 2.0, "ag-2": 0.0}  # never negative
    assert list(soft.usage or {}) == [("fw-1", "t-1")]
    assert soft_state(None, "m1", 3, now=0.0).usage is None


def test_a_consistent_read_commits_a_barrier_first_and_an_unnamed_term_is_the_replicators() -> None:
    master = Master()
    view = StateView(master, _duties(), clock=lambda: 101.0)
    seen = view.read(lambda state, soft: (soft.leader, soft.term, soft.heartbeat_ages["ag-1"]))
    assert seen == ("m1", 5, 1.0) and master.barriers == 0
    view.read(lambda state, soft: None, consistent=True)
    assert master.barriers == 1
