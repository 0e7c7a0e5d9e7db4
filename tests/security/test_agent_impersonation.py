"""Issue 14 item 2: one agent's certificate cannot take over another agent's id.

Real processes on 127.0.0.1: a secured master (mTLS, ACL, Raft password) and two agents, each with its own
certificate signed by the cluster CA (identity `urn:tessera:agent:<name>` in the SAN). A framework runs a
long task on agent A. Then agent B's certificate opens `AgentLink.Connect` and re-registers under A's id
with no tasks — before the fix the master accepted that, marked A's task TASK_LOST and the real agent
killed it. Now the master refuses it with PERMISSION_DENIED before anything is proposed: A's task keeps
running, A stays connected, and no event is written about A or its task.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tessera.control_plane.api.client import MasterClient
from tessera.control_plane.certs import Issued, init_dev_pki, issue, write_tls_dir
from tessera.control_plane.codec import resources_to_proto
from tessera.control_plane.core.acl import token_digest
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.tls import ClientSecurity
from tessera.v1 import agent_pb2, agent_pb2_grpc, common_pb2, operator_pb2, scheduler_pb2, scheduler_pb2_grpc
from tests.support.cluster import free_port, wait_for

TOKENS = {"ops": "tok-ops-impersonation", "tenant": "tok-tenant-impersonation"}
ACL = f"""
[principals.ops]
token_sha256 = "{token_digest(TOKENS['ops'])}"
actions = ["read"]

