"""The transport to real masters: `tessera.v1.Scheduler` over gRPC.

One channel per master address, opened lazily and kept. A subscription is a server-streaming call read
by a small pump thread into a queue, which is what gives `EventStream.next` its timeout. Status codes
become `tessera.sdk.errors` classes through `tessera.sdk.errors.error_for_status` (with the `tessera-leader` trailing
metadata as the leader hint); the transport never retries.

Credentials: insecure channels by default (a local development cluster); pass `credentials`
(`grpc.ssl_channel_credentials(...)` with a framework certificate) for mTLS and `token` for the bearer
token of the framework's principal, or use `GrpcTransport.secure(tls_dir, token)`. A driver given no
transport uses `GrpcTransport.from_env()`: mTLS when TESSERA_TLS_DIR names a framework TLS directory, the
token of TESSERA_TOKEN or TESSERA_TOKEN_FILE. Secure channels verify
the master's certificate as `master.tessera` (`tessera.control_plane.tls.MASTER_NAME`), whatever address is
dialled, so a certificate that is not a master's is refused.

Tracing (from the global tracer provider unless `tracer_provider` is given; the SDK never installs one):
each call runs in a span `framework.<call>` that carries Tessera's attributes (`tessera.task_id`), and the
wire call inside it is the client span of opentelemetry-instrumentation-grpc (`/tessera.v1.Scheduler/<call>`,
kind CLIENT, the standard `rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`), whose W3C
context goes to the master in the `traceparent` metadata key, so the master's handling continues the
framework's trace. `Subscribe`, a stream that lasts as long as the subscription, is left out of the
instrumentation (its wrapper would hide the call's `cancel`): its `framework.Subscribe` span is the client
span and injects the `traceparent` itself.

Batched updates: the subscription asks for the BATCHED_UPDATES capability (unless `batched_updates` is
False), so a master may send several status updates in one stream message; the stream hands them on
one at a time, in order, exactly as if each had come alone.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc import client_interceptor
from opentelemetry.instrumentation.grpc.grpcext import intercept_channel

from tessera.control_plane.tls import MASTER_NAME, ClientSecurity
from tessera.control_plane.wire import conflict_detail, leader_hint
from tessera.sdk._convert import (
    call_to_proto,
    entry_from_proto,
    events_from_proto,
    page_from_proto,
    status_from_proto,
    subscribe_request,
)
from tessera.sdk.errors import TesseraError, error_for_status
from tessera.sdk.protocol import BATCHED_UPDATES, NO_CLAIM, Call, CallHeader, CallResult, Event, LeaseClaim
from tessera.sdk.transport import StreamEnded
from tessera.sdk.types import FrameworkInfo
from tessera.v1 import scheduler_pb2, scheduler_pb2_grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
TRACER_NAME = "tessera.sdk"


def error_from_rpc(err: grpc.RpcError) -> TesseraError:
    """The SDK error for a failed gRPC call (the one gRPC-specific half of the mapping)."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    trailers = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    return error_for_status(code.name if code is not None else "UNKNOWN", details or "", leader_hint(trailers),
                            conflict_detail(trailers))


class _End:
    def __init__(self, error: TesseraError | None) -> None:
        self.error = error


