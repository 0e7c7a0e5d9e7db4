"""``RaftReplicator``: the replicated log on pysyncobj. The only module of Tessera importing it.

Owns one pysyncobj node and the threads around it:

* an **owner** thread constructs the ``SyncObj`` and then delivers leadership notifications.
  pysyncobj's tick thread exits silently as soon as the thread that built the ``SyncObj`` ends, so
  it must be built on a thread that lives exactly as long as the node, not on the caller's;
* pysyncobj's **tick** thread does all Raft work and runs ``_ReplicatedLog.apply_batch`` on every
  node; our callbacks there only put one item on a queue;
* the group-commit **batcher** and **completer** threads (``_group_commit``).

Rules kept (see /work/shared/notes/pysyncobj-measured.md §8):

1. One replicated method, ``apply_batch(entries: list[bytes])``. Method ids are positional: never
   rename or remove it; add new ones only with ``@replicated(ver=N)`` and ``setCodeVersion``.
2. ``apply_batch`` never raises (``guarded_apply``): an exception there wedges every node forever.
3. The replicated state lives in the master's state machine, reached through a ``SyncObjConsumer``
   that is fully built *before* the ``SyncObj`` (no init race can overwrite a restored snapshot) and
   whose snapshot is exactly ``state_machine.snapshot()`` (nothing unpicklable of ours goes in).
4. Journal and dump files are always both set. Nothing is fsync'ed by pysyncobj: an acknowledged
   write survives ``kill -9`` of a minority, not a power loss of a majority.
5. No ``sync=True`` anywhere: every pysyncobj call passes a callback, and every future has a
   deadline enforced by the completer.
6. pysyncobj state is read from other threads only through single attribute reads (``_isLeader``,
   ``raftCurrentTerm``...) or ``getStatus()`` (retried if a dict changed size under it); anything
   that sends on the network (``transferLeadership``) runs on the tick thread.

``raft_index``: inside ``apply_batch``, pysyncobj has not yet incremented ``raftLastApplied`` for the
entry being applied (``__applyLogEntries`` increments it after the call, and applies contiguous
entries), so the entry's own Raft log index is ``raftLastApplied + 1``.

The Raft port is guarded against peers that do not know the password (``GuardedTCPTransport``, the
transport every ``SyncObj`` here is built with): a frame longer than a master ever sends closes the
connection as soon as its length is read, reads are bounded and linear, and connections that have not
identified themselves as masters are closed after ``handshake_timeout_s`` and capped in number. The
port must still be reachable by masters only: without a password it speaks pickle.

Known pysyncobj behaviours callers should know: on startup entries from the journal may be applied
before the dump is loaded, then ``restore()`` replaces the state and application resumes after the
dump's index (indices can repeat across a ``restore``); the membership stored in the dump overrides
the configured peers (issue #133).
"""

from __future__ import annotations

import _socket
import errno
import functools
import gzip
import importlib.metadata
import logging
import pickle
import socket
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj import tcp_connection as _tcp_connection
from pysyncobj.journal import createJournal
from pysyncobj.syncobj import SyncObjException
from pysyncobj.transport import TCPTransport

from ._group_commit import (
    ApplyFailure,
    Batch,
    GroupCommitter,
    Tracked,
    fail_future,
    guarded_apply,
    new_running_future,
)
from ._notifier import LeadershipNotifier
from .api import LeadershipCallback, MemberStatus, QuorumStatus, Replicator, StateMachine
from .config import ReplicationConfig, parse_address
from .errors import (
    NotLeaderError,
    QuorumChangeError,
    ReplicationError,
    ReplicatorStoppedError,
    UnknownOutcomeError,
)

log = logging.getLogger(__name__)

# Importing pysyncobj replaces socket.inet_ntop with a Windows-only shim on every OS (a mis-indented line
# in pysyncobj/win_inet_pton.py), which breaks whatever calls it afterwards in the process (psutil's
# connection listing raised TypeError). Put the real one back.
socket.inet_ntop = _socket.inet_ntop

# The guards below replace private methods and read private fields of pysyncobj (``_SyncObj__transport``,
# ``_onMessageReceivedCallback`` …), checked against this release only; pyproject.toml pins the same range.
PATCHED_PYSYNCOBJ = "0.3.17"


