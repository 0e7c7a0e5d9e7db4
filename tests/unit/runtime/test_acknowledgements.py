"""runtime.acknowledgements: many acknowledgements in one call — unknown ones come back refused, any
other refusal fails the call, an entry not committed in time is Unavailable (send them again)."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest

from tessera.control_plane.core.errors import Conflict, InvalidRequest, NotFound, NotLeader, Unavailable
from tessera.control_plane.runtime.acknowledgements import MAX_ACKNOWLEDGEMENTS, acknowledge_many


class Master:
    commit_timeout = 0.0

    def __init__(self, outcomes: list[Any] | None, serving: bool = True) -> None:
        self.outcomes = outcomes
        self.serving = serving
        self.commands: list[Any] = []
        self.state = SimpleNamespace(frameworks={"fw-1": object()})

    def is_serving(self) -> bool:
        return self.serving

    def leader_grpc_hint(self) -> str:
        return "leader:1"

    def read_state(self, fn: Any) -> Any:
        return fn(self.state)

    def propose_each_async(self, commands: list[Any], *, traceparent: str = "") -> Future[Any]:
        self.commands.extend(commands)
        fut: Future[Any] = Future()
        if self.outcomes is not None:
            fut.set_result(self.outcomes)
        return fut  # never resolved: not committed in time


ITEMS = [("t-1", "u-1"), ("t-2", "u-2")]


def test_each_is_proposed_alone_and_unknown_ones_come_back_refused() -> None:
    master = Master([None, NotFound("no such update")])
    assert acknowledge_many(master, "fw-1", "s-1", ITEMS) == [("t-2", "u-2")]
    assert [(c.task_id, c.uuid, c.stream_id) for c in master.commands] == [("t-1", "u-1", "s-1"),
                                                                           ("t-2", "u-2", "s-1")]


def test_any_other_refusal_fails_the_call() -> None:
    with pytest.raises(Conflict):
        acknowledge_many(Master([None, Conflict("stale stream")]), "fw-1", "s-1", ITEMS)


def test_checked_before_anything_is_proposed() -> None:
    too_many = [("t", f"u-{i}") for i in range(MAX_ACKNOWLEDGEMENTS + 1)]
    for master, items, error in ((Master([]), too_many, InvalidRequest), (Master([], serving=False), ITEMS, NotLeader),
                                 (Master([]), ITEMS, NotFound)):
        framework_id = "fw-404" if error is NotFound else "fw-1"
        with pytest.raises(error):
            acknowledge_many(master, framework_id, "s-1", items)
        assert master.commands == []


def test_not_committed_in_time_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="send them again"):
        acknowledge_many(Master(None), "fw-1", "s-1", ITEMS)
