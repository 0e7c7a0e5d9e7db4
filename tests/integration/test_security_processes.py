"""Locked doors, end to end: a real `tessera master` with mTLS, an ACL and a Raft password on 127.0.0.1, a
real `tessera agent` with an agent certificate, frameworks through the SDK and raw gRPC.

Every refusal is checked twice: the status code the caller sees, and that nothing changed afterwards
(no event of the kind the call would have written; the state the call aimed at is as before). The
allocator keeps issuing and rescinding offers meanwhile, so "nothing changed" is checked per event type,
never as "no event at all".
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tessera.control_plane.api.client import MasterClient
from tessera.control_plane.certs import init_dev_pki
from tessera.control_plane.codec import resources_to_proto
from tessera.control_plane.core.acl import token_digest
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.tls import ClientSecurity, load_tls_dir, server_credentials
from tessera.sdk.run import RunOptions, run_task
from tessera.v1 import agent_pb2, agent_pb2_grpc, common_pb2, operator_pb2, scheduler_pb2, scheduler_pb2_grpc
from tests.support.cluster import free_port, wait_for
from tests.support.secure_cluster import (
    TESSERA,
    AgentSpec,
    SecureCluster,
    clean_env,
    code_of,
    launch_request,
    new_pki,
    secured_cluster,
    subscribe,
    wait_running,
)

FORBIDDEN_USER = "daemon"
TOKENS = {"ops": "tok-ops-1234", "alice": "tok-alice-5678", "bob": "tok-bob-9012"}
ACL = f"""
[principals.ops]
token_sha256 = "{token_digest(TOKENS['ops'])}"
actions = ["read", "drain", "quorum", "weights", "quota", "teardown"]

[principals.alice]
token_sha256 = "{token_digest(TOKENS['alice'])}"
roles = ["analytics"]
users = [""]
actions = ["read"]

