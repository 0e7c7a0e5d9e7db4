"""A leader-following client for the master's gRPC services (used by the CLI, tests and the SDK).

A call goes to the master believed to lead. When a master answers UNAVAILABLE with `tessera-leader`
trailing metadata, the call is retried there at once; when a master does not answer, the next one in
the list is tried, waiting after each round over the masters by the one backoff policy
(`tessera.control_plane.wire.Backoff`, capped at 1 s), until the call's deadline. Other status codes are
returned to the caller unchanged as `grpc.RpcError`.

`security` (`tessera.control_plane.tls.ClientSecurity`) gives the mTLS credentials and the bearer token sent
with every call; without it, channels are plaintext (a development cluster). Streaming calls made on
`operator(address)` directly pass `metadata` themselves.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

from tessera.control_plane import wire
from tessera.control_plane.tls import ClientSecurity
from tessera.v1 import operator_pb2_grpc

R = TypeVar("R")

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
BACKOFF = wire.Backoff(initial=0.1, maximum=1.0)  # an operator waits; a round over the masters is quick


class NoMasterAvailable(Exception):
    """No master answered within the deadline."""

    def __init__(self, addresses: Sequence[str], last_error: str) -> None:
        super().__init__(f"no master answered at {', '.join(addresses)} ({last_error})")
        self.last_error = last_error


def leader_hint(err: grpc.RpcError) -> str | None:
    return wire.leader_hint(err.trailing_metadata() if hasattr(err, "trailing_metadata") else None)


class MasterClient:
    def __init__(self, addresses: Sequence[str], *, timeout: float = 10.0, rpc_timeout: float = 5.0,
                 security: ClientSecurity | None = None) -> None:
        if not addresses:
            raise ValueError("at least one master address is needed")
        self.addresses = list(dict.fromkeys(addresses))
        self.timeout = timeout
        self.rpc_timeout = rpc_timeout
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        self._current = self.addresses[0]
        self.security = security or ClientSecurity.insecure()
        self.metadata = self.security.metadata

    def channel(self, address: str) -> grpc.Channel:
        with self._lock:
            ch = self._channels.get(address)
            if ch is None:
                ch = self.security.channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
                self._channels[address] = ch
            return ch

    def operator(self, address: str) -> operator_pb2_grpc.OperatorStub:
        return operator_pb2_grpc.OperatorStub(self.channel(address))

    def call(self, method: Callable[[operator_pb2_grpc.OperatorStub], Callable[..., R]], request: Any,
             *, timeout: float | None = None, follow_leader: bool = True) -> R:
        """Call an Operator method, following leader redirects; raises grpc.RpcError or NoMasterAvailable."""
        deadline = time.monotonic() + (timeout or self.timeout)
        order = [self._current] + [a for a in self.addresses if a != self._current]
        i, attempt, last_error = 0, 0, "no attempt"
        while True:
            address = order[i % len(order)]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoMasterAvailable(order, last_error)
            cut_short = remaining < self.rpc_timeout  # the call's own deadline bounds this attempt
            try:
                result = method(self.operator(address))(request, timeout=min(self.rpc_timeout, remaining),
                                                        metadata=self.metadata)
                self._current = address
                return result
            except grpc.RpcError as err:
                code = err.code()
                if code not in RETRYABLE:
                    raise
                hint = leader_hint(err) if follow_leader else None
                if not (cut_short and code == grpc.StatusCode.DEADLINE_EXCEEDED and last_error != "no attempt"):
                    # an attempt that only ran out of the time left says less than the error before it
                    # (a refused connection or handshake, say): keep that one for the report
                    last_error = f"{address}: {code.name} {err.details() or ''}".strip()
                if hint and hint != address:
                    if hint not in order:
                        order.append(hint)
                    i = order.index(hint)
                    continue
            attempt += 1
            i += 1
            if i % len(order) == 0:
                time.sleep(min(BACKOFF.delay(wire.rounds(attempt, len(order)), random.random()),
                               max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        with self._lock:
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()
