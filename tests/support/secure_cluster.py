"""Secured clusters as real processes on 127.0.0.1: masters with mTLS, an ACL and a Raft password, agents
with certificates of the same CA. The one set-up of the tests that check who may do what over the real
transports (`tests/security/`, `tests/integration/test_security_processes.py`); `tests.support.cluster`
is its insecure sibling (`--insecure-dev` masters for everything else).

- `new_pki(directory, acl)`: the layout `tessera certs init` writes, with the caller's ACL in place of the
  generated one (`init_dev_pki` itself when the generated ACL is wanted).
- `secured_cluster(root, pki, tokens, ...)`: starts the masters (all with the PKI's `master` certificate,
  its ACL and its Raft password) and the agents, waits until a master serves consistent reads and every
  agent is registered over mTLS, and yields a `SecureCluster`. When the body fails, the processes' logs are
  printed. On the way out it kills, by PID, what it started and every process under `root` (task
  supervisors and tasks outlive their agents by design).
- `SecureCluster`: clients, stubs and reads as a certificate kind (`operator`, `framework`, `agent`,
  `master`: the PKI's directories) and a principal of `tokens`. The helper's own reads (readiness,
  `state()`, events) go as `reader` (`ops` unless told) with the operator certificate; its grant needs
  `read`.
- Raw framework calls: `Stream` (a Subscribe read by a pump thread), `subscribe`, `launch_request`,
  `launch`; and `code_of`, the status code of a refused call.

Processes are started through `tests.support.cluster.spawn` (they die with the test runner) without a
preexec_fn: forking a Python child of a process with live gRPC threads can crash the child.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tessera.control_plane.api.client import MasterClient
from tessera.control_plane.certs import RAFT_PASSWORD_FILE, init_dev_pki, issue_agent
from tessera.control_plane.codec import resources_to_proto
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.tls import ClientSecurity
from tessera.v1 import common_pb2, operator_pb2, operator_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from tests.support.cluster import free_port, kill_processes_under, spawn, wait_for

TESSERA = [sys.executable, "-m", "tessera.control_plane.cli.main"]
# what the tests that launch tasks want: offers every 0.2 s, an agent's loss noticed quickly
FAST_MASTER_FLAGS = ("--allocation-interval", "0.2", "--agent-heartbeat-interval", "0.5")
TASK_RESOURCES = "cpus:0.1;mem:16"


def clean_env(raft_password: str | None = None) -> dict[str, str]:
    """This process's environment without any `TESSERA_*` variable (the caller's shell must not leak a
    token, a TLS directory or a password into the test), with `raft_password` as the Raft password."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env["PYTHONUNBUFFERED"] = "1"
    if raft_password:
        env["TESSERA_RAFT_PASSWORD"] = raft_password
    return env


def new_pki(directory: Path, acl: str) -> Path:
    """A fresh dev PKI in `directory` (CA, a certificate per kind, a Raft password) whose ACL is `acl`."""
    init_dev_pki(directory)
    (directory / "acl.toml").write_text(acl)
    return directory


@dataclass(frozen=True)
class AgentSpec:
    """One agent of a secured cluster. `certificate`: a name to issue the agent a certificate of its own
    for (into `pki/agent-<name>`; the master binds the agent's id to that name); None: the PKI's default
    agent certificate (`pki/agent`)."""

    hostname: str
    resources: str = "cpus:2;mem:1024"
    certificate: str | None = None


