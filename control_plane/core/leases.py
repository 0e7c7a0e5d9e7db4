"""The framework lease: which instance of a framework is active, as one table and one pure function.

A framework may run as several instances at once (processes of the same framework, for high
availability). Exactly one is active — subscribed, offered resources, allowed to call and to write its
key/value state — and holds the framework's lease. The lease has a term (`FrameworkRecord.lease_term`):
each time the lease moves to another instance the term grows by one, and the `FrameworkSubscribed` that
moves it records the new term in the log. The active instance's calls name its stream; a call on any
other stream is refused (`Deposed`, naming the term), and a framework-state write also carries the term
it was decided under, checked again when it is applied — a deposed instance's calls never land. (The
stream-id check is the one every scheduler call had before leases; the term is what is new.)

What a subscription claims (`claim_kind`):

- FRESH: no lease term, not a standby: a new framework (no framework id), or, with an id, Mesos'
  failover: the subscriber takes the framework over from whoever holds it.
- STANDBY: no lease term, a standby: wait while another instance is active, take over once the framework
  has been disconnected for the takeover delay. Without a framework id the framework is the one of this
  principal with this name that a standby created (`by_name`), or a new one. A standby whose lease term
  is stale claims as STANDBY too (and learns from the answer that it was deposed).
- CURRENT: the lease term the framework has: its holder reconnects (its stream broke, the leader changed).
- STALE: an older term, not a standby: another instance took the lease since.

The framework's situation (`situation`), from the replicated state at the leader's clock:

- NONE: no framework to claim (no id given, and no framework of that name for a standby).
- HELD: connected — its holder's stream is open, or was when the last leader fell (a new leader
  disconnects a framework whose holder is not back within its reconnect timeout).
- LAPSING: disconnected for less than the takeover delay: its holder may still come back.
- FREE: disconnected for the takeover delay or longer.

`OUTCOMES[(situation, claim)]` is what happens; `docs/protocol.md` draws the same table
(`table_markdown`, kept in step by tests/unit/core/test_leases.py):

- CREATE: a new framework, lease term 1. TAKE_OVER: the lease moves to the subscriber, term + 1.
  RESUME: the holder is back, the same term. WAIT: a standby waits (`Wait`). REFUSE: `Deposed`, naming
  the term. Absent pairs cannot happen: a claim with a term names its framework (NotFound otherwise).
- Refused before the table, as without leases: a framework id that names nothing (NotFound), a removed
  framework or another principal's (Conflict).

`outcome(holder, ...)` applies the table to what it needs of a framework (`Holder`); `settle_claim`
makes the whole decision (the refusals before the table, then the table) over any keeper of framework
records, given how to find one and what to read of it (`Claimed`) — `FakeMaster` decides with it over its
own records; `claim(state, ...)` is it over the master's state. `decide` commits what `claim` grants (and
refuses WAIT with Conflict), the Scheduler API's `Subscribe` asks it first and holds a standby's stream
open while it waits, and `apply` re-checks the term (`check_subscription_term`): the framework's own for a holder coming back, one
more for a lease that moves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from tessera.control_plane.core.errors import Conflict, Deposed, InvalidRequest, NotFound
from tessera.control_plane.core.state import ClusterState, FrameworkRecord, check_id, check_number, check_term
from tessera.control_plane.core.values import FrameworkInfo, FrameworkState

__all__ = ["OUTCOMES", "Claim", "Claimed", "Grant", "Holder", "Outcome", "Situation", "Wait", "check_subscription_term",
           "claim", "claim_kind", "claimed_of", "holder_of", "named_framework", "outcome", "settle_claim", "situation",
           "table_markdown"]

F = TypeVar("F")  # a framework record, as its keeper has it


class Claim(Enum):
    FRESH = "fresh"
    STANDBY = "standby"
    CURRENT = "current term"
    STALE = "stale term"


class Situation(Enum):
    NONE = "none"
    HELD = "held"
    LAPSING = "lapsing"
    FREE = "free"


class Outcome(Enum):
    CREATE = "create"
    TAKE_OVER = "take over"
    RESUME = "resume"
    WAIT = "wait"
    REFUSE = "refuse"


OUTCOMES: dict[tuple[Situation, Claim], Outcome] = {
    (Situation.NONE, Claim.FRESH): Outcome.CREATE,
    (Situation.NONE, Claim.STANDBY): Outcome.CREATE,
    (Situation.HELD, Claim.FRESH): Outcome.TAKE_OVER,
    (Situation.HELD, Claim.STANDBY): Outcome.WAIT,
    (Situation.HELD, Claim.CURRENT): Outcome.RESUME,
    (Situation.HELD, Claim.STALE): Outcome.REFUSE,
    (Situation.LAPSING, Claim.FRESH): Outcome.TAKE_OVER,
    (Situation.LAPSING, Claim.STANDBY): Outcome.WAIT,
    (Situation.LAPSING, Claim.CURRENT): Outcome.RESUME,
    (Situation.LAPSING, Claim.STALE): Outcome.REFUSE,
    (Situation.FREE, Claim.FRESH): Outcome.TAKE_OVER,
    (Situation.FREE, Claim.STANDBY): Outcome.TAKE_OVER,
    (Situation.FREE, Claim.CURRENT): Outcome.RESUME,
    (Situation.FREE, Claim.STALE): Outcome.REFUSE,
}


@dataclass(frozen=True, slots=True)
class Grant:
    """The subscription goes ahead: a new framework (`framework` None) or `framework`, whose subscriber
    then holds the lease at `lease_term`."""

    outcome: Outcome  # CREATE, TAKE_OVER or RESUME
    framework: FrameworkRecord | None
    lease_term: int
    by_name: bool = False  # a new framework a standby created without an id


@dataclass(frozen=True, slots=True)
class Wait:
    """A standby waits: another instance holds `framework_id`'s lease at `lease_term`. `deposed`: the
    subscriber presented an older term (the lease moved away from it)."""

    framework_id: str
    lease_term: int
    deposed: bool = False


@dataclass(frozen=True, slots=True)
class Holder:
    """What the table needs to know of a framework: its id and lease term, whether an instance is connected,
    and since when none is."""

    framework_id: str
    lease_term: int
    connected: bool
    disconnected_at: float = 0.0


def holder_of(framework: FrameworkRecord) -> Holder:
    return Holder(framework.framework_id, framework.lease_term,
                  framework.state is FrameworkState.FRAMEWORK_CONNECTED, framework.disconnected_at)


def claim_kind(holder: Holder | None, standby: bool, lease_term: int) -> Claim:
    if lease_term == 0:
        return Claim.STANDBY if standby else Claim.FRESH
    if holder is not None and lease_term == holder.lease_term:
        return Claim.CURRENT
    return Claim.STANDBY if standby else Claim.STALE


def situation(holder: Holder | None, now: float, takeover_delay: float) -> Situation:
    if holder is None:
        return Situation.NONE
    if holder.connected:
        return Situation.HELD
    return Situation.LAPSING if now - holder.disconnected_at < takeover_delay else Situation.FREE


def outcome(holder: Holder | None, *, standby: bool, lease_term: int, now: float, takeover_delay: float
            ) -> tuple[Outcome, int]:
    """The table's outcome for a claim on `holder`'s framework (None: none to claim), and the lease term
    the subscriber then holds (for WAIT: the framework's, which it waits behind); `Deposed` for REFUSE.
    The master's `claim` and `FakeMaster` both decide with it."""
    decided = OUTCOMES[(situation(holder, now, takeover_delay), claim_kind(holder, standby, lease_term))]
    if decided is Outcome.CREATE:
        return decided, 1
    assert holder is not None  # every other outcome is of an existing framework
    if decided is Outcome.TAKE_OVER:
        return decided, holder.lease_term + 1
    if decided is not Outcome.REFUSE:
        return decided, holder.lease_term
    raise Deposed(f"lease term {lease_term} of framework {holder.framework_id} is over: another instance took the "
                  f"framework's lease, now at term {holder.lease_term}", lease_term=holder.lease_term)


def named_framework(state: ClusterState, principal: str, name: str) -> FrameworkRecord | None:
    """The framework a standby created under (principal, name) that is not removed, if any."""
    for framework_id in sorted(state.frameworks):
        fw = state.frameworks[framework_id]
        if (fw.by_name and fw.state is not FrameworkState.FRAMEWORK_REMOVED
                and fw.info.principal == principal and fw.info.name == name):
            return fw
    return None


@dataclass(frozen=True, slots=True)
class Claimed:
    """What the refusals before the table read of a framework's record, whoever keeps it (the master's
    state, `FakeMaster`): its holder, principal and name, whether a standby created it by name, and why it
    was removed (None while it is not)."""

    holder: Holder
    principal: str
    name: str
    by_name: bool
    removed: str | None = None


def claimed_of(framework: FrameworkRecord) -> Claimed:
    removed = framework.removed_reason if framework.state is FrameworkState.FRAMEWORK_REMOVED else None
    return Claimed(holder_of(framework), framework.info.principal, framework.info.name, framework.by_name, removed)


def settle_claim(framework_id: str, principal: str, name: str, *, standby: bool, lease_term: int, now: float,
                 takeover_delay: float, read: Callable[[F], Claimed], find: Callable[[str], F | None],
                 find_named: Callable[[str, str], str | None]) -> tuple[F | None, Outcome, int]:
    """The one decision of a subscription's claim over any keeper of framework records (`F`): the refusals
    before the table (see the module docstring), then the table (`outcome`). `find(framework_id)` looks a
    framework up, `find_named(principal, name)` names the one a standby created by that name and that is not
    removed (if any), `read` tells what the rules need of a framework. Returns the framework claimed (None: a
    new one), the outcome and the lease term (`outcome`'s); raises the domain errors. The master's `claim`
    and `FakeMaster` both decide with it."""
    framework: F | None
    if framework_id:
        framework = find(framework_id)
        if framework is None:
            raise NotFound(f"framework {framework_id} is not known")
        seen = read(framework)
        if seen.removed is not None:
            raise Conflict(f"framework {framework_id} was removed ({seen.removed}); subscribe anew")
        if principal != seen.principal:
            raise Conflict(f"framework {framework_id} subscribed as principal {seen.principal!r}")
        if seen.by_name and name != seen.name:
            raise InvalidRequest(f"info.name: framework {framework_id} is found by its name {seen.name!r}, "
                                 "which stays")
    elif lease_term:
        raise InvalidRequest("lease_term: an instance that held the lease names its framework id")
    else:
        named = find_named(principal, name) if standby else None
        framework = None if named is None else find(named)
    decided, term = outcome(None if framework is None else read(framework).holder, standby=standby,
                            lease_term=lease_term, now=now, takeover_delay=takeover_delay)
    return framework, decided, term


def claim(state: ClusterState, info: FrameworkInfo, *, standby: bool, lease_term: int, now: float,
          takeover_delay: float) -> Grant | Wait:
    """What a subscription with `info` (checked by the caller) gets now (see the module docstring):
    a `Grant`, a `Wait` for a standby, or a domain error."""
    if not isinstance(standby, bool):
        raise InvalidRequest("standby: must be a bool")
    check_term(lease_term, "lease_term")
    delay = check_number(takeover_delay, "takeover_delay")

    def find(framework_id: str) -> FrameworkRecord | None:
        return state.frameworks.get(check_id(framework_id, "info.framework_id"))

    def find_named(principal: str, name: str) -> str | None:
        named = named_framework(state, principal, name)
        return None if named is None else named.framework_id

    settled = settle_claim(info.framework_id, info.principal, info.name, standby=standby, lease_term=lease_term,
                           now=now, takeover_delay=delay, read=claimed_of, find=find, find_named=find_named)
    fw, decided, term = settled  # (unpacked apart: mypy infers the record type from the call alone)
    if fw is None:
        return Grant(decided, None, term, by_name=standby)
    if decided is Outcome.WAIT:
        return Wait(fw.framework_id, term, deposed=lease_term != 0)
    return Grant(decided, fw, term)


def check_subscription_term(framework: FrameworkRecord | None, lease_term: object, lease_moved: object) -> None:
    """`apply`'s re-check of a FrameworkSubscribed's lease (`lease_term` 0: an entry from before leases,
    unchecked): a new framework starts at 1; a moved lease is one term more than the framework's, a
    holder's return its very term. Anything else was decided before a competing subscription committed
    (two standbys taking over at once, a holder coming back as another took over): Conflict, decided
    again."""
    lease_term = check_term(lease_term, "lease_term")
    if not isinstance(lease_moved, bool):
        raise InvalidRequest("lease_moved: must be a bool")
    if lease_term == 0:
        if lease_moved:
            raise InvalidRequest("lease_moved: a lease moves to a term, not to 0")
        return
    if framework is None:
        if lease_term != 1:
            raise InvalidRequest(f"lease_term: a new framework's lease starts at term 1, got {lease_term}")
        return
    wanted = framework.lease_term + 1 if lease_moved else framework.lease_term
    if lease_term != wanted:
        raise Conflict(f"lease term {lease_term} was decided for a lease that has moved on (framework "
                       f"{framework.framework_id} is at term {framework.lease_term}); decide it again")


def table_markdown() -> str:
    """The lease table as docs/protocol.md draws it."""
    claims = list(Claim)
    lines = ["| situation \\ claim | " + " | ".join(c.value for c in claims) + " |",
             "|---|" + "---|" * len(claims)]
    for where in Situation:
        cells = [OUTCOMES[(where, c)].value if (where, c) in OUTCOMES else "—" for c in claims]
        lines.append(f"| {where.value} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
