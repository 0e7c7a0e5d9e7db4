"""The Raft port guard (issue 14, item 1): frame lengths checked as soon as they are read, unidentified
connections closed after a short deadline and capped in number. The decisions are pure functions
(`largest_legal_frame`, `frame_is_legal`, `declared_frame_length`, `pending_to_close`); the last tests run
a real encrypted RaftReplicator against a misbehaving client on 127.0.0.1."""

from __future__ import annotations

import os
import random
import select
import socket
import string
import struct
import time
import zlib
from pathlib import Path

import pytest
from pysyncobj import pickle as pysyncobj_pickle
from pysyncobj.encryptor import getEncryptor

from tessera.control_plane.replication import GroupCommitConfig, RaftReplicator, ReplicationConfig
from tessera.control_plane.replication.raft_port_guard import (
    HANDSHAKE_FRAME_BYTES,
    PortGuardStats,
    declared_frame_length,
    frame_is_legal,
    handshake_done,
    largest_legal_frame,
    pending_to_close,
)

from .harness import Cluster, ListStateMachine, free_ports, raft_config, wait_until

pytestmark = pytest.mark.timeout(60)

BATCH = 2**16  # pysyncobj's appendEntriesBatchSizeBytes and logCompactionBatchSize (not overridden)
MAX_ENTRY = GroupCommitConfig().max_entry_bytes


def _frame_length(message: object, password: str) -> int:
    """The length pysyncobj's TcpConnection.send declares for `message`, encrypted."""
    data = zlib.compress(pysyncobj_pickle.dumps((os.urandom(32), message)), 3)
    return len(getEncryptor(password).encrypt_at_time(data, int(time.monotonic())))


def _worst_bytes(n: int) -> bytes:
    """Incompressible bytes that pickle protocol 2 (pysyncobj's) stores at twice their size."""
    return bytes(b | 0x80 for b in os.urandom(n))


def test_the_largest_append_entries_a_master_sends_fits_under_the_frame_limit() -> None:
    # pysyncobj packs log entries until their sizes reach the batch size, so the largest message is
    # entries just under it followed by the largest one: a pickled call carrying one entry of the
    # largest size the group committer accepts.
    small: list[tuple[bytes, int, int]] = []
    while sum(len(e[0]) for e in small) < BATCH - 200:
        small.append((pysyncobj_pickle.dumps([_worst_bytes(40)]), len(small), 7))
    biggest = (pysyncobj_pickle.dumps((0, ([_worst_bytes(MAX_ENTRY)],), {})), len(small), 7)
    message = {"type": "append_entries", "term": 7, "commit_index": 10**9, "entries": [*small, biggest],
               "prevLogIdx": 10**9, "prevLogTerm": 7}
    limit = largest_legal_frame(BATCH, BATCH, MAX_ENTRY)
    assert _frame_length(message, "pw") <= limit
    chunk = {"type": "append_entries", "term": 7, "commit_index": 1,
             "serialized": (_worst_bytes(BATCH), False, False)}
    assert _frame_length(chunk, "pw") <= limit
    assert limit < 8 * MAX_ENTRY  # a bound, not a formality
    assert not frame_is_legal(2**31 - 1, limit)


def test_handshake_messages_fit_under_the_handshake_limit() -> None:
    for message in (os.urandom(32), "some-long-master-host-name.example.internal:65535", "readonly",
                    ["status"], ["add", "some-long-master-host-name.example.internal:65535"]):
        assert _frame_length(message, "pw") <= HANDSHAKE_FRAME_BYTES


def test_a_frame_length_is_legal_only_when_positive_and_within_the_limit() -> None:
    assert frame_is_legal(1, 100) and frame_is_legal(100, 100)
    assert not frame_is_legal(101, 100)
    assert not frame_is_legal(0, 100) and not frame_is_legal(-1, 100)  # pysyncobj reads the length signed


