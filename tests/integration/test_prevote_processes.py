"""Pre-vote and check-quorum on real master processes (control_plane/replication/prevote.py).

Three masters, each behind the fault-injecting Raft proxy of the fault suite (tests/faults/proxy.py):
a follower killed and restarted, or cut off and healed, must not raise the term nor depose the leader;
a leader cut off from the others steps down without raising its term, and the leader the others elect
meanwhile keeps leading once the old one is healed. pysyncobj alone (``tessera master --no-pre-vote``)
raised the term at each of these (the figures are in docs/reliability.md).

The three tests share one quorum (each reads the leader and term it starts from, and leaves every master
healed and following); the `cluster` fixture makes it whole before each test.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.proxy import BLACKHOLE, RaftProxies
from tests.support.cluster import LocalCluster, MasterProc, wait_for

pytestmark = pytest.mark.integration

# Several election timeouts (0.3-0.6 s): long enough for a node without pre-vote to raise the term.
QUIET = 3.0


class ProxiedCluster(LocalCluster):
    """A LocalCluster whose masters' Raft traffic crosses RaftProxies (as in tests/faults/run.py)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, n=3)
        routes: dict[str, tuple[str, str]] = {}
        for m in self.masters:
            bind = f"127.0.0.1:{self.fresh_ports(1)[0]}"
            m.extra_flags = ["--raft-bind", bind]
            routes[m.name] = (m.raft, bind)
        self.proxies = RaftProxies(
            routes, lambda: {m.name: m.proc.pid for m in self.masters if m.alive and m.proc is not None})

    def terms(self) -> dict[str, int]:
        return {m.name: int(m.quorum(timeout=2.0).term) for m in self.masters if m.alive}

    def follows(self, m: MasterProc, leader: MasterProc) -> bool:
        try:
            q = m.quorum(timeout=0.5)
        except Exception:  # noqa: BLE001 - starting up
            return False
        return q.leader == leader.raft and q.applied_index >= int(leader.quorum(timeout=2.0).commit_index)


@pytest.fixture(scope="module")
def quorum(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxiedCluster]:
    """One proxied quorum for the module's tests (each begins from whatever leader and term it finds)."""
    c = ProxiedCluster(tmp_path_factory.mktemp("prevote"))
    with c:
        c.proxies.start()
        try:
            c.start_all()
            yield c
        finally:
            c.proxies.close()


@pytest.fixture
def cluster(quorum: ProxiedCluster) -> ProxiedCluster:
    """The module's quorum, whole: healed, every master running and following the leader (so a test that
    failed half-way does not leave a cut or a dead master to the next one)."""
    quorum.proxies.heal()
    for m in quorum.masters:
        if not m.alive:
            quorum.start(m)
    leader = quorum.leader(timeout=60)
    wait_for(lambda: all(quorum.follows(m, leader) for m in quorum.masters), 60, what="every master following")
    return quorum


@pytest.mark.timeout(240)
def test_a_restarted_follower_joins_without_an_election(cluster: ProxiedCluster) -> None:
    leader = cluster.leader()
    term = int(leader.quorum().term)
    for round_ in range(3):
        follower = [m for m in cluster.masters if m is not leader][round_ % 2]
        cluster.kill(follower)
        time.sleep(1.0)
        cluster.start(follower)
        wait_for(lambda f=follower: cluster.follows(f, leader), 60, what=f"{follower.name} to rejoin")
        time.sleep(QUIET)
        assert cluster.leader() is leader
        assert cluster.terms() == {m.name: term for m in cluster.masters}, f"restart {round_ + 1}"


@pytest.mark.timeout(240)
def test_an_isolated_follower_healed_does_not_depose_the_leader(cluster: ProxiedCluster) -> None:
    leader = cluster.leader()
    term = int(leader.quorum().term)
    follower = next(m for m in cluster.masters if m is not leader)
    cluster.proxies.isolate(follower.name, BLACKHOLE)
    time.sleep(QUIET)
    assert int(follower.quorum().term) == term  # it could not win: it did not raise its term
    cluster.proxies.heal()
    wait_for(lambda: cluster.follows(follower, leader), 60, what=f"{follower.name} to follow {leader.name} again")
    time.sleep(QUIET)
    assert cluster.leader() is leader
    assert cluster.terms() == {m.name: term for m in cluster.masters}


@pytest.mark.timeout(240)
def test_an_isolated_leader_steps_down_and_costs_one_election(cluster: ProxiedCluster) -> None:
    leader = cluster.leader()
    term = int(leader.quorum().term)
    cluster.proxies.isolate(leader.name, BLACKHOLE)
    new = wait_for(lambda: next((m for m in cluster.masters if m is not leader and m.quorum().leader == m.raft
                                 and int(m.quorum().term) > term), None), 60, what="a new leader")
    new_term = int(new.quorum().term)
    wait_for(lambda: leader.quorum().leader != leader.raft, 30, what=f"{leader.name} to step down")
    time.sleep(QUIET)
    assert int(leader.quorum().term) == term  # cut off, it did not raise its term either
    cluster.proxies.heal()
    wait_for(lambda: cluster.follows(leader, new), 60, what=f"{leader.name} to follow {new.name}")
    time.sleep(QUIET)
    assert cluster.leader() is new  # healed, the old leader did not depose the new one
    assert cluster.terms() == {m.name: new_term for m in cluster.masters}


@pytest.mark.timeout(240)
def test_a_leader_stopped_on_purpose_hands_over_its_leadership_in_one_term(cluster: ProxiedCluster) -> None:
    """SIGTERM to the leader: before stopping it tells a caught-up follower to stand at once (Raft's
    TimeoutNow). That follower is elected in the next term without asking for a pre-vote and without
    waiting out an election timeout; without the hand-over the others wait for their timeouts, and the
    winner's log says it won a pre-vote for that term."""
    leader = cluster.leader()
    term = int(leader.quorum().term)
    cluster.kill(leader, signal.SIGTERM)  # and waits for it to exit
    new = wait_for(lambda: next((m for m in cluster.masters if m is not leader and m.alive
                                 and m.quorum(timeout=0.5).leader == m.raft), None), 60, what="a new leader")
    assert int(new.quorum().term) == term + 1
    assert f"pre-vote for term {term + 1} won" not in new.log_path.read_text(errors="replace")
    assert f"handed leadership of term {term} over to {new.raft}" in leader.log_path.read_text(errors="replace")
