"""The leader's duties as data: what the serving leader must propose and send, decided without I/O.

etcd-raft style: time enters as `now`, soft state as a frozen `SoftState`, committed facts as the
replicated `ClusterState` and the applied batches; what to do comes back as values. Two shells run these
same functions: `tessera.control_plane.runtime.leader.LeaderDuties` (threads, `time.monotonic()`, gRPC streams,
protobuf) and the whole-cluster simulation (`tests.sim.master.SimMaster`, a fake clock and in-memory
twins).

Rules kept here
---------------
- No I/O, no clock, no threads, no protobuf: this module imports only the pure core.
- Terminal task states come from `tessera.control_plane.core.lifecycle` (never a number: TASK_UNREACHABLE is not
  terminal and frees nothing).
- `tick(soft, state, now, settings) -> list[Command]`: the time-driven duties (`settings` are the
  `LeaderSettings` timings). Every tick: agents silent for longer
  than `agent_timeout` are marked unreachable (an agent never heard from since this leader started
  serving has `reregistration_timeout` to come back, and is marked as soon as that grace is over). Once a
  second (`SLOW_PERIOD`): connected frameworks without a stream to this leader on two rounds in a row, on
  the same stream, are disconnected (after `framework_reconnect_timeout`), expired frameworks and offers are expired, unacknowledged status updates
  not sent for `status_update_retry` are re-sent. An allocation round is due when one is wanted or
  `allocation_interval` passed, and no offers of the previous round are still being committed. A duty
  whose proposal is still in flight (its key in `soft.pending`) is not proposed again.
- `react(batch, term, principal_of) -> list[Outbound]`: what committed events justify sending (rule 3):
  RunTask (with the framework's recorded principal, for the agent's file service), KillTask, Shutdown to agents; updates, rescinds, offers, removal to frameworks; and whether an
  allocation round is wanted. Per stream the order is the events' order; the offers of a batch go last,
  one `SendOffers` per framework.
- `offer_proposals(offers)`: an allocation round's offers, `OFFERS_PER_ENTRY` to a log entry (each entry
  well under pysyncobj's 64 KiB batch bound; the offers are disjoint, so entries commit independently).
- `coalesce(items, joinable, batched)`: how one reaction's messages to one stream are grouped when the
  stream understands batches (`MAX_PER_MESSAGE` to a message).
- `orphaned(state, agent_id, reported)`: the tasks a re-registering agent reports alive that the master
  holds ended or never knew (Mesos kills them).
- `Ledger` is the shells' shared bookkeeping of soft state (pending keys, timers): mutable, no I/O, no
  locks (a threaded shell guards it with its own lock).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from tessera.control_plane.core import commands as cmd
from tessera.control_plane.core import events as ev
from tessera.control_plane.core.lifecycle import is_terminal
from tessera.control_plane.core.values import AgentState, FrameworkState, Offer, TaskInfo, TaskKey, TaskStatus

if TYPE_CHECKING:
    from tessera.control_plane.core.state import ClusterState
    from tessera.control_plane.runtime.statemachine import Applied

OFFERS_PER_ENTRY = 100  # offers committed per log entry (an offer encodes to a few hundred bytes)
MAX_PER_MESSAGE = 500  # RunTasks or updates in one batched message (each a few hundred bytes)
SLOW_PERIOD = 1.0  # seconds between rounds of the slower duties (frameworks, expiry, re-sends)


@dataclass(frozen=True)
class LeaderSettings:
    agent_heartbeat_interval: float = 1.0  # what agents are told to use
    agent_timeout: float = 10.0  # silent this long -> AgentUnreachable
    reregistration_timeout: float = 10.0  # grace after a leader change before timing an agent
    framework_heartbeat_interval: float = 5.0
    framework_reconnect_timeout: float = 5.0  # after a leader change, before a missing framework is disconnected
    framework_takeover_delay: float = 1.0  # a standby takes a framework's lease once it has been disconnected this long
    allocation_interval: float = 1.0
    offer_timeout: float | None = 60.0  # None = offers never expire
    status_update_retry: float = 10.0  # re-send unacknowledged updates to a framework this often
    tick: float = 0.1
    allocation_batch: float = 0.02  # a wanted allocation runs this long after the want (frees batched)
    # offer what a batch of status updates frees in that batch's own entry (`LeaderDuties.offers_for_ended`):
    # one commit earlier, but one offer per agent message instead of per round; off: measured on the
    # short-tasks benchmark, it split offers (30-60 % more Accepts) without a clear gain (docs/benchmarks.md)
    offers_with_frees: bool = False
    # allocation rounds whose offer entries may be in flight at once: above 1, a round runs while the
    # previous round's offers commit, over what those offers leave (`Ledger.pending_offers`); 1: each round
    # waits for the previous round's commit. 1 by default: on the short-tasks benchmark 2 split offers into
    # smaller, more frequent ones (more Accepts, more commits) without a gain shown (docs/benchmarks.md)
    allocation_rounds_in_flight: int = 1


# Events after which an allocation round may find something new to offer.
FREES_RESOURCES = (
    ev.AgentRegistered, ev.AgentReregistered, ev.AgentUndrained, ev.FrameworkSubscribed, ev.FrameworkRevived,
    ev.OfferDeclined, ev.OfferRescinded, ev.ResourcesUnreserved, ev.ResourcesReserved, ev.RoleWeightSet,
    ev.QuotaSet,
)


# ---- soft state --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SoftState:
    """What the serving leader knows that is not in the log (rule 7), as `tick` sees it."""

    serving_since: float  # when this leader started serving (the shell's clock)
    last_seen: Mapping[str, float] = field(default_factory=dict)  # agent id -> its last message to us
    frameworks: frozenset[str] = frozenset()  # framework ids with a stream open to this leader
    update_sent: Mapping[str, float] = field(default_factory=dict)  # status uuid -> when last sent
    pending: frozenset[tuple[str, str]] = frozenset()  # keys of duty proposals in flight
    allocation_wanted: bool = False
    last_allocation: float = float("-inf")
    last_slow: float = float("-inf")
    # framework id -> the stream it was connected on without a stream to this leader, at the last slow round
    missing: Mapping[str, str] = field(default_factory=dict)


# ---- commands (what tick asks of the shell) ------------------------------------------------------------
@dataclass(frozen=True)
class Propose:
    """Commit `commands` as one log entry; `key` names the duty (not proposed again while in flight)."""

    key: tuple[str, str]
    commands: tuple[cmd.Command, ...]


@dataclass(frozen=True)
class AllocationRound:
    """Run the allocator now and propose `offer_proposals` of its offers (the shell records the time)."""


@dataclass(frozen=True)
class SlowRound:
    """The once-a-second duties ran now (the shell records the time, and `missing` for the next round)."""

    missing: Mapping[str, str] = field(default_factory=dict)  # see `SoftState.missing`


# ---- outbound messages (what react and tick ask the shell to send) -------------------------------------
@dataclass(frozen=True)
class RunTask:
    agent_id: str
    term: int
    task: TaskInfo
    traceparent: str = ""
    principal: str = ""  # the task's framework's principal: its agent lets it read the sandbox (docs/files.md)


@dataclass(frozen=True)
class KillTask:
    agent_id: str
    term: int
    framework_id: str
    task_id: str
    grace_period_seconds: float = 0.0


@dataclass(frozen=True)
class ShutdownAgent:
    agent_id: str
    term: int
    reason: str


@dataclass(frozen=True)
class SendUpdate:
    framework_id: str
    status: TaskStatus


@dataclass(frozen=True)
class SendRescind:
    framework_id: str
    offer_id: str


@dataclass(frozen=True)
class SendOffers:
    framework_id: str
    offers: tuple[Offer, ...]


@dataclass(frozen=True)
class RemoveFramework:
    """Tell the framework it was removed and end its stream."""

    framework_id: str
    reason: str


@dataclass(frozen=True)
class WantAllocation:
    """Something was freed or added: run an allocation round soon."""


ToAgent = RunTask | KillTask | ShutdownAgent
ToFramework = SendUpdate | SendRescind | SendOffers | RemoveFramework
Outbound = ToAgent | ToFramework | WantAllocation
Command = Propose | AllocationRound | SlowRound | SendUpdate


# ---- the time-driven duties --------------------------------------------------------------------------------
def tick(soft: SoftState, state: ClusterState, now: float, settings: LeaderSettings = LeaderSettings()
         ) -> list[Command]:
    """What the serving leader must do at `now` (see the module docstring for the schedule)."""
    out: list[Command] = []
    out.extend(_unreachable_agents(soft, state, now, settings))
    if now - soft.last_slow >= SLOW_PERIOD:
        # A connected framework is disconnected once it has had no stream to this leader on two slow rounds
        # in a row, on the same stream: a subscription is committed before its stream is attached to the
        # leader, and a round between the two saw a framework connected without a stream (it disconnected
        # a standby that had just taken over, which then had every call refused as deposed).
        missing = {framework_id: fw.stream_id for framework_id, fw in sorted(state.frameworks.items())
                   if fw.state is FrameworkState.FRAMEWORK_CONNECTED and framework_id not in soft.frameworks}
        out.append(SlowRound(missing=missing))
        if now - soft.serving_since >= settings.framework_reconnect_timeout:
            for framework_id, stream_id in missing.items():
                key = ("framework", framework_id)
                if soft.missing.get(framework_id) == stream_id and key not in soft.pending:
                    out.append(Propose(key, (cmd.DisconnectFramework(framework_id=framework_id,
                                                                     stream_id=stream_id),)))
        if ("expiry", "") not in soft.pending:
            out.append(Propose(("expiry", ""), (cmd.ExpireFrameworks(), cmd.ExpireOffers())))
        for framework_id in sorted(soft.frameworks):
            for update in unacknowledged(state, framework_id):
                sent = soft.update_sent.get(update.status.uuid)
                if sent is None or now - sent >= settings.status_update_retry:
                    out.append(update)
    rounds_in_flight = len({key.partition("/")[0] for kind, key in soft.pending if kind == "offers"})
    if rounds_in_flight < settings.allocation_rounds_in_flight and (
            soft.allocation_wanted or now - soft.last_allocation >= settings.allocation_interval):
        out.append(AllocationRound())
    return out


def _unreachable_agents(soft: SoftState, state: ClusterState, now: float, settings: LeaderSettings
                        ) -> list[Command]:
    out: list[Command] = []
    timeout = settings.agent_timeout
    for agent_id, agent in sorted(state.agents.items()):
        if agent.state not in (AgentState.AGENT_ACTIVE, AgentState.AGENT_DRAINING):
            continue
        seen = soft.last_seen.get(agent_id)
        if seen is not None:
            silent = now - seen
        elif now - soft.serving_since >= settings.reregistration_timeout:
            # never heard from since this leader took over, and the re-registration grace is over: it
            # counts as silent for the whole timeout the moment the grace ends
            silent = now - soft.serving_since - settings.reregistration_timeout + timeout
        else:
            continue
        key = ("agent", agent_id)
        if silent > timeout and key not in soft.pending:
            out.append(Propose(key, (cmd.MarkAgentUnreachable(agent_id=agent_id,
                                                              reason=f"no heartbeat for {silent:.1f} s"),)))
    return out


def elected(state: ClusterState) -> list[Command]:
    """When this leader starts serving: rescind the offers issued under an older leader (their
    frameworks may never have seen them); an allocation round follows (`Ledger.serving` wants one)."""
    stale = sorted(state.offers)
    if not stale:
        return []
    return [Propose(("rescind", "stale"), tuple(cmd.RescindOffer(offer_id=o, reason="leader changed")
                                                 for o in stale))]


def unacknowledged(state: ClusterState, framework_id: str) -> list[SendUpdate]:
    """The oldest unacknowledged update of each of the framework's tasks (they live in replicated state,
    so nothing is lost across a failover)."""
    return [SendUpdate(framework_id, t.unacknowledged[0])
            for t in state.tasks_of_framework(framework_id) if t.unacknowledged]


def outstanding_offers(state: ClusterState, framework_id: str) -> list[SendOffers]:
    """The framework's live offers, for a (re)subscribed stream."""
    offers = tuple(state.offers_of_framework(framework_id))
    return [SendOffers(framework_id, offers)] if offers else []


