"""Pre-vote and check-quorum (Raft thesis §9.6) for pysyncobj 0.3.17, which has neither.

Without them a node that cannot win an election still raises its term: a restarted follower whose
election timeout passes before the leader's first heartbeat reaches it, or a node cut off from the
others, bumps the term, and once it is heard again the leader of the lower term steps down — an
election per follower restart or heal (a 40-fault 5-master run went from term 6 to term 65).

* **Pre-vote.** When a node's election timeout passes, it first asks the others, in a
  ``tessera_pre_vote`` message, whether they *would* vote for it at the next term, without changing
  anything on either side; only with a majority of yes (itself included) does pysyncobj's own election
  run (term + 1, ``request_vote``). A voter says yes (`grant_pre_vote`) when the proposed term is
  above its own, the candidate's log is at least as up to date as its own (Raft's vote rule), it is not
  the leader and it has not heard from a leader within the minimum election timeout. A refusal carries
  the voter's term; a node behind the voter takes that term (as a real vote reply would make it do), so
  its next pre-vote can win (etcd does the same). A leadership transfer (``timeout_now``) skips the
  pre-vote: the leader asked for that election.
* **One pre-vote per term at a time.** A node promises its pre-vote for a term to one candidate for
  the minimum election timeout (`PreVotePromise`): it refuses another candidate's pre-vote for that
  term meanwhile, and it does not start a round of its own for it (`may_start_pre_vote`); a node
  running its own round has promised itself, until refusals leave that round no majority
  (`PreVoteRound.lost`: a node whose log is behind would otherwise keep refusing the others). A promise
  yields to a candidate whose log is strictly more up to date than the promised one's (its own, for a
  node's own round): a candidate that is behind can lose the real vote to that one anyway, and its
  promises must not keep the others from electing (see below). Without it, two followers whose election timeouts ran
  out a few milliseconds apart both won their pre-votes (a pre-vote changes nothing on the voter),
  both raised the term and split the real votes 2-2 (5 masters, the leader dead): a second term for
  one leader fault, and another election timeout of failover. With it, at most one candidate wins a
  pre-vote for a term (two majorities share a voter, and that voter promised once); two rounds that
  cross split the *pre*-votes, both lose, and neither raises the term (they retry after a fresh
  random timeout, when the promises have run out). Safety does not depend on it: the real vote is
  pysyncobj's, unchanged.
* **A promise yields to a more up-to-date log** (found by the 30-minute soak of 2026-12-07: a leader
  SIGSTOPped for 1.17 s kept its term, no follower was elected). Under load the followers' logs differ
  by the entries in flight. With the leader silent (paused: its connections up, it answers nothing) a
  follower whose log is behind times out first and promises itself, another follower as far behind
  promises it too; the two followers that are ahead refuse it (their logs), but its round is never
  `lost` (the silent leader neither grants nor refuses), and each ahead follower's round finds only
  itself and the other ahead one free: 2 of 5, every round, for as long as the behind one keeps renewing
  the promises (a new round every 0.3-0.6 s). Now a candidate strictly ahead of the promised one's log
  is granted anyway (`PreVotePromise.binds`), and a node strictly ahead of the one it promised may run
  its own round; a behind candidate that still wins its pre-vote can at worst split the real vote
  (one more term), which is what the promise saves in the common case of equal logs.
* **Check-quorum.** A leader that has not had an answer from a majority (itself included) within the
  election timeout (``raftMaxTimeout``) steps down to follower (`should_step_down`), as pysyncobj does
  itself after ``leaderFallbackTimeout``; a leader cut off from the majority stops taking writes that
  cannot commit, and its local reads stop being served as a leader's.

Mixed versions: the two message types are new. pysyncobj 0.3.17 compares a message's ``type`` with the
types it knows and ignores any other, so a node without this module drops a pre-vote request (no
crash); it still elects by itself, and a node with this module still votes in its real elections, so a
cluster in the middle of an upgrade keeps a leader whenever an old node or a majority of new ones is
up (pre-vote only protects the term once every node runs it).

``install_pre_vote`` wraps the node's ``_onTick`` and the transport's receive callback, reading and
writing pysyncobj's private fields (``_SyncObj__raftElectionDeadline``, ``_SyncObj__raftState`` …):
``pysyncobj_release`` pins the release they were written for, and tests/unit/replication/test_prevote.py
fails if one of them is gone. The decisions are pure functions of their inputs (no clock: times come
in), unit-tested on their own.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pysyncobj.syncobj as _pysyncobj
from pysyncobj import SyncObj

__all__ = [
    "PRE_VOTE_REPLY",
    "PRE_VOTE_REQUEST",
    "PATCHED_NAMES",
    "PreVotePromise",
    "PreVoteRound",
    "grant_pre_vote",
    "install_pre_vote",
    "may_start_pre_vote",
    "patched_names_missing",
    "should_step_down",
]

PRE_VOTE_REQUEST = "tessera_pre_vote"
PRE_VOTE_REPLY = "tessera_pre_vote_reply"

log = logging.getLogger(__name__)

_FOLLOWER = _pysyncobj._RAFT_STATE.FOLLOWER
_CANDIDATE = _pysyncobj._RAFT_STATE.CANDIDATE
_LEADER = _pysyncobj._RAFT_STATE.LEADER

# The private attributes of a SyncObj this module reads or writes (checked by the unit tests and by
# `patched_names_missing` before installing).
PATCHED_NAMES = (
    "_SyncObj__raftState",
    "_SyncObj__raftCurrentTerm",
    "_SyncObj__raftElectionDeadline",
    "_SyncObj__raftLeader",
    "_SyncObj__raftLog",
    "_SyncObj__otherNodes",
    "_SyncObj__connectedNodes",
    "_SyncObj__lastResponseTime",
    "_SyncObj__transferInProgress",
    "_SyncObj__transport",
    "_SyncObj__conf",
    "_SyncObj__selfNode",
    "_SyncObj__setState",
    "_SyncObj__setCurrentTerm",
    "_SyncObj__generateRaftTimeout",
    "_SyncObj__properies",
    "_onTick",
)


@dataclass(frozen=True)
class PreVotePromise:
    """The last pre-vote this node gave: for `term`, to `candidate` (its own id when it runs its own
    round), whose log ended at `last_log` (term, index), at `at` (its clock). It binds for the minimum
    election timeout after `at`, against candidates whose log is not strictly more up to date."""

    term: int
    candidate: str
    at: float
    last_log: tuple[int, int]

    def binds(self, *, term: int, candidate: str, now: float, lease: float, last_log: tuple[int, int]) -> bool:
        """Does this promise forbid a pre-vote for `term` to `candidate`, whose log ends at `last_log`
        (term, index), at `now`? Not when that log is strictly more up to date than the promised
        candidate's (module docstring: a promise yields to a more up-to-date log)."""
        return (self.term == term and self.candidate != candidate and now - self.at < lease
                and last_log <= self.last_log)


