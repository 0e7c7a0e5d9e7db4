"""Health as the operators' own tools see it, on real master and agent processes on 127.0.0.1.

- Three masters: the standard gRPC health stubs (what `grpc_health_probe` calls) show `tessera.v1.Scheduler`
  and `tessera.v1.AgentLink` SERVING on the leader only and `tessera.v1.Operator` and the server as a whole
  on every master; `curl /leader` from every master names the same leader (200 there, 503 elsewhere);
  after the leader is killed both move to the new leader.
- `promtool check metrics` finds nothing to lint in a real master's `/metrics` (no `_created` series).
- systemd readiness: a master and an agent run with `NOTIFY_SOCKET` bound by the test (a unix datagram
  socket in a temporary directory) send READY=1 only once their gRPC port / their `/health` answers.

Needs `curl` and `promtool` (Debian: curl, prometheus): a test fails naming the package when one is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.cluster import LocalCluster, MasterProc, free_port, spawn, stop_process, wait_for
from tests.support.notify import notify_socket

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SCHEDULER, AGENT_LINK, OPERATOR = "tessera.v1.Scheduler", "tessera.v1.AgentLink", "tessera.v1.Operator"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    assert path is not None, f"`{tool}` is not installed: apt-get install -y {package}"
    return path


def check(address: str, service: str) -> int:
    """One standard health check, as grpc_health_probe -addr ADDRESS -service SERVICE makes it."""
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
    return int(reply.status)


def curl(url: str) -> tuple[int, str]:
    """(HTTP status, body) of `curl -s URL`; no redirect is followed (none is expected)."""
    proc = subprocess.run([need("curl", "curl"), "-s", "-m", "5", "-w", "\n%{http_code}", url],
                          capture_output=True, text=True, timeout=15)
    assert proc.returncode == 0, f"curl {url}: exit {proc.returncode} {proc.stderr}"
    body, _, code = proc.stdout.rpartition("\n")
    return int(code), body


def metrics_url(m: MasterProc, path: str) -> str:
    return f"http://{m.extra_flags[1]}{path}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("health"), n=3) as c:
        for m in c.masters:
            m.extra_flags = ["--metrics", f"127.0.0.1:{c.fresh_ports(1)[0]}"]
        c.start_all()
        c.leader(timeout=60)
        yield c


def leader_only_services_settle_on(cluster: LocalCluster, leader: MasterProc) -> None:
    """Wait (bounded) until the leader-only services serve on `leader` and nowhere else."""
    def settled() -> bool:
        return all(check(m.grpc, s) == (SERVING if m is leader else NOT_SERVING)
                   for m in cluster.masters if m.alive for s in (SCHEDULER, AGENT_LINK))

    wait_for(settled, 30, what=f"Scheduler and AgentLink serving on {leader.name} only")


def assert_every_master_names(cluster: LocalCluster, leader: MasterProc) -> None:
    for m in cluster.masters:
        if not m.alive:
            continue
        assert check(m.grpc, "") == SERVING, m.name
        assert check(m.grpc, OPERATOR) == SERVING, m.name
        for service in (SCHEDULER, AGENT_LINK):
            assert check(m.grpc, service) == (SERVING if m is leader else NOT_SERVING), (m.name, service)
        code, body = curl(metrics_url(m, "/leader"))
        answer = json.loads(body)
        assert code == (200 if m is leader else 503), (m.name, code, body)
        assert answer["leader"] == {"name": leader.name, "grpc_address": leader.grpc,
                                    "raft_address": leader.raft}, m.name
        assert answer["name"] == m.name and answer["is_leader"] is (m is leader)
        code, body = curl(metrics_url(m, "/health"))
        health = json.loads(body)
        assert code == 200 and health["status"] == "serving", (m.name, body)
        assert health["role"] == ("leader" if m is leader else "follower")
        assert health["applied_index"] >= 1 and health["term"] >= 1


def test_grpc_health_and_curl_leader_name_the_leader_from_every_master(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    leader_only_services_settle_on(cluster, leader)
    # a follower's /leader names the leader once it learnt its name and address from the log
    wait_for(lambda: all(json.loads(curl(metrics_url(m, "/leader"))[1])["leader"] == {
        "name": leader.name, "grpc_address": leader.grpc, "raft_address": leader.raft} for m in cluster.masters),
        30, what="every master to name the leader")
    assert_every_master_names(cluster, leader)
    # finding the leader with nothing but the probes: exactly one master answers 200
    assert [m.name for m in cluster.masters if curl(metrics_url(m, "/leader"))[0] == 200] == [leader.name]


def test_promtool_finds_nothing_to_lint_in_a_real_masters_metrics(cluster: LocalCluster) -> None:
    promtool = need("promtool", "prometheus")
    for m in cluster.masters:
        code, text = curl(metrics_url(m, "/metrics"))
        assert code == 200 and "tessera_master_capacity_cpus" in text and "tessera_raft_term" in text
        assert "_created" not in text, m.name
        assert "tessera_master_capacity_cpus " in text  # one series, no label whose values a sum would mix
        proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0 and proc.stdout + proc.stderr == "", f"{m.name}: {proc.stdout}{proc.stderr}"


def test_health_follows_the_leader_after_a_failover(cluster: LocalCluster) -> None:
    old = cluster.leader()
    cluster.kill(old)
    new = wait_for(lambda: (n := cluster.leader(timeout=30)) is not old and n, 60, what="a new leader")
    leader_only_services_settle_on(cluster, new)
    wait_for(lambda: all(json.loads(curl(metrics_url(m, "/leader"))[1])["leader"]["grpc_address"] == new.grpc
                         for m in cluster.masters if m.alive), 30, what="the survivors to name the new leader")
    assert_every_master_names(cluster, new)


# ---- systemd readiness ----------------------------------------------------------------------------------
@pytest.fixture
def notify() -> Iterator[tuple[socket.socket, str]]:
    with notify_socket(timeout=60) as bound:
        yield bound


def receive_until_ready(sock: socket.socket, proc: subprocess.Popen[bytes]) -> list[str]:
    """Every datagram up to and including the one with READY=1 (each recv bounded by the socket's timeout)."""
    messages: list[str] = []
    while not any("READY=1" in m.splitlines() for m in messages):
        assert proc.poll() is None, f"exited with {proc.returncode} before READY=1; said {messages}"
        messages.append(sock.recv(4096).decode())
    return messages


def test_master_sends_ready_only_once_its_grpc_port_answers(tmp_path: Path, notify: tuple[socket.socket, str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    sock, path = notify
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with LocalCluster(tmp_path, n=1) as c:
        m = c.masters[0]
        m.extra_flags = ["--metrics", f"127.0.0.1:{c.fresh_ports(1)[0]}"]
        c.start(m)
        assert m.proc is not None
        messages = receive_until_ready(sock, m.proc)
        # at READY=1, right away and without waiting for the channel: the server answers
        assert check(m.grpc, "") == SERVING
        assert check(m.grpc, OPERATOR) == SERVING
        assert curl(metrics_url(m, "/health"))[0] == 200
        ready = messages[-1].splitlines()
        assert ready[0] == "READY=1" and ready[1].startswith("STATUS=")
        assert not any("READY=1" in msg for msg in messages[:-1])
        # a lone master elects itself: its status says so once it leads
        sock.settimeout(30)
        while "STATUS=leader in term" not in messages[-1]:
            messages.append(sock.recv(4096).decode())
        c.kill(m, 15)  # SIGTERM: a clean stop says STOPPING=1 first
        assert m.proc.returncode is not None  # kill waited for the exit: all it sent is queued on the socket
        rest = []
        sock.setblocking(False)
        try:
            while True:
                rest.append(sock.recv(4096).decode())
        except BlockingIOError:
            pass
        assert any(msg.startswith("STOPPING=1") for msg in rest), rest


def test_agent_sends_ready_once_recovered_and_then_its_registration(
        tmp_path: Path, notify: tuple[socket.socket, str]) -> None:
    sock, path = notify
    with LocalCluster(tmp_path, n=1) as c:
        c.start_all()
        c.leader(timeout=60)
        port = free_port()
        data = tmp_path / "agent"
        proc = spawn([sys.executable, "-m", "tessera.control_plane.cli.main", "agent", "--masters", c.masters[0].grpc,
                      "--data-dir", str(data), "--resources", "cpus:1;mem:256", "--hostname", "a1",
                      "--metrics", f"127.0.0.1:{port}"],
                     tmp_path / "agent.log", {**os.environ, "NOTIFY_SOCKET": path, "PYTHONUNBUFFERED": "1"})
        try:
            receive_until_ready(sock, proc)
            code, body = curl(f"http://127.0.0.1:{port}/health")
            assert code == 200 and json.loads(body)["status"] == "serving"
            messages: list[str] = []
            while not any(m == "STATUS=registered with the leader" for m in messages):
                messages.append(sock.recv(4096).decode())
            wait_for(lambda: json.loads(curl(f"http://127.0.0.1:{port}/health")[1])["registered"], 30,
                     what="/health to say registered")
        finally:
            stop_process(proc)
