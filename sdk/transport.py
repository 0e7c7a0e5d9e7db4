"""The port between a driver and a master: one small interface, two implementations.

`tessera.sdk.grpc_transport.GrpcTransport` talks to real masters; `tessera.sdk.testing.FakeMaster.transport()` talks to
an in-memory fake. A driver needs nothing else, so a scheduler is tested without sockets by handing its
driver the fake's transport.

Contract (both implementations keep it; `tests/unit/sdk/test_transport_contract.py` checks it):

- `subscribe(address, info, lease=LeaseClaim(...))` starts a subscription and returns at once; problems
  surface on the stream. `lease` says what it asks of the framework's lease (standby, the term held). `stream.next(timeout)` returns the next event, or None when nothing came within `timeout`
  seconds (None = wait forever). When the stream is over it raises `StreamEnded`, with the error that
  ended it (`NotLeader` carries the leader's address) or None for a clean end or a `cancel()`; after
  that it keeps raising `StreamEnded`. `cancel()` may be called from any thread, any number of times.
- `call(address, header, call, timeout)` sends one unary call and returns its result (the statuses of a
  reconciliation, what a key/value call answers, an empty tuple otherwise: `tessera.sdk.protocol.CallResult`), or raises an error of `tessera.sdk.errors`. It never retries: the
  driver decides that.
- Both are safe to use from several threads at once.
"""

from __future__ import annotations

from typing import Protocol

from tessera.sdk.errors import TesseraError
from tessera.sdk.protocol import NO_CLAIM, Call, CallHeader, CallResult, Event, LeaseClaim
from tessera.sdk.types import FrameworkInfo


class StreamEnded(Exception):
    """The subscription stream is over; `error` says why (None: closed cleanly or cancelled)."""

    def __init__(self, error: TesseraError | None = None) -> None:
        super().__init__(str(error) if error is not None else "stream ended")
        self.error = error


class EventStream(Protocol):
    def next(self, timeout: float | None) -> Event | None: ...

    def cancel(self) -> None: ...


class Transport(Protocol):
    def subscribe(self, address: str, info: FrameworkInfo, lease: LeaseClaim = NO_CLAIM) -> EventStream: ...

    def call(self, address: str, header: CallHeader, call: Call, timeout: float) -> CallResult: ...

    def close(self) -> None: ...
