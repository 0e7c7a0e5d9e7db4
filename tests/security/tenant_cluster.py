"""A secured master (mTLS, an ACL, a Raft password) and one agent as real processes on 127.0.0.1, with
tenants: the shared setup of the tests of who may read, report spans for and change what.

Each test module builds its own cluster from its own ACL text (`secure_cluster`), so a module that pins
a refusal does not depend on another module's grants. Processes are killed by PID when the module ends.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from tessera.control_plane.api.client import MasterClient
from tessera.control_plane.certs import init_dev_pki
from tessera.control_plane.codec import resources_to_proto
from tessera.control_plane.core.acl import token_digest
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.tls import ClientSecurity
from tessera.v1 import common_pb2, operator_pb2, operator_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from tests.support.cluster import free_port, spawn, wait_for

RAFT_PASSWORD = "tenant-tests-raft-password-0123456789"


def tenants_acl(tokens: dict[str, str], ops_actions: tuple[str, ...]) -> str:
    """The ACL of the tenant tests: an operator `ops` with `ops_actions`, and two readers, alice (role
    analytics) and bob (role web), whose tasks run as the agent's own user."""
    actions = ", ".join(f'"{a}"' for a in ops_actions)
    grants = [f'[principals.ops]\ntoken_sha256 = "{token_digest(tokens["ops"])}"\nactions = [{actions}]']
    for principal, role in (("alice", "analytics"), ("bob", "web")):
        grants.append(f'[principals.{principal}]\ntoken_sha256 = "{token_digest(tokens[principal])}"\n'
                      f'roles = ["{role}"]\nusers = [""]\nactions = ["read"]')
    return "\n\n".join(grants) + "\n"


@dataclass
class TenantCluster:
    pki: Path
    grpc: str
    raft: str
    tokens: dict[str, str]
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]

    def security(self, kind: str, principal: str | None) -> ClientSecurity:
        return ClientSecurity.from_options(self.pki / kind, self.tokens[principal] if principal else None)

    def client(self, kind: str, principal: str | None) -> MasterClient:
        return MasterClient([self.grpc], timeout=10.0, rpc_timeout=10.0, security=self.security(kind, principal))

    def operator_stub(self, kind: str, principal: str | None) -> tuple[Any, tuple[tuple[str, str], ...]]:
        sec = self.security(kind, principal)
        return operator_pb2_grpc.OperatorStub(sec.channel(self.grpc)), sec.metadata

    def scheduler(self, principal: str) -> tuple[Any, tuple[tuple[str, str], ...]]:
        sec = self.security("framework", principal)
        return scheduler_pb2_grpc.SchedulerStub(sec.channel(self.grpc)), sec.metadata

    def state(self, kind: str = "operator", principal: str | None = "ops") -> operator_pb2.GetStateResponse:
        c = self.client(kind, principal)
        try:
            return c.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True))
        finally:
            c.close()

    def event_types_since(self, index: int) -> list[str]:
        c = self.client("operator", "ops")
        try:
            resp = c.call(lambda s: s.ListEvents, operator_pb2.ListEventsRequest(from_index=index + 1, limit=10_000))
            return [e.type for e in resp.events]
        finally:
            c.close()

    def dump_logs(self) -> str:
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-4000:]}" for p in self.logs if p.exists())