[principals.bob]
token_sha256 = "{token_digest(TOKENS['bob'])}"
roles = ["web"]
users = [""]
"""
RAFT_PASSWORD = "test-raft-secret"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    if shutil.which("sh") is None:
        pytest.fail("tasks run with /bin/sh")
    root = tmp_path_factory.mktemp("secure")
    with secured_cluster(root, new_pki(root / "pki", ACL), TOKENS, agents=[AgentSpec("secure-agent")]) as c:
        yield c


# ---- the happy path ------------------------------------------------------------------------------------
def test_a_task_runs_end_to_end_over_mtls_with_a_token(cluster: SecureCluster, capfd: pytest.CaptureFixture[str]
                                                       ) -> None:
    options = RunOptions(command=("echo locked-doors",), masters=(cluster.grpc,), role="analytics",
                         name="secure-run", offer_timeout=60.0, connect_timeout=30.0)
    code = run_task(options, security=cluster.security("framework", "alice"))
    out = capfd.readouterr()
    assert code == 0, out.err + cluster.dump_logs()
    assert "locked-doors" in out.out
    st = cluster.state()
    fw = next(f for f in st.frameworks if f.info.name == "secure-run")
    assert fw.info.principal == "alice"  # recorded from the token, not from what the framework claimed


def test_the_cli_works_with_an_operator_certificate_and_token_file(cluster: SecureCluster) -> None:
    token_file = cluster.pki / "ops.token"
    token_file.write_text(TOKENS["ops"] + "\n")
    base = [*TESSERA, "--masters", cluster.grpc,
            "--tls-dir", str(cluster.pki / "operator")]
    env = clean_env()
    ok = subprocess.run([*base, "--token-file", str(token_file), "--json", "agents"], capture_output=True,
                        text=True, timeout=60, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "secure-agent" in ok.stdout
    refused = subprocess.run([*base, "agents"], capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode == 1
    assert "UNAUTHENTICATED" in refused.stderr


# ---- transport: certificates ---------------------------------------------------------------------------
def test_a_client_without_a_certificate_or_with_another_cas_is_refused_at_the_handshake(
        cluster: SecureCluster, tmp_path: Path) -> None:
    before = cluster.state().index
    no_cert = grpc.ssl_channel_credentials(root_certificates=(cluster.pki / "ca.pem").read_bytes())
    other = tmp_path / "other-pki"
    init_dev_pki(other)
    for security in (ClientSecurity(no_cert, TOKENS["ops"]), cluster.security("operator", "ops", pki=other),
                     ClientSecurity(None, TOKENS["ops"])):  # and plaintext
        client = MasterClient([cluster.grpc], timeout=3.0, rpc_timeout=1.0, security=security)
        try:
            with pytest.raises(Exception) as caught:
                client.call(lambda s: s.SetWeight, operator_pb2.SetWeightRequest(role="web", weight=9))
            # no RPC reached the master: the TLS handshake failed, which gRPC reports as UNAVAILABLE
            assert "UNAVAILABLE" in str(caught.value)
        finally:
            client.close()
    assert "RoleWeightSet" not in cluster.event_types_since(before)
    assert all(r.name != "web" or r.weight != 9 for r in cluster.state().roles)


def test_a_server_with_an_agent_certificate_cannot_pass_for_a_master(cluster: SecureCluster) -> None:
    """A rogue server holding a valid agent certificate of the same CA: clients refuse it."""
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(load_tls_dir(cluster.pki / "agent")))
    server.start()
    try:
        for kind in ("operator", "agent", "framework"):
            with cluster.security(kind).channel(f"127.0.0.1:{port}") as ch:
                with pytest.raises(grpc.RpcError) as caught:
                    health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        # the same server with a master certificate is accepted: the refusal above is the name check
        good = grpc.server(ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(servicer, good)
        good_port = good.add_secure_port("127.0.0.1:0", server_credentials(load_tls_dir(cluster.pki / "master")))
        good.start()
        try:
            with cluster.security("operator").channel(f"127.0.0.1:{good_port}") as ch:
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        finally:
            good.stop(0)
    finally:
        server.stop(0)


def test_a_certificate_may_call_only_the_services_of_its_kind(cluster: SecureCluster) -> None:
    before = cluster.state()
    # an agent certificate (with a valid token even) cannot act as a framework or read the cluster
    stub, metadata = scheduler_pb2_grpc.SchedulerStub(cluster.security("agent", "ops").channel(cluster.grpc)), \
        cluster.security("agent", "ops").metadata
    call = stub.Subscribe(scheduler_pb2.SubscribeRequest(info=common_pb2.FrameworkInfo(
        name="agent-as-framework", roles=["web"])), metadata=metadata, timeout=10)
    assert code_of(next, call) == grpc.StatusCode.PERMISSION_DENIED
    agent_client = cluster.client("agent", "ops")
    try:
        assert code_of(agent_client.call, lambda s: s.GetState, operator_pb2.GetStateRequest()) \
            == grpc.StatusCode.PERMISSION_DENIED
    finally:
        agent_client.close()
    # a framework certificate cannot register an agent, an operator certificate cannot announce a master
    fw_sec = cluster.security("framework", "alice")
    link = agent_pb2_grpc.AgentLinkStub(fw_sec.channel(cluster.grpc)).Connect(
        iter([agent_pb2.AgentMessage(register=agent_pb2.Register(info=common_pb2.AgentInfo(hostname="rogue")))]),
        metadata=fw_sec.metadata, timeout=10)
    assert code_of(next, link) == grpc.StatusCode.PERMISSION_DENIED
    ops = cluster.client()
    try:
        assert code_of(ops.call, lambda s: s.AnnounceMaster, operator_pb2.AnnounceMasterRequest(
            name="rogue", raft_address="127.0.0.1:1", grpc_address="127.0.0.1:2")) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        ops.close()
    after = cluster.state()
    assert [a.info.hostname for a in after.agents] == [a.info.hostname for a in before.agents]
    assert not [f for f in after.frameworks if f.info.name == "agent-as-framework"]
    assert not {"AgentRegistered", "MasterAdded", "FrameworkSubscribed"} & set(cluster.event_types_since(before.index))


# ---- tokens and the ACL --------------------------------------------------------------------------------
def test_a_missing_or_wrong_token_is_unauthenticated_and_changes_nothing(cluster: SecureCluster) -> None:
    before = cluster.state()
    for token in (None, "not-a-token"):
        security = ClientSecurity(cluster.security("operator").credentials, token)
        client = MasterClient([cluster.grpc], timeout=5.0, rpc_timeout=3.0, security=security)
        try:
            for method, request in ((lambda s: s.GetState, operator_pb2.GetStateRequest()),
                                    (lambda s: s.SetWeight, operator_pb2.SetWeightRequest(role="web", weight=7)),
                                    (lambda s: s.DrainAgent, operator_pb2.DrainAgentRequest(
                                        agent_id=before.agents[0].agent_id))):
                assert code_of(client.call, method, request) == grpc.StatusCode.UNAUTHENTICATED
        finally:
            client.close()
        stub, _ = cluster.scheduler(None)
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        call = stub.Subscribe(scheduler_pb2.SubscribeRequest(info=common_pb2.FrameworkInfo(
            name="tokenless", roles=["web"])), metadata=metadata, timeout=10)
        assert code_of(next, call) == grpc.StatusCode.UNAUTHENTICATED
    after = cluster.state()
    assert {"RoleWeightSet", "AgentDrainStarted", "FrameworkSubscribed"}.isdisjoint(
        cluster.event_types_since(before.index))
    assert all(a.state == common_pb2.AGENT_ACTIVE for a in after.agents)
    assert not [f for f in after.frameworks if f.info.name == "tokenless"]


def test_operator_actions_outside_the_grant_are_permission_denied(cluster: SecureCluster) -> None:
    before = cluster.state()
    agent_id = before.agents[0].agent_id
    alice = cluster.client("operator", "alice")  # may read, nothing else
    try:
        alice.call(lambda s: s.GetState, operator_pb2.GetStateRequest())
        quota = operator_pb2.SetQuotaRequest(role="analytics")
        resources_to_proto(Resources.parse("cpus:1"), quota.limit)
        for method, request in ((lambda s: s.DrainAgent, operator_pb2.DrainAgentRequest(agent_id=agent_id)),
                                (lambda s: s.SetWeight, operator_pb2.SetWeightRequest(role="analytics", weight=5)),
                                (lambda s: s.SetQuota, quota),
                                (lambda s: s.AddMaster, operator_pb2.AddMasterRequest(raft_address="127.0.0.1:9")),
                                (lambda s: s.RemoveMaster, operator_pb2.RemoveMasterRequest(
                                    raft_address=cluster.raft)),
                                (lambda s: s.TransferLeadership, operator_pb2.TransferLeadershipRequest())):
            assert code_of(alice.call, method, request) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        alice.close()
    bob = cluster.client("operator", "bob")  # no actions at all: not even reading
    try:
        assert code_of(bob.call, lambda s: s.GetState, operator_pb2.GetStateRequest()) \
            == grpc.StatusCode.PERMISSION_DENIED
    finally:
        bob.close()
    after = cluster.state()
    assert {"AgentDrainStarted", "RoleWeightSet", "QuotaSet", "MasterAdded", "MasterRemoved"}.isdisjoint(
        cluster.event_types_since(before.index))
    assert all(a.state == common_pb2.AGENT_ACTIVE for a in after.agents)
    ops = cluster.client()
    try:
        quorum = ops.call(lambda s: s.GetQuorum, operator_pb2.GetQuorumRequest())
        assert [m.raft_address for m in quorum.members] == [cluster.raft]
        assert quorum.leader == cluster.raft
    finally:
        ops.close()


def test_subscribing_outside_ones_roles_or_as_another_principal_is_permission_denied(cluster: SecureCluster) -> None:
    before = cluster.state()
    stub, metadata = cluster.scheduler("alice")
    for info in (common_pb2.FrameworkInfo(name="alice-as-web", roles=["web"]),
                 common_pb2.FrameworkInfo(name="alice-both", roles=["analytics", "web"]),
                 common_pb2.FrameworkInfo(name="alice-as-bob", roles=["analytics"], principal="bob")):
        call = stub.Subscribe(scheduler_pb2.SubscribeRequest(info=info), metadata=metadata, timeout=10)
        assert code_of(next, call) == grpc.StatusCode.PERMISSION_DENIED, info.name
    after = cluster.state()
    assert "FrameworkSubscribed" not in cluster.event_types_since(before.index)
    assert len(after.frameworks) == len(before.frameworks)


def test_a_framework_cannot_touch_another_frameworks_task_nor_launch_as_a_forbidden_user(
        cluster: SecureCluster) -> None:
    alice = subscribe(cluster, "alice", ["analytics"], "alice-long", failover_timeout=5.0, timeout=120)
    a_stub, a_md, a_fid, a_sid = alice.stub, alice.metadata, alice.framework_id, alice.stream_id
    offer = alice.stream.next("offers").offers[0]
    # launching as a user the grant does not list: refused before anything is proposed
    index = cluster.state().index
    assert code_of(a_stub.Accept, launch_request(alice.header, offer, "as-daemon", "true", user=FORBIDDEN_USER),
                   metadata=a_md, timeout=10) == grpc.StatusCode.PERMISSION_DENIED
    assert not {"TaskLaunched", "OfferAccepted"} & set(cluster.event_types_since(index))
    a_stub.Accept(launch_request(alice.header, offer, "alice-sleeper", "sleep 120"), metadata=a_md, timeout=10)
    wait_running(cluster, "alice-sleeper")

    bob = subscribe(cluster, "bob", ["web"], "bob-intruder", failover_timeout=5.0, timeout=120)
    b_stub, b_md, b_fid, b_sid = bob.stub, bob.metadata, bob.framework_id, bob.stream_id
    before = cluster.state()
    header = scheduler_pb2.CallHeader(framework_id=a_fid)  # bob names alice's framework
    for method, request in (
            (b_stub.Kill, scheduler_pb2.KillRequest(header=header, task_id="alice-sleeper")),
            (b_stub.Teardown, scheduler_pb2.TeardownRequest(header=header)),
            (b_stub.Reconcile, scheduler_pb2.ReconcileRequest(header=header)),
            (b_stub.Suppress, scheduler_pb2.SuppressRequest(header=header)),
            (b_stub.Acknowledge, scheduler_pb2.AcknowledgeRequest(header=header, task_id="alice-sleeper",
                                                                   uuid="00000000-0000-0000-0000-000000000000"))):
        assert code_of(method, request, metadata=b_md, timeout=10) == grpc.StatusCode.PERMISSION_DENIED
    resub = b_stub.Subscribe(scheduler_pb2.SubscribeRequest(info=common_pb2.FrameworkInfo(
        framework_id=a_fid, name="alice-long", roles=["web"])), metadata=b_md, timeout=10)
    assert code_of(next, resub) == grpc.StatusCode.PERMISSION_DENIED
    # with its own framework id, bob's kill names a task that framework does not have
    assert code_of(b_stub.Kill, scheduler_pb2.KillRequest(
        header=scheduler_pb2.CallHeader(framework_id=b_fid, stream_id=b_sid), task_id="alice-sleeper"),
        metadata=b_md, timeout=10) == grpc.StatusCode.NOT_FOUND
    after = cluster.state()
    assert not {"TaskKillRequested", "FrameworkRemoved", "FrameworkSuppressed", "TaskStatusAcknowledged",
                "FrameworkSubscribed"} & set(cluster.event_types_since(before.index))
    task = next(t for t in after.tasks if t.task.task_id == "alice-sleeper")
    assert task.state == common_pb2.TASK_RUNNING and task.task.framework_id == a_fid
    alice_fw = next(f for f in after.frameworks if f.framework_id == a_fid)
    assert alice_fw.state == common_pb2.FRAMEWORK_CONNECTED and alice_fw.info.principal == "alice"

    # alice herself may kill it
    a_stub.Kill(scheduler_pb2.KillRequest(header=scheduler_pb2.CallHeader(framework_id=a_fid, stream_id=a_sid),
                                          task_id="alice-sleeper"), metadata=a_md, timeout=10)
    wait_for(lambda: next(t for t in cluster.state().tasks if t.task.task_id == "alice-sleeper").state
             == common_pb2.TASK_KILLED, timeout=30, what="alice's kill to take effect")
    # a principal with the `teardown` grant may tear down another principal's framework (through the
    # Scheduler API, with a framework certificate); that is the one call the grant opens
    ops_stub, ops_md = cluster.scheduler("ops")
    assert code_of(ops_stub.Kill, scheduler_pb2.KillRequest(
        header=scheduler_pb2.CallHeader(framework_id=b_fid), task_id="x"), metadata=ops_md, timeout=10) \
        == grpc.StatusCode.PERMISSION_DENIED
    ops_stub.Teardown(scheduler_pb2.TeardownRequest(header=scheduler_pb2.CallHeader(framework_id=b_fid)),
                      metadata=ops_md, timeout=10)
    wait_for(lambda: next(f for f in cluster.state().frameworks if f.framework_id == b_fid).state
             == common_pb2.FRAMEWORK_REMOVED, timeout=20, what="bob's framework to be torn down")
    alice.stream.call.cancel()
    bob.stream.call.cancel()


def test_sighup_reloads_the_acl_and_a_broken_file_keeps_the_previous_one(cluster: SecureCluster) -> None:
    acl_file = cluster.pki / "acl.toml"
    original = acl_file.read_text()
    carol = "tok-carol-3456"
    master = cluster.master

    def carol_reads() -> grpc.StatusCode:
        client = MasterClient([cluster.grpc], timeout=5.0, rpc_timeout=3.0,
                              security=ClientSecurity(cluster.security("operator").credentials, carol))
        try:
            client.call(lambda s: s.GetState, operator_pb2.GetStateRequest())
            return grpc.StatusCode.OK
        except grpc.RpcError as err:
            return err.code()
        finally:
            client.close()

    try:
        assert carol_reads() == grpc.StatusCode.UNAUTHENTICATED
        acl_file.write_text(original + f'\n[principals.carol]\ntoken_sha256 = "{token_digest(carol)}"\n'
                                       'actions = ["read"]\n')
        master.send_signal(signal.SIGHUP)
        wait_for(lambda: carol_reads() == grpc.StatusCode.OK, timeout=20, what="the reloaded ACL to admit carol")
        acl_file.write_text("principals = [")  # broken: the ACL in force stays
        master.send_signal(signal.SIGHUP)
        wait_for(lambda: "ACL not reloaded" in cluster.master_log(), timeout=20,
                 what="the master to refuse the broken ACL")
        assert carol_reads() == grpc.StatusCode.OK
        assert master.poll() is None
    finally:
        acl_file.write_text(original)
        master.send_signal(signal.SIGHUP)
    wait_for(lambda: carol_reads() == grpc.StatusCode.UNAUTHENTICATED, timeout=20, what="carol to be removed")


# ---- startup -------------------------------------------------------------------------------------------
def _start_master(tmp_path: Path, *flags: str, password: str | None = RAFT_PASSWORD) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TESSERA, "master", "--name", "m1", "--raft", f"127.0.0.1:{free_port()}", "--grpc",
         f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "m"), *flags], capture_output=True, text=True,
        timeout=60, env=clean_env(password))


def test_a_master_refuses_to_start_without_tls_acl_and_raft_password(cluster: SecureCluster, tmp_path: Path) -> None:
    pki = cluster.pki
    for flags, password, missing in (
            ((), RAFT_PASSWORD, "mTLS (--tls-dir), an ACL (--acl)"),
            (("--tls-dir", str(pki / "master")), RAFT_PASSWORD, "an ACL (--acl)"),
            (("--tls-dir", str(pki / "master"), "--acl", str(pki / "acl.toml")), None, "a Raft password"),
            (("--acl", str(pki / "acl.toml")), RAFT_PASSWORD, "mTLS (--tls-dir)")):
        done = _start_master(tmp_path, *flags, password=password)
        assert done.returncode == 2, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.startswith("tessera master:")]
        assert len(lines) == 1 and "refusing to start without" in lines[0] and missing in lines[0], done.stderr
        assert "--insecure-dev" in lines[0]


def test_a_master_refuses_unusable_tls_or_acl_files(cluster: SecureCluster, tmp_path: Path) -> None:
    bad_acl = tmp_path / "acl.toml"
    bad_acl.write_text('[principals.x]\ntoken_sha256 = "nope"\n')
    for flags, expected in (
            (("--tls-dir", str(tmp_path / "missing"), "--acl", str(cluster.pki / "acl.toml")), "cannot read"),
            (("--tls-dir", str(cluster.pki / "master"), "--acl", str(bad_acl)), "token_sha256"),
            (("--insecure-dev", "--acl", str(cluster.pki / "acl.toml")), "--acl needs --tls-dir")):
        done = _start_master(tmp_path, *flags)
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr


def test_three_secured_masters_reach_each_other_over_mtls(cluster: SecureCluster, tmp_path: Path) -> None:
    """Announcements and the quorum fan-out are master-to-master gRPC calls: they go over mTLS with the
    masters' own certificate, so `quorum status` sees every member."""
    with secured_cluster(tmp_path, cluster.pki, TOKENS, masters=3, master_flags=()) as three:
        client = three.client()

        def all_reachable() -> Any:
            q = client.call(lambda s: s.GetQuorum, operator_pb2.GetQuorumRequest())
            ok = len(q.members) == 3 and all(m.reachable and m.grpc_address for m in q.members)
            return q if ok else None

        try:
            quorum = wait_for(all_reachable, timeout=60, what="every member reachable over mTLS")
        finally:
            client.close()
        assert {m.grpc_address for m in quorum.members} == set(three.grpc_addresses)


