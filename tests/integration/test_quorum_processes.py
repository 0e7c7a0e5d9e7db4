"""Real master processes on 127.0.0.1: failover, full restart, 5 masters, growing 3 -> 5 while writing.

Writes go through the Operator API (role weights: a real policy event). After faults, every write a
client saw acknowledged must be in every master's event log, and all logs must hold the same events at
the same indexes.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import grpc
import pytest

from tessera.v1 import operator_pb2
from tests.support.cluster import LocalCluster, MasterProc, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def set_weight(cluster: LocalCluster, role: str, weight: float, request_id: str) -> int:
    client = cluster.client()
    try:
        resp = client.call(lambda s: s.SetWeight, operator_pb2.SetWeightRequest(
            role=role, weight=weight, request_id=request_id))
        return int(resp.index)
    finally:
        client.close()


def event_rows(m: MasterProc) -> list[tuple[object, ...]]:
    return [(e.index, e.raft_index, e.position, e.type, e.time, e.term, e.request_id, e.payload_json)
            for e in m.list_events()]


def assert_same_history(masters: list[MasterProc], acked: dict[str, int]) -> None:
    """Every master holds identical events at identical indexes, including every acknowledged write."""
    target = max(acked.values(), default=0)
    for m in masters:
        wait_for(lambda m=m: m.quorum().members and max(
            (x.event_index for x in m.quorum().members if x.is_self), default=0) >= target,
            30, what=f"{m.name} to apply index {target}")
    histories = {}
    for m in masters:
        # the event log is written asynchronously: wait until it holds what was applied
        wait_for(lambda m=m: (event_rows(m) or [(0,)])[-1][0] >= target, 30, what=f"{m.name} events.db")
        histories[m.name] = event_rows(m)
    shortest = min(len(h) for h in histories.values())
    reference = next(iter(histories.values()))[:shortest]
    for name, h in histories.items():
        assert h[:shortest] == reference, f"{name}'s event log differs from the others"
        indexes = [row[0] for row in h]
        assert indexes == list(range(1, len(h) + 1)), f"{name}'s event log has gaps"
    by_request = {row[6]: row for row in reference}
    for request_id, index in acked.items():
        assert request_id in by_request, f"acknowledged write {request_id} is missing"
        assert by_request[request_id][0] == index


def write_many(cluster: LocalCluster, prefix: str, n: int, acked: dict[str, int]) -> None:
    for i in range(n):
        rid = f"{prefix}-{i}"
        acked[rid] = set_weight(cluster, f"role-{i % 7}", 1.0 + i, rid)


def test_three_masters_survive_leader_kill_and_full_restart(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, n=3) as cluster:
        cluster.start_all()
        leader = cluster.leader()
        acked: dict[str, int] = {}
        write_many(cluster, "before", 20, acked)

        cluster.kill(leader, signal.SIGKILL)
        new_leader = cluster.leader()
        assert new_leader is not leader
        write_many(cluster, "after", 20, acked)
        survivors = [m for m in cluster.masters if m.alive]
        assert_same_history(survivors, acked)

        # the killed master comes back and catches up from the others
        cluster.start(leader)
        assert_same_history(cluster.masters, acked)

        # stop everything (kill -9) and start again: the state and the history are back
        before = cluster.client().call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True))
        cluster.stop_all(signal.SIGKILL)
        cluster.start_all()
        cluster.leader(timeout=30)
        after = cluster.client().call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True))
        assert {(r.role, r.weight) for r in after.roles} == {(r.role, r.weight) for r in before.roles}
        assert after.index > before.index  # the new leader's barrier is an event too
        write_many(cluster, "restarted", 5, acked)
        assert_same_history(cluster.masters, acked)


def test_five_masters_survive_leader_kill(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, n=5) as cluster:
        cluster.start_all()
        leader = cluster.leader(timeout=30)
        acked: dict[str, int] = {}
        write_many(cluster, "five", 10, acked)
        cluster.kill(leader, signal.SIGKILL)
        cluster.leader(timeout=30)
        write_many(cluster, "five-after", 10, acked)
        assert_same_history([m for m in cluster.masters if m.alive], acked)


def test_grow_three_to_five_while_writing(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, n=3) as cluster:
        cluster.start_all()
        cluster.leader()
        acked: dict[str, int] = {}
        errors: list[str] = []
        stop = threading.Event()

        def writer() -> None:
            i = 0
            while not stop.is_set():
                rid = f"grow-{i}"
                try:
                    acked[rid] = set_weight(cluster, f"grow-{i % 5}", 1.0 + i % 9, rid)
                except Exception as exc:  # noqa: BLE001 - recorded and asserted below
                    errors.append(f"{rid}: {exc}")
                i += 1

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        try:
            for _ in range(2):
                new = cluster.add_master()
                client = cluster.client()
                client.call(lambda s, new=new: s.AddMaster, operator_pb2.AddMasterRequest(raft_address=new.raft),
                            timeout=30)
                cluster.start(new)
                wait_for(lambda new=new: new.alive and new.quorum().applied_index > 0, 30,
                         what=f"{new.name} to catch up")
        finally:
            stop.set()
            t.join(timeout=30)
        assert not errors, errors[:5]
        assert len(acked) > 0
        q = cluster.client().call(lambda s: s.GetQuorum, operator_pb2.GetQuorumRequest())
        assert len(q.members) == 5
        wait_for(lambda: all(m.reachable for m in cluster.client().call(
            lambda s: s.GetQuorum, operator_pb2.GetQuorumRequest()).members), 30, what="all 5 members reachable")
        assert_same_history(cluster.masters, acked)


def test_follower_redirects_writes_to_the_leader(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, n=3) as cluster:
        cluster.start_all()

        def settled() -> tuple[MasterProc, MasterProc] | None:
            # re-read the leader every time: under load an election may move it meanwhile
            leader = cluster.leader()
            follower = next(m for m in cluster.masters if m is not leader)
            return (leader, follower) if follower.quorum().leader_grpc == leader.grpc else None

        leader, follower = wait_for(settled, 30, what="a follower that knows the leader")
        with grpc.insecure_channel(follower.grpc) as ch:
            from tessera.v1 import operator_pb2_grpc

            with pytest.raises(grpc.RpcError) as info:
                operator_pb2_grpc.OperatorStub(ch).SetWeight(
                    operator_pb2.SetWeightRequest(role="web", weight=2.0), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ("tessera-leader", leader.grpc) in tuple(info.value.trailing_metadata())
