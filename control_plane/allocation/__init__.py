"""Allocation: which framework is offered what, decided by a pure function over a snapshot.

The leader's loop calls `snapshot_from_state(state, now)` then `allocate(snapshot, new_id=..., now=...)`
(or keeps an `Allocator` and calls `update(snapshot)` then `allocate(...)`), and commits the offers it
gets as `IssueOffers`. Nothing here reads a clock, draws random numbers, does I/O or touches the state:
time and ids come in as arguments, the snapshot is a frozen copy. The theory of operation (two stages,
weighted DRF, quota headroom and limits, reservations, filters) is in `allocation.allocator`; what the
snapshot holds and why is in `allocation.snapshot`; the DRF sorter is `allocation.sorter`.
"""

from tessera.control_plane.allocation.allocator import (
    MIN_ALLOCATABLE_CPUS,
    MIN_ALLOCATABLE_MEM,
    Allocator,
    allocate,
    dominant_shares,
    is_allocatable,
)
from tessera.control_plane.allocation.snapshot import (
    AgentSnapshot,
    AllocationSnapshot,
    FrameworkSnapshot,
    RoleSnapshot,
    snapshot_from_state,
)
from tessera.control_plane.allocation.sorter import DRFSorter, dominant_share

__all__ = [
    "MIN_ALLOCATABLE_CPUS",
    "MIN_ALLOCATABLE_MEM",
    "AgentSnapshot",
    "AllocationSnapshot",
    "Allocator",
    "DRFSorter",
    "FrameworkSnapshot",
    "RoleSnapshot",
    "allocate",
    "dominant_share",
    "dominant_shares",
    "is_allocatable",
    "snapshot_from_state",
]
