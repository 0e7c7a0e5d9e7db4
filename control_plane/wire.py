"""Facts of the wire every client shares, once: the leader-hint metadata key, master address lists, and
the one retry backoff. Sans-IO: no gRPC import, no clock, no randomness of its own (a random number is
an argument), so the agent, the SDK, the operator client and the simulation use the same code.

- `LEADER_METADATA_KEY`: a follower answers UNAVAILABLE with the leader's address in this trailing
  metadata key; `leader_hint(trailers)` reads it back from a call's trailing metadata.
- `parse_masters(value)`: 'a:5050,b:5050' (or a sequence) -> ('a:5050', 'b:5050'): HOST:PORT pairs,
  duplicates dropped, order kept; a `ValueError` whose message the caller prefixes with its flag name.
- `Backoff`: exponential backoff with downward jitter. `delay(n, fraction)` is the wait before retry
  number `n` (0-based: `delay(0, ...)` is the first retry's wait) and lies in
  `[nominal(n) * (1 - jitter), nominal(n)]`, `nominal(n) = min(maximum, initial * multiplier**n)`, so
  `maximum` really is the longest wait. Callers count `n` in rounds over the masters (every master is
  tried once before the wait grows), see `rounds`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["LEADER_METADATA_KEY", "Backoff", "leader_hint", "parse_masters", "rounds"]

LEADER_METADATA_KEY = "tessera-leader"

_ADDRESS_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})\Z")


def leader_hint(trailers: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The leader's address named by a call's trailing metadata, if any."""
    for key, value in trailers or ():
        if key == LEADER_METADATA_KEY and value:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def parse_masters(value: str | Sequence[str]) -> tuple[str, ...]:
    """'a:5050, b:5050' or ['a:5050', 'b:5050'] -> ('a:5050', 'b:5050'); ValueError names the bad one."""
    items = value.split(",") if isinstance(value, str) else list(value)
    addresses = tuple(dict.fromkeys(a.strip() for a in items if isinstance(a, str) and a.strip()))
    if not addresses:
        raise ValueError("give at least one HOST:PORT")
    for address in addresses:
        match = _ADDRESS_RE.match(address)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise ValueError(f"expected HOST:PORT, got {address!r}")
    return addresses


def rounds(failures: int, masters: int) -> int:
    """The 0-based backoff step after `failures` failed dials in a row over `masters` addresses: the wait
    grows once per round over the masters, not per refusal (during an election every master refuses in
    turn, and doubling at each refusal left clients waiting seconds after the new leader was serving)."""
    return max(0, failures - 1) // max(1, masters)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with downward jitter (see the module docstring)."""

    initial: float = 0.1
    maximum: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum and math.isfinite(self.maximum)):
            raise ValueError(f"Backoff: need 0 < initial <= maximum, got {self.initial}, {self.maximum}")
        if not (self.multiplier >= 1 and math.isfinite(self.multiplier)):
            raise ValueError(f"Backoff: multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"Backoff: jitter must be within [0, 1], got {self.jitter}")

    def nominal(self, attempt: int) -> float:
        """The wait before retry `attempt` (0-based) without jitter."""
        # Compare exponents rather than computing a huge power for a long outage.
        if attempt <= 0:
            return self.initial
        if self.multiplier == 1 or attempt * math.log(self.multiplier) >= math.log(self.maximum / self.initial):
            return self.maximum if self.multiplier > 1 else self.initial
        return min(self.maximum, self.initial * self.multiplier**attempt)

    def delay(self, attempt: int, fraction: float) -> float:
        """The wait before retry `attempt` (0-based), for a `fraction` drawn uniformly from [0, 1)."""
        return self.nominal(attempt) * (1.0 - self.jitter * min(max(fraction, 0.0), 1.0))
