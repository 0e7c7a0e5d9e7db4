"""The Raft port guarded against peers that do not know the password (issue 14, item 1).

``GuardedTCPTransport`` is the transport every ``SyncObj`` of ``RaftReplicator`` is built with
(``guarded_transport``): a frame longer than a master ever sends closes the connection as soon as its
length is read, reads are bounded and linear (``bound_reads``), and connections that have not identified
themselves as masters are closed after ``handshake_timeout_s`` and capped in number (``pending_to_close``).
The port must still be reachable by masters only: without a password it speaks pickle.

The decisions are pure functions (``largest_legal_frame``, ``frame_is_legal``, ``declared_frame_length``,
``pending_to_close``); the rest replaces private methods of pysyncobj's ``TcpConnection`` and extends its
``TCPTransport``, on the tick thread only. ``pysyncobj_release`` pins the release they were written for.
The simulation does not install it: its network carries objects, never framed bytes from a stranger.
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

from pysyncobj import SyncObjConf
from pysyncobj import tcp_connection as _tcp_connection
from pysyncobj.transport import TCPTransport

from .config import ReplicationConfig

log = logging.getLogger(__name__)

# The largest frame a connection that has not yet identified itself as a master may send. Before that,
# the only legal messages are tiny: the 32-byte random key of the key exchange, the sender's Raft address
# (or "readonly"), a utility command such as ["status"]; each pickled, compressed and encrypted.
HANDSHAKE_FRAME_BYTES = 8 * 1024

_FRAME_HEADER = struct.Struct("i")  # pysyncobj's: a native signed 32-bit length before every frame


def largest_legal_frame(append_entries_batch_bytes: int, snapshot_chunk_bytes: int, max_entry_bytes: int) -> int:
    """The largest frame a master of this configuration ever sends on the Raft port, with margin.

    An ``append_entries`` carries Raft log entries until their sizes add up to the batch size or more, so
    it ends with at most one entry of any size: the entries before it (under the batch size), then the
    largest, which holds a group-commit batch or one entry alone (``max_entry_bytes``; larger ones are
    refused before they are proposed). A snapshot travels in chunks of ``snapshot_chunk_bytes``.
    pysyncobj pickles with protocol 2, which stores ``bytes`` as latin-1 text encoded in UTF-8: up to
    twice their size, once in the log entry and once more in the message. The message is then compressed
    (zlib may grow incompressible data by 0.1 % and a few bytes) and encrypted (Fernet: a 57-byte
    envelope around AES-CBC, then base64, 4/3 of it)."""
    log_entry = 2 * max_entry_bytes + 4096
    payload = 2 * (2 * append_entries_batch_bytes + max(log_entry, snapshot_chunk_bytes)) + 64 * 1024
    compressed = payload + payload // 1000 + 64
    fernet = 4 * -(-(57 + (compressed // 16 + 1) * 16) // 3)
    return fernet + 1024


def frame_is_legal(declared: int, limit: int) -> bool:
    """A frame's declared length: positive (pysyncobj reads it signed) and at most `limit`."""
    return 0 < declared <= limit


def declared_frame_length(buffer: bytes | bytearray) -> int | None:
    """The length the frame at the start of `buffer` declares, once its 4-byte header is there."""
    if len(buffer) < _FRAME_HEADER.size:
        return None
    return int(_FRAME_HEADER.unpack_from(buffer, 0)[0])


def handshake_done(encrypted: bool, peer_session_key: bytes | None) -> bool:
    """Whether a connection may carry Raft messages: unencrypted ones at once, encrypted ones once the
    peer's session key has arrived (every frame after the first must carry it)."""
    return not encrypted or peer_session_key is not None


def pending_to_close(pending: dict[Any, float], now: float, deadline_s: float, cap: int) -> list[Any]:
    """Which unidentified connections to close: `pending` maps each to the time it was accepted.

    Those older than `deadline_s`, then the oldest of the rest beyond `cap` (the newest are kept: a master
    reconnecting completes its handshake within a round trip, so an attacker who wants to push it out
    must keep opening `cap` connections faster than that, rather than holding `cap` idle ones)."""
    expired = [conn for conn, since in pending.items() if now - since > deadline_s]
    alive = sorted((since, n, conn) for n, (conn, since) in enumerate(pending.items()) if now - since <= deadline_s)
    excess = len(alive) - cap
    return expired + [conn for _, _, conn in alive[:max(excess, 0)]]


