"""decide: turn one command into the events that carry it out, or refuse it with a domain error.

`decide(state, command, ctx) -> tuple[Event, ...]` runs on the leader only. It reads `state` (never
mutates it), validates the command and returns the events to commit atomically in one entry. Every
value the events need that is not in the command (new ids, uuids, deadlines, refuse-until times) comes
from `ctx` and is written into the events, so `apply` decides nothing.

Errors (from `tessera.control_plane.core.errors`):
- `InvalidRequest`: malformed input: empty, oversized or non-ASCII ids, framework-state keys, values or
  writes over the caps of `core.limits` (MAX_STATE_*), negative / NaN / infinite numbers,
  resources not in normal form, weight <= 0, a role the framework did not subscribe with, operations
  that do not make sense (a RESERVE with tasks, offers of one accept spread over agents or roles), a task
  over the size caps of `core.limits` (argument count and length, environment, labels, resources, the
  whole task, the tasks of one accept), a failover timeout above `MAX_FAILOVER_TIMEOUT` (one week), too
  many roles for a framework or attributes and resource entries for an agent.
- `NotFound`: an id that names nothing (agent, framework, task, offer, status uuid).
- `Conflict`: valid, but the state forbids it now: an offer that is gone (rescinded, declined, used,
  expired) or belongs to another framework, a duplicate task id, tasks that do not fit their offers,
  a stream id that is not current (`Deposed`: the framework's lease is elsewhere), a framework-state key
  not at the version a write expected (`VersionConflict`), a standby while the framework is active, an
  agent or framework in the wrong state.
- `ResourceExhausted`: a new framework or new tasks beyond the principal's limits (`ctx.limits`).

An empty tuple means "already done": the request is an idempotent retry (a status update already
recorded, a kill of a finished task, a rescind of an offer already gone). The caller replies success
without committing anything.

Master-generated task statuses (agent lost, removed, reregistered) get a fresh uuid from `ctx` so that
frameworks acknowledge them like agent updates, as in Mesos.

Events are emitted in the order `apply` needs them: offers are rescinded before the agent or framework
they belong to changes state, tasks reach terminal states before an agent is removed, offers are
accepted before the operations that use them.

Where the deciders live, by topic: `decide_cluster` (leader, masters, role weights, quota),
`decide_agents`, `decide_frameworks`, `decide_offers`, `decide_launch` (Accept: launches and
reservations; `check_launched_task` validates one task), `decide_tasks` (kills, status updates,
acknowledgements), `decide_state` (writes to a framework's key/value state); each module's `DECIDERS`
maps its command types to its deciders, joined here.
`decide_shared` holds the lookups and context values the topics share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from tessera.control_plane.core import commands as c
from tessera.control_plane.core import (
    decide_agents,
    decide_cluster,
    decide_frameworks,
    decide_launch,
    decide_offers,
    decide_state,
    decide_tasks,
)
from tessera.control_plane.core.context import Context
from tessera.control_plane.core.decide_shared import Decider
from tessera.control_plane.core.errors import InvalidRequest, TesseraError
from tessera.control_plane.core.events import Event, TaskStatusUpdated
from tessera.control_plane.core.lifecycle import is_terminal
from tessera.control_plane.core.resources import EMPTY, Resources
from tessera.control_plane.core.state import ClusterState, TaskKey

__all__ = ["Follow", "decide", "decide_each"]


def decide(state: ClusterState, command: c.Command, ctx: Context) -> tuple[Event, ...]:
    """The events that carry out `command` now, or a domain error. Never mutates `state`."""
    decider = _DECIDERS.get(type(command))
    if decider is None:
        raise InvalidRequest(f"unknown command {type(command).__name__}")
    return decider(state, command, ctx)


def decide_each(state: ClusterState, commands: Sequence[c.Command], ctx: Context,
                follow: Follow | None = None) -> list[tuple[Event, ...] | TesseraError]:
    """Independent commands for one entry, each decided on its own: its events, or the domain error that
    refused it (left out of the entry). Status updates of one task are decided in order, each against
    the state the earlier ones of this entry leave (`apply` applies them in that order): an agent's
    STARTING, RUNNING and FINISHED of a task go into one entry. Never mutates `state`.

    `follow(state, ended)`: the commands to decide after these, in the same entry, given the tasks the
    decided updates end (task -> its agent id) — the leader's allocation of what they free
    (`IssueOffers`, decided against the resources freed before it); their outcomes follow the commands'
    own. Not called when no task ends."""
    earlier: dict[TaskKey, decide_tasks.EarlierUpdate] = {}
    ended: dict[TaskKey, str] = {}
    outcomes: list[tuple[Event, ...] | TesseraError] = []
    for command in commands:
        try:
            if isinstance(command, c.UpdateStatus):
                events = decide_tasks.decide_update_after(state, command, ctx, earlier)
                for event in events:
                    if isinstance(event, TaskStatusUpdated) and is_terminal(event.status.state):
                        ended[TaskKey(event.framework_id, event.task_id)] = event.agent_id
                outcomes.append(events)
            else:
                outcomes.append(decide(state, command, ctx))
        except TesseraError as exc:
            outcomes.append(exc)
    if follow is None or not ended:
        return outcomes
    freed: dict[str, Resources] = {}
    for key, agent_id in ended.items():
        task = state.tasks.get(key)
        if task is not None:
            freed[agent_id] = freed.get(agent_id, EMPTY) + task.resources
    for command in follow(state, ended):
        try:
            if isinstance(command, c.IssueOffers):
                outcomes.append(decide_offers.issue_offers_after(state, command, ctx, freed))
            else:
                outcomes.append(decide(state, command, ctx))
        except TesseraError as exc:
            outcomes.append(exc)
    return outcomes


# the leader's commands after a batch of updates, given the tasks they end (`decide_each`)
Follow = Callable[[ClusterState, Mapping[TaskKey, str]], Sequence[c.Command]]


# every command type's decider; a type in two topics' tables is a bug (tests/unit/core/test_decide_validation.py)
_DECIDERS: dict[type, Decider] = {
    **decide_cluster.DECIDERS,
    **decide_agents.DECIDERS,
    **decide_frameworks.DECIDERS,
    **decide_offers.DECIDERS,
    **decide_launch.DECIDERS,
    **decide_tasks.DECIDERS,
    **decide_state.DECIDERS,
}
