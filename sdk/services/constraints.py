"""Placement constraints of the service framework, Marathon's operators (pure).

`admits(constraints, candidate, placed)` says whether one more instance may go to `candidate` (an agent's
hostname and attributes) given where the app's instances already are:

- `UNIQUE`: no instance has the candidate's value (`["hostname", "UNIQUE"]`: one per agent).
- `CLUSTER v`: only where the attribute is `v`.
- `GROUP_BY [n]`: spread evenly across the attribute's values: the candidate's value may not get ahead of
  the least loaded value seen (with `n`, until `n` values have instances, a new value counts as empty).
- `LIKE re` / `UNLIKE re`: the value matches (does not match) the regular expression as a whole.
- `MAX_PER n`: at most `n` instances per value.

An agent without the attribute is admitted only by `UNLIKE`. The attribute `hostname` is the agent's.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tessera.sdk.services.app import Constraint

__all__ = ["Placement", "admits"]


@dataclass(frozen=True)
class Placement:
    hostname: str
    attributes: Mapping[str, str] = field(default_factory=dict, hash=False)

    def value(self, attribute: str) -> str | None:
        return self.hostname if attribute == "hostname" else self.attributes.get(attribute)


def _admits_one(c: Constraint, candidate: Placement, placed: Sequence[Placement]) -> bool:
    value = candidate.value(c.attribute)
    if c.operator == "UNLIKE":
        return value is None or re.fullmatch(c.value, value) is None
    if value is None:
        return False
    counts = Counter(v for p in placed if (v := p.value(c.attribute)) is not None)
    if c.operator == "UNIQUE":
        return counts[value] == 0
    if c.operator == "CLUSTER":
        return value == c.value
    if c.operator == "LIKE":
        return re.fullmatch(c.value, value) is not None
    if c.operator == "MAX_PER":
        return counts[value] < int(c.value)
    if c.operator == "GROUP_BY":
        groups = int(c.value) if c.value else 0
        if groups and len(counts) < groups and value not in counts:
            return True  # a value with no instance yet, while fewer than n have some
        least = min([counts[v] for v in counts] + ([0] if groups and len(counts) < groups else []), default=0)
        return counts[value] <= least
    raise ValueError(f"unknown operator {c.operator}")


def admits(constraints: Sequence[Constraint], candidate: Placement, placed: Sequence[Placement]) -> bool:
    """May one more instance go to `candidate`? (See the module docstring.)"""
    return all(_admits_one(c, candidate, placed) for c in constraints)
