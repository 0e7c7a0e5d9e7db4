"""Durable acknowledgements: a master has its Raft journal on disk before it counts its own vote for an
entry (leader) or tells the leader it holds one (follower), and its term and vote on disk before it asks
for or grants a vote. pysyncobj 0.3.17 never syncs (its journal is an mmap'd file, its term and vote a
file renamed into place): an acknowledged write survived the ``kill -9`` of any minority, but not the
power loss of a majority. With this module installed it survives the power loss of every master
(``tests/faults/test_power_cut.py`` proves it on a filesystem that drops unsynced writes at the cut).

``install_durability(so, disk, data_dir)`` patches one ``SyncObj``, built and not yet ticked:

* **group commit**: the journal's mutators only mark it dirty; one ``msync`` (``Disk.sync_journal``)
  covers every entry appended since the last one, at two points of each tick: before the poll (what the
  leader appended this tick, so the disk works while the followers do) and after it (what the poll's
  messages appended, before their replies leave), plus right after the node becomes leader (its no-op);
* **leader**: pysyncobj counts the leader itself for every entry of its log when it advances the commit
  index, at the start of a tick; every entry appended before that point has been synced at the end of the
  previous tick (or when it became leader), so the count is true;
* **follower**: its successful ``next_node_idx`` replies (``success=True``: "I hold up to here") are held
  while the journal is dirty, and sent, in order, right after the sync (`holds_reply`); a reply sent
  while others are held waits behind them, so the leader sees them in the order they were made;
* **term and vote**: the journal's meta file (current term, voted-for, commit index) is written to a
  temporary file, fsynced, renamed and its directory fsynced (``DurableMetaStorer``), synchronously,
  before pysyncobj sends the vote request or grant that follows;
* **dump**: before pysyncobj deletes the journal entries a new dump covers, the dump and its directory
  are fsynced (the dump is written by a forked child; the parent syncs when it learns the child
  succeeded); an installed snapshot is synced before the follower's reply;
* **history** (``before_dump``, the master's event log ``flush``): a dump is started only once whatever
  the entries it covers wrote to the event log is on disk, because a restart re-applies (and so
  re-records) only the entries after the dump. When the history is not on disk within
  ``BEFORE_DUMP_WAIT_S`` the dump is put off (``DUMP_RETRY_S``) rather than the Raft thread held.

Installed by ``RaftReplicator`` unless ``ReplicationConfig.fsync`` is False (``tessera master
--unsafe-no-fsync``), and by the simulation when it is given a ``Disk``. Like the consensus guards it
replaces private names of pysyncobj: ``pysyncobj_release`` pins the release it was written for and
``tests/unit/replication/test_durability.py`` fails if their source moves.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pysyncobj import SyncObj
from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.journal import FileJournal, MetaStorer
from pysyncobj.pickle import dumps

log = logging.getLogger(__name__)

# How long the Raft thread may wait for the event log before a dump (well under the election timeout),
# and how long a dump is put off when it did not get there.
BEFORE_DUMP_WAIT_S = 0.1
DUMP_RETRY_S = 1.0


class Disk(Protocol):
    """Where durability meets the disk (the port; ``FsyncDisk`` is the real one)."""

    def sync_journal(self, journal: Any) -> None:
        """Every write made to the journal's file so far is on disk (``msync``)."""

    def sync_fd(self, fd: int) -> None:
        """The open file's data and size are on disk (``fsync``)."""

    def sync_path(self, path: Path) -> None:
        """The file or directory at ``path`` is on disk (a directory: the names in it)."""


