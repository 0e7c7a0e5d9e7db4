"""apply: the only code that changes master state, run on every master for every committed entry.

Theory of operation
-------------------
`apply(state, entry) -> ApplyResult` is deterministic and total:

- Deterministic: its outcome depends on `state` and `entry` only. It reads no clock (`entry.time` is the
  leader's clock, recorded in the entry), draws no random numbers, does no I/O, and never lets dict or set
  iteration order leak into the state or into recorded text. Every master computes the same state and
  numbers the same events the same way.
- Total: it never raises. An exception inside a replicated method would freeze the Raft cluster, so
  every failure, including a bug in a handler, becomes a recorded `Rejected` outcome.

An entry is atomic. Its events are applied in order by one small handler per event type; each handler
first re-checks the event's preconditions against the state as the earlier events of the same entry
left it, then mutates through an undo log (`Tx`, `core/apply_tx.py`). When any handler refuses (a decision that became
stale in flight, e.g. its offer was rescinded meanwhile, or a garbage event), the undo log is rolled back
in reverse and the entry becomes one recorded `Rejected(reason, code)` event with its own seq. The undo
log makes a rejected entry cost what it touched, instead of a copy of the whole state per entry.

After the events, handlers' post-checks run (conditions about the entry as a whole, e.g. that no task
is left unreachable on an agent that reregistered); a failing post-check rejects the entry the same way.

Numbering and idempotence:
- Recorded events get consecutive seqs after `state.seq`. Some events are idempotent repeats that change
  nothing and are not recorded (no seq): a status update whose uuid the task already applied, an
  acknowledgement already applied, a rescind of an offer already gone. An ignorable unknown event (from a
  newer master) has no effect but is recorded, so masters of every version number the log alike; a
  non-ignorable one rejects the entry.
- An entry with a non-empty `request_id` already seen returns the original result as 'duplicate' and
  records nothing. The table of request ids is bounded (FIFO), and so are the memories of completed
  tasks and retired offers; they are trimmed only after an entry succeeds, so rollback never has to
  restore evicted items.
- Entries from a term older than the state's (a deposed leader) are rejected.

Within one entry, accepted offers form a pool per (framework, agent): RESERVE / UNRESERVE transform it
and each launched task must fit it, exactly as `decide` checked; a launch needs an offer accepted earlier
in the same entry. An `OfferDeclined` for an offer accepted earlier in the entry records the decline
filter of an Accept with `refuse_seconds`.

Where the handlers live, by topic: `apply_cluster` (leader, masters), `apply_agents`, `apply_frameworks`,
`apply_offers`, `apply_tasks`, `apply_policy` (weights, quota, reservations), `apply_state` (frameworks'
key/value state: a put's seq is its key's version, `Tx.seq`); each module's `HANDLERS`
maps its event types to its handlers, and `_HANDLERS` here joins them with the log's own two (`Rejected`,
unknown events). `apply_tx` holds the undo log and the lookups and mutations the topics share.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from tessera.control_plane.core import (
    apply_agents,
    apply_cluster,
    apply_frameworks,
    apply_offers,
    apply_policy,
    apply_state,
    apply_tasks,
)
from tessera.control_plane.core.apply_tx import Handler, Tx
from tessera.control_plane.core.errors import Conflict, InvalidRequest, TesseraError
from tessera.control_plane.core.events import Entry, Event, Rejected, UnknownEvent
from tessera.control_plane.core.state import (
    MAX_ID_LENGTH,
    MAX_TEXT_LENGTH,
    ApplyResult,
    ClusterState,
    check_term,
    check_text,
    remembered,
    remembered_result,
)

__all__ = ["ApplyResult", "apply", "replay"]

INTERNAL_ERROR = "Internal"  # code of a rejection caused by a bug in apply (maps to Conflict for callers)


def apply(state: ClusterState, entry: Entry) -> ApplyResult:
    """Apply one committed entry to `state` (see the module docstring). Never raises."""
    try:
        return _apply(state, entry)
    except Exception as exc:  # noqa: BLE001 - last line of defence: apply must stay total
        return ApplyResult(
            outcome="rejected", events=(), first_seq=state.seq + 1, last_seq=state.seq,
            error_code=INTERNAL_ERROR, reason=_truncate(f"internal error in apply: {exc!r}"),
            request_id="",
        )


def replay(entries: Iterable[Entry], state: ClusterState | None = None) -> ClusterState:
    """Apply `entries` in order to `state` (a fresh one by default) and return it."""
    state = ClusterState() if state is None else state
    for entry in entries:
        apply(state, entry)
    return state


def _apply(state: ClusterState, entry: Entry) -> ApplyResult:
    if not isinstance(entry, Entry):
        return _reject(state, None, "", InvalidRequest.code, f"not a log entry: {type(entry).__name__}")
    request_id = entry.request_id
    if not isinstance(request_id, str) or len(request_id) > MAX_ID_LENGTH:
        return _reject(state, None, "", InvalidRequest.code, "request_id: must be a string of at most "
                       f"{MAX_ID_LENGTH} characters")
    if request_id and request_id in state.requests:
        prior = remembered_result(state.requests[request_id], request_id)
        return ApplyResult("duplicate", (), prior.first_seq, prior.last_seq, prior.error_code,
                           prior.reason, request_id)
    time = entry.time
    if type(time) is not float and (isinstance(time, bool) or not isinstance(time, (int, float))):
        return _reject(state, None, request_id, InvalidRequest.code, f"entry time {time!r} is not a number")
    if not math.isfinite(time):
        return _reject(state, None, request_id, InvalidRequest.code, f"entry time {time!r} is not a number")
    term = entry.term
    if type(term) is not int or term < 0:  # check_term's rule, without a call for the common case
        try:
            term = check_term(term, "entry term")
        except TesseraError as exc:
            return _reject(state, time, request_id, exc.code, exc.message)
    if term < state.term:
        return _reject(state, time, request_id, Conflict.code,
                       f"entry from term {term}, older than the current term {state.term}")
    events = entry.events
    if not isinstance(events, (tuple, list)):
        return _reject(state, time, request_id, InvalidRequest.code, "entry events: must be a sequence")

    recorded: list[Event] = []
    tx = Tx(float(time), state.seq + 1, recorded)
    position = -1  # which event failed, for the reason; -1: the entry's post-checks
    try:
        for position, event in enumerate(events):  # noqa: B007 - read in the except clauses
            handler = _HANDLERS.get(type(event))
            if handler is None:
                raise InvalidRequest(f"unknown event type {type(event).__name__}")
            if handler(state, event, tx):
                recorded.append(event)
        position = -1
        for check in tx.post_checks:
            check()
    except TesseraError as exc:
        tx.rollback()
        return _reject(state, time, request_id, exc.code, f"{_step(events, position)}: {exc.message}")
    except Exception as exc:  # noqa: BLE001 - a handler bug must become a rejection, not a frozen cluster
        tx.rollback()
        return _reject(state, time, request_id, INTERNAL_ERROR,
                       f"internal error in {_step(events, position)}: {exc!r}")

    first = state.seq + 1
    if len(recorded) == 1:  # most entries
        numbered: tuple[tuple[int, Event], ...] = ((first, recorded[0]),)
    else:
        numbered = tuple(zip(range(first, first + len(recorded)), recorded, strict=True))
    state.seq += len(recorded)
    state.time = float(time)
    counts = state.event_counts
    for event in recorded:
        name = type(event).__name__
        counts[name] = counts.get(name, 0) + 1
    if len(state.completed_tasks) > state.completed_tasks_limit:  # checked inline: this runs per entry
        _trim(state.completed_tasks, state.completed_tasks_limit)
    if len(state.retired_offers) > state.retired_offers_limit:
        _trim(state.retired_offers, state.retired_offers_limit)
    result = ApplyResult("applied", numbered, first, state.seq, "", "", request_id)
    _remember(state, request_id, result)
    return result


def _step(events: Sequence[object], position: int) -> str:
    if position < 0:
        return "the entry's post-checks"
    return f"event {position} ({type(events[position]).__name__})"


def _reject(state: ClusterState, time: float | None, request_id: str, code: str, reason: str) -> ApplyResult:
    """Record the entry as one Rejected event (the state is otherwise unchanged)."""
    rejected = Rejected(reason=_truncate(reason), code=code)
    state.seq += 1
    if time is not None:
        state.time = float(time)
    state.event_counts["Rejected"] = state.event_counts.get("Rejected", 0) + 1
    result = ApplyResult("rejected", ((state.seq, rejected),), state.seq, state.seq, code, rejected.reason,
                         request_id)
    _remember(state, request_id, result)
    return result


def _remember(state: ClusterState, request_id: str, result: ApplyResult) -> None:
    if not request_id:
        return
    # stored without its events: the table is snapshotted, and a duplicate answers without them anyway
    state.requests[request_id] = remembered(result)
    if len(state.requests) > state.request_limit:
        _trim(state.requests, state.request_limit)


def _trim(memory: OrderedDict[Any, Any], limit: int) -> None:
    while len(memory) > max(limit, 0):
        memory.popitem(last=False)


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_TEXT_LENGTH else text[: MAX_TEXT_LENGTH - 1] + "…"


def _rejected(state: ClusterState, e: Rejected, tx: Tx) -> bool:
    check_text(e.reason, "reason")
    check_text(e.code, "code", MAX_ID_LENGTH)
    return True  # a recorded outcome: no effect on state


def _unknown(state: ClusterState, e: UnknownEvent, tx: Tx) -> bool:
    if e.ignorable is not True:
        raise InvalidRequest(f"event type {e.type_number} is unknown to this master and not ignorable")
    return True  # recorded without effect so that every master version numbers the log alike


# every event type's handler; a type in two topics' tables is a bug (tests/unit/core/test_apply.py)
_HANDLERS: dict[type, Handler] = {
    **apply_cluster.HANDLERS,
    **apply_agents.HANDLERS,
    **apply_frameworks.HANDLERS,
    **apply_offers.HANDLERS,
    **apply_tasks.HANDLERS,
    **apply_policy.HANDLERS,
    **apply_state.HANDLERS,
    Rejected: _rejected,
    UnknownEvent: _unknown,
}
