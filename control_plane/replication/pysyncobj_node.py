"""What a Tessera pysyncobj node is built from, shared by ``RaftReplicator`` (``raft``) and the
deterministic simulation (``sim.SimRaftNode``), so both run the same configuration and the same
replicated method:

* ``syncobj_conf``: the ``SyncObjConf`` of a node from its ``ReplicationConfig``;
* ``_ReplicatedLog``: the node's one ``SyncObjConsumer``, a pass-through to the state machine with one
  replicated method, ``apply_batch(entries: list[bytes])``, and the snapshot ``{"format", "state"}``.
  Given an ``Applier`` (``RaftReplicator``), the replicated method only queues the batch for the apply
  thread and returns its ``PendingApply``; a dump or a restore first waits for that thread to apply
  everything queued (``_applier``). Without one (the simulation) it applies on the calling thread.

Rules kept (see /work/shared/notes/pysyncobj-measured.md §8):

1. Method ids are positional: never rename or remove ``apply_batch``; add new replicated methods only with
   ``@replicated(ver=N)`` and ``setCodeVersion``.
2. ``apply_batch`` never raises (``guarded_apply``): an exception there wedges every node forever.
3. The consumer is fully built *before* the ``SyncObj`` (no init race can overwrite a restored snapshot),
   and its snapshot is exactly ``state_machine.snapshot()`` (nothing unpicklable of ours goes in).
4. Journal and dump files are always both set.

``raft_index``: inside ``apply_batch``, pysyncobj has not yet incremented ``raftLastApplied`` for the
entry being applied (``__applyLogEntries`` increments it after the call, and applies contiguous
entries), so the entry's own Raft log index is ``raftLastApplied + 1``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pysyncobj import SyncObjConf, SyncObjConsumer, replicated

from ._applier import Applier, PendingApply
from ._group_commit import ApplyFailure, guarded_apply
from .api import StateMachine
from .config import ReplicationConfig

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
# How long a dump waits on the tick thread for the apply thread to apply what is queued (a bounded queue:
# ~0.1 s of apply); past it the dump is put off (pysyncobj retries compaction on a later tick).
APPLY_DRAIN_TIMEOUT_S = 5.0


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


class _ReplicatedLog(SyncObjConsumer):  # type: ignore[misc]
    """The pysyncobj consumer: a pass-through to the state machine, with no state of its own."""

    def __init__(self, state_machine: StateMachine, applier: Applier | None = None) -> None:
        # Assigned before SyncObjConsumer.__init__ so they are excluded from the default snapshot too
        # (belt and braces: _serialize below is overridden anyway).
        self._state_machine = state_machine
        self._applier = applier
        super().__init__()

    @replicated  # type: ignore[untyped-decorator]
    def apply_batch(self, entries: list[bytes]) -> list[object] | ApplyFailure | PendingApply:
        sync_obj = self._syncObj
        raft_index = sync_obj.raftLastApplied + 1 if sync_obj is not None else -1
        applier = self._applier
        if applier is not None:
            return applier.apply(raft_index, entries)
        return guarded_apply(self._state_machine, raft_index, entries)

    def _wait_applied(self, what: str) -> None:
        """On the tick thread: every batch pysyncobj counts as applied is applied to the state."""
        applier = self._applier
        if applier is not None and not applier.drain(APPLY_DRAIN_TIMEOUT_S):
            log.error("the apply thread did not apply the queued batches within %.1f s; %s put off",
                      APPLY_DRAIN_TIMEOUT_S, what)
            raise TimeoutError(f"apply thread behind; {what} put off")

    def _serialize(self) -> dict[str, object]:
        # On the tick thread at compaction; pickling happens afterwards (in a forked child when the
        # dump file is used), so a reference to the live state is a consistent snapshot: the apply
        # thread has applied everything up to the dump's index and stays idle until the tick thread,
        # its only producer, returns from the fork. Raising keeps the journal (compaction is retried).
        self._wait_applied("log compaction")
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
        # Batches queued before the snapshot must not land on it. No time limit: pysyncobj logs and
        # ignores an exception here and goes on with a half-loaded dump, which would be worse than waiting.
        applier = self._applier
        while applier is not None and not applier.drain(APPLY_DRAIN_TIMEOUT_S):
            log.error("the apply thread has not applied the queued batches in %.1f s; the snapshot waits",
                      APPLY_DRAIN_TIMEOUT_S)
        try:
            self._state_machine.restore(data["state"])
        except Exception:
            log.critical("state machine restore() raised; this node's state is not trustworthy", exc_info=True)
            raise
