"""The status-update manager: per-task ordered streams of updates that must reach the master.

Pure: no I/O, no clock, no randomness. Times come in as arguments (`now`), so a test drives it with plain
numbers and the runtime with `time.monotonic()`.

Rules it keeps (docs/protocol.md, step 6):
- Every update has a uuid and belongs to its task's stream; streams are FIFO. Only the head of a stream
  is ever sent, so the master sees each task's updates in the order they happened and never has to
  refuse an update for coming before an older one it has not seen.
- With a master that decides a task's updates of one message in order (`Registered.ordered_streams`),
  `due(whole_streams=True)` sends a due stream whole, oldest first, in one message: the master still
  sees them in order, and records them in one entry instead of one commit per update.
- A head is (re)sent when it is due: at once when it becomes the head, then after `RetryPolicy.delay`
  (initial, doubling, capped) until it is acknowledged.
- An acknowledgement of the head pops it and makes the next update of that stream due at once. An
  acknowledgement of a later update in the stream also pops everything older (the master has recorded a
  newer state; the lifecycle table would refuse the older ones). An acknowledgement of a uuid that was
  acknowledged before is a harmless duplicate; of a uuid never seen, an unknown one.
- `reset` (a new connection) makes every head due at once, with a fresh backoff: what was in flight on
  a broken stream may never have arrived.
- `supersede` drops the updates older than a given one (after a re-registration reported the newest
  status of the task and the master recorded it).

Streams are keyed by the task's `TaskKey(framework_id, task_id)`: task ids are scoped per framework, so
two frameworks' `web-1` on one agent have a stream each.

The manager does not persist anything; the agent writes each update to its checkpoint before `add`, and
each acknowledgement after `acknowledge` says what to mark.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from tessera.control_plane.core.values import TaskKey, TaskStatus
from tessera.control_plane.wire import Backoff

ACKED_MEMORY = 10_000  # acknowledged uuids remembered to tell duplicates from unknown acks


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry delays after a send: initial, initial*factor, ... capped at `maximum` seconds — the one
    backoff policy (`tessera.control_plane.wire.Backoff`) without jitter, counted from the first send."""

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 60.0

    def __post_init__(self) -> None:
        self.backoff  # noqa: B018 - refuse a bad policy when it is made, not at the first retry

    @property
    def backoff(self) -> Backoff:
        return Backoff(initial=self.initial, maximum=self.maximum, multiplier=self.factor, jitter=0.0)

    def delay(self, attempts: int) -> float:
        """The wait after the `attempts`-th send of the same update (attempts >= 1)."""
        return self.backoff.delay(attempts - 1, 0.0) if attempts >= 1 else 0.0


@dataclass(frozen=True, slots=True)
class PendingUpdate:
    status: TaskStatus
    traceparent: str = ""

    @property
    def uuid(self) -> str:
        return self.status.uuid

    @property
    def task_id(self) -> str:
        return self.status.task_id

    @property
    def key(self) -> TaskKey:
        return TaskKey(self.status.framework_id, self.status.task_id)


class AckOutcome(enum.Enum):
    ACKED = "acked"  # the head (and, when it was deeper in the stream, every older update) is done
    DUPLICATE = "duplicate"  # this uuid was acknowledged before
    UNKNOWN = "unknown"  # never seen: nothing to do


@dataclass(frozen=True, slots=True)
class AckResult:
    outcome: AckOutcome
    removed: tuple[str, ...] = ()  # uuids now done, oldest first (the acknowledged one last)


@dataclass(slots=True)
class _Stream:
    updates: deque[PendingUpdate] = field(default_factory=deque)
    attempts: int = 0  # sends of the current head
    next_send: float = 0.0  # when the head is due


