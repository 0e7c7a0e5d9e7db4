"""Which master to dial next and how long to wait first: the agent's reconnection policy, pure.

Rules it keeps (docs/protocol.md, "clients then dial that address, or else try the next master with
exponential backoff and jitter"):
- A `tessera-leader` hint is followed at once, but at most `len(masters) + 1` times in a row, so two
  masters pointing at each other (a stale hint during an election) fall back to backoff.
- Otherwise the next master in the list is tried after `Backoff.delay(rounds, fraction)` (the one
  backoff policy of `tessera.control_plane.wire`): exponential in the number of rounds over the masters that
  failed in a row (every master is tried before the wait doubles), capped, and spread by downward jitter
  so a fleet of agents that lost the same leader does not come back in one wave. `fraction` is a random
  number in [0, 1) supplied by the caller (no randomness in here).
- A connection that carried at least one message from the master was healthy: the failure count
  starts again from zero, and the same master is retried first (it may just have restarted its stream).
- Unknown addresses named by hints join the rotation at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tessera.control_plane.wire import Backoff, rounds

__all__ = ["AGENT_BACKOFF", "Backoff", "Dial", "DialPlan"]

# The agent's reconnection waits: short, so a restarted master is found quickly.
AGENT_BACKOFF = Backoff(initial=0.1, maximum=5.0)


@dataclass(frozen=True, slots=True)
class Dial:
    address: str
    delay: float  # seconds to wait before dialing
    reason: str  # "first", "leader hint", "healthy stream ended", "next master"


class DialPlan:
    """The rotation over master addresses. Not thread-safe: one link owns it."""

    def __init__(self, masters: Sequence[str], backoff: Backoff | None = None) -> None:
        addresses = list(dict.fromkeys(a for a in masters if a))
        if not addresses:
            raise ValueError("at least one master address is needed")
        self.addresses = addresses
        self.backoff = backoff or AGENT_BACKOFF
        self.failures = 0  # failed dials in a row
        self.hint_follows = 0  # leader hints followed in a row

    def first(self) -> Dial:
        return Dial(self.addresses[0], 0.0, "first")

    def after(self, address: str, *, healthy: bool, leader_hint: str | None, fraction: float) -> Dial:
        """Where to go after the stream to `address` ended (or could not be opened)."""
        if healthy:
            self.failures = 0
            self.hint_follows = 0
        if leader_hint and leader_hint != address and self.hint_follows <= len(self.addresses):
            self.hint_follows += 1
            if leader_hint not in self.addresses:
                self.addresses.append(leader_hint)
            return Dial(leader_hint, 0.0, "leader hint")
        self.hint_follows = 0
        if healthy:
            # The master we were talking to may have restarted its stream; try it again, after the
            # smallest wait, before walking the list.
            return Dial(address, self.backoff.delay(0, fraction), "healthy stream ended")
        self.failures += 1
        index = self.addresses.index(address) if address in self.addresses else -1
        nxt = self.addresses[(index + 1) % len(self.addresses)]
        # The wait grows once per round over the masters, not per refusal: while one master is down and
        # another not yet leading, two dials in three fail anyway, and doubling at each left an agent
        # seconds between dials, past the new leader's re-registration grace (its tasks were marked lost).
        return Dial(nxt, self.backoff.delay(rounds(self.failures, len(self.addresses)), fraction), "next master")
