"""replication.sim: pysyncobj driven by hand, and the snapshot commit-index guard it led to."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.control_plane.replication.config import ReplicationConfig
from tessera.control_plane.replication.sim import (
    Scheduler,
    SimClock,
    SimNetwork,
    SimNode,
    SimRaftNode,
    deterministic_pysyncobj,
)

ADDRESSES = ("10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000")
NO_OP = b"\x01"  # a pysyncobj no-op log entry: takes an index, applies nothing


class _Recorder:
    def __init__(self) -> None:
        self.applied: list[tuple[int, list[bytes]]] = []
        self.state: list[bytes] = []

    def apply_entries(self, raft_index: int, entries: list[bytes]) -> list[object]:
        self.applied.append((raft_index, entries))
        self.state.extend(entries)
        return [len(self.state)] * len(entries)

    def snapshot(self) -> object:
        return list(self.state)

    def restore(self, snap: object) -> None:
        assert isinstance(snap, list)
        self.state = list(snap)


def _cluster(tmp_path: Path, seed: int, run_for: float) -> tuple[list[str], list[int], list[int]]:
    clock, rng = SimClock(1000.0), random.Random(seed)
    scheduler = Scheduler(clock)
    leaders: list[str] = []
    with deterministic_pysyncobj(clock, rng):
        network = SimNetwork(scheduler, rng)
        machines = [_Recorder() for _ in ADDRESSES]
        nodes = [SimRaftNode(network, ReplicationConfig(a, tuple(p for p in ADDRESSES if p != a), tmp_path / str(i),
                                                        log_compaction_min_entries=10),
                             machines[i], on_leadership=lambda n, lead, t: leaders.append(f"{n.address}@{t}" if lead else ""))
                 for i, a in enumerate(ADDRESSES)]
        scheduler.run_until(clock.now + 2.0)
        leader = next(n for n in nodes if n.is_leader())
        done: list[int] = []
        for i in range(25):
            leader.propose([b"e%d" % i], lambda result, err: done.append(err))
            scheduler.run_until(clock.now + 0.03)
        scheduler.run_until(clock.now + run_for)
        commits = [n.commit_index for n in nodes]
        for n in nodes:
            n.crash()
    return [x for x in leaders if x], commits, [len(m.state) for m in machines]


def test_a_seeded_cluster_replays_exactly_and_every_node_applies_every_entry(tmp_path: Path) -> None:
    first = _cluster(tmp_path / "a", seed=3, run_for=1.0)
    second = _cluster(tmp_path / "b", seed=3, run_for=1.0)
    assert first == second
    leaders, commits, applied = first
    assert len(leaders) == 1 and len(set(commits)) == 1
    assert applied == [25, 25, 25]  # through compaction (every 10 entries) on every node


def test_nodes_hash_the_same_in_every_process() -> None:
    """pysyncobj keeps nodes in sets: their iteration order (who is sent to first) must not depend on the
    per-process string hash seed."""
    code = "from tessera.control_plane.replication.sim import SimNode; print(hash(SimNode('10.0.0.1:7000')))"
    root = Path(__file__).resolve().parents[3]
    hashes = {
        subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60, check=True,
                       env={**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    }
    assert hashes == {f"{hash(SimNode('10.0.0.1:7000'))}\n"}


@contextlib.contextmanager
def lone_follower(tmp_path: Path, guarded: bool) -> Iterator[SimRaftNode]:
    """One pysyncobj node as ADDRESSES[0], on a simulated network whose peers never answer: a test
    delivers it hand-made messages. Crashed (its files closed) on the way out."""
    clock, rng = SimClock(1000.0), random.Random(1)
    with deterministic_pysyncobj(clock, rng):
        network = SimNetwork(Scheduler(clock), rng)
        node = SimRaftNode(network, ReplicationConfig(ADDRESSES[0], ADDRESSES[1:], tmp_path), _Recorder(),
                           guard_snapshots=guarded)
        try:
            yield node
        finally:
            node.crash()


@pytest.mark.parametrize("guarded", [True, False])
def test_a_snapshot_chunk_does_not_advance_a_followers_commit_index(tmp_path: Path, guarded: bool) -> None:
    """A follower holding entries it has not seen committed receives the first chunk of a snapshot with a
    leader commit index beyond them. pysyncobj alone commits (and would apply) them; the guard does not."""
    leader = ADDRESSES[1]
    with lone_follower(tmp_path, guarded) as node:
        node.transport.deliver(leader, {
            "type": "append_entries", "term": 1, "commit_index": 1, "prevLogIdx": 1, "prevLogTerm": 0,
            "entries": [(NO_OP, 2, 1), (NO_OP, 3, 1)],
        })
        assert [e.index for e in node.log()] == [1, 2, 3] and node.commit_index == 1
        node.transport.deliver(leader, {
            "type": "append_entries", "term": 2, "commit_index": 9, "serialized": (b"chunk", True, False),
        })
        assert node.commit_index == (1 if guarded else 3)


@pytest.mark.parametrize("guarded", [True, False])
def test_a_snapshot_that_does_not_load_neither_commits_the_followers_entries_nor_is_acknowledged(
        tmp_path: Path, guarded: bool) -> None:
    """The soak's divergence (docs/reliability.md, "Known defects"): a follower holding a deposed leader's
    uncommitted entries receives a whole snapshot that does not unpickle. pysyncobj alone keeps its log,
    answers "installed" and commits those entries (which it then applies, though the cluster committed
    others at their indexes); the guard keeps the commit index and sends no success answer."""
    leader = ADDRESSES[1]
    sent: list[dict[str, object]] = []
    with lone_follower(tmp_path, guarded) as node:
        network_send = node.network.send

        def spy(source: str, dest: str, message: object) -> bool:
            if isinstance(message, dict):
                sent.append(message)
            return network_send(source, dest, message)

        node.network.send = spy  # type: ignore[method-assign]
        node.transport.deliver(ADDRESSES[2], {  # a term-1 leader's entries this node never saw committed
            "type": "append_entries", "term": 1, "commit_index": 1, "prevLogIdx": 1, "prevLogTerm": 0,
            "entries": [(b"uncommitted-1", 2, 1), (b"uncommitted-2", 3, 1)],
        })
        assert node.commit_index == 1
        sent.clear()
        node.transport.deliver(leader, {  # the term-2 leader's snapshot, one chunk that is not a dump
            "type": "append_entries", "term": 2, "commit_index": 9, "serialized": (b"not a gzip pickle", True, True),
        })
        answers = [m for m in sent if m.get("type") == "next_node_idx"]
        assert [(e.index, e.term) for e in node.log()] == [(1, 0), (2, 1), (3, 1)]  # the load failed either way
        if guarded:
            assert node.commit_index == 1 and not any(m.get("success") for m in answers), answers
        else:
            assert node.commit_index == 3 and any(m.get("success") for m in answers), answers


def test_a_dump_child_still_writing_when_a_snapshot_arrives_is_killed_before_the_snapshot_is_put_in_place(
        tmp_path: Path) -> None:
    """With forked dumps (production), a dump child still running when the last chunk of a leader's
    snapshot arrives would later rename its file over the snapshot's and have pysyncobj compact the new
    journal to its index: the guard kills and reaps it first, and pysyncobj sees no dump in progress."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with lone_follower(tmp_path, guarded=True) as node:
            serializer = node._so._SyncObj__serializer
            serializer._Serializer__pid = child.pid  # as pysyncobj's fork leaves it while the child writes
            node.transport.deliver(ADDRESSES[1], {
                "type": "append_entries", "term": 2, "commit_index": 1, "serialized": (b"chunk", True, True),
            })
            assert serializer._Serializer__pid == 0
        assert child.poll() is not None  # reaped by the guard (waitpid): Popen sees it gone
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)