class GrpcEventStream:
    """One Subscribe call; `next` reads what the pump thread queued."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._queue: queue.Queue[Event | _End] = queue.Queue()
        self._cancelled = threading.Event()
        self._end: _End | None = None
        self._pump = threading.Thread(target=self._run, name="tessera-grpc-stream", daemon=True)
        self._pump.start()

    def _run(self) -> None:
        try:
            for msg in self._call:
                for event in events_from_proto(msg):
                    self._queue.put(event)
            self._queue.put(_End(None))
        except grpc.RpcError as err:
            self._queue.put(_End(None if self._cancelled.is_set() else error_from_rpc(err)))
        except TesseraError as exc:  # a malformed event: end this stream; the driver subscribes again
            self._call.cancel()
            self._queue.put(_End(exc))

    def next(self, timeout: float | None) -> Event | None:
        if self._end is not None:
            raise StreamEnded(self._end.error)
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, _End):
            self._end = item
            raise StreamEnded(item.error)
        return item

    def cancel(self) -> None:
        self._cancelled.set()
        self._call.cancel()


class GrpcTransport:
    def __init__(self, *, credentials: grpc.ChannelCredentials | None = None, token: str | None = None,
                 options: Sequence[tuple[str, Any]] = (),
                 tracer_provider: trace.TracerProvider | None = None, batched_updates: bool = True) -> None:
        self._tracer_provider = tracer_provider
        # ask masters for several updates per stream message (older masters ignore the request)
        self._capabilities = [BATCHED_UPDATES] if batched_updates else []
        self._credentials = credentials
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), *options]
        if credentials is not None and not any(k == "grpc.ssl_target_name_override" for k, _ in options):
            self._options.append(("grpc.ssl_target_name_override", MASTER_NAME))
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, scheduler_pb2_grpc.SchedulerStub] = {}
        self._lock = threading.Lock()

    @classmethod
    def secure(cls, tls_dir: str | Path, token: str | None = None, **kwargs: Any) -> GrpcTransport:
        """mTLS with the framework certificate in `tls_dir` (ca.pem, cert.pem, key.pem) and a bearer token."""
        security = ClientSecurity.from_options(tls_dir, token)
        return cls(credentials=security.credentials, token=security.token, **kwargs)

    @classmethod
    def from_env(cls, **kwargs: Any) -> GrpcTransport:
        """Plaintext unless TESSERA_TLS_DIR is set; the token from TESSERA_TOKEN or TESSERA_TOKEN_FILE."""
        security = ClientSecurity.from_env()
        return cls(credentials=security.credentials, token=security.token, **kwargs)

    def _stub(self, address: str) -> scheduler_pb2_grpc.SchedulerStub:
        with self._lock:
            stub = self._stubs.get(address)
            if stub is None:
                if self._credentials is not None:
                    channel = grpc.secure_channel(address, self._credentials, options=self._options)
                else:
                    channel = grpc.insecure_channel(address, options=self._options)
                self._channels[address] = channel
                # the unary calls' client spans; the Subscribe stream keeps its own (see the module doc)
                traced = client_interceptor(tracer_provider=self._tracer_provider, filter_=_unary_response)  # type: ignore[no-untyped-call]
                channel_traced = intercept_channel(channel, traced)  # type: ignore[no-untyped-call]
                stub = self._stubs[address] = scheduler_pb2_grpc.SchedulerStub(channel_traced)
        return stub

    def _tracer(self) -> trace.Tracer:
        if self._tracer_provider is not None:
            return self._tracer_provider.get_tracer(TRACER_NAME)
        return trace.get_tracer(TRACER_NAME)

    def _traced_metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata plus the current span's `traceparent` (when there is a valid one): for
        `Subscribe`, which the gRPC instrumentation leaves out."""
        carrier: dict[str, str] = {}
        try:
            propagate.inject(carrier)
        except Exception:  # noqa: BLE001 - tracing never fails a call
            carrier = {}
        traceparent = carrier.get("traceparent")
        return (*self._metadata, ("traceparent", traceparent)) if traceparent else self._metadata

    def subscribe(self, address: str, info: FrameworkInfo, lease: LeaseClaim = NO_CLAIM) -> GrpcEventStream:
        request = subscribe_request(info, lease, self._capabilities)
        with self._tracer().start_as_current_span("framework.Subscribe", kind=trace.SpanKind.CLIENT,
                                                  attributes={"rpc.method": "Subscribe"}):
            return GrpcEventStream(self._stub(address).Subscribe(request, metadata=self._traced_metadata()))

    def call(self, address: str, header: CallHeader, call: Call, timeout: float) -> CallResult:
        method, request = call_to_proto(header, call)
        stub = self._stub(address)
        # the call as Tessera names it; the instrumentation's CLIENT span (rpc.*) is its child
        with self._tracer().start_as_current_span(f"framework.{method}", kind=trace.SpanKind.INTERNAL,
                                                  attributes={"rpc.method": method}) as span:
            for task_id in _task_ids(request):
                span.set_attribute("tessera.task_id", task_id)  # the first one names the task
                break
            try:
                response = getattr(stub, method)(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as err:
                raise error_from_rpc(err) from err
        if isinstance(response, scheduler_pb2.ReconcileResponse):
            return tuple(status_from_proto(s) for s in response.statuses)
        if isinstance(response, scheduler_pb2.GetValueResponse):
            return (entry_from_proto(response.value),) if response.found else ()
        if isinstance(response, scheduler_pb2.ListValuesResponse):
            return page_from_proto(response)
        if isinstance(response, scheduler_pb2.WriteValuesResponse):
            return tuple(response.versions)
        return ()

    def close(self) -> None:
        with self._lock:
            channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
        for channel in channels:
            channel.close()


def _unary_response(client_info: Any) -> bool:
    """The calls the gRPC instrumentation traces: every one but a response stream (Subscribe)."""
    return not getattr(client_info, "is_server_stream", False)


def _task_ids(request: Any) -> list[str]:
    """The task ids an Accept (launched tasks) or a Kill names."""
    if isinstance(request, scheduler_pb2.AcceptRequest):
        return [t.task_id for op in request.operations for t in op.tasks]
    task_id = getattr(request, "task_id", "")
    return [task_id] if isinstance(request, scheduler_pb2.KillRequest) and task_id else []