def test_the_declared_length_is_known_once_the_four_byte_header_is_there() -> None:
    header = struct.pack("i", 2**31 - 1)
    assert declared_frame_length(b"") is None and declared_frame_length(header[:3]) is None
    assert declared_frame_length(header) == 2**31 - 1
    assert declared_frame_length(bytearray(header + b"\0" * 10)) == 2**31 - 1
    assert declared_frame_length(struct.pack("i", -5)) == -5


def test_pending_connections_past_the_deadline_are_closed() -> None:
    pending = {"old": 0.0, "fresh": 9.0}
    assert pending_to_close(pending, now=10.0, deadline_s=3.0, cap=10) == ["old"]
    assert pending_to_close(pending, now=10.0, deadline_s=30.0, cap=10) == []


def test_beyond_the_cap_the_oldest_pending_connections_are_closed() -> None:
    pending = {f"c{i}": float(i) for i in range(6)}
    assert pending_to_close(pending, now=6.0, deadline_s=100.0, cap=4) == ["c0", "c1"]
    assert pending_to_close(pending, now=6.0, deadline_s=100.0, cap=6) == []
    # expired ones first, and they count towards nothing
    assert pending_to_close(pending, now=103.5, deadline_s=100.0, cap=2) == ["c0", "c1", "c2", "c3"]


def test_the_log_summary_reports_closures_since_the_previous_one_and_totals_keep_counting() -> None:
    stats = PortGuardStats()
    assert stats.take() == {}
    stats.oversized += 3
    stats.expired += 1
    assert stats.take() == {"frame above the legal length": 3, "no handshake in time": 1}
    stats.oversized += 1
    assert stats.take() == {"frame above the legal length": 1}
    assert stats.take() == {} and stats.oversized == 4


def test_the_deadline_and_cap_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ReplicationConfig("127.0.0.1:7000", (), tmp_path, handshake_timeout_s=0)
    with pytest.raises(ValueError):
        ReplicationConfig("127.0.0.1:7000", (), tmp_path, max_pending_connections=0)


