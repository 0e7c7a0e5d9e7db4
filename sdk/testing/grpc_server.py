"""`FakeGrpcServer`: the same `FakeMaster` served over real gRPC on 127.0.0.1, one server per master
address of the fake, for tests of the gRPC transport and the command line. Errors go out with the codes
and leader metadata a master sends (`tessera.sdk.errors.status_for_error`)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, cast

import grpc

from tessera.control_plane.wire import LEADER_METADATA_KEY, conflict_trailers
from tessera.sdk._convert import (
    call_from_proto,
    entry_to_proto,
    event_to_proto,
    info_from_proto,
    lease_from_request,
    page_to_proto,
    status_to_proto,
)
from tessera.sdk.errors import TesseraError, conflict_for_error, status_for_error
from tessera.sdk.protocol import CallResult, KvPage
from tessera.sdk.testing.master import FakeMaster
from tessera.sdk.transport import StreamEnded
from tessera.sdk.types import KvEntry, TaskStatus
from tessera.v1 import scheduler_pb2, scheduler_pb2_grpc

__all__ = ["FakeGrpcServer"]


def _abort(context: grpc.ServicerContext, exc: TesseraError) -> None:
    # The codes and metadata a master sends (tessera.sdk.errors.status_for_error and conflict_for_error, the
    # inverse of the SDK's mapping).
    status, details, hint = status_for_error(exc)
    conflict = conflict_for_error(exc)
    if hint:
        context.set_trailing_metadata(((LEADER_METADATA_KEY, hint),))
    elif conflict is not None:
        context.set_trailing_metadata(conflict_trailers(*conflict))
    context.abort(getattr(grpc.StatusCode, status, grpc.StatusCode.INTERNAL), details)


_RESPONSES: dict[str, Callable[[CallResult], Any]] = {
    "Accept": lambda r: scheduler_pb2.AcceptResponse(),
    "Decline": lambda r: scheduler_pb2.DeclineResponse(),
    "Revive": lambda r: scheduler_pb2.ReviveResponse(),
    "Suppress": lambda r: scheduler_pb2.SuppressResponse(),
    "Kill": lambda r: scheduler_pb2.KillResponse(),
    "Acknowledge": lambda r: scheduler_pb2.AcknowledgeResponse(),
    "Reconcile": lambda r: scheduler_pb2.ReconcileResponse(
        statuses=[status_to_proto(s) for s in cast(tuple[TaskStatus, ...], r)]),
    "Teardown": lambda r: scheduler_pb2.TeardownResponse(),
    "Message": lambda r: scheduler_pb2.MessageResponse(),
    "GetValue": lambda r: (scheduler_pb2.GetValueResponse(found=True, value=entry_to_proto(
        cast(tuple[KvEntry, ...], r)[0])) if r else scheduler_pb2.GetValueResponse()),
    "ListValues": lambda r: page_to_proto(cast(KvPage, r)),
    "WriteValues": lambda r: scheduler_pb2.WriteValuesResponse(versions=cast(tuple[int, ...], r)),
}


class _FakeSchedulerService(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, fake: FakeMaster, address: str) -> None:
        self.fake = fake
        self.address = address

    def Subscribe(self, request: scheduler_pb2.SubscribeRequest, context: grpc.ServicerContext) -> Any:
        try:
            info = info_from_proto(request.info)
        except TesseraError as exc:
            _abort(context, exc)
            return
        stream = self.fake._subscribe(self.address, info, lease_from_request(request))
        context.add_callback(stream.cancel)
        while context.is_active():
            try:
                event = stream.next(0.1)
            except StreamEnded as ended:
                if ended.error is not None:
                    _abort(context, ended.error)
                return
            if event is not None:
                yield event_to_proto(event)

    def _unary(self, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            header, call = call_from_proto(request)
            result = self.fake._handle(self.address, header, call)
        except TesseraError as exc:
            _abort(context, exc)
            return None
        return _RESPONSES[method](result)

    def Accept(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Accept", request, context)

    def Decline(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Decline", request, context)

    def Revive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Revive", request, context)

    def Suppress(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Suppress", request, context)

    def Kill(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Kill", request, context)

    def Acknowledge(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Acknowledge", request, context)

    def Reconcile(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Reconcile", request, context)

    def Teardown(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Teardown", request, context)

    def Message(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("Message", request, context)

    def GetValue(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("GetValue", request, context)

    def ListValues(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("ListValues", request, context)

    def WriteValues(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unary("WriteValues", request, context)


class FakeGrpcServer:
    """Serve `fake` over gRPC on a free 127.0.0.1 port, as one more master address of the fake.

        with FakeGrpcServer(fake, leader=True) as server:
            ... SchedulerDriver(..., [server.address]) ...
    """

    def __init__(self, fake: FakeMaster, *, leader: bool = True, host: str = "127.0.0.1") -> None:
        self.fake = fake
        self._server = grpc.server(ThreadPoolExecutor(max_workers=16, thread_name_prefix="fake-master"))
        port = self._server.add_insecure_port(f"{host}:0")
        if port == 0:
            raise OSError(f"cannot bind a port on {host}")
        self.address = f"{host}:{port}"
        scheduler_pb2_grpc.add_SchedulerServicer_to_server(_FakeSchedulerService(fake, self.address), self._server)
        fake.add_address(self.address, leader=leader)

    def start(self) -> FakeGrpcServer:
        self._server.start()
        return self

    def stop(self, grace: float = 0.0) -> None:
        self._server.stop(grace).wait(grace + 2.0)

    def __enter__(self) -> FakeGrpcServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
