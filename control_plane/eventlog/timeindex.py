"""The last event recorded before a time, without scanning the log: `TimeBlocks`.

"As of time T" names the last event (highest seq) recorded at or before T (`timepoints.resolve_point`).
Entry times are the leader's clock when it decided the entry, so they mostly grow with seq but may step
back a little (writes decided in parallel commit in another order; a new leader's clock): the answer is
not the event with the highest time at or before T, and a bisection on seq could miss it. Reading the
log backwards from its end until an event at or before T is exact but costs every event after the
answer: ~0.4 s for a time early in a log of 1,000,000 events.

`TimeBlocks` keeps, for each block of `BLOCK` consecutive seqs, the lowest time recorded in it. The block
holding the answer is the highest one whose lowest time is before T (every later block holds only events
after T), so a lookup walks the kept minima from the top down and reads one block's rows. The minima of
complete blocks (all `BLOCK` events stored: no event can be added to it any more) are kept once read; an
incomplete block (the last one, the first after a prune, one with a hole) is read again each time. A
prune only removes events, so a kept minimum can only be lower than the block's now: the block is then
read and found to hold no event before T, and the walk goes on below it. The first lookup below events
never looked at reads their times once (in chunks of `CHUNK` blocks, the same cost as the scan it
replaces); ~8 bytes per `BLOCK` events are kept (1,000,000 events: ~1,000 floats).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

__all__ = ["BLOCK", "CHUNK", "TimeBlocks"]

BLOCK = 1024  # events per block
CHUNK = 64  # blocks whose minima are read by one query

# (block number, lowest time, events stored) for the blocks with events between two seqs (inclusive); the
# block of seq s is (s - 1) // BLOCK
Minima = Callable[[int, int], Sequence[tuple[int, float, int]]]
# the highest seq between two seqs (inclusive) whose time is before a time, or None
LastBefore = Callable[[int, int, float], int | None]


class TimeBlocks:
    """The lowest time of each complete block of `BLOCK` seqs, read lazily (see the module docstring);
    thread-safe (a lookup's reads are outside the lock; two lookups may read the same block once each)."""

    def __init__(self, block: int = BLOCK, chunk: int = CHUNK) -> None:
        if block < 1 or chunk < 1:
            raise ValueError("block and chunk must be positive")
        self.block, self.chunk = block, chunk
        self._lock = threading.Lock()
        self._low: dict[int, float] = {}  # complete block -> the lowest time recorded in it

    def seq_before(self, until: float, first: int, last: int, minima: Minima, last_before: LastBefore) -> int | None:
        """The highest seq in first..last whose time is before `until` (None: none), reading through
        `minima` and `last_before` (the store's queries)."""
        if last < max(first, 1):
            return None
        size = self.block
        first = max(first, 1)
        top, bottom = (last - 1) // size, (first - 1) // size  # block b: seqs b * size + 1 ..(b + 1) * size
        b = top
        while b >= bottom:
            with self._lock:
                low = self._low.get(b)
            if low is None:
                low = self._read(b, max(bottom, b - self.chunk + 1), first, last, minima)
            if low is not None and low < until:
                found = last_before(max(b * size + 1, first), min(b * size + size, last), until)
                if found is not None:
                    return found
            b -= 1
        return None

    def _read(self, b: int, down_to: int, first: int, last: int, minima: Minima) -> float | None:
        """Read the minima of blocks `down_to`..`b` (keeping the complete ones); block `b`'s, or None when
        it holds no event. Blocks already kept are not read again."""
        size = self.block
        with self._lock:
            while down_to < b and down_to in self._low:
                down_to += 1
        rows = minima(max(down_to * size + 1, first), min(b * size + size, last))
        found: float | None = None
        with self._lock:
            for block, low, count in rows:
                if count == size:
                    self._low[block] = low
                if block == b:
                    found = low
        return found

    def kept(self) -> int:
        """How many blocks' minima are kept (for tests and memory figures)."""
        with self._lock:
            return len(self._low)
