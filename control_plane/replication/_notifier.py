"""Delivery of leadership changes to user callbacks, off the Raft thread.

Owns the queue between the engine (which notices a change on its own thread, where nothing may
block) and the callbacks registered through ``Replicator.on_leadership_change`` (which may block).
Rules kept: callbacks see changes in the order they happened; consecutive notifications with the
same leadership are collapsed (a callback only hears about real gains and losses); a callback
registered while the node leads first hears ``(True, term)``; a raising callback is logged and
does not stop the others.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, cast

from .api import LeadershipCallback

log = logging.getLogger(__name__)

_POLL_S = 0.25
_STOP = object()


class LeadershipNotifier:
    def __init__(self, name: str, term_source: Callable[[], int]) -> None:
        self._name = name
        # Used when the engine could not read the term itself (a change before it was wired up).
        self._term_source = term_source
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._callbacks: list[LeadershipCallback] = []
        self._leader = False
        self._term = 0

    def register(self, callback: LeadershipCallback) -> None:
        self._queue.put(("register", callback))

    def publish(self, is_leader: bool, term: int | None) -> None:
        """Record a change; cheap and non-blocking (called on the Raft thread)."""
        self._queue.put(("change", is_leader, term))

    def request_stop(self) -> None:
        self._queue.put(_STOP)

    def run(self, until: threading.Event | None = None) -> None:
        """Deliver notifications until ``request_stop()`` (then drain what is queued) or ``until``."""
        while until is None or not until.is_set():
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is _STOP:
                self._drain()
                return
            self._handle(item)

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                self._handle(item)

    def _handle(self, item: object) -> None:
        kind = cast(tuple[str, Any], item)[0]
        if kind == "register":
            _, callback = cast(tuple[str, LeadershipCallback], item)
            self._callbacks.append(callback)
            if self._leader:
                self._call(callback, True, self._term)
            return
        _, is_leader, term = cast(tuple[str, bool, "int | None"], item)
        if term is None:
            try:
                term = self._term_source()
            except Exception:  # noqa: BLE001
                term = self._term
        if is_leader == self._leader:
            return
        self._leader = is_leader
        self._term = term
        for callback in list(self._callbacks):
            self._call(callback, is_leader, term)

    def _call(self, callback: LeadershipCallback, is_leader: bool, term: int) -> None:
        try:
            callback(is_leader, term)
        except Exception:  # noqa: BLE001 - one bad subscriber must not silence the others
            log.exception("%s: leadership callback %r raised", self._name, callback)
