"""replication.durability: acknowledged entries survive a power cut of every node, in the simulation.

``PowerCutDisk`` is the test twin of the ``Disk`` port: it remembers what each sync put on "disk" (file
contents by inode, directory entries by name) and, at a power cut, puts every node's files back to exactly
that, as a machine that lost power keeps only what was synced. The real-process proof, on a filesystem
that drops unsynced writes, is tests/faults/test_power_cut.py.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle
import random
from pathlib import Path
from typing import Any

import pytest
from pysyncobj import SyncObj
from pysyncobj.journal import FileJournal
from pysyncobj.serializer import Serializer

from tessera.control_plane.replication.config import ReplicationConfig
from tessera.control_plane.replication.durability import holds_reply
from tessera.control_plane.replication.sim import (
    FAIL_SUCCESS,
    Scheduler,
    SimClock,
    SimNetwork,
    SimRaftNode,
    deterministic_pysyncobj,
)

from .test_sim import _Recorder  # a list state machine

ADDRESSES = ("10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000")


class PowerCutDisk:
    """What is on disk: file contents synced (by inode) and directory entries synced (by name)."""

    def __init__(self) -> None:
        self.contents: dict[int, bytes] = {}
        self.names: dict[Path, dict[str, int]] = {}
        self.journal_syncs = 0

    def sync_journal(self, journal: Any) -> None:
        journal.flush()
        path = Path(journal._FileJournal__journalFile._ResizableFile__fileName)
        self.contents[path.stat().st_ino] = path.read_bytes()
        self.journal_syncs += 1

    def sync_fd(self, fd: int) -> None:
        with open(f"/proc/self/fd/{fd}", "rb") as f:  # the file may be open for writing only
            self.contents[os.fstat(fd).st_ino] = f.read()

    def sync_path(self, path: Path) -> None:
        if path.is_dir():
            self.names[path] = {p.name: p.stat().st_ino for p in path.iterdir() if p.is_file()}
        else:
            self.contents[path.stat().st_ino] = path.read_bytes()

    def durable(self, path: Path) -> bytes | None:
        ino = self.names.get(path.parent, {}).get(path.name)
        return None if ino is None else self.contents.get(ino, b"")

    def power_cut(self, directory: Path) -> None:
        """Every file of `directory` as it is on disk: unsynced names gone, unsynced data lost."""
        for path in directory.iterdir():
            data = self.durable(path) if path.is_file() else None
            if data is None:
                path.unlink()
            else:
                path.write_bytes(data)
        self.names[directory] = {p.name: p.stat().st_ino for p in directory.iterdir()}
        self.contents = {ino: self.durable(directory / name) or b"" for name, ino in self.names[directory].items()}


def _nodes(network: SimNetwork, tmp_path: Path, disks: list[PowerCutDisk] | None) -> list[SimRaftNode]:
    return [SimRaftNode(network, ReplicationConfig(a, tuple(p for p in ADDRESSES if p != a), tmp_path / str(i),
                                                   log_compaction_min_entries=40, use_fork_for_dump=False),
                        _Recorder(), disk=disks[i] if disks is not None else None)
            for i, a in enumerate(ADDRESSES)]


def _power_cut_run(tmp_path: Path, seed: int, durable: bool) -> tuple[list[bytes], list[bytes]]:
    """3 nodes, a steady load, a power cut of all three mid-load, a restart on what the disks kept.
    Returns (acknowledged entries, entries the restarted cluster has applied)."""
    clock, rng = SimClock(1000.0), random.Random(seed)
    scheduler = Scheduler(clock)
    # without durability a disk still exists (the same power cut), it is only never synced
    disks = [PowerCutDisk() for _ in ADDRESSES]
    acked: list[bytes] = []
    with deterministic_pysyncobj(clock, rng):
        network = SimNetwork(scheduler, rng)
        nodes = _nodes(network, tmp_path, disks if durable else None)
        scheduler.run_until(clock.now + 2.0)
        for i in range(150):
            leader = next((n for n in nodes if n.is_leader()), None)
            if leader is not None:
                entry = b"w%d" % i
                leader.propose([entry], lambda result, err, e=entry: acked.append(e) if err == FAIL_SUCCESS else None)
            scheduler.run_until(clock.now + rng.choice((0.0, 0.002, 0.01)))
        for n in nodes:
            n.crash()
        for i, disk in enumerate(disks):
            disk.power_cut(tmp_path / str(i))
        machines = [_Recorder() for _ in ADDRESSES]
        network = SimNetwork(scheduler, rng)
        nodes = [SimRaftNode(network, ReplicationConfig(a, tuple(p for p in ADDRESSES if p != a), tmp_path / str(i),
                                                        log_compaction_min_entries=40, use_fork_for_dump=False),
                             machines[i], disk=PowerCutDisk() if durable else None)
                 for i, a in enumerate(ADDRESSES)]
        scheduler.run_until(clock.now + 3.0)
        leader = next(n for n in nodes if n.is_leader())
        leader.propose([b"barrier"], lambda result, err: None)  # commits everything before it
        scheduler.run_until(clock.now + 2.0)
        applied = machines[ADDRESSES.index(leader.address)].state
        for n in nodes:
            n.crash()
    return acked, applied


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_acknowledged_entry_survives_a_power_cut_of_every_node(tmp_path: Path, seed: int) -> None:
    acked, applied = _power_cut_run(tmp_path, seed, durable=True)
    assert len(acked) > 100
    assert [e for e in acked if e not in applied] == []


def test_without_durability_the_power_cut_loses_acknowledged_entries(tmp_path: Path) -> None:
    """The same run without syncs: the twin disk is not a no-op, it really drops what was not synced."""
    acked, applied = _power_cut_run(tmp_path, 1, durable=False)
    assert len(acked) > 100
    assert [e for e in acked if e not in applied] != []


def _steady(tmp_path: Path, seed: int, durable: bool, spy: Any) -> list[SimRaftNode]:
    """3 nodes under a steady load of bursts of five calls; ``spy(network, nodes, disks)`` before it."""
    clock, rng = SimClock(1000.0), random.Random(seed)
    scheduler = Scheduler(clock)
    disks = [PowerCutDisk() for _ in ADDRESSES]
    with deterministic_pysyncobj(clock, rng):
        network = SimNetwork(scheduler, rng)
        nodes = _nodes(network, tmp_path, disks if durable else None)
        spy(network, nodes, disks)
        scheduler.run_until(clock.now + 2.0)
        for i in range(60):
            leader = next((n for n in nodes if n.is_leader()), None)
            for j in range(5):  # five calls proposed together: one tick, one sync
                if leader is not None:
                    leader.propose([b"w%d.%d" % (i, j)], lambda result, err: None)
            scheduler.run_until(clock.now + 0.01)
        scheduler.run_until(clock.now + 0.5)
        for n in nodes:
            n.crash()
    return nodes


@pytest.mark.parametrize("history_on_disk", [True, False])
def test_a_dump_waits_for_the_event_history_on_disk(tmp_path: Path, history_on_disk: bool) -> None:
    """A restart re-applies only the entries after the dump, so a dump is written only once the events
    of the entries it covers are on disk (``before_dump``); until then the journal keeps them."""
    clock, rng = SimClock(1000.0), random.Random(4)
    scheduler = Scheduler(clock)
    asked: list[float] = []

    def before_dump(timeout: float) -> bool:
        asked.append(timeout)
        return history_on_disk

    with deterministic_pysyncobj(clock, rng):
        network = SimNetwork(scheduler, rng)
        node = SimRaftNode(network, ReplicationConfig(ADDRESSES[0], (), tmp_path, log_compaction_min_entries=10,
                                                      use_fork_for_dump=False),
                           _Recorder(), disk=PowerCutDisk(), before_dump=before_dump)
        scheduler.run_until(clock.now + 2.0)
        for i in range(30):
            node.propose([b"w%d" % i], lambda result, err: None)
            scheduler.run_until(clock.now + 0.01)
        scheduler.run_until(clock.now + 2.5)
        log_length = len(node.log())
        node.crash()
    assert asked
    assert node.config.dump_file.exists() is history_on_disk
    assert (log_length < 10) is history_on_disk  # compacted only after a dump
    if not history_on_disk:
        assert len(asked) <= 4  # put off for a second each time, not asked every tick


def _synced_last_index(disk: PowerCutDisk, journal_file: Path) -> int:
    """The index of the last entry of the journal as it is on disk (0: none)."""
    data = disk.durable(journal_file)
    if data is None or len(data) < 40:
        return 0
    end = int.from_bytes(data[36:40], "little")
    if end <= 40:
        return 0
    size = int.from_bytes(data[end - 4:end], "little")
    return int.from_bytes(data[end - size - 4:end - size + 4], "little")


def _check_commits(node: SimRaftNode, disk: PowerCutDisk, violations: list[str]) -> None:
    tick = node.tick

    def ticked() -> None:
        tick()
        if node.is_leader() and node.commit_index > _synced_last_index(disk, node.config.journal_file):
            violations.append(f"{node.address} committed {node.commit_index} unsynced")

    node.tick = ticked  # type: ignore[method-assign]


@pytest.mark.parametrize("durable", [True, False])
def test_replies_and_the_leaders_commits_never_run_ahead_of_the_disk(tmp_path: Path, durable: bool) -> None:
    """Every successful append reply a follower sends names an index its disk holds; every commit index a
    leader reaches is held on its own disk; a vote is granted only with the vote on disk. Without
    durability pysyncobj does neither (the unguarded run must fail these checks)."""
    violations: list[str] = []

    def spy(network: SimNetwork, nodes: list[SimRaftNode], disks: list[PowerCutDisk]) -> None:
        by_address = {n.address: (n, d) for n, d in zip(nodes, disks, strict=True)}
        send = network.send

        def on_the_wire(source: str, dest: str, message: Any) -> bool:  # what really leaves a node
            node, disk = by_address[source]
            journal_file = node.config.journal_file
            if isinstance(message, dict) and message.get("type") == "next_node_idx" and message.get("success"):
                if message["next_node_idx"] - 1 > _synced_last_index(disk, journal_file):
                    violations.append(f"{source} acknowledged {message['next_node_idx'] - 1} unsynced")
            if isinstance(message, dict) and message.get("type") == "response_vote":
                meta = disk.durable(journal_file.with_name(journal_file.name + ".meta"))
                if meta is None or pickle.loads(meta).get("votedForNodeId") != dest:
                    violations.append(f"{source} granted a vote to {dest} not on disk")
            return send(source, dest, message)

        network.send = on_the_wire  # type: ignore[method-assign]
        for node, disk in zip(nodes, disks, strict=True):
            _check_commits(node, disk, violations)

    nodes = _steady(tmp_path, 5, durable, spy)
    assert max(n.commit_index for n in nodes) > 250
    if durable:
        assert violations == []
    else:
        assert violations


def test_syncs_are_group_committed(tmp_path: Path) -> None:
    """One sync covers every entry appended in a tick: far fewer syncs than entries."""
    nodes = _steady(tmp_path, 6, True, lambda network, nodes, disks: None)
    entries = max(n.commit_index for n in nodes)
    syncs = [n.durability.syncs for n in nodes if n.durability is not None]
    assert entries >= 300 and len(syncs) == 3
    assert max(syncs) < entries / 2, (syncs, entries)


@pytest.mark.parametrize(("message", "dirty", "held", "expected"), [
    ({"type": "next_node_idx", "success": True, "reset": False, "next_node_idx": 5}, True, False, True),
    ({"type": "next_node_idx", "success": True, "reset": False, "next_node_idx": 5}, False, False, False),
    ({"type": "next_node_idx", "success": False, "reset": True, "next_node_idx": 5}, True, False, False),
    ({"type": "next_node_idx", "success": False, "reset": True, "next_node_idx": 5}, False, True, True),
    ({"type": "response_vote", "term": 3}, True, True, False),
    ({"type": "append_entries", "term": 3}, True, True, False),
])
def test_which_messages_wait_for_the_sync(message: dict[str, Any], dirty: bool, held: bool, expected: bool) -> None:
    assert holds_reply(message, dirty, held) is expected


# The pysyncobj 0.3.17 code whose behaviour install_durability relies on (see its docstring): the order of
# a tick (the leader's commit loop first, then the appends, the tick callbacks and the poll last), where
# a follower appends and replies, the vote's meta write, the dump's success and the journal's mutators.
# A new release that changes any of them changes a digest: re-read the code, re-check the patch, update.
PINNED_SOURCES = {
    "SyncObj._onTick": (SyncObj._onTick, "cc9eb08232d0"),
    "SyncObj.__onMessageReceived": (SyncObj._SyncObj__onMessageReceived, "ddfe34b6c028"),
    "SyncObj.__onBecomeLeader": (SyncObj._SyncObj__onBecomeLeader, "5a3fd97bc17d"),
    "SyncObj.__tryLogCompaction": (SyncObj._SyncObj__tryLogCompaction, "c2f8a0ec14cc"),
    "SyncObj.__setCurrentTerm": (SyncObj._SyncObj__setCurrentTerm, "0ad5bf456ac0"),
    "FileJournal.__init__": (FileJournal.__init__, "bdaa496431ff"),
    "FileJournal.setCurrentTerm": (FileJournal.setCurrentTerm, "74aca18da6f0"),
    "FileJournal.flush": (FileJournal.flush, "732319ef3e93"),
    "Serializer.checkSerializing": (Serializer.checkSerializing, "5b461fab8228"),
    "Serializer.setTransmissionData": (Serializer.setTransmissionData, "e40031f9e6d4"),
    "Serializer.serialize": (Serializer.serialize, "a26f44b07da0"),
}


@pytest.mark.parametrize("name", sorted(PINNED_SOURCES))
def test_the_pysyncobj_code_the_patch_relies_on_has_not_moved(name: str) -> None:
    function, digest = PINNED_SOURCES[name]
    actual = hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:12]
    assert actual == digest, f"{name} changed in the installed pysyncobj: re-check control_plane/replication/durability.py"
