"""Issue 14, item 1: the Raft port without the password cannot take the leader down.

Three real `tessera master` processes with a Raft password on 127.0.0.1. An attacker who can reach the
leader's Raft port but does not know the password floods it for a bounded time, two ways at once:

* frames declaring a length of 2^31-1 followed by a stream of zeros, reconnecting whenever the master
  closes the connection (pysyncobj 0.3.17 buffers the whole declared length, copying the buffer on every
  read, before it decrypts anything: its Raft thread never came back to send heartbeats);
* many connections opened and left idle (pysyncobj keeps each for ``connectionTimeout``, an hour here,
  with no cap on their number).

Meanwhile the test keeps writing through the leader. Afterwards every master must still name the same
leader in the same term (no election happened), and every write must have committed.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import grpc
import pytest

from tessera.v1 import operator_pb2, operator_pb2_grpc
from tests.support.cluster import LocalCluster, MasterProc, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

FLOOD_SECONDS = 8.0
IDLE_CONNECTIONS = 300
WRITE_PERIOD = 0.2


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _huge_frames(address: tuple[str, int], stop: threading.Event, sent: list[int]) -> None:
    """Declare a 2^31-1 byte frame, then send zeros until the master closes the connection; again."""
    zeros = bytes(64 * 1024)
    while not stop.is_set():
        try:
            with socket.create_connection(address, timeout=2) as s:
                s.sendall(struct.pack("i", 2**31 - 1))
                while not stop.is_set():
                    s.sendall(zeros)
                    sent[0] += len(zeros)
        except OSError:
            time.sleep(0.01)  # closed by the master (or refused): reconnect


def _idle_connections(address: tuple[str, int], stop: threading.Event, held: list[socket.socket]) -> None:
    """Open IDLE_CONNECTIONS connections over the first half of the flood and never send a byte."""
    pause = FLOOD_SECONDS / 2 / IDLE_CONNECTIONS
    while not stop.is_set() and len(held) < IDLE_CONNECTIONS:
        try:
            held.append(socket.create_connection(address, timeout=2))
        except OSError:
            pass
        time.sleep(pause)


def _views(cluster: LocalCluster) -> dict[str, tuple[str, int]]:
    """Each master's own view: (leader's Raft address, term)."""
    out = {}
    for m in cluster.masters:
        q = m.quorum(timeout=3.0)
        out[m.name] = (q.leader, q.term)
    return out


def _write(leader: MasterProc, k: int) -> int:
    with grpc.insecure_channel(leader.grpc) as channel:
        resp = operator_pb2_grpc.OperatorStub(channel).SetWeight(
            operator_pb2.SetWeightRequest(role="flood", weight=1.0 + k, request_id=f"flood-{k}"), timeout=5.0)
    return int(resp.index)


def test_a_flood_of_the_leaders_raft_port_without_the_password_changes_no_leader_and_stops_no_write(
        tmp_path: Path) -> None:
    with LocalCluster(tmp_path, n=3, password="flood-test-raft-password-" + "x" * 16) as cluster:
        cluster.start_all()
        cluster.leader(timeout=30)

        def agreed() -> tuple[str, int] | None:
            views = set(_views(cluster).values())
            return views.pop() if len(views) == 1 and next(iter(views))[0] else None

        # every master follows one leader (the last one may still be connecting right after the start)
        leader_raft, _ = wait_for(agreed, 30, what="all masters following one leader")
        leader = next(m for m in cluster.masters if m.raft == leader_raft)
        wait_for(lambda: _write(leader, 0) > 0, 20, what="a first write")
        before = _views(cluster)
        assert len(set(before.values())) == 1, before

        stop = threading.Event()
        sent = [0]
        held: list[socket.socket] = []
        target = _split(leader.raft)
        attackers = [threading.Thread(target=_huge_frames, args=(target, stop, sent), daemon=True) for _ in range(2)]
        attackers.append(threading.Thread(target=_idle_connections, args=(target, stop, held), daemon=True))
        for t in attackers:
            t.start()
        failures: list[str] = []
        committed = 0
        try:
            deadline = time.monotonic() + FLOOD_SECONDS
            k = 1
            while time.monotonic() < deadline:
                try:
                    _write(leader, k)
                    committed += 1
                except Exception as exc:  # noqa: BLE001 - every failed write is reported
                    failures.append(f"write {k}: {exc}")
                k += 1
                time.sleep(WRITE_PERIOD)
            after = _views(cluster)
        finally:
            stop.set()
            for t in attackers:
                t.join(10)
            for s in held:
                s.close()

        assert sent[0] > 0, "the flood never reached the Raft port"
        assert len(held) > 0, "no idle connection was opened"
        assert not failures, f"{len(failures)} writes failed during the flood, first: {failures[:3]}"
        assert committed >= 10
        assert after == before, f"leadership moved during the flood: before {before}, after {after}"
        assert all(m.alive for m in cluster.masters)
        _write(leader, 10_000)  # and after it