def _closed_by_peer(s: socket.socket, timeout: float) -> bool:
    """True when the other end closed `s` within `timeout` (reads drain whatever it sent first)."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_huge_declared_length_is_refused_before_anything_more_is_read(tmp_path: Path) -> None:
    c = Cluster("raft1", tmp_path, password="a-long-random-raft-password")
    try:
        leader = c.start()
        host, port = leader.self_address.rsplit(":", 1)
        with socket.create_connection((host, int(port))) as s:
            s.sendall(struct.pack("i", 2**31 - 1) + bytes(1024))
            assert _closed_by_peer(s, 5.0)
        transport = leader._syncobj._SyncObj__transport  # type: ignore[attr-defined]
        assert transport.guard_stats.oversized >= 1
        leader.submit(b"after").result(timeout=10)
    finally:
        c.stop()


def test_idle_unidentified_connections_are_capped_and_closed_after_the_deadline(tmp_path: Path) -> None:
    c = Cluster("raft1", tmp_path, password="a-long-random-raft-password", handshake_timeout_s=1.0,
                max_pending_connections=4)
    held: list[socket.socket] = []
    try:
        leader = c.start()
        host, port = leader.self_address.rsplit(":", 1)
        for _ in range(10):
            held.append(socket.create_connection((host, int(port))))
            time.sleep(0.05)  # accepted one by one, in order
        transport = leader._syncobj._SyncObj__transport  # type: ignore[attr-defined]
        wait_until(lambda: transport.guard_stats.over_cap >= 6, 5, "the six oldest closed over the cap")
        assert [_closed_by_peer(s, 0.5) for s in held[:6]] == [True] * 6
        assert all(_closed_by_peer(s, 5.0) for s in held[6:])  # the deadline
        assert transport.guard_stats.expired >= 1
        wait_until(lambda: not transport._unknownConnections, 5, "no unidentified connection left")
        leader.submit(b"after").result(timeout=10)
    finally:
        for s in held:
            s.close()
        c.stop()


def test_a_follower_catches_up_over_a_frame_of_the_largest_entry(tmp_path: Path) -> None:
    # A follower that was down gets the entries it missed in one append_entries when there is more than
    # one: here a small entry and one of nearly the largest size, in a frame of more than a megabyte.
    # (ASCII: pysyncobj 0.3.17 splits a lone entry of 64 KiB or more into chunks and mis-ends the
    # transmission when pickling made it longer than its raw size, which non-ASCII bytes do.)
    password = "a-long-random-raft-password"
    c = Cluster("raft3", tmp_path, password=password)
    late: RaftReplicator | None = None
    try:
        leader = c.start()
        down = next(i for i in range(3) if c.nodes[i] is not leader)
        c.stop_node(down)
        big = "".join(random.choices(string.ascii_letters, k=MAX_ENTRY - 1024)).encode()
        leader.submit(b"small").result(timeout=10)
        leader.submit(big).result(timeout=20)
        sm = ListStateMachine()
        late = RaftReplicator(raft_config(c.addresses[down], c.addresses, c.data_dirs[down], password=password), sm)
        late.start()
        wait_until(lambda: sm.copy() == [b"small", big], 20, "the late follower caught up")
    finally:
        if late is not None:
            late.stop()
        c.stop()


def test_a_connection_is_up_only_once_the_peer_session_key_arrived_when_encrypted() -> None:
    assert handshake_done(encrypted=False, peer_session_key=None)
    assert not handshake_done(encrypted=True, peer_session_key=None)
    assert handshake_done(encrypted=True, peer_session_key=os.urandom(32))


def _read_frame(s: socket.socket, timeout: float) -> bytes | None:
    """One length-prefixed frame from `s`, or None if none arrived in `timeout`."""
    s.settimeout(timeout)
    head = b""
    try:
        while len(head) < 4:
            got = s.recv(4 - len(head))
            if not got:
                return None
            head += got
        (length,) = struct.unpack("i", head)
        body = b""
        while len(body) < length:
            got = s.recv(length - len(body))
            if not got:
                return None
            body += got
        return body
    except TimeoutError:
        return None


def test_masters_dialling_a_slow_peer_send_only_their_key_until_it_answers(tmp_path: Path) -> None:
    # pysyncobj dials from the larger Raft address; its TCP connection counts as up before the key
    # exchange ends. A message sent in that window (a pre-vote or vote request: both go to every peer,
    # connected or not; pysyncobj's append_entries skip peers whose exchange is not done) went out
    # without the session key and the peer closed the connection: a restarted master whose peers were
    # slow to answer the exchange never completed one (the hour-long soak: a minute without a leader).
    # Here two real masters elect a leader (pre-votes and votes to every peer) while the third peer, the
    # test, listens at the smallest address, reads and never answers: each must send its key alone.
    ports = sorted(free_ports(3), key=str)
    silent, *addresses = (f"127.0.0.1:{p}" for p in ports)  # both masters dial the silent peer
    password = "a-long-random-raft-password"
    everyone = [silent, *addresses]
    nodes: list[RaftReplicator] = []
    accepted: list[socket.socket] = []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", ports[0]))
        srv.listen(8)
        srv.settimeout(10)
        try:
            for i, address in enumerate(addresses):
                node = RaftReplicator(raft_config(address, everyone, tmp_path / f"n{i}", password=password),
                                      ListStateMachine())
                node.start()
                nodes.append(node)
            while len(accepted) < 2:
                accepted.append(srv.accept()[0])
            for s in accepted:
                assert _read_frame(s, 5.0) is not None, "a master sent no key"
            leader = wait_until(lambda: next((n for n in nodes if n.is_leader()), None), 10, "a leader of two")
            leader.submit(b"one").result(timeout=10)
            ready, _, _ = select.select(accepted, [], [], 2.0)
            assert not ready, "a master sent a frame to the silent peer before its key exchange ended"
        finally:
            for s in accepted:
                s.close()
            for node in nodes:
                node.stop()
