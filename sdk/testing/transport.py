"""The in-memory transport of a `FakeMaster`: `FakeTransport` (a `tessera.sdk.transport.Transport`) and
`FakeStream` (an `EventStream`). A call goes straight to the fake's protocol layer; a subscription
is a queue the fake pushes events into and ends with an error (or none) when it closes the stream."""

from __future__ import annotations

import queue
from typing import TYPE_CHECKING

from tessera.sdk.errors import TesseraError
from tessera.sdk.protocol import NO_CLAIM, Call, CallHeader, CallResult, Event, LeaseClaim
from tessera.sdk.transport import StreamEnded
from tessera.sdk.types import FrameworkInfo

if TYPE_CHECKING:
    from tessera.sdk.testing.master import FakeMaster
    from tessera.sdk.testing.protocol import _Protocol

__all__ = ["FakeStream", "FakeTransport"]


class _End:
    def __init__(self, error: TesseraError | None) -> None:
        self.error = error


class FakeStream:
    """A subscription stream of the fake (implements `tessera.sdk.transport.EventStream`)."""

    def __init__(self, master: _Protocol, address: str) -> None:
        self._master = master
        self.address = address
        self.framework_id: str | None = None
        self._queue: queue.Queue[Event | _End] = queue.Queue()
        self._ended: _End | None = None
        self.closed = False  # no more events will be pushed

    def push(self, event: Event) -> None:
        if not self.closed:
            self._queue.put(event)

    def end(self, error: TesseraError | None) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put(_End(error))

    def next(self, timeout: float | None) -> Event | None:
        if self._ended is not None:
            raise StreamEnded(self._ended.error)
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, _End):
            self._ended = item
            raise StreamEnded(item.error)
        return item

    def cancel(self) -> None:
        self._master._stream_closed_by_client(self)
        self.end(None)


class FakeTransport:
    """The in-memory `tessera.sdk.transport.Transport` of a `FakeMaster`."""

    def __init__(self, master: FakeMaster) -> None:
        self.master = master

    def subscribe(self, address: str, info: FrameworkInfo, lease: LeaseClaim = NO_CLAIM) -> FakeStream:
        return self.master._subscribe(address, info, lease)

    def call(self, address: str, header: CallHeader, call: Call, timeout: float) -> CallResult:
        return self.master._handle(address, header, call)

    def close(self) -> None:
        pass
