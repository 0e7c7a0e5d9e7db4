"""Snapshot chunks of two transmissions mixed, or a chunk lost leaving a hole (docs/reliability.md, "Known
defects"): reproduced on real pysyncobj nodes in the simulation, and the guards that prevent it
(consensus_guards.guard_snapshot_transmissions on the leader, guard_snapshot_chunks on the follower,
and guard_failed_snapshot_install for what still arrives whole but must not be installed)."""

from __future__ import annotations

import contextlib
import gzip
import io
import pickle
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tessera.control_plane.replication import consensus_guards as guards
from tessera.control_plane.replication.config import ReplicationConfig
from tessera.control_plane.replication.journal_alignment import align_journal_with_dump
from tessera.control_plane.replication.prevote import install_pre_vote
from tessera.control_plane.replication.sim import (
    Scheduler,
    SimClock,
    SimNetwork,
    SimRaftNode,
    deterministic_pysyncobj,
)

ADDRESSES = ("10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000")
NEW_GUARDS = frozenset({"answers", "transmissions", "chunks"})
ANSWERS = frozenset({"answers"})
CHUNK_BYTES = 4096  # snapshot chunk size (pysyncobj's 64 KiB, scaled down with the state)
CHUNK_SECONDS = 0.03  # time a leader spends on one chunk: two fit in an append_entries period (0.05 s)


class _Recorder:
    """A state machine whose state is the list of applied entries; `refuse` makes restore raise."""

    def __init__(self) -> None:
        self.state: list[bytes] = []
        self.refuse = False

    def apply_entries(self, raft_index: int, entries: list[bytes]) -> list[object]:
        self.state.extend(entries)
        return [len(self.state)] * len(entries)

    def snapshot(self) -> object:
        return list(self.state)

    def restore(self, snap: object) -> None:
        if self.refuse:
            raise RuntimeError("restore refused by the test")
        assert isinstance(snap, list)
        self.state = list(snap)


def install_guards(so: Any, new: frozenset[str]) -> None:
    """The guards as install_consensus_guards puts them, with only the `new` ones of this change."""
    guards.guard_failed_snapshot_install(so)
    guards.guard_dump_overtaken_by_snapshot(so)
    guards.guard_snapshot_commit_index(so)
    if "answers" in new:
        guards.guard_snapshot_chunk_answers(so)
    if "chunks" in new:
        guards.guard_snapshot_chunks(so)
    if "transmissions" in new:
        guards.guard_snapshot_transmissions(so)
    guards.guard_matching_entries(so)
    guards.guard_backtracking(so)
    guards.guard_reply_terms(so)
    install_pre_vote(so)


@dataclass
class _Follower:
    """What one follower's pysyncobj did with snapshot chunks: each chunk appended to its file, and each
    file it then tried to load."""

    appended: list[tuple[str, int, bool, bool]] = field(default_factory=list)  # leader, term, first, last
    files: list[list[tuple[str, int]]] = field(default_factory=list)  # the (leader, term) of each chunk
    failed_loads: list[str] = field(default_factory=list)
    installed: int = 0
    dump_after_failure: bytes = b""


def watch_follower(node: SimRaftNode) -> _Follower:
    """Record, under every guard, what `node`'s pysyncobj appends to its incoming snapshot file and loads."""
    seen = _Follower()
    so = node._so
    serializer = so._SyncObj__serializer
    transport = so._SyncObj__transport
    deliver, append, load = transport._onMessageReceivedCallback, serializer.setTransmissionData, serializer.deserialize
    sender: list[tuple[str, int]] = [("", 0)]
    current: list[tuple[str, int]] = []

    def on_message(source: Any, message: Any) -> None:
        if isinstance(message, dict):
            sender[0] = (str(source), int(message.get("term", 0)))
        deliver(source, message)

    def appended(data: Any) -> Any:
        if isinstance(data, tuple):
            seen.appended.append((*sender[0], bool(data[1]), bool(data[2])))
            if data[1]:
                current.clear()
            current.append(sender[0])
            if data[2]:
                seen.files.append(list(current))
                current.clear()
        return append(data)

    def loaded() -> Any:
        try:
            data = load()
        except Exception as e:
            seen.failed_loads.append(type(e).__name__)
            seen.dump_after_failure = Path(node.config.dump_file).read_bytes()
            raise
        seen.installed += 1
        return data

    transport.setOnMessageReceivedCallback(on_message)
    serializer.setTransmissionData = appended
    serializer.deserialize = loaded
    return seen


