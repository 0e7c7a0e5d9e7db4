"""The task lifecycle: one transition table shared by the master, the agent and the docs.

A task starts in TASK_STAGING when its launch is committed. From there it may be reported STARTING,
RUNNING, KILLING, or end in one of the terminal states. The table follows Mesos:

- Terminal states never change again: FINISHED, FAILED, KILLED, LOST, ERROR, DROPPED, GONE. (LOST is
  terminal, as in Mesos; partition-aware frameworks get UNREACHABLE instead, which is not.)
- ERROR (the task description was invalid) and DROPPED (it never reached its executor) can only happen
  before the task started, so they are reachable from STAGING (DROPPED also from UNREACHABLE: a partitioned
  agent that comes back without a task that was still staging).
- UNREACHABLE means "the master cannot tell": when the agent comes back, the task resumes whatever state
  the agent reports, including going back to RUNNING, or ends.
- Nothing goes back to STAGING except from UNREACHABLE, nothing goes back to STARTING after RUNNING, and a
  task being killed (KILLING) never runs again.
- RUNNING, STARTING and KILLING may be reported again (health changes, retried reports): a self
  transition is legal there. STAGING and UNREACHABLE are set by the master only, never repeated.
- TASK_STATE_UNKNOWN is an answer to reconciliation, never a state a task is in.

The table is data (`TRANSITIONS`); `can_transition`, `is_terminal` and `transition_table_markdown` read it.
"""

from __future__ import annotations

from types import MappingProxyType

from tessera.control_plane.core.values import TaskState

S = TaskState

INITIAL_STATE = S.TASK_STAGING

TERMINAL_STATES: frozenset[TaskState] = frozenset({
    S.TASK_FINISHED, S.TASK_FAILED, S.TASK_KILLED, S.TASK_LOST, S.TASK_ERROR, S.TASK_DROPPED, S.TASK_GONE,
})

# Endings possible once the executor has the task (ERROR and DROPPED are pre-launch only).
_ENDINGS = frozenset({S.TASK_FINISHED, S.TASK_FAILED, S.TASK_KILLED, S.TASK_LOST, S.TASK_GONE})

TRANSITIONS: MappingProxyType[TaskState, frozenset[TaskState]] = MappingProxyType({
    S.TASK_STAGING: frozenset({S.TASK_STARTING, S.TASK_RUNNING, S.TASK_KILLING, S.TASK_UNREACHABLE})
    | TERMINAL_STATES,
    S.TASK_STARTING: frozenset({S.TASK_STARTING, S.TASK_RUNNING, S.TASK_KILLING, S.TASK_UNREACHABLE})
    | _ENDINGS,
    S.TASK_RUNNING: frozenset({S.TASK_RUNNING, S.TASK_KILLING, S.TASK_UNREACHABLE}) | _ENDINGS,
    S.TASK_KILLING: frozenset({S.TASK_KILLING, S.TASK_UNREACHABLE}) | _ENDINGS,
    S.TASK_UNREACHABLE: frozenset({S.TASK_STAGING, S.TASK_STARTING, S.TASK_RUNNING, S.TASK_KILLING})
    | _ENDINGS | {S.TASK_DROPPED},
    **{state: frozenset() for state in TERMINAL_STATES},
    S.TASK_STATE_UNKNOWN: frozenset(),
})


def is_terminal(state: TaskState) -> bool:
    return state in TERMINAL_STATES


def can_transition(current: TaskState, new: TaskState) -> bool:
    """True when a task in `current` may be recorded in `new` (see the module docstring)."""
    return new in TRANSITIONS.get(current, frozenset())


def _short(state: TaskState) -> str:
    return state.name.removeprefix("TASK_")


def transition_table_markdown() -> str:
    """The table as Markdown, one row per state, in enum order (the docs include this verbatim)."""
    lines = ["| from | may become | terminal |", "|---|---|---|"]
    for state in TaskState:
        if state is S.TASK_STATE_UNKNOWN:
            continue
        targets = sorted(TRANSITIONS[state], key=int)
        shown = ", ".join(_short(t) for t in targets) if targets else "—"
        lines.append(f"| {_short(state)} | {shown} | {'yes' if is_terminal(state) else 'no'} |")
    return "\n".join(lines) + "\n"
