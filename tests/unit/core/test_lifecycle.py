from __future__ import annotations

import pytest

from tessera.control_plane.core.lifecycle import (
    INITIAL_STATE,
    TERMINAL_STATES,
    TRANSITIONS,
    can_transition,
    is_terminal,
    transition_table_markdown,
)
from tessera.control_plane.core.values import TaskState as S


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(S)


def test_terminal_states_are_the_mesos_ones() -> None:
    assert TERMINAL_STATES == {S.TASK_FINISHED, S.TASK_FAILED, S.TASK_KILLED, S.TASK_LOST, S.TASK_ERROR,
                               S.TASK_DROPPED, S.TASK_GONE}
    assert all(is_terminal(s) for s in TERMINAL_STATES)
    assert not any(is_terminal(s) for s in set(S) - TERMINAL_STATES)


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATES))
def test_a_terminal_task_never_changes_again(terminal: S) -> None:
    assert not any(can_transition(terminal, new) for new in S)


def test_a_launched_task_starts_staging_and_can_run_and_finish() -> None:
    assert INITIAL_STATE is S.TASK_STAGING
    assert can_transition(S.TASK_STAGING, S.TASK_STARTING)
    assert can_transition(S.TASK_STARTING, S.TASK_RUNNING)
    assert can_transition(S.TASK_RUNNING, S.TASK_KILLING)
    assert can_transition(S.TASK_KILLING, S.TASK_KILLED)
    assert can_transition(S.TASK_RUNNING, S.TASK_FINISHED)


def test_unreachable_task_can_come_back_running_when_its_agent_returns() -> None:
    assert can_transition(S.TASK_RUNNING, S.TASK_UNREACHABLE)
    assert can_transition(S.TASK_UNREACHABLE, S.TASK_RUNNING)
    assert can_transition(S.TASK_UNREACHABLE, S.TASK_GONE)
    assert not is_terminal(S.TASK_UNREACHABLE)


def test_no_going_back_to_earlier_phases() -> None:
    assert not can_transition(S.TASK_RUNNING, S.TASK_STAGING)
    assert not can_transition(S.TASK_RUNNING, S.TASK_STARTING)
    assert not can_transition(S.TASK_KILLING, S.TASK_RUNNING)
    assert not can_transition(S.TASK_STAGING, S.TASK_STAGING)


def test_error_and_dropped_only_happen_before_the_task_started() -> None:
    assert can_transition(S.TASK_STAGING, S.TASK_ERROR)
    assert can_transition(S.TASK_STAGING, S.TASK_DROPPED)
    assert not can_transition(S.TASK_RUNNING, S.TASK_ERROR)
    assert not can_transition(S.TASK_RUNNING, S.TASK_DROPPED)


def test_repeated_running_reports_are_legal() -> None:
    assert can_transition(S.TASK_RUNNING, S.TASK_RUNNING)


def test_unknown_is_never_a_task_state() -> None:
    assert not any(can_transition(s, S.TASK_STATE_UNKNOWN) for s in S)
    assert not TRANSITIONS[S.TASK_STATE_UNKNOWN]


def test_markdown_table_is_drawn_from_the_table() -> None:
    text = transition_table_markdown()
    lines = text.strip().splitlines()
    assert lines[0] == "| from | may become | terminal |"
    assert len(lines) == 2 + len(S) - 1  # header, rule, one row per state except UNKNOWN
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in lines[2:]}
    assert rows["FINISHED"] == "—"
    assert set(rows["UNREACHABLE"].split(", ")) == {s.name.removeprefix("TASK_")
                                                     for s in TRANSITIONS[S.TASK_UNREACHABLE]}
    assert "| LOST | — | yes |" in lines
