"""Group commit and future bookkeeping shared by the Raft and the local replicator.

Owns three threads-worth of machinery, independent of pysyncobj:

* the **batcher** thread gathers concurrently submitted entries for at most ``linger_s`` (or until a
  size bound) and hands each batch to a ``propose`` function: one replicated call per batch;
* the **completer** thread receives completions posted by the engine (pysyncobj's tick thread, or
  the local apply thread) and resolves the futures. Posting is one queue put, so the Raft thread
  never runs future callbacks or wakes waiting threads itself;
* a **tracker** of everything in flight (batches, membership changes, transfers), each with a
  deadline: whatever has not completed by its deadline is failed by the completer, so no future
  waits forever, whatever the engine does.

Rules kept: an entry is either refused before it is proposed (``NotLeaderError`` family: it was
never appended) or proposed exactly once; after proposal the only outcomes are the state machine's
result, ``StateMachineError``, or ``UnknownOutcomeError``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeoutError
from concurrent.futures._base import FINISHED as _FINISHED
from concurrent.futures._base import RUNNING as _RUNNING
from typing import Any, cast

from .api import StateMachine
from .config import GroupCommitConfig
from .errors import (
    EntryTooLargeError,
    ReplicationError,
    ReplicatorStoppedError,
    StateMachineError,
    UnknownOutcomeError,
)

log = logging.getLogger(__name__)

# Bytes accounted per entry on top of its length (pickle framing of a bytes object in a list).
ENTRY_OVERHEAD_BYTES = 8
# Upper bound of any single internal wait, so every loop re-checks its stop flag regularly.
_POLL_S = 0.25
# How often the completer scans deadlines and polls pending operations.
_SCAN_S = 0.05

_STOP = object()


class ApplyFailure:
    """Returned (never raised) from the replicated method when the state machine failed: an
    exception inside a pysyncobj replicated method would wedge every node of the cluster."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"ApplyFailure({self.message!r})"


def guarded_apply(state_machine: StateMachine, raft_index: int, entries: list[bytes]) -> list[object] | ApplyFailure:
    """Call ``apply_entries`` and never raise: a failure becomes an ``ApplyFailure`` value."""
    try:
        results = state_machine.apply_entries(raft_index, entries)
    except Exception as exc:  # noqa: BLE001 - anything escaping would wedge Raft on every node
        log.exception("state machine apply_entries raised at raft index %d (%d entries)", raft_index, len(entries))
        return ApplyFailure(f"apply_entries raised {type(exc).__name__}: {exc}")
    if not isinstance(results, list):
        try:
            results = list(results)
        except Exception:  # noqa: BLE001
            log.error("state machine apply_entries returned a non-sequence at raft index %d", raft_index)
            return ApplyFailure(f"apply_entries returned {type(results).__name__}, not a list")
    if len(results) != len(entries):
        log.error(
            "state machine apply_entries returned %d results for %d entries at raft index %d",
            len(results), len(entries), raft_index,
        )
        return ApplyFailure(f"apply_entries returned {len(results)} results for {len(entries)} entries")
    return results


def fail_future(fut: Future[Any], exc: BaseException) -> None:
    if not fut.done():
        try:
            fut.set_exception(exc)
        except Exception:  # noqa: BLE001 - raced with another resolver; the first outcome stands
            pass


# One lock for the rare creation of a CommitFuture's condition (a thread about to block on it).
_CONDITION_CREATION = threading.Lock()


