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
import tomllib
from collections.abc import Iterator

import grpc
import pytest

from tessera.control_plane.api.auth import load_acl
from tessera.control_plane.certs import init_dev_pki
from tessera.control_plane.core.acl import token_digest
from tessera.v1 import common_pb2, scheduler_pb2
from tests.support.cluster import wait_for
from tests.support.secure_cluster import AgentSpec, SecureCluster, launch_request, secured_cluster

WIDE_TOKEN = "tok-legacy-wide-open"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    root = tmp_path_factory.mktemp("generated-acl")
    pki = root / "pki"
    tokens = init_dev_pki(pki)  # the generated ACL, tokens and Raft password, as `tessera certs init` writes them
    # an operator's explicit opt-in, beside the generated principals: may run tasks as anyone
    with open(pki / "acl.toml", "a") as f:
        f.write(f'\n[principals.legacy]\ntoken_sha256 = "{token_digest(WIDE_TOKEN)}"\n'
                'roles = ["batch"]\nusers = ["*"]\n')
    with secured_cluster(root, pki, tokens, reader="operator",
                         agents=[AgentSpec("generated-acl-agent", resources="cpus:1;mem:512")]) as c:
        yield c


def test_the_generated_framework_grant_names_a_role_and_nobody(cluster: SecureCluster) -> None:
    doc = tomllib.loads((cluster.pki / "acl.toml").read_text())
    framework = doc["principals"]["framework"]
    assert framework["users"] == ["nobody"] and framework["roles"] == ["default"]
    grant = next(g for g in load_acl(cluster.pki / "acl.toml").grants if g.principal == "framework")
    assert not grant.may_run_as("root") and not grant.may_run_as("") and grant.may_run_as("nobody")


def test_a_task_as_root_through_the_generated_acl_is_permission_denied(cluster: SecureCluster) -> None:
    stub, metadata = cluster.scheduler("framework")
    call = stub.Subscribe(scheduler_pb2.SubscribeRequest(info=common_pb2.FrameworkInfo(
        name="generated-tenant", roles=["default"], failover_timeout_seconds=5.0)), metadata=metadata,
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
        try:
            stub.Accept(launch_request(header, offer, task_id, "id -u", user=user), metadata=metadata, timeout=10)
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


def test_the_master_warns_about_each_principal_that_may_run_tasks_as_anyone(cluster: SecureCluster) -> None:
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