def grant_pre_vote(*, proposed_term: int, last_log_index: int, last_log_term: int, my_term: int,
                   my_last_index: int, my_last_term: int, leading: bool, heard_from_leader_at: float | None,
                   now: float, lease: float, candidate: str = "", promise: PreVotePromise | None = None) -> bool:
    """Would this node vote for `candidate` at `proposed_term` whose log ends at (`last_log_term`,
    `last_log_index`)? Pre-vote's question (Raft thesis §9.6): no while this node leads or has heard
    from a leader less than `lease` (the minimum election timeout) ago — that leader is alive; no when
    the proposed term is not above this node's; no when the candidate's log is behind this one's (the
    real vote rule: by last term, then last index); no while `promise` (this node's last pre-vote, to
    another candidate or to itself) binds it for that term (module docstring: one pre-vote per term)."""
    if leading:
        return False
    if heard_from_leader_at is not None and now - heard_from_leader_at < lease:
        return False
    if proposed_term <= my_term:
        return False
    if promise is not None and promise.binds(term=proposed_term, candidate=candidate, now=now, lease=lease,
                                             last_log=(last_log_term, last_log_index)):
        return False
    return (last_log_term, last_log_index) >= (my_last_term, my_last_index)


def may_start_pre_vote(*, term: int, me: str, promise: PreVotePromise | None, now: float, lease: float,
                       last_log: tuple[int, int]) -> bool:
    """May this node (`me`), whose log ends at `last_log` (term, index), start a pre-vote round for
    `term`? Not while it has promised that term's pre-vote to another candidate whose log is at least as
    up to date: that candidate is electing itself, and a second round would at best split the pre-votes."""
    return promise is None or not promise.binds(term=term, candidate=me, now=now, lease=lease, last_log=last_log)


def should_step_down(*, now: float, last_answers: Iterable[float], voters: int, timeout: float) -> bool:
    """Check-quorum: should a leader step down? `last_answers`: when each other voter last answered it;
    `voters`: the cluster's size, the leader included. Yes when fewer than a majority (the leader
    counting itself) answered within `timeout`."""
    heard = 1 + sum(1 for at in last_answers if now - at < timeout)
    return 2 * heard <= voters