@dataclass
class _Cluster:
    clock: SimClock
    scheduler: Scheduler
    network: SimNetwork
    nodes: dict[str, SimRaftNode]
    machines: dict[str, _Recorder]
    chunks: list[tuple[str, str, int, bool, bool]]  # every chunk sent: source, dest, term, first, last
    make: Callable[[str], SimRaftNode]

    def run(self, seconds: float) -> None:
        self.scheduler.run_until(self.clock.now + seconds)

    def run_until(self, what: str, done: Callable[[], bool], limit_s: float = 10.0) -> None:
        end = self.clock.now + limit_s
        while not done():
            assert self.clock.now < end, f"not within {limit_s} simulated s: {what}"
            self.run(0.005)

    def leader(self) -> SimRaftNode | None:
        return next((n for n in self.nodes.values() if n.is_leader()), None)


@contextlib.contextmanager
def cluster(tmp_path: Path, new: frozenset[str], seed: int = 5) -> Iterator[_Cluster]:
    """Three pysyncobj nodes on the simulated network, compacting every 10 entries; sending a snapshot
    chunk (CHUNK_BYTES) takes CHUNK_SECONDS, so a snapshot of many chunks is sent over many
    append_entries periods (longer than check-quorum takes to depose a leader cut off), as a large one
    is on a real master."""
    clock, rng = SimClock(1000.0), random.Random(seed)
    scheduler = Scheduler(clock)
    with deterministic_pysyncobj(clock, rng):
        network = SimNetwork(scheduler, rng)
        chunks: list[tuple[str, str, int, bool, bool]] = []
        network_send = network.send

        def send(source: str, dest: str, message: Any) -> bool:
            if isinstance(message, dict) and isinstance(message.get("serialized"), tuple):
                _, first, last = message["serialized"]
                chunks.append((source, dest, int(message["term"]), bool(first), bool(last)))
                clock.now += CHUNK_SECONDS
            return network_send(source, dest, message)

        network.send = send  # type: ignore[method-assign]
        machines: dict[str, _Recorder] = {}

        def make(address: str) -> SimRaftNode:
            cfg = ReplicationConfig(address, tuple(p for p in ADDRESSES if p != address),
                                    tmp_path / address.replace(":", "_"), log_compaction_min_entries=10)
            align_journal_with_dump(cfg.journal_file, cfg.dump_file)
            machines[address] = _Recorder()
            node = SimRaftNode(network, cfg, machines[address], guard_snapshots=False)
            node._so._SyncObj__serializer._Serializer__transmissionBatchSize = CHUNK_BYTES
            install_guards(node._so, new)
            return node

        nodes = {a: make(a) for a in ADDRESSES}
        c = _Cluster(clock, scheduler, network, nodes, machines, chunks, make)
        try:
            yield c
        finally:
            for n in c.nodes.values():
                n.crash()


def _fill(c: _Cluster, leader: SimRaftNode, count: int, seed: int) -> None:
    """`count` entries of 4 KB that do not compress: a dump of several 64-KiB chunks."""
    data = random.Random(seed)
    for i in range(count):
        leader.propose([b"%04d" % i + data.randbytes(4000)], lambda result, err: None)
        c.run(0.01)
    c.run(1.0)