[principals.tenant]
token_sha256 = "{token_digest(TOKENS['tenant'])}"
roles = ["web"]
users = [""]
"""


@dataclass
class Cluster:
    root: Path
    pki: Path
    grpc: str
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]

    def security(self, tls_dir: str, principal: str | None = None) -> ClientSecurity:
        return ClientSecurity.from_options(self.pki / tls_dir, TOKENS[principal] if principal else None)

    def state(self) -> operator_pb2.GetStateResponse:
        client = MasterClient([self.grpc], timeout=10.0, rpc_timeout=5.0, security=self.security("operator", "ops"))
        try:
            return client.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True))
        finally:
            client.close()

    def events_since(self, index: int) -> list[Any]:
        client = MasterClient([self.grpc], timeout=10.0, rpc_timeout=5.0, security=self.security("operator", "ops"))
        try:
            resp = client.call(lambda s: s.ListEvents,
                               operator_pb2.ListEventsRequest(from_index=index + 1, limit=10_000))
            return list(resp.events)
        finally:
            client.close()

    def agent(self, hostname: str) -> Any:
        return next(a for a in self.state().agents if a.info.hostname == hostname)

    def dump_logs(self) -> str:
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-4000:]}" for p in self.logs if p.exists())


def _agent_tls_dir(pki: Path, name: str) -> Path:
    """A certificate of its own for agent `name`, signed by the cluster's CA."""
    ca = Issued((pki / "ca.pem").read_bytes(), (pki / "ca-key.pem").read_bytes())
    directory = pki / f"agent-{name}"
    write_tls_dir(directory, ca.cert_pem, issue(ca, "agent", name))
    return directory


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("impersonation")
    pki = root / "pki"
    init_dev_pki(pki)
    (pki / "acl.toml").write_text(ACL)
    agent_dirs = {name: _agent_tls_dir(pki, name) for name in ("alpha", "beta")}
    grpc_address, raft_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env.update(PYTHONUNBUFFERED="1", TESSERA_RAFT_PASSWORD="a-long-random-test-raft-password-0123456789")
    tessera = [sys.executable, "-m", "tessera.control_plane.cli.main"]
    logs = [root / "master.log", root / "alpha.log", root / "beta.log"]
    procs: list[subprocess.Popen[bytes]] = []
    c = Cluster(root, pki, grpc_address, procs, logs)
    try:
        with open(logs[0], "ab") as log:
            procs.append(subprocess.Popen(
                [*tessera, "master", "--name", "m1", "--raft", raft_address, "--grpc", grpc_address,
                 "--data-dir", str(root / "m1"), "--tls-dir", str(pki / "master"), "--acl", str(pki / "acl.toml"),
                 "--allocation-interval", "0.2", "--agent-heartbeat-interval", "0.5"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        wait_for(c.state, timeout=30, what="the secure master to serve")
        for name, log_path in zip(("alpha", "beta"), logs[1:], strict=True):
            with open(log_path, "ab") as log:
                procs.append(subprocess.Popen(
                    [*tessera, "agent", "--masters", grpc_address, "--data-dir", str(root / name),
                     "--resources", "cpus:1;mem:512", "--hostname", f"{name}.local",
                     "--tls-dir", str(agent_dirs[name])],
                    stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        wait_for(lambda: sum(1 for a in c.state().agents if a.connected and a.state == common_pb2.AGENT_ACTIVE) == 2,
                 timeout=30, what="both agents to register with their own certificates")
        yield c
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def _run_long_task_on(c: Cluster, agent_id: str, task_id: str) -> None:
    sec = c.security("framework", "tenant")
    stub = scheduler_pb2_grpc.SchedulerStub(sec.channel(c.grpc))
    call = stub.Subscribe(scheduler_pb2.SubscribeRequest(info=common_pb2.FrameworkInfo(
        name="victim-tenant", roles=["web"], failover_timeout_seconds=300.0)), metadata=sec.metadata, timeout=120)
    subscribed = offer = None
    for event in call:
        kind = event.WhichOneof("kind")
        if kind == "subscribed":
            subscribed = event.subscribed
        elif kind == "offers" and subscribed is not None:
            offer = next((o for o in event.offers.offers if o.agent_id == agent_id), None)
            if offer is not None:
                break
    assert subscribed is not None and offer is not None
    task = common_pb2.TaskInfo(task_id=task_id, name=task_id, agent_id=agent_id,
                               command=common_pb2.CommandInfo(shell=True, value="sleep 600"))
    resources_to_proto(Resources.parse("cpus:0.1;mem:16"), task.resources)
    stub.Accept(scheduler_pb2.AcceptRequest(
        header=scheduler_pb2.CallHeader(framework_id=subscribed.framework_id, stream_id=subscribed.stream_id),
        offer_ids=[offer.offer_id], operations=[scheduler_pb2.Operation(type=scheduler_pb2.Operation.LAUNCH,
                                                                        tasks=[task])]),
        metadata=sec.metadata, timeout=10)
    wait_for(lambda: any(t.task.task_id == task_id and t.state == common_pb2.TASK_RUNNING for t in c.state().tasks),
             timeout=30, what=f"{task_id} to run on agent {agent_id}")
    call.cancel()  # the framework disconnects; its failover timeout keeps the task


def _register_as(c: Cluster, tls_dir: str, agent_id: str, hostname: str) -> grpc.StatusCode | str:
    """Open an agent link with the certificate in `tls_dir` and re-register as `agent_id` with no tasks;
    the status code of the refusal, or the kind of the master's first answer when it is not refused."""
    sec = c.security(tls_dir)
    channel = sec.channel(c.grpc)
    try:
        info = common_pb2.AgentInfo(hostname=hostname)
        resources_to_proto(Resources.parse("cpus:1;mem:512"), info.resources)
        register = agent_pb2.AgentMessage(register=agent_pb2.Register(agent_id=agent_id, info=info, tasks=[]))
        call = agent_pb2_grpc.AgentLinkStub(channel).Connect(iter([register]), timeout=15)
        try:
            first = next(call)
        except grpc.RpcError as err:
            return err.code()
        call.cancel()
        return str(first.WhichOneof("kind"))
    finally:
        channel.close()


def test_another_agents_certificate_cannot_reregister_as_a_live_agent(cluster: Cluster) -> None:
    alpha = cluster.agent("alpha.local")
    _run_long_task_on(cluster, alpha.agent_id, "victim-task")
    before = cluster.state()

    # agent beta's own certificate, claiming alpha's id with no tasks (what the impostor sent)
    assert _register_as(cluster, "agent-beta", alpha.agent_id, "alpha.local") == grpc.StatusCode.PERMISSION_DENIED
    # the default agent certificate of `tessera certs init` is another identity too
    assert _register_as(cluster, "agent", alpha.agent_id, "alpha.local") == grpc.StatusCode.PERMISSION_DENIED

    after = cluster.state()
    task = next(t for t in after.tasks if t.task.task_id == "victim-task")
    assert task.state == common_pb2.TASK_RUNNING and task.task.agent_id == alpha.agent_id
    agent = next(a for a in after.agents if a.agent_id == alpha.agent_id)
    assert agent.connected and agent.state == common_pb2.AGENT_ACTIVE
    written = cluster.events_since(before.index)
    assert not [e for e in written if e.type in ("AgentReregistered", "AgentRegistered", "TaskStatusUpdated")], \
        [e.type for e in written]


def test_an_agent_reregisters_under_its_own_certificate(cluster: Cluster) -> None:
    """The same call with alpha's own certificate is a legitimate re-registration (alpha's real process
    then reconnects on its own); it proves the refusal above is about identity, not about the call."""
    beta = cluster.agent("beta.local")
    assert _register_as(cluster, "agent-beta", beta.agent_id, "beta.local") == "registered"
    wait_for(lambda: (a := cluster.agent("beta.local")).connected and a.state == common_pb2.AGENT_ACTIVE,
             timeout=30, what="beta to be connected again")


def test_agent_ids_are_random_not_a_counter(cluster: Cluster) -> None:
    ids = sorted(a.agent_id for a in cluster.state().agents)
    assert len(ids) == 2
    suffixes = [i.removeprefix("agent-") for i in ids]
    # 128 random bits each: no shared prefix beyond chance, nothing to count on from one id to the next
    shared = len(os.path.commonprefix(suffixes))
    assert all(len(s) >= 32 for s in suffixes) and shared < 8, ids