def offers_not_held(offers: Sequence[Offer], held: frozenset[str]) -> Sequence[Offer]:
    """An allocation round's offers without those to frameworks whose subscription is being decided
    (`Master.offers_held`); their resources stay free for the next round."""
    return [o for o in offers if o.framework_id not in held] if held else offers


def offer_proposals(offers: Sequence[Offer]) -> list[Propose]:
    """An allocation round's offers as log entries of at most `OFFERS_PER_ENTRY` offers each, keyed
    ("offers", "<the round's first offer id>/<entry number>"): the round is what precedes the slash."""
    if not offers:
        return []
    round_id = offers[0].offer_id
    return [Propose(("offers", f"{round_id}/{start // OFFERS_PER_ENTRY}"),
                    (cmd.IssueOffers(offers=tuple(offers[start:start + OFFERS_PER_ENTRY])),))
            for start in range(0, len(offers), OFFERS_PER_ENTRY)]


# ---- reactions after commit ----------------------------------------------------------------------------------
def _no_principal(framework_id: str) -> str:
    return ""


def react(batch: Iterable[Applied], term: int,
          principal_of: Callable[[str], str] = _no_principal) -> list[Outbound]:
    """What the committed events of `batch` justify sending, in order (offers last, per framework).
    `principal_of(framework_id)`: the principal a framework was recorded under (its RunTasks carry it)."""
    out: list[Outbound] = []
    offers: dict[str, list[Offer]] = {}
    wanted = False
    for applied in batch:
        traceparent = applied.entry.traceparent
        for _, event in applied.result.events:
            if isinstance(event, FREES_RESOURCES):
                wanted = True
            if isinstance(event, ev.TaskLaunched):
                out.append(RunTask(event.agent_id, term, event.task, traceparent,
                                   principal_of(event.task.framework_id)))
            elif isinstance(event, ev.TaskKillRequested):
                out.append(KillTask(event.agent_id, term, event.framework_id, event.task_id,
                                    event.grace_period_seconds))
            elif isinstance(event, ev.AgentRemoved):
                out.append(ShutdownAgent(event.agent_id, term, event.reason))
            elif isinstance(event, ev.TaskStatusUpdated):
                if is_terminal(event.status.state):  # a task that ended freed its resources
                    wanted = True
                out.append(SendUpdate(event.framework_id, event.status))
            elif isinstance(event, ev.OfferIssued):
                offers.setdefault(event.framework_id, []).append(event.offer)
            elif isinstance(event, ev.OfferRescinded):
                out.append(SendRescind(event.framework_id, event.offer_id))
            elif isinstance(event, ev.FrameworkRemoved):
                out.append(RemoveFramework(event.framework_id, event.reason))
    out.extend(SendOffers(framework_id, tuple(items)) for framework_id, items in offers.items())
    if wanted:
        out.append(WantAllocation())
    return out