def _follower_behind_a_compacted_log(c: _Cluster) -> tuple[SimRaftNode, str, str]:
    """The leader, a follower crashed while the others committed (and compacted) past its log and then
    restarted (it needs a snapshot), and the third node."""
    c.run_until("a leader", lambda: c.leader() is not None)
    leader = c.leader()
    assert leader is not None
    follower, other = sorted(a for a in ADDRESSES if a != leader.address)
    c.nodes[follower].crash()
    _fill(c, leader, 60, seed=1)
    assert c.nodes[other].log()[0].index > 10 and leader.log()[0].index > 10  # both compacted
    return leader, follower, other


@pytest.mark.parametrize("new", [ANSWERS, ANSWERS | {"transmissions"}, ANSWERS | {"chunks"}, NEW_GUARDS],
                         ids=["before", "leader-guard", "follower-guard", "both"])
def test_a_leader_elected_again_does_not_resume_its_old_transmission_into_anothers(
        tmp_path: Path, new: frozenset[str]) -> None:
    """L starts sending its snapshot to the restarted follower F and is cut off after two chunks; X is
    elected, sends F the first chunks of its own snapshot and is cut off; L is elected again. pysyncobj's
    L resumes its transmission at its third chunk, and F appends it to X's file: F assembles a file of two
    transmissions, which does not load (what follows: the failed-install guard answers nothing, L sends
    the whole snapshot again). With either guard F only ever assembles one transmission's chunks."""
    with cluster(tmp_path, new) as c:
        leader, f_addr, x_addr = _follower_behind_a_compacted_log(c)
        lead = leader.address
        f = c.nodes[f_addr] = c.make(f_addr)
        seen = watch_follower(f)

        def sent(source: str, term: int | None = None) -> int:
            return sum(1 for s, d, t, _, last in c.chunks if s == source and d == f_addr and not last
                       and (term is None or t == term))

        c.run_until("L sent F two chunks", lambda: sent(lead) >= 2)
        assert not any(last for s, d, _, _, last in c.chunks if s == lead)  # mid-transmission
        for peer in (x_addr, f_addr):
            c.network.cut(lead, peer, detect_after=60.0)  # traffic held, no break seen: L keeps its transmission
        x = c.nodes[x_addr]
        c.run_until("X elected", x.is_leader)
        x_term = x.term()
        c.run_until("F appended X's first chunks", lambda: sum(
            1 for s, t, _, _ in seen.appended if (s, t) == (x_addr, x_term)) >= 2)
        c.network.cut(x_addr, f_addr, detect_after=60.0)
        c.network.heal(lead, f_addr)
        c.run_until("L elected again", lambda: leader.is_leader() and leader.term() > x_term, limit_s=30.0)
        c.run_until("F caught up with L", lambda: f.last_applied >= leader.commit_index > 0
                    and seen.installed > 0, limit_s=30.0)
        c.run(1.0)
        assert f.last_applied == leader.commit_index and c.machines[f_addr].state == c.machines[lead].state
        mixed = [file for file in seen.files if len({leader for leader, _ in file}) > 1]
        if new == ANSWERS:
            # the defect: F's file is X's first chunks and L's later ones, and it does not load; the
            # failed-install guard answers nothing and L sends the whole snapshot again
            assert mixed and mixed[0][0] == (x_addr, x_term) and mixed[0][-1][0] == lead, seen.files
            assert len(seen.failed_loads) == 1 and len(seen.files) == 2, (seen.failed_loads, seen.files)
        else:
            assert not mixed and not seen.failed_loads, (seen.files, seen.failed_loads)
            assert len(seen.files) == 1, seen.files
            if "chunks" not in new:  # L restarted from its first chunk in its new term
                assert any(s == lead and t > x_term and first for s, _, t, first, _ in c.chunks)


def _only_follower_behind(c: _Cluster) -> tuple[SimRaftNode, SimRaftNode, _Follower]:
    """The leader and a restarted follower that needs a snapshot, the third node crashed: the leader's
    quorum is that follower alone."""
    leader, f_addr, x_addr = _follower_behind_a_compacted_log(c)
    c.nodes[x_addr].crash()
    f = c.nodes[f_addr] = c.make(f_addr)
    return leader, f, watch_follower(f)


