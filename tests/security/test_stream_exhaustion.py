"""Issue 14, item 5: threads held without a token. Before the fix, 270 `Health.Watch` streams from an
agent certificate made a master stop answering (the guard dropped the handler's non-blocking flag, so
every watch held a gRPC pool thread), and an `AgentLink.Connect` that never sent `Register` held its
thread forever.

A real secured master (mTLS, ACL, Raft password) with a small pool (`--grpc-workers 16`) and a fast
first-message timeout (`--limit agent_register_timeout=1`). Silent agent links from the agent
certificate and `Health.Watch` streams from a framework certificate, no token, more of them than the pool
has threads: the master still answers an operator's GetState within a bounded wait; streams beyond a
peer's share are refused with RESOURCE_EXHAUSTED; the silent agent links are closed (INVALID_ARGUMENT)
after the first-message timeout, and their slots are free again afterwards.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tessera.control_plane.core.acl import token_digest
from tessera.v1 import agent_pb2, agent_pb2_grpc, operator_pb2, operator_pb2_grpc
from tests.support.secure_cluster import SecureCluster, new_pki, secured_cluster

pytestmark = pytest.mark.timeout(240)

WORKERS = 16
OPS_TOKEN = "tok-ops-streams"
ACL = f"""
[principals.ops]
token_sha256 = "{token_digest(OPS_TOKEN)}"
actions = ["read"]
"""


@pytest.fixture
def master(tmp_path: Path) -> Iterator[SecureCluster]:
    with secured_cluster(tmp_path, new_pki(tmp_path / "pki", ACL), {"ops": OPS_TOKEN}, master_flags=(
            "--grpc-workers", str(WORKERS), "--limit", "agent_register_timeout=1")) as m:
        yield m


def _get_state(m: SecureCluster, timeout: float) -> operator_pb2.GetStateResponse:
    """One GetState call as the operator, bounded by `timeout` (no retries)."""
    sec = m.security("operator", "ops")
    with sec.channel(m.grpc) as ch:
        return operator_pb2_grpc.OperatorStub(ch).GetState(operator_pb2.GetStateRequest(), metadata=sec.metadata,
                                                           timeout=timeout)


class SilentLink:
    """An AgentLink.Connect stream that never sends anything; `outcome` gets its final status code."""

    def __init__(self, stub: agent_pb2_grpc.AgentLinkStub) -> None:
        self.stop = threading.Event()
        self.outcome: queue.Queue[grpc.StatusCode] = queue.Queue()
        self.call = stub.Connect(self._silence(), timeout=120)
        threading.Thread(target=self._pump, daemon=True).start()

    def _silence(self) -> Iterator[agent_pb2.AgentMessage]:
        self.stop.wait()
        return
        yield  # a generator that yields nothing

    def _pump(self) -> None:
        try:
            for _ in self.call:
                pass
            self.outcome.put(grpc.StatusCode.OK)
        except grpc.RpcError as err:
            self.outcome.put(err.code())

    def close(self) -> None:
        self.stop.set()
        self.call.cancel()


def _watch(stub: health_pb2_grpc.HealthStub, admitted: queue.Queue[Any]) -> Any:
    call = stub.Watch(health_pb2.HealthCheckRequest(), timeout=120)

    def pump() -> None:
        try:
            for reply in call:
                admitted.put(reply.status)
        except grpc.RpcError as err:
            admitted.put(err.code())

    threading.Thread(target=pump, daemon=True).start()
    return call


def test_streams_without_a_token_cannot_take_the_threads_an_operator_needs(master: SecureCluster) -> None:
    agent_channel = master.security("agent").channel(master.grpc)
    framework_channel = master.security("framework").channel(master.grpc)
    links: list[SilentLink] = []
    watches: list[Any] = []
    try:
        # more silent agent links than the pool has threads, from one agent certificate
        agent_stub = agent_pb2_grpc.AgentLinkStub(agent_channel)
        links = [SilentLink(agent_stub) for _ in range(WORKERS + 4)]
        # and more Health.Watch streams than that from a framework certificate, no token
        health_stub = health_pb2_grpc.HealthStub(framework_channel)
        watched: queue.Queue[Any] = queue.Queue()
        watches = [_watch(health_stub, watched) for _ in range(WORKERS * 3)]
        replies = [watched.get(timeout=30) for _ in watches]  # each watch answers or is refused at once
        serving = health_pb2.HealthCheckResponse.SERVING
        assert serving in replies, replies
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in replies, replies  # beyond the peer's share

        # the operator is answered within a bounded wait
        state = _get_state(master, timeout=10)
        assert state is not None

        # links beyond the agent certificate's share were refused at once; the others are closed by the
        # first-message timeout (1 s here), not left holding their threads
        outcomes = [link.outcome.get(timeout=30) for link in links]
        assert set(outcomes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT}, outcomes
        assert grpc.StatusCode.INVALID_ARGUMENT in outcomes and grpc.StatusCode.RESOURCE_EXHAUSTED in outcomes

        # their slots are free again: a new silent link is admitted, and closed by the timeout in turn
        again = SilentLink(agent_stub)
        links.append(again)
        assert again.outcome.get(timeout=30) is grpc.StatusCode.INVALID_ARGUMENT
        _get_state(master, timeout=10)
        assert master.master.poll() is None
    finally:
        for link in links:
            link.close()
        for call in watches:
            call.cancel()
        agent_channel.close()
        framework_channel.close()