def acknowledged(batch: Iterable[Applied]) -> list[tuple[str, str]]:
    """(framework id, status uuid) of every update the committed events of `batch` acknowledged: the
    shell stops timing their re-sends (`SoftState.update_sent` holds only what may still be re-sent)."""
    return [(event.framework_id, event.uuid) for applied in batch for _, event in applied.result.events
            if isinstance(event, ev.TaskStatusAcknowledged)]


T = TypeVar("T")


def coalesce(items: Iterable[T], joinable: Callable[[T], bool], batched: bool,
             limit: int = MAX_PER_MESSAGE) -> list[tuple[T, ...]]:
    """Group one stream's messages, keeping their order: with `batched`, runs of consecutive joinable
    items become groups of at most `limit`; every other item is a group of its own. A group of one is
    sent in the single form, a longer one as one batched message."""
    groups: list[tuple[T, ...]] = []
    run: list[T] = []
    for item in items:
        if batched and joinable(item):
            run.append(item)
            if len(run) >= limit:
                groups.append(tuple(run))
                run = []
        else:
            if run:
                groups.append(tuple(run))
                run = []
            groups.append((item,))
    if run:
        groups.append(tuple(run))
    return groups


# ---- re-registration -------------------------------------------------------------------------------------------
def orphaned(state: ClusterState, agent_id: str, reported: Iterable[TaskStatus]) -> tuple[TaskKey, ...]:
    """Tasks a re-registering agent reports alive that the master holds ended, on another agent, or never
    knew: Mesos kills them. A report that is itself terminal is no task to kill. A bare task id (an agent
    of an earlier version, before task ids were scoped per framework) names the agent's one task of that
    id; when several frameworks' tasks on the agent share it, it names none (the key has no framework)."""
    out: list[TaskKey] = []
    agent = state.agents.get(agent_id)
    for status in reported:
        if is_terminal(status.state):
            continue
        framework_id = status.framework_id
        if not framework_id and agent is not None:
            named = [k.framework_id for k in agent.task_keys if k.task_id == status.task_id]
            framework_id = named[0] if len(named) == 1 else ""
        task = state.find_task(framework_id, status.task_id)
        if task is None or task.terminal or task.agent_id != agent_id:
            out.append(TaskKey(framework_id, status.task_id))
    return tuple(out)