@pytest.mark.parametrize("new", [frozenset(), ANSWERS], ids=["before", "answers"])
def test_a_leader_sending_a_long_snapshot_to_its_only_follower_keeps_leading(tmp_path: Path, new: frozenset[str]) -> None:
    """The leader of three, one node down, sends the restarted third a snapshot that takes longer than
    check-quorum's timeout. pysyncobj's follower answers only the last chunk, so the leader steps down
    mid-way, is elected again, goes on, steps down again...: after 10 simulated seconds the follower has
    not installed it and the term has risen. Answered chunk by chunk, the leader keeps leading."""
    with cluster(tmp_path, new) as c:
        leader, f, seen = _only_follower_behind(c)
        term = leader.term()
        c.run(10.0)
        if new:
            assert seen.installed == 1 and f.last_applied == leader.commit_index and leader.term() == term
        else:
            assert seen.installed == 0 and leader.term() > term + 1, (seen.installed, term, leader.term())


@pytest.mark.parametrize("new", [ANSWERS, ANSWERS | {"transmissions"}, ANSWERS | {"chunks"}, NEW_GUARDS],
                         ids=["before", "leader-guard", "follower-guard", "both"])
def test_chunks_lost_with_a_broken_connection_leave_no_hole(tmp_path: Path, new: frozenset[str]) -> None:
    """The leader L sends its only follower F a snapshot; the link is cut mid-way (traffic held), L steps
    down (check-quorum), then the break is seen: the chunks held are lost. Healed, L is elected again and,
    not having led when the break was seen, resumes after the lost chunks: F's file has a hole and does
    not load. With either guard F only ever assembles whole files."""
    with cluster(tmp_path, new) as c:
        leader, f, seen = _only_follower_behind(c)
        lead, f_addr = leader.address, f.address
        c.run_until("F took five chunks", lambda: len(seen.appended) >= 5)
        term = leader.term()
        c.network.cut(lead, f_addr, detect_after=1.0)
        c.run_until("L stepped down", lambda: not leader.is_leader())
        lost_before = c.network.stats.lost
        c.run(1.0)
        assert c.network.stats.lost > lost_before  # chunks in flight lost with the connection
        c.network.heal(lead, f_addr)
        c.run_until("L elected again", lambda: leader.is_leader() and leader.term() > term, limit_s=30.0)
        c.run_until("F caught up", lambda: seen.installed > 0 and f.last_applied >= leader.commit_index,
                    limit_s=30.0)
        if new == ANSWERS:  # the defect: a file with a hole, which does not load, then a whole resend
            assert len(seen.failed_loads) == 1 and len(seen.files) == 2, (seen.failed_loads, seen.files)
            assert len(seen.files[0]) < len(seen.files[1])  # the first one lacks the chunks lost
        else:
            assert not seen.failed_loads and len(seen.files) == 1, (seen.failed_loads, seen.files)


NO_OP = b"\x01"  # a pysyncobj no-op log entry


@contextlib.contextmanager
def lone_follower(tmp_path: Path, guarded: bool, machine: _Recorder | None = None) -> Iterator[tuple[SimRaftNode, list[dict[str, Any]]]]:
    """One pysyncobj node as ADDRESSES[0] whose peers never answer (a test delivers it hand-made messages),
    with every guard or none, and the messages it sends."""
    clock, rng = SimClock(1000.0), random.Random(1)
    sent: list[dict[str, Any]] = []
    with deterministic_pysyncobj(clock, rng):
        network = SimNetwork(Scheduler(clock), rng)
        network_send = network.send

        def spy(source: str, dest: str, message: Any) -> bool:
            if isinstance(message, dict):
                sent.append(message)
            return network_send(source, dest, message)

        network.send = spy  # type: ignore[method-assign]
        node = SimRaftNode(network, ReplicationConfig(ADDRESSES[0], ADDRESSES[1:], tmp_path), machine or _Recorder(),
                           guard_snapshots=guarded)
        try:
            yield node, sent
        finally:
            node.crash()