class PortGuardStats:
    """Connections the Raft port guard closed, by reason: running totals (written on the tick thread)."""

    _REASONS = ("frame above the legal length", "frame that did not decrypt", "no handshake in time",
                "over the pending cap")

    def __init__(self) -> None:
        self.oversized = self.undecodable = self.expired = self.over_cap = 0
        self._reported = (0, 0, 0, 0)

    def take(self) -> dict[str, int]:
        """The closures since the previous call, by reason (reasons with none left out)."""
        totals = (self.oversized, self.undecodable, self.expired, self.over_cap)
        delta = {why: now - before for why, now, before in zip(self._REASONS, totals, self._reported, strict=True)}
        self._reported = totals
        return {why: n for why, n in delta.items() if n}


def bound_reads(conn: Any, limit: Callable[[], int], stats: PortGuardStats) -> None:
    """Replace a pysyncobj ``TcpConnection``'s read path by one that never buffers more than a legal frame.

    pysyncobj 0.3.17 reads while the socket has data, appending to an immutable ``bytes`` (each read copies
    the whole buffer: quadratic), and only then looks at the frame's declared length, so a peer that
    declares 2^31-1 bytes and streams zeros holds the Raft thread, which also sends the heartbeats, until
    leadership is lost. Here the buffer is a ``bytearray``, one event reads at most one frame's worth,
    and a frame whose declared length is above ``limit()`` (or not positive) closes the connection as soon
    as its 4-byte header is read, before anything is decrypted."""
    recv_size = int(conn._TcpConnection__recvBufferSize)

    def buffer() -> bytearray:
        buf = conn._TcpConnection__readBuffer
        if not isinstance(buf, bytearray):  # connect() and disconnect() reset it to bytes()
            buf = bytearray(buf)
            conn._TcpConnection__readBuffer = buf
        return buf

    def refused(buf: bytearray) -> bool:
        declared = declared_frame_length(buf)
        if declared is None or frame_is_legal(declared, limit()):
            return False
        stats.oversized += 1
        conn.disconnect()
        return True

    def try_read() -> None:  # replaces TcpConnection.__tryReadBuffer
        budget = limit() + _FRAME_HEADER.size
        taken = 0
        while taken < budget:
            sock = conn._TcpConnection__socket
            if sock is None:
                return
            try:
                incoming = sock.recv(recv_size)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    conn.disconnect()
                break
            if not incoming or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                conn.disconnect()
                return
            buf = buffer()
            buf += incoming
            taken += len(incoming)
            if refused(buf):
                return
        conn._TcpConnection__lastReadTime = _tcp_connection.monotonicTime()

    def parse() -> Any:  # replaces TcpConnection.__processParseMessage: same steps, checked length
        buf = buffer()
        declared = declared_frame_length(buf)
        if declared is None or refused(buf) or len(buf) - _FRAME_HEADER.size < declared:
            return None
        data = bytes(buf[_FRAME_HEADER.size:_FRAME_HEADER.size + declared])
        try:
            if conn.encryptor:
                timestamp = conn.encryptor.extract_timestamp(data)
                if timestamp < conn.recvLastTimestamp:
                    raise ValueError("replayed frame")
                conn.recvLastTimestamp = timestamp
                data = conn.encryptor.decrypt(data)
            message = _tcp_connection.pickle.loads(zlib.decompress(data))
            if conn.recvRandKey:
                rand_key, message = message
                if rand_key != conn.recvRandKey:
                    raise ValueError("wrong session key")
        except Exception:  # noqa: BLE001 - pysyncobj's own answer to a bad frame: close the connection
            stats.undecodable += 1
            conn.disconnect()
            return None
        del buf[:_FRAME_HEADER.size + declared]
        return message

    conn._TcpConnection__tryReadBuffer = try_read
    conn._TcpConnection__processParseMessage = parse