def check_pysyncobj_version(installed: str | None = None) -> None:
    """Refuse to run Raft on a pysyncobj release whose internals the guards were not written for.

    Another release may have renamed what the guards patch (they would then silently do nothing) or
    fixed the defects in another way; either needs a reading of its source before it is trusted."""
    version = installed if installed is not None else importlib.metadata.version("pysyncobj")
    if version != PATCHED_PYSYNCOBJ:
        raise RuntimeError(
            f"pysyncobj {version} is installed, but Tessera's Raft guards (control_plane/replication/raft.py) "
            f"patch the internals of pysyncobj {PATCHED_PYSYNCOBJ} only: install pysyncobj=={PATCHED_PYSYNCOBJ} "
            "(pip install -e . does), or port and re-test the guards before changing the pin")


# pysyncobj's raft states as passed to onStateChanged and reported by getStatus()['state'].
_STATE_LEADER = 2

SNAPSHOT_FORMAT = 1

_FAIL_NAMES: dict[int, str] = {
    FAIL_REASON.QUEUE_FULL: "QUEUE_FULL",
    FAIL_REASON.MISSING_LEADER: "MISSING_LEADER",
    FAIL_REASON.DISCARDED: "DISCARDED",
    FAIL_REASON.NOT_LEADER: "NOT_LEADER",
    FAIL_REASON.LEADER_CHANGED: "LEADER_CHANGED",
    FAIL_REASON.REQUEST_DENIED: "REQUEST_DENIED",
    FAIL_REASON.UNKNOWN_OUTCOME: "UNKNOWN_OUTCOME",
}


def map_fail_reason(code: int, leader_hint: str | None) -> ReplicationError:
    """Map a pysyncobj failure code to our errors.

    NOT_LEADER / MISSING_LEADER: the command was refused before being appended (definitely not
    applied). Everything else (LEADER_CHANGED, DISCARDED, UNKNOWN_OUTCOME, QUEUE_FULL, ...) is
    treated as "maybe applied": only SUCCESS has a definite meaning in pysyncobj (notes §2.3).
    """
    if code in (FAIL_REASON.NOT_LEADER, FAIL_REASON.MISSING_LEADER):
        return NotLeaderError(leader_hint)
    return UnknownOutcomeError(_FAIL_NAMES.get(code, f"FAIL_REASON_{code}"))


def syncobj_conf(cfg: ReplicationConfig, on_state_changed: Callable[[int, int], None] | None,
                 **overrides: Any) -> SyncObjConf:
    """The pysyncobj configuration of a node. ``overrides`` are for the deterministic simulation
    (``replication.sim``), which drives the same configuration by hand: no tick thread, no fork."""
    options: dict[str, Any] = dict(
        password=cfg.password,
        autoTick=True,
        autoTickPeriod=cfg.tick_period_s,
        raftMinTimeout=cfg.raft_min_timeout_s,
        raftMaxTimeout=cfg.raft_max_timeout_s,
        appendEntriesPeriod=cfg.append_entries_period_s,
        connectionTimeout=cfg.connection_timeout_s,
        connectionRetryTime=cfg.connection_retry_time_s,
        leaderFallbackTimeout=cfg.leader_fallback_timeout_s,
        appendEntriesUseBatch=cfg.append_entries_use_batch,
        commandsWaitLeader=cfg.commands_wait_leader,
        dynamicMembershipChange=cfg.dynamic_membership_change,
        journalFile=str(cfg.journal_file),
        fullDumpFile=str(cfg.dump_file),
        logCompactionMinEntries=cfg.log_compaction_min_entries,
        logCompactionMinTime=cfg.log_compaction_min_time_s,
        logCompactionSplit=cfg.log_compaction_split,
        useFork=cfg.use_fork_for_dump,
        bindAddress=cfg.bind_address or cfg.self_address,
        maxBindRetries=cfg.max_bind_retries,
        bindRetryTime=cfg.bind_retry_time_s,
        onStateChanged=on_state_changed,
    )
    options.update(overrides)
    return SyncObjConf(**options)


