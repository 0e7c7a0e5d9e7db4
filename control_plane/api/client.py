"""A leader-following client for the master's gRPC services (used by the CLI, tests and the SDK).

A call goes first to the master that answered the last one (the first in the list at the start). Which
master to try after a failed attempt, and how long to wait first, is `tessera.control_plane.wire.DialPlan`,
the choice every client of the masters shares: a master that answers UNAVAILABLE with `tessera-leader`
trailing metadata sends the call there at once (a second hint right after such a hop is followed after a
wait); otherwise the next master in the list, after the one backoff policy's wait (`BACKOFF`, capped at
1 s, growing once per round over the masters), until the call's deadline. Other status codes are
returned to the caller unchanged as `grpc.RpcError`.

With `refused_grace` (the CLI's 1 s), a call gives up early when, for that long, every master in the
list refused the connection (nothing listens there: no cluster, or the wrong addresses) and none
answered at all: waiting out the whole timeout for a cluster that is not there helped nobody. A master
that answers (even UNAVAILABLE, as a follower during an election does) keeps the call going until its
timeout. `NoMasterAvailable.refused` says which way a call ended.

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
    """No master answered within the deadline; `refused`: every one refused the connection (nothing
    listens at those addresses)."""

    def __init__(self, addresses: Sequence[str], last_error: str, *, refused: bool = False) -> None:
        super().__init__(f"no master answered at {', '.join(addresses)} ({last_error})")
        self.addresses = list(addresses)
        self.last_error = last_error
        self.refused = refused


def leader_hint(err: grpc.RpcError) -> str | None:
    return wire.leader_hint(err.trailing_metadata() if hasattr(err, "trailing_metadata") else None)


def connection_refused(err: grpc.RpcError) -> bool:
    """The call failed because nothing listens at the address (gRPC reports it as UNAVAILABLE with the
    socket error in its details: the transport's words, not a master's)."""
    return err.code() == grpc.StatusCode.UNAVAILABLE and "connection refused" in (err.details() or "").lower()


class MasterClient:
    def __init__(self, addresses: Sequence[str], *, timeout: float = 10.0, rpc_timeout: float = 5.0,
                 security: ClientSecurity | None = None, refused_grace: float | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, random: Callable[[], float] = random.random) -> None:
        if not addresses:
            raise ValueError("at least one master address is needed")
        self.addresses = list(dict.fromkeys(addresses))
        self.timeout = timeout
        self.rpc_timeout = rpc_timeout
        self.refused_grace = refused_grace
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        self._current = self.addresses[0]
        self.security = security or ClientSecurity.insecure()
        self.metadata = self.security.metadata
        self._monotonic, self._sleep, self._random = monotonic, sleep, random

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
        started = self._monotonic()
        deadline = started + (timeout or self.timeout)
        plan = wire.DialPlan(self.addresses, BACKOFF, start=self._current)  # one per call: calls may overlap
        dial, last_error = plan.first(), "no attempt"
        refused: set[str] = set()
        answered = False  # some master answered (or timed out): it exists, so wait for it
        while True:
            if dial.delay > 0:
                self._sleep(min(dial.delay, max(0.0, deadline - self._monotonic())))
            address = dial.address
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                raise NoMasterAvailable(plan.addresses, last_error)
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
                if connection_refused(err):
                    refused.add(address)
                else:
                    answered = True
                if not (cut_short and code == grpc.StatusCode.DEADLINE_EXCEEDED and last_error != "no attempt"):
                    # an attempt that only ran out of the time left says less than the error before it
                    # (a refused connection or handshake, say): keep that one for the report
                    last_error = f"{address}: {code.name} {err.details() or ''}".strip()
                if (self.refused_grace is not None and not answered and refused >= set(plan.addresses)
                        and self._monotonic() - started >= self.refused_grace):
                    raise NoMasterAvailable(plan.addresses, "connection refused: nothing listens there",
                                            refused=True) from None
            dial = plan.after(address, healthy=False, leader_hint=hint, fraction=self._random())

    def close(self) -> None:
        with self._lock:
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()