def stream_ends(state: ClusterState, agent_id: str) -> str | None:
    """Why an agent's open stream must end although the agent still talks on it: it was marked unreachable
    meanwhile (silent longer than the agent timeout, e.g. paused or cut off while its connection survived),
    and only a re-registration brings it and its tasks back — as Mesos asks such an agent to reregister.
    None: the stream goes on."""
    agent = state.agents.get(agent_id)
    if agent is not None and agent.state == AgentState.AGENT_UNREACHABLE:
        return "the agent was marked unreachable: it must register again"
    return None


# ---- the shells' bookkeeping -------------------------------------------------------------------------------------
@dataclass
class Ledger:
    """Soft state both shells keep the same way: when serving began, duty proposals in flight, whether an
    allocation is wanted, when the timed rounds last ran. `view` freezes it for `tick`; `record` notes
    what a tick decided; `done` ends a proposal."""

    serving_since: float | None = None
    pending: set[tuple[str, str]] = field(default_factory=set)
    allocation_wanted: bool = True
    last_allocation: float = float("-inf")
    last_slow: float = float("-inf")
    missing: dict[str, str] = field(default_factory=dict)  # `SoftState.missing`
    # the offers of offer entries in flight, by key: the next allocation round offers what they leave
    offers_in_flight: dict[tuple[str, str], tuple[Offer, ...]] = field(default_factory=dict)

    def serving(self, now: float) -> None:
        self.serving_since = now
        self.missing.clear()
        self.pending.clear()
        self.offers_in_flight.clear()
        self.allocation_wanted = True

    def deposed(self) -> None:
        self.serving_since = None
        self.pending.clear()
        self.offers_in_flight.clear()

    def pending_offers(self) -> tuple[Offer, ...]:
        """Offers proposed and not yet settled (committed or failed): `snapshot_from_state`'s `pending`."""
        return tuple(o for offers in self.offers_in_flight.values() for o in offers)

    def view(self, now: float, *, last_seen: Mapping[str, float], frameworks: Iterable[str],
             update_sent: Mapping[str, float]) -> SoftState:
        return SoftState(serving_since=now if self.serving_since is None else self.serving_since,
                         last_seen=dict(last_seen), frameworks=frozenset(frameworks),
                         update_sent=dict(update_sent), pending=frozenset(self.pending),
                         allocation_wanted=self.allocation_wanted, last_allocation=self.last_allocation,
                         last_slow=self.last_slow, missing=dict(self.missing))

    def record(self, commands: Iterable[Any], now: float) -> None:
        """Note what the shell is about to do: proposals in flight, rounds run."""
        for c in commands:
            if isinstance(c, Propose):
                self.pending.add(c.key)
                offers = tuple(o for command in c.commands if isinstance(command, cmd.IssueOffers)
                               for o in command.offers)
                if offers:
                    self.offers_in_flight[c.key] = offers
            elif isinstance(c, AllocationRound):
                self.allocation_wanted = False
                self.last_allocation = now
            elif isinstance(c, SlowRound):
                self.last_slow = now
                self.missing = dict(c.missing)
            elif isinstance(c, WantAllocation):
                self.allocation_wanted = True

    def done(self, key: tuple[str, str]) -> None:
        self.pending.discard(key)
        self.offers_in_flight.pop(key, None)


__all__ = [
    "FREES_RESOURCES", "MAX_PER_MESSAGE", "OFFERS_PER_ENTRY", "SLOW_PERIOD", "AllocationRound", "Command",
    "LeaderSettings", "KillTask", "Ledger", "Outbound", "Propose", "RemoveFramework", "RunTask", "SendOffers",
    "SendRescind", "SendUpdate", "ShutdownAgent", "SlowRound", "SoftState", "ToAgent", "ToFramework",
    "WantAllocation", "acknowledged", "coalesce", "elected", "offer_proposals", "offers_not_held", "orphaned", "react", "tick",
    "unacknowledged", "outstanding_offers", "stream_ends",
]