@dataclass
class SecureCluster:
    root: Path
    pki: Path
    tokens: Mapping[str, str]
    grpc_addresses: list[str]
    raft_addresses: list[str]
    reader: str = "ops"
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)  # masters first, then agents
    logs: list[Path] = field(default_factory=list)  # one per process, in the same order

    @property
    def grpc(self) -> str:
        """The first master's gRPC address (the only one of a one-master cluster)."""
        return self.grpc_addresses[0]

    @property
    def raft(self) -> str:
        return self.raft_addresses[0]

    @property
    def master(self) -> subprocess.Popen[bytes]:
        """The first master's process."""
        return self.procs[0]

    def master_log(self) -> str:
        return self.logs[0].read_text(errors="replace")

    def security(self, kind: str, principal: str | None = None, *, pki: Path | None = None) -> ClientSecurity:
        """The certificate of `kind` (of another PKI when `pki` is given) and `principal`'s token (none
        when `principal` is None)."""
        return ClientSecurity.from_options((pki or self.pki) / kind, self.tokens[principal] if principal else None)

    def client(self, kind: str = "operator", principal: str | None = None, *, pki: Path | None = None,
               rpc_timeout: float = 10.0) -> MasterClient:
        """An operator client as `kind` and `principal` (the reader when not named)."""
        return MasterClient(self.grpc_addresses, timeout=10.0, rpc_timeout=rpc_timeout,
                            security=self.security(kind, principal or self.reader, pki=pki))

    def operator_stub(self, kind: str, principal: str | None) -> tuple[Any, tuple[tuple[str, str], ...]]:
        sec = self.security(kind, principal)
        return operator_pb2_grpc.OperatorStub(sec.channel(self.grpc)), sec.metadata

    def scheduler(self, principal: str | None, kind: str = "framework") -> tuple[Any, tuple[tuple[str, str], ...]]:
        sec = self.security(kind, principal)
        return scheduler_pb2_grpc.SchedulerStub(sec.channel(self.grpc)), sec.metadata

    def state(self, kind: str = "operator", principal: str | None = None) -> operator_pb2.GetStateResponse:
        """A consistent read of the state (as the reader when `principal` is not named)."""
        c = self.client(kind, principal)
        try:
            return c.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True))
        finally:
            c.close()

    def events_since(self, index: int) -> list[operator_pb2.EventRecord]:
        c = self.client()
        try:
            resp = c.call(lambda s: s.ListEvents, operator_pb2.ListEventsRequest(from_index=index + 1, limit=10_000))
            return list(resp.events)
        finally:
            c.close()

    def event_types_since(self, index: int) -> list[str]:
        return [e.type for e in self.events_since(index)]

    def agent(self, hostname: str) -> Any:
        return next(a for a in self.state().agents if a.info.hostname == hostname)

    def dump_logs(self) -> str:
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-4000:]}" for p in self.logs if p.exists())

    def _serving(self) -> bool:
        """A consistent read answers (a master leads and serves); fails at once when a master exited."""
        exited = [(p, log) for p, log in zip(self.procs, self.logs, strict=True) if p.poll() is not None]
        if exited:
            raise AssertionError("a master exited: " + ", ".join(f"exit code {p.returncode}, log {log}"
                                                                 for p, log in exited))
        c = MasterClient(self.grpc_addresses, timeout=2.0, rpc_timeout=2.0,
                         security=self.security("operator", self.reader))
        try:
            c.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True))
            return True
        except Exception:  # noqa: BLE001 - not serving yet
            return False
        finally:
            c.close()


