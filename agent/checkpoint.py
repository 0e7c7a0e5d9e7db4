"""The agent's checkpoint, `agent.db`: what must survive a `kill -9` of the agent.

One SQLite file written through sqlite-utils, WAL journal, `synchronous=FULL` (a status update that
was written here is on disk before it is sent). Tables:

- `meta`: `agent_id`, `highest_term` (the fencing term: commands carrying a lower one are ignored, also
  after a restart), `registration_request_id` (the idempotency key of a first registration, kept until
  it is answered so a retry after a crash cannot register the machine twice).
- `tasks`: one row per task, keyed by (framework_id, task_id) (task ids are scoped per framework, so two
  frameworks may each run a `web-1` here): the TaskInfo (protobuf bytes), the sandbox, the supervisor's pid and start
  time (to find it again without trusting a recycled pid), the isolation spec (JSON), the latest state,
  the kill request, `done` (terminal and every update acknowledged), and the principal of the task's
  framework as the master's RunTask said (what the file service checks readers against; a column added
  in place to older files, empty for their tasks).
- `updates`: the status-update stream of every task, in order (`seq`), with the task's framework and id,
  the TaskStatus (protobuf bytes), its uuid, the RunTask's traceparent and the `acknowledged` flag.

Rules it keeps:
- A status update is inserted (and the task's state changed) in one transaction, BEFORE it is sent.
- Group commit: the agent loop wraps each turn in `batch()`, so the writes of that turn share one
  transaction and one fsync. Inside a batch every write is still atomic on its own (a savepoint), and
  `sync()` commits what was written so far: the agent calls it before anything leaves the process (a
  message to the master, a supervisor started, a signal sent), so nothing is acted on before it is on
  disk.
- Writes are serialized by a lock: the agent loop is the only writer, but tests and tools read too.
- Protobuf bytes, not pickles: the file is readable by any later version (`tessera.control_plane.codec`).
- Schema 1 keyed tasks by task id alone; opening such a file upgrades it in place to schema 2 (its ids
  were unique on the agent, so each update takes its task's framework).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid as uuidlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from tessera.control_plane.codec import from_proto, to_proto
from tessera.control_plane.core.values import TaskInfo, TaskKey, TaskState, TaskStatus
from tessera.v1 import common_pb2

SCHEMA_VERSION = 2  # 2: tasks keyed by (framework_id, task_id)


def task_info_to_bytes(info: TaskInfo) -> bytes:
    return bytes(to_proto(info, common_pb2.TaskInfo).SerializeToString())


def task_info_from_bytes(data: bytes) -> TaskInfo:
    msg = common_pb2.TaskInfo()
    msg.ParseFromString(data)
    return from_proto(msg, TaskInfo)


def status_to_bytes(status: TaskStatus) -> bytes:
    return bytes(to_proto(status, common_pb2.TaskStatus).SerializeToString())


def status_from_bytes(data: bytes) -> TaskStatus:
    msg = common_pb2.TaskStatus()
    msg.ParseFromString(data)
    return from_proto(msg, TaskStatus)


@dataclass(frozen=True)
class TaskRecord:
    info: TaskInfo
    state: TaskState
    sandbox: str = ""
    supervisor_pid: int = 0
    supervisor_start: float = 0.0
    isolation: dict[str, Any] = field(default_factory=dict)
    kill_requested: bool = False
    kill_grace: float = 0.0
    done: bool = False
    traceparent: str = ""
    latest: TaskStatus | None = None
    principal: str = ""  # the framework's principal as the master recorded it ("": not told)

    @property
    def task_id(self) -> str:
        return self.info.task_id

    @property
    def key(self) -> TaskKey:
        return TaskKey(self.info.framework_id, self.info.task_id)


@dataclass(frozen=True)
class StoredUpdate:
    status: TaskStatus
    traceparent: str
    acknowledged: bool
    seq: int


class Checkpoint:
    """agent.db. Open with `Checkpoint.open(path)`; every method is safe to call from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._batch = False  # a batch transaction is open
        self._dirty = False  # written to since the last commit of the batch
        self.db = sqlite_utils.Database(sqlite3.connect(str(self.path), check_same_thread=False))
        self.db.enable_wal()
        self.db.execute("PRAGMA synchronous=FULL")
        self._create()

    @classmethod
    def open(cls, path: Path | str) -> Checkpoint:
        return cls(Path(path))

    def _create(self) -> None:
        with self._lock:
            meta, tasks, updates = (self.db.table(name) for name in ("meta", "tasks", "updates"))
            meta.create({"key": str, "value": str}, pk="key", if_not_exists=True)
            tasks.create(
                {"task_id": str, "framework_id": str, "info": bytes, "state": int, "sandbox": str,
                 "supervisor_pid": int, "supervisor_start": float, "isolation": str,
                 "kill_requested": int, "kill_grace": float, "done": int, "traceparent": str,
                 "created_seq": int},
                pk=("framework_id", "task_id"), not_null={"info", "state"}, if_not_exists=True,
            )
            updates.create(
                {"seq": int, "framework_id": str, "task_id": str, "uuid": str, "state": int, "status": bytes,
                 "traceparent": str, "acknowledged": int},
                pk="seq", not_null={"task_id", "uuid", "status"}, if_not_exists=True,
            )
            self._upgrade_to_task_keys()
            if "principal" not in tasks.columns_dict:  # added for the file service (docs/files.md)
                tasks.add_column("principal", str, not_null_default="")
            updates.create_index(["uuid"], unique=True, if_not_exists=True)
            updates.create_index(["framework_id", "task_id", "seq"], if_not_exists=True)
            tasks.create_index(["done"], if_not_exists=True)
            if self._get("schema_version") != str(SCHEMA_VERSION):
                self._set("schema_version", str(SCHEMA_VERSION))

    def _upgrade_to_task_keys(self) -> None:
        """Schema 1 -> 2: tasks keyed by (framework_id, task_id), updates naming their task's framework."""
        tasks, updates = self.db.table("tasks"), self.db.table("updates")
        if "framework_id" not in updates.columns_dict:
            updates.add_column("framework_id", str)
            self.db.execute("UPDATE updates SET framework_id = COALESCE((SELECT t.framework_id FROM tasks t "
                            "WHERE t.task_id = updates.task_id), '')")
        if tasks.pks != ["framework_id", "task_id"]:
            tasks.transform(pk=("framework_id", "task_id"))
        self.db.conn.commit()

    @contextmanager
    def _tx(self) -> Iterator[sqlite_utils.Database]:
        with self._lock, self.db.atomic():
            if self._batch:
                self._dirty = True
            yield self.db

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for every write made inside (nested batches join the outer one); committed
        at the end, also when the block raises (what was written stays written, as without a batch)."""
        with self._lock:
            if self._batch:
                yield
                return
            self.db.execute("BEGIN")
            self._batch, self._dirty = True, False
            try:
                yield
            finally:
                self._batch, self._dirty = False, False
                if self.db.conn.in_transaction:
                    self.db.execute("COMMIT")

    @property
    def in_batch(self) -> bool:
        return self._batch

    def sync(self) -> None:
        """Inside a batch: commit (and fsync) what was written so far, and go on in a new transaction."""
        with self._lock:
            if self._batch and self._dirty:
                self.db.execute("COMMIT")
                self.db.execute("BEGIN")
                self._dirty = False

    # ---- meta ----------------------------------------------------------------------------------------
    def _get(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return None if row is None else str(row[0])

    def _set(self, key: str, value: str | None) -> None:
        with self._tx() as db:
            if value is None:
                db.execute("DELETE FROM meta WHERE key = ?", [key])
            else:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [key, value])

    @property
    def agent_id(self) -> str:
        with self._lock:
            return self._get("agent_id") or ""

    def set_agent_id(self, agent_id: str) -> None:
        """Store the id the master gave us, and forget the registration request that asked for it."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('agent_id', ?)", [agent_id])
            db.execute("DELETE FROM meta WHERE key = 'registration_request_id'")

    def clear_agent_id(self) -> None:
        self._set("agent_id", None)

    @property
    def highest_term(self) -> int:
        with self._lock:
            return int(self._get("highest_term") or 0)

    def observe_term(self, term: int) -> bool:
        """Remember `term` if it is the highest seen; True when it was stored (it rose)."""
        with self._lock:
            if term <= self.highest_term:
                return False
            self._set("highest_term", str(int(term)))
            return True

    def registration_request_id(self) -> str:
        """The idempotency key of the pending first registration (created and stored on first use)."""
        with self._lock:
            value = self._get("registration_request_id")
            if value is None:
                value = f"register-{uuidlib.uuid4()}"
                self._set("registration_request_id", value)
            return value

    # ---- tasks --------------------------------------------------------------------------------------
    def add_task(self, info: TaskInfo, *, traceparent: str = "",
                 state: TaskState = TaskState.TASK_STAGING, principal: str = "") -> None:
        with self._tx() as db:
            seq = db.execute("SELECT COALESCE(MAX(created_seq), 0) + 1 FROM tasks").fetchone()[0]
            # A task id seen before can only be one whose record was pruned long after it ended.
            db.execute("DELETE FROM updates WHERE framework_id = ? AND task_id = ?",
                       [info.framework_id, info.task_id])
            db.execute(
                "INSERT OR REPLACE INTO tasks (task_id, framework_id, info, state, sandbox, supervisor_pid, "
                "supervisor_start, isolation, kill_requested, kill_grace, done, traceparent, created_seq, principal) "
                "VALUES (?, ?, ?, ?, '', 0, 0, '{}', 0, 0, 0, ?, ?, ?)",
                [info.task_id, info.framework_id, task_info_to_bytes(info), int(state), traceparent, seq, principal],
            )

    def set_launched(self, key: TaskKey, *, sandbox: str, supervisor_pid: int, supervisor_start: float,
                     isolation: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE tasks SET sandbox = ?, supervisor_pid = ?, supervisor_start = ?, isolation = ? "
                "WHERE framework_id = ? AND task_id = ?",
                [sandbox, supervisor_pid, supervisor_start, json.dumps(isolation, sort_keys=True), *key],
            )

    def set_sandbox(self, key: TaskKey, sandbox: str, isolation: dict[str, Any]) -> None:
        """Record where a task will run before its supervisor starts (recovery looks there)."""
        with self._tx() as db:
            db.execute("UPDATE tasks SET sandbox = ?, isolation = ? WHERE framework_id = ? AND task_id = ?",
                       [sandbox, json.dumps(isolation, sort_keys=True), *key])

    def mark_kill(self, key: TaskKey, grace: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE tasks SET kill_requested = 1, kill_grace = ? WHERE framework_id = ? AND task_id = ?",
                       [grace, *key])

    def mark_done(self, key: TaskKey) -> None:
        with self._tx() as db:
            db.execute("UPDATE tasks SET done = 1 WHERE framework_id = ? AND task_id = ?", [*key])

    def tasks(self, include_done: bool = False) -> list[TaskRecord]:
        """Every task (not yet done, unless asked), in the order they were added."""
        with self._lock:
            rows = self.db.execute(
                "SELECT framework_id, task_id, info, state, sandbox, supervisor_pid, supervisor_start, isolation, "
                "kill_requested, kill_grace, done, traceparent, principal FROM tasks "
                + ("" if include_done else "WHERE done = 0 ") + "ORDER BY created_seq"
            ).fetchall()
            latest = self._latest_statuses()
        out = []
        for (framework_id, task_id, info, state, sandbox, pid, start, isolation, kill, grace, done, tp,
             principal) in rows:
            out.append(TaskRecord(
                info=task_info_from_bytes(info), state=TaskState(state), sandbox=sandbox or "",
                supervisor_pid=int(pid or 0), supervisor_start=float(start or 0.0),
                isolation=json.loads(isolation or "{}"), kill_requested=bool(kill), kill_grace=float(grace or 0),
                done=bool(done), traceparent=tp or "", latest=latest.get(TaskKey(framework_id or "", task_id)),
                principal=principal or "",
            ))
        return out

    def task(self, key: TaskKey) -> TaskRecord | None:
        return next((t for t in self.tasks(include_done=True) if t.key == key), None)

    def _latest_statuses(self) -> dict[TaskKey, TaskStatus]:
        rows = self.db.execute(
            "SELECT u.framework_id, u.task_id, u.status FROM updates u JOIN "
            "(SELECT MAX(seq) AS seq FROM updates GROUP BY framework_id, task_id) m ON u.seq = m.seq"
        ).fetchall()
        return {TaskKey(f or "", t): status_from_bytes(data) for f, t, data in rows}

    def prune_done(self, keep: int = 1000) -> int:
        """Delete done tasks (and their updates) beyond the newest `keep`; returns how many went."""
        with self._tx() as db:
            victims = [(r[0], r[1]) for r in db.execute(
                "SELECT framework_id, task_id FROM tasks WHERE done = 1 ORDER BY created_seq DESC LIMIT -1 OFFSET ?",
                [keep],
            ).fetchall()]
            for key in victims:
                db.execute("DELETE FROM updates WHERE framework_id = ? AND task_id = ?", [*key])
                db.execute("DELETE FROM tasks WHERE framework_id = ? AND task_id = ?", [*key])
        return len(victims)

    # ---- status updates --------------------------------------------------------------------------------
    def record_update(self, status: TaskStatus, traceparent: str = "") -> int:
        """Write `status` (the task's new state and its update) in one transaction; returns its seq."""
        if not status.uuid:
            raise ValueError("a checkpointed status update needs a uuid")
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO updates (framework_id, task_id, uuid, state, status, traceparent, acknowledged) "
                "VALUES (?, ?, ?, ?, ?, ?, 0)",
                [status.framework_id, status.task_id, status.uuid, int(status.state), status_to_bytes(status),
                 traceparent],
            )
            db.execute("UPDATE tasks SET state = ? WHERE framework_id = ? AND task_id = ?",
                       [int(status.state), status.framework_id, status.task_id])
            return int(cursor.lastrowid or 0)

    def acknowledge(self, uuids: Iterable[str]) -> None:
        with self._tx() as db:
            for uuid in uuids:
                db.execute("UPDATE updates SET acknowledged = 1 WHERE uuid = ?", [uuid])

    def unacknowledged(self) -> list[StoredUpdate]:
        """Updates not yet acknowledged, oldest first (the order they must be sent in, per task)."""
        with self._lock:
            rows = self.db.execute(
                "SELECT seq, status, traceparent FROM updates WHERE acknowledged = 0 ORDER BY seq"
            ).fetchall()
        return [StoredUpdate(status_from_bytes(data), tp or "", False, seq) for seq, data, tp in rows]

    def updates(self, key: TaskKey) -> list[StoredUpdate]:
        with self._lock:
            rows = self.db.execute(
                "SELECT seq, status, traceparent, acknowledged FROM updates WHERE framework_id = ? AND task_id = ? "
                "ORDER BY seq",
                [*key],
            ).fetchall()
        return [StoredUpdate(status_from_bytes(data), tp or "", bool(ack), seq) for seq, data, tp, ack in rows]

    def close(self) -> None:
        with self._lock:
            self.db.conn.close()
