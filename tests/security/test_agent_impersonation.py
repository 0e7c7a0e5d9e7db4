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
from collections.abc import Iterator

import grpc
import pytest

from tessera.control_plane.codec import resources_to_proto
from tessera.control_plane.core.acl import token_digest
from tessera.control_plane.core.resources import Resources
from tessera.v1 import agent_pb2, agent_pb2_grpc, common_pb2, scheduler_pb2
from tests.support.cluster import wait_for
from tests.support.secure_cluster import (
    AgentSpec,
    SecureCluster,
    launch_request,
    new_pki,
    secured_cluster,
    wait_running,
)

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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    root = tmp_path_factory.mktemp("impersonation")
    # each agent with a certificate of its own, signed by the cluster's CA (pki/agent-alpha, pki/agent-beta)
    with secured_cluster(root, new_pki(root / "pki", ACL), TOKENS, agents=[
            AgentSpec(f"{name}.local", resources="cpus:1;mem:512", certificate=name) for name in ("alpha", "beta")]) as c:
        yield c


def _run_long_task_on(c: SecureCluster, agent_id: str, task_id: str) -> None:
    stub, metadata = c.scheduler("tenant")
    call = stub.Subscribe(scheduler_pb2.SubscribeRequest(info=common_pb2.FrameworkInfo(
        name="victim-tenant", roles=["web"], failover_timeout_seconds=300.0)), metadata=metadata, timeout=120)
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
    header = scheduler_pb2.CallHeader(framework_id=subscribed.framework_id, stream_id=subscribed.stream_id)
    stub.Accept(launch_request(header, offer, task_id, "sleep 600"), metadata=metadata, timeout=10)
    wait_running(c, task_id)
    call.cancel()  # the framework disconnects; its failover timeout keeps the task


def _register_as(c: SecureCluster, tls_dir: str, agent_id: str, hostname: str) -> grpc.StatusCode | str:
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


def test_another_agents_certificate_cannot_reregister_as_a_live_agent(cluster: SecureCluster) -> None:
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


def test_an_agent_reregisters_under_its_own_certificate(cluster: SecureCluster) -> None:
    """The same call with alpha's own certificate is a legitimate re-registration (alpha's real process
    then reconnects on its own); it proves the refusal above is about identity, not about the call."""
    beta = cluster.agent("beta.local")
    assert _register_as(cluster, "agent-beta", beta.agent_id, "beta.local") == "registered"
    wait_for(lambda: (a := cluster.agent("beta.local")).connected and a.state == common_pb2.AGENT_ACTIVE,
             timeout=30, what="beta to be connected again")


def test_agent_ids_are_random_not_a_counter(cluster: SecureCluster) -> None:
    ids = sorted(a.agent_id for a in cluster.state().agents)
    assert len(ids) == 2
    suffixes = [i.removeprefix("agent-") for i in ids]
    # 128 random bits each: no shared prefix beyond chance, nothing to count on from one id to the next
    shared = len(os.path.commonprefix(suffixes))
    assert all(len(s) >= 32 for s in suffixes) and shared < 8, ids
