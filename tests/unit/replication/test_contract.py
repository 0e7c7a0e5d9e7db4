"""One contract for every Replicator: LocalReplicator, Raft with one node, Raft with three nodes.

What each test pins down is in its name; the suite is the executable form of the rules in
``control_plane/replication/api.py``.
"""

from __future__ import annotations

import threading

import pytest

from tessera.control_plane.replication import (
    EntryTooLargeError,
    GroupCommitConfig,
    NotLeaderError,
    NotSupportedError,
    QuorumChangeError,
    QuorumStatus,
    Replicator,
    ReplicatorStoppedError,
    StateMachineError,
)

from .harness import Cluster, run_threads, wait_until

pytestmark = pytest.mark.timeout(60)


def _tokens(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}-{i:05d}".encode() for i in range(n)]


def test_entries_applied_in_order_exactly_once_on_every_node(cluster: Cluster) -> None:
    leader = cluster.start()
    sent = _tokens("seq", 300)
    futures = [leader.submit(e) for e in sent]
    results = [f.result(timeout=10) for f in futures]

    # The leader applied them in submission order (one submitting thread, FIFO group commit), and
    # each future got the result computed for its own entry (its position in the list).
    assert cluster.sms[cluster.nodes.index(leader)].copy() == sent
    assert results == list(range(1, len(sent) + 1))

    cluster.wait_all_have(len(sent))
    for sm in cluster.sms:
        assert sm.copy() == sent


def test_raft_index_strictly_increases_and_matches_across_nodes(cluster: Cluster) -> None:
    leader = cluster.start()
    for batch in range(5):
        futures = [leader.submit(e) for e in _tokens(f"b{batch}", 20)]
        for f in futures:
            f.result(timeout=10)
    cluster.wait_all_have(100)
    first = cluster.sms[0].indices
    assert len(first) >= 5
    assert all(a < b for a, b in zip(first, first[1:], strict=False))
    for sm in cluster.sms[1:]:
        wait_until(lambda sm=sm: sm.indices == first, 10, "identical raft indices on every node")


def test_raft_index_is_the_log_index_reported_by_status(cluster: Cluster) -> None:
    leader = cluster.start()
    leader.submit(b"one").result(timeout=10)
    sm = cluster.sms[cluster.nodes.index(leader)]
    # Nothing else is proposed afterwards, so the last applied log index is that batch's index.
    st = wait_until(lambda: (s := leader.status()).last_applied == sm.indices[-1] and s, 10,
                    "status().last_applied to equal the last raft_index")
    assert isinstance(st, QuorumStatus)
    assert st.commit_index >= st.last_applied


def test_concurrent_submitters_all_get_their_own_results(cluster: Cluster) -> None:
    cluster.start()
    per_thread = 10
    got: dict[bytes, object] = {}
    lock = threading.Lock()

    def submitter(t: int) -> None:
        for i in range(per_thread):
            entry = f"t{t:03d}-{i:02d}".encode()
            result = cluster.submit_at_leader(entry, timeout=20)  # a loaded machine may elect mid-test
            with lock:
                got[entry] = result

    run_threads(200, submitter, timeout=45)
    assert len(got) == 200 * per_thread
    cluster.wait_all_have(len(got))
    applied = cluster.sms[0].copy()
    for entry, result in got.items():
        assert isinstance(result, int)
        assert applied[result - 1] == entry  # the result was computed for this very entry
    for sm in cluster.sms:
        entries = sm.copy()
        assert len(entries) == len(set(entries)) == len(got)
        assert entries == applied


def test_restart_from_the_same_data_dirs_brings_state_back(cluster: Cluster) -> None:
    leader = cluster.start()
    sent = _tokens("before", 50)
    for f in [leader.submit(e) for e in sent]:
        f.result(timeout=10)
    cluster.wait_all_have(len(sent))

    cluster.restart()
    cluster.wait_all_have(len(sent))
    for sm in cluster.sms:
        assert sm.copy() == sent  # each entry exactly once, in order, after journal replay

    cluster.submit_at_leader(b"after")  # a restarted quorum may elect twice: ask whoever leads
    cluster.wait_all_have(len(sent) + 1)
    for sm in cluster.sms:
        assert sm.copy() == [*sent, b"after"]


