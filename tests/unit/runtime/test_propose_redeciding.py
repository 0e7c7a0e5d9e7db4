"""Master.propose_redeciding: an entry `apply` refused as stale (Conflict) is decided again, a bounded
number of times, and only the first attempt carries the caller's request id (the refusal is recorded
under it, so a retry under the same id would be answered with that refusal)."""

from __future__ import annotations

from typing import Any

import pytest

from tessera.control_plane.core import commands as cmd
from tessera.control_plane.core.errors import Conflict, NotFound
from tests.support.inprocess import InProcessMaster

pytestmark = pytest.mark.timeout(60)


def _scripted(node: InProcessMaster, conflicts: int) -> list[str]:
    """Make the first `conflicts` proposals fail with Conflict, then propose for real; returns the
    request ids each attempt carried."""
    real = node.master.propose
    seen: list[str] = []

    def propose(commands: Any, *, request_id: str = "", traceparent: str = "") -> Any:
        if not any(isinstance(c, (cmd.SetRoleWeight, cmd.DrainAgent)) for c in commands):
            return real(commands, request_id=request_id, traceparent=traceparent)  # the leader's own duties
        seen.append(request_id)
        if len(seen) <= conflicts:
            raise Conflict("stale: decided before a launch it did not cover")
        return real(commands, request_id=request_id, traceparent=traceparent)

    node.master.propose = propose  # type: ignore[method-assign]
    return seen


def test_a_stale_refusal_is_decided_again_without_the_request_id() -> None:
    with InProcessMaster() as node:
        seen = _scripted(node, conflicts=2)
        result = node.master.propose_redeciding([cmd.SetRoleWeight(role="web", weight=2.0)], request_id="op-1")
        assert result.outcome == "applied"
        assert seen == ["op-1", "", ""]
        assert node.master.read_state(lambda s: s.roles["web"].weight) == 2.0


def test_it_gives_up_after_its_attempts_with_the_conflict() -> None:
    with InProcessMaster() as node:
        seen = _scripted(node, conflicts=3)
        with pytest.raises(Conflict):
            node.master.propose_redeciding([cmd.SetRoleWeight(role="web", weight=2.0)], request_id="op-1")
        assert seen == ["op-1", "", ""]


def test_other_errors_are_not_retried() -> None:
    with InProcessMaster() as node:
        with pytest.raises(NotFound):
            node.master.propose_redeciding([cmd.DrainAgent(agent_id="agent-404")], request_id="op-2")
