"""How a task is killed: drain, SIGTERM, SIGKILL (pure; the supervisor carries it out, docs/load-balancing.md).

A kill has three phases, Nomad's `shutdown_delay` followed by Mesos's kill grace period:
1. **drain** for `shutdown_delay` seconds: the task is TASK_KILLING (the agent reports it before the
   supervisor is asked), so service discovery — `tessera dns`, `tessera lb` — drops it at once, while it
   still runs and serves whatever the load balancer had already sent it. No signal.
2. **terminate**: SIGTERM to the task's session, then `grace` seconds for it to finish.
3. **kill**: SIGKILL to its session and cgroups.

Rules:
- `grace` 0 is an immediate kill: SIGKILL at once, no drain either (the agent's own cleanup: orphans, a
  launch called off).
- A kill for failing the health check has no drain: a task reported unhealthy has already left discovery
  (it is not ready), and there is nothing left worth serving.
- The phases only move forward; each signal is sent once (`KillSequence.step` says which is due, given
  what was sent already, and when to look again).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["KillSequence", "KillSignal", "killing_message", "start_kill"]


class KillSignal(Enum):
    NONE = "none"  # nothing sent yet: draining
    TERM = "SIGTERM"
    KILL = "SIGKILL"


@dataclass(frozen=True)
class KillSequence:
    started_at: float  # when the supervisor started the kill (its monotonic clock)
    shutdown_delay: float  # seconds of drain before SIGTERM
    grace: float  # seconds between SIGTERM and SIGKILL

    @property
    def term_at(self) -> float:
        return self.started_at + self.shutdown_delay

    @property
    def kill_at(self) -> float:
        return self.term_at + self.grace

    def step(self, now: float, sent: KillSignal) -> tuple[KillSignal, float | None]:
        """The signal to send now (NONE: none) given the last one `sent`, and when the next one is due
        (None: nothing more to send)."""
        if sent is KillSignal.KILL:
            return KillSignal.NONE, None
        if now >= self.kill_at:
            return KillSignal.KILL, None
        if sent is KillSignal.NONE and now >= self.term_at:
            return KillSignal.TERM, self.kill_at
        return KillSignal.NONE, self.term_at if sent is KillSignal.NONE else self.kill_at


def start_kill(now: float, grace: float, shutdown_delay: float, *, unhealthy: bool = False) -> KillSequence:
    """The kill that starts `now` (see the module docstring for when the drain is skipped)."""
    grace = max(0.0, grace)
    delay = 0.0 if unhealthy or grace <= 0 else max(0.0, shutdown_delay)
    return KillSequence(started_at=now, shutdown_delay=delay, grace=grace)


def killing_message(grace: float, shutdown_delay: float) -> str:
    """What the agent's TASK_KILLING says of the kill it starts."""
    if grace <= 0:
        return "killing: SIGKILL now"
    if shutdown_delay > 0:
        return (f"killing: out of service discovery, draining {shutdown_delay:g}s, then SIGTERM, "
                f"SIGKILL after {grace:g}s more")
    return f"killing: SIGTERM, then SIGKILL after {grace:g}s"
