"""Weighted DRF: dominant resource shares and the sorter that orders clients by them.

A client's *dominant share* is the largest, over the resource kinds of the cluster, of the fraction of
the cluster's total it holds: a role holding 10 of 100 cpus and 512 of 1024 MiB has a dominant share of
0.5. Its *weighted* dominant share divides that by its weight, so a role of weight 3 may hold three times
what a role of weight 1 holds before it sorts after it. Only scalar kinds with a positive total count
(ports are per agent and never add up across agents).

`DRFSorter` is a min-priority queue of client names keyed by (weighted share, name): the name breaks
ties, so the order never depends on dict or set iteration (every master sorts alike). It is a binary heap
with lazy invalidation: `update` pushes a new entry and makes the old one stale; `pop` discards stale
entries. A client taken out with `pop` is out of the queue until `push_back`, which is how the allocator
walks clients in share order for one agent and then puts them back with their new shares. Every
operation is O(log n) amortized; the heap is compacted when stale entries outnumber live ones.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping

__all__ = ["DRFSorter", "dominant_share"]


def dominant_share(allocated: Mapping[str, int], inverse_total: Mapping[str, float]) -> float:
    """max over kinds of allocated / total (unweighted). `inverse_total` maps each kind with a positive
    total to 1 / total; kinds the cluster does not have are ignored."""
    share = 0.0
    for name, amount in allocated.items():
        inverse = inverse_total.get(name)
        if inverse is not None and amount > 0:
            fraction = amount * inverse
            if fraction > share:
                share = fraction
    return share


class DRFSorter:
    """Clients (role names, or framework ids within a role) ordered by (share, name)."""

    __slots__ = ("_heap", "_share", "_version", "_queued")

    def __init__(self, clients: Iterable[tuple[str, float]] = ()) -> None:
        self._share: dict[str, float] = {}
        self._version: dict[str, int] = {}
        self._queued: set[str] = set()
        self._heap: list[tuple[float, str, int]] = []
        for name, share in clients:
            self._share[name] = share
            self._version[name] = 0
            self._queued.add(name)
            self._heap.append((share, name, 0))
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._queued)

    def __contains__(self, name: object) -> bool:
        return name in self._share

    def share(self, name: str) -> float:
        return self._share[name]

    def shares(self) -> dict[str, float]:
        return dict(self._share)

    def add(self, name: str, share: float) -> None:
        """Add a client (or re-key one already known) and queue it."""
        self._share[name] = share
        self._push(name)

    def remove(self, name: str) -> None:
        """Forget a client: its queued entries become stale."""
        self._share.pop(name, None)
        self._version[name] = self._version.get(name, 0) + 1
        self._queued.discard(name)

    def update(self, name: str, share: float) -> None:
        """Re-key a client. A queued client moves in the queue; a popped one stays out until push_back."""
        self._share[name] = share
        if name in self._queued:
            self._push(name)

    def pop(self) -> str | None:
        """The queued client with the lowest (share, name), taken out of the queue; None when empty."""
        heap, version = self._heap, self._version
        while heap:
            _, name, v = heapq.heappop(heap)
            if version.get(name) == v and name in self._queued:
                self._queued.discard(name)
                return name
        return None

    def push_back(self, name: str) -> None:
        """Queue a popped client again at its current share."""
        if name in self._share and name not in self._queued:
            self._push(name)

    def sorted(self) -> list[str]:
        """Every known client in (share, name) order (queued or not); O(n log n), for tests and metrics."""
        return sorted(self._share, key=lambda n: (self._share[n], n))

    def _push(self, name: str) -> None:
        v = self._version.get(name, 0) + 1
        self._version[name] = v
        self._queued.add(name)
        heap = self._heap
        heapq.heappush(heap, (self._share[name], name, v))
        if len(heap) > 4 * len(self._queued) + 64:
            self._compact()

    def _compact(self) -> None:
        version = self._version
        self._heap = [e for e in self._heap if version.get(e[1]) == e[2] and e[1] in self._queued]
        heapq.heapify(self._heap)