# ---- tessera up --secure ---------------------------------------------------------------------------------
def test_up_secure_runs_a_cluster_that_commands_from_its_directory_reach_with_certificates_and_tokens(
        tmp_path: Path) -> None:
    from tests.integration.test_up import TESSERA, Up, child_pids, clean_env, gone, kill_all

    up = Up(tmp_path, "--secure", "--masters", "1", "--agents", "1", "--duration", "180")
    state_file = tmp_path / ".tessera" / "cluster.json"
    pids: list[int] = []
    try:
        up.wait_ready()
        assert any(line.startswith("SECURE DEV MODE") for line in up.lines)
        assert not any("INSECURE" in line for line in up.lines)
        pids = child_pids(state_file)
        master_cmdline = psutil.Process(pids[0]).cmdline()
        assert "--insecure-dev" not in master_cmdline and "--tls-dir" in master_cmdline and "--acl" in master_cmdline
        address = up.line_starting("masters: ").removeprefix("masters: ")

        # from the cluster's directory, no flags: cluster.json names the operator's and framework's files
        agents = subprocess.run([*TESSERA, "--json", "agents"], cwd=tmp_path, env=clean_env(),
                                capture_output=True, text=True, timeout=60)
        assert agents.returncode == 0 and len(json.loads(agents.stdout)) == 1, agents.stderr
        run = subprocess.run([*TESSERA, "run", "--user", "nobody", "--", "echo up-secure"], cwd=tmp_path, env=clean_env(),
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "up-secure" in run.stdout, run.stderr
        # the generated framework grant: tasks as `nobody` only, never as the agent's own user (root here)
        as_agent_user = subprocess.run([*TESSERA, "run", "--offer-timeout", "3", "--", "echo as-root"], cwd=tmp_path,
                                       env=clean_env(), capture_output=True, text=True, timeout=120)
        assert as_agent_user.returncode != 0 and "as-root" not in as_agent_user.stdout
        assert "may not run tasks as user" in as_agent_user.stderr, as_agent_user.stderr
        # a plaintext client never gets in, a wrong token over mTLS is UNAUTHENTICATED
        plain = subprocess.run([*TESSERA, "--masters", address, "--timeout", "2", "agents"],
                               cwd=tmp_path, env={**clean_env(), "TESSERA_TOKEN": "x"}, capture_output=True,
                               text=True, timeout=60)
        assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr, plain.stderr
        pki = tmp_path / ".tessera" / "pki"
        wrong = subprocess.run([*TESSERA, "--masters", address, "--tls-dir", str(pki / "operator"), "agents"],
                               cwd=tmp_path, env={**clean_env(), "TESSERA_TOKEN": "x"}, capture_output=True,
                               text=True, timeout=60)
        assert wrong.returncode == 1 and "UNAUTHENTICATED" in wrong.stderr, wrong.stderr

        os.kill(up.proc.pid, signal.SIGTERM)
        assert up.proc.wait(timeout=60) == 0, up.output()
        assert all(gone(p) for p in pids)
    finally:
        kill_all(up, pids)
