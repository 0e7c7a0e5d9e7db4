"""Whole-cluster deterministic simulation: masters on real pysyncobj, agent and framework twins, faults.

Theory of operation
-------------------
One seed fixes everything. ``Simulation(seed)`` builds three masters, each a real pysyncobj node
(``tessera.control_plane.replication.sim.SimRaftNode``: in-memory network, fake clock, seeded elections, pysyncobj
journal, meta and dump files in a temporary directory, on /dev/shm when there is one) applying committed
entries through the real replicated method into a real ``MasterStateMachine``
(``tessera.control_plane.runtime.statemachine``). A crashed master is rebuilt over its files and recovers as a
restarted process does: dump first, then the journal, with the term, vote and commit index of its meta
file as last written before the crash. Commands come from the real
pure core: ``decide_entry`` (the function ``Master`` proposes with), ``decide``, ``apply`` and the
allocator. The leader duties are the production ones: ``tessera.control_plane.runtime.duties`` decides them as
data (``tick``, ``react``, ``elected``, ``offer_proposals``, ``orphaned``, with its ``Ledger`` for the
bookkeeping), and ``SimMaster`` (``tests.sim.master``) is a second shell around those functions, as
``LeaderDuties`` is the threaded one: its leader loop (``SimMaster.leader_loop``) runs the
``LeaderElected`` barrier before serving, then each tick asks ``duties.tick`` what is due, and each
applied batch ``duties.react`` what to push to the twins. Only the barrier and the delivery are the
simulation's own.

Each step the generator picks, from the seeded rng, a fault (crash or restart a master, reboot every
master at once, cut, heal or reset a link between masters, isolate a master, lose an agent for a while), perhaps a client action,
and then advances the fake clock by a random slice, which delivers messages and ticks nodes. Requests
and pushes between twins and masters are delayed at random and 3 % of them are lost (the twins retry
with the same request id); Raft traffic follows the TCP model of ``SimNetwork``. After every
step ``check()`` verifies:

1. ``check_invariants`` on the state of every live master (whenever it applied something new);
2. committed log prefixes agree: an index committed anywhere always holds the same (term, entry) on
   every master, across crashes, restarts, compaction and snapshots;
3. at most one leader per term (recorded at every transition, not sampled);
4. every request a twin saw acknowledged after a commit is in the committed log at the index where it
   was applied, and every master that applied that far remembers its result;
5. masters that applied the same index have the same state fingerprint (sampled every 25 steps).

A final settling phase heals every link, restarts every master, stops the twins and then checks that
the cluster converged: one serving leader, every master at the same applied index with the same state
fingerprint, every acknowledged request present everywhere. Liveness failures are reported too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from tessera.control_plane.core.apply import ApplyResult
from tessera.control_plane.core.invariants import check_invariants
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.eventlog import EventStore
from tessera.control_plane.replication.sim import (
    RaftEntry,
    Scheduler,
    SimClock,
    SimNetwork,
    SimRaftNode,
    deterministic_pysyncobj,
)
from tessera.control_plane.runtime.statemachine import Applied, MasterStateMachine
from tests.sim.master import SLOW_SNAPSHOT_SECONDS, EventTrail, SimMaster
from tests.sim.twins import TWIN_PERIOD, AgentTwin, FrameworkTwin, Request

DEFAULT_STEPS = 200
SETTLE_STEPS = 12  # steps of 0.25 s with every fault repaired and the twins still active
QUIET_STEPS = 6  # then steps of 0.25 s with the twins and the leader loop quiet, before the final check
EPOCH = 1_790_000_000.0  # the fake clock starts here (decide wants plausible unix times)

class _TraceHandler(logging.Handler):
    """pysyncobj's log lines go into the trace (and are counted), not to stderr."""

    def __init__(self, sim: Simulation) -> None:
        super().__init__(logging.WARNING)
        self.sim = sim

    def emit(self, record: logging.LogRecord) -> None:
        self.sim.raft_log_lines += 1
        self.sim.trace(f"pysyncobj {record.levelname}: {record.getMessage()}")