@pytest.mark.parametrize("guarded", [True, False])
def test_a_repeated_append_entries_does_not_truncate_the_leaders_own_entries(tmp_path: Path, guarded: bool) -> None:
    """A follower holding entries 2..5 of the current leader receives a re-send of 2..3 (after a reset, in
    a batch bounded by bytes). pysyncobj alone deletes 4 and 5, which the leader already counts as
    replicated; the guard keeps them and answers as a heartbeat at 5."""
    leader = ADDRESSES[1]
    with lone_follower(tmp_path, guarded) as node:
        entries = [(NO_OP, i, 1) for i in range(2, 6)]
        node.transport.deliver(leader, {"type": "append_entries", "term": 1, "commit_index": 1,
                                        "prevLogIdx": 1, "prevLogTerm": 0, "entries": entries})
        assert [e.index for e in node.log()] == [1, 2, 3, 4, 5]
        node.transport.deliver(leader, {"type": "append_entries", "term": 1, "commit_index": 1,
                                        "prevLogIdx": 1, "prevLogTerm": 0, "entries": entries[:2]})
        assert [e.index for e in node.log()] == ([1, 2, 3, 4, 5] if guarded else [1, 2, 3])
        # a real conflict is still resolved the Raft way: the leader's entry replaces the follower's
        node.transport.deliver(leader, {"type": "append_entries", "term": 2, "commit_index": 1,
                                        "prevLogIdx": 2, "prevLogTerm": 1, "entries": [(NO_OP, 3, 2)]})
        assert [(e.index, e.term) for e in node.log()] == [(1, 0), (2, 1), (3, 2)]