def test_restart_after_log_compaction_restores_the_snapshot(cluster: Cluster) -> None:
    leader = cluster.start()
    first = _tokens("snap", 40)
    for f in [leader.submit(e) for e in first]:
        f.result(timeout=10)
    cluster.wait_all_have(len(first))
    for node in cluster.nodes:
        node.compact_log()
    snapshot_name = "local.snapshot" if cluster.kind == "local" else "raft.dump"
    wait_until(lambda: all((d / snapshot_name).exists() for d in cluster.data_dirs), 10, "snapshot files")
    second = _tokens("tail", 10)
    for e in second:  # compacting every node at once may cost an election under load: ask whoever leads
        cluster.submit_at_leader(e)
    cluster.wait_all_have(len(first) + len(second))

    cluster.restart()
    cluster.wait_all_have(len(first) + len(second))
    for sm in cluster.sms:
        assert sm.restores >= 1  # the state came (at least partly) from the snapshot
        assert sm.copy() == first + second
    if cluster.kind != "local":
        for d in cluster.data_dirs:
            assert (d / "raft.journal").exists() and (d / "raft.dump").exists()


def test_submit_outside_running_life_fails_fast_as_not_leader(cluster: Cluster) -> None:
    cluster.build()
    node = cluster.nodes[0]
    before = node.submit(b"too-early")
    assert before.done()
    with pytest.raises(ReplicatorStoppedError) as info:
        before.result(timeout=1)
    assert isinstance(info.value, NotLeaderError) and info.value.leader_hint is None

    for n in cluster.nodes:
        n.start()
    leader = cluster.wait_leader()
    leader.submit(b"ok").result(timeout=10)
    cluster.stop()
    after = leader.submit(b"too-late")
    assert after.done()
    with pytest.raises(ReplicatorStoppedError):
        after.result(timeout=1)
    leader.stop()  # idempotent
    with pytest.raises(RuntimeError):
        leader.start()  # one life per instance


def test_submit_on_a_follower_fails_fast_with_the_leader_hint(cluster: Cluster) -> None:
    leader = cluster.start()
    if cluster.size == 1:
        assert cluster.followers() == []
        assert leader.leader() == leader.self_address
        return
    cluster.submit_at_leader(b"x")
    for follower in cluster.followers():
        # the follower's view of the leader, and the leader itself, are read together: under load an
        # election could move leadership between two reads
        expected = wait_until(lambda f=follower: (a := cluster.wait_leader().self_address) == f.leader() and a,
                              10, "follower to know the leader")
        fut = follower.submit(b"on-follower")
        assert fut.done()  # refused before anything was queued
        with pytest.raises(NotLeaderError) as info:
            fut.result(timeout=1)
        assert info.value.leader_hint == expected


def test_leadership_callbacks_fire_on_gain_and_on_stop(cluster: Cluster) -> None:
    cluster.start()

    def settled() -> tuple[int, int] | None:
        # the current leader, once its own latest callback says (True, its current term)
        i = cluster.leader_index()
        leader = cluster.nodes[i]
        log = cluster.events[i]
        return (i, leader.term()) if leader.is_leader() and log and log[-1] == (True, leader.term()) else None

    i, term = wait_until(settled, 10, "the leader's (True, term) callback")
    leader, events = cluster.nodes[i], cluster.events[i]
    assert term >= 1

    late: list[tuple[bool, int]] = []
    leader.on_leadership_change(lambda is_leader, t: late.append((is_leader, t)))
    unchanged = leader.is_leader() and leader.term() == term  # no election while subscribing
    wait_until(lambda: late, 10, "a late subscriber to hear the current leadership")
    if unchanged:
        assert late[0] == (True, term)

    cluster.stop_node(i)
    assert events[-1][0] is False  # delivered before stop() returned
    assert late[-1] == events[-1]
    for j, log in enumerate(cluster.events):
        assert all(a != b for a, b in zip(log, log[1:], strict=False)), f"node {j}: repeated notification"


def test_leadership_callback_may_submit_and_block(cluster: Cluster) -> None:
    cluster.build()
    results: list[object] = []
    done = threading.Event()

    def on_change(is_leader: bool, term: int) -> None:
        if is_leader and not done.is_set():
            node = next(n for n in cluster.nodes if n.is_leader())
            results.append(node.submit(f"barrier-{term}".encode()).result(timeout=10))
            done.set()

    for node in cluster.nodes:
        node.on_leadership_change(on_change)
    for node in cluster.nodes:
        node.start()
    cluster.wait_leader()
    wait_until(done.is_set, 10, "the barrier committed from the callback")
    assert results == [1]