class Violation(Exception):
    def __init__(self, seed: int, step: int, problems: list[str], steps: int, flags: str = "") -> None:
        self.seed, self.step, self.problems, self.steps, self.flags = seed, step, problems, steps, flags
        super().__init__(self.report())

    def report(self) -> str:
        lines = [f"simulation seed {self.seed}: invariant violated at step {self.step}"]
        lines += [f"  - {p}" for p in self.problems[:20]]
        lines.append(f"replay: {self.replay}")
        return "\n".join(lines)

    @property
    def replay(self) -> str:
        return f"python -m tests.sim.run --seed {self.seed} --steps {self.steps}{self.flags}"


@dataclass
class Report:
    seed: int
    steps: int
    faults: dict[str, int]
    events: int
    messages: int
    commits: int
    acked: int
    elections: int
    elections_after: dict[str, int]  # elections by cause (Simulation.elections_after)
    leader_faults: int  # faults that left the leader crashed or cut off from a majority
    max_term: int  # the highest Raft term of any master at the end
    leaderless_terms: int  # terms up to max_term in which no master led: failed elections (split votes, cut off)
    raft_log_lines: int
    simulated_seconds: float
    trace_hash: str
    fingerprints: tuple[str, ...]


StateMachineFactory = Callable[[EventTrail], MasterStateMachine]


def master_state_machine(trail: EventTrail) -> MasterStateMachine:
    """The real state machine of a master, writing its event records to `trail` (no event-log snapshots:
    the event log is not what this simulation checks)."""
    return MasterStateMachine(cast(EventStore, trail), snapshot_every=0)