def snapshot_bytes(index: int, term: int, state: list[bytes]) -> bytes:
    """A dump as pysyncobj writes one for a node with Tessera's replicated log as its consumer."""
    from tessera.control_plane.replication.pysyncobj_node import SNAPSHOT_FORMAT
    from tessera.control_plane.replication.sim import SimNode

    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as g:
        pickle.dump(([{}, {"format": SNAPSHOT_FORMAT, "state": state}], (NO_OP, index, term), (NO_OP, index - 1, term),
                     {SimNode(a) for a in ADDRESSES}), g)
    return buf.getvalue()


def entries(node: SimRaftNode, frm: int, to: int, term: int, commit: int) -> None:
    node.transport.deliver(ADDRESSES[1], {"type": "append_entries", "term": term, "commit_index": commit,
                                          "prevLogIdx": frm - 1, "prevLogTerm": 0 if frm == 2 else term,
                                          "entries": [(NO_OP, i, term) for i in range(frm, to + 1)]})


def snapshot(node: SimRaftNode, data: bytes, term: int, commit: int, size: int = 1 << 20,
             offsets: bool = False) -> None:
    """`data` delivered as a leader sends a snapshot: chunks of `size`, then an empty last chunk."""
    parts = [data[i:i + size] for i in range(0, len(data), size)] + [b""]
    for n, part in enumerate(parts):
        message: dict[str, Any] = {"type": "append_entries", "term": term, "commit_index": commit,
                                   "serialized": (part, n == 0, n == len(parts) - 1)}
        if offsets:
            message[guards.SNAPSHOT_OFFSET] = sum(len(p) for p in parts[:n])
        node.transport.deliver(ADDRESSES[1], message)


@pytest.mark.parametrize("guarded", [True, False])
def test_a_snapshot_older_than_the_commit_index_is_not_installed(tmp_path: Path, guarded: bool) -> None:
    """A whole, loadable snapshot at index 3 reaches a follower that has committed up to 5 (an old
    transmission finished late). pysyncobj alone installs it: the log is cut back to 3 and the commit index
    clamped from 5 to 3 ("raftCommitIndex (…) exceeds journal end", as the soak's m5 logged); guarded,
    nothing changes and no success answer is sent."""
    with lone_follower(tmp_path, guarded) as (node, sent):
        entries(node, 2, 5, term=1, commit=5)
        assert node.commit_index == 5
        sent.clear()
        snapshot(node, snapshot_bytes(3, 1, [b"old"]), term=1, commit=5)
        success = [m for m in sent if m.get("type") == "next_node_idx" and m.get("success")]
        if guarded:
            assert node.commit_index == 5 and [e.index for e in node.log()] == [1, 2, 3, 4, 5] and not success
            assert not Path(node.config.dump_file).exists()  # it had no dump: the refused file is removed
        else:
            assert node.commit_index == 3 and [e.index for e in node.log()] == [2, 3] and success


@pytest.mark.parametrize("guarded", [True, False])
def test_a_snapshot_whose_restore_raises_neither_commits_nor_is_acknowledged(tmp_path: Path, guarded: bool) -> None:
    """The dump unpickles, but the state machine's restore raises (``_deserialize``). pysyncobj logs
    "failed to load full dump" and goes on as if installed: success, and the follower's unverified entries
    2..3 committed. Guarded, as for a file that does not unpickle: commit index kept, no success."""
    machine = _Recorder()
    with lone_follower(tmp_path, guarded, machine) as (node, sent):
        entries(node, 2, 3, term=1, commit=1)
        machine.refuse = True
        sent.clear()
        snapshot(node, snapshot_bytes(9, 2, [b"new"]), term=2, commit=9)
        success = [m for m in sent if m.get("type") == "next_node_idx" and m.get("success")]
        assert [e.index for e in node.log()] == [1, 2, 3]  # not installed either way
        if guarded:
            assert node.commit_index == 1 and not success
        else:
            assert node.commit_index == 3 and success


