"""Who may read which sandbox, over the real transports (docs/files.md): a secured master and agent (mTLS,
the ACL on both), tasks of two tenants, and every way in — the agent's file service directly and the
master's proxy. A principal reads its own frameworks' tasks; another principal's task is PERMISSION_DENIED
unless its grant has `logs`; no token is UNAUTHENTICATED; an agent certificate may not read at all; a
server that is not an agent cannot pass for one."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tessera.control_plane.tls import ClientSecurity
from tessera.sdk.errors import PermissionDenied, TesseraError, Unauthenticated
from tessera.sdk.files import SandboxFiles
from tessera.v1 import files_pb2, files_pb2_grpc
from tests.security.tenant_cluster import tenant_cluster, tenants_acl
from tests.support.cluster import wait_for
from tests.support.secure_cluster import SecureCluster, launch, subscribe

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TOKENS = {name: secrets.token_urlsafe(16) for name in ("ops", "alice", "bob", "auditor")}


def acl() -> str:
    # ops: an operator allowed to read every sandbox (`logs`); auditor: an operator who reads the state only
    from tessera.control_plane.core.acl import token_digest

    return tenants_acl(TOKENS, ("read", "logs")) + (
        f'\n[principals.auditor]\ntoken_sha256 = "{token_digest(TOKENS["auditor"])}"\nactions = ["read"]\n')


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    yield from tenant_cluster(tmp_path_factory.mktemp("files-access"), acl(), TOKENS)


@pytest.fixture(scope="module")
def alice_task(cluster: SecureCluster) -> str:
    tenant = subscribe(cluster, "alice", ["analytics"], "alice-files")
    launch(cluster, tenant, "alice-secret", "echo alice-only-output; sleep 600")
    return f"{tenant.framework_id}/alice-secret"


def reader(cluster: SecureCluster, kind: str, principal: str | None, via_master: bool = False) -> SandboxFiles:
    return SandboxFiles(cluster.grpc_addresses, cluster.security(kind, principal), via_master=via_master)


def stdout_of(cluster: SecureCluster, task: str, kind: str, principal: str | None, via_master: bool) -> bytes:
    files = reader(cluster, kind, principal, via_master)
    try:
        wait_for(lambda: files.task(task).stat("stdout")[0].size > 0, timeout=30, what="the task's output")
        return b"".join(files.task(task).read_range("stdout", 0))
    finally:
        files.close()


@pytest.mark.parametrize("via_master", [False, True], ids=["agent", "master-proxy"])
def test_a_principal_reads_its_own_tasks_sandbox(cluster: SecureCluster, alice_task: str, via_master: bool) -> None:
    assert stdout_of(cluster, alice_task, "framework", "alice", via_master) == b"alice-only-output\n"


@pytest.mark.parametrize("via_master", [False, True], ids=["agent", "master-proxy"])
def test_another_principal_cannot_read_it(cluster: SecureCluster, alice_task: str, via_master: bool) -> None:
    files = reader(cluster, "framework", "bob", via_master)
    try:
        sandbox = files.task(alice_task)  # its place is no secret (bob's `read` shows it, redacted)
        for attempt in (lambda: sandbox.read("stdout", 0), lambda: sandbox.list(""),
                        lambda: list(sandbox.follow("stdout", reconnect_for=0))):
            with pytest.raises(PermissionDenied, match="principal bob may not read the sandbox of principal alice"):
                attempt()
    finally:
        files.close()


@pytest.mark.parametrize("via_master", [False, True], ids=["agent", "master-proxy"])
def test_an_operator_needs_the_logs_action(cluster: SecureCluster, alice_task: str, via_master: bool) -> None:
    assert stdout_of(cluster, alice_task, "operator", "ops", via_master) == b"alice-only-output\n"
    files = reader(cluster, "operator", "auditor", via_master)
    try:
        with pytest.raises(PermissionDenied, match="the `logs` action"):
            files.task(alice_task).read("stdout", 0)
    finally:
        files.close()


def agent_stub(cluster: SecureCluster, alice_task: str, security: ClientSecurity) -> files_pb2_grpc.FilesStub:
    address = next(a.info.files_address for a in cluster.state().agents)
    return files_pb2_grpc.FilesStub(security.agent_channel(address))


def test_no_token_is_unauthenticated_and_an_agent_certificate_may_not_read(cluster: SecureCluster,
                                                                          alice_task: str) -> None:
    framework_id, task_id = alice_task.split("/", 1)
    request = files_pb2.ReadFileRequest(task=files_pb2.SandboxRef(framework_id=framework_id, task_id=task_id),
                                        path="stdout")
    anonymous = agent_stub(cluster, alice_task, cluster.security("framework", None))
    with pytest.raises(grpc.RpcError) as exc:
        anonymous.Read(request, timeout=10)
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    as_agent = cluster.security("agent", "alice")
    with pytest.raises(grpc.RpcError) as exc:
        agent_stub(cluster, alice_task, as_agent).Read(request, metadata=as_agent.metadata, timeout=10)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    files = reader(cluster, "framework", None, via_master=True)
    try:
        with pytest.raises(Unauthenticated):
            files.task(alice_task).read("stdout", 0)
    finally:
        files.close()


def test_the_agent_serves_as_agent_tessera_and_a_master_name_is_refused(cluster: SecureCluster,
                                                                       alice_task: str) -> None:
    """The file service's certificate is the agent's own: a client that expects a master (the name every
    master-bound channel verifies) refuses it, so an agent cannot pass for a master."""
    address = next(a.info.files_address for a in cluster.state().agents)
    sec = cluster.security("framework", "alice")
    framework_id, task_id = alice_task.split("/", 1)
    request = files_pb2.StatFileRequest(task=files_pb2.SandboxRef(framework_id=framework_id, task_id=task_id),
                                        path="stdout")
    ok = files_pb2_grpc.FilesStub(sec.agent_channel(address)).Stat(request, metadata=sec.metadata, timeout=10)
    assert ok.file.size > 0
    with pytest.raises(grpc.RpcError) as exc:
        files_pb2_grpc.FilesStub(sec.channel(address)).Stat(request, metadata=sec.metadata, timeout=5)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails: not a master


def test_errors_are_the_sdks_error_tree(cluster: SecureCluster, alice_task: str) -> None:
    files = reader(cluster, "framework", "alice")
    try:
        with pytest.raises(TesseraError):
            files.task(alice_task).read("../../etc/passwd", 0)
    finally:
        files.close()


def test_secrets_stay_in_the_run_directory_outside_the_sandbox(cluster: SecureCluster, alice_task: str,
                                                               tmp_path: Path) -> None:
    """launch.json (the task's environment and argv) lives beside the sandbox, not in it: no path reaches it."""
    files = reader(cluster, "framework", "alice")
    try:
        names = {f.path for f in files.task(alice_task).list("")[0]}
        assert "launch.json" not in names and {"stdout", "stderr"} <= names
    finally:
        files.close()