def test_the_rewrite_keeps_every_message_it_must_not_touch() -> None:
    from tessera.control_plane.replication.consensus_guards import without_stale_truncation

    journal = [(b"", 1, 0), (b"a", 2, 1), (b"b", 3, 1), (b"c", 4, 2)]
    stale = {"type": "append_entries", "term": 2, "prevLogIdx": 2, "prevLogTerm": 1, "entries": [(b"b", 3, 1)]}
    assert without_stale_truncation(journal, stale) == {**stale, "prevLogIdx": 4, "prevLogTerm": 2, "entries": []}
    # the last entry is of an older term: it may be committed by an earlier leader; not delivered at all
    assert without_stale_truncation(journal, {**stale, "term": 3}) is None
    heartbeat = {**stale, "entries": []}
    assert without_stale_truncation(journal, heartbeat) is heartbeat  # nothing it deletes can be committed
    conflict = {**stale, "entries": [(b"x", 3, 2)]}
    assert without_stale_truncation(journal, conflict) is conflict
    wrong_prev = {**stale, "prevLogTerm": 2}
    assert without_stale_truncation(journal, wrong_prev) is wrong_prev
    reaching = {**stale, "entries": [(b"b", 3, 1), (b"c", 4, 2)]}
    assert without_stale_truncation(journal, reaching) is reaching  # nothing beyond it to lose
    assert without_stale_truncation([], stale) is stale


def test_a_leader_drops_replies_to_append_entries_of_another_term() -> None:
    from tessera.control_plane.replication.consensus_guards import is_reply_of_another_term

    reply = {"type": "next_node_idx", "next_node_idx": 9, "reset": False, "success": True}
    assert is_reply_of_another_term({**reply, "term": 3}, 4)
    assert not is_reply_of_another_term({**reply, "term": 4}, 4)
    assert not is_reply_of_another_term(reply, 4)  # from a master without the guard: taken as before
    assert not is_reply_of_another_term({"type": "append_entries", "term": 1}, 4)


def test_followers_stamp_their_replies_with_their_term(tmp_path: Path) -> None:
    from tessera.control_plane.replication.consensus_guards import guard_reply_terms

    sent: list[dict[str, object]] = []
    with lone_follower(tmp_path, guarded=False) as node:
        transport = node._so._SyncObj__transport
        inner = transport.send

        def spy(to: object, message: dict[str, object]) -> object:
            sent.append(message)
            return inner(to, message)

        transport.send = spy  # what leaves the node, under the guard
        guard_reply_terms(node._so)
        node.transport.deliver(ADDRESSES[1], {"type": "append_entries", "term": 5, "commit_index": 1,
                                              "prevLogIdx": 1, "prevLogTerm": 0, "entries": [(NO_OP, 2, 5)]})
    replies = [m for m in sent if m.get("type") == "next_node_idx"]
    assert replies and all(m.get("term") == 5 for m in replies), sent


