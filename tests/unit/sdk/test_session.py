"""The sans-IO session: subscription lifecycle, master choice, backoff, acknowledgements and call retries,
driven with plain values (no threads, no network, time passed in)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.sdk.errors import (
    Conflict,
    DriverStopped,
    InvalidRequest,
    NotFound,
    NotLeader,
    ServerError,
    Unavailable,
)
from tessera.sdk.protocol import (
    AcknowledgeCall,
    ErrorEvent,
    HeartbeatEvent,
    OffersEvent,
    RescindEvent,
    SubscribedEvent,
    UpdateEvent,
)
from tessera.sdk.session import (
    Attempt,
    Backoff,
    NotifyDisconnected,
    NotifyError,
    NotifyOffers,
    NotifyRescinded,
    NotifySubscribed,
    NotifyUpdate,
    Phase,
    Session,
)
from tessera.sdk.types import FrameworkInfo, Offer, Resources, TaskState, TaskStatus

INFO = FrameworkInfo(name="fw", roles=("default",))
MASTERS = ["m1:5050", "m2:5050", "m3:5050"]


def session(**kw: object) -> Session:
    rand = kw.pop("random", lambda: 0.0)
    return Session(INFO, kw.pop("masters", MASTERS), random=rand, **kw)  # type: ignore[arg-type]


def attempt(s: Session, now: float = 0.0) -> Attempt:
    a = s.next_attempt(now)
    assert isinstance(a, Attempt), a
    return a


def subscribe(s: Session, fid: str = "fw-1", sid: str = "stream-1", now: float = 0.0,
              heartbeat: float = 0.0) -> None:
    if s.phase is Phase.IDLE:
        s.start(now)
    attempt(s, now)
    assert s.on_event(SubscribedEvent(fid, sid, heartbeat), now) == [NotifySubscribed(fid)]


def offer(oid: str, agent: str = "a1") -> Offer:
    return Offer(offer_id=oid, agent_id=agent, resources=Resources.of(cpus=1, mem=128))


def status(uuid: str = "u1", task: str = "t1") -> TaskStatus:
    return TaskStatus(task_id=task, state=TaskState.TASK_RUNNING, agent_id="a1", uuid=uuid)


# ---- subscription lifecycle ------------------------------------------------------------------------------

def test_first_subscription_is_new_and_at_once_then_reconnects_with_the_framework_id() -> None:
    s = session()
    s.start(0.0)
    first = attempt(s)
    assert first.delay == 0 and first.info.framework_id == "" and first.address == "m1:5050"
    assert s.on_event(SubscribedEvent("fw-7", "stream-1", 1.0, "m1"), 0.0) == [NotifySubscribed("fw-7")]
    assert s.phase is Phase.SUBSCRIBED and s.master == "m1:5050"

    assert s.on_stream_ended(Unavailable("connection reset"), 5.0) == [NotifyDisconnected()]
    assert s.phase is Phase.CONNECTING and s.call_header("r") is None
    again = attempt(s, 5.0)
    assert again.info.framework_id == "fw-7"
    assert again.info.name == INFO.name and again.info.roles == INFO.roles
    assert s.on_event(SubscribedEvent("fw-7", "stream-2"), 5.1) == [NotifySubscribed("fw-7")]
    assert s.call_header("req") is not None and s.call_header("req").stream_id == "stream-2"  # type: ignore[union-attr]


def test_a_given_framework_id_is_used_from_the_first_subscription() -> None:
    s = Session(FrameworkInfo(name="fw", framework_id="fw-old"), MASTERS, random=lambda: 0.5)
    s.start(0.0)
    assert attempt(s).info.framework_id == "fw-old"


def test_events_before_subscribed_are_ignored() -> None:
    s = session()
    s.start(0.0)
    attempt(s)
    assert s.on_event(OffersEvent((offer("o1"),)), 0.0) == []
    assert s.outstanding_offers() == ()


def test_a_refused_subscription_is_final_and_says_why() -> None:
    s = session()
    s.start(0.0)
    attempt(s)
    effects = s.on_stream_ended(Conflict("framework fw-1 was removed"), 1.0)
    assert len(effects) == 1 and isinstance(effects[0], NotifyError)
    assert "was removed" in effects[0].message
    assert s.phase is Phase.FAILED and not s.active and s.failure


@pytest.mark.parametrize("error", [NotFound("x"), InvalidRequest("x"), ServerError("UNIMPLEMENTED", "UNIMPLEMENTED")])
def test_every_domain_error_on_subscribe_is_final(error: Exception) -> None:
    s = session()
    s.start(0.0)
    attempt(s)
    s.on_stream_ended(error, 0.0)  # type: ignore[arg-type]
    assert s.phase is Phase.FAILED


@pytest.mark.parametrize("error", [None, Unavailable("down"), NotLeader("not me", "m2:5050")])
def test_retryable_ends_before_subscribing_lead_to_another_attempt(error: Exception | None) -> None:
    s = session()
    s.start(0.0)
    attempt(s)
    assert s.on_stream_ended(error, 0.0) == []  # type: ignore[arg-type]
    assert s.phase is Phase.CONNECTING
    attempt(s)


def test_an_error_event_is_final_and_reports_the_disconnection_first() -> None:
    s = session()
    subscribe(s)
    effects = s.on_event(ErrorEvent("framework removed: failover timeout"), 1.0)
    assert effects[0] == NotifyDisconnected() and isinstance(effects[1], NotifyError)
    assert s.phase is Phase.FAILED
    assert s.on_stream_ended(None, 2.0) == []  # the stream ending afterwards changes nothing


def test_stopped_session_ignores_the_end_of_its_stream() -> None:
    s = session()
    subscribe(s)
    s.stop()
    assert s.on_stream_ended(None, 1.0) == [] and s.phase is Phase.STOPPED


def test_silence_reads_as_a_broken_stream_with_the_heartbeat_bound() -> None:
    s = session(subscribe_timeout=7.0)
    s.start(0.0)
    attempt(s)
    assert s.read_timeout() == 7.0
    s.on_event(SubscribedEvent("fw", "st", heartbeat_interval_seconds=2.0), 0.0)
    assert s.read_timeout() == 6.0  # three missed heartbeats
    assert s.on_silence(10.0) == [NotifyDisconnected()]
    assert s.phase is Phase.CONNECTING


def test_without_heartbeats_a_subscribed_stream_is_not_timed() -> None:
    s = session()
    subscribe(s, heartbeat=0.0)
    assert s.read_timeout() is None


# ---- choosing a master, backoff ------------------------------------------------------------------------------

def test_masters_are_tried_in_turn() -> None:
    s = session()
    s.start(0.0)
    tried = []
    for _ in range(4):
        tried.append(attempt(s).address)
        s.on_stream_ended(Unavailable("refused"), 0.0)
    assert tried == ["m1:5050", "m2:5050", "m3:5050", "m1:5050"]


def test_a_leader_hint_is_followed_at_once_but_never_twice_in_a_row() -> None:
    s = session(random=lambda: 0.0)
    s.start(0.0)
    attempt(s)  # m1
    s.on_stream_ended(NotLeader("follower", "m3:5050"), 0.0)
    hop = attempt(s)
    assert hop.address == "m3:5050" and hop.delay == 0
    # m3 says m1 leads (stale): going back at once could ping-pong forever, so this one waits.
    s.on_stream_ended(NotLeader("follower", "m1:5050"), 0.0)
    second = attempt(s)
    assert second.address == "m1:5050" and second.delay > 0


def test_a_hint_naming_an_unknown_master_is_learnt() -> None:
    s = session()
    s.start(0.0)
    attempt(s)
    s.on_stream_ended(NotLeader("follower", "m9:5050"), 0.0)
    assert attempt(s).address == "m9:5050"
    assert "m9:5050" in s.masters


def test_backoff_grows_with_each_round_of_failures_over_the_masters_and_resets_after_a_subscription() -> None:
    s = session(random=lambda: 0.0, backoff=Backoff(initial=0.1, maximum=1.0, multiplier=2.0, jitter=0.5))
    s.start(0.0)
    delays = []
    for _ in range(16):
        delays.append(attempt(s).delay)
        s.on_stream_ended(Unavailable("refused"), 0.0)
    # three masters: after the first (free) attempt, every master is tried once at each wait before it
    # doubles (`wire.DialPlan`, shared with the agent and the operator client)
    assert delays == [0.0, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.4, 0.4, 0.4, 0.8, 0.8, 0.8, 1.0, 1.0, 1.0]
    attempt(s)
    s.on_event(SubscribedEvent("fw", "st"), 0.0)
    s.on_stream_ended(Unavailable("reset"), 1.0)
    assert attempt(s, 1.0).delay == 0.1  # the first retry after a healthy stream: the initial wait


@given(attempt_no=st.integers(min_value=0, max_value=200), rand=st.floats(min_value=0.0, max_value=1.0),
       jitter=st.floats(min_value=0.0, max_value=1.0))
def test_backoff_delay_stays_within_its_jitter_bounds(attempt_no: int, rand: float, jitter: float) -> None:
    b = Backoff(initial=0.05, maximum=7.0, multiplier=1.7, jitter=jitter)
    nominal = min(7.0, 0.05 * 1.7 ** min(attempt_no, 100))
    delay = b.delay(attempt_no, rand)
    assert nominal * (1 - jitter) - 1e-9 <= delay <= nominal + 1e-9
    assert b.nominal(attempt_no) == pytest.approx(nominal)


def test_jitter_spreads_reconnections() -> None:
    rand = itertools.cycle([0.0, 0.99]).__next__
    s = session(random=rand)
    s.start(0.0)
    attempt(s)
    s.on_stream_ended(Unavailable("x"), 0.0)
    a = attempt(s).delay
    s.on_stream_ended(Unavailable("x"), 0.0)
    b = attempt(s).delay
    assert a != b


@pytest.mark.parametrize("kw", [dict(initial=0), dict(initial=2, maximum=1), dict(multiplier=0.5), dict(jitter=1.5)])
def test_nonsense_backoff_is_refused(kw: dict[str, float]) -> None:
    with pytest.raises(InvalidRequest):
        Backoff(**kw)


def test_giving_up_after_a_deadline_without_any_master() -> None:
    s = session(give_up_after=10.0, random=lambda: 0.0)
    s.start(0.0)
    now = 0.0
    while True:
        a = s.next_attempt(now)
        if isinstance(a, NotifyError):
            break
        assert now + a.delay <= 10.0  # never sleeps past the deadline
        now += a.delay + 0.5
        s.on_stream_ended(Unavailable("refused"), now)
    assert "no master answered" in a.message and s.phase is Phase.FAILED
    assert now >= 10.0


# ---- acknowledgements ----------------------------------------------------------------------------------------

def test_implicit_acknowledgement_rides_with_the_update_to_send_after_the_callback() -> None:
    s = session()
    subscribe(s)
    st_ = status("u-9")
    assert s.on_event(UpdateEvent(st_), 0.0) == [NotifyUpdate(st_, AcknowledgeCall("t1", "a1", "u-9"))]


def test_statuses_without_uuid_are_never_acknowledged() -> None:
    s = session()
    subscribe(s)
    st_ = status("")
    assert s.on_event(UpdateEvent(st_), 0.0) == [NotifyUpdate(st_, None)]


def test_explicit_acknowledgements_are_left_to_the_scheduler() -> None:
    s = session(implicit_acknowledgements=False)
    subscribe(s)
    st_ = status("u-1")
    assert s.on_event(UpdateEvent(st_), 0.0) == [NotifyUpdate(st_, None)]
    assert s.acknowledgement(st_) == AcknowledgeCall("t1", "a1", "u-1")
    assert s.acknowledgement(status("")) is None


def test_explicit_acknowledge_is_refused_with_implicit_acknowledgements() -> None:
    s = session()
    with pytest.raises(InvalidRequest):
        s.acknowledgement(status())


# ---- offers ----------------------------------------------------------------------------------------------------

def test_offers_are_remembered_until_rescinded_used_or_disconnected() -> None:
    s = session()
    subscribe(s)
    o1, o2, o3 = offer("o1"), offer("o2", "a2"), offer("o3")
    assert s.on_event(OffersEvent((o1, o2, o3)), 0.0) == [NotifyOffers((o1, o2, o3))]
    assert s.offer("o2") == o2
    assert s.on_event(RescindEvent("o2"), 0.0) == [NotifyRescinded("o2")]
    s.forget_offers(["o1"])
    assert s.outstanding_offers() == (o3,)
    s.on_stream_ended(None, 1.0)
    assert s.outstanding_offers() == ()


def test_heartbeats_produce_nothing() -> None:
    s = session()
    subscribe(s)
    assert s.on_event(HeartbeatEvent(), 0.0) == []


# ---- call retries ----------------------------------------------------------------------------------------------

def test_call_header_names_framework_stream_and_request() -> None:
    s = session()
    assert s.call_header("r1") is None
    subscribe(s, "fw-1", "st-1")
    h = s.call_header("r1")
    assert h is not None and (h.framework_id, h.stream_id, h.request_id) == ("fw-1", "st-1", "r1")


def test_unavailable_calls_are_retried_with_backoff() -> None:
    s = session(random=lambda: 0.0, backoff=Backoff(initial=0.1, maximum=5))
    subscribe(s)
    d0 = s.on_call_error(Unavailable("commit timed out"), "stream-1", 0)
    d3 = s.on_call_error(Unavailable("commit timed out"), "stream-1", 3)
    assert d0.retry and d3.retry and d3.delay > d0.delay and not d0.reconnect


def test_not_leader_on_a_call_moves_the_stream_to_the_hinted_leader() -> None:
    s = session()
    subscribe(s)  # with m1
    d = s.on_call_error(NotLeader("follower now", "m2:5050"), "stream-1", 0)
    assert d.retry and d.reconnect and d.delay == 0
    assert s.call_header("r") is None  # no call goes out on the old stream meanwhile
    again = s.on_call_error(NotLeader("follower now", "m2:5050"), "stream-1", 0)
    assert again.retry and not again.reconnect  # one move at a time
    assert s.on_stream_ended(None, 1.0) == [NotifyDisconnected()]  # the shell cancelled the stream
    assert attempt(s, 1.0).address == "m2:5050"


def test_conflict_is_retried_only_when_the_stream_was_replaced_meanwhile() -> None:
    s = session()
    subscribe(s, sid="stream-1")
    assert not s.on_call_error(Conflict("offer gone"), "stream-1", 0).retry
    s.on_stream_ended(Unavailable("reset"), 1.0)
    attempt(s, 1.0)
    s.on_event(SubscribedEvent("fw-1", "stream-2"), 1.0)
    assert s.on_call_error(Conflict("stream-1 is not current"), "stream-1", 0).retry


@pytest.mark.parametrize("error", [InvalidRequest("bad"), NotFound("no such task"), ServerError("boom")])
def test_domain_errors_of_calls_are_not_retried(error: Exception) -> None:
    s = session()
    subscribe(s)
    assert not s.on_call_error(error, "stream-1", 0).retry  # type: ignore[arg-type]


def test_nothing_is_retried_once_stopped() -> None:
    s = session()
    subscribe(s)
    s.stop()
    assert not s.on_call_error(Unavailable("x"), "stream-1", 0).retry


# ---- teardown ----------------------------------------------------------------------------------------------------

def test_the_stream_ending_during_a_teardown_is_not_a_failure() -> None:
    s = session()
    subscribe(s)
    s.begin_teardown()
    assert s.on_stream_ended(None, 1.0) == [NotifyDisconnected()]
    attempt(s, 1.0)
    # re-subscribing is refused because the teardown went through: stop quietly
    assert s.on_stream_ended(Conflict("framework was removed"), 1.0) == []
    assert s.phase is Phase.STOPPED and s.torn_down and s.failure is None


def test_a_finished_teardown_stops_the_session() -> None:
    s = session()
    subscribe(s)
    s.begin_teardown()
    s.end_teardown(True)
    assert s.phase is Phase.STOPPED


def test_session_refuses_no_masters() -> None:
    with pytest.raises(InvalidRequest):
        Session(INFO, [], random=lambda: 0.0)


# ---- the call budget (one retry/deadline arithmetic for both drivers) ------------------------------------------

def test_call_budget_cuts_attempts_to_the_deadline_and_retries_only_when_the_wait_fits() -> None:
    from tessera.sdk.session import CallBudget, CallDecision

    budget = CallBudget(100.0, call_timeout=30.0, rpc_timeout=10.0)
    assert budget.deadline == 130.0 and budget.remaining(125.0) == 5.0
    assert budget.attempt_timeout(100.0) == 10.0  # one attempt is bounded by rpc_timeout
    assert budget.attempt_timeout(125.0) == 5.0  # and by what is left of the call
    assert budget.attempt_timeout(131.0) == 0.001  # never zero or negative
    assert budget.retry_after(CallDecision(True, 1.0), 101.0) and budget.attempt == 1
    assert not budget.retry_after(CallDecision(False), 102.0) and budget.attempt == 1  # not retryable
    assert not budget.retry_after(CallDecision(True, 5.0), 125.0)  # the wait would reach the deadline
    assert budget.attempt == 1


def test_teardown_settles_as_done_when_the_stream_ended_because_of_it() -> None:
    s = session()
    s.start(0.0)
    attempt(s)
    s.on_event(SubscribedEvent("fw", "st"), 0.0)
    s.begin_teardown()
    assert not s.settle_teardown(Unavailable("no answer")) and s.active  # the framework may still exist
    s.begin_teardown()
    s.on_event(ErrorEvent("framework removed"), 1.0)  # the master ended the framework: it went through
    assert s.settle_teardown(DriverStopped("stopped")) and not s.active
