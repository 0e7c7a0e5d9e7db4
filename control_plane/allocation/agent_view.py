"""An agent's free resources as the allocator reads them, and the proposals carved out of them.

`AgentView` parses an agent's free resources once (unreserved scalars and ranges, and per reservation
role); `Work` is what is still free on an agent during a round once something was taken from it; a
`Proposal` is what one role would be offered from it. `agent_order` is the seeded permutation a round
walks the agents in. Pure values and functions, no I/O, like the rest of `allocation`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from tessera.control_plane.allocation.snapshot import AgentSnapshot
from tessera.control_plane.core.resources import SCALE, Interval, Key, Resources

__all__ = [
    "EXHAUSTED",
    "MIN_ALLOCATABLE_CPUS",
    "MIN_ALLOCATABLE_MEM",
    "AgentView",
    "Proposal",
    "Ranges",
    "Work",
    "add_into",
    "agent_order",
    "allocatable",
    "offer_resources",
    "by_name",
    "is_allocatable",
    "plain",
    "carve",
]

MIN_ALLOCATABLE_CPUS = 0.01  # Mesos' default --min_allocatable_resources: cpus:0.01|mem:32
MIN_ALLOCATABLE_MEM = 32.0  # MiB
_MIN_CPUS = round(MIN_ALLOCATABLE_CPUS * SCALE)
_MIN_MEM = round(MIN_ALLOCATABLE_MEM * SCALE)

Ranges = tuple[tuple[Key, tuple[Interval, ...]], ...]


def is_allocatable(resources: Resources) -> bool:
    """True when an offer of `resources` is worth making: >= 0.01 cpus or >= 32 MiB of memory, counting
    every reservation role."""
    return resources.milli("cpus") >= _MIN_CPUS or resources.milli("mem") >= _MIN_MEM


def allocatable(cpus: int, mem: int) -> bool:
    return cpus >= _MIN_CPUS or mem >= _MIN_MEM


def by_name(resources: Resources) -> dict[str, int]:
    """Scalar quantities summed over reservation roles, in fixed point."""
    out: dict[str, int] = {}
    for (name, _), milli in resources.scalars:
        out[name] = out.get(name, 0) + milli
    return out


def add_into(into: dict[str, int], amounts: Mapping[str, int]) -> None:
    for name, milli in amounts.items():
        into[name] = into.get(name, 0) + milli


def _mix(x: int) -> int:
    """splitmix64: a fixed, portable integer hash (Python's hash() of str is salted per process)."""
    mask = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def agent_order(n: int, seed: int) -> Iterator[int]:
    """A permutation of range(n): start at a seeded offset, step by a seeded stride coprime with n."""
    if n <= 2:
        yield from range(n)
        return
    h = _mix(seed)
    offset = h % n
    stride = 1 + (h >> 32) % (n - 1)
    while math.gcd(stride, n) != 1:
        stride = stride % (n - 1) + 1
    for i in range(n):
        yield (offset + i * stride) % n


# ---- per-agent working state -------------------------------------------------------------------------
Split = tuple[dict[str, int], Ranges, dict[str, tuple[dict[str, int], Ranges]]]


class AgentView:
    """An agent's free resources as the allocator reads them; never mutated, so `Allocator` can keep it
    across rounds. `flat` sums scalars over reservation roles; `pristine` says nothing is reserved (then
    the unreserved part is `flat` and the whole `free` can be offered as-is). The split by reservation
    role is only built for agents that need it."""

    __slots__ = ("agent", "pristine", "flat", "whole_allocatable", "_split", "_whole")

    def __init__(self, agent: AgentSnapshot) -> None:
        self.agent = agent
        flat: dict[str, int] = {}
        pristine = True
        for (name, role), milli in agent.free.scalars:
            if role:
                pristine = False
            flat[name] = flat.get(name, 0) + milli
        if pristine:
            pristine = not any(key[1] for key, _ in agent.free.ranges)
        self.flat = flat
        self.pristine = pristine
        self.whole_allocatable = allocatable(flat.get("cpus", 0), flat.get("mem", 0))
        self._split: Split | None = None
        self._whole: Proposal | None = None

    def whole(self) -> Proposal:
        """The proposal of everything free on a pristine agent (proposals are never mutated: shareable)."""
        if self._whole is None:
            self._whole = Proposal(self.flat, {}, {}, self.agent.free.ranges, self.agent.free)
        return self._whole

    def split(self) -> Split:
        """(unreserved scalars, unreserved ranges, {role: (reserved scalars, reserved ranges)})."""
        if self._split is None:
            free = self.agent.free
            if self.pristine:
                self._split = (self.flat, free.ranges, {})
            else:
                unreserved: dict[str, int] = {}
                unreserved_ranges: list[tuple[Key, tuple[Interval, ...]]] = []
                scalars: dict[str, dict[str, int]] = {}
                ranges: dict[str, list[tuple[Key, tuple[Interval, ...]]]] = {}
                for (name, role), milli in free.scalars:
                    if role:
                        scalars.setdefault(role, {})[name] = milli
                    else:
                        unreserved[name] = milli
                for key, intervals in free.ranges:
                    if key[1]:
                        ranges.setdefault(key[1], []).append((key, intervals))
                    else:
                        unreserved_ranges.append((key, intervals))
                reserved = {r: (scalars.get(r, {}), tuple(ranges.get(r, ()))) for r in sorted({*scalars, *ranges})}
                self._split = (unreserved, tuple(unreserved_ranges), reserved)
        return self._split


class Work:
    """What is still free on an agent during a round, once something was taken from it."""

    __slots__ = ("unreserved", "unreserved_ranges", "reserved")

    def __init__(self, unreserved: dict[str, int], unreserved_ranges: Ranges,
                 reserved: dict[str, tuple[dict[str, int], Ranges]]) -> None:
        self.unreserved = unreserved
        self.unreserved_ranges = unreserved_ranges
        self.reserved = reserved

    @staticmethod
    def of(view: AgentView) -> Work:
        unreserved, unreserved_ranges, reserved = view.split()
        return Work(dict(unreserved), unreserved_ranges, {r: (dict(s), rr) for r, (s, rr) in reserved.items()})


def plain(free: Resources) -> dict[str, int] | None:
    """The scalars of a bag by name when nothing in it is reserved; None otherwise. (A dict of strings and
    ints: the garbage collector does not even track it.)"""
    flat: dict[str, int] = {}
    for (name, role), milli in free.scalars:
        if role:
            return None
        flat[name] = milli
    for key, _ in free.ranges:
        if key[1]:
            return None
    return flat


# An agent given away whole: nothing is left on it this round. Shared, and never mutated (no proposal can
# be made from it, so nothing is ever committed against it).
EXHAUSTED = Work({}, (), {})


@dataclass(slots=True)
class Proposal:
    unreserved: dict[str, int]
    reserved: dict[str, int]
    guarantee: dict[str, int]  # the part of `unreserved` that goes towards the role's unmet guarantee
    ranges: Ranges
    whole: Resources | None  # set when the proposal is everything free on the agent (nothing left after)


def carve(work: Work, role: str, p: Proposal) -> None:
    """Carve a committed proposal out of what is left on the agent."""
    for kind, amount in p.unreserved.items():
        left = work.unreserved[kind] - amount
        if left > 0:
            work.unreserved[kind] = left
        else:
            del work.unreserved[kind]
    work.unreserved_ranges = ()
    held = work.reserved.get(role)
    if held is not None:
        scalars = held[0]
        for kind, amount in p.reserved.items():
            left = scalars[kind] - amount
            if left > 0:
                scalars[kind] = left
            else:
                del scalars[kind]
        if scalars:
            work.reserved[role] = (scalars, ())
        else:
            del work.reserved[role]


def offer_resources(p: Proposal, role: str) -> Resources:
    scalars = [((kind, ""), amount) for kind, amount in p.unreserved.items() if amount > 0]
    scalars.extend(((kind, role), amount) for kind, amount in p.reserved.items() if amount > 0)
    scalars.sort()
    return Resources(scalars=tuple(scalars), ranges=tuple(sorted(p.ranges)))