@pytest.mark.parametrize("guarded", [True, False])
def test_entries_of_an_earlier_term_survive_a_partial_re_send(tmp_path: Path, guarded: bool) -> None:
    """A follower holds entries 2..5 of term 1 (committed, for all it knows, by the term-1 leader). The
    term-2 leader re-sends 2..3, then 4..6. pysyncobj alone deletes 4 and 5 in between; with the guard
    the first message is not delivered and the second replaces the tail in one step."""
    with lone_follower(tmp_path, guarded) as node:
        old = [(NO_OP, i, 1) for i in range(2, 6)]
        node.transport.deliver(ADDRESSES[2], {"type": "append_entries", "term": 1, "commit_index": 1,
                                              "prevLogIdx": 1, "prevLogTerm": 0, "entries": old})
        node.transport.deliver(ADDRESSES[1], {"type": "append_entries", "term": 2, "commit_index": 1,
                                              "prevLogIdx": 1, "prevLogTerm": 0, "entries": old[:2]})
        assert [e.index for e in node.log()] == ([1, 2, 3, 4, 5] if guarded else [1, 2, 3])
        node.transport.deliver(ADDRESSES[1], {"type": "append_entries", "term": 2, "commit_index": 1,
                                              "prevLogIdx": 3, "prevLogTerm": 1,
                                              "entries": [*old[2:], (NO_OP, 6, 2)]})
        assert [(e.index, e.term) for e in node.log()] == [(1, 0), (2, 1), (3, 1), (4, 1), (5, 1), (6, 2)]


def test_a_leader_takes_the_lowest_index_a_follower_asked_for_until_it_accepts() -> None:
    from tessera.control_plane.replication.consensus_guards import held_back

    floors: dict[object, tuple[int, int]] = {}
    conflict = {"type": "next_node_idx", "next_node_idx": 10, "reset": True, "success": False}
    past_its_end = {**conflict, "next_node_idx": 13}
    assert held_back(floors, "b", 2, conflict) is conflict
    assert held_back(floors, "b", 2, past_its_end)["next_node_idx"] == 10  # not back up to 13
    assert held_back(floors, "c", 2, past_its_end) is past_its_end  # per follower
    assert held_back(floors, "b", 3, past_its_end) is past_its_end  # a new term starts afresh
    lower = {**conflict, "next_node_idx": 9}
    assert held_back(floors, "b", 3, lower) is lower
    chunk = {**conflict, "reset": False}
    assert held_back(floors, "b", 3, chunk) is chunk  # a large entry's chunk arrived: not about the log
    accepted = {**conflict, "next_node_idx": 40, "success": True, "reset": False}
    assert held_back(floors, "b", 3, accepted) is accepted
    assert held_back(floors, "b", 3, past_its_end) is past_its_end  # after a success: taken as it is