@dataclass
class PreVoteRound:
    """One node's pre-vote in progress: the term it proposes, the round's number (a reply to an earlier
    round does not count), who said yes, who said no."""

    term: int
    number: int
    voters: int
    granted: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)

    def count(self, reply: dict[str, Any], voter: str) -> bool:
        """Take `reply` from `voter` into account; True when the round has just reached a majority."""
        if reply.get("round") != self.number or reply.get("term") != self.term:
            return False
        if not reply.get("granted"):
            if voter not in self.granted:
                self.refused.add(voter)
            return False
        before = self.won
        self.granted.add(voter)
        self.refused.discard(voter)
        return self.won and not before

    @property
    def won(self) -> bool:
        return 2 * (1 + len(self.granted)) > self.voters

    @property
    def lost(self) -> bool:
        """Refused by so many that a majority is out of reach (the others all saying yes included)."""
        return 2 * (self.voters - len(self.refused)) <= self.voters


def patched_names_missing(so: SyncObj) -> list[str]:
    """The names of `PATCHED_NAMES` this SyncObj lacks (empty on pysyncobj 0.3.17)."""
    return [name for name in PATCHED_NAMES if not hasattr(so, name)]


def install_pre_vote(so: SyncObj, *, check_quorum: bool = True) -> None:
    """Pre-vote (and, unless `check_quorum` is False, check-quorum) on `so`, built and not yet ticked.
    Install it after ``consensus_guards``: its receive wrapper must be the outermost, so the pre-vote
    messages never reach the others (nor pysyncobj)."""
    missing = patched_names_missing(so)
    if missing:
        raise RuntimeError(f"pysyncobj lacks {missing}: the pre-vote guard was written for pysyncobj 0.3.17")
    _PreVote(so, check_quorum=check_quorum).install()


