"""The sans-IO session and the framework lease: the term it presents, standby waiting, activation and
deposition, driven with plain values."""

from __future__ import annotations

from tessera.sdk.errors import Deposed, Unavailable
from tessera.sdk.protocol import ErrorEvent, LeaseClaim, StandbyEvent, SubscribedEvent
from tessera.sdk.session import (
    Attempt,
    NotifyActive,
    NotifyDeposed,
    NotifyDisconnected,
    NotifyError,
    NotifyStandby,
    NotifySubscribed,
    Phase,
    Session,
)
from tessera.sdk.types import FrameworkInfo

INFO = FrameworkInfo(name="services")


def session(standby: bool = False) -> Session:
    s = Session(INFO, ["m1:5050"], random=lambda: 0.0, standby=standby)
    s.start(0.0)
    return s


def attempt(s: Session) -> Attempt:
    a = s.next_attempt(0.0)
    assert isinstance(a, Attempt)
    return a


def test_the_first_subscription_activates_and_a_reconnection_presents_the_term_without_activating_again() -> None:
    s = session()
    assert attempt(s).lease == LeaseClaim(False, 0)
    assert s.on_event(SubscribedEvent("fw-1", "s-1", lease_term=1), 0.0) == [NotifySubscribed("fw-1"),
                                                                              NotifyActive(1)]
    s.on_stream_ended(Unavailable("broken"), 1.0)
    again = attempt(s)
    assert (again.info.framework_id, again.lease) == ("fw-1", LeaseClaim(False, 1))
    assert s.on_event(SubscribedEvent("fw-1", "s-2", lease_term=1), 1.0) == [NotifySubscribed("fw-1")]


def test_a_master_without_leases_activates_nothing() -> None:
    s = session()
    attempt(s)
    assert s.on_event(SubscribedEvent("fw-1", "s-1"), 0.0) == [NotifySubscribed("fw-1")]


def test_a_standby_waits_then_activates_when_it_takes_over() -> None:
    s = session(standby=True)
    assert attempt(s).lease == LeaseClaim(True, 0)
    assert s.on_event(StandbyEvent("fw-1", 3, 2.0), 0.0) == [NotifyStandby("fw-1", 3)]
    assert s.phase is Phase.STANDBY and s.call_header("r") is None and s.read_timeout() == 6.0
    assert s.on_event(SubscribedEvent("fw-1", "s-9", lease_term=4), 5.0) == [NotifySubscribed("fw-1"),
                                                                              NotifyActive(4)]
    assert s.call_header("r") is not None


def test_a_deposed_standby_is_told_and_waits_again_with_no_term() -> None:
    s = session(standby=True)
    attempt(s)
    s.on_event(SubscribedEvent("fw-1", "s-1", lease_term=1), 0.0)
    assert s.on_event(ErrorEvent("another instance took over", 2), 1.0) == [NotifyDisconnected(), NotifyDeposed(2)]
    assert s.phase is Phase.CONNECTING and s.active
    s.on_stream_ended(None, 1.0)
    assert attempt(s).lease == LeaseClaim(True, 0)


def test_a_standby_that_comes_back_to_a_moved_lease_learns_it_was_deposed() -> None:
    s = session(standby=True)
    attempt(s)
    s.on_event(SubscribedEvent("fw-1", "s-1", lease_term=1), 0.0)
    s.on_stream_ended(Unavailable("leader changed"), 1.0)
    assert attempt(s).lease == LeaseClaim(True, 1)
    assert s.on_event(StandbyEvent("fw-1", 2), 2.0) == [NotifyDeposed(2), NotifyStandby("fw-1", 2)]
    assert s.lease_term == 0


def test_a_deposed_driver_that_is_no_standby_fails() -> None:
    s = session()
    attempt(s)
    s.on_event(SubscribedEvent("fw-1", "s-1", lease_term=1), 0.0)
    effects = s.on_event(ErrorEvent("another instance took over", 2), 1.0)
    assert effects[:2] == [NotifyDeposed(2), NotifyDisconnected()] and isinstance(effects[2], NotifyError)
    assert s.phase is Phase.FAILED


def test_a_subscription_refused_as_deposed_is_told_then_fails() -> None:
    s = session()
    attempt(s)
    s.on_event(SubscribedEvent("fw-1", "s-1", lease_term=1), 0.0)
    s.on_stream_ended(Unavailable("leader changed"), 1.0)
    attempt(s)
    effects = s.on_stream_ended(Deposed("lease term 1 is over", lease_term=3), 2.0)
    assert effects[0] == NotifyDeposed(3) and isinstance(effects[1], NotifyError) and s.phase is Phase.FAILED