class CommitFuture(Future[Any]):
    """The future of one replicated write: a ``concurrent.futures.Future`` (``asyncio.wrap_future``,
    ``concurrent.futures.wait`` and ``as_completed`` accept it) that callers cannot cancel — a
    replicated write cannot be taken back — and that is cheap to make, since there is one per write.

    The standard future builds a ``threading.Condition`` (a Python object over an ``RLock``) in its
    constructor and goes through it, in Python, on every call. Here a plain ``Lock`` guards the state,
    and the condition over that same lock is made only when a thread is about to block on the future
    (``result``/``exception`` before it is done, or ``wait``/``as_completed``). Most writes are resolved
    before anyone waits on them, or are awaited through a callback.
    """

    def __init__(self) -> None:  # the base __init__ is not called: it would build the condition
        self._lock = threading.Lock()
        self._cond: threading.Condition | None = None
        self._state = _RUNNING  # never PENDING: nothing can cancel it
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Callable[[Future[Any]], object]] = []

    @property  # type: ignore[override]
    def _condition(self) -> threading.Condition:
        """The condition over the future's lock, made on first use (read by the base class's
        ``__repr__`` and by ``concurrent.futures.wait``/``as_completed``)."""
        cond = self._cond
        if cond is None:
            with _CONDITION_CREATION:
                cond = self._cond
                if cond is None:
                    cond = self._cond = threading.Condition(self._lock)
        return cond

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return self._state != _FINISHED

    def done(self) -> bool:
        return self._state == _FINISHED

    def add_done_callback(self, fn: Callable[[Future[Any]], object]) -> None:
        with self._lock:
            if self._state != _FINISHED:
                self._done_callbacks.append(fn)
                return
        try:
            fn(self)
        except Exception:
            log.exception("exception calling callback for %r", self)

    def _wait_finished(self, timeout: float | None) -> None:
        if self._state == _FINISHED:
            return
        cond = self._condition
        with cond:
            if self._state != _FINISHED:
                cond.wait(timeout)
            if self._state != _FINISHED:
                raise FutureTimeoutError()

    def result(self, timeout: float | None = None) -> Any:
        self._wait_finished(timeout)
        if self._exception is not None:
            raise self._exception
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait_finished(timeout)
        return self._exception

    def set_running_or_notify_cancel(self) -> bool:
        raise RuntimeError("a CommitFuture is running from the start")

    def set_result(self, result: Any) -> None:
        self._finish(result, None)

    def set_exception(self, exception: BaseException | None) -> None:
        self._finish(None, exception)

    def _finish(self, result: Any, exception: BaseException | None) -> None:
        with self._lock:
            if self._state == _FINISHED:
                raise InvalidStateError(f"{type(self).__name__} at {id(self):#x} is already resolved")
            self._result = result
            self._exception = exception
            self._state = _FINISHED
            for waiter in self._waiters:
                if exception is None:
                    waiter.add_result(self)
                else:
                    waiter.add_exception(self)
            if self._cond is not None:
                self._cond.notify_all()
        for callback in self._done_callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("exception calling callback for %r", self)
        self._done_callbacks = []


def new_running_future() -> Future[Any]:
    """A future that callers cannot cancel: a replicated write cannot be taken back."""
    return CommitFuture()


class Tracked:
    """Something in flight whose outcome arrives later through ``GroupCommitter.post``."""

    __slots__ = ("deadline",)

    def __init__(self, timeout_s: float) -> None:
        self.deadline = time.monotonic() + timeout_s

    def resolve(self, payload: object) -> None:
        """Called once on the completer thread with what the engine posted."""
        raise NotImplementedError

    def expire(self, reason: str) -> None:
        """Called once on the completer thread when the deadline passed or the node stopped."""
        raise NotImplementedError

    def poll(self) -> bool:
        """Called regularly on the completer thread; return True once finished by itself."""
        return False

    @property
    def wants_poll(self) -> bool:
        return False