@contextmanager
def secured_cluster(root: Path, pki: Path, tokens: Mapping[str, str], *, masters: int = 1,
                    agents: Sequence[AgentSpec] = (), master_flags: Sequence[str] = FAST_MASTER_FLAGS,
                    reader: str = "ops", timeout: float = 60.0) -> Iterator[SecureCluster]:
    """Start `masters` secured masters and `agents` under `root`; yield once a master serves and every
    agent is registered. See the module docstring."""
    root.mkdir(parents=True, exist_ok=True)
    env = clean_env((pki / RAFT_PASSWORD_FILE).read_text().strip())
    members = [(f"m{i + 1}", f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}") for i in range(masters)]
    c = SecureCluster(root, pki, tokens, [g for _, _, g in members], [r for _, r, _ in members], reader)
    try:
        for name, raft, grpc_address in members:
            peers = [r for _, r, _ in members if r != raft]
            c.logs.append(root / f"{name}.log")
            c.procs.append(spawn([*TESSERA, "master", "--name", name, "--raft", raft, "--grpc", grpc_address,
                                  *(["--peers", ",".join(peers)] if peers else []), "--data-dir", str(root / name),
                                  "--tls-dir", str(pki / "master"), "--acl", str(pki / "acl.toml"), *master_flags],
                                 c.logs[-1], env))
        wait_for(c._serving, timeout=timeout, what="a secured master to serve")
        for i, spec in enumerate(agents):
            tls_dir = (pki / "agent" if spec.certificate is None
                       else issue_agent(pki, spec.certificate, pki / f"agent-{spec.certificate}"))
            name = f"a{i + 1}"
            c.logs.append(root / f"{name}.log")
            c.procs.append(spawn([*TESSERA, "agent", "--masters", ",".join(c.grpc_addresses), "--data-dir",
                                  str(root / name), "--resources", spec.resources, "--hostname", spec.hostname,
                                  "--tls-dir", str(tls_dir), "--acl", str(pki / "acl.toml")], c.logs[-1], env))
        if agents:
            wait_for(lambda: sum(1 for a in c.state().agents if a.connected and a.state == common_pb2.AGENT_ACTIVE)
                     == len(agents), timeout=timeout, what=f"{len(agents)} agent(s) to register over mTLS")
        yield c
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        for p in c.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        kill_processes_under(root)


def code_of(fn: Any, *args: Any, **kw: Any) -> grpc.StatusCode:
    """The status code `fn(*args, **kw)` is refused with; fails the test when it is not refused."""
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
        """The next event of `kind` (`subscribed`, `offers`, ...); fails the test when the stream ends."""
        while True:
            item = self.events.get(timeout=timeout)
            if isinstance(item, grpc.RpcError):
                raise AssertionError(f"the subscription ended: {item}")
            if item.WhichOneof("kind") == kind:
                return getattr(item, kind)


@dataclass
class Tenant:
    """A framework subscribed through raw gRPC: its stream, its Scheduler stub and token, its ids."""

    stream: Stream
    stub: Any
    metadata: tuple[tuple[str, str], ...]
    framework_id: str
    stream_id: str

    @property
    def header(self) -> scheduler_pb2.CallHeader:
        return scheduler_pb2.CallHeader(framework_id=self.framework_id, stream_id=self.stream_id)


def subscribe(c: SecureCluster, principal: str, roles: Sequence[str], name: str, *,
              failover_timeout: float = 30.0, timeout: float = 300.0) -> Tenant:
    """Subscribe as `principal` (framework certificate) under `roles`; fails the test when refused."""
    stub, metadata = c.scheduler(principal)
    stream = Stream(stub.Subscribe(scheduler_pb2.SubscribeRequest(info=common_pb2.FrameworkInfo(
        name=name, roles=list(roles), failover_timeout_seconds=failover_timeout)), metadata=metadata,
        timeout=timeout))
    first = stream.next("subscribed")
    return Tenant(stream, stub, metadata, first.framework_id, first.stream_id)


def launch_request(header: scheduler_pb2.CallHeader, offer: Any, task_id: str, command: str, *,
                   user: str = "", arguments: Sequence[str] = (), environment: Mapping[str, str] | None = None,
                   labels: Mapping[str, str] | None = None) -> scheduler_pb2.AcceptRequest:
    """Accept `offer` with one task (`TASK_RESOURCES`) running `command` (through the shell when no
    `arguments` are given) as `user` ("": the agent's own user)."""
    cmd = common_pb2.CommandInfo(shell=not arguments, value=command, arguments=list(arguments), user=user)
    for k, v in (environment or {}).items():
        cmd.environment.add(key=k, value=v)
    task = common_pb2.TaskInfo(task_id=task_id, name=task_id, agent_id=offer.agent_id, command=cmd)
    for k, v in (labels or {}).items():
        task.labels.add(key=k, value=v)
    resources_to_proto(Resources.parse(TASK_RESOURCES), task.resources)
    return scheduler_pb2.AcceptRequest(header=header, offer_ids=[offer.offer_id], operations=[
        scheduler_pb2.Operation(type=scheduler_pb2.Operation.LAUNCH, tasks=[task])])


def wait_running(c: SecureCluster, task_id: str, timeout: float = 30.0) -> None:
    wait_for(lambda: any(t.task.task_id == task_id and t.state == common_pb2.TASK_RUNNING for t in c.state().tasks),
             timeout=timeout, what=f"task {task_id} to run")


def launch(c: SecureCluster, tenant: Tenant, task_id: str, command: str, *, arguments: Sequence[str] = (),
           environment: Mapping[str, str] | None = None, labels: Mapping[str, str] | None = None,
           trace_id: str = "") -> None:
    """Launch one task from the tenant's next offer (with `trace_id` as the call's trace, when given) and
    wait until it runs."""
    offer = tenant.stream.next("offers").offers[0]
    request = launch_request(tenant.header, offer, task_id, command, arguments=arguments, environment=environment,
                             labels=labels)
    metadata = tenant.metadata + ((("traceparent", f"00-{trace_id}-{'1' * 16}-01"),) if trace_id else ())
    tenant.stub.Accept(request, metadata=metadata, timeout=10)
    wait_running(c, task_id)