def secure_cluster(root: Path, acl: str, tokens: dict[str, str]) -> Iterator[TenantCluster]:
    """Start the master and the agent; yield the cluster; kill both by PID."""
    pki = root / "pki"
    init_dev_pki(pki)
    (pki / "acl.toml").write_text(acl)
    grpc_address, raft_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env.update(PYTHONUNBUFFERED="1", TESSERA_RAFT_PASSWORD=RAFT_PASSWORD)
    tessera = [sys.executable, "-m", "tessera.control_plane.cli.main"]
    logs = [root / "master.log", root / "agent.log"]
    procs = [spawn([*tessera, "master", "--name", "m1", "--raft", raft_address, "--grpc", grpc_address,
                    "--data-dir", str(root / "m1"), "--tls-dir", str(pki / "master"), "--acl", str(pki / "acl.toml"),
                    "--allocation-interval", "0.2", "--agent-heartbeat-interval", "0.5"], logs[0], env)]
    c = TenantCluster(pki, grpc_address, raft_address, tokens, procs, logs)
    try:
        wait_for(lambda: _serving(c), timeout=30, what="the secure master to lead")
        procs.append(spawn([*tessera, "agent", "--masters", grpc_address, "--data-dir", str(root / "a1"),
                            "--resources", "cpus:2;mem:1024", "--hostname", "tenant-agent",
                            "--tls-dir", str(pki / "agent")], logs[1], env))
        wait_for(lambda: any(a.connected and a.state == common_pb2.AGENT_ACTIVE for a in c.state().agents),
                 timeout=30, what="the agent to register over mTLS")
        yield c
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def _serving(c: TenantCluster) -> bool:
    try:
        client = c.client("operator", "ops")
        try:
            q = client.call(lambda s: s.GetQuorum, operator_pb2.GetQuorumRequest(), timeout=2.0)
            return bool(q.leader_grpc)
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - not up yet
        return False


def code_of(fn: Any, *args: Any, **kw: Any) -> grpc.StatusCode:
    try:
        fn(*args, **kw)
    except grpc.RpcError as err:
        return err.code()
    raise AssertionError("the call was not refused")


class Stream:
    """A raw Subscribe call read by a pump thread (bounded by the call's deadline)."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.events: queue.Queue[Any] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        try:
            for e in self.call:
                self.events.put(e)
        except grpc.RpcError as err:
            self.events.put(err)

    def next(self, kind: str, timeout: float = 30.0) -> Any:
        while True:
            item = self.events.get(timeout=timeout)
            if isinstance(item, grpc.RpcError):
                raise AssertionError(f"the subscription ended: {item}")
            if item.WhichOneof("kind") == kind:
                return getattr(item, kind)


@dataclass
class Tenant:
    stream: Stream
    stub: Any
    metadata: tuple[tuple[str, str], ...]
    framework_id: str
    stream_id: str


def subscribe(c: TenantCluster, principal: str, role: str, name: str) -> Tenant:
    stub, metadata = c.scheduler(principal)
    stream = Stream(stub.Subscribe(scheduler_pb2.SubscribeRequest(info=common_pb2.FrameworkInfo(
        name=name, roles=[role], failover_timeout_seconds=30.0)), metadata=metadata, timeout=300))
    first = stream.next("subscribed")
    return Tenant(stream, stub, metadata, first.framework_id, first.stream_id)


def launch(c: TenantCluster, tenant: Tenant, task_id: str, command: str, *, arguments: tuple[str, ...] = (),
           environment: dict[str, str] | None = None, labels: dict[str, str] | None = None,
           trace_id: str = "") -> None:
    """Launch one task from the tenant's next offer (with `trace_id` as the call's trace, when given) and
    wait until it runs."""
    offer = tenant.stream.next("offers").offers[0]
    cmd = common_pb2.CommandInfo(shell=not arguments, value=command, arguments=list(arguments))
    for k, v in (environment or {}).items():
        cmd.environment.add(key=k, value=v)
    task = common_pb2.TaskInfo(task_id=task_id, name=task_id, agent_id=offer.agent_id, command=cmd)
    for k, v in (labels or {}).items():
        task.labels.add(key=k, value=v)
    resources_to_proto(Resources.parse("cpus:0.1;mem:16"), task.resources)
    request = scheduler_pb2.AcceptRequest(
        header=scheduler_pb2.CallHeader(framework_id=tenant.framework_id, stream_id=tenant.stream_id),
        offer_ids=[offer.offer_id], operations=[scheduler_pb2.Operation(type=scheduler_pb2.Operation.LAUNCH,
                                                                        tasks=[task])])
    metadata = tenant.metadata + ((("traceparent", f"00-{trace_id}-{'1' * 16}-01"),) if trace_id else ())
    tenant.stub.Accept(request, metadata=metadata, timeout=10)
    wait_for(lambda: any(t.task.task_id == task_id and t.state == common_pb2.TASK_RUNNING for t in c.state().tasks),
             timeout=30, what=f"task {task_id} to run")