class Batch(Tracked):
    """One group-commit batch: one replicated call. Holds one in-flight slot until it is untracked."""

    __slots__ = ("entries", "futures")

    def __init__(self, entries: list[bytes], futures: list[Future[Any]], timeout_s: float) -> None:
        super().__init__(timeout_s)
        self.entries = entries
        self.futures = futures

    def resolve(self, payload: object) -> None:
        # payload: a results list, an ApplyFailure, or a ReplicationError for the whole batch.
        if isinstance(payload, ReplicationError):
            for fut in self.futures:
                fail_future(fut, payload)
        elif isinstance(payload, ApplyFailure):
            err = StateMachineError(payload.message)
            for fut in self.futures:
                fail_future(fut, err)
        elif isinstance(payload, list) and len(payload) == len(self.futures):
            for fut, result in zip(self.futures, payload, strict=True):
                try:
                    fut.set_result(result)
                except InvalidStateError:  # already failed by someone else; the first outcome stands
                    pass
        else:
            err = StateMachineError(f"malformed batch result {type(payload).__name__}")
            for fut in self.futures:
                fail_future(fut, err)

    def expire(self, reason: str) -> None:
        err = UnknownOutcomeError(reason, f"batch outcome unknown ({reason}); retry with the same request id")
        for fut in self.futures:
            fail_future(fut, err)


