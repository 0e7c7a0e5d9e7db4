"""The kill sequence (agent/core/kills.py): drain for the shutdown delay, SIGTERM, SIGKILL after the grace
period; no drain for an immediate kill or a kill for failing the health check."""

from __future__ import annotations

from tessera.agent.core.kills import KillSignal, killing_message, start_kill


def test_a_kill_drains_for_the_shutdown_delay_before_sigterm_then_sigkill_after_the_grace() -> None:
    kill = start_kill(100.0, grace=5.0, shutdown_delay=3.0)
    assert kill.step(100.0, KillSignal.NONE) == (KillSignal.NONE, 103.0)  # draining: no signal yet
    assert kill.step(102.9, KillSignal.NONE) == (KillSignal.NONE, 103.0)
    assert kill.step(103.0, KillSignal.NONE) == (KillSignal.TERM, 108.0)
    assert kill.step(104.0, KillSignal.TERM) == (KillSignal.NONE, 108.0)  # SIGTERM is sent once
    assert kill.step(108.0, KillSignal.TERM) == (KillSignal.KILL, None)
    assert kill.step(200.0, KillSignal.KILL) == (KillSignal.NONE, None)  # and SIGKILL once


def test_without_a_shutdown_delay_sigterm_is_at_once() -> None:
    kill = start_kill(10.0, grace=2.0, shutdown_delay=0.0)
    assert kill.step(10.0, KillSignal.NONE) == (KillSignal.TERM, 12.0)


def test_a_late_look_skips_straight_to_what_is_due() -> None:
    kill = start_kill(0.0, grace=1.0, shutdown_delay=1.0)
    assert kill.step(5.0, KillSignal.NONE) == (KillSignal.KILL, None)


def test_an_immediate_kill_and_an_unhealthy_kill_do_not_drain() -> None:
    immediate = start_kill(0.0, grace=0.0, shutdown_delay=30.0)
    assert immediate.shutdown_delay == 0.0 and immediate.step(0.0, KillSignal.NONE) == (KillSignal.KILL, None)
    unhealthy = start_kill(0.0, grace=3.0, shutdown_delay=30.0, unhealthy=True)
    assert unhealthy.step(0.0, KillSignal.NONE) == (KillSignal.TERM, 3.0)
    assert start_kill(0.0, grace=-1.0, shutdown_delay=-4.0).step(0.0, KillSignal.NONE) == (KillSignal.KILL, None)


def test_the_killing_status_says_what_comes() -> None:
    assert killing_message(5.0, 3.0) == ("killing: out of service discovery, draining 3s, then SIGTERM, "
                                         "SIGKILL after 5s more")
    assert killing_message(5.0, 0.0) == "killing: SIGTERM, then SIGKILL after 5s"
    assert killing_message(0.0, 3.0) == "killing: SIGKILL now"
