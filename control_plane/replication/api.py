"""The contract between the master and its replicated log.

Owns the three shapes every other package codes against:

* ``StateMachine``: what the master hands to a replicator (opaque bytes in, results out);
* ``Replicator``: what the master calls (submit, leadership, quorum status, membership);
* ``QuorumStatus`` / ``MemberStatus``: a snapshot of the local node's view of the quorum.

Rules kept here (and by every implementation, checked by one shared contract test suite):

1. ``apply_entries`` is called on every node, in log order, exactly once per committed batch per
   life of the state machine (after ``restore()`` numbering continues from the snapshot).
2. ``raft_index`` is the Raft log index of the replicated call that carried the batch. It strictly
   increases from one call to the next within a life, with gaps (Raft no-op and membership entries
   take indices too). ``(raft_index, position in entries)`` is a unique, ordered position for each
   entry, identical on every node.
3. A future returned by ``submit`` always resolves within a bounded time: with the state machine's
   result for that entry, or with one of the errors in ``errors.py``.
4. Leadership callbacks run on a thread owned by the replicator, never on the Raft thread, so they
   may block (briefly: later notifications wait for them).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

LeadershipCallback = Callable[[bool, int], None]


@runtime_checkable
class StateMachine(Protocol):
    """The replicated state, opaque to the replication layer."""

    def apply_entries(self, raft_index: int, entries: list[bytes]) -> list[object]:
        """Apply one committed batch; return exactly one result per entry, in order.

        Must be deterministic and should never raise. It runs on one thread of the replicator, in log
        order (pysyncobj's tick thread, which also runs elections, or the Raft replicator's apply thread
        with ``ReplicationConfig.apply_thread``), and must be fast and do no I/O. If it raises anyway, the replicator
        logs it and fails each entry's future with ``StateMachineError``; it does not wedge Raft.
        """
        ...

    def snapshot(self) -> object:
        """Return a picklable object holding the whole replicated state.

        Called on the Raft thread at log compaction, once every batch up to the dump's index is applied
        and while nothing else is applied; the Raft implementation pickles the returned object in a forked child, so returning a reference to the live state (not a deep copy) is
        correct and keeps the Raft thread fast. Must not raise.
        """
        ...

    def restore(self, snap: object) -> None:
        """Replace the whole state with a snapshot taken by ``snapshot()`` (on startup, or when the
        leader installs a snapshot on a lagging follower). Entries already applied in this life
        are superseded: after ``restore`` numbering continues from the snapshot's index + 1."""
        ...


@dataclass(frozen=True)
class MemberStatus:
    address: str
    # Raft TCP connection to this member is up (from this node's point of view). Always True for self.
    connected: bool
    # Highest log index known replicated on the member; only the leader knows it, else None.
    match_index: int | None
    is_self: bool


@dataclass(frozen=True)
class QuorumStatus:
    self_address: str
    leader: str | None
    term: int
    commit_index: int
    last_applied: int
    # pysyncobj's notion: a majority of voting members are *connected* (TCP), not acknowledged.
    has_quorum: bool
    members: tuple[MemberStatus, ...]
    # Raft entries currently retained in the log (since the last compaction).
    log_len: int

    @property
    def is_leader(self) -> bool:
        return self.leader is not None and self.leader == self.self_address


class Replicator(abc.ABC):
    """A replicated log driving a ``StateMachine``. One instance runs once: ``start()``, then
    ``stop()``; to restart a node build a new replicator (with a fresh state machine) over the same
    data directory."""

    @property
    @abc.abstractmethod
    def self_address(self) -> str: ...

    @abc.abstractmethod
    def start(self) -> None:
        """Start the node (bind, recover from disk, start threads). Raises on failure; calling it
        a second time raises RuntimeError."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the node and join every thread it started (bounded). Idempotent. Pending entries
        fail with ``ReplicatorStoppedError`` (never appended) or ``UnknownOutcomeError('STOPPED')``
        (already proposed)."""

    @abc.abstractmethod
    def submit(self, entry: bytes) -> Future[object]:
        """Replicate one entry through group commit. See the module doc, rule 3."""

    @abc.abstractmethod
    def is_leader(self) -> bool: ...

    @abc.abstractmethod
    def leader(self) -> str | None:
        """Raft address of the leader as known locally (may be stale), or None."""

    @abc.abstractmethod
    def term(self) -> int: ...

    @abc.abstractmethod
    def status(self) -> QuorumStatus: ...

    @abc.abstractmethod
    def add_member(self, address: str) -> Future[None]:
        """Add a voting member (call on the leader, then start the new node with every current
        member as its peers). Resolves once the change is committed."""

    @abc.abstractmethod
    def remove_member(self, address: str) -> Future[None]:
        """Remove a voting member (not self: transfer leadership first). Resolves once committed."""

    @abc.abstractmethod
    def transfer_leadership(self, address: str | None = None) -> Future[str]:
        """Hand leadership to ``address`` (or the most caught-up follower). Resolves with the new
        leader's address once this node sees another node lead."""

    @abc.abstractmethod
    def on_leadership_change(self, callback: LeadershipCallback) -> None:
        """Register ``callback(is_leader_now, term)``; called on every gain or loss of leadership by
        this node (including loss at ``stop()``). A callback registered while this node leads is
        first called with ``(True, term)``."""

    @abc.abstractmethod
    def compact_log(self) -> None:
        """Ask for a snapshot of the state machine soon (asynchronous; returns immediately)."""
