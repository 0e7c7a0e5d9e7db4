"""Guards against pysyncobj 0.3.17's consensus defects, installed on every Tessera Raft node.

Each guard wraps the node's transport (the callback that delivers received messages, or ``send``) and
changes only the messages the defect concerns; the decisions are pure functions of the message and the
node's log or term, unit-tested on their own (tests/unit/replication/test_sim.py). Found by the
deterministic simulation (``tests/sim``) and the fault-injection suite (``tests/faults``), and described
in docs/reliability.md:

* ``guard_snapshot_commit_index``: snapshot chunks must not advance a follower's commit index;
* ``guard_failed_snapshot_install``: a received snapshot that does not load must neither advance the
  follower's commit index nor be answered as installed;
* ``guard_dump_overtaken_by_snapshot``: a node's own dump, still running or not yet reported when it
  installs a leader's snapshot, must neither replace the snapshot's file nor compact the new journal;
* ``guard_snapshot_chunks``: a follower appends a snapshot chunk only to the transmission it belongs to
  (``chunk_fits``): same leader, same term, no break of the connection since its first chunk, and, when
  the leader says where the chunk begins, at that byte;
* ``guard_snapshot_chunk_answers``: a follower answers every snapshot chunk, so that a leader's
  check-quorum hears it during a long transmission;
* ``guard_snapshot_transmissions``: a leader restarts a transmission from its first chunk in a new term
  and after a break of the connection to that follower, and says where each chunk begins;
* ``guard_matching_entries``: an append_entries that repeats part of the log must not truncate it
  (``without_stale_truncation``);
* ``guard_backtracking``: a leader keeps the lowest index a failed answer asked for (``held_back``),
  which ends a backtracking livelock;
* ``guard_reply_terms``: replies carry their term, and a leader drops those of another term
  (``is_reply_of_another_term``).

``install_consensus_guards`` puts all nine in place, in the order ``RaftReplicator`` and the simulation
both need, then pre-vote and check-quorum (``prevote``, Raft thesis §9.6) outermost, unless asked not to. They use pysyncobj's private names: ``pysyncobj_release`` pins the release they were written for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import Any

from pysyncobj import SyncObj

from .prevote import install_pre_vote

log = logging.getLogger(__name__)


def install_consensus_guards(so: SyncObj, *, pre_vote: bool = True) -> None:
    """Every guard of this module on `so`, built and not yet bound or ticked; with `pre_vote` (the
    default), pre-vote and check-quorum too (``prevote.install_pre_vote``; False only to measure
    pysyncobj's own elections, as ``python -m tests.sim.run --no-pre-vote`` does)."""
    guard_failed_snapshot_install(so)  # innermost: it must see pysyncobj's own reply to the install
    guard_dump_overtaken_by_snapshot(so)
    guard_snapshot_commit_index(so)
    guard_snapshot_chunk_answers(so)
    guard_snapshot_chunks(so)  # outside these two: a dropped chunk commits nothing and is not answered
    guard_snapshot_transmissions(so)
    guard_matching_entries(so)
    guard_backtracking(so)
    guard_reply_terms(so)  # the others see replies of the current term only
    if pre_vote:
        install_pre_vote(so)  # outermost: pre-vote messages reach neither the guards nor pysyncobj


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


def guard_failed_snapshot_install(so: SyncObj) -> None:
    """Keep a follower whose received snapshot does not load from committing (and applying) its own
    unverified entries, and from answering the leader that the snapshot is installed (a pysyncobj 0.3.17
    defect behind the divergence of the 40-minute soak of 2026-12-07, see docs/reliability.md, "Known
    defects").

    On the last chunk of a snapshot pysyncobj puts the received file in place and loads it
    (``__loadDumpFile(clearJournal=True)``). When the file does not unpickle (the soak's m5:
    ``UnicodeDecodeError``, a transmission made of chunks that do not belong together), or the state
    machine's restore raises (``_deserialize`` of a consumer), the load only logs "failed to load full
    dump": the log stays as it was, yet pysyncobj answers ``next_node_idx`` with success at its own last
    index, and then sets its commit index to ``min(leader's commit, last log index)``. A deposed leader's
    uncommitted entries at the end of that log are then committed and applied on this node (and their
    events recorded), although the cluster committed other entries at those indexes. Here such a load
    leaves the commit index where it was before the message and sends no success answer: the leader's
    next append_entries meets the follower's true log (a reset answer) and the snapshot is sent again.

    Two more cases are refused the same way: a snapshot whose last entry is at or below the follower's
    commit index (Raft installs only a snapshot that is newer than what the follower has; pysyncobj would
    put the follower's state back to the older index and clamp its commit index, "raftCommitIndex (…)
    exceeds journal end"), and, for every refused load, the node's own dump file, which pysyncobj replaced
    with the received file before loading it, is put back: a restart then finds the dump its journal was
    compacted to, not a file that does not load.
    """
    serializer = so._SyncObj__serializer
    transport = so._SyncObj__transport
    for name, where in (("deserialize", serializer), ("setRaftCommitIndex", so._SyncObj__raftLog),
                        ("send", transport)):
        if not callable(getattr(where, name, None)):
            raise RuntimeError(f"pysyncobj internals changed ({type(where).__name__}.{name} is missing): "
                               "guard_failed_snapshot_install was written for pysyncobj_release.PATCHED_PYSYNCOBJ")
    consumers = so._SyncObj__consumers
    if not hasattr(serializer, "_Serializer__fileName") or not all(
            callable(getattr(c, "_deserialize", None)) for c in consumers):
        raise RuntimeError("pysyncobj internals changed (Serializer.__fileName or SyncObjConsumer._deserialize "
                           "is missing): guard_failed_snapshot_install was written for "
                           "pysyncobj_release.PATCHED_PYSYNCOBJ")
    deserialize = serializer.deserialize
    send = transport.send
    installing, failed, committed, why = [False], [False], [0], [""]

    def checked_deserialize() -> Any:
        try:
            data = deserialize()
        except Exception as e:
            failed[0], why[0] = installing[0], f"it does not load ({type(e).__name__}: {e})"
            raise  # pysyncobj logs "failed to load full dump" and keeps its log and state
        if installing[0] and is_stale_snapshot(data, committed[0]):
            failed[0], why[0] = True, f"it ends at index {data[1][1]}, not after the commit index"
            raise ValueError(f"a snapshot at index {data[1][1]} is not newer than this node's commit index "
                             f"{committed[0]}: not installed")
        return data

    def checked_restore(restore: Any) -> Any:
        def restored(data: Any) -> Any:
            try:
                return restore(data)
            except Exception as e:
                failed[0], why[0] = installing[0], f"the state machine's restore raised {type(e).__name__}"
                raise  # pysyncobj logs "failed to load full dump"; the journal is not cleared
        return restored

    def filtered_send(node: Any, message: Any) -> Any:
        if (failed[0] and isinstance(message, dict) and message.get("type") == "next_node_idx"
                and message.get("success")):
            return False  # not installed: the leader must not count this node as holding its log
        return send(node, message)

    serializer.deserialize = checked_deserialize
    for consumer in consumers:
        consumer._deserialize = checked_restore(consumer._deserialize)
    transport.send = filtered_send
    deliver = transport._onMessageReceivedCallback

    def on_message(node: Any, message: Any) -> None:
        if not (isinstance(message, dict) and message.get("type") == "append_entries"
                and "prevLogIdx" not in message and _last_snapshot_chunk(message.get("serialized"))):
            deliver(node, message)
            return
        before = int(so.raftCommitIndex)
        dump = serializer._Serializer__fileName
        kept = _keep_aside(dump)
        installing[0], failed[0], committed[0] = True, False, before
        try:
            deliver(node, message)
        finally:
            if failed[0] and so._SyncObj__raftCommitIndex > before:
                so._SyncObj__raftCommitIndex = before
                so._SyncObj__raftLog.setRaftCommitIndex(before)
            if failed[0]:
                if kept is not None:
                    os.replace(kept, dump)  # this node's own dump again, the one its journal matches
                elif dump is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(dump)  # it had none: a restart must not load the refused file
                log.error("the snapshot received from %s was not installed (%s): commit index kept at %d, "
                          "the leader will send it again", node, why[0], before)
            elif kept is not None:
                os.unlink(kept)
            installing[0], failed[0] = False, False

    transport.setOnMessageReceivedCallback(on_message)


def is_stale_snapshot(data: Any, commit_index: int) -> bool:
    """Whether a loaded dump (pysyncobj's ``(state, last entry, entry before, cluster)``) ends at or below
    `commit_index`: installing it would take the node back to an older state."""
    return int(data[1][1]) <= commit_index


def _keep_aside(dump: str | None) -> str | None:
    """A hard link to the node's dump file (None without one), which pysyncobj's install is about to
    replace: the old file survives the rename under the link's name."""
    if dump is None or not os.path.exists(dump):
        return None
    kept = dump + ".before-install"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(kept)
    os.link(dump, kept)
    return kept


def guard_dump_overtaken_by_snapshot(so: SyncObj) -> None:
    """Drop a node's own dump that is still being written (or finished and not yet reported) when the
    last chunk of a leader's snapshot arrives (a pysyncobj 0.3.17 defect found by the simulation:
    ``python -m tests.sim.run --apply-step --seeds 245`` ended in an ``IndexError`` in ``__getEntries``).

    pysyncobj reports a finished dump at a later tick (``checkSerializing``) and then deletes the journal
    up to the dump's index (``__deleteEntriesTo``). If the node installed a leader's snapshot meanwhile,
    its journal is the snapshot's two entries, and the old dump's index deletes them (the journal is
    empty: the next ``__getEntries`` raises on every message), or entries the old dump does not cover.
    With forked dumps the child also renames its file over the installed snapshot's: at the next start
    pysyncobj finds a journal that does not begin with the dump's entries and clears it. Before the
    snapshot is put in place, a running dump child is killed and reaped and an unreported result is
    forgotten: pysyncobj sees no dump in progress and compacts again later, from the installed state.
    """
    serializer = so._SyncObj__serializer
    if not hasattr(serializer, "_Serializer__pid") or not callable(getattr(serializer, "setTransmissionData", None)):
        raise RuntimeError("pysyncobj internals changed (Serializer.__pid or setTransmissionData is missing): "
                           "guard_dump_overtaken_by_snapshot was written for pysyncobj_release.PATCHED_PYSYNCOBJ")
    set_transmission = serializer.setTransmissionData

    def received(data: Any) -> bool:
        if _last_snapshot_chunk(data):
            pid = serializer._Serializer__pid
            if pid > 0:  # a forked child still writing this node's own, older dump
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except OSError:
                    pass  # already gone (reaped elsewhere): nothing left to rename
                log.warning("a leader's snapshot arrived while this node's own dump was being written: "
                            "that dump is dropped")
            if pid != 0:
                serializer._Serializer__pid = 0  # -1/-2: finished in-process, not yet reported
        return bool(set_transmission(data))

    serializer.setTransmissionData = received


SNAPSHOT_OFFSET = "snapshot_offset"  # where a chunk begins in its dump file; set by guard_snapshot_transmissions


def guard_snapshot_chunks(so: SyncObj) -> None:
    """Keep a follower from assembling a snapshot out of chunks that do not follow each other (a pysyncobj
    0.3.17 defect, reproduced in tests/unit/replication/test_snapshot_chunks.py).

    A snapshot travels as ``append_entries`` messages whose ``serialized`` is ``(bytes, first, last)``;
    pysyncobj's follower opens a new file on a first chunk and appends every other chunk to whatever file
    is open, whoever sent it. A leader deposed and elected again resumes its old transmission mid-file
    (``guard_snapshot_transmissions``), after another leader opened a new one at the follower: the file
    is the head of one dump and the tail of another. A chunk lost with a broken connection leaves a hole.
    Such a file does not load, or loads an older state than the follower has. Here a chunk is appended
    only when it continues the open transmission (`chunk_fits`): same leader, same term, no break of the
    connection to that leader since the first chunk, and at the byte where the leader says it begins (a
    leader with ``guard_snapshot_transmissions`` says; one without is checked on the rest). Any other
    chunk ends the open transmission: it is delivered without its data (pysyncobj keeps the term and the
    leader, and commits nothing for it), the file is closed, and the later chunks of that transmission
    are dropped the same way; the leader then meets the follower's log and sends the snapshot again.
    """
    serializer = so._SyncObj__serializer
    if not hasattr(serializer, "_Serializer__incomingTransmissionFile"):
        raise RuntimeError("pysyncobj internals changed (Serializer.__incomingTransmissionFile is missing): "
                           "guard_snapshot_chunks was written for pysyncobj_release.PATCHED_PYSYNCOBJ")
    transport = so._SyncObj__transport
    deliver = transport._onMessageReceivedCallback
    disconnected = transport._onNodeDisconnectedCallback
    receiving: list[ChunkStream | None] = [None]

    def abandon(why: str) -> None:
        incoming = serializer._Serializer__incomingTransmissionFile
        if incoming is not None and hasattr(incoming, "close"):
            incoming.close()
        serializer._Serializer__incomingTransmissionFile = None
        if receiving[0] is not None:
            log.warning("snapshot from %s (term %d) abandoned after %d bytes: %s; the leader will send it again",
                        receiving[0].leader, receiving[0].term, receiving[0].received, why)
        receiving[0] = None

    def on_message(node: Any, message: Any) -> None:
        if (isinstance(message, dict) and message.get("type") == "append_entries" and "prevLogIdx" not in message
                and isinstance(message.get("serialized"), tuple) and message.get("term", 0) >= so.raftCurrentTerm):
            data, first, last = message["serialized"]
            offset = message.get(SNAPSHOT_OFFSET)
            stream = ChunkStream(str(node), int(message["term"])) if first else receiving[0]
            why = chunk_fits(stream, str(node), int(message["term"]), offset)
            if why is not None:
                abandon(why)
                message = {**message, "serialized": None}
            else:
                assert stream is not None
                stream.received += len(data)
                receiving[0] = None if last else stream
        deliver(node, message)

    def on_disconnected(node: Any) -> None:
        if receiving[0] is not None and receiving[0].leader == str(node):
            abandon("the connection to its leader broke (chunks in flight are lost)")
        if disconnected is not None:
            disconnected(node)

    transport.setOnMessageReceivedCallback(on_message)
    transport.setOnNodeDisconnectedCallback(on_disconnected)


def guard_snapshot_chunk_answers(so: SyncObj) -> None:
    """Have a follower answer every snapshot chunk it takes, not only the last (pysyncobj 0.3.17 answers
    the last one only; found with tests/unit/replication/test_snapshot_chunks.py).

    Check-quorum (``prevote``) steps a leader down when a majority has not answered within the election
    timeout. A leader that reaches one follower of three and sends it a snapshot longer than that (many
    chunks over many append_entries periods) hears nothing from it until the last chunk: it steps down
    mid-way, is elected again, resumes (or, with ``guard_snapshot_transmissions``, starts over), and steps
    down again; the follower never catches up and the cluster keeps changing terms. The answer is the one
    pysyncobj gives a chunk of a large entry (``next_node_idx`` without reset or success): a leader of any
    version notes that the follower answered and changes nothing else.
    """
    transport = so._SyncObj__transport
    deliver = transport._onMessageReceivedCallback

    def on_message(node: Any, message: Any) -> None:
        chunk = (isinstance(message, dict) and message.get("type") == "append_entries" and "prevLogIdx" not in message
                 and isinstance(message.get("serialized"), tuple) and not message["serialized"][2]
                 and message.get("term", 0) >= so.raftCurrentTerm)
        deliver(node, message)
        if chunk:
            transport.send(node, {"type": "next_node_idx", "next_node_idx": so._SyncObj__raftLog[-1][1] + 1,
                                  "reset": False, "success": False})

    transport.setOnMessageReceivedCallback(on_message)


class ChunkStream:
    """The snapshot transmission a follower is receiving: from which leader, in which term, how many bytes."""

    def __init__(self, leader: str, term: int) -> None:
        self.leader, self.term, self.received = leader, term, 0


def chunk_fits(stream: ChunkStream | None, leader: str, term: int, offset: object) -> str | None:
    """Why a chunk from `leader` in `term` that says it begins at `offset` (None: not said) does not
    continue `stream` (for a first chunk: the new stream it opens), or None when it does."""
    if stream is None:
        return "a chunk that is not a first one, and no transmission open"
    if (stream.leader, stream.term) != (leader, term):
        return f"a chunk from {leader} in term {term}, not from {stream.leader} in term {stream.term}"
    if offset is not None and offset != stream.received:
        return f"a chunk at byte {offset}, not at byte {stream.received}"
    return None


def guard_snapshot_transmissions(so: SyncObj) -> None:
    """Have a leader send each snapshot transmission whole, from its first chunk, within one term and one
    connection, and say where each chunk begins (a pysyncobj 0.3.17 defect, reproduced in
    tests/unit/replication/test_snapshot_chunks.py).

    pysyncobj's leader keeps, per follower, an open dump file and a position (``Serializer.__transmissions``)
    until the last chunk is sent, the connection is seen down while it leads, or its own next dump
    finishes. Deposed mid-transmission and elected again, it resumes where it stopped, though another
    leader may have sent the follower a new snapshot meanwhile; a connection that broke and came back
    while it did not lead leaves the chunks lost with it out. Here a transmission is forgotten when the
    connection to its follower breaks, and one begun in an earlier term is forgotten before the next
    chunk: the follower gets a first chunk and a whole file. Each chunk carries its offset
    (``snapshot_offset``; pysyncobj ignores keys it does not know), which ``guard_snapshot_chunks``
    checks on the follower.
    """
    serializer = so._SyncObj__serializer
    for name in ("getTransmissionData", "cancelTransmisstion"):
        if not callable(getattr(serializer, name, None)):
            raise RuntimeError(f"pysyncobj internals changed (Serializer.{name} is missing): "
                               "guard_snapshot_transmissions was written for pysyncobj_release.PATCHED_PYSYNCOBJ")
    if not isinstance(getattr(serializer, "_Serializer__transmissions", None), dict):
        raise RuntimeError("pysyncobj internals changed (Serializer.__transmissions is missing): "
                           "guard_snapshot_transmissions was written for pysyncobj_release.PATCHED_PYSYNCOBJ")
    get_chunk, cancel = serializer.getTransmissionData, serializer.cancelTransmisstion
    transport = so._SyncObj__transport
    send, disconnected = transport.send, transport._onNodeDisconnectedCallback
    begun: dict[Any, tuple[int, int]] = {}  # follower -> (term of the first chunk, bytes sent)
    offsets: dict[Any, int] = {}  # follower -> offset of the chunk just read, until it is sent

    def chunk(node: Any) -> Any:
        held = begun.get(node)
        if node in serializer._Serializer__transmissions and (held is None or held[0] != so.raftCurrentTerm):
            forget(node, "begun in an earlier term")
        data = get_chunk(node)
        if isinstance(data, tuple):
            sent = 0 if data[1] else begun.get(node, (0, 0))[1]
            offsets[node] = sent
            if data[2]:
                begun.pop(node, None)
            else:
                begun[node] = (int(so.raftCurrentTerm), sent + len(data[0]))
        return data

    def forget(node: Any, why: str) -> None:
        transmission = serializer._Serializer__transmissions.get(node)
        if transmission is not None:
            log.info("snapshot transmission to %s restarts from its first chunk: %s", node, why)
            if hasattr(transmission.get("file"), "close"):
                transmission["file"].close()
        cancel(node)
        begun.pop(node, None)

    def stamped(node: Any, message: Any) -> Any:
        if (isinstance(message, dict) and message.get("type") == "append_entries"
                and isinstance(message.get("serialized"), tuple) and node in offsets):
            message = {**message, SNAPSHOT_OFFSET: offsets.pop(node)}
        return send(node, message)

    def on_disconnected(node: Any) -> None:
        forget(node, "the connection broke (chunks in flight are lost)")
        offsets.pop(node, None)
        if disconnected is not None:
            disconnected(node)

    serializer.getTransmissionData = chunk
    transport.send = stamped
    transport.setOnNodeDisconnectedCallback(on_disconnected)


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
