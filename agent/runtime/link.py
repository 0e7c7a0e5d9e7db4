"""The master link: one `AgentLink.Connect` stream at a time, to whichever master leads.

`MasterLink` runs one thread that dials masters in the order `tessera.control_plane.wire.DialPlan` gives
(the one choice of the next master every client makes: leader hints from the `tessera-leader` trailing
metadata are followed at once; otherwise the next master, with exponential backoff and jitter), opens the bidirectional stream, and reports what happens as events posted to the
agent loop: `StreamOpened`, `MessageReceived`, `StreamClosed`. It knows nothing about registration,
tasks or terms; the agent loop owns all of that and talks back through `LinkStream.send` / `close`.

Rules it keeps:
- At most one stream is open; a stream's events are posted in order, and `StreamClosed` is its last.
- The link never blocks the agent loop: `send` only enqueues (the stream's request iterator drains the
  queue on gRPC's thread); `close` cancels the call.
- Channels are cached per address and reused across streams (they reconnect on their own; their
  reconnect backoff is kept short so a restarted master is found quickly). No client keepalive pings:
  servers refuse frequent ones; dead streams are detected by the agent's heartbeat watchdog instead.
- Channels use the agent's `ClientSecurity`: mTLS with an agent certificate (masters are verified as
  `master.tessera`), plaintext only in a development cluster.
"""

from __future__ import annotations

import itertools
import logging
import queue
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import grpc

from tessera.control_plane import wire
from tessera.control_plane.tls import ClientSecurity
from tessera.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 0),
]
_SENTINEL = object()


def leader_hint(err: grpc.RpcError) -> str | None:
    return wire.leader_hint(err.trailing_metadata() if hasattr(err, "trailing_metadata") else None)


class ChannelPool:
    """gRPC channels by address, shared by every stream (and by every emulated agent)."""

    def __init__(self, options: Sequence[tuple[str, object]] = CHANNEL_OPTIONS,
                 security: ClientSecurity | None = None) -> None:
        self.options = list(options)
        self.security = security or ClientSecurity.insecure()
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def get(self, address: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = self.security.channel(address, options=self.options)
                self._channels[address] = channel
            return channel

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()


class LinkStream:
    """One Connect stream. `send` enqueues, `close` cancels; both are safe from any thread."""

    def __init__(self, stream_id: int, address: str) -> None:
        self.id = stream_id
        self.address = address
        self.received_any = False
        self._outbox: queue.Queue[object] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._call: grpc.Call | None = None

    def __repr__(self) -> str:
        return f"LinkStream(#{self.id} to {self.address})"

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, message: agent_pb2.AgentMessage) -> bool:
        if self._closed:
            return False
        self._outbox.put(message)
        return True

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            call = self._call
        self._outbox.put(_SENTINEL)
        if call is not None:
            call.cancel()

    def _attach(self, call: grpc.Call) -> None:
        with self._lock:
            self._call = call
            closed = self._closed
        if closed:
            call.cancel()

    def _finish(self) -> None:
        with self._lock:
            self._closed = True
        self._outbox.put(_SENTINEL)

    def requests(self) -> Iterator[agent_pb2.AgentMessage]:
        while True:
            item = self._outbox.get()
            if item is _SENTINEL:
                return
            assert isinstance(item, agent_pb2.AgentMessage)
            yield item


@dataclass(frozen=True)
class StreamOpened:
    stream: LinkStream


@dataclass(frozen=True)
class MessageReceived:
    stream: LinkStream
    message: agent_pb2.MasterMessage


@dataclass(frozen=True)
class StreamClosed:
    stream: LinkStream
    code: grpc.StatusCode
    details: str
    leader_hint: str | None


LinkEvent = StreamOpened | MessageReceived | StreamClosed


class MasterLink:
    def __init__(self, masters: Sequence[str], post: Callable[[LinkEvent], None], *,
                 backoff: wire.Backoff, channels: ChannelPool | None = None,
                 rng: Callable[[], float] = random.random, security: ClientSecurity | None = None) -> None:
        self.plan = wire.DialPlan(masters, backoff)
        self.post = post
        self.channels = channels or ChannelPool(security=security)
        self._own_channels = channels is None
        self.rng = rng
        self._stop = threading.Event()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self.current: LinkStream | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="master-link", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        stream = self.current
        if stream is not None:
            stream.close()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._own_channels:
            self.channels.close()

    def _run(self) -> None:
        dial = self.plan.first()
        while not self._stop.is_set():
            if dial.delay > 0 and self._stop.wait(dial.delay):
                break
            stream = LinkStream(next(self._ids), dial.address)
            self.current = stream
            code, details, hint = self._serve(stream)
            self.current = None
            if code is not grpc.StatusCode.CANCELLED or not self._stop.is_set():
                log.info("stream to %s ended: %s %s%s", dial.address, code.name, details,
                         f" (leader: {hint})" if hint else "")
            dial = self.plan.after(dial.address, healthy=stream.received_any, leader_hint=hint,
                                   fraction=self.rng())

    def _serve(self, stream: LinkStream) -> tuple[grpc.StatusCode, str, str | None]:
        code, details, hint = grpc.StatusCode.OK, "", None
        self.post(StreamOpened(stream))
        try:
            stub = agent_pb2_grpc.AgentLinkStub(self.channels.get(stream.address))
            call = stub.Connect(stream.requests(), metadata=self.channels.security.metadata)
            stream._attach(call)
            for message in call:
                stream.received_any = True
                self.post(MessageReceived(stream, message))
            details = "the master ended the stream"
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
            details = (err.details() if hasattr(err, "details") else str(err)) or ""
            hint = leader_hint(err)
        except Exception as exc:  # noqa: BLE001 - a bug here must not kill the link thread
            log.exception("stream to %s failed", stream.address)
            code, details = grpc.StatusCode.UNKNOWN, repr(exc)
        finally:
            stream._finish()
        self.post(StreamClosed(stream, code, details, hint))
        return code, details, hint
