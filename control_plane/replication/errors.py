"""Errors raised (through futures) by the replication layer.

Owns the vocabulary a caller needs to decide what to do after a write did not succeed:

* ``NotLeaderError``: the entry was **definitely not** appended by this node; go to ``leader_hint``.
* ``UnknownOutcomeError``: the entry **may or may not** have been applied ("maybe applied"); the
  caller retries with the same request id and relies on the state machine's de-duplication.
* ``StateMachineError``: the entry was committed, but the state machine raised or returned a
  malformed result while applying it (a bug in the state machine; the cluster keeps running).

Rules kept here: these are plain ``Exception`` subclasses with no dependency on pysyncobj, so the
master can map them to gRPC status codes without importing the Raft library.
"""

from __future__ import annotations


class ReplicationError(Exception):
    """Base class of every error produced by ``tessera.control_plane.replication``."""


class NotLeaderError(ReplicationError):
    """This node cannot accept writes; the entry was not appended to any log by this node.

    ``leader_hint`` is the Raft address of the leader as known locally (possibly stale), or None.
    """

    def __init__(self, leader_hint: str | None, message: str | None = None) -> None:
        self.leader_hint = leader_hint
        text = message or (
            f"not the leader; leader is {leader_hint}" if leader_hint else "not the leader; leader unknown"
        )
        super().__init__(text)


class ReplicatorStoppedError(NotLeaderError):
    """The replicator is not running (not started yet, or stopped). The entry was not appended.

    A subclass of ``NotLeaderError`` (with no hint) because the caller's reaction is the same:
    this node cannot take the write, try the leader.
    """

    def __init__(self, message: str = "the replicator is not running") -> None:
        super().__init__(None, message)


class UnknownOutcomeError(ReplicationError):
    """The entry may or may not have been applied. Retry with the same request id.

    ``reason`` is a short machine-readable tag: one of pysyncobj's failure names (``LEADER_CHANGED``,
    ``DISCARDED``, ``UNKNOWN_OUTCOME``, ``QUEUE_FULL``, ``REQUEST_DENIED``) or one of ours
    (``TIMEOUT``, ``STOPPED``, ``PROPOSE_FAILED``).
    """

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(message or f"outcome unknown ({reason}); retry with the same request id")


class StateMachineError(ReplicationError):
    """The entry was committed but the state machine failed to apply it (raised, or returned a
    result list of the wrong shape). The same failure happened on every node, deterministically."""


class EntryTooLargeError(ReplicationError, ValueError):
    """The entry exceeds ``GroupCommitConfig.max_entry_bytes``; it was not appended."""


class QuorumChangeError(ReplicationError):
    """A membership change or leadership transfer was refused (``reason`` says why)."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(message or reason)


class NotSupportedError(ReplicationError):
    """The operation does not exist for this implementation (e.g. membership on a local log)."""
