"""The guard's stream limits on a real in-process mTLS server: `Health.Watch` stays non-blocking behind
the guard (it holds no pool thread), and streams are counted per client certificate and in all."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tessera.control_plane.api.auth import Guard
from tessera.control_plane.certs import init_dev_pki
from tessera.control_plane.tls import ClientSecurity, load_tls_dir, server_credentials


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("streams") / "pki"
    init_dev_pki(root)
    return root


def serve(pki: Path, threads: int, pool_threads: int) -> tuple[grpc.Server, str]:
    guard = Guard(None, tls=True)
    server = grpc.server(ThreadPoolExecutor(max_workers=threads),
                         interceptors=[guard.interceptor(pool_threads=pool_threads)])
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(load_tls_dir(pki / "master")))
    server.start()
    return server, f"127.0.0.1:{port}"


def watch(channel: grpc.Channel) -> tuple[Any, queue.Queue[Any]]:
    """Open a Health.Watch; the queue gets its first status, or the code it was refused with."""
    call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=30)
    first: queue.Queue[Any] = queue.Queue()

    def pump() -> None:
        try:
            for reply in call:
                first.put(reply.status)
        except grpc.RpcError as err:
            first.put(err.code())

    threading.Thread(target=pump, daemon=True).start()
    return call, first


@pytest.fixture
def channels(pki: Path) -> Iterator[dict[str, Any]]:
    opened: dict[str, Any] = {}
    yield opened
    for ch in opened.values():
        ch.close()


def test_health_watch_behind_the_guard_holds_no_pool_thread(pki: Path, channels: dict[str, Any]) -> None:
    server, address = serve(pki, threads=2, pool_threads=256)  # two threads; caps far above them
    try:
        ch = channels["agent"] = ClientSecurity.from_options(pki / "agent").channel(address)
        calls = [watch(ch) for _ in range(6)]
        assert [q.get(timeout=10) for _, q in calls] == [health_pb2.HealthCheckResponse.SERVING] * 6
        # six open watches, two threads: a unary call is still answered
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        for call, _ in calls:
            call.cancel()
    finally:
        server.stop(0)


def test_streams_are_counted_per_certificate_and_in_all(pki: Path, channels: dict[str, Any]) -> None:
    server, address = serve(pki, threads=8, pool_threads=8)  # 2 threads kept, 6 streams, 3 per peer
    try:
        for kind in ("agent", "framework", "operator"):
            channels[kind] = ClientSecurity.from_options(pki / kind).channel(address)
        agent = [watch(channels["agent"]) for _ in range(4)]
        outcomes = sorted(str(q.get(timeout=10)) for _, q in agent)
        assert outcomes.count(str(grpc.StatusCode.RESOURCE_EXHAUSTED)) == 1, outcomes
        framework = [watch(channels["framework"]) for _ in range(3)]
        assert all(q.get(timeout=10) == health_pb2.HealthCheckResponse.SERVING for _, q in framework)
        # six streams open: the next one is refused whoever asks, until one closes
        call, q = watch(channels["operator"])
        assert q.get(timeout=10) == grpc.StatusCode.RESOURCE_EXHAUSTED
        framework[0][0].cancel()
        again = None
        for _ in range(50):  # the slot is released when the cancelled call terminates on the server
            again, q = watch(channels["operator"])
            if q.get(timeout=10) == health_pb2.HealthCheckResponse.SERVING:
                break
            threading.Event().wait(0.05)
        else:
            raise AssertionError("the slot of a cancelled stream was not released")
        for c, _ in [*agent, *framework]:
            c.cancel()
        if again is not None:
            again.cancel()
    finally:
        server.stop(0)
