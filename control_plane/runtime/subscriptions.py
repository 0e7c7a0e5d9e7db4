"""Framework subscriptions as the Scheduler API's `Subscribe` uses them: subscribe, and record a disconnect.

`subscribe` commits `FrameworkSubscribed` and returns it. A resubscription rescinds the framework's
offers; an allocation round committed between the decision and its commit can leave a new one, and
`apply` then rejects the entry as stale (`Conflict`): it is decided again, a bounded number of times
(`Master.propose_redeciding`, the one retry loop for stale entries), and the last `Conflict` is raised.

`disconnect` records that the framework's stream ended (`DisconnectFramework`, which starts its
failover timeout). Only the serving leader records it; a refusal is logged, never raised: the stream is
already gone and the new leader's timers cover a framework that never reconnects.
"""

from __future__ import annotations

import logging
from typing import Any

from tessera.control_plane.core import commands as cmd
from tessera.control_plane.core import events as ev
from tessera.control_plane.core.errors import TesseraError
from tessera.control_plane.core.values import FrameworkInfo

log = logging.getLogger(__name__)

ATTEMPTS = 3


class Subscriptions:
    def __init__(self, master: Any, attempts: int = ATTEMPTS) -> None:
        self.master = master
        self.attempts = attempts

    def subscribe(self, info: FrameworkInfo, traceparent: str = "") -> ev.FrameworkSubscribed:
        result = self.master.propose_redeciding([cmd.SubscribeFramework(info=info)], traceparent=traceparent,
                                                attempts=self.attempts)
        return next(e for _, e in result.events if isinstance(e, ev.FrameworkSubscribed))

    def disconnect(self, framework_id: str, stream_id: str) -> None:
        if not self.master.is_serving():
            return
        try:
            self.master.propose([cmd.DisconnectFramework(framework_id=framework_id, stream_id=stream_id)])
        except TesseraError as exc:
            log.info("framework %s disconnect not recorded: %s", framework_id, exc)
