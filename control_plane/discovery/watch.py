"""`StateWatcher`: keep something current from the masters' state, for `tessera dns` and `tessera lb`.

It follows the masters with the operator client (which follows the leader and survives a failover): it
asks for the newest event index every `interval` (0.1 s by default; one small call) and, when the index
moved, reads the state (`GetState`) and hands it to `on_state`; it also does so every `refresh` seconds
whatever happens. So a change reaches `on_state` within one interval plus one state read. When no master
answers it keeps what it had (the caller goes on serving its last view) and logs the reason once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from tessera.v1 import operator_pb2

log = logging.getLogger("tessera.discovery")

DEFAULT_INTERVAL = 0.1
DEFAULT_REFRESH = 30.0


class StateWatcher:
    """Calls `on_state(GetStateResponse)` when the cluster's state changed (see the module docstring)."""

    def __init__(self, client: Any, on_state: Callable[[operator_pb2.GetStateResponse], None], *,
                 interval: float = DEFAULT_INTERVAL, refresh: float = DEFAULT_REFRESH,
                 monotonic: Callable[[], float] = time.monotonic, name: str = "state-watcher") -> None:
        self.client = client
        self.on_state = on_state
        self.interval = interval
        self.refresh = refresh
        self.name = name
        self.updated_at = 0.0  # monotonic time of the last state handed over
        self.updates = 0
        self.last_error = ""
        self._seen = -1
        self._next_refresh = 0.0
        self._monotonic = monotonic
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()  # set once a state was handed over

    def poll(self) -> bool:
        """One round: hand the state over when the log moved or the refresh is due; True when it did."""
        head = self.client.call(lambda s: s.ListEvents, operator_pb2.ListEventsRequest(limit=1, descending=True))
        now = self._monotonic()
        if head.last_index == self._seen and now < self._next_refresh:
            return False
        state = self.client.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=False))
        self.on_state(state)
        self._seen = max(int(head.last_index), int(state.index))
        self._next_refresh = now + self.refresh
        self.updated_at = now
        self.updates += 1
        self.ready.set()
        return True

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
                self.last_error = ""
            except Exception as exc:  # noqa: BLE001 - the masters may be away; the caller keeps its last view
                details = getattr(exc, "details", None)
                message = str((details() if callable(details) else "") or exc)
                if message != self.last_error:
                    log.warning("%s: cannot read the cluster state (keeping the last one): %s", self.name, message)
                self.last_error = message
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
