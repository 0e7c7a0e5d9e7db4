"""``RaftReplicator``: the replicated log on pysyncobj, one node of a Raft cluster of masters.

Owns one pysyncobj node and the threads around it:

* an **owner** thread constructs the ``SyncObj`` and then delivers leadership notifications.
  pysyncobj's tick thread exits silently as soon as the thread that built the ``SyncObj`` ends, so
  it must be built on a thread that lives exactly as long as the node, not on the caller's;
* pysyncobj's **tick** thread does all Raft work and runs ``_ReplicatedLog.apply_batch`` on every
  node (which, with an apply thread, only queues the batch); our callbacks there only put one item on
  a queue;
* with ``ReplicationConfig.apply_thread`` (off by default), the **apply** thread (``_applier``) applies
  committed batches to the state machine in log order and resolves each proposed batch's futures;
* the group-commit **batcher** and **completer** threads (``_group_commit``).

The node is built from the parts it shares with the simulation (``sim``): its configuration and
consumer (``pysyncobj_node``, which states the rules of the replicated method and the snapshot), the
journal aligned with the dump before loading (``journal_alignment``), durable acknowledgements
(``durability``) and the consensus guards (``consensus_guards``); and, the real network's own, the Raft port guard (``raft_port_guard``). It
refuses to start on a pysyncobj release other than the one those were written for (``pysyncobj_release``).

Rules kept here (see /work/shared/notes/pysyncobj-measured.md §8):

1. pysyncobj fsyncs nothing; ``durability`` makes it (unless ``ReplicationConfig.fsync`` is False):
   the journal is on disk before the node acknowledges an entry or counts itself for one, so an
   acknowledged write survives the power loss of every master.
2. No ``sync=True`` anywhere: every pysyncobj call passes a callback, and every future has a
   deadline enforced by the completer.
3. pysyncobj state is read from other threads only through single attribute reads (``_isLeader``,
   ``raftCurrentTerm``...) or ``getStatus()`` (retried if a dict changed size under it); anything
   that sends on the network (``transferLeadership``) runs on the tick thread.

Known pysyncobj behaviours callers should know: on startup entries from the journal may be applied
before the dump is loaded, then ``restore()`` replaces the state and application resumes after the
dump's index (indices can repeat across a ``restore``); the membership stored in the dump overrides
the configured peers (issue #133).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj
from pysyncobj.syncobj import SyncObjException

from ._applier import Applier, PendingApply
from ._group_commit import Batch, GroupCommitter, Tracked, fail_future, new_running_future
from ._notifier import LeadershipNotifier
from .api import LeadershipCallback, MemberStatus, QuorumStatus, Replicator, StateMachine
from .config import ReplicationConfig, parse_address
from .consensus_guards import install_consensus_guards
from .durability import FsyncDisk, install_durability
from .errors import (
    NotLeaderError,
    QuorumChangeError,
    ReplicationError,
    ReplicatorStoppedError,
    UnknownOutcomeError,
)
from .journal_alignment import align_journal_with_dump
from .pysyncobj_node import _ReplicatedLog, syncobj_conf
from .pysyncobj_release import check_pysyncobj_version
from .raft_port_guard import guarded_transport

log = logging.getLogger(__name__)

# pysyncobj's raft states as passed to onStateChanged and reported by getStatus()['state'].
_STATE_LEADER = 2

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

    def __init__(self, config: ReplicationConfig, state_machine: StateMachine,
                 before_dump: Callable[[float], bool] | None = None) -> None:
        """``before_dump(timeout)``: True once whatever the applied entries wrote outside the Raft files
        (the master's event log) is on disk; a dump waits for it (``durability``; with ``fsync`` only)."""
        check_pysyncobj_version()
        self._before_dump = before_dump
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
        self._applier = Applier(name, state_machine, config.apply_queue_entries) if config.apply_thread else None
        self._consumer = _ReplicatedLog(state_machine, self._applier)
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
            if self._applier is not None:  # before the tick thread applies the journal's entries
                self._applier.start()
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
        if self._applier is not None:
            self._applier.stop(t)
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
        if cfg.fsync:  # before the guards: see install_durability
            install_durability(so, FsyncDisk(), cfg.data_dir, cfg.dump_file, before_dump=self._before_dump)
        install_consensus_guards(so, pre_vote=cfg.pre_vote)
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
        # The tick thread is gone: nothing more is queued for apply. Apply what was (its results are
        # posted), then no more completions can arrive: resolve what did, expire the rest.
        if self._applier is not None:
            self._applier.stop(t)
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
        # On the tick thread: only hand over. The apply thread resolves the batch's futures once it has
        # applied it; a failure is posted after the batches queued before it, so outcomes keep log order.
        if err == FAIL_REASON.SUCCESS:
            if isinstance(result, PendingApply):  # resolved on the apply thread once applied
                result.then(functools.partial(self._committer.complete, batch))
            else:
                self._committer.post(batch, result)
            return
        failure = map_fail_reason(err, self._leader_hint())
        if self._applier is not None:
            self._applier.call(functools.partial(self._committer.post, batch, failure))
        else:
            self._committer.post(batch, failure)

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
            last_applied=self._last_applied(int(raw["last_applied"])),
            has_quorum=bool(raw["has_quorum"]),
            members=tuple(members),
            log_len=int(raw["log_len"]),
        )

    def _last_applied(self, handed_over: int) -> int:
        applier = self._applier
        return applier.last_applied(handed_over) if applier is not None else handed_over

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