class FsyncDisk:
    """The real disk: ``msync`` for the mmap'd journal, ``fsync`` for files and directories."""

    def sync_journal(self, journal: Any) -> None:
        journal.flush()  # FileJournal.flush -> mmap.flush() -> msync(MS_SYNC) over the whole file

    def sync_fd(self, fd: int) -> None:
        os.fsync(fd)

    def sync_path(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def holds_reply(message: Any, journal_dirty: bool, replies_held: bool) -> bool:
    """Whether a message a node is about to send must wait for the next journal sync.

    A successful ``next_node_idx`` tells the leader the node holds entries up to an index: it waits while
    the journal has writes not yet synced. Any ``next_node_idx`` waits while earlier ones are held, so the
    leader sees them in the order they were made. Everything else goes at once (votes are covered by the
    meta file's own sync, made before pysyncobj sends them)."""
    if not isinstance(message, dict) or message.get("type") != "next_node_idx":
        return False
    return replies_held or (journal_dirty and bool(message.get("success")))


class DurableMetaStorer(MetaStorer):  # type: ignore[misc]
    """pysyncobj's meta file (term, vote, commit index), written so that it is on disk when
    ``storeMeta`` returns: temporary file fsynced, renamed, directory fsynced."""

    def __init__(self, path: str, disk: Disk) -> None:
        super().__init__(path)
        self._disk = disk
        self.stores = 0  # for tests

    def storeMeta(self, meta: dict[str, Any]) -> None:  # noqa: N802 - pysyncobj's name
        path = Path(self.getPath())
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(dumps(meta))
            f.flush()
            self._disk.sync_fd(f.fileno())
        os.replace(tmp, path)
        self._disk.sync_path(path.parent)
        self.stores += 1


class Durability:
    """The durability state of one node: whether its journal has unsynced writes, the replies held
    until it has none, and how many syncs were made (``syncs``, for tests and the benchmark)."""

    def __init__(self, so: SyncObj, disk: Disk, data_dir: Path, dump_file: Path) -> None:
        self._so = so
        self._disk = disk
        self._data_dir = data_dir
        self._dump_file = dump_file
        self._journal = so._SyncObj__raftLog
        self._lock = threading.Lock()  # settle() runs on the tick thread; the lock only guards tests' reads
        self.dirty = True  # the journal file may have been created or written before we were installed
        self.held: list[tuple[Any, Any]] = []
        self.syncs = 0
        self._send: Callable[[Any, Any], Any] | None = None

    def mark_dirty(self) -> None:
        self.dirty = True

    def settle(self) -> None:
        """Sync the journal if it has unsynced writes, then send the replies held for it, in order."""
        with self._lock:
            if self.dirty:
                self._disk.sync_journal(self._journal)
                self.dirty = False
                self.syncs += 1
            held, self.held = self.held, []
        send = self._send
        for node, message in held:
            if send is not None:
                send(node, message)

    def sync_dump(self) -> None:
        if self._dump_file.exists():
            self._disk.sync_path(self._dump_file)
        self._disk.sync_path(self._data_dir)


def install_durability(so: SyncObj, disk: Disk, data_dir: Path, dump_file: Path,
                       before_dump: Callable[[float], bool] | None = None,
                       clock: Callable[[], float] = time.monotonic) -> Durability:
    """Patch `so` so that it acknowledges only what is on disk (see the module docstring). Install it
    before ``install_consensus_guards``: the reply-term stamp is then put on a reply when it is made,
    not when a held reply is sent."""
    durability = Durability(so, disk, data_dir, dump_file)
    journal = so._SyncObj__raftLog
    if isinstance(journal, FileJournal):
        storer = journal._FileJournal__metaStorer
        journal._FileJournal__metaStorer = DurableMetaStorer(storer.getPath(), disk)
    for name in ("add", "clear", "deleteEntriesFrom", "deleteEntriesTo"):
        setattr(journal, name, _dirtying(getattr(journal, name), durability))

    transport = so._SyncObj__transport
    send = transport.send
    durability._send = send

    def held_send(node: Any, message: Any) -> Any:
        if holds_reply(message, durability.dirty, bool(durability.held)):
            durability.held.append((node, message))
            return True
        return send(node, message)

    transport.send = held_send

    tick = so._onTick

    def on_tick(timeToWait: float = 0.0) -> None:  # noqa: N803 - pysyncobj's name
        try:
            tick(timeToWait)
        finally:
            durability.settle()  # after the poll: what its messages appended, before their replies

    so._onTick = on_tick
    so.addOnTickCallback(durability.settle)  # before the poll: what the leader appended this tick

    become_leader = so._SyncObj__onBecomeLeader

    def on_become_leader() -> None:
        become_leader()
        durability.settle()  # its no-op, before a single-node leader's commit loop counts it

    so._SyncObj__onBecomeLeader = on_become_leader
    # pysyncobj pickles every attribute of the SyncObj added after its __init__ into the dump (and sets
    # them back from it on load): the two patched methods are not state, and closures do not pickle
    so._SyncObj__properies.update(("_onTick", "_SyncObj__onBecomeLeader"))

    serializer = so._SyncObj__serializer
    check_serializing = serializer.checkSerializing

    def checked() -> tuple[int, Any]:
        state, ident = check_serializing()
        if state == SERIALIZER_STATE.SUCCESS:
            durability.sync_dump()  # before pysyncobj deletes the journal entries it covers
        return state, ident

    serializer.checkSerializing = checked
    set_transmission = serializer.setTransmissionData

    def received(data: Any) -> bool:
        done = bool(set_transmission(data))
        if done:
            durability.sync_dump()  # an installed snapshot, before the follower's reply
        return done

    serializer.setTransmissionData = received
    if before_dump is not None:
        serialize = serializer.serialize
        put_off_until = [0.0]

        def serialize_after_history(data: Any, ident: Any) -> None:
            now = clock()
            if now < put_off_until[0]:
                return  # no dump this tick; pysyncobj tries again on a later one
            if not before_dump(BEFORE_DUMP_WAIT_S):
                put_off_until[0] = now + DUMP_RETRY_S
                log.warning("raft dump put off: the event log is not on disk yet")
                return
            serialize(data, ident)

        serializer.serialize = serialize_after_history
    disk.sync_path(data_dir)  # the journal and meta files' names
    durability.settle()
    return durability


def _dirtying(method: Callable[..., Any], durability: Durability) -> Callable[..., Any]:
    def dirtying(*args: Any, **kwargs: Any) -> Any:
        durability.dirty = True
        return method(*args, **kwargs)

    return dirtying