def _scratch() -> str | None:
    """Journal, meta and dump files go to memory-backed /dev/shm when there is one: the same files and
    the same pysyncobj code paths, without paying for disk metadata writes (the meta file is rewritten
    every simulated second)."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def _digest(command: bytes) -> str:
    return hashlib.sha256(command).hexdigest()[:12]



class Simulation:
    def __init__(self, seed: int, steps: int = DEFAULT_STEPS, *, root: Path | None = None, masters: int = 3,
                 agents: int = 3, frameworks: int = 2, fault_rate: float = 0.08,
                 state_machine_factory: StateMachineFactory | None = None, guard_snapshots: bool = True,
                 pre_vote: bool = True, apply_step: bool = False, slow_snapshots: bool = False) -> None:
        self.seed = seed
        self.steps = steps
        self.rng = random.Random(seed)
        self.clock = SimClock(EPOCH)
        self.scheduler = Scheduler(self.clock)
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix=f"tessera-sim-{seed}-", dir=_scratch())) if root is None else root
        self.addresses = [f"10.0.0.{i + 1}:7000" for i in range(masters)]
        self.fault_rate = fault_rate
        self.compaction_entries = self.rng.choice((20, 50, 5000))
        self.state_machine_factory = state_machine_factory or master_state_machine
        self.guard_snapshots = guard_snapshots
        self.pre_vote = pre_vote
        # True: masters apply as RaftReplicator's apply thread does, in a step after the tick (SteppedApplier)
        self.apply_step = apply_step
        # True: snapshots travel in chunks of SLOW_SNAPSHOT_CHUNK bytes, each taking the sender
        # SLOW_SNAPSHOT_SECONDS, so a transmission spans several append_entries periods (and can be cut
        # off, deposed, resumed) as a large one does on a real master
        self.slow_snapshots = slow_snapshots
        self.final_prints: tuple[str, ...] = ()
        self.quiet = False
        self.step_no = 0
        self.faults: dict[str, int] = {}
        self._hash = hashlib.sha256()
        self._recent: deque[str] = deque(maxlen=2000)
        self.problems: list[str] = []
        # what the checker remembers across the whole run
        self.leaders: dict[int, str] = {}
        self.elections = 0
        # Elections by cause: "start" (the first), "leader fault" (the first after a fault that left the
        # leader crashed or cut off from a majority), else "no leader fault (after <the last fault>)": an
        # election that deposed a leader nothing had hurt, which pre-vote and check-quorum should prevent.
        self.elections_after: dict[str, int] = {}
        self.leader_faults = 0
        self._leader_faulted = False
        self._last_fault = ""
        self.committed: dict[int, tuple[int, bytes]] = {}  # raft index -> (term, entry) as first seen committed
        self.acked: dict[str, int] = {}  # request id -> raft index where it was applied
        self.request_index: dict[str, dict[str, int]] = {}  # master -> request id -> raft index
        self.checked_state: dict[str, tuple[int, int]] = {}
        self.raft_log_lines = 0
        self._raft_logger = logging.getLogger("pysyncobj")
        self._raft_log_handler = _TraceHandler(self)
        self._raft_logger.addHandler(self._raft_log_handler)
        self._raft_logger.propagate = False
        self._patch = deterministic_pysyncobj(self.clock, self.rng)
        self._patch.__enter__()
        try:
            self.network = SimNetwork(self.scheduler, self.rng,
                                      snapshot_chunk_seconds=SLOW_SNAPSHOT_SECONDS if slow_snapshots else 0.0)
            self.masters = [SimMaster(self, i) for i in range(masters)]
            self.twins: dict[str, AgentTwin | FrameworkTwin] = {}
            for i in range(agents):
                twin = AgentTwin(self, f"agent{i}", Resources.parse("cpus:2;mem:1024;ports:[31000-31003]"))
                self.twins[twin.name] = twin
            for i in range(frameworks):
                fw = FrameworkTwin(self, f"fw{i}", "web" if i % 2 == 0 else "batch", partition_aware=i % 2 == 1)
                self.twins[fw.name] = fw
            for twin_ in self.twins.values():
                self.scheduler.after(TWIN_PERIOD * self.rng.random(), self._twin_loop, twin_)
        except BaseException:
            self.close()
            raise

    # ---- plumbing ------------------------------------------------------------------------------------
    def close(self) -> None:
        for m in getattr(self, "masters", []):
            m.crash()
        if self._patch is not None:
            self._patch.__exit__(None, None, None)
            self._patch = None  # type: ignore[assignment]
            self._raft_logger.removeHandler(self._raft_log_handler)
            self._raft_logger.propagate = True
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Simulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def trace(self, line: str) -> None:
        text = f"{self.clock.now - EPOCH:.4f} {line}"
        self._hash.update(text.encode() + b"\n")
        self._recent.append(text)

    def _twin_loop(self, twin: AgentTwin | FrameworkTwin) -> None:
        twin.period()
        self.scheduler.after(TWIN_PERIOD, self._twin_loop, twin)

    def _lossy(self) -> bool:
        return self.rng.random() < 0.03

    def to_master(self, address: str, request: Request) -> None:
        if self._lossy():
            return
        master = self.masters[self.addresses.index(address)]
        twin = self.twins[request.client]

        def deliver() -> None:
            def reply(outcome: tuple[Any, ...]) -> None:
                if self._lossy():
                    return
                self.scheduler.after(self.rng.uniform(0.001, 0.03), twin.reply, request, outcome)

            master.handle(request, reply)

        self.scheduler.after(self.rng.uniform(0.001, 0.03), deliver)

    def push_agent(self, master: SimMaster, agent_id: str, term: int, kind: str, payload: Any) -> None:
        name = master.agent_sessions.get(agent_id)
        if name is None or self._lossy():
            return
        twin = self.twins[name]
        self.scheduler.after(self.rng.uniform(0.001, 0.03), twin.push, term, kind, payload)

    def push_framework(self, master: SimMaster, framework_id: str, kind: str, payload: Any) -> None:
        if framework_id not in master.sessions or self._lossy():
            return
        for twin in self.twins.values():
            if isinstance(twin, FrameworkTwin) and twin.framework_id == framework_id:
                self.scheduler.after(self.rng.uniform(0.001, 0.03), twin.push, 0, kind, payload)

    # ---- records for the checker ---------------------------------------------------------------------
    def on_leadership(self, node: SimRaftNode, leading: bool, term: int) -> None:
        self.trace(f"{node.address} {'leads' if leading else 'follows'} term {term}")
        if not leading:
            return
        self.elections += 1
        if self.elections == 1:
            cause = "start"
        elif self._leader_faulted:
            cause = "leader fault"
        else:
            cause = f"no leader fault (after {self._last_fault or 'none'})"
        self._leader_faulted = False
        self.elections_after[cause] = self.elections_after.get(cause, 0) + 1
        holder = self.leaders.get(term)
        if holder is not None and holder != node.address:
            self.problems.append(f"two leaders in term {term}: {holder} and {node.address}")
        self.leaders[term] = node.address

    def applied(self, master: SimMaster, batch: Sequence[Applied]) -> None:
        """Inside apply (the Raft entry is still in the node's log, compaction comes later in the tick):
        record where each request landed and check the entry against the committed history."""
        index = self.request_index.setdefault(master.name, {})
        for a in batch:
            if a.entry.request_id:
                index[a.entry.request_id] = a.raft_index
            self.trace(f"{master.name} applied {a.raft_index} {a.entry.request_id} {a.result.outcome}")
        if batch and master.node is not None:
            entry = master.node.entry(batch[0].raft_index)
            if entry is None:
                self.problems.append(f"{master.name} applied index {batch[0].raft_index}, which its log lacks")
            else:
                self._committed(master, entry)

    def _committed(self, master: SimMaster, entry: RaftEntry) -> None:
        seen = self.committed.setdefault(entry.index, (entry.term, entry.command))
        if seen != (entry.term, entry.command):
            self.problems.append(
                f"{master.name} holds committed index {entry.index} as (term {entry.term}, {_digest(entry.command)}) "
                f"but it was committed as (term {seen[0]}, {_digest(seen[1])})")

    def acknowledged(self, request: Request, result: ApplyResult, request_id: str) -> None:
        """A twin saw `request` succeed after a commit: it must never be lost."""
        where = [self.request_index.get(m.name, {}).get(request_id) for m in self.masters]
        known = [i for i in where if i is not None]
        if not known or known[0] not in self.committed:
            self.problems.append(f"request {request_id} acknowledged but not in the committed log")
            return
        self.acked[request_id] = known[0]
        self.trace(f"ack {request.client} {request_id} at {known[0]}")

    # ---- the scenario --------------------------------------------------------------------------------
    def fault(self) -> None:
        rng = self.rng
        dead = [m for m in self.masters if not m.alive]
        alive = [m for m in self.masters if m.alive]
        choices = ["cut", "heal", "reset", "isolate", "heal_all", "lose_agent", "restart"]
        if rng.random() < 0.25:
            choices.append("reboot_all")
        if len(dead) < len(self.masters) - 1 and (not dead or rng.random() < 0.2):
            choices += ["crash", "crash_leader"]
        kind = rng.choice(choices)
        a, b = rng.sample(self.addresses, 2)
        leader = next((m.address for m in alive if m.node is not None and m.node.is_leader()), None)
        detect = rng.choice((0.5, 2.0, 8.0))
        if kind == "cut":
            self.network.cut(a, b, detect)
        elif kind == "heal":
            cut = self.network.cut_links()
            if not cut:
                return
            a, b = rng.choice(cut)
            self.network.heal(a, b)
        elif kind == "reset":
            self.network.reset(a, b)
        elif kind == "isolate":
            for other in self.addresses:
                if other != a:
                    self.network.cut(a, other, detect)
        elif kind == "heal_all":
            for x, y in self.network.cut_links():
                self.network.heal(x, y)
        elif kind == "lose_agent":
            agents = sorted(t for t in self.twins if t.startswith("agent"))
            a = rng.choice(agents)
            self.twins[a].lose(rng.uniform(0.5, 5.0))  # type: ignore[union-attr]
        elif kind == "restart":
            if not dead:
                return
            m = rng.choice(dead)
            m.start()
            a = m.address
        elif kind == "reboot_all":  # every master killed at once, then started again over its files
            for m in alive:
                m.crash()
            for m in self.masters:
                m.start()
        elif kind in ("crash", "crash_leader"):
            leaders = [m for m in alive if m.node is not None and m.node.is_leader()]
            m = leaders[0] if kind == "crash_leader" and leaders else rng.choice(alive)
            m.crash()
            a = m.address
        self.faults[kind] = self.faults.get(kind, 0) + 1
        self._last_fault = kind
        if leader is not None and not self._leads_majority(leader):
            self.leader_faults += 1
            self._leader_faulted = True
        self.trace(f"fault {kind} {a} {b}")

    def _leads_majority(self, address: str) -> bool:
        """Is `address` a live leader whose links to a majority (itself included) are not cut?"""
        m = next(m for m in self.masters if m.address == address)
        if not m.alive or m.node is None or not m.node.is_leader():
            return False
        reach = 1 + sum(1 for o in self.masters if o is not m and o.alive and not self.network.is_cut(address, o.address))
        return 2 * reach > len(self.masters)

    def client_action(self) -> None:
        frameworks = [t for t in self.twins.values() if isinstance(t, FrameworkTwin)]
        fw = self.rng.choice(frameworks)
        if self.rng.random() < 0.5:
            fw.kill_one()
        else:
            fw.write_state()

    def step(self) -> None:
        self.step_no += 1
        rng = self.rng
        if rng.random() < self.fault_rate:
            self.fault()
        if rng.random() < 0.1:
            self.client_action()
        self.scheduler.run_until(self.clock.now + rng.uniform(0.02, 0.2))
        self.check()

    def run(self) -> Report:
        for _ in range(self.steps):
            self.step()
        self.settle()
        return self.report()

    def settle(self) -> None:
        """Heal everything, restart every master, let the twins finish, then stop them and converge."""
        self.trace("settle")
        for x, y in self.network.cut_links():
            self.network.heal(x, y)
        for m in self.masters:
            if not m.alive:
                m.start()
        for twin in self.twins.values():
            if isinstance(twin, AgentTwin):
                twin.lost_until = 0.0
        for _ in range(SETTLE_STEPS):
            self.step_no += 1
            self.scheduler.run_until(self.clock.now + 0.25)
            self.check()
        self.quiet = True
        for _ in range(QUIET_STEPS):
            self.step_no += 1
            self.scheduler.run_until(self.clock.now + 0.25)
            self.check()
        self.check_converged()

    # ---- invariants ----------------------------------------------------------------------------------
    def check(self) -> None:
        problems = self.problems
        for m in self.masters:
            node, sm = m.node, m.sm
            if node is None or sm is None:
                continue
            key = (m.incarnation, node.last_applied)
            if self.checked_state.get(m.name) != key:
                self.checked_state[m.name] = key
                problems.extend(f"{m.name}: {p}" for p in check_invariants(sm.state))
                problems.extend(f"{m.name} event log: {p}" for p in m.trail.problems)
                m.trail.problems.clear()
                self._check_requests(m)
            commit = node.commit_index
            for entry in node.log():  # the whole retained log: an entry may change under a checked index
                if entry.index > commit:
                    break
                self._committed(m, entry)
        if self.step_no % 25 == 0:
            self._check_fingerprints()
        if problems:
            self.trace("violation: " + "; ".join(problems))
            raise Violation(self.seed, self.step_no, list(problems), self.steps, self._flags())

    def _check_requests(self, m: SimMaster) -> None:
        assert m.node is not None and m.sm is not None
        applied = m.node.last_applied
        state = m.sm.state
        for request_id, index in self.acked.items():
            if index <= applied and state.result_for_request(request_id) is None:
                self.problems.append(f"{m.name} applied index {applied} but lost acknowledged request "
                                     f"{request_id} (applied at index {index})")

    def _check_fingerprints(self) -> None:
        """Masters that applied the same prefix hold the same state (fingerprints are costly: sampled)."""
        by_index: dict[int, list[SimMaster]] = {}
        for m in self.masters:
            if m.node is not None:
                by_index.setdefault(m.node.last_applied, []).append(m)
        for index, group in sorted(by_index.items()):
            if len(group) < 2:
                continue
            prints = {m.name: m.sm.state.fingerprint() for m in group if m.sm is not None}
            if len(set(prints.values())) > 1:
                self.problems.append(f"masters applied up to index {index} but their states differ: "
                                     + ", ".join(f"{k}={v[:12]}" for k, v in sorted(prints.items())))

    def check_converged(self) -> None:
        problems = self.problems
        leaders = [m for m in self.masters if m.serving()]
        if len(leaders) != 1:
            problems.append(f"after settling, {len(leaders)} masters serve as leader")
        applied = {m.name: m.node.last_applied for m in self.masters if m.node is not None}
        if len(set(applied.values())) != 1:
            problems.append(f"after settling, masters applied different prefixes: {applied}")
        prints = {m.name: m.sm.state.fingerprint() for m in self.masters if m.sm is not None}
        if len(set(prints.values())) != 1:
            problems.append("after settling, master states differ: "
                            + ", ".join(f"{k}={v[:12]}" for k, v in sorted(prints.items())))
        for m in self.masters:
            if m.sm is not None:
                missing = [r for r in self.acked if m.sm.state.result_for_request(r) is None]
                if missing:
                    problems.append(f"{m.name} lost acknowledged requests {missing[:5]}")
        self.final_prints = tuple(prints.get(m.name, "") for m in self.masters)
        self.trace("converged " + " ".join(sorted(prints.values())))
        if problems:
            raise Violation(self.seed, self.step_no, list(problems), self.steps, self._flags())

    def _flags(self) -> str:
        return (("" if self.guard_snapshots else " --unguarded") + ("" if self.pre_vote else " --no-pre-vote")
                + (" --apply-step" if self.apply_step else "") + (" --slow-snapshots" if self.slow_snapshots else ""))

    def report(self) -> Report:
        prints = self.final_prints or tuple(
            m.sm.state.fingerprint() if m.sm is not None else "" for m in self.masters)
        for p in prints:
            self._hash.update(p.encode())
        max_term = max((m.node.term() for m in self.masters if m.node is not None), default=0)
        return Report(
            seed=self.seed, steps=self.steps, faults=dict(self.faults), events=self.scheduler.executed,
            messages=self.network.stats.delivered, commits=max(self.committed, default=0),
            acked=len(self.acked), elections=self.elections, elections_after=dict(self.elections_after),
            leader_faults=self.leader_faults,
            max_term=max_term, leaderless_terms=max_term - len([t for t in self.leaders if t <= max_term]),
            raft_log_lines=self.raft_log_lines,
            simulated_seconds=self.clock.now - EPOCH, trace_hash=self._hash.hexdigest(),
            fingerprints=prints,
        )

    def recent(self) -> list[str]:
        return list(self._recent)


def run_seed(seed: int, steps: int = DEFAULT_STEPS, **kwargs: Any) -> Report:
    with Simulation(seed, steps, **kwargs) as sim:
        return sim.run()


__all__ = ["DEFAULT_STEPS", "EventTrail", "master_state_machine", "Report", "SimMaster", "Simulation", "Violation", "run_seed"]
