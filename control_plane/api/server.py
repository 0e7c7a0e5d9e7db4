"""Build a master's gRPC server: Operator, Scheduler, AgentLink, health checking, reflection.

Every call passes the `Guard` interceptor first (client certificate kind, bearer token, the per-peer and
per-principal limits of `core.limits`, with stream caps derived from `max_workers`; see `api.auth`);
`bind` listens with mTLS when given server credentials (`tessera.control_plane.tls.server_credentials`), in
plaintext only for the insecure development mode.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import server_interceptor

from tessera.control_plane.api.auth import Guard
from tessera.control_plane.core.limits import MasterLimits
from tessera.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    operator_pb2,
    operator_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
]


class _TracedBlocking(grpc.ServerInterceptor):  # type: ignore[misc]
    """The OpenTelemetry server interceptor, applied to blocking handlers only: it re-wraps a behaviour
    into a blocking one, which for a non-blocking handler (`Health.Watch`) would hold a pool thread for
    the stream's whole life."""

    def __init__(self, inner: grpc.ServerInterceptor) -> None:
        self.inner = inner

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or _non_blocking(handler):
            return handler
        return self.inner.intercept_service(lambda _details: handler, details)


def _non_blocking(handler: grpc.RpcMethodHandler) -> bool:
    behavior = (handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream)
    return bool(getattr(behavior, "experimental_non_blocking", False))


class MasterServer:
    """The gRPC server of one master. `bind` returns the actual port (0 picks a free one)."""

    def __init__(
        self,
        operator: operator_pb2_grpc.OperatorServicer,
        *,
        agent_link: agent_pb2_grpc.AgentLinkServicer | None = None,
        scheduler: scheduler_pb2_grpc.SchedulerServicer | None = None,
        max_workers: int = 256,
        tracer_provider: Any = None,
        guard: Guard | None = None,
        limits: MasterLimits | None = None,
    ) -> None:
        self.guard = guard or Guard.open()
        self.operator = operator  # the web UI (control_plane/web/) reads through the same servicer
        interceptors: list[grpc.ServerInterceptor] = [
            self.guard.interceptor(pool_threads=max_workers, limits=limits)]
        if tracer_provider is not None:
            # a server span per call (opentelemetry-instrumentation-grpc); the servicers continue it
            interceptors.append(_TracedBlocking(server_interceptor(tracer_provider=tracer_provider)))
        # A streaming call holds one pool thread for its whole life (agents, frameworks, watchers), so
        # the pool is sized for streams; unary calls beyond it queue instead of failing.
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
            options=GRPC_OPTIONS,
            maximum_concurrent_rpcs=max_workers * 4,
            interceptors=interceptors,
        )
        operator_pb2_grpc.add_OperatorServicer_to_server(operator, self.server)
        services = [operator_pb2.DESCRIPTOR.services_by_name["Operator"].full_name]
        if agent_link is not None:
            agent_pb2_grpc.add_AgentLinkServicer_to_server(agent_link, self.server)
            services.append(agent_pb2.DESCRIPTOR.services_by_name["AgentLink"].full_name)
        if scheduler is not None:
            scheduler_pb2_grpc.add_SchedulerServicer_to_server(scheduler, self.server)
            services.append(scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [
            *services,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, self.server)
        # Until the master process says otherwise (`set_serving`, from runtime/health.py's decisions):
        # the server and the Operator serve, the leader-only services do not.
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        operator_name = operator_pb2.DESCRIPTOR.services_by_name["Operator"].full_name
        for name in services:
            self.set_serving(name, name == operator_name)

    def set_serving(self, service: str, serving: bool) -> None:
        """Set one service's standard gRPC health ("" is the server as a whole). Ignored once the server
        began its graceful shutdown (then everything is NOT_SERVING)."""
        self.health.set(service, health_pb2.HealthCheckResponse.SERVING if serving
                        else health_pb2.HealthCheckResponse.NOT_SERVING)

    def add(self, register: Any, servicer: Any) -> None:
        register(servicer, self.server)

    def bind(self, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
        if credentials is None:
            port = self.server.add_insecure_port(address)
        else:
            port = self.server.add_secure_port(address, credentials)
        if port == 0:
            raise OSError(f"cannot bind gRPC address {address}")
        return port

    def start(self) -> None:
        self.server.start()

    def stop(self, grace: float = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait(grace + 1.0)
