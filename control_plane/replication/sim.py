"""Deterministic simulation support: real pysyncobj nodes in one process, over an in-memory network.

Owns what a whole-cluster simulation needs from the replication layer, so that nothing outside this
package imports pysyncobj (``tests/sim`` builds on it):

* ``SimClock`` and ``Scheduler``: a fake clock and one heap of timed callbacks, ordered by
  ``(time, sequence number)``; nothing happens except when the scheduler runs it;
* ``deterministic_pysyncobj(clock, rng)``: while active, pysyncobj reads time from the fake clock and
  draws its election timeouts from the seeded ``rng``, and creates no wake-up pipe (the scheduler
  wakes nodes instead);
* ``SimNetwork``: links between nodes with TCP's semantics (see below), which a test can cut, heal
  and reset, and nodes that can crash;
* ``SimRaftNode``: one pysyncobj ``SyncObj`` with ``autoTick=False``, ticked by the scheduler, built
  from the same ``ReplicationConfig`` and ``syncobj_conf`` as a real master and applying committed
  entries through the same replicated method (``_ReplicatedLog.apply_batch`` -> the apply queue ->
  ``guarded_apply`` -> the state machine); the apply thread is a ``SteppedApplier``, a step the
  scheduler runs half a tick period after the tick that queued the batch. Journal and dump files are real files in the node's ``data_dir``, so a node
  rebuilt over the same directory after a crash recovers exactly as a restarted master does.

Sources of non-determinism and how each is removed: time (the fake clock, patched into pysyncobj),
randomness (election timeouts from the seeded rng), thread scheduling (no threads: ``autoTick=False``,
``useFork=False``), set iteration order (pysyncobj keeps nodes in sets; ``SimNode`` hashes its id with
a fixed function instead of Python's per-process salted ``hash(str)``).

The network model is TCP's, because pysyncobj is written for it: a connection delivers in order and
loses nothing until it breaks; a break loses whatever was in flight and both ends are told
(``onNodeDisconnected``); they reconnect later. Messages get a random delay, so messages on different
links are reordered against each other. A *cut* link holds its traffic (as TCP retransmits into a
partition) until it is healed (then everything held arrives, in order) or until its break is detected
(then it is lost). A *reset* breaks a connection at once: that is how message loss looks to a TCP
user. A crashed node's connections break at once (the kernel closes its sockets). Every message is
pickled at send time, as the TCP transport does, so nodes share no objects.

The Raft port guard (``raft_port_guard.GuardedTCPTransport``: frame lengths, handshake deadline, cap on pending
connections) is not installed here: it guards sockets, and the simulated network has none (messages
are objects handed from node to node, never framed bytes from a stranger).
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import pickle
import random
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pysyncobj.syncobj as _pysyncobj
from pysyncobj import FAIL_REASON, SyncObj
from pysyncobj.node import Node
from pysyncobj.transport import Transport

from ._applier import Applier, PendingApply
from .api import StateMachine
from .config import ReplicationConfig
from .consensus_guards import install_consensus_guards
from .durability import Disk, Durability, install_durability
from .journal_alignment import align_journal_with_dump
from .pysyncobj_node import _ReplicatedLog, syncobj_conf

__all__ = [
    "FAIL_SUCCESS",
    "RaftEntry",
    "Scheduler",
    "SimClock",
    "SimNetwork",
    "SimNode",
    "SimRaftNode",
    "deterministic_pysyncobj",
]

FAIL_SUCCESS = FAIL_REASON.SUCCESS
_STATE_LEADER = 2


class SimClock:
    """Seconds, as ``time.monotonic`` would give them; only the scheduler moves it."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class Scheduler:
    """Timed callbacks run in ``(time, insertion order)`` order; the clock jumps from one to the next."""

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.executed = 0

    def at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (max(when, self.clock.now), self._seq, fn, args))

    def after(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        self.at(self.clock.now + delay, fn, *args)

    def run_until(self, until: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= until:
            when, _, fn, args = heapq.heappop(heap)
            self.clock.now = max(self.clock.now, when)  # a callback may move the clock on (time spent)
            self.executed += 1
            fn(*args)
        self.clock.now = max(self.clock.now, until)


_active = False


@contextlib.contextmanager
def deterministic_pysyncobj(clock: SimClock, rng: random.Random) -> Iterator[None]:
    """Make pysyncobj read ``clock`` and draw from ``rng`` (and skip its wake-up pipe) for the block.

    pysyncobj reads both through module globals of ``pysyncobj.syncobj``; they are restored on exit.
    A threaded node (``RaftReplicator``) running meanwhile would read the fake clock and draw from
    ``rng`` too, so entering refuses while a pysyncobj tick thread is alive. Not reentrant.
    """
    global _active
    if _active:
        raise RuntimeError("deterministic_pysyncobj is already active")
    if any("_autoTickThread" in t.name for t in threading.enumerate()):
        raise RuntimeError("a threaded pysyncobj node is running in this process; stop it first")
    saved = (_pysyncobj.monotonicTime, _pysyncobj.random, _pysyncobj.PIPE_NOTIFIER_ENABLED)
    _pysyncobj.monotonicTime = clock
    _pysyncobj.random = rng
    _pysyncobj.PIPE_NOTIFIER_ENABLED = False
    _active = True
    try:
        yield
    finally:
        _pysyncobj.monotonicTime, _pysyncobj.random, _pysyncobj.PIPE_NOTIFIER_ENABLED = saved
        _active = False


class SimNode(Node):  # type: ignore[misc]
    """A pysyncobj node whose hash does not depend on the process (``hash(str)`` is salted)."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self._stable_hash = int.from_bytes(hashlib.blake2b(address.encode(), digest_size=8).digest(), "big") >> 2

    def __hash__(self) -> int:
        return self._stable_hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and self.id == other.id

    def __ne__(self, other: object) -> bool:
        return not self == other


class SimTransport(Transport):  # type: ignore[misc]
    """pysyncobj's transport port, backed by a ``SimNetwork``."""

    def __init__(self, network: SimNetwork, address: str) -> None:
        super().__init__(None, None, [])
        self._network = network
        self.address = address

    def send(self, node: Node, message: Any) -> bool:
        return self._network.send(self.address, node.id, message)

    def deliver(self, source: str, message: Any) -> None:
        self._onMessageReceived(SimNode(source), message)

    def connected(self, peer: str) -> None:
        self._onNodeConnected(SimNode(peer))

    def disconnected(self, peer: str) -> None:
        self._onNodeDisconnected(SimNode(peer))


@dataclass
class _Direction:
    queue: deque[tuple[float, bytes]] = field(default_factory=deque)
    last_at: float = 0.0
    pump_token: int = 0  # a scheduled pump runs only if its token is current


@dataclass
class _Link:
    a: str
    b: str
    up: bool = False
    epoch: int = 0
    cut: bool = False
    cut_token: int = 0
    dirs: dict[str, _Direction] = field(default_factory=dict)  # key: destination address


@dataclass
class NetworkStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0  # in flight when a connection broke, or sent while it was down
    breaks: int = 0
    connects: int = 0


class SimNetwork:
    """In-memory links between ``SimRaftNode``s with TCP semantics (module docstring)."""

    def __init__(self, scheduler: Scheduler, rng: random.Random, *, min_delay: float = 0.0005,
                 max_delay: float = 0.02, reconnect_delay: float = 0.2, snapshot_chunk_seconds: float = 0.0) -> None:
        self.scheduler = scheduler
        # Time a node spends sending one snapshot chunk (the clock moves on by it): with it, a snapshot of
        # many chunks spans several append_entries periods, as a large one does on a real master (whose
        # send loop stops after a period); 0: a whole snapshot goes out within one tick.
        self.snapshot_chunk_seconds = snapshot_chunk_seconds
        self.rng = rng
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.reconnect_delay = reconnect_delay
        self.nodes: dict[str, SimRaftNode] = {}
        self._links: dict[tuple[str, str], _Link] = {}
        self.stats = NetworkStats()

    # ---- topology ----------------------------------------------------------------------------------
    def link(self, a: str, b: str) -> _Link:
        key = (a, b) if a < b else (b, a)
        found = self._links.get(key)
        if found is None:
            found = self._links[key] = _Link(key[0], key[1], dirs={key[0]: _Direction(), key[1]: _Direction()})
        return found

    def node_up(self, node: SimRaftNode) -> None:
        self.nodes[node.address] = node
        for peer in node.peers:
            self.scheduler.after(self.reconnect_delay * self.rng.random(), self._try_connect, self.link(node.address, peer))

    def node_down(self, address: str) -> None:
        """The node's process died: its connections break at once."""
        self.nodes.pop(address, None)
        for link in self._links.values():
            if address in (link.a, link.b):
                self._break(link)

    def cut(self, a: str, b: str, detect_after: float) -> None:
        """Partition a from b: traffic is held; the connection breaks after ``detect_after`` seconds."""
        link = self.link(a, b)
        if link.cut:
            return
        link.cut = True
        link.cut_token += 1
        self.scheduler.after(detect_after, self._detect, link, link.cut_token)

    def heal(self, a: str, b: str) -> None:
        link = self.link(a, b)
        if not link.cut:
            return
        link.cut = False
        link.cut_token += 1
        if link.up:
            for dest, d in link.dirs.items():
                self._schedule_pump(link, dest, d)
        else:
            self.scheduler.after(self.reconnect_delay * self.rng.random(), self._try_connect, link)

    def reset(self, a: str, b: str) -> None:
        """Break the connection now (what message loss looks like over TCP); it reconnects later."""
        link = self.link(a, b)
        if link.up:
            self._break(link)
            self.scheduler.after(self.reconnect_delay, self._try_connect, link)

    def is_cut(self, a: str, b: str) -> bool:
        return self.link(a, b).cut

    def cut_links(self) -> list[tuple[str, str]]:
        return sorted((lk.a, lk.b) for lk in self._links.values() if lk.cut)

    # ---- connections -------------------------------------------------------------------------------
    def _try_connect(self, link: _Link) -> None:
        if link.up or link.cut or link.a not in self.nodes or link.b not in self.nodes:
            return
        link.up = True
        link.epoch += 1
        self.stats.connects += 1
        for here, there in ((link.a, link.b), (link.b, link.a)):
            node = self.nodes[here]
            node.transport.connected(there)
            node.wake()

    def _detect(self, link: _Link, token: int) -> None:
        if link.cut and link.cut_token == token and link.up:
            self._break(link)

    def _break(self, link: _Link) -> None:
        if not link.up:
            return
        link.up = False
        link.epoch += 1
        self.stats.breaks += 1
        for d in link.dirs.values():
            self.stats.lost += len(d.queue)
            d.queue.clear()
            d.pump_token += 1
        for here, there in ((link.a, link.b), (link.b, link.a)):
            node = self.nodes.get(here)
            if node is not None:
                node.transport.disconnected(there)
                node.wake()
        self.scheduler.after(self.reconnect_delay, self._try_connect, link)

    # ---- traffic -----------------------------------------------------------------------------------
    def send(self, source: str, dest: str, message: Any) -> bool:
        link = self.link(source, dest)
        self.stats.sent += 1
        if self.snapshot_chunk_seconds and isinstance(message, dict) and "serialized" in message:
            # also a snapshot message without data (the leader's own dump is being written): pysyncobj's
            # send loop repeats it until its period is over, which without time passing never comes
            self.scheduler.clock.now += self.snapshot_chunk_seconds
        if not link.up:
            self.stats.lost += 1
            return False
        d = link.dirs[dest]
        at = max(self.scheduler.clock.now + self.rng.uniform(self.min_delay, self.max_delay), d.last_at)
        d.last_at = at
        d.queue.append((at, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)))
        if len(d.queue) == 1 and not link.cut:
            self._schedule_pump(link, dest, d)
        return True

    def _schedule_pump(self, link: _Link, dest: str, d: _Direction) -> None:
        if not d.queue:
            return
        d.pump_token += 1
        self.scheduler.at(d.queue[0][0], self._pump, link, dest, d, d.pump_token)

    def _pump(self, link: _Link, dest: str, d: _Direction, token: int) -> None:
        if token != d.pump_token or link.cut or not link.up:
            return
        node = self.nodes.get(dest)
        if node is None:
            return
        source = link.a if dest == link.b else link.b
        now = self.scheduler.clock.now
        epoch = link.epoch
        while d.queue and d.queue[0][0] <= now and link.epoch == epoch:
            _, blob = d.queue.popleft()
            self.stats.delivered += 1
            node.transport.deliver(source, pickle.loads(blob))
        if link.epoch == epoch:
            self._schedule_pump(link, dest, d)
        node.wake()


@dataclass(frozen=True)
class RaftEntry:
    index: int
    term: int
    command: bytes


class SteppedApplier(Applier):
    """The apply thread of a ``RaftReplicator``, with the scheduler in place of the thread: batches queued by
    the tick are applied at a later step (``run_queued``, scheduled by ``schedule``), so the simulation runs
    the state lagging the commit index, and results arriving after later ticks, as a real master does. A
    ``drain`` (before a dump or a restore) applies what is queued at once, which is what waiting for the
    thread amounts to; a full queue does too (the tick thread would wait for room)."""

    def __init__(self, name: str, state_machine: StateMachine, schedule: Callable[[], None],
                 max_entries: int) -> None:
        super().__init__(name, state_machine, max_entries)
        self._schedule = schedule
        self._running = True  # no thread: the scheduler steps it

    def start(self) -> None:
        return

    def stop(self, timeout_s: float) -> None:
        self.run_queued()

    def apply(self, raft_index: int, entries: list[bytes]) -> PendingApply:
        if self._queued_entries and self._queued_entries + len(entries) > self._max_entries:
            self.run_queued()
        pending = PendingApply()
        self._queue.append((raft_index, entries, pending))
        self._queued_entries += len(entries)
        self._schedule()
        return pending

    def call(self, fn: Callable[[], None]) -> None:
        self._queue.append(fn)
        self._schedule()

    def drain(self, timeout_s: float | None) -> bool:
        self.run_queued()
        return True

    def run_queued(self) -> None:
        while self._queue:
            item = self._queue.popleft()
            if not callable(item):
                self._queued_entries -= len(item[1])
            self._run(item)


class NullStateMachine:
    """A state machine that keeps nothing: for simulations that study elections, not what is applied."""

    def apply_entries(self, raft_index: int, entries: list[bytes]) -> list[object]:
        return [None] * len(entries)

    def snapshot(self) -> object:
        return None

    def restore(self, snap: object) -> None:
        pass


class SimRaftNode:
    """One real pysyncobj node, ticked by the scheduler. Build it inside ``deterministic_pysyncobj``.

    ``crash()`` ends it like ``kill -9``: no meta file is written, journal bytes already written stay
    (they sit in the page cache of a real machine); a new ``SimRaftNode`` over the same ``data_dir``
    recovers from the dump and the journal.
    """

    def __init__(self, network: SimNetwork, config: ReplicationConfig, state_machine: StateMachine, *,
                 on_leadership: Callable[[SimRaftNode, bool, int], None] | None = None,
                 guard_snapshots: bool = True, disk: Disk | None = None,
                 before_dump: Callable[[float], bool] | None = None, pre_vote: bool = True,
                 snapshot_chunk_bytes: int | None = None) -> None:
        self.network = network
        self.config = config
        self.address = config.self_address
        self.peers = tuple(config.peers)
        self._on_leadership = on_leadership
        # as RaftReplicator: committed batches applied by the apply "thread", here a scheduled step
        self.applier: SteppedApplier | None = None
        self._apply_scheduled = False
        if config.apply_thread:
            self.applier = SteppedApplier(f"sim[{config.self_address}]", state_machine, self._schedule_apply,
                                          config.apply_queue_entries)
        self._consumer = _ReplicatedLog(state_machine, self.applier)
        self.transport = SimTransport(network, self.address)
        self.alive = True
        self._tick_pending_at: float | None = None
        config.data_dir.mkdir(parents=True, exist_ok=True)
        # snapshot_chunk_bytes: pysyncobj's chunk size (64 KiB), smaller for the simulation's small states
        chunking = {} if snapshot_chunk_bytes is None else {"logCompactionBatchSize": snapshot_chunk_bytes}
        conf = syncobj_conf(config, self._state_changed, autoTick=False, useFork=False, **chunking)
        if guard_snapshots:
            align_journal_with_dump(config.journal_file, config.dump_file)
        self._so = SyncObj(SimNode(self.address), [SimNode(p) for p in self.peers], conf=conf,
                           consumers=[self._consumer], nodeClass=SimNode, transport=self.transport)
        # durable acknowledgements as RaftReplicator's, on the given disk (None: pysyncobj's own, no sync)
        self.durability: Durability | None = None
        if disk is not None:
            self.durability = install_durability(self._so, disk, config.data_dir, config.dump_file,
                                                 before_dump=before_dump, clock=network.scheduler.clock)
        if guard_snapshots:  # every guard, as RaftReplicator; False reproduces pysyncobj's own behaviour
            install_consensus_guards(self._so, pre_vote=pre_vote)
        network.node_up(self)
        # Periodic ticks, like the poll timeout of pysyncobj's loop, at a per-node phase.
        network.scheduler.after(config.tick_period_s * network.rng.random(), self._periodic)

    # ---- driving -----------------------------------------------------------------------------------
    def _periodic(self) -> None:
        if not self.alive:
            return
        self.tick()
        self.network.scheduler.after(self.config.tick_period_s, self._periodic)

    def wake(self) -> None:
        """Tick as soon as possible (a message arrived, a command was queued): the poll returned."""
        now = self.network.scheduler.clock.now
        if self.alive and self._tick_pending_at != now:
            self._tick_pending_at = now
            self.network.scheduler.at(now, self._woken)

    def _woken(self) -> None:
        self._tick_pending_at = None
        if self.alive:
            self.tick()

    def tick(self) -> None:
        self._so.doTick(0.0)

    def _schedule_apply(self) -> None:
        # The apply thread runs a while after the tick that queued work (half a tick period: messages
        # arriving meanwhile are handled by ticks before it). A fixed delay draws nothing from the seeded
        # rng, so a seed injects the same faults with and without the apply step.
        if not self._apply_scheduled:
            self._apply_scheduled = True
            self.network.scheduler.after(self.config.tick_period_s / 2, self._apply_step)

    def _apply_step(self) -> None:
        self._apply_scheduled = False
        if self.alive and self.applier is not None:
            self.applier.run_queued()

    def crash(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self.network.node_down(self.address)
        self._so._doDestroy()  # closes the journal's mmap and file; the meta file is not rewritten

    def _state_changed(self, old: int, new: int) -> None:
        if (old == _STATE_LEADER) != (new == _STATE_LEADER) and self._on_leadership is not None:
            self._on_leadership(self, new == _STATE_LEADER, int(self._so.raftCurrentTerm))

    # ---- writes --------------------------------------------------------------------------------------
    def propose(self, entries: list[bytes], callback: Callable[[object, int], None]) -> None:
        """One replicated call carrying ``entries``, exactly as ``RaftReplicator`` proposes a batch.
        ``callback(result, fail_reason)`` runs on this node when the call is applied or fails
        (``fail_reason == FAIL_SUCCESS``: ``result`` is the state machine's list of results), in log
        order: a failure waits behind the batches queued for apply before it, as ``RaftReplicator``'s."""
        applier = self.applier

        def done(result: object, err: int) -> None:
            if isinstance(result, PendingApply):
                result.then(lambda payload: callback(payload, err))
            elif applier is not None and err != FAIL_REASON.SUCCESS:
                applier.call(lambda: callback(result, err))
            else:
                callback(result, err)

        self._consumer.apply_batch(entries, callback=done)
        self.wake()

    # ---- reads ---------------------------------------------------------------------------------------
    def is_leader(self) -> bool:
        return self.alive and bool(self._so._isLeader())

    def term(self) -> int:
        return int(self._so.raftCurrentTerm)

    def leader(self) -> str | None:
        node = self._so._getLeader()
        return None if node is None else str(node)

    @property
    def commit_index(self) -> int:
        return int(self._so.raftCommitIndex)

    @property
    def last_applied(self) -> int:
        """The Raft index this node's state is at (behind pysyncobj's while batches wait for apply)."""
        handed_over = int(self._so.raftLastApplied)
        return self.applier.last_applied(handed_over) if self.applier is not None else handed_over

    def entry(self, index: int) -> RaftEntry | None:
        """The entry at ``index`` if this node still holds it (inside ``apply_entries`` it does)."""
        journal = self._so._SyncObj__raftLog  # pysyncobj keeps it private; read-only here
        if not len(journal):
            return None
        pos = index - journal[0][1]
        if not 0 <= pos < len(journal):
            return None
        command, idx, term = journal[pos]
        return RaftEntry(int(idx), int(term), bytes(command))

    def log(self, from_index: int = 0) -> list[RaftEntry]:
        """The Raft log this node holds (after compaction it starts at the snapshot's entries)."""
        journal = self._so._SyncObj__raftLog  # pysyncobj keeps it private; read-only here
        first = journal[0][1] if len(journal) else 0
        start = max(0, from_index - first)
        return [RaftEntry(int(idx), int(term), bytes(command)) for command, idx, term in journal[start:]]