def guard_snapshot_commit_index(so: SyncObj) -> None:
    """Keep a follower's commit index from advancing over its own unverified entries during a snapshot
    install (a pysyncobj 0.3.17 bug found by the deterministic simulation: ``python -m tests.sim.run
    --seed 67 --steps 120 --unguarded``).

    A leader sends a snapshot as several ``append_entries`` messages without ``prevLogIdx`` (data chunks,
    then an empty last chunk), or with ``serialized=None`` while its own dump is being written. For each
    of them the follower runs its usual ending, ``commitIndex = min(leader's commit, last log index)``,
    although nothing checked that its log matches the leader's: a deposed leader's uncommitted entries
    are then applied to the state machine (and their events recorded) before the snapshot replaces the
    state, and if the install never completes they stay applied while the log is repaired under them.
    Only the last chunk (which loads the snapshot and resets the log to it) may advance the commit index;
    for the others the leader's commit index is replaced by the follower's own before pysyncobj sees it.
    """
    transport = so._SyncObj__transport
    deliver = transport._onMessageReceivedCallback

    def on_message(node: Any, message: Any) -> None:
        if (isinstance(message, dict) and message.get("type") == "append_entries"
                and "prevLogIdx" not in message and not _last_snapshot_chunk(message.get("serialized"))):
            message = dict(message)
            message["commit_index"] = min(message.get("commit_index", 0), so.raftCommitIndex)
        deliver(node, message)

    transport.setOnMessageReceivedCallback(on_message)


def _last_snapshot_chunk(serialized: object) -> bool:
    return isinstance(serialized, tuple) and len(serialized) == 3 and bool(serialized[2])


def guard_matching_entries(so: SyncObj) -> None:
    """Keep a follower from truncating entries it holds from the current leader when an append_entries
    repeats part of its log (a pysyncobj 0.3.17 bug found by the fault-injection suite, tests/faults).

    pysyncobj deletes everything after ``prevLogIdx`` on every append_entries, then adds the entries the
    message carries; Raft deletes only from the first entry that conflicts. A leader re-sends from a lower
    index after a ``reset`` reply, in batches bounded by bytes, while later entries were already
    acknowledged: the follower then drops entries the leader counts as replicated (its match index never
    goes down), a later entry is committed on a minority, and a new leader overwrites it — an
    acknowledged write lost (seen twice in 300 faults on 5 masters).

    When the message agrees with the follower's log at ``prevLogIdx`` and on every entry it carries and
    the follower holds more, nothing it holds is deleted (`without_stale_truncation` says how). A conflict,
    a message that reaches past the follower's log, an index below the compacted log and an empty heartbeat
    go to pysyncobj unchanged.
    """
    transport = so._SyncObj__transport
    deliver = transport._onMessageReceivedCallback

    def on_message(node: Any, message: Any) -> None:
        if (isinstance(message, dict) and message.get("type") == "append_entries" and "prevLogIdx" in message
                and "transmission" not in message):
            message = without_stale_truncation(so._SyncObj__raftLog, message)
            if message is None:
                return
        deliver(node, message)

    transport.setOnMessageReceivedCallback(on_message)


def guard_reply_terms(so: SyncObj) -> None:
    """Stamp a follower's replies to append_entries with its term, and have a leader drop replies of
    another term (pysyncobj 0.3.17's ``next_node_idx`` carries none).

    Without it a leader counts towards commit a reply to an append_entries of an earlier term: a
    follower paused (or slow) while it held a deposed leader's messages answers them after that leader
    has won a later term, and the leader takes the answer as a match of its current log at indexes where
    the follower holds the old term's entries — a commit on a minority, the second candidate cause of
    the lost entry the fault suite found (tests/faults, 5 masters, seed 202). A reply without a term (a
    master not yet upgraded) is taken as before.
    """
    transport = so._SyncObj__transport
    send = transport.send

    def stamped(node: Any, message: Any) -> Any:
        if isinstance(message, dict) and message.get("type") == "next_node_idx" and "term" not in message:
            message = {**message, "term": so.raftCurrentTerm}
        return send(node, message)

    transport.send = stamped
    deliver = transport._onMessageReceivedCallback

    def on_message(node: Any, message: Any) -> None:
        if not is_reply_of_another_term(message, so.raftCurrentTerm):
            deliver(node, message)

    transport.setOnMessageReceivedCallback(on_message)