@pytest.mark.parametrize("guarded", [True, False])
def test_a_failed_install_puts_the_nodes_own_dump_back(tmp_path: Path, guarded: bool) -> None:
    """pysyncobj renames the received file over the node's own dump before it loads it: a file that does
    not load would be what the node finds at its next start, instead of the dump its journal was compacted
    to. Guarded, the node's own dump is put back."""
    with lone_follower(tmp_path, guarded) as (node, _):
        own = snapshot_bytes(5, 1, [b"mine"])
        Path(node.config.dump_file).write_bytes(own)
        snapshot(node, b"\x1f\x8b not a whole dump", term=2, commit=9)
        assert (Path(node.config.dump_file).read_bytes() == own) == guarded


@pytest.mark.parametrize("guarded", [True, False])
def test_a_chunk_at_another_offset_than_the_bytes_received_ends_the_transmission(
        tmp_path: Path, guarded: bool) -> None:
    """A leader with guard_snapshot_transmissions says where each chunk begins: a chunk after a gap
    (one lost) is refused, with the rest of that transmission, and nothing is loaded."""
    with lone_follower(tmp_path, guarded) as (node, _):
        loads: list[int] = []
        serializer = node._so._SyncObj__serializer
        load = serializer.deserialize
        serializer.deserialize = lambda: (loads.append(1), load())[1]
        data = snapshot_bytes(9, 2, [b"x" * 300])
        node.transport.deliver(ADDRESSES[1], {"type": "append_entries", "term": 2, "commit_index": 9,
                                              "serialized": (data[:100], True, False), guards.SNAPSHOT_OFFSET: 0})
        for offset, last in ((200, False), (len(data), True)):  # bytes 100..199 lost
            node.transport.deliver(ADDRESSES[1], {"type": "append_entries", "term": 2, "commit_index": 9,
                                                  "serialized": (data[offset:offset + 100] if not last else b"", False, last),
                                                  guards.SNAPSHOT_OFFSET: offset})
        assert (not loads) == guarded


def test_whether_a_chunk_continues_the_open_transmission() -> None:
    stream = guards.ChunkStream("a", 3)
    stream.received = 10
    assert guards.chunk_fits(stream, "a", 3, None) is None  # a leader that does not say where
    assert guards.chunk_fits(stream, "a", 3, 10) is None
    assert "byte 20" in str(guards.chunk_fits(stream, "a", 3, 20))  # a hole
    assert guards.chunk_fits(stream, "a", 4, 10) is not None  # the same leader, elected again
    assert guards.chunk_fits(stream, "b", 3, 10) is not None  # another leader's chunk
    assert guards.chunk_fits(None, "a", 3, None) is not None  # nothing open


def test_a_leader_says_where_each_chunk_begins(tmp_path: Path) -> None:
    with cluster(tmp_path, NEW_GUARDS) as c:
        offsets: list[tuple[int, int]] = []
        network_send = c.network.send

        def spy(source: str, dest: str, message: Any) -> bool:
            if isinstance(message, dict) and isinstance(message.get("serialized"), tuple):
                offsets.append((message[guards.SNAPSHOT_OFFSET], len(message["serialized"][0])))
            return network_send(source, dest, message)

        c.network.send = spy  # type: ignore[method-assign]
        _, f, seen = _only_follower_behind(c)
        c.run_until("F installed", lambda: seen.installed > 0)
        assert offsets[0][0] == 0 and len(offsets) > 10
        assert all(offsets[i + 1][0] == offsets[i][0] + offsets[i][1] for i in range(len(offsets) - 1))
