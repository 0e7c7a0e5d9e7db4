"""Masters as separate hosts (tests/faults/netns.py): three masters each in its own network namespace
with its own address on a bridge the test creates; faults on the real network between them.

Needs root, iproute2, iptables, the blkio cgroup and nfnetlink queue: it FAILS naming what is missing
(.ci/run installs the packages). Every test checks that nothing named `tsr-*` is left afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tessera.v1 import operator_pb2
from tests.faults import netns
from tests.faults.netns import BLACKHOLE, RESET, NetnsHosts
from tests.faults.nfq_delay import Shape
from tests.support.cluster import LocalCluster, MasterProc, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _serving(cluster: LocalCluster, exclude: MasterProc | None = None, newer_than: int = -1) -> MasterProc | None:
    for m in cluster.masters:
        if m is exclude or not m.alive:
            continue
        try:
            q = m.quorum(timeout=0.5)
        except Exception:  # noqa: BLE001 - electing
            continue
        if q.leader == m.raft and q.leader_grpc == m.grpc and q.term > newer_than:
            return m
    return None


def _all_follow(cluster: LocalCluster, leader: MasterProc) -> bool:
    return all(m.quorum(timeout=0.5).leader == leader.raft for m in cluster.masters)


def _write(cluster: LocalCluster, n: int) -> int:
    client = cluster.client(timeout=30.0)
    try:
        index = 0
        for i in range(n):
            resp = client.call(lambda s: s.SetWeight, operator_pb2.SetWeightRequest(
                role=f"r{i % 3}", weight=1.0 + i, request_id=str(uuid.uuid4())))
            index = max(index, int(resp.index))
        return index
    finally:
        client.close()


def _new_leader_after(cluster: LocalCluster, old: MasterProc) -> MasterProc:
    term = int(old.quorum(timeout=2.0).term)
    found = wait_for(lambda: _serving(cluster, exclude=old, newer_than=term), 30, interval=0.1,
                     what="a new leader on another host")
    assert found is not None and found is not old
    return found


@pytest.mark.timeout(280)
def test_three_masters_on_their_own_hosts_survive_partitions_delay_and_loss(tmp_path: Path) -> None:
    with NetnsHosts(work_dir=tmp_path) as hosts, LocalCluster(tmp_path / "cluster", n=3) as cluster:
        hosts.place(cluster, slow_disk=("m3",), iops=100)
        assert {m.raft.split(":")[0] for m in cluster.masters} == {hosts.ip(n) for n in ("m1", "m2", "m3")}
        cluster.start_all()
        leader = cluster.leader(timeout=60)
        assert _write(cluster, 5) > 0

        # the Raft and gRPC ports listen on the host's own address inside its namespace
        ss = subprocess.run(["ip", "netns", "exec", "tsr-m1", "ss", "-ltnH"], capture_output=True, text=True,
                            timeout=10).stdout
        local = {line.split()[3].replace("[::ffff:", "").replace("]", "") for line in ss.splitlines()}
        assert {f"{hosts.ip('m1')}:{netns.RAFT_PORT}", f"{hosts.ip('m1')}:{netns.GRPC_PORT}"} <= local, ss

        # a symmetric partition of the leader: a new leader elsewhere; healed, the old one follows it
        others = [m.name for m in cluster.masters]
        hosts.isolate(leader.name, others, BLACKHOLE)
        new = _new_leader_after(cluster, leader)
        assert _write(cluster, 3) > 0  # the majority side commits
        hosts.heal()
        wait_for(lambda: _all_follow(cluster, new), 30, interval=0.1, what="every master following the new leader")

        # one way: what the leader sends is lost (it still hears the others): the others elect anew
        hosts.isolate(new.name, others, RESET, one_way=True)
        newer = _new_leader_after(cluster, new)
        hosts.heal()
        wait_for(lambda: _all_follow(cluster, newer), 30, interval=0.1, what="every master following after heal")

        # 20 ms +- 10 ms and 1 % loss on every master's egress: writes still commit
        for i, m in enumerate(cluster.masters):
            hosts.shape(m.name, Shape(delay=0.020, jitter=0.010, loss=0.01), seed=i)
        before = int(newer.quorum(timeout=2.0).commit_index)
        assert _write(cluster, 30) > before
        wait_for(lambda: hosts.shaped()["packets"] > 100, 10, what="the delay processes counting packets")
        # a leader kill under delay and loss: a new leader still commits
        current = cluster.leader(timeout=30)
        cluster.kill(current)
        assert _write(cluster, 3) > before
        cluster.start(current)
        wait_for(lambda: _serving(cluster) is not None and all(m.quorum(timeout=1.0).leader for m in cluster.masters),
                 60, interval=0.2, what="the restarted master back in the quorum")

        # the slow disk: m3's writes went through its throttled cgroup
        serviced = Path("/sys/fs/cgroup/blkio/tsr-m3/blkio.throttle.io_serviced").read_text()
        writes = sum(int(line.split()[2]) for line in serviced.splitlines()
                     if len(line.split()) == 3 and line.split()[1] == "Write")
        assert writes > 0, serviced
        cluster.stop_all(signal.SIGKILL)
    assert netns.leftovers() == []


def test_leftovers_of_a_killed_run_are_removed_and_a_terminated_run_cleans_itself(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from pathlib import Path
        from tests.faults.netns import NetnsHosts
        from tests.faults.nfq_delay import Shape
        hosts = NetnsHosts(work_dir=Path({str(tmp_path)!r}))
        for name in ("m1", "m2"):
            hosts.add(name)
        hosts.cut("m1", "m2")
        hosts.shape("m1", Shape(delay=0.01))
        hosts.slow_disk("m2", iops=10, size_mib=64)
        print("ready", flush=True)
        if sys.argv[1] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)
    """)

    def start(how: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", script, how], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    killed = start("kill")
    killed.wait(timeout=30)
    left = netns.leftovers()
    assert {"tsr-m1", "tsr-m2", "tsr-br"} <= set(left), left  # a SIGKILL leaves them...
    with NetnsHosts(work_dir=tmp_path):  # ...the next run removes them first
        assert netns.leftovers() == ["tsr-br"]
    assert netns.leftovers() == []

    terminated = start("term")
    terminated.send_signal(signal.SIGTERM)
    assert terminated.wait(timeout=30) == 128 + signal.SIGTERM
    assert netns.leftovers() == []
    assert not [p for p in Path("/tmp").glob("tsr-disk-*")]
    assert os.path.exists(netns.LOCK_PATH)  # the lock file stays (empty, unlocked)
