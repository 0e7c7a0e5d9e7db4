"""runtime.subscriptions: Subscribe's commit, decided again when it went stale in flight (bounded), and
the disconnect the end of a stream records."""

from __future__ import annotations

from typing import Any

import pytest

from tessera.control_plane.core.commands import SubscribeFramework
from tessera.control_plane.core.errors import Conflict
from tessera.control_plane.core.values import FrameworkInfo, FrameworkState
from tessera.control_plane.runtime.subscriptions import Subscriptions
from tests.support.inprocess import InProcessMaster

pytestmark = pytest.mark.timeout(60)

INFO = FrameworkInfo(name="fw", principal="alice", roles=("default",), failover_timeout_seconds=60.0)


def _stale(node: InProcessMaster, times: int) -> list[str]:
    """The first `times` subscriptions proposed fail as stale (Conflict); returns their request ids (the
    leader's own proposals, its timers', pass untouched)."""
    real = node.master.propose
    seen: list[str] = []

    def propose(commands: Any, *, request_id: str = "", traceparent: str = "") -> Any:
        if not isinstance(commands[0], SubscribeFramework):
            return real(commands, request_id=request_id, traceparent=traceparent)
        seen.append(request_id)
        if len(seen) <= times:
            raise Conflict("stale: an offer was issued meanwhile")
        return real(commands, request_id=request_id, traceparent=traceparent)

    node.master.propose = propose  # type: ignore[method-assign]
    return seen


def test_a_subscription_that_went_stale_is_decided_again() -> None:
    with InProcessMaster(allocation=False) as node:
        seen = _stale(node, times=2)
        subscribed = Subscriptions(node.master).subscribe(INFO)
        assert seen == ["", "", ""]  # no request id: each attempt is decided anew
        fw = node.master.read_state(lambda s: s.frameworks[subscribed.framework_id])
        assert fw.stream_id == subscribed.stream_id and fw.state is FrameworkState.FRAMEWORK_CONNECTED


def test_it_gives_up_after_three_attempts_with_the_conflict() -> None:
    with InProcessMaster(allocation=False) as node:
        seen = _stale(node, times=3)
        with pytest.raises(Conflict):
            Subscriptions(node.master).subscribe(INFO)
        assert len(seen) == 3


def test_a_disconnect_starts_the_failover_timeout_and_a_refused_one_is_not_raised() -> None:
    with InProcessMaster(allocation=False) as node:
        subs = Subscriptions(node.master)
        subscribed = subs.subscribe(INFO)
        subs.disconnect("fw-404", "s-1")  # refused (an unknown framework): logged, not raised
        subs.disconnect(subscribed.framework_id, "an-old-stream")  # closing after a resubscription: a no-op
        assert node.master.read_state(lambda s: s.frameworks[subscribed.framework_id].state) \
            is FrameworkState.FRAMEWORK_CONNECTED
        subs.disconnect(subscribed.framework_id, subscribed.stream_id)
        fw = node.master.read_state(lambda s: s.frameworks[subscribed.framework_id])
        assert fw.state is FrameworkState.FRAMEWORK_DISCONNECTED and fw.failover_deadline > 0
