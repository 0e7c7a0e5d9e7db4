"""The apply thread of a Raft node: committed batches applied off pysyncobj's tick thread, in log order.

pysyncobj calls the replicated method (``_ReplicatedLog.apply_batch``) on its one tick thread, the thread
that also receives AppendEntries, syncs the journal, sends replies and counts the commit index. Applying
there made every batch's apply time part of each Raft round trip: a leader could not send the next batch,
nor a follower acknowledge it, while it applied the previous one (profile of issue 22: apply 26 % of the
leader's tick thread). ``Applier`` moves the state machine to its own thread: the tick thread only queues
``(raft_index, entries)`` and goes on; the apply thread calls ``guarded_apply`` for each batch, in the order
queued, and hands each result to whoever waits for it (``PendingApply.then``).

Rules kept:

1. **Log order.** One thread applies, in queue order; the tick thread queues in log order. Calls queued with
   ``call`` (the failures pysyncobj reports for a proposed batch) run in the same order, after every batch
   queued before them: a proposer sees its outcomes in the order Raft decided them.
2. **Dumps and restores see the applied state.** pysyncobj takes a dump (``_serialize``, then the fork of
   ``serializer.serialize``) and restores one (``_deserialize``) on the tick thread, the only thread that
   queues batches. ``drain()`` there waits until every queued batch is applied; until the tick thread
   returns nothing new is queued, so the state stays exactly the state as of ``raftLastApplied`` through
   the dump's fork or the restore (the apply thread is idle, holding no lock).
3. **Bounded.** At most ``max_entries`` entries wait: beyond that ``apply`` blocks the tick thread until the
   apply thread catches up (the backpressure applying inline gave), so a follower whose apply is slower than
   the commit rate does not grow an unbounded queue, and a ``drain`` never waits longer than applying that
   many entries takes.
4. **Durability unchanged.** Acknowledgements depend on the journal sync (``durability``), never on apply;
   results are still delivered only after the entries are committed *and* applied.
5. Never raises into pysyncobj: ``guarded_apply`` turns a failing state machine into an ``ApplyFailure``.

``stop()`` applies what is queued (the tick thread has stopped by then) and ends the thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from ._group_commit import guarded_apply
from .api import StateMachine

log = logging.getLogger(__name__)

# Entries queued for apply before the tick thread waits: at ~10-15 us per entry about 0.1 s of apply,
# well under the election timeout (0.3 s), so a drain before a dump never holds the tick thread longer.
DEFAULT_MAX_QUEUED_ENTRIES = 8192
_POLL_S = 0.25


class PendingApply:
    """The outcome of one queued batch: set once by the apply thread, read once by a continuation."""

    __slots__ = ("_lock", "_done", "_payload", "_then")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = False
        self._payload: object = None
        self._then: Callable[[object], None] | None = None

    def set(self, payload: object) -> None:
        with self._lock:
            self._payload = payload
            self._done = True
            then, self._then = self._then, None
        if then is not None:
            then(payload)

    def then(self, fn: Callable[[object], None]) -> None:
        """Call ``fn(payload)`` once the batch is applied (at once if it already is)."""
        with self._lock:
            if not self._done:
                self._then = fn
                return
        fn(self._payload)

    @property
    def done(self) -> bool:
        return self._done


class Applier:
    """Applies queued batches to ``state_machine`` on one thread. See the module docstring."""

    def __init__(self, name: str, state_machine: StateMachine,
                 max_entries: int = DEFAULT_MAX_QUEUED_ENTRIES) -> None:
        self._name = name
        self._state_machine = state_machine
        self._max_entries = max(1, max_entries)
        self._cond = threading.Condition(threading.Lock())
        # items: (raft_index, entries, pending) for a batch, or a callable
        self._queue: deque[tuple[int, list[bytes], PendingApply] | Callable[[], None]] = deque()
        self._queued_entries = 0
        self._busy = False  # the apply thread holds an item it took from the queue
        self._room_wanted = False  # the producer waits for the queue to shrink
        self._max_wait_s = 10.0  # bound of the wait for a stopped thread's leftovers
        self._running = False
        self._thread: threading.Thread | None = None
        self.applied_batches = 0  # for tests and the benchmark
        self.applied_index = 0  # raft index of the last batch applied
        self._current_index: int | None = None  # raft index of the batch being applied

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        with self._cond:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._loop, name=f"{self._name}-apply", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Apply what is queued, then end the thread (bounded). Call after the producer has stopped."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("%s: apply thread did not stop within %.1f s", self._name, timeout_s)

    # ----------------------------------------------------------------- producer side (tick thread)

    def apply(self, raft_index: int, entries: list[bytes]) -> PendingApply:
        """Queue one committed batch; its results arrive through the returned ``PendingApply``."""
        pending = PendingApply()
        size = len(entries)
        with self._cond:
            while self._running and self._queued_entries and self._queued_entries + size > self._max_entries:
                self._room_wanted = True
                self._cond.wait(_POLL_S)
            if self._running:
                was_idle = not self._queue and not self._busy
                self._queue.append((raft_index, entries, pending))
                self._queued_entries += size
                if was_idle:
                    self._cond.notify_all()
                return pending
        # Not started, or stopped: apply here, as pysyncobj alone would, after what was queued before.
        self.drain(self._max_wait_s)
        self._run((raft_index, entries, pending))
        return pending

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the apply thread after everything queued so far (at once when not running)."""
        with self._cond:
            if self._running:
                was_idle = not self._queue and not self._busy
                self._queue.append(fn)
                if was_idle:
                    self._cond.notify_all()
                return
        fn()

    def drain(self, timeout_s: float | None) -> bool:
        """Wait until every queued batch is applied; False if ``timeout_s`` passed first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._busy:
                if threading.current_thread() is self._thread:
                    return False  # never wait for ourselves
                remaining = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    @property
    def queued_entries(self) -> int:
        return self._queued_entries

    def last_applied(self, handed_over: int) -> int:
        """The Raft index the state is at, given pysyncobj's ``raftLastApplied`` (``handed_over``: what it
        handed to the replicated method, or took itself, like no-op and membership entries): just before
        the first batch not applied yet (being applied, or queued), else ``handed_over``. (Not the index
        of the last batch applied: after a restore the state is the snapshot's, and the batches after it
        are applied again.)"""
        with self._cond:
            first = self._current_index
            if first is None:
                first = next((item[0] for item in self._queue if not callable(item)), None)
        return handed_over if first is None else min(handed_over, first - 1)

    # ----------------------------------------------------------------- the apply thread

    def _loop(self) -> None:
        cond = self._cond
        queue = self._queue
        while True:
            with cond:
                while not queue:
                    self._current_index = None
                    if self._busy:
                        self._busy = False
                        cond.notify_all()  # drainers and a producer waiting for room
                    if not self._running:
                        return
                    cond.wait(_POLL_S)
                item = queue.popleft()
                self._busy = True
                self._current_index = None
                if not callable(item):
                    self._current_index = item[0]
                    self._queued_entries -= len(item[1])
                    if self._room_wanted:
                        self._room_wanted = False
                        cond.notify_all()
            self._run(item)

    def _run(self, item: tuple[int, list[bytes], PendingApply] | Callable[[], None]) -> None:
        """Apply one batch (or run one call) taken from the queue."""
        try:
            if callable(item):
                item()
            else:
                raft_index, entries, pending = item
                results = guarded_apply(self._state_machine, raft_index, entries)
                self.applied_index = raft_index
                self.applied_batches += 1
                pending.set(results)
        except Exception:  # noqa: BLE001 - the apply thread must survive a failing continuation
            log.exception("%s: delivering an applied batch failed", self._name)