def guard_backtracking(so: SyncObj) -> None:
    """Keep a leader's next index for a follower from going back up while the follower's log conflicts
    with its own (a pysyncobj 0.3.17 livelock found by the fault-injection suite, tests/faults, 3 masters,
    seed 34).

    A deposed leader comes back with entries of its old term the new leader does not have, and more than
    one batch behind. Each append_entries period the leader sends from its next index in several
    batches; the follower answers the first with a conflict (``next_node_idx`` = its prevLogIdx, reset)
    and every later one, which reaches past its log, with "my log ends here" (its last index + 1,
    reset). The leader resets its next index on each answer, so the last one wins: the next period
    starts where the previous one did and meets the same conflict. The follower never catches up; it
    takes no part in commits until the leader's log compaction forces a snapshot on it (minutes), and
    a second failure meanwhile stops the quorum.

    A failed, resetting answer is the follower saying "send from here or earlier". Once one has been
    taken in this term, a later one that asks for a higher index is taken at the lower index instead,
    until the follower accepts entries (a successful answer). Sending from too low an index costs a
    re-send of entries the follower holds (kept, see `guard_matching_entries`), never a wrong log.
    """
    transport = so._SyncObj__transport
    deliver = transport._onMessageReceivedCallback
    floors: dict[Any, tuple[int, int]] = {}

    def on_message(node: Any, message: Any) -> None:
        if isinstance(message, dict) and message.get("type") == "next_node_idx":
            message = held_back(floors, node, so.raftCurrentTerm, message)
        deliver(node, message)

    transport.setOnMessageReceivedCallback(on_message)


def held_back(floors: dict[Any, tuple[int, int]], node: Any, term: int, reply: dict[str, Any]) -> dict[str, Any]:
    """`reply` (a follower's ``next_node_idx``) as the leader should take it, given `floors`: per
    follower, the term and the lowest index a failed resetting answer asked for since its last success
    (see `guard_backtracking`). Updates `floors`."""
    if reply.get("success"):
        floors.pop(node, None)
        return reply
    if not reply.get("reset"):
        return reply  # a chunk of a large entry received: not an answer about the log
    asked = int(reply["next_node_idx"])
    held = floors.get(node)
    if held is not None and held[0] == term and asked > held[1]:
        return {**reply, "next_node_idx": held[1]}
    floors[node] = (term, asked)
    return reply


def is_reply_of_another_term(message: Any, term: int) -> bool:
    return (isinstance(message, dict) and message.get("type") == "next_node_idx" and "term" in message
            and message["term"] != term)


def without_stale_truncation(journal: Any, message: dict[str, Any]) -> dict[str, Any] | None:
    """What to deliver of an append_entries that carries entries `journal` already holds, all of them
    matching, and ends before `journal` does (see `guard_matching_entries`); any other message is
    returned as it is.

    - `journal` ends with an entry of the message's term: it came from this leader, so (log matching) the
      whole of `journal` is the leader's log: a heartbeat at its end (nothing deleted, a true reply).
    - otherwise: None, not delivered. pysyncobj would delete the entries after the ones carried, which may
      be committed (an earlier leader counted this follower); the next messages of the same burst carry
      them (the leader's next index has moved past this one), and the first that reaches past the end of
      `journal`, or conflicts with it, replaces them in one step. An empty heartbeat (prevLogIdx is the
      leader's last index) is always delivered: what it deletes is beyond the leader's log, so never
      committed.
    """
    entries = message.get("entries") or []
    size = len(journal)
    if not entries or not size:
        return message
    first, last = int(journal[0][1]), int(journal[size - 1][1])
    prev, end = int(message["prevLogIdx"]), int(entries[-1][1])
    if end >= last or prev < first:
        return message  # nothing beyond what it carries, or below what this node keeps
    if journal[prev - first][2] != message.get("prevLogTerm"):
        return message
    for entry in entries:
        if journal[int(entry[1]) - first][2] != entry[2]:
            return message  # a conflict: pysyncobj truncates, as Raft does
    if journal[size - 1][2] != message.get("term"):
        return None
    rewritten = dict(message)
    rewritten.update(prevLogIdx=last, prevLogTerm=journal[size - 1][2], entries=[])
    return rewritten


