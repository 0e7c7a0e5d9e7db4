"""The fault runner's own decisions (`tests.faults.run`), without a cluster."""

from __future__ import annotations

from tests.faults.checker import Report
from tests.faults.run import RunConfig, RunResult, kept_term


def test_a_paused_leader_serving_on_in_its_term_kept_it() -> None:
    """The 30-minute soak of 2026-12-07, fault 241: m2 paused 1.17 s in term 106, no follower elected
    meanwhile, m2 served on in term 106. That is Raft working (the pause ended before an election did),
    not a cluster without a leader, which the runner used to report after waiting 20 s for term 107."""
    assert kept_term("pause_leader", "m2", 106, [(106, "m2")])


def test_a_later_term_or_another_leader_is_not_a_kept_term() -> None:
    assert not kept_term("pause_leader", "m2", 106, [(107, "m5")])
    assert not kept_term("pause_leader", "m2", 106, [(106, "m2"), (107, "m5")])  # a deposed one not yet told
    assert not kept_term("pause_leader", "m2", 106, [])  # no one serves: still the runner's problem
    assert not kept_term("pause_leader", "m2", 106, [(106, "m3")])


def test_a_killed_or_cut_off_leader_never_keeps_its_term() -> None:
    for kind in ("kill_leader", "isolate_leader"):
        assert not kept_term(kind, "m2", 106, [(106, "m2")])


def test_the_summary_gives_how_long_restarted_masters_took_to_rejoin() -> None:
    result = RunResult(RunConfig(), Report(), rejoins=[3.0, 0.5, 1.25])
    assert ("rejoin (a restarted master started -> it knows a leader and applied what was committed), "
            "3 restarts: min 0.50 s, median 1.25 s, max 3.00 s") in result.summary()
    assert "rejoin" not in RunResult(RunConfig(), Report()).summary()
