"""The framework lease in the pure core: the table (and docs/protocol.md drawing it), claims by standbys,
holders and new instances, and apply's re-checks when subscriptions race."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tessera.control_plane.core import commands as c
from tessera.control_plane.core import leases
from tessera.control_plane.core.errors import Conflict, Deposed, InvalidRequest, NotFound
from tessera.control_plane.core.events import FrameworkSubscribed
from tessera.control_plane.core.invariants import check_invariants
from tessera.control_plane.core.values import FrameworkInfo, FrameworkState

from .harness import Harness

DELAY = 2.0
INFO = FrameworkInfo(name="services", principal="ops", roles=("web",), failover_timeout_seconds=600.0)
PROTOCOL = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"


def standby(h: Harness, info: FrameworkInfo = INFO, lease_term: int = 0) -> leases.Grant | leases.Wait:
    return leases.claim(h.state, info, standby=True, lease_term=lease_term, now=h.now, takeover_delay=DELAY)


def subscribe(h: Harness, info: FrameworkInfo = INFO, *, standby: bool = True, lease_term: int = 0
              ) -> FrameworkSubscribed:
    result = h.run(c.SubscribeFramework(info, standby=standby, lease_term=lease_term, takeover_delay=DELAY))
    return next(e for _, e in result.events if isinstance(e, FrameworkSubscribed))


def test_docs_draw_the_lease_table_of_the_code() -> None:
    assert leases.table_markdown() in PROTOCOL.read_text(), "docs/protocol.md: paste leases.table_markdown()"


def test_every_situation_and_claim_has_an_outcome_but_claims_with_a_term_of_no_framework() -> None:
    missing = {(s, k) for s in leases.Situation for k in leases.Claim} - set(leases.OUTCOMES)
    assert missing == {(leases.Situation.NONE, leases.Claim.CURRENT), (leases.Situation.NONE, leases.Claim.STALE)}


def test_the_first_standby_creates_the_framework_by_name_and_the_second_waits() -> None:
    h = Harness()
    first = subscribe(h)
    assert (first.lease_term, first.lease_moved, first.by_name, first.resubscribed) == (1, False, True, False)
    waiting = standby(h)
    assert waiting == leases.Wait(first.framework_id, 1)
    with pytest.raises(Conflict, match="standby waits"):
        h.decide(c.SubscribeFramework(INFO, standby=True, takeover_delay=DELAY))
    other_name = standby(h, replace(INFO, name="batch"))
    assert isinstance(other_name, leases.Grant) and other_name.outcome is leases.Outcome.CREATE


def test_a_standby_takes_over_once_the_active_instance_has_been_gone_for_the_takeover_delay() -> None:
    h = Harness()
    first = subscribe(h)
    h.run(c.DisconnectFramework(first.framework_id, first.stream_id))
    h.now += DELAY / 2
    assert isinstance(standby(h), leases.Wait), "within the takeover delay the holder may come back"
    h.now += DELAY / 2
    took = subscribe(h)
    assert (took.framework_id, took.lease_term, took.lease_moved, took.resubscribed) == (first.framework_id, 2, True, True)
    assert h.state.frameworks[first.framework_id].lease_term == 2
    assert check_invariants(h.state) == []


def test_the_holder_resumes_at_its_term_and_a_deposed_one_is_refused_or_waits() -> None:
    h = Harness()
    first = subscribe(h)
    back = subscribe(h, replace(INFO, framework_id=first.framework_id), lease_term=1)
    assert (back.lease_term, back.lease_moved) == (1, False)
    h.run(c.DisconnectFramework(first.framework_id, back.stream_id))
    h.now += DELAY
    subscribe(h)  # a standby took over: term 2
    mine = replace(INFO, framework_id=first.framework_id)
    with pytest.raises(Deposed, match="now at term 2") as info:
        h.decide(c.SubscribeFramework(mine, lease_term=1, takeover_delay=DELAY))
    assert info.value.lease_term == 2
    assert standby(h, mine, lease_term=1) == leases.Wait(first.framework_id, 2, deposed=True)


def test_a_fresh_subscription_with_the_framework_id_takes_over_as_mesos_failover_does() -> None:
    h = Harness()
    fid = h.framework()
    info = replace(h.state.frameworks[fid].info, framework_id=fid)
    took = subscribe(h, info, standby=False)
    assert (took.lease_term, took.lease_moved) == (2, True)


def test_two_standbys_taking_over_at_once_commit_one_takeover() -> None:
    h = Harness()
    first = subscribe(h)
    h.run(c.DisconnectFramework(first.framework_id, first.stream_id))
    h.now += DELAY
    a = h.decide(c.SubscribeFramework(INFO, standby=True, takeover_delay=DELAY))
    b = h.decide(c.SubscribeFramework(INFO, standby=True, takeover_delay=DELAY))
    assert h.commit(a).ok
    late = h.commit(b)
    assert late.error_code == Conflict.code and "decide it again" in late.reason
    assert isinstance(standby(h), leases.Wait)


def test_a_holder_coming_back_after_another_took_over_is_rejected_when_applied() -> None:
    h = Harness()
    first = subscribe(h)
    h.run(c.DisconnectFramework(first.framework_id, first.stream_id))
    h.now += DELAY
    back = h.decide(c.SubscribeFramework(replace(INFO, framework_id=first.framework_id), lease_term=1))
    subscribe(h)  # the standby's takeover commits first
    assert h.commit(back).error_code == Conflict.code
    assert h.state.frameworks[first.framework_id].lease_term == 2


def test_two_standbys_creating_the_framework_at_once_create_one() -> None:
    h = Harness()
    a = h.decide(c.SubscribeFramework(INFO, standby=True, takeover_delay=DELAY))
    b = h.decide(c.SubscribeFramework(INFO, standby=True, takeover_delay=DELAY))
    assert h.commit(a).ok
    assert h.commit(b).error_code == Conflict.code
    assert len(h.state.frameworks) == 1


def test_a_removed_framework_is_not_found_by_name_and_a_new_one_is_created() -> None:
    h = Harness()
    first = subscribe(h)
    h.run(c.RemoveFramework(first.framework_id))
    again = subscribe(h)
    assert again.framework_id != first.framework_id and again.lease_term == 1
    assert h.state.frameworks[first.framework_id].state is FrameworkState.FRAMEWORK_REMOVED


def test_refusals_before_the_table() -> None:
    h = Harness()
    first = subscribe(h)
    with pytest.raises(NotFound):
        standby(h, replace(INFO, framework_id="framework-404"))
    with pytest.raises(Conflict, match="principal"):
        standby(h, replace(INFO, framework_id=first.framework_id, principal="mallory"))
    with pytest.raises(InvalidRequest, match="name"):
        standby(h, replace(INFO, framework_id=first.framework_id, name="renamed"))
    with pytest.raises(InvalidRequest, match="framework id"):
        standby(h, lease_term=3)


def test_an_entry_from_before_leases_leaves_the_lease_as_it_was() -> None:
    h = Harness()
    first = subscribe(h)
    legacy = FrameworkSubscribed(first.framework_id, replace(INFO, framework_id=first.framework_id), "stream-old",
                                 True)
    assert h.commit([legacy]).ok
    assert h.state.frameworks[first.framework_id].lease_term == 1
