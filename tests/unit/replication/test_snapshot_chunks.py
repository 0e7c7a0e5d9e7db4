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
        l_term = leader.term()
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
