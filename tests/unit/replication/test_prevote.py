"""replication.prevote: pre-vote and check-quorum (Raft thesis §9.6) on pysyncobj 0.3.17.

The decisions as pure functions first; then whole clusters of real pysyncobj nodes on the simulated
network (``replication.sim``: fake clock, seeded elections), each scenario with pre-vote on and off, so
each test shows pysyncobj's own behaviour and the one pre-vote gives.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tessera.control_plane.replication.config import ReplicationConfig
from tessera.control_plane.replication.prevote import (
    PATCHED_NAMES,
    PRE_VOTE_REPLY,
    PRE_VOTE_REQUEST,
    PreVotePromise,
    PreVoteRound,
    grant_pre_vote,
    install_pre_vote,
    may_start_pre_vote,
    patched_names_missing,
    should_step_down,
)
from tessera.control_plane.replication.sim import (
    NullStateMachine,
    Scheduler,
    SimClock,
    SimNetwork,
    SimRaftNode,
    deterministic_pysyncobj,
)

ADDRESSES = tuple(f"10.0.0.{i}:7000" for i in range(1, 6))


# ---- the decisions --------------------------------------------------------------------------------------

def _grant(**changes: object) -> bool:
    """A candidate at term 6 whose log ends at (term 5, index 40), asking a follower at term 5 whose log
    ends at (term 5, index 40) and which last heard from a leader 1 s ago (lease 0.25 s)."""
    args: dict[str, object] = dict(proposed_term=6, last_log_index=40, last_log_term=5, my_term=5, my_last_index=40,
                                   my_last_term=5, leading=False, heard_from_leader_at=99.0, now=100.0, lease=0.25)
    args.update(changes)
    return grant_pre_vote(**args)  # type: ignore[arg-type]


def test_a_follower_without_a_leader_grants_a_pre_vote_to_an_up_to_date_candidate() -> None:
    assert _grant()
    assert _grant(heard_from_leader_at=None)  # never heard from one (just started)
    assert _grant(last_log_index=41)  # a longer log
    assert _grant(last_log_term=6, last_log_index=2, my_last_term=5)  # a later last term wins over length


def test_a_follower_that_heard_from_a_leader_within_the_lease_refuses() -> None:
    assert not _grant(heard_from_leader_at=99.875)
    assert _grant(heard_from_leader_at=99.75)  # exactly the lease ago: that leader is taken as gone


def test_the_leader_refuses_every_pre_vote() -> None:
    assert not _grant(leading=True, heard_from_leader_at=None)


def test_a_candidate_with_a_log_behind_the_voters_is_refused() -> None:
    assert not _grant(last_log_index=39)
    assert not _grant(last_log_term=4, last_log_index=100)


def test_a_proposed_term_not_above_the_voters_is_refused() -> None:
    assert not _grant(my_term=6)
    assert not _grant(my_term=7)


def test_a_pre_vote_promised_to_one_candidate_refuses_another_for_that_term_within_the_lease() -> None:
    log = (5, 40)  # the promised candidate's log ends where the asking one's does (`_grant`)
    promise = PreVotePromise(term=6, candidate="a", at=99.9, last_log=log)
    assert not _grant(candidate="b", promise=promise)  # 0.1 s after promising a
    assert _grant(candidate="a", promise=promise)  # the same candidate again (a retried round)
    assert _grant(candidate="b", promise=PreVotePromise(term=6, candidate="a", at=99.75, last_log=log))  # ran out
    assert _grant(candidate="b", promise=PreVotePromise(term=5, candidate="a", at=99.9, last_log=log))  # another term
    assert not _grant(candidate="b", promise=PreVotePromise(term=6, candidate="me", at=99.9, last_log=log))  # its own


def test_a_promise_yields_to_a_candidate_whose_log_is_strictly_more_up_to_date() -> None:
    """The promised candidate (or the node itself) is behind the asking one: the promise does not bind."""
    assert _grant(candidate="b", promise=PreVotePromise(term=6, candidate="a", at=99.9, last_log=(5, 39)))
    assert _grant(candidate="b", promise=PreVotePromise(term=6, candidate="me", at=99.9, last_log=(4, 90)))
    assert not _grant(candidate="b", last_log_index=39,  # behind the promised one: the promise binds
                      promise=PreVotePromise(term=6, candidate="a", at=99.9, last_log=(5, 41)), my_last_index=30)
    assert _grant(candidate="b", last_log_index=39, my_last_index=30)  # (and without a promise it is granted)


def test_a_node_that_promised_its_pre_vote_to_another_does_not_start_a_round_for_that_term() -> None:
    promise = PreVotePromise(term=6, candidate="a", at=99.9, last_log=(5, 40))
    for log in ((5, 40), (5, 39), (4, 99)):  # as up to date as the promised candidate, or behind it
        assert not may_start_pre_vote(term=6, me="me", promise=promise, now=100.0, lease=0.25, last_log=log)
    assert may_start_pre_vote(term=6, me="me", promise=promise, now=100.0, lease=0.25, last_log=(5, 41))  # ahead
    assert may_start_pre_vote(term=6, me="me", promise=promise, now=100.15, lease=0.25, last_log=(5, 40))  # ran out
    assert may_start_pre_vote(term=7, me="me", promise=promise, now=100.0, lease=0.25, last_log=(5, 40))
    assert may_start_pre_vote(term=6, me="a", promise=promise, now=100.0, lease=0.25, last_log=(5, 40))  # its own
    assert may_start_pre_vote(term=6, me="me", promise=None, now=100.0, lease=0.25, last_log=(5, 40))


@pytest.mark.parametrize(("answers", "voters", "down"), [
    ([9.9, 9.9], 3, False),  # both followers answered recently
    ([9.9, 1.0], 3, False),  # one of two: with itself a majority of 3
    ([1.0, 1.0], 3, True),
    ([9.9, 9.9, 1.0, 1.0], 5, False),  # 3 of 5
    ([9.9, 1.0, 1.0, 1.0], 5, True),  # 2 of 5
    ([9.5, 9.5, 1.0, 1.0], 5, True),  # answers exactly the timeout ago do not count
    ([], 1, False),  # a cluster of one
])
def test_a_leader_steps_down_without_answers_from_a_majority_within_the_timeout(
        answers: list[float], voters: int, down: bool) -> None:
    assert should_step_down(now=10.0, last_answers=answers, voters=voters, timeout=0.5) is down


def test_a_round_counts_granted_replies_of_its_own_round_and_term_once() -> None:
    r = PreVoteRound(term=7, number=3, voters=5)
    assert not r.count({"round": 3, "term": 7, "granted": False}, "b")
    assert not r.count({"round": 2, "term": 7, "granted": True}, "b")  # an earlier round
    assert not r.count({"round": 3, "term": 6, "granted": True}, "b")
    assert not r.count({"round": 3, "term": 7, "granted": True}, "b")  # 2 of 5
    assert not r.count({"round": 3, "term": 7, "granted": True}, "b")  # the same voter again
    assert r.count({"round": 3, "term": 7, "granted": True}, "c")  # 3 of 5: won now
    assert r.won and not r.count({"round": 3, "term": 7, "granted": True}, "d")  # reported once


def test_a_round_is_lost_once_refusals_leave_no_majority_within_reach() -> None:
    r = PreVoteRound(term=7, number=3, voters=5)
    assert not r.count({"round": 3, "term": 7, "granted": False}, "b")
    assert not r.count({"round": 2, "term": 7, "granted": False}, "c")  # an earlier round's refusal
    assert not r.lost  # itself, c, d and e could still make 4 of 5
    r.count({"round": 3, "term": 7, "granted": False}, "c")
    assert not r.lost  # itself, d and e: 3 of 5
    r.count({"round": 3, "term": 7, "granted": False}, "d")
    assert r.lost and not r.won
    three = PreVoteRound(term=7, number=1, voters=3)
    three.count({"round": 1, "term": 7, "granted": False}, "b")
    assert not three.lost  # itself and c: 2 of 3
    three.count({"round": 1, "term": 7, "granted": False}, "c")
    assert three.lost



# ---- the guard of the patched internals --------------------------------------------------------------------

def test_every_private_name_the_patch_uses_exists_on_pysyncobj(tmp_path: Path) -> None:
    """Fails when pysyncobj renames what install_pre_vote reads or replaces (it would then do nothing)."""
    with cluster(tmp_path, 3) as c:
        assert patched_names_missing(c.nodes[0]._so) == []
        assert {"_SyncObj__raftElectionDeadline", "_SyncObj__lastResponseTime", "_onTick"} <= set(PATCHED_NAMES)


def test_a_node_with_pre_vote_still_writes_its_dump(tmp_path: Path) -> None:
    """pysyncobj pickles the attributes set on a SyncObj after its __init__ into the dump: the tick wrapper
    must not be one of them (with it, every log compaction failed)."""
    with cluster(tmp_path, 3) as c:
        leader = c.leader()
        for i in range(30):
            leader.propose([b"e%d" % i], lambda result, err: None)
            c.run(0.03)
        leader._so.forceLogCompaction()
        c.run(1.0)
        assert leader.config.dump_file.exists()
        assert len(leader.log()) < 30  # compacted


def test_the_patch_refuses_a_syncobj_without_those_names() -> None:
    class Other:
        _onTick = None

    with pytest.raises(RuntimeError, match="pysyncobj 0.3.17"):
        install_pre_vote(Other())  # type: ignore[arg-type]


# ---- whole clusters ----------------------------------------------------------------------------------------

@dataclass
class Cluster:
    clock: SimClock
    scheduler: Scheduler
    network: SimNetwork
    nodes: list[SimRaftNode]
    configs: list[ReplicationConfig]
    pre_vote: list[bool]
    leaders: list[str]

    def run(self, seconds: float) -> None:
        self.scheduler.run_until(self.clock.now + seconds)

    def leader(self) -> SimRaftNode:
        leading = [n for n in self.nodes if n.is_leader()]
        assert len(leading) == 1, [n.address for n in leading]
        return leading[0]

    def followers(self) -> list[SimRaftNode]:
        return [n for n in self.nodes if n.alive and not n.is_leader()]

    def terms(self) -> list[int]:
        return [n.term() for n in self.nodes]

    def restart(self, node: SimRaftNode) -> SimRaftNode:
        i = self.nodes.index(node)
        node.crash()
        self.nodes[i] = SimRaftNode(self.network, self.configs[i], NullStateMachine(), pre_vote=self.pre_vote[i],
                                    on_leadership=self._record)
        return self.nodes[i]

    def isolate(self, node: SimRaftNode) -> None:
        for other in self.nodes:
            if other is not node:
                self.network.cut(node.address, other.address, detect_after=60.0)  # connections stay up

    def heal(self) -> None:
        for a, b in self.network.cut_links():
            self.network.heal(a, b)

    def pause(self, node: SimRaftNode) -> None:
        """SIGSTOP: the node neither ticks nor sends; what is sent to it waits (its connections stay up)."""
        node.tick = lambda: None  # type: ignore[method-assign]
        self.isolate(node)

    def resume(self, node: SimRaftNode) -> None:
        del node.tick  # the class's own again
        self.heal()
        node.wake()

    def _record(self, node: SimRaftNode, leading: bool, term: int) -> None:
        if leading:
            self.leaders.append(f"{node.address}@{term}")


@contextlib.contextmanager
def cluster(tmp_path: Path, size: int, pre_vote: bool | list[bool] = True, seed: int = 1) -> Iterator[Cluster]:
    """`size` nodes with pre-vote on or off (one flag per node for a mixed cluster), run until one leads."""
    clock, rng = SimClock(1000.0), random.Random(seed)
    flags = pre_vote if isinstance(pre_vote, list) else [pre_vote] * size
    with deterministic_pysyncobj(clock, rng):
        scheduler = Scheduler(clock)
        network = SimNetwork(scheduler, rng)
        addresses = ADDRESSES[:size]
        configs = [ReplicationConfig(a, tuple(p for p in addresses if p != a), tmp_path / str(i))
                   for i, a in enumerate(addresses)]
        c = Cluster(clock, scheduler, network, [], configs, flags, [])
        c.nodes = [SimRaftNode(network, cfg, NullStateMachine(), pre_vote=flags[i], on_leadership=c._record)
                   for i, cfg in enumerate(configs)]
        try:
            c.run(3.0)
            c.leader()
            yield c
        finally:
            for n in c.nodes:
                n.crash()


@pytest.mark.parametrize("pre_vote", [True, False])
def test_an_isolated_follower_healed_does_not_depose_the_leader(tmp_path: Path, pre_vote: bool) -> None:
    """A follower cut off from the others for 5 s (its connections up, its traffic held, as a network
    that drops packets). pysyncobj alone: it raises its term at every election timeout, and once healed
    its term deposes the leader. With pre-vote: its term stays, the leader stays."""
    with cluster(tmp_path, 3, pre_vote) as c:
        leader, follower = c.leader(), c.followers()[0]
        term = leader.term()
        c.isolate(follower)
        c.run(5.0)
        assert (follower.term() == term) is pre_vote
        c.heal()
        c.run(3.0)
        if pre_vote:
            assert c.leader() is leader and c.terms() == [term] * 3
        else:
            assert c.leader().term() > term


@pytest.mark.parametrize("pre_vote", [True, False])
def test_a_restarted_follower_that_cannot_reach_the_leader_does_not_raise_the_term(tmp_path: Path,
                                                                                   pre_vote: bool) -> None:
    """A follower restarts while its link to the leader is down (slow to come back, as after a restart
    of a real master): it reaches the other follower only. pysyncobj alone: its election timeout passes,
    it raises the term, the other follower takes the term and the leader is deposed. With pre-vote: the
    other follower, which hears from the leader, refuses; nothing changes."""
    with cluster(tmp_path, 3, pre_vote) as c:
        leader, follower = c.leader(), c.followers()[0]
        term = leader.term()
        follower.crash()
        c.network.cut(follower.address, leader.address, detect_after=60.0)
        c.run(0.5)
        c.restart(follower)
        c.run(5.0)
        if pre_vote:
            assert leader.is_leader() and c.terms() == [term] * 3
        else:
            assert max(c.terms()) > term and not leader.is_leader()


@pytest.mark.parametrize("pre_vote", [True, False])
def test_a_leader_cut_off_from_the_majority_steps_down_within_the_election_timeout(tmp_path: Path,
                                                                                   pre_vote: bool) -> None:
    """Check-quorum: an isolated leader stops being leader within raftMaxTimeout (0.6 s) plus a tick;
    pysyncobj alone keeps leading until leaderFallbackTimeout (1.5 s). Meanwhile the majority elects a
    new leader (once, with pre-vote: one election for the fault) and the old one follows it when healed."""
    with cluster(tmp_path, 5, pre_vote) as c:
        leader = c.leader()
        term = leader.term()
        c.isolate(leader)
        c.run(c.configs[0].raft_max_timeout_s + 2 * c.configs[0].tick_period_s)
        assert leader.is_leader() is not pre_vote
        c.run(4.0)
        assert (leader.term() == term) is pre_vote  # cut off, it cannot win: pre-vote keeps its term
        c.heal()
        c.run(3.0)
        new = c.leader()
        assert new is not leader
        if pre_vote:
            assert c.terms() == [term + 1] * 5  # one election, no term raised by the isolated node


def test_a_node_without_pre_vote_ignores_pre_vote_messages(tmp_path: Path) -> None:
    """Mixed versions: pysyncobj alone drops the new message types (no reply, no change, no crash)."""
    with cluster(tmp_path, 3, pre_vote=False) as c:
        node = c.followers()[0]
        sent: list[object] = []
        send = node.transport.send
        node.transport.send = lambda peer, message: sent.append(message) or send(peer, message)  # type: ignore[method-assign]
        term = node.term()
        node.transport.deliver(c.leader().address, {"type": PRE_VOTE_REQUEST, "term": term + 1, "round": 1,
                                                    "last_log_index": 99, "last_log_term": term})
        node.transport.deliver(c.leader().address, {"type": PRE_VOTE_REPLY, "term": term + 1, "round": 1,
                                                    "granted": True, "voter_term": term})
        node.tick()
        assert node.term() == term
        assert not [m for m in sent if isinstance(m, dict) and str(m.get("type", "")).startswith("tessera_pre_vote")]


def test_a_cluster_of_mixed_versions_still_elects_after_the_leader_dies(tmp_path: Path) -> None:
    """One node without pre-vote among pre-vote nodes: leaders come back after leader crashes."""
    with cluster(tmp_path, 3, pre_vote=[True, False, True], seed=4) as c:
        for _ in range(3):
            leader = c.leader()
            leader.crash()
            c.run(3.0)
            c.leader()
            c.restart(leader)
            c.run(2.0)
            c.leader()


def test_a_leadership_transfer_skips_the_pre_vote(tmp_path: Path) -> None:
    """timeout_now: the leader asked for the election, so the target does not ask the others first (they
    hear from the leader and would refuse)."""
    with cluster(tmp_path, 3) as c:
        leader = c.leader()
        c.run(1.0)  # every follower caught up (transferLeadership refuses one that is not)
        done: list[object] = []
        leader._so.transferLeadership(callback=lambda result, err: done.append(err))
        c.run(2.0)
        assert done and c.leader() is not leader


def test_a_follower_stopped_between_the_pre_vote_check_and_pysyncobjs_own_does_not_raise_the_term(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pysyncobj compares the election deadline with the clock again, later in the same tick than the
    pre-vote check did. A follower stopped in between (SIGSTOP, a preemption: a `pause_follower` of the
    fault runner) found its deadline passed and started pysyncobj's own election, without a pre-vote,
    and its term deposed the leader. Here one follower's clock jumps 2 s right after its pre-vote check,
    once: it must not raise the term (its next tick asks for a pre-vote, which the other follower, hearing
    from the leader, refuses)."""
    import pysyncobj.syncobj as _pysyncobj

    from tessera.control_plane.replication import prevote

    with cluster(tmp_path, 3) as c:
        leader, follower = c.leader(), c.followers()[0]
        term = leader.term()
        so = follower._so
        check = prevote._PreVote.before_tick
        jumped: list[float] = []

        def before_tick(self: prevote._PreVote) -> bool:
            may_elect = check(self)
            if self.so is so and not jumped:
                jumped.append(c.clock.now)
                _pysyncobj.monotonicTime = lambda: c.clock.now + 2.0  # stopped here for 2 s
            return may_elect

        monkeypatch.setattr(prevote._PreVote, "before_tick", before_tick)
        ticked = so._onTick

        def tick(time_to_wait: float = 0.0) -> None:
            try:
                ticked(time_to_wait)
            finally:
                _pysyncobj.monotonicTime = c.clock  # the jump lasts one tick

        so._onTick = tick
        c.run(2.0)
        assert jumped
        assert c.leader() is leader and c.terms() == [term] * 3, (c.terms(), c.leaders)