class _PreVote:
    """The I/O around `grant_pre_vote` and `should_step_down` for one node."""

    def __init__(self, so: SyncObj, *, check_quorum: bool) -> None:
        self.so = so
        self.check_quorum = check_quorum
        self.conf = so._SyncObj__conf
        self.transport = so._SyncObj__transport
        self.round: PreVoteRound | None = None
        self.numbers = itertools.count(1)
        self.heard_from_leader_at: float | None = None
        self.promise: PreVotePromise | None = None
        self_node = so._SyncObj__selfNode
        self.me = str(getattr(self_node, "id", self_node))

    def install(self) -> None:
        so = self.so
        tick = so._onTick
        deliver = self.transport._onMessageReceivedCallback

        def on_tick(time_to_wait: float = 0.0) -> None:
            if self.before_tick():
                tick(time_to_wait)
                return
            # Hold pysyncobj's election deadline back for this tick: it compares the deadline with the
            # clock again, later than `before_tick` did (after the GIL, a preemption, a SIGSTOP), and a
            # deadline that passed in between started an election without a pre-vote. What the tick
            # itself sets (a heartbeat's fresh deadline, a won round's 0, `timeout_now`) stays.
            held = so._SyncObj__raftElectionDeadline
            so._SyncObj__raftElectionDeadline = math.inf
            try:
                tick(time_to_wait)
            finally:
                if so._SyncObj__raftElectionDeadline == math.inf:
                    so._SyncObj__raftElectionDeadline = held

        def on_message(node: Any, message: Any) -> None:
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == PRE_VOTE_REQUEST:
                self.on_request(node, message)
                return
            if kind == PRE_VOTE_REPLY:
                self.on_reply(node, message)
                return
            if kind == "append_entries" and message.get("term", -1) >= self.so._SyncObj__raftCurrentTerm:
                self.heard_from_leader_at = _pysyncobj.monotonicTime()
                self.round = None  # a leader is there: no election to prepare
            deliver(node, message)

        self.so._onTick = on_tick
        # pysyncobj dumps every attribute of the SyncObj set after its __init__ (a subclass's replicated
        # fields) with the state: the wrapper is not one, and a closure does not pickle (every dump failed).
        self.so._SyncObj__properies.add("_onTick")
        self.transport.setOnMessageReceivedCallback(on_message)

    # ---- the candidate's side -------------------------------------------------------------------------
    def before_tick(self) -> bool:
        """Run before each tick of pysyncobj; True when that tick may start pysyncobj's own election
        (a won pre-vote, a leadership transfer) or has none to start (a leader, a node without an
        address), False when the election deadline must be held back for it."""
        so = self.so
        now = _pysyncobj.monotonicTime()
        state = so._SyncObj__raftState
        if state == _LEADER:
            self.round = None
            if self.check_quorum and should_step_down(
                    now=now, last_answers=[so._SyncObj__lastResponseTime.get(n, now) for n in so._SyncObj__otherNodes],
                    voters=len(so._SyncObj__otherNodes) + 1, timeout=self.conf.raftMaxTimeout):
                log.info("check-quorum: no answer from a majority within %.2f s; stepping down in term %d",
                         self.conf.raftMaxTimeout, so._SyncObj__raftCurrentTerm)
                so._SyncObj__setState(_FOLLOWER)  # what pysyncobj does after leaderFallbackTimeout
                so._SyncObj__raftLeader = None
                # A fresh election timeout: the deadline left from before it led has long passed, and
                # pysyncobj would start an election (term + 1) on this very tick, without a pre-vote.
                so._SyncObj__raftElectionDeadline = now + so._SyncObj__generateRaftTimeout()
                return False
            return True
        if state not in (_FOLLOWER, _CANDIDATE) or so._SyncObj__selfNode is None:
            return True
        if so._SyncObj__raftElectionDeadline >= now or not (so._SyncObj__connectedNodes or not so._SyncObj__otherNodes):
            return False  # no election on this tick, even if the deadline passes before pysyncobj looks
        if so._SyncObj__transferInProgress:
            return True  # the leader asked for this election (timeout_now): no pre-vote
        term = so._SyncObj__raftCurrentTerm
        current = self.round
        if current is not None and current.won and current.term == term + 1:
            log.info("pre-vote for term %d won (%d of %d voters); electing", current.term,
                     1 + len(current.granted), current.voters)
            self.round = None
            return True  # a majority would vote: pysyncobj's election runs on this tick
        last = so._SyncObj__raftLog[-1]
        if not may_start_pre_vote(term=term + 1, me=self.me, promise=self.promise, now=now,
                                  lease=self.conf.raftMinTimeout, last_log=(last[2], last[1])):
            # This node's pre-vote for that term went to another candidate, which is electing itself:
            # wait for its append_entries, or a fresh timeout if its election does not come through.
            so._SyncObj__raftElectionDeadline = now + so._SyncObj__generateRaftTimeout()
            return False
        self.start_round(term + 1)
        return False

    def start_round(self, term: int) -> None:
        so = self.so
        others = so._SyncObj__otherNodes
        now = _pysyncobj.monotonicTime()
        log = so._SyncObj__raftLog
        self.round = PreVoteRound(term=term, number=next(self.numbers), voters=len(others) + 1)
        self.promise = PreVotePromise(term=term, candidate=self.me, at=now,  # its own pre-vote
                                      last_log=(log[-1][2], log[-1][1]))
        so._SyncObj__raftElectionDeadline = now + so._SyncObj__generateRaftTimeout()
        request = {"type": PRE_VOTE_REQUEST, "term": term, "round": self.round.number,
                   "last_log_index": log[-1][1], "last_log_term": log[-1][2]}
        for node in others:
            self.transport.send(node, request)
        if self.round.won:  # a cluster of one
            so._SyncObj__raftElectionDeadline = 0

    def on_reply(self, node: Any, reply: dict[str, Any]) -> None:
        so = self.so
        current = self.round
        if current is None or so._SyncObj__raftState == _LEADER:
            return
        voter_term = int(reply.get("voter_term", 0))
        if not reply.get("granted") and voter_term > so._SyncObj__raftCurrentTerm:
            # Behind the voter: take its term (it is no higher than the cluster's), as a vote reply would.
            so._SyncObj__setCurrentTerm(voter_term, None)
            so._SyncObj__setState(_FOLLOWER)
            self.round = None
            return
        if current.term != so._SyncObj__raftCurrentTerm + 1:
            self.round = None  # the term moved meanwhile: this round is stale
            return
        if current.count(reply, str(getattr(node, "id", node))):
            so._SyncObj__raftElectionDeadline = 0  # the election starts on the next tick
        elif current.lost and self.promise is not None and self.promise.candidate == self.me:
            # Its own round cannot win: its pre-vote is free for another candidate of that term (a node
            # whose log is behind would otherwise refuse the others for as long as it keeps trying).
            self.promise = None

    # ---- the voter's side -----------------------------------------------------------------------------
    def on_request(self, node: Any, request: dict[str, Any]) -> None:
        so = self.so
        log = so._SyncObj__raftLog
        now = _pysyncobj.monotonicTime()
        term = int(request.get("term", 0))
        candidate = str(getattr(node, "id", node))
        last_index, last_term = int(request.get("last_log_index", 0)), int(request.get("last_log_term", 0))
        granted = grant_pre_vote(
            proposed_term=term, last_log_index=last_index, last_log_term=last_term,
            my_term=so._SyncObj__raftCurrentTerm,
            my_last_index=log[-1][1], my_last_term=log[-1][2], leading=so._SyncObj__raftState == _LEADER,
            heard_from_leader_at=self.heard_from_leader_at, now=now, lease=self.conf.raftMinTimeout,
            candidate=candidate, promise=self.promise)
        if granted:
            self.promise = PreVotePromise(term=term, candidate=candidate, at=now, last_log=(last_term, last_index))
        self.transport.send(node, {"type": PRE_VOTE_REPLY, "term": request.get("term"), "round": request.get("round"),
                                   "granted": granted, "voter_term": so._SyncObj__raftCurrentTerm})