def align_journal_with_dump(journal_file: Path, dump_file: Path) -> int:
    """Drop the head of the journal that a dump already covers, so pysyncobj keeps the entries after the
    dump; returns how many entries were dropped. (A pysyncobj 0.3.17 data loss found by
    tests/integration/test_replication_processes.py under load.)

    A dump holds the state after an applied entry D and the entries D-1 and D; once it is written,
    pysyncobj deletes the journal's entries before D-1. The dump is written by a forked child, which a
    ``kill -9`` of the master does not stop: the master dies with its journal still starting before D-1,
    and the child then puts the new dump in place. At the next start pysyncobj finds that the journal
    does not begin with the dump's two entries and *clears* it: every entry after D is gone from this
    node, even those it had acknowledged to the leader. Lose that on a majority (all masters killed
    while writing dumps) and committed, acknowledged writes are lost. Deleting the covered head here
    gives pysyncobj the journal it expects, with the entries after D kept.
    """
    if not journal_file.exists() or not dump_file.exists():
        return 0
    try:
        with gzip.open(dump_file, "rb") as f:
            dump = pickle.load(f)
        last, before_last = dump[1], dump[2]
    except Exception:  # noqa: BLE001 - unreadable or not ours: pysyncobj decides, as before
        return 0
    journal = createJournal(str(journal_file))
    try:
        size = len(journal)
        for k in range(1, size - 1):
            if journal[k] == before_last and journal[k + 1] == last:
                journal.deleteEntriesTo(k)
                journal.flush()
                return k
        return 0
    finally:
        journal._destroy()


# ---------------------------------------------------------------------------------------------------------
# The Raft port against peers that do not know the password (issue 14, item 1)

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


class _ReplicatedLog(SyncObjConsumer):  # type: ignore[misc]
    """The pysyncobj consumer: a pass-through to the state machine, with no state of its own."""

    def __init__(self, state_machine: StateMachine) -> None:
        # Assigned before SyncObjConsumer.__init__ so it is excluded from the default snapshot too
        # (belt and braces: _serialize below is overridden anyway).
        self._state_machine = state_machine
        super().__init__()

    @replicated  # type: ignore[untyped-decorator]
    def apply_batch(self, entries: list[bytes]) -> list[object] | ApplyFailure:
        sync_obj = self._syncObj
        raft_index = sync_obj.raftLastApplied + 1 if sync_obj is not None else -1
        return guarded_apply(self._state_machine, raft_index, entries)

    def _serialize(self) -> dict[str, object]:
        # On the tick thread at compaction; pickling happens afterwards (in a forked child when the
        # dump file is used), so a reference to the live state is a consistent snapshot.
        try:
            return {"format": SNAPSHOT_FORMAT, "state": self._state_machine.snapshot()}
        except Exception:
            # Raising keeps the journal intact (compaction is retried); returning a bogus snapshot
            # would let pysyncobj delete the log entries it replaces: silent data loss.
            log.critical("state machine snapshot() raised; log compaction cannot proceed", exc_info=True)
            raise

    def _deserialize(self, data: dict[str, object]) -> None:
        if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
            log.critical("unknown snapshot format in raft dump: %r", type(data).__name__)
            raise ValueError("unknown snapshot format")
        try:
            self._state_machine.restore(data["state"])
        except Exception:
            log.critical("state machine restore() raised; this node's state is not trustworthy", exc_info=True)
            raise


class _QuorumChangeOp(Tracked):
    __slots__ = ("future",)

    def __init__(self, future: Future[Any], timeout_s: float) -> None:
        super().__init__(timeout_s)
        self.future = future

    def resolve(self, payload: object) -> None:
        if isinstance(payload, BaseException):
            fail_future(self.future, payload)
        elif not self.future.done():
            self.future.set_result(None)

    def expire(self, reason: str) -> None:
        fail_future(self.future, UnknownOutcomeError(reason, f"membership change outcome unknown ({reason})"))


class _TransferOp(Tracked):
    """Leadership transfer: pysyncobj only reports that TimeoutNow was sent; the future resolves
    when this node actually sees another node lead."""

    __slots__ = ("future", "_committer", "_replicator", "_sent")

    def __init__(self, future: Future[str], timeout_s: float, committer: GroupCommitter,
                 replicator: RaftReplicator) -> None:
        super().__init__(timeout_s)
        self.future = future
        self._committer = committer
        self._replicator = replicator
        self._sent = False

    @property
    def wants_poll(self) -> bool:
        return self._sent

    def resolve(self, payload: object) -> None:
        if isinstance(payload, BaseException):
            fail_future(self.future, payload)
            return
        self._sent = True
        if not self.poll() and not self._committer.track(self):
            self.expire("STOPPED")

    def poll(self) -> bool:
        leader = self._replicator.leader()
        if leader is not None and leader != self._replicator.self_address:
            if not self.future.done():
                self.future.set_result(leader)
            return True
        return False

    def expire(self, reason: str) -> None:
        what = "was requested but no other leader was observed" if self._sent else "was not carried out"
        fail_future(self.future, UnknownOutcomeError(reason, f"leadership transfer {what} ({reason})"))


