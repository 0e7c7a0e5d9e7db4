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


def test_no_offer_is_issued_to_a_framework_while_its_resubscription_is_decided() -> None:
    """A resubscription rescinds the framework's offers when it is decided; an allocation round committed
    before its commit would leave a new one and make it stale, so offers to the framework are held for as
    long as the subscription is being decided (the rounds leave it out) and flow again afterwards."""
    from dataclasses import replace as copy_with

    from tessera.control_plane.core import commands as c
    from tessera.control_plane.core.resources import Resources
    from tessera.control_plane.core.values import AgentInfo
    from tests.support.cluster import wait_for
    from tests.support.inprocess import FAST

    quiet = copy_with(FAST, tick=60.0, allocation_interval=3600.0)  # rounds only when this test runs one
    with InProcessMaster(settings=quiet) as node:
        subs = Subscriptions(node.master)
        fid = subs.subscribe(INFO).framework_id
        real = node.master.propose
        during: list[tuple[frozenset[str], set[str]]] = []

        def propose(commands: Any, *, request_id: str = "", traceparent: str = "") -> Any:
            if isinstance(commands[0], SubscribeFramework) and not during:
                real([c.RegisterAgent(info=AgentInfo(hostname="h", resources=Resources.of(cpus=2)))])
                node.duties._allocation_round()  # a round that commits before the subscription's entry
                during.append((node.master.frameworks_offers_held(),
                               set(node.master.read_state(lambda s: s.frameworks[fid].offer_ids))))
            return real(commands, request_id=request_id, traceparent=traceparent)

        node.master.propose = propose  # type: ignore[method-assign]
        again = subs.subscribe(copy_with(INFO, framework_id=fid))
        assert during == [(frozenset({fid}), set())]
        assert again.framework_id == fid and node.master.frameworks_offers_held() == frozenset()
        node.duties.want_allocation()  # held no longer: the next round offers to it
        wait_for(lambda: node.master.read_state(lambda s: bool(s.frameworks[fid].offer_ids)), 10,
                 what="an offer to the framework after its resubscription")