def test_status_describes_the_quorum(cluster: Cluster) -> None:
    cluster.start()
    cluster.submit_at_leader(b"s")

    def settled() -> tuple[Replicator, QuorumStatus] | None:
        leader = cluster.wait_leader()
        s = leader.status()
        ok = s.is_leader and s.has_quorum and all(m.connected for m in s.members)
        return (leader, s) if ok else None

    leader, st = wait_until(settled, 10, "every member connected to one leader")
    assert st.is_leader and st.leader == leader.self_address == st.self_address
    assert st.term == leader.term() >= 1
    assert len(st.members) == cluster.size
    assert sorted(m.address for m in st.members) == sorted(cluster.addresses)
    assert [m.is_self for m in st.members].count(True) == 1
    assert st.last_applied >= 1 and st.commit_index >= st.last_applied
    for follower in cluster.followers():
        fs = follower.status()
        assert not fs.is_leader
        assert all(m.match_index is None for m in fs.members)


def test_apply_exception_fails_only_that_batch_and_never_wedges(cluster: Cluster) -> None:
    leader = cluster.start()
    leader.submit(b"a").result(timeout=10)
    with pytest.raises(StateMachineError):
        leader.submit(b"boom").result(timeout=10)
    with pytest.raises(StateMachineError):
        leader.submit(b"short").result(timeout=10)
    assert leader.submit(b"b").result(timeout=10) == 3  # a, short, b
    cluster.wait_all_have(3)
    for sm in cluster.sms:
        assert sm.copy() == [b"a", b"short", b"b"]


def test_bad_entries_are_refused_without_being_replicated(cluster: Cluster) -> None:
    cluster.group_commit = GroupCommitConfig(max_entry_bytes=1000)
    leader = cluster.start()
    with pytest.raises(TypeError):
        leader.submit("text")  # type: ignore[arg-type]
    with pytest.raises(EntryTooLargeError):
        leader.submit(b"x" * 1001).result(timeout=1)
    big = b"y" * 1000  # allowed: an entry at the bound
    assert leader.submit(bytearray(big)).result(timeout=10) == 1
    cluster.wait_all_have(1)
    assert all(sm.copy() == [big] for sm in cluster.sms)


def test_membership_and_transfer_resolve_or_fail_clearly(cluster: Cluster) -> None:
    cluster.start()
    cluster.submit_at_leader(b"barrier")  # a leader answers membership changes once it has committed
    leader = cluster.wait_leader()
    if cluster.kind == "local":
        for fut in (leader.add_member("127.0.0.1:1"), leader.remove_member("127.0.0.1:1"),
                    leader.transfer_leadership(None)):
            with pytest.raises(NotSupportedError):
                fut.result(timeout=1)
        return
    # Removing a node that is not a member is denied by the leader, with a clear error.
    with pytest.raises(QuorumChangeError) as info:
        leader.remove_member("127.0.0.1:1").result(timeout=10)
    assert info.value.reason == "REQUEST_DENIED"
    with pytest.raises(QuorumChangeError):
        leader.remove_member(leader.self_address).result(timeout=1)
    with pytest.raises(ValueError):
        leader.add_member("no-port")
    if cluster.size == 1:
        # No follower to hand leadership to.
        with pytest.raises(QuorumChangeError):
            leader.transfer_leadership(None).result(timeout=10)
        return
    # Three nodes: adding an unreachable fourth member still commits (3 of 4 acknowledge it), and
    # removing it commits again; a follower refuses membership changes with the leader's address.
    leader = cluster.at_leader(lambda node: node.add_member("127.0.0.1:1").result(timeout=10) or node)
    assert "127.0.0.1:1" in {m.address for m in leader.status().members}
    leader = cluster.at_leader(lambda node: node.remove_member("127.0.0.1:1").result(timeout=10) or node)
    assert "127.0.0.1:1" not in {m.address for m in leader.status().members}
    follower = cluster.followers()[0]
    wait_until(lambda: follower.leader() == leader.self_address, 10, "follower to know the leader")
    with pytest.raises(NotLeaderError) as not_leader:
        follower.add_member("127.0.0.1:2").result(timeout=1)
    assert not_leader.value.leader_hint == leader.self_address