class GuardedTCPTransport(TCPTransport):  # type: ignore[misc]
    """pysyncobj's TCP transport with the Raft port guarded (see `bound_reads`, `pending_to_close`).

    Every connection reads through `bound_reads`: frames up to `largest_legal_frame` once the peer has
    identified itself as a master, up to ``HANDSHAKE_FRAME_BYTES`` before. A connection accepted on the
    port that has not identified itself (key exchange, then its Raft address, encrypted with the password)
    within ``handshake_timeout_s`` is closed, and at most ``max_pending`` such connections are kept: pysyncobj
    alone keeps each for ``connectionTimeout`` (an hour here), with no cap on their number.

    Passed to ``SyncObj`` as its ``transportClass`` (with ``functools.partial`` for the limits), so the
    guard is in place before the port is bound. Runs on the tick thread only, as the transport does."""

    _SUMMARY_EVERY_S = 10.0

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any, *, max_frame_bytes: int,
                 handshake_timeout_s: float, max_pending: int) -> None:
        self._max_frame_bytes = max_frame_bytes
        self._handshake_timeout_s = handshake_timeout_s
        self._max_pending = max_pending
        self._pending_since: dict[Any, float] = {}
        self.guard_stats = PortGuardStats()
        self._last_summary = float("-inf")
        super().__init__(syncObj, selfNode, otherNodes)

    def addNode(self, node: Any) -> None:
        super().addNode(node)
        conn = self._connections.get(node)
        if conn is not None:  # an outgoing connection, to a configured peer
            bound_reads(conn, lambda: self._max_frame_bytes, self.guard_stats)

    def _onNewIncomingConnection(self, conn: Any) -> None:
        bound_reads(conn, lambda: HANDSHAKE_FRAME_BYTES if conn in self._unknownConnections else self._max_frame_bytes,
                    self.guard_stats)
        super()._onNewIncomingConnection(conn)
        self._pending_since[conn] = time.monotonic()
        self._close_pending(time.monotonic())

    def send(self, node: Any, message: Any) -> bool:
        """pysyncobj's ``send``, except that an encrypted connection sends nothing before its key exchange.

        pysyncobj counts an outgoing connection as connected once TCP is, and its ``send`` goes out then,
        before the peer's session key has come back: unwrapped, so the peer, which expects every frame
        after the first to carry its key, closes the connection (a "frame that did not decrypt"). A
        restarted master with the largest Raft address dials every other master, and its pre-vote
        requests (every election timeout) broke each handshake that took longer than that: under load it
        went without a leader for a minute (the hour-long soak of 2026-12-07, m5 at faults 312 and 335).
        Nothing is lost: Raft resends what a failed send carried, as for a connection that is down."""
        conn = self._connections.get(node)
        if conn is not None and not handshake_done(self._syncObj.encryptor is not None, conn.sendRandKey):
            return False
        return bool(super().send(node, message))

    def _onTick(self) -> None:
        super()._onTick()
        if self._pending_since:
            self._close_pending(time.monotonic())
        if time.monotonic() - self._last_summary >= self._SUMMARY_EVERY_S:  # the first at once, then batched
            closed = self.guard_stats.take()
            if closed:
                self._last_summary = time.monotonic()
                log.warning("raft port: closed connections since the last report (at most one per %.0f s): %s; "
                            "Raft ports must be reachable by masters only", self._SUMMARY_EVERY_S,
                            ", ".join(f"{why}: {n}" for why, n in closed.items()))

    def _close_pending(self, now: float) -> None:
        pending = self._pending_since
        for conn in [c for c in pending if c not in self._unknownConnections]:
            del pending[conn]  # identified as a master, or already closed
        for conn in pending_to_close(pending, now, self._handshake_timeout_s, self._max_pending):
            if now - pending.pop(conn) > self._handshake_timeout_s:
                self.guard_stats.expired += 1
            else:
                self.guard_stats.over_cap += 1
            conn.disconnect()
            self._unknownConnections.discard(conn)


def guarded_transport(cfg: ReplicationConfig, conf: SyncObjConf) -> Callable[..., GuardedTCPTransport]:
    """The ``transportClass`` a master's ``SyncObj`` is built with: `GuardedTCPTransport` with its limits."""
    return functools.partial(
        GuardedTCPTransport,
        max_frame_bytes=largest_legal_frame(conf.appendEntriesBatchSizeBytes, conf.logCompactionBatchSize,
                                            cfg.group_commit.max_entry_bytes),
        handshake_timeout_s=cfg.handshake_timeout_s, max_pending=cfg.max_pending_connections)