class RaftReplicator(Replicator):
    """A Raft node replicating ``state_machine`` with pysyncobj. See the module docstring."""

    def __init__(self, config: ReplicationConfig, state_machine: StateMachine) -> None:
        check_pysyncobj_version()
        self._config = config
        self._state_machine = state_machine
        self._lifecycle = threading.Lock()
        self._state = "new"  # new -> running -> stopping -> stopped
        self._syncobj: SyncObj | None = None
        self._last_term = 0
        name = f"raft[{config.self_address}]"
        self._name = name
        # Built before the SyncObj exists, so the snapshot restored by the tick thread right after
        # construction is never overwritten by our own initialisation (measured init race, §6.6).
        self._consumer = _ReplicatedLog(state_machine)
        self._notifier = LeadershipNotifier(name, self.term)
        self._committer = GroupCommitter(name, config.group_commit, self._propose, self._refusal)
        self._tick_tasks: deque[Callable[[], None]] = deque()
        self._owner: threading.Thread | None = None

    # ------------------------------------------------------------------ properties

    @property
    def self_address(self) -> str:
        return self._config.self_address

    @property
    def config(self) -> ReplicationConfig:
        return self._config

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        with self._lifecycle:
            if self._state != "new":
                raise RuntimeError(f"{self._name}: a replicator starts once; build a new one to restart")
            self._state = "starting"
        cfg = self._config
        try:
            cfg.data_dir.mkdir(parents=True, exist_ok=True)
            # Running before the node can lead: a leadership callback may submit right away.
            self._committer.start()
            ready = threading.Event()
            outcome: list[BaseException | None] = []
            self._owner = threading.Thread(target=self._owner_main, args=(ready, outcome),
                                           name=f"{self._name}-owner", daemon=True)
            self._owner.start()
            budget = cfg.max_bind_retries * cfg.bind_retry_time_s + cfg.stop_timeout_s
            if not ready.wait(budget):
                raise TimeoutError(f"{self._name}: pysyncobj did not start within {budget:.1f} s")
            if outcome and outcome[0] is not None:
                raise outcome[0]
        except BaseException:
            self._abort_start()
            raise
        with self._lifecycle:
            self._state = "running"
        log.info("%s: started (peers %s, data %s)", self._name, ",".join(cfg.peers) or "-", cfg.data_dir)

    def _abort_start(self) -> None:
        t = self._config.stop_timeout_s
        self._committer.close_intake(t)
        so = self._syncobj
        self._syncobj = None
        if so is not None:
            self._destroy_syncobj(so, t)
        self._committer.shutdown(t)
        self._notifier.request_stop()
        if self._owner is not None:
            self._owner.join(t)
        with self._lifecycle:
            self._state = "stopped"

    def _owner_main(self, ready: threading.Event, outcome: list[BaseException | None]) -> None:
        try:
            self._syncobj = self._build_syncobj()
        except BaseException as exc:  # noqa: BLE001 - reported to start() on the caller's thread
            outcome.append(exc)
            ready.set()
            return
        outcome.append(None)
        ready.set()
        # Living on keeps pysyncobj's tick thread alive; stop() ends this loop after the tick thread.
        self._notifier.run()

    def _build_syncobj(self) -> SyncObj:
        cfg = self._config
        conf = syncobj_conf(cfg, self._on_state_changed)
        dropped = align_journal_with_dump(cfg.journal_file, cfg.dump_file)
        if dropped:
            log.warning("%s: the dump was written after the journal's last compaction (a kill during a "
                        "dump); dropped the %d journal entries it covers and kept the ones after it",
                        self._name, dropped)
        so = SyncObj(cfg.self_address, list(cfg.peers), conf=conf, consumers=[self._consumer],
                     transportClass=guarded_transport(cfg, conf))
        guard_snapshot_commit_index(so)
        guard_matching_entries(so)
        guard_backtracking(so)
        guard_reply_terms(so)  # outermost: the others see replies of the current term only
        try:
            so.waitBinded()
        except SyncObjException:
            self._destroy_syncobj(so, cfg.stop_timeout_s)
            raise OSError(f"{self._name}: could not bind {conf.bindAddress}") from None
        so.addOnTickCallback(self._run_tick_tasks)
        return so

    def stop(self) -> None:
        with self._lifecycle:
            if self._state == "new":
                self._state = "stopped"
                return
            if self._state != "running":
                return
            self._state = "stopping"
        t = self._config.stop_timeout_s
        self._committer.close_intake(t)
        so = self._syncobj
        was_leader = False
        if so is not None:
            was_leader = so._isLeader()
            self._last_term = so.raftCurrentTerm
            self._syncobj = None
            self._destroy_syncobj(so, t)
        # The tick thread is gone: no more completions can arrive. Resolve what did, expire the rest.
        self._committer.shutdown(t)
        if was_leader:
            self._notifier.publish(False, self._last_term)
        self._notifier.request_stop()
        if self._owner is not None:
            self._owner.join(t)
            if self._owner.is_alive():
                log.error("%s: owner thread did not stop within %.1f s", self._name, t)
        with self._lifecycle:
            self._state = "stopped"
        log.info("%s: stopped", self._name)

    def _destroy_syncobj(self, so: SyncObj, timeout_s: float) -> None:
        if so.tick_thread_alive():
            so.destroy()  # the tick thread closes sockets and the journal, then exits
            deadline = time.monotonic() + timeout_s
            while so.tick_thread_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
            if so.tick_thread_alive():
                log.error("%s: pysyncobj tick thread did not stop within %.1f s", self._name, timeout_s)
        else:
            # The tick thread never ran its loop (bind failure): release sockets and files ourselves.
            try:
                so._doDestroy()
            except Exception:  # noqa: BLE001
                log.exception("%s: destroying pysyncobj failed", self._name)

    # ------------------------------------------------------------------ writes

    def submit(self, entry: bytes) -> Future[object]:
        return self._committer.submit(entry)

    def _refusal(self) -> ReplicationError | None:
        so = self._syncobj
        if so is None:
            return ReplicatorStoppedError()
        if not so._isLeader():
            leader = so._getLeader()
            return NotLeaderError(str(leader) if leader is not None else None)
        return None

    def _propose(self, batch: Batch) -> None:
        if self._syncobj is None:
            raise ReplicatorStoppedError()
        self._consumer.apply_batch(batch.entries, callback=functools.partial(self._on_batch_done, batch))

    def _on_batch_done(self, batch: Batch, result: object, err: int) -> None:
        # On the tick thread: only hand over.
        if err == FAIL_REASON.SUCCESS:
            self._committer.post(batch, result)
        else:
            self._committer.post(batch, map_fail_reason(err, self._leader_hint()))

    def _leader_hint(self) -> str | None:
        so = self._syncobj
        leader = so._getLeader() if so is not None else None
        return str(leader) if leader is not None else None

    # ------------------------------------------------------------------ leadership

    def is_leader(self) -> bool:
        so = self._syncobj
        return so is not None and bool(so._isLeader())

    def leader(self) -> str | None:
        return self._leader_hint()

    def term(self) -> int:
        so = self._syncobj
        return int(so.raftCurrentTerm) if so is not None else self._last_term

    def on_leadership_change(self, callback: LeadershipCallback) -> None:
        self._notifier.register(callback)

    def _on_state_changed(self, old: int, new: int) -> None:
        # On the tick thread. The term is already updated when pysyncobj changes state.
        if (old == _STATE_LEADER) == (new == _STATE_LEADER):
            return
        so = self._syncobj
        self._notifier.publish(new == _STATE_LEADER, int(so.raftCurrentTerm) if so is not None else None)

    # ------------------------------------------------------------------ status

    def status(self) -> QuorumStatus:
        so = self._syncobj
        cfg = self._config
        if so is None:
            members = [MemberStatus(cfg.self_address, True, None, True)]
            members += [MemberStatus(p, False, None, False) for p in sorted(cfg.peers)]
            return QuorumStatus(cfg.self_address, None, self._last_term, 0, 0, False, tuple(members), 0)
        raw = self._raw_status(so)
        leader = str(raw["leader"]) if raw.get("leader") is not None else None
        is_leader = raw.get("state") == _STATE_LEADER
        members = [MemberStatus(cfg.self_address, True, None, True)]
        prefix = "partner_node_status_server_"
        for key in sorted(k for k in raw if k.startswith(prefix)):
            address = key[len(prefix):]
            match = raw.get("match_idx_server_" + address) if is_leader else None
            members.append(MemberStatus(address, raw[key] == 2, int(match) if match is not None else None, False))
        return QuorumStatus(
            self_address=cfg.self_address,
            leader=leader,
            term=int(raw["raft_term"]),
            commit_index=int(raw["commit_idx"]),
            last_applied=int(raw["last_applied"]),
            has_quorum=bool(raw["has_quorum"]),
            members=tuple(members),
            log_len=int(raw["log_len"]),
        )

    @staticmethod
    def _raw_status(so: SyncObj) -> dict[str, Any]:
        # getStatus() iterates pysyncobj's dicts without a lock; the tick thread may resize one
        # meanwhile (membership or leadership change). A retry sees a consistent view.
        for _ in range(5):
            try:
                return dict(so.getStatus())
            except RuntimeError:
                time.sleep(0.001)
        return dict(so.getStatus())

    def compact_log(self) -> None:
        so = self._syncobj
        if so is not None:
            so.forceLogCompaction()

    # ------------------------------------------------------------------ quorum changes

    def add_member(self, address: str) -> Future[None]:
        return self._change_membership(address, add=True)

    def remove_member(self, address: str) -> Future[None]:
        return self._change_membership(address, add=False)

    def _change_membership(self, address: str, *, add: bool) -> Future[None]:
        parse_address(address)
        fut: Future[None] = new_running_future()
        refusal = self._refusal()
        if refusal is not None:
            fail_future(fut, refusal)
            return fut
        if not add and address == self.self_address:
            fail_future(fut, QuorumChangeError("REQUEST_DENIED", "a node cannot remove itself; transfer leadership first"))
            return fut
        so = self._syncobj
        op = _QuorumChangeOp(fut, self._config.membership_timeout_s)
        if so is None or not self._committer.track(op):
            fail_future(fut, ReplicatorStoppedError())
            return fut
        callback = functools.partial(self._on_quorum_change_done, op)
        try:
            if add:
                so.addNodeToCluster(address, callback=callback)
            else:
                so.removeNodeFromCluster(address, callback=callback)
        except Exception as exc:  # noqa: BLE001 - e.g. dynamic membership disabled
            if self._committer.untrack(op):
                fail_future(fut, QuorumChangeError("REJECTED", str(exc)))
        return fut

    def _on_quorum_change_done(self, op: Tracked, result: object, err: int) -> None:
        # On the tick thread (or synchronously on the caller's for an immediate refusal).
        if err == FAIL_REASON.SUCCESS:
            payload: object = None
        elif err == FAIL_REASON.REQUEST_DENIED:
            payload = QuorumChangeError(
                "REQUEST_DENIED",
                "membership change denied: another change is still uncommitted, the leader has not "
                "committed its first entry yet, the target is self, or it is already (not) a member",
            )
        else:
            payload = map_fail_reason(err, self._leader_hint())
        self._committer.post(op, payload)

    def transfer_leadership(self, address: str | None = None) -> Future[str]:
        if address is not None:
            parse_address(address)
        fut: Future[str] = new_running_future()
        refusal = self._refusal()
        if refusal is not None:
            fail_future(fut, refusal)
            return fut
        so = self._syncobj
        op = _TransferOp(fut, self._config.transfer_timeout_s, self._committer, self)
        if so is None or not self._committer.track(op):
            fail_future(fut, ReplicatorStoppedError())
            return fut
        callback = functools.partial(self._on_transfer_done, op)
        # transferLeadership reads Raft state and sends on a socket: it must run on the tick thread.
        self._tick_tasks.append(lambda: so.transferLeadership(address, callback=callback))
        return fut

    def _on_transfer_done(self, op: Tracked, result: object, err: int) -> None:
        if err == FAIL_REASON.SUCCESS:
            payload: object = None
        elif err == FAIL_REASON.REQUEST_DENIED:
            payload = QuorumChangeError(
                "REQUEST_DENIED",
                "leadership transfer denied: the target is not a connected, fully caught-up member "
                "(retry when the follower has caught up)",
            )
        else:
            payload = map_fail_reason(err, self._leader_hint())
        self._committer.post(op, payload)

    def _run_tick_tasks(self) -> None:
        # On the tick thread, every tick.
        tasks = self._tick_tasks
        while tasks:
            try:
                task = tasks.popleft()
            except IndexError:
                return
            try:
                task()
            except Exception:  # noqa: BLE001 - never let our task break pysyncobj's tick
                log.exception("%s: task on the raft thread failed", self._name)
