"""Framework subscriptions as the Scheduler API's `Subscribe` uses them: subscribe (or learn that a standby
must wait), and record a disconnect.

`subscribe` commits `FrameworkSubscribed` and returns it, as the framework's lease allows
(`core.leases`): a new framework, the lease taken over, or its holder back. A standby that must wait gets
a `leases.Wait` instead, and nothing is proposed: `claim` is asked first, on the applied state at the
master's clock, with the master's takeover delay. A resubscription rescinds the framework's offers; an
allocation round committed between the decision and its commit can leave a new one, and `apply` then
rejects the entry as stale (`Conflict`), as it does a takeover that lost a race with another: it is
decided again, a bounded number of times, with new offers to the framework held meanwhile
(`Master.offers_held`: the allocation rounds leave it out, so the second decision covers every offer) (`Master.propose_redeciding`, the one retry loop for stale
entries), and a standby whose race was lost waits; otherwise the last `Conflict` is raised.

`disconnect` records that the framework's stream ended (`DisconnectFramework`, which starts its
failover timeout, and the takeover delay of its lease). Only the serving leader records it; a refusal is
logged, never raised: the stream is already gone and the new leader's timers cover a framework that never
reconnects.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

from tessera.control_plane.core import commands as cmd
from tessera.control_plane.core import events as ev
from tessera.control_plane.core import leases
from tessera.control_plane.core.errors import Conflict, TesseraError
from tessera.control_plane.core.state import check_framework_info
from tessera.control_plane.core.values import FrameworkInfo

log = logging.getLogger(__name__)

ATTEMPTS = 3


class Subscriptions:
    def __init__(self, master: Any, attempts: int = ATTEMPTS, takeover_delay: float = 1.0) -> None:
        self.master = master
        self.attempts = attempts
        self.takeover_delay = takeover_delay

    def subscribe(self, info: FrameworkInfo, traceparent: str = "", *, standby: bool = False, lease_term: int = 0
                  ) -> ev.FrameworkSubscribed | leases.Wait:
        command = cmd.SubscribeFramework(info=info, standby=standby, lease_term=lease_term,
                                         takeover_delay=self.takeover_delay)
        if standby:
            waiting = self.waiting(command)
            if waiting is not None:
                return waiting
        try:
            with self.master.offers_held(info.framework_id) if info.framework_id else nullcontext():
                result = self.master.propose_redeciding([command], traceparent=traceparent, attempts=self.attempts)
        except Conflict:
            waiting = self.waiting(command) if standby else None
            if waiting is None:
                raise
            return waiting
        return next(e for _, e in result.events if isinstance(e, ev.FrameworkSubscribed))

    def waiting(self, command: cmd.SubscribeFramework) -> leases.Wait | None:
        """The `Wait` a standby gets now (None: it may subscribe); raises what `claim` refuses."""
        info = check_framework_info(command.info)
        now = self.master.clock()
        outcome = self.master.read_state(lambda state: leases.claim(
            state, info, standby=command.standby, lease_term=command.lease_term, now=now,
            takeover_delay=command.takeover_delay))
        return outcome if isinstance(outcome, leases.Wait) else None

    def disconnect(self, framework_id: str, stream_id: str) -> None:
        if not self.master.is_serving():
            return
        try:
            self.master.propose([cmd.DisconnectFramework(framework_id=framework_id, stream_id=stream_id)])
        except TesseraError as exc:
            log.info("framework %s disconnect not recorded: %s", framework_id, exc)
