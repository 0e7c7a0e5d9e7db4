"""Issue 14 item 8: the ACL `tessera certs init` generates no longer lets a framework run tasks as root.

Its `framework` principal may subscribe under the role `default` only and run tasks as `nobody` only (never
`"*"`, never `""`, the agent's own user — root when the agent runs as root). A grant of `users = ["*"]`
remains possible as an explicit opt-in, and the master then logs a WARNING naming each such principal
whenever it loads the ACL, at start and at every SIGHUP reload.

Real processes on 127.0.0.1: a master started with the generated certificates, ACL and Raft password
file, and the agent of the generated `agent` directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tessera.control_plane.api.auth import load_acl
from tessera.control_plane.api.client import MasterClient
from tessera.control_plane.certs import init_dev_pki
from tessera.control_plane.codec import resources_to_proto
from tessera.control_plane.core.acl import token_digest
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.tls import ClientSecurity
from tessera.v1 import common_pb2, operator_pb2, scheduler_pb2, scheduler_pb2_grpc
from tests.support.cluster import free_port, wait_for

WIDE_TOKEN = "tok-legacy-wide-open"


@dataclass
class Cluster:
    pki: Path
    grpc: str
    master: subprocess.Popen[bytes]
    logs: list[Path]

    def security(self, kind: str) -> ClientSecurity:
        return ClientSecurity.from_options(self.pki / kind, (self.pki / "tokens" / f"{kind}.token").read_text())

    def state(self) -> operator_pb2.GetStateResponse:
        client = MasterClient([self.grpc], timeout=10.0, rpc_timeout=5.0, security=self.security("operator"))
        try:
            return client.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True))
        finally:
            client.close()

    def master_log(self) -> str:
        return self.logs[0].read_text(errors="replace")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("generated-acl")
    pki = root / "pki"
    init_dev_pki(pki)
    # an operator's explicit opt-in, beside the generated principals: may run tasks as anyone
    with open(pki / "acl.toml", "a") as f:
        f.write(f'\n[principals.legacy]\ntoken_sha256 = "{token_digest(WIDE_TOKEN)}"\n'
                'roles = ["batch"]\nusers = ["*"]\n')
    grpc_address, raft_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env.update(PYTHONUNBUFFERED="1", TESSERA_RAFT_PASSWORD=(pki / "raft-password").read_text().strip())
    tessera = [sys.executable, "-m", "tessera.control_plane.cli.main"]
    logs = [root / "master.log", root / "agent.log"]
    procs: list[subprocess.Popen[bytes]] = []
    with open(logs[0], "ab") as log:
        procs.append(subprocess.Popen(
            [*tessera, "master", "--name", "m1", "--raft", raft_address, "--grpc", grpc_address,
             "--data-dir", str(root / "m1"), "--tls-dir", str(pki / "master"), "--acl", str(pki / "acl.toml"),
             "--allocation-interval", "0.2"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
    c = Cluster(pki, grpc_address, procs[0], logs)
    try:
        wait_for(c.state, timeout=30, what="the secure master to serve")
        with open(logs[1], "ab") as log:
            procs.append(subprocess.Popen(
                [*tessera, "agent", "--masters", grpc_address, "--data-dir", str(root / "a1"),
                 "--resources", "cpus:1;mem:512", "--hostname", "generated-acl-agent",
                 "--tls-dir", str(pki / "agent")],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        wait_for(lambda: any(a.connected and a.state == common_pb2.AGENT_ACTIVE for a in c.state().agents),
                 timeout=30, what="the agent to register")
        yield c
    except BaseException:
        for p in logs:
            if p.exists():
                print(f"--- {p}\n{p.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def test_the_generated_framework_grant_names_a_role_and_nobody(cluster: Cluster) -> None:
    doc = tomllib.loads((cluster.pki / "acl.toml").read_text())
    framework = doc["principals"]["framework"]
    assert framework["users"] == ["nobody"] and framework["roles"] == ["default"]
    grant = next(g for g in load_acl(cluster.pki / "acl.toml").grants if g.principal == "framework")
    assert not grant.may_run_as("root") and not grant.may_run_as("") and grant.may_run_as("nobody")


def test_a_task_as_root_through_the_generated_acl_is_permission_denied(cluster: Cluster) -> None:
    sec = cluster.security("framework")
    stub = scheduler_pb2_grpc.SchedulerStub(sec.channel(cluster.grpc))
    call = stub.Subscribe(scheduler_pb2.SubscribeRequest(info=common_pb2.FrameworkInfo(
        name="generated-tenant", roles=["default"], failover_timeout_seconds=5.0)), metadata=sec.metadata,
        timeout=120)
    subscribed = offer = None
    for event in call:
        kind = event.WhichOneof("kind")
        if kind == "subscribed":
            subscribed = event.subscribed
        elif kind == "offers" and subscribed is not None and event.offers.offers:
            offer = event.offers.offers[0]
            break
    assert subscribed is not None and offer is not None
    header = scheduler_pb2.CallHeader(framework_id=subscribed.framework_id, stream_id=subscribed.stream_id)

    def accept(task_id: str, user: str) -> grpc.StatusCode:
        task = common_pb2.TaskInfo(task_id=task_id, name=task_id, agent_id=offer.agent_id,
                                   command=common_pb2.CommandInfo(shell=True, value="id -u", user=user))
        resources_to_proto(Resources.parse("cpus:0.1;mem:16"), task.resources)
        try:
            stub.Accept(scheduler_pb2.AcceptRequest(header=header, offer_ids=[offer.offer_id], operations=[
                scheduler_pb2.Operation(type=scheduler_pb2.Operation.LAUNCH, tasks=[task])]),
                metadata=sec.metadata, timeout=10)
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    index = cluster.state().index
    # root by name, and no user at all (the agent's own user: root here)
    assert accept("as-root", "root") == grpc.StatusCode.PERMISSION_DENIED
    assert accept("as-agent-user", "") == grpc.StatusCode.PERMISSION_DENIED
    state = cluster.state()
    assert not [t for t in state.tasks if t.task.task_id in ("as-root", "as-agent-user")]
    assert state.index >= index
    # the user the grant names is accepted
    assert accept("as-nobody", "nobody") == grpc.StatusCode.OK
    wait_for(lambda: any(t.task.task_id == "as-nobody" for t in cluster.state().tasks), timeout=30,
             what="the task as nobody to be launched")
    call.cancel()


def test_the_master_warns_about_each_principal_that_may_run_tasks_as_anyone(cluster: Cluster) -> None:
    wait_for(lambda: "legacy" in cluster.master_log(), timeout=10, what="the warning at start")
    warned = [line for line in cluster.master_log().splitlines() if "WARNING" in line and "'legacy'" in line]
    assert warned and all("'framework'" not in line for line in warned), cluster.master_log()[-3000:]

    # a reload warns again, about the principals of the new file
    with open(cluster.pki / "acl.toml", "a") as f:
        f.write(f'\n[principals.wider]\ntoken_sha256 = "{token_digest("tok-wider-open")}"\nusers = ["*"]\n')
    os.kill(cluster.master.pid, signal.SIGHUP)
    wait_for(lambda: any("WARNING" in line and "'wider'" in line for line in cluster.master_log().splitlines()),
             timeout=20, what="the warning at reload")
    assert sum(1 for line in cluster.master_log().splitlines() if "WARNING" in line and "'legacy'" in line) >= 2
