"""The simulation's leader: ``SimMaster``, one master of the whole-cluster simulation (``tests.sim.world``).

A master is a real pysyncobj node (``SimRaftNode``) applying committed entries into a real
``MasterStateMachine``, plus a second shell around the production leader duties of
``tessera.control_plane.runtime.duties`` (``LeaderDuties`` in ``tessera.control_plane.runtime.leader`` is the threaded
one). The duties decide, as data, what is due (``tick``), what committed events justify sending
(``react``), what a new leader must do (``elected``), how offers become entries (``offer_proposals``) and
which tasks a re-registering agent must kill (``orphaned``); the ``Ledger`` keeps their bookkeeping as the
real leader keeps it. What is the simulation's own: the ``LeaderElected`` barrier before serving (as
``Master._become_leader``), proposing through the fake network, and delivering messages to the twins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from tessera.control_plane.allocation import allocate, snapshot_from_state
from tessera.control_plane.codec import entry_to_bytes
from tessera.control_plane.core import commands as cmd
from tessera.control_plane.core import events as ev
from tessera.control_plane.core.apply import ApplyResult
from tessera.control_plane.core.errors import TesseraError
from tessera.control_plane.core.values import TaskKey
from tessera.control_plane.eventlog import EventRecord
from tessera.control_plane.eventlog.records import EventRow
from tessera.control_plane.replication.config import ReplicationConfig
from tessera.control_plane.replication.sim import FAIL_SUCCESS, SimRaftNode
from tessera.control_plane.runtime import duties
from tessera.control_plane.runtime.duties import LeaderSettings
from tessera.control_plane.runtime.master import decide_entry
from tessera.control_plane.runtime.statemachine import Applied, MasterStateMachine
from tests.sim.twins import AgentTwin, FrameworkTwin, Request

if TYPE_CHECKING:
    from tests.sim.world import Simulation

# Timings of the leader loop, scaled down so that a few simulated seconds see several of each duty.
SETTINGS = LeaderSettings(agent_timeout=2.0, reregistration_timeout=2.0, framework_reconnect_timeout=2.0,
                          allocation_interval=0.5, offer_timeout=4.0, status_update_retry=1.5, tick=0.1)
# --slow-snapshots: snapshot chunks of this many bytes (pysyncobj: 64 KiB), each taking its sender this
# long (two or three fit in an append_entries period of 0.05 s)
SLOW_SNAPSHOT_CHUNK = 256
SLOW_SNAPSHOT_SECONDS = 0.02

class EventTrail:
    """The event-log port of one master, reduced to what the simulation checks: records arrive with
    consecutive seqs (within a life of the state machine) and can be looked up by seq."""

    def __init__(self) -> None:
        self.records: dict[int, EventRecord] = {}
        self.last_seq = 0
        self.problems: list[str] = []

    def append(self, records: Sequence[EventRecord]) -> None:
        for r in records:
            if self.last_seq and r.seq != self.last_seq + 1:
                self.problems.append(f"event seq {r.seq} follows {self.last_seq}")
            self.last_seq = r.seq
            self.records[r.seq] = r

    def append_rows(self, rows: Sequence[EventRow]) -> None:
        self.append([EventRecord(*row) for row in rows])

    def append_rows_later(self, build: Callable[[], Sequence[EventRow]], count: int) -> None:
        self.append_rows(build())

    def restored(self, seq: int) -> None:
        """The state machine was replaced by a snapshot: numbering continues after its seq."""
        self.last_seq = seq

    def get(self, seq: int) -> EventRecord | None:
        return self.records.get(seq)

class SimMaster:
    """One master: its Raft node and state machine (rebuilt at each restart over the same files), and
    the soft state of its leader loop (lost at each crash, as in a real master)."""

    def __init__(self, sim: Simulation, index: int) -> None:
        self.sim = sim
        self.index = index
        self.name = f"m{index}"
        self.address = sim.addresses[index]
        self.data_dir = sim.root / self.name
        self.incarnation = 0
        self.node: SimRaftNode | None = None
        self.sm: MasterStateMachine | None = None
        self.trail = EventTrail()
        self.start()

    # ---- life ----------------------------------------------------------------------------------------
    def start(self) -> None:
        sim = self.sim
        self.incarnation += 1
        self.ids = 0
        self.serving_term = 0
        self.barrier_term = 0
        self.ledger = duties.Ledger()  # pending duty proposals, timers: kept as the real leader keeps them
        self.last_seen: dict[str, float] = {}  # agent id -> last time it talked to this leader
        self.sessions: dict[str, str] = {}  # framework id -> stream id, subscribed through this leader
        self.agent_sessions: dict[str, str] = {}  # agent id -> twin name
        self.update_sent: dict[str, float] = {}  # status uuid -> when last pushed
        self.trail = EventTrail()
        self.sm = sm = sim.state_machine_factory(self.trail)
        sm.add_listener(self.on_applied)
        restore, trail = sm.restore, self.trail

        def restored(snap: object) -> None:
            restore(snap)
            trail.restored(sm.state.seq)
            sim.trace(f"{self.name} restored a snapshot at seq {sm.state.seq}")

        sm.restore = restored  # type: ignore[method-assign]
        config = ReplicationConfig(
            self.address, tuple(a for a in sim.addresses if a != self.address), self.data_dir,
            log_compaction_min_entries=sim.compaction_entries, dynamic_membership_change=False,
            apply_thread=sim.apply_step,
        )
        self.node = SimRaftNode(sim.network, config, sm, on_leadership=sim.on_leadership,
                                guard_snapshots=sim.guard_snapshots, pre_vote=sim.pre_vote,
                                snapshot_chunk_bytes=SLOW_SNAPSHOT_CHUNK if sim.slow_snapshots else None)
        sim.scheduler.after(SETTINGS.tick * sim.rng.random(), self.leader_loop, self.incarnation)

    def crash(self) -> None:
        if self.node is not None:
            self.node.crash()
        self.node = None
        self.sm = None

    @property
    def alive(self) -> bool:
        return self.node is not None

    def new_id(self, prefix: str) -> str:
        self.ids += 1
        return f"{prefix}-{self.name}.{self.incarnation}.{self.ids}"

    def serving(self) -> bool:
        node = self.node
        return node is not None and node.is_leader() and self.serving_term == node.term()

    # ---- proposing -----------------------------------------------------------------------------------
    def propose(self, commands: Sequence[cmd.Command], request_id: str,
                done: Callable[[tuple[Any, ...]], None]) -> None:
        """As ``Master.propose_async``: decide now (a domain error answers at once), then commit."""
        node, sm = self.node, self.sm
        assert node is not None and sm is not None
        term = node.term()
        try:
            entry, prior = decide_entry(sm, commands, request_id=request_id, traceparent="", term=term,
                                        leader=self.address, now=self.sim.clock.now, new_id=self.new_id)
        except TesseraError as exc:
            done(("error", type(exc).__name__, str(exc)))
            return
        if prior is not None:
            done(_outcome(prior))
            return
        if not entry.events:
            done(("ok", None, None))  # already done: nothing committed, nothing to acknowledge
            return
        data = entry_to_bytes(entry)
        sm.expect(data, entry)
        incarnation = self.incarnation

        def committed(result: object, err: int) -> None:
            if self.incarnation != incarnation:
                return
            if err != FAIL_SUCCESS or not isinstance(result, list) or not isinstance(result[0], ApplyResult):
                done(("unknown", err))
            else:
                done(_outcome(result[0]))

        node.propose([data], committed)

    def propose_duty(self, proposal: duties.Propose) -> None:
        """A duty's entry (recorded pending in the ledger by whoever decided it) until its outcome."""
        incarnation = self.incarnation

        def done(outcome: tuple[Any, ...]) -> None:
            if self.incarnation == incarnation:
                self.ledger.done(proposal.key)

        self.propose(proposal.commands, self.new_id("req"), done)

    # ---- requests from twins -------------------------------------------------------------------------
    def handle(self, request: Request, reply: Callable[[tuple[Any, ...]], None]) -> None:
        node = self.node
        if node is None:
            return  # a dead process answers nothing
        if not self.serving():
            reply(("not_leader", node.leader()))
            return
        now = self.sim.clock.now
        twin = self.sim.twins[request.client]
        if request.kind == "ping":
            if isinstance(twin, AgentTwin) and twin.agent_id:
                if self.agent_sessions.get(twin.agent_id) != twin.name:
                    reply(("error", "NotFound", "agent session not on this master"))
                    return
                ended = duties.stream_ends(self.sm.state, twin.agent_id)
                if ended is not None:  # as the AgentLink service: the session ends, the twin reregisters
                    del self.agent_sessions[twin.agent_id]
                    reply(("error", "NotFound", ended))
                    return
                self.last_seen[twin.agent_id] = now
            if isinstance(twin, FrameworkTwin) and self.sessions.get(twin.framework_id) != twin.stream_id:
                reply(("error", "NotFound", "framework is not subscribed here"))
                return
            reply(("ok", None, None))
            return
        if request.kind == "register":
            self.propose(request.commands, request.request_id, lambda o: reply(self._registered(o)))
            return
        if request.kind == "reregister":
            agent_id = request.commands[0].agent_id  # type: ignore[union-attr]

            def reregistered(outcome: tuple[Any, ...]) -> None:
                if outcome[0] == "ok":
                    self.agent_sessions[agent_id] = twin.name
                    self.last_seen[agent_id] = self.sim.clock.now
                    rereg = cast(cmd.ReregisterAgent, request.commands[0])
                    assert self.sm is not None
                    outcome = (*outcome[:3], duties.orphaned(self.sm.state, agent_id, rereg.tasks))
                reply(outcome)

            self.propose(request.commands, request.request_id, reregistered)
            return
        if request.kind == "subscribe":
            def subscribed(outcome: tuple[Any, ...]) -> None:
                if outcome[0] == "ok" and outcome[1] is not None:
                    sub = next(e for _, e in outcome[1].events if isinstance(e, ev.FrameworkSubscribed))
                    self.sessions[sub.framework_id] = sub.stream_id
                    outcome = (*outcome[:3], (sub.framework_id, sub.stream_id, sub.lease_term))
                    reply(outcome)
                    self.after_subscribe(sub.framework_id)
                else:
                    reply(outcome if outcome[0] != "ok" else ("error", "Conflict", "no subscription recorded"))

            self.propose(request.commands, request.request_id, subscribed)
            return
        if isinstance(twin, AgentTwin) and twin.agent_id:
            self.last_seen[twin.agent_id] = now
        self.propose(request.commands, request.request_id, reply)

    def _registered(self, outcome: tuple[Any, ...]) -> tuple[Any, ...]:
        """As the agent link does: the new agent id is in the result, or (a retried registration) in the
        event its first attempt recorded."""
        if outcome[0] != "ok" or outcome[1] is None:
            return outcome
        result: ApplyResult = outcome[1]
        for _, event in result.events:
            if isinstance(event, ev.AgentRegistered):
                return (*outcome[:3], event.agent_id)
        record = self.trail.get(result.first_seq)
        if record is not None and record.type == "AgentRegistered":
            return (*outcome[:3], record.agent_id)
        return ("error", "InvalidRequest", "registration produced no agent id")

    def after_subscribe(self, framework_id: str) -> None:
        assert self.sm is not None
        state = self.sm.state
        self.deliver([*duties.outstanding_offers(state, framework_id), *duties.unacknowledged(state, framework_id),
                      duties.WantAllocation()])

    # ---- reactions after apply -----------------------------------------------------------------------
    def on_applied(self, batch: Sequence[Applied]) -> None:
        self.sim.applied(self, batch)
        if not self.serving():
            return
        self.deliver(duties.react(batch, self.node.term() if self.node is not None else 0))

    def deliver(self, outbound: Sequence[duties.Outbound]) -> None:
        """The simulation's delivery of the duties' messages: pushes to the twins."""
        sim = self.sim
        for item in outbound:
            if isinstance(item, duties.WantAllocation):
                self.ledger.record([item], sim.clock.now)
            elif isinstance(item, duties.RunTask):
                sim.push_agent(self, item.agent_id, item.term, "run", item.task)
            elif isinstance(item, duties.KillTask):
                sim.push_agent(self, item.agent_id, item.term, "kill", TaskKey(item.framework_id, item.task_id))
            elif isinstance(item, duties.ShutdownAgent):
                sim.push_agent(self, item.agent_id, item.term, "shutdown", item.reason)
            elif isinstance(item, duties.SendUpdate):
                if item.status.uuid and item.framework_id in self.sessions:
                    self.update_sent[item.status.uuid] = sim.clock.now
                sim.push_framework(self, item.framework_id, "update", item.status)
            elif isinstance(item, duties.SendOffers):
                sim.push_framework(self, item.framework_id, "offers", item.offers)
            elif isinstance(item, duties.SendRescind):
                sim.push_framework(self, item.framework_id, "rescind", item.offer_id)
            elif isinstance(item, duties.RemoveFramework):
                self.sessions.pop(item.framework_id, None)

    # ---- the leader loop -----------------------------------------------------------------------------
    def leader_loop(self, incarnation: int) -> None:
        if incarnation != self.incarnation or self.node is None:
            return
        sim = self.sim
        sim.scheduler.after(SETTINGS.tick, self.leader_loop, incarnation)
        node, sm = self.node, self.sm
        assert sm is not None
        now = sim.clock.now
        if not node.is_leader():
            if self.serving_term:
                self.deposed()
            return
        term = node.term()
        if self.serving_term != term:
            if self.serving_term:
                self.deposed()
            if self.barrier_term != term:
                self.barrier_term = term
                self.barrier(term)
            return
        if sim.quiet:
            return
        soft = self.ledger.view(now, last_seen=self.last_seen, frameworks=self.sessions,
                                update_sent=self.update_sent)
        self.do(duties.tick(soft, sm.state, now, SETTINGS), now)

    def do(self, todo: Sequence[duties.Command], now: float) -> None:
        """What the duties decided, done the simulation's way (as ``LeaderDuties._do`` does it for real)."""
        self.ledger.record(todo, now)
        for item in todo:
            if isinstance(item, duties.Propose):
                self.propose_duty(item)
            elif isinstance(item, duties.AllocationRound):
                assert self.sm is not None
                offers = allocate(snapshot_from_state(self.sm.state, now, pending=self.ledger.pending_offers()),
                                  new_id=self.new_id, now=now,
                                  offer_timeout=SETTINGS.offer_timeout)
                self.do(duties.offer_proposals(offers), now)
            elif isinstance(item, duties.SendUpdate):
                self.deliver([item])

    def barrier(self, term: int) -> None:
        """The LeaderElected barrier (plus AnnounceMaster), then serve; as ``Master._become_leader``."""
        assert self.sm is not None
        commands: list[cmd.Command] = [cmd.ElectLeader(term=term, master=self.address, grpc_address=self.name,
                                                       name=self.name)]
        if self.sm.state.masters.get(self.address) != (self.name, self.name):
            commands.append(cmd.AnnounceMaster(name=self.name, raft_address=self.address, grpc_address=self.name))
        incarnation = self.incarnation

        def done(outcome: tuple[Any, ...]) -> None:
            if self.incarnation != incarnation or self.node is None:
                return
            if outcome[0] == "ok" and self.node.is_leader() and self.node.term() == term:
                self.serving_term = term
                now = self.sim.clock.now
                self.ledger.serving(now)
                self.sim.trace(f"{self.name} serving term {term}")
                if self.sm is not None:
                    self.do(duties.elected(self.sm.state), now)
            elif self.barrier_term == term:
                self.barrier_term = 0  # retried on the next duty tick while still leading in this term

        self.propose(commands, f"leader-{self.address}-{term}", done)

    def deposed(self) -> None:
        self.sim.trace(f"{self.name} deposed from term {self.serving_term}")
        self.serving_term = 0
        self.last_seen.clear()
        self.sessions.clear()
        self.agent_sessions.clear()
        self.update_sent.clear()
        self.ledger.deposed()

def _outcome(result: ApplyResult) -> tuple[Any, ...]:
    if result.ok:
        return ("ok", result, result.request_id)
    return ("error", result.error_code, result.reason)
