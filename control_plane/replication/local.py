"""``LocalReplicator``: the in-memory, single-node twin of ``RaftReplicator``.

Owns a local log (a queue of batches), an **apply** thread that applies it in order, and the same
group-commit machinery and futures semantics as the Raft implementation: one ``apply_entries`` call
per batch, results through futures, bounded waits, leadership callbacks on a notifier thread. It is
always the leader while running. Used by fast tests of the rest of the system.

Rules kept: the state machine is only ever touched by the apply thread (and by ``start()`` before
that thread exists); ``raft_index`` starts at the snapshot's index + 1 (1 on an empty start) and
grows by one per batch.

Optional persistence (``data_dir``): a snapshot file ``local.snapshot`` (pickle of
``{"format", "index", "term", "state": state_machine.snapshot()}``) is written at ``stop()`` and at
``compact_log()``, and restored at ``start()``; each start leads at the saved term + 1, so fencing by
term behaves as after a Raft failover. It is durable across clean restarts only: it stands in for
Raft's journal + dump in tests, it is not a production log. Pickling the snapshot also catches an
unpicklable replicated state early, as Raft compaction would.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ._group_commit import Batch, GroupCommitter, fail_future, guarded_apply, new_running_future
from ._notifier import LeadershipNotifier
from .api import LeadershipCallback, MemberStatus, QuorumStatus, Replicator, StateMachine
from .config import GroupCommitConfig
from .errors import NotSupportedError, ReplicationError, ReplicatorStoppedError

log = logging.getLogger(__name__)

LOCAL_SNAPSHOT_FILE = "local.snapshot"
SNAPSHOT_FORMAT = 1

_POLL_S = 0.25
_STOP = object()
_COMPACT = object()


class LocalReplicator(Replicator):
    def __init__(self, state_machine: StateMachine, *, self_address: str = "local:0",
                 group_commit: GroupCommitConfig | None = None, data_dir: Path | None = None,
                 stop_timeout_s: float = 10.0) -> None:
        self._state_machine = state_machine
        self._self_address = self_address
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._stop_timeout_s = stop_timeout_s
        self._name = f"local[{self_address}]"
        self._lifecycle = threading.Lock()
        self._state = "new"
        self._running = False
        self._term = 0
        self._applied_index = 0   # written by the apply thread only
        self._proposed_index = 0  # batches handed to the apply thread (the local "commit index")
        self._log: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._apply_thread: threading.Thread | None = None
        self._notifier_thread: threading.Thread | None = None
        self._notifier = LeadershipNotifier(self._name, self.term)
        self._committer = GroupCommitter(self._name, group_commit or GroupCommitConfig(), self._propose,
                                         self._refusal)

    @property
    def self_address(self) -> str:
        return self._self_address

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        with self._lifecycle:
            if self._state != "new":
                raise RuntimeError(f"{self._name}: a replicator starts once; build a new one to restart")
            self._state = "starting"
        saved_term = 0
        try:
            if self._data_dir is not None:
                self._data_dir.mkdir(parents=True, exist_ok=True)
                saved = self._read_snapshot()
                if saved is not None:
                    # Before the apply thread exists: nothing can interleave with restore().
                    self._state_machine.restore(saved["state"])
                    self._applied_index = self._proposed_index = int(saved["index"])  # type: ignore[call-overload]
                    saved_term = int(saved["term"])  # type: ignore[call-overload]
        except BaseException:
            with self._lifecycle:
                self._state = "stopped"
            raise
        self._term = saved_term + 1
        self._apply_thread = threading.Thread(target=self._apply_loop, name=f"{self._name}-apply", daemon=True)
        self._notifier_thread = threading.Thread(target=self._notifier.run, name=f"{self._name}-notifier",
                                                 daemon=True)
        self._apply_thread.start()
        self._notifier_thread.start()
        self._committer.start()
        self._running = True
        with self._lifecycle:
            self._state = "running"
        self._notifier.publish(True, self._term)

    def stop(self) -> None:
        with self._lifecycle:
            if self._state == "new":
                self._state = "stopped"
                return
            if self._state != "running":
                return
            self._state = "stopping"
        t = self._stop_timeout_s
        self._running = False
        self._committer.close_intake(t)
        # The apply thread drains every batch already in the log, then writes the final snapshot.
        self._log.put(_STOP)
        if self._apply_thread is not None:
            self._apply_thread.join(t)
            if self._apply_thread.is_alive():
                log.error("%s: apply thread did not stop within %.1f s", self._name, t)
        self._committer.shutdown(t)
        self._notifier.publish(False, self._term)
        self._notifier.request_stop()
        if self._notifier_thread is not None:
            self._notifier_thread.join(t)
        with self._lifecycle:
            self._state = "stopped"

    # ------------------------------------------------------------------ log

    def submit(self, entry: bytes) -> Future[object]:
        return self._committer.submit(entry)

    def _refusal(self) -> ReplicationError | None:
        return None if self._running else ReplicatorStoppedError()

    def _propose(self, batch: Batch) -> None:
        # Only the batcher thread proposes, so the index needs no lock.
        self._proposed_index += 1
        self._log.put(batch)

    def _apply_loop(self) -> None:
        while True:
            try:
                item = self._log.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is _STOP:
                if self._data_dir is not None:
                    self._write_snapshot()
                return
            if item is _COMPACT:
                if self._data_dir is not None:
                    self._write_snapshot()
                continue
            assert isinstance(item, Batch)
            self._applied_index += 1
            self._committer.post(item, guarded_apply(self._state_machine, self._applied_index, item.entries))

    def compact_log(self) -> None:
        if self._running:
            self._log.put(_COMPACT)

    def _snapshot_path(self) -> Path:
        assert self._data_dir is not None
        return self._data_dir / LOCAL_SNAPSHOT_FILE

    def _write_snapshot(self) -> None:
        path = self._snapshot_path()
        tmp = path.with_suffix(".tmp")
        try:
            data = {"format": SNAPSHOT_FORMAT, "index": self._applied_index, "term": self._term,
                    "state": self._state_machine.snapshot()}
            with open(tmp, "wb") as f:
                pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except Exception:  # noqa: BLE001 - keep the previous snapshot; say so loudly
            log.critical("%s: writing the local snapshot failed", self._name, exc_info=True)

    def _read_snapshot(self) -> dict[str, object] | None:
        path = self._snapshot_path()
        if not path.exists():
            return None
        with open(path, "rb") as f:
            data = pickle.load(f)
        if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"{path}: unknown local snapshot format")
        return data

    # ------------------------------------------------------------------ leadership and status

    def is_leader(self) -> bool:
        return self._running

    def leader(self) -> str | None:
        return self._self_address if self._running else None

    def term(self) -> int:
        return self._term

    def on_leadership_change(self, callback: LeadershipCallback) -> None:
        self._notifier.register(callback)

    def status(self) -> QuorumStatus:
        running = self._running
        applied = self._applied_index
        proposed = self._proposed_index
        return QuorumStatus(
            self_address=self._self_address,
            leader=self._self_address if running else None,
            term=self._term,
            commit_index=proposed,
            last_applied=applied,
            has_quorum=running,
            members=(MemberStatus(self._self_address, True, None, True),),
            log_len=max(0, proposed - applied),
        )

    def add_member(self, address: str) -> Future[None]:
        return self._unsupported("add_member")

    def remove_member(self, address: str) -> Future[None]:
        return self._unsupported("remove_member")

    def transfer_leadership(self, address: str | None = None) -> Future[str]:
        return self._unsupported("transfer_leadership")

    def _unsupported(self, what: str) -> Future[Any]:
        fut: Future[Any] = new_running_future()
        fail_future(fut, NotSupportedError(f"{what} is not supported on a single-node local log"))
        return fut
