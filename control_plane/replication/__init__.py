"""Replication: the replicated log under the master. The only package of Tessera importing pysyncobj.

The master hands a ``StateMachine`` (opaque bytes in, results out) to a ``Replicator`` and calls
``submit(entry) -> Future``. Two implementations pass one contract test suite:

* ``RaftReplicator(config, state_machine)``: a pysyncobj Raft node (3 or 5 masters), group commit,
  journal + dump in ``config.data_dir``;
* ``LocalReplicator(state_machine)``: an in-memory single-node twin with the same futures semantics,
  for fast tests of the rest of the system.

Errors a caller must handle are in ``errors`` (``NotLeaderError``: not appended, go to the leader;
``UnknownOutcomeError``: maybe applied, retry with the same request id). See ``api`` for the rules.
"""

from .api import LeadershipCallback, MemberStatus, QuorumStatus, Replicator, StateMachine
from .config import RAFT_DUMP_FILE, RAFT_JOURNAL_FILE, GroupCommitConfig, ReplicationConfig
from .errors import (
    EntryTooLargeError,
    NotLeaderError,
    NotSupportedError,
    QuorumChangeError,
    ReplicationError,
    ReplicatorStoppedError,
    StateMachineError,
    UnknownOutcomeError,
)
from .local import LocalReplicator
from .raft import RaftReplicator

__all__ = [
    "RAFT_DUMP_FILE",
    "RAFT_JOURNAL_FILE",
    "EntryTooLargeError",
    "GroupCommitConfig",
    "LeadershipCallback",
    "LocalReplicator",
    "MemberStatus",
    "NotLeaderError",
    "NotSupportedError",
    "QuorumChangeError",
    "QuorumStatus",
    "RaftReplicator",
    "ReplicationConfig",
    "ReplicationError",
    "Replicator",
    "ReplicatorStoppedError",
    "StateMachine",
    "StateMachineError",
    "UnknownOutcomeError",
]