class StatusUpdateManager:
    """Ordered, acknowledged delivery of task status updates, one stream per task."""

    def __init__(self, policy: RetryPolicy | None = None) -> None:
        self.policy = policy or RetryPolicy()
        self.retries = 0  # re-sends since start (a metric)
        self._streams: dict[TaskKey, _Stream] = {}
        self._uuids: set[str] = set()  # pending uuids
        self._acked: OrderedDict[str, None] = OrderedDict()

    # ---- adding --------------------------------------------------------------------------------------
    def add(self, update: PendingUpdate, now: float) -> None:
        """Append to the task's stream; a new head is due at `now`. Raises ValueError on a bad uuid."""
        uuid = update.uuid
        if not uuid:
            raise ValueError(f"status update of task {update.task_id} has no uuid")
        if uuid in self._uuids or uuid in self._acked:
            raise ValueError(f"status update {uuid} was added before")
        stream = self._streams.get(update.key)
        if stream is None:
            stream = self._streams[update.key] = _Stream()
        if not stream.updates:
            stream.attempts, stream.next_send = 0, now
        stream.updates.append(update)
        self._uuids.add(uuid)

    def recover(self, updates: Iterable[PendingUpdate], now: float) -> None:
        """Load unacknowledged updates from the checkpoint, oldest first; every head is due at `now`."""
        for update in updates:
            self.add(update, now)

    # ---- sending ---------------------------------------------------------------------------------------
    def due(self, now: float, *, whole_streams: bool = False) -> list[PendingUpdate]:
        """Heads to send now; each is counted as sent and its next retry scheduled. With `whole_streams`
        (a master that decides a task's updates of one message in order), each due stream is sent whole,
        oldest first: the head and every update queued behind it, which the master records in one entry;
        its acknowledgements pop them all."""
        out: list[PendingUpdate] = []
        for stream in self._streams.values():
            if stream.updates and stream.next_send <= now:
                stream.attempts += 1
                if stream.attempts > 1:
                    # a re-send of updates the master has not acknowledged yet (every update of a whole stream)
                    self.retries += len(stream.updates) if whole_streams else 1
                stream.next_send = now + self.policy.delay(stream.attempts)
                if whole_streams:
                    out.extend(stream.updates)
                else:
                    out.append(stream.updates[0])
        return out

    def next_due(self) -> float | None:
        """The earliest time a head is due, or None when nothing is pending."""
        times = [s.next_send for s in self._streams.values() if s.updates]
        return min(times) if times else None

    def reset(self, now: float) -> None:
        """A new connection: every head is due at `now` with a fresh backoff."""
        for stream in self._streams.values():
            stream.attempts, stream.next_send = 0, now

    # ---- acknowledgements -----------------------------------------------------------------------------
    def acknowledge(self, key: TaskKey, uuid: str, now: float) -> AckResult:
        stream = self._streams.get(key)
        if stream is None or uuid not in self._uuids:
            return AckResult(AckOutcome.DUPLICATE if uuid in self._acked else AckOutcome.UNKNOWN)
        position = next((i for i, u in enumerate(stream.updates) if u.uuid == uuid), None)
        if position is None:  # the uuid is pending in another task's stream: a confused ack
            return AckResult(AckOutcome.UNKNOWN)
        removed = self._pop(key, stream, position + 1, now)
        return AckResult(AckOutcome.ACKED, removed)

    def find(self, uuid: str) -> TaskKey | None:
        """The task whose stream holds the pending update `uuid` (for an acknowledgement that does not
        name the task's framework: from a master of an earlier version)."""
        if uuid not in self._uuids:
            return None
        return next((k for k, s in self._streams.items() if any(u.uuid == uuid for u in s.updates)), None)

    def supersede(self, key: TaskKey, uuid: str, now: float) -> tuple[str, ...]:
        """Drop the updates of the task `key` older than `uuid` (which stays pending)."""
        stream = self._streams.get(key)
        if stream is None:
            return ()
        position = next((i for i, u in enumerate(stream.updates) if u.uuid == uuid), None)
        if not position:
            return ()
        return self._pop(key, stream, position, now)

    def drop_task(self, key: TaskKey) -> tuple[str, ...]:
        """Forget a task's stream without acknowledgement (the master no longer knows the task)."""
        stream = self._streams.pop(key, None)
        if stream is None:
            return ()
        removed = tuple(u.uuid for u in stream.updates)
        self._uuids.difference_update(removed)
        return removed

    def _pop(self, key: TaskKey, stream: _Stream, count: int, now: float) -> tuple[str, ...]:
        removed = tuple(stream.updates.popleft().uuid for _ in range(count))
        for uuid in removed:
            self._uuids.discard(uuid)
            self._acked[uuid] = None
        while len(self._acked) > ACKED_MEMORY:
            self._acked.popitem(last=False)
        stream.attempts, stream.next_send = 0, now
        if not stream.updates:
            del self._streams[key]
        return removed

    # ---- queries -----------------------------------------------------------------------------------------
    def pending(self, key: TaskKey | None = None) -> list[PendingUpdate]:
        """Unacknowledged updates, oldest first (of one task, or of every task by (framework, task id))."""
        if key is not None:
            stream = self._streams.get(key)
            return list(stream.updates) if stream else []
        return [u for k in sorted(self._streams) for u in self._streams[k].updates]

    def head(self, key: TaskKey) -> PendingUpdate | None:
        stream = self._streams.get(key)
        return stream.updates[0] if stream and stream.updates else None

    def latest(self, key: TaskKey) -> PendingUpdate | None:
        stream = self._streams.get(key)
        return stream.updates[-1] if stream and stream.updates else None

    def has_pending(self, key: TaskKey) -> bool:
        return key in self._streams

    def task_keys(self) -> Iterator[TaskKey]:
        return iter(sorted(self._streams))

    def __len__(self) -> int:
        return len(self._uuids)