@pytest.mark.parametrize("seed", range(8))
def test_two_followers_timing_out_together_after_a_leader_crash_cost_one_term(tmp_path: Path, seed: int) -> None:
    """5 nodes; the leader crashes and two followers' election timeouts run out at the same instant (the
    others' much later). Both ask for pre-votes at once. Without one pre-vote per term both could win
    (a pre-vote changes nothing on the voter), raise the term together and split the real votes 2-2:
    a second term and another election timeout for one fault. With it, at most one of them wins its
    pre-vote; crossed rounds lose both and are retried without a term. Exactly one term is added."""
    with cluster(tmp_path, 5, seed=seed) as c:
        c.run(1.0)
        leader = c.leader()
        term = leader.term()
        leader.crash()
        first, second, *rest = c.followers()
        at = c.clock.now + c.configs[0].raft_min_timeout_s
        for node in (first, second):
            node._so._SyncObj__raftElectionDeadline = at
        for node in rest:
            node._so._SyncObj__raftElectionDeadline = at + 10.0
        c.run(3.0)
        new = c.leader()
        assert new in (first, second)
        assert new.term() == term + 1, (c.terms(), c.leaders)


def test_leader_crashes_in_a_cluster_of_five_cost_one_term_each(tmp_path: Path) -> None:
    """The common case end to end: the leader of 5 crashes (and comes back as a follower) 25 times, over
    5 seeds; each crash adds exactly one term (pysyncobj's random election timeouts alone, with pre-vote
    rounds that could both win, split the votes after ~8 % of the crashes in this simulation)."""
    crashes = terms = 0
    for seed in range(5):
        with cluster(tmp_path / str(seed), 5, seed=seed) as c:
            for _ in range(5):
                c.run(1.0)
                leader = c.leader()
                term = leader.term()
                leader.crash()
                c.run(2.0)
                crashes += 1
                terms += c.leader().term() - term
                c.restart(leader)
    assert terms == crashes


