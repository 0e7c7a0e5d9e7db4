"""Offers that arrive close together reach the scheduler in one `offers()` callback: the sans-IO
`OfferLinger` (what it holds, what passes ahead, what flushes it, when it is due) and both drivers
using it against the FakeMaster."""

from __future__ import annotations

from typing import Any

import pytest

from tessera.sdk import Offer, Resources
from tessera.sdk.session import (
    NotifyDisconnected,
    NotifyMessage,
    NotifyOffers,
    NotifyRescinded,
    NotifySubscribed,
    NotifyUpdate,
    OfferLinger,
)
from tessera.sdk.testing import FakeMaster
from tessera.sdk.types import TaskState, TaskStatus

pytestmark = pytest.mark.timeout(60)


def offer(offer_id: str, agent: str = "a1") -> Offer:
    return Offer(offer_id=offer_id, agent_id=agent, resources=Resources.of(cpus=1, mem=64))


def update(task: str) -> NotifyUpdate:
    return NotifyUpdate(TaskStatus(task_id=task, state=TaskState.TASK_FINISHED, agent_id="a1"), None)


def test_offers_within_the_linger_are_one_effect_due_at_the_first_ones_deadline() -> None:
    linger = OfferLinger(0.005)
    assert linger.add(NotifyOffers((offer("o1"),)), 10.0) == []
    assert linger.deadline == pytest.approx(10.005)
    assert linger.add(NotifyOffers((offer("o2", "a2"), offer("o3"))), 10.003) == []
    assert linger.deadline == pytest.approx(10.005)  # the first offer's time, not pushed back
    assert linger.due(10.004) == []
    assert linger.due(10.005) == [NotifyOffers((offer("o1"), offer("o2", "a2"), offer("o3")))]
    assert linger.deadline is None and linger.due(11.0) == []


def test_updates_and_messages_pass_held_offers_in_order() -> None:
    linger = OfferLinger(0.005)
    linger.add(NotifyOffers((offer("o1"),)), 0.0)
    first, message = update("t1"), NotifyMessage("a1", b"x")
    assert linger.add(first, 0.001) == [first]
    assert linger.add(message, 0.002) == [message]
    assert linger.add(NotifyOffers((offer("o2"),)), 0.003) == []
    assert linger.flush() == [NotifyOffers((offer("o1"), offer("o2")))]


def test_a_rescind_of_a_held_offer_removes_it_and_is_not_delivered() -> None:
    linger = OfferLinger(0.005)
    linger.add(NotifyOffers((offer("o1"), offer("o2"))), 0.0)
    assert linger.add(NotifyRescinded("o1"), 0.001) == []
    other = NotifyRescinded("o9")  # an offer the scheduler already has: delivered as it comes
    assert linger.add(other, 0.002) == [other]
    assert linger.due(1.0) == [NotifyOffers((offer("o2"),))]
    linger.add(NotifyOffers((offer("o3"),)), 2.0)
    assert linger.add(NotifyRescinded("o3"), 2.001) == []
    assert linger.deadline is None and linger.due(3.0) == []  # nothing left to deliver


@pytest.mark.parametrize("change", [NotifySubscribed("fw"), NotifyDisconnected()])
def test_a_subscription_change_delivers_the_held_offers_first(change: object) -> None:
    linger = OfferLinger(0.005)
    linger.add(NotifyOffers((offer("o1"),)), 0.0)
    assert linger.add(change, 0.001) == [NotifyOffers((offer("o1"),)), change]
    assert linger.deadline is None
    assert linger.add(change, 0.002) == [change]


def test_without_a_linger_everything_passes_as_it_comes() -> None:
    linger = OfferLinger(0.0)
    offers = NotifyOffers((offer("o1"),))
    assert linger.add(offers, 0.0) == [offers]
    assert linger.deadline is None
    with pytest.raises(ValueError):
        OfferLinger(-1.0)


def test_both_drivers_deliver_offers_sent_in_separate_messages_in_one_callback(make: Any) -> None:
    fake = FakeMaster()
    fake.add_agent("cpus:1;mem:256", hostname="h1")
    # a linger far above the time between two sends: both land in it
    h = make(fake, offer_linger=3.0).start()
    fake.wait_for(lambda: len(fake.offers()) == 1, what="the first agent offered")
    fake.add_agent("cpus:1;mem:256", hostname="h2")  # offered at once, in a message of its own
    batches = h.rec.wait_for(lambda: h.rec.of("offers"), "an offers callback")
    assert len(fake.offers()) == 2
    assert [sorted(o.hostname for o in b) for b in batches] == [["h1", "h2"]]  # one callback, both offers


def test_take_adds_a_batch_then_gives_what_is_due() -> None:
    linger = OfferLinger(0.005)
    first = update("t1")
    assert linger.take([NotifyOffers((offer("o1"),)), first], 0.0) == [first]
    assert linger.take([NotifyOffers((offer("o2"),))], 0.006) == [NotifyOffers((offer("o1"), offer("o2")))]