@pytest.mark.parametrize("guarded", [True, False])
def test_a_deposed_leader_with_entries_of_its_own_catches_up_when_far_behind(tmp_path: Path, guarded: bool) -> None:
    """A leader cut off from both followers appends entries nobody else gets; the others elect a leader
    that commits more than one append_entries batch (64 KiB) of entries. Once healed, the old leader must
    drop its own entries and catch up. pysyncobj alone livelocks: every period the follower answers the
    first batch with the conflict and the later ones with its own log end, the last answer wins, and the
    next period meets the same conflict (no progress until log compaction sends a snapshot)."""
    clock, rng = SimClock(1000.0), random.Random(1)
    scheduler = Scheduler(clock)
    with deterministic_pysyncobj(clock, rng):
        network = SimNetwork(scheduler, rng)
        nodes = [SimRaftNode(network, ReplicationConfig(a, tuple(p for p in ADDRESSES if p != a), tmp_path / str(i),
                                                        log_compaction_min_entries=100_000,
                                                        log_compaction_min_time_s=100_000),
                             _Recorder(), guard_snapshots=guarded) for i, a in enumerate(ADDRESSES)]
        try:
            scheduler.run_until(clock.now + 2.0)
            old = next(n for n in nodes if n.is_leader())
            others = [n for n in nodes if n is not old]
            for peer in others:
                network.cut(old.address, peer.address, detect_after=0.5)
            for i in range(5):
                old.propose([b"lost-%d" % i], lambda result, err: None)
                scheduler.run_until(clock.now + 0.01)
            scheduler.run_until(clock.now + 3.0)
            new = next(n for n in others if n.is_leader())
            for i in range(100):  # 100 KB: two batches
                new.propose([b"%04d" % i + b"x" * 1000], lambda result, err: None)
                scheduler.run_until(clock.now + 0.005)
            scheduler.run_until(clock.now + 1.0)
            assert old.commit_index < new.commit_index
            for peer in others:
                network.heal(old.address, peer.address)
            scheduler.run_until(clock.now + 5.0)
            caught_up = old.last_applied == new.commit_index
            assert caught_up == guarded, (old.last_applied, new.commit_index)
            if guarded:
                assert [e.term for e in old.log()] == [e.term for e in new.log()]
        finally:
            for n in nodes:
                n.crash()


def _dump(path: Path, before_last: tuple[bytes, int, int], last: tuple[bytes, int, int]) -> None:
    """A dump as pysyncobj writes one: gzip(pickle((state, last entry, the entry before, cluster)))."""
    import gzip
    import pickle

    with gzip.open(path, "wb") as f:
        pickle.dump(([{}, ["state"]], last, before_last, set()), f)


def test_a_dump_written_after_a_kill_keeps_the_journal_entries_after_it(tmp_path: Path) -> None:
    """The master died before it compacted its journal for a dump its forked child then finished. Left
    alone, pysyncobj would clear the journal (it does not begin with the dump's entries) and lose
    entries 6..9; aligned, the journal begins with them and keeps the rest."""
    from pysyncobj.journal import createJournal

    from tessera.control_plane.replication.journal_alignment import align_journal_with_dump

    journal_file, dump_file = tmp_path / "raft.journal", tmp_path / "raft.dump"
    entries = [(b"e%d" % i, i, 1) for i in range(1, 10)]
    journal = createJournal(str(journal_file))
    for e in entries:
        journal.add(*e)
    journal._destroy()
    _dump(dump_file, entries[3], entries[4])  # the state after entry 5
    assert align_journal_with_dump(journal_file, dump_file) == 3
    journal = createJournal(str(journal_file))
    try:
        assert [journal[i] for i in range(len(journal))] == entries[3:]
    finally:
        journal._destroy()
    assert align_journal_with_dump(journal_file, dump_file) == 0  # aligned already: nothing to do


def test_a_journal_that_does_not_hold_the_dumps_entries_is_left_to_pysyncobj(tmp_path: Path) -> None:
    from pysyncobj.journal import createJournal

    from tessera.control_plane.replication.journal_alignment import align_journal_with_dump

    journal_file, dump_file = tmp_path / "raft.journal", tmp_path / "raft.dump"
    journal = createJournal(str(journal_file))
    for i in range(1, 5):
        journal.add(b"e%d" % i, i, 1)
    journal._destroy()
    _dump(dump_file, (b"x", 7, 2), (b"y", 8, 2))  # a snapshot installed from a leader
    assert align_journal_with_dump(journal_file, dump_file) == 0
    dump_file.write_bytes(b"not a dump")
    assert align_journal_with_dump(journal_file, dump_file) == 0
    assert align_journal_with_dump(tmp_path / "none", dump_file) == 0