def test_a_paused_leader_is_replaced_although_a_follower_behind_it_times_out_first(tmp_path: Path) -> None:
    """The soak's 20-s gap (2026-12-07, fault 241): a leader SIGSTOPped for 1.17 s under load kept its term.
    Two of its four followers miss its last entry; the leader stops (paused: connections up, no answer).
    A follower that is behind times out first and asks for pre-votes: the other one behind promises it
    its pre-vote, the two ahead refuse (their logs), and the silent leader never answers, so that round
    is never lost and its promises hold. An ahead follower times out next: before, it found only itself
    and the other ahead one free (2 of 5) in every round for as long as the behind one kept renewing
    its promises, and no one was elected within the pause. A promise yields to a strictly more
    up-to-date log: the ahead follower is elected in its first round, one term for the fault."""
    with cluster(tmp_path, 5) as c:
        c.run(1.0)
        leader = c.leader()
        term = leader.term()
        behind, behind_too, ahead, ahead_too = sorted(c.followers(), key=lambda n: n.address)
        for node in (behind, behind_too):
            c.network.cut(leader.address, node.address, detect_after=60.0)
        leader.propose([b"the entry two followers miss"], lambda result, err: None)
        c.run(0.2)
        last = {n.address: n.log()[-1].index for n in c.followers()}
        assert last[ahead.address] == last[ahead_too.address] > last[behind.address] == last[behind_too.address]
        c.pause(leader)
        c.run(0.05)  # what the leader sent before it stopped has arrived
        at = c.clock.now
        timeouts = {behind: 0.3, ahead: 0.35, behind_too: 10.0, ahead_too: 10.0}
        for node, timeout in timeouts.items():
            node._so._SyncObj__raftElectionDeadline = at + timeout
        c.run(1.0)
        elected = [n for n in c.nodes if n.is_leader() and n.term() > term]
        c.resume(leader)
        assert [n.address for n in elected] == [ahead.address], (c.terms(), c.leaders)
        c.run(1.0)
        assert c.leader() is ahead and c.terms() == [term + 1] * 5, (c.terms(), c.leaders)