class GroupCommitter:
    """Collects entries into batches and resolves their futures. Engine-agnostic.

    ``refuse()`` returns an exception when this node must not take writes now (not the leader), else
    None; it is checked at submit and again just before a batch is proposed. ``propose(batch)`` must
    not block and must eventually lead to ``post(batch, payload)``. ``post`` may be called on the
    engine's own thread (pysyncobj's tick thread): there it frees the batch's in-flight slot and, if
    entries are waiting, proposes the next batch at once ("pump"), so the log stays busy under load
    even when the batcher thread is slow to get the GIL among many request threads. Futures are
    resolved on the completer thread, so no future callback ever runs on the Raft thread; or, with
    ``complete``, on the replicator's apply thread right after it applied the batch.
    """

    def __init__(self, name: str, settings: GroupCommitConfig,
                 propose: Callable[[Batch], None], refuse: Callable[[], ReplicationError | None]) -> None:
        self._name = name
        self._settings = settings
        self._propose = propose
        self._refuse = refuse
        self._cond = threading.Condition(threading.Lock())
        self._pending: deque[tuple[bytes, Future[Any]]] = deque()
        self._pending_bytes = 0
        self._lingering = False
        self._accepting = False
        self._slots = threading.BoundedSemaphore(settings.max_batches_in_flight)
        # Held while taking entries and proposing them, so batches are proposed in the order their
        # entries were submitted, whichever thread (batcher or pump) proposes.
        self._propose_lock = threading.Lock()
        self._inflight: dict[int, Tracked] = {}
        self._inflight_lock = threading.Lock()
        self._tracking_closed = False
        self._completions: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._batcher: threading.Thread | None = None
        self._completer: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._accepting = True
        self._batcher = threading.Thread(target=self._batch_loop, name=f"{self._name}-batcher", daemon=True)
        self._completer = threading.Thread(target=self._complete_loop, name=f"{self._name}-completer", daemon=True)
        self._completer.start()
        self._batcher.start()

    def close_intake(self, timeout_s: float) -> None:
        """Stop taking entries; fail the ones never proposed; join the batcher."""
        with self._cond:
            self._accepting = False
            self._cond.notify_all()
        if self._batcher is not None:
            self._batcher.join(timeout_s)
            if self._batcher.is_alive():
                log.error("%s: batcher thread did not stop within %.1f s", self._name, timeout_s)
        with self._propose_lock, self._cond:  # wait out a pump in progress
            leftovers = list(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
        stopped = ReplicatorStoppedError()
        for _, fut in leftovers:
            fail_future(fut, stopped)

    def shutdown(self, timeout_s: float) -> None:
        """After the engine can no longer post: resolve what was posted, expire the rest, join."""
        self._completions.put(_STOP)
        if self._completer is not None:
            self._completer.join(timeout_s)
            if self._completer.is_alive():
                log.error("%s: completer thread did not stop within %.1f s", self._name, timeout_s)
        # Whatever is still tracked can no longer complete.
        with self._inflight_lock:
            self._tracking_closed = True
            remaining = list(self._inflight.values())
            self._inflight.clear()
        for op in remaining:
            self._free_slot(op)
            self._safe(op.expire, "STOPPED")

    # ----------------------------------------------------------------- intake

    def submit(self, entry: bytes) -> Future[Any]:
        if type(entry) is not bytes:
            if isinstance(entry, (bytes, bytearray, memoryview)):
                entry = bytes(entry)
            else:
                raise TypeError(f"entry must be bytes, got {type(entry).__name__}")
        fut = new_running_future()
        size = len(entry)
        if size > self._settings.max_entry_bytes:
            fut.set_exception(EntryTooLargeError(
                f"entry of {size} bytes exceeds max_entry_bytes={self._settings.max_entry_bytes}"))
            return fut
        refusal = self._refuse()
        if refusal is not None:
            fut.set_exception(refusal)
            return fut
        settings = self._settings
        with self._cond:
            if not self._accepting:
                refusal = ReplicatorStoppedError()
            elif len(self._pending) >= settings.max_pending_entries:
                refusal = UnknownOutcomeError("QUEUE_FULL", "too many entries waiting for replication; retry later")
            else:
                was_empty = not self._pending
                self._pending.append((entry, fut))
                self._pending_bytes += size + ENTRY_OVERHEAD_BYTES
                # Wake the batcher only when it can act: work appeared, or a lingering batch is full.
                if was_empty or (self._lingering and (self._pending_bytes >= settings.max_batch_bytes
                                                      or len(self._pending) >= settings.max_batch_entries)):
                    self._cond.notify()
        if refusal is not None:
            fut.set_exception(refusal)
        return fut

    def track(self, op: Tracked) -> bool:
        """Watch ``op`` until it completes or expires. False once shut down: nothing would complete
        it any more, so the caller must fail it itself."""
        with self._inflight_lock:
            if self._tracking_closed:
                return False
            self._inflight[id(op)] = op
            return True

    def untrack(self, op: Tracked) -> bool:
        """Remove ``op``; True for exactly one caller, who then owns its outcome."""
        with self._inflight_lock:
            return self._inflight.pop(id(op), None) is not None

    def post(self, op: Tracked, payload: object) -> None:
        """Hand an outcome over. Non-blocking and cheap: safe on the Raft thread."""
        if not self.untrack(op):
            return  # already expired (or a duplicate outcome): the first outcome stands
        self._completions.put((op, payload))
        if self._free_slot(op):
            self._pump()

    def complete(self, op: Tracked, payload: object) -> None:
        """Resolve ``op`` with ``payload`` on the calling thread (not the Raft thread: the replicator's apply
        thread, which has just applied the batch). One thread hand-off less per batch than ``post``: the
        futures' callbacks run here, after the next batch is proposed."""
        if not self.untrack(op):
            return
        if self._free_slot(op):
            self._pump()
        self._safe(op.resolve, payload)

    def _free_slot(self, op: Tracked) -> bool:
        if isinstance(op, Batch):
            self._slots.release()
            return True
        return False

    # ----------------------------------------------------------------- batcher

    def _batch_loop(self) -> None:
        settings = self._settings
        try:
            while True:
                with self._cond:
                    while not self._pending and self._accepting:
                        self._cond.wait(_POLL_S)
                    if not self._accepting:
                        return
                # Wait for an in-flight slot; entries keep accumulating meanwhile (adaptive batching).
                waited = False
                while not self._slots.acquire(timeout=_POLL_S):
                    waited = True
                    if not self._accepting:
                        return
                if not waited and settings.linger_s > 0:
                    self._linger(settings)
                with self._propose_lock:
                    with self._cond:
                        entries, futures = self._take(settings)
                    if not entries:  # a pump took them meanwhile
                        self._slots.release()
                        continue
                    self._dispatch(entries, futures)
        except Exception:  # noqa: BLE001 - a dead batcher would hang every submitter until timeout
            log.exception("%s: batcher thread crashed", self._name)
            with self._cond:
                self._accepting = False

    def _pump(self) -> None:
        """Propose waiting entries now if a slot is free (called where a slot was just freed)."""
        if not self._pending or not self._accepting:
            return
        if not self._propose_lock.acquire(blocking=False):
            return  # the batcher is proposing right now; it will see the free slot next
        try:
            if not self._slots.acquire(blocking=False):
                return
            with self._cond:
                entries, futures = self._take(self._settings)
            if not entries:
                self._slots.release()
                return
            self._dispatch(entries, futures)
        finally:
            self._propose_lock.release()

    def _linger(self, settings: GroupCommitConfig) -> None:
        deadline = time.monotonic() + settings.linger_s
        with self._cond:
            self._lingering = True
            try:
                while (self._accepting and self._pending_bytes < settings.max_batch_bytes
                       and len(self._pending) < settings.max_batch_entries):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            finally:
                self._lingering = False

    def _take(self, settings: GroupCommitConfig) -> tuple[list[bytes], list[Future[Any]]]:
        entries: list[bytes] = []
        futures: list[Future[Any]] = []
        pending = self._pending
        budget = settings.max_batch_bytes
        limit = settings.max_batch_entries
        used = 0
        while pending and len(entries) < limit:
            entry = pending[0][0]
            cost = len(entry) + ENTRY_OVERHEAD_BYTES
            if entries and used + cost > budget:
                break
            entry, fut = pending.popleft()
            entries.append(entry)
            futures.append(fut)
            used += cost
        self._pending_bytes -= used
        return entries, futures

    def _dispatch(self, entries: list[bytes], futures: list[Future[Any]]) -> None:
        """Propose one batch; the caller holds a slot and the propose lock."""
        refusal = self._refuse()
        if refusal is not None:
            # Lost leadership while the entries waited: they were never proposed. Failed by the
            # completer, since this may run on the Raft thread (pump).
            self._slots.release()
            self._completions.put((Batch(entries, futures, 0.0), refusal))
            return
        batch = Batch(entries, futures, self._settings.commit_timeout_s)
        if not self.track(batch):
            self._slots.release()
            batch.resolve(ReplicatorStoppedError())  # shut down before proposing: never appended
            return
        try:
            self._propose(batch)
        except Exception as exc:  # noqa: BLE001
            log.exception("%s: proposing a batch of %d entries failed", self._name, len(entries))
            if self.untrack(batch):
                self._slots.release()
                self._completions.put((batch, UnknownOutcomeError("PROPOSE_FAILED", f"proposing failed: {exc}")))

    # ----------------------------------------------------------------- completer

    def _complete_loop(self) -> None:
        next_scan = time.monotonic() + _SCAN_S
        while True:
            timeout = max(0.0, min(_POLL_S, next_scan - time.monotonic()))
            try:
                item = self._completions.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._drain_completions()
                return
            if item is not None:
                op, payload = cast(tuple[Tracked, object], item)
                self._safe(op.resolve, payload)
            now = time.monotonic()
            if now >= next_scan:
                next_scan = now + _SCAN_S
                self._scan(now)

    def _drain_completions(self) -> None:
        while True:
            try:
                item = self._completions.get_nowait()
            except queue.Empty:
                return
            if item is _STOP:
                continue
            op, payload = cast(tuple[Tracked, object], item)
            self._safe(op.resolve, payload)

    def _scan(self, now: float) -> None:
        with self._inflight_lock:
            ops = list(self._inflight.values())
        for op in ops:
            if op.wants_poll and self._safe(op.poll):
                self.untrack(op)
                continue
            if op.deadline <= now and self.untrack(op):
                self._free_slot(op)
                self._safe(op.expire, "TIMEOUT")

    def _safe(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:  # noqa: BLE001 - the completer must survive a buggy future callback
            log.exception("%s: completing an operation failed", self._name)
            return False
