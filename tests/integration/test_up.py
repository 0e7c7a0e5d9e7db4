"""`tessera up` as operators run it: a real cluster of child processes, found by other commands through
its state file, stopped by SIGTERM with every child gone. Bounded waits, free ports, kill by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.support.cluster import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TESSERA = [sys.executable, "-m", "tessera.control_plane.cli.main"]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Up:
    """`tessera up` in `cwd`, its output collected by a thread."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen([*TESSERA, "up", *args], cwd=cwd, env=clean_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "cluster ready" in line:
                self.ready.set()

    def output(self) -> str:
        return "\n".join(self.lines[-80:])

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"tessera up did not get ready:\n{self.output()}")

    def line_starting(self, prefix: str) -> str:
        return next(line for line in self.lines if line.startswith(prefix))


def child_pids(state_file: Path) -> list[int]:
    data = json.loads(state_file.read_text())
    pids = [c["pid"] for group in ("members", "agents", "frameworks") for c in data.get(group, []) if c.get("pid")]
    return pids + ([data["dns"]["pid"]] if data.get("dns", {}).get("pid") else [])


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_all(up: Up, pids: list[int]) -> None:
    for pid in [up.proc.pid, *pids]:
        if not gone(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    up.proc.wait(timeout=30)


def test_up_runs_a_cluster_other_commands_find_and_sigterm_stops_every_child(tmp_path: Path) -> None:
    up = Up(tmp_path, "--masters", "3", "--agents", "1", "--duration", "180")
    state_file = tmp_path / ".tessera" / "cluster.json"
    pids: list[int] = []
    try:
        up.wait_ready()
        addresses = up.line_starting("masters: ").removeprefix("masters: ").split(",")
        assert len(addresses) == 3 and all(a.startswith("127.0.0.1:") for a in addresses)
        export = up.line_starting("export TESSERA_MASTERS=").split()[1]
        assert export == f"TESSERA_MASTERS={','.join(addresses)}"
        assert any("INSECURE DEV MODE" in line for line in up.lines)
        urls = [w for w in up.line_starting("metrics: ").split() if w.startswith("http://")]
        assert len(urls) == 4  # 3 masters and the agent
        import urllib.request

        page = urllib.request.urlopen(urls[0], timeout=5).read().decode()
        assert "tessera_raft_term" in page
        data = json.loads(state_file.read_text())
        assert data["status"] == "running" and data["masters"] == addresses and data["pid"] == up.proc.pid
        pids = child_pids(state_file)
        assert len(pids) == 5 and all(not gone(p) for p in pids)  # 3 masters, the agent, tessera dns
        # tessera dns answers for the cluster's zone (and refuses the rest: nothing is forwarded)
        import dns.exception
        import dns.message
        import dns.query
        import dns.rcode

        dns_host, dns_port = up.line_starting("dns: ").split()[1].rsplit(":", 1)
        assert data["dns"]["address"] == f"{dns_host}:{dns_port}"
        def ask_soa() -> dns.message.Message | None:  # the dns child starts with the frameworks: give it time
            try:
                return dns.query.udp(dns.message.make_query("tessera.", "SOA"), dns_host, port=int(dns_port),
                                     timeout=1)
            except (OSError, dns.exception.Timeout):
                return None

        soa = wait_for(ask_soa, 30, what="tessera dns answering")
        assert soa.rcode() == dns.rcode.NOERROR and soa.answer
        outside = dns.query.udp(dns.message.make_query("example.com.", "A"), dns_host, port=int(dns_port), timeout=5)
        assert outside.rcode() == dns.rcode.REFUSED

        # no --masters, no TESSERA_MASTERS: the state file in ./.tessera names the cluster
        status = subprocess.run([*TESSERA, "--json", "quorum", "status"], cwd=tmp_path, env=clean_env(),
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        quorum = json.loads(status.stdout)
        assert quorum["leader_grpc"] in addresses and len(quorum["members"]) == 3
        agents = subprocess.run([*TESSERA, "--json", "agents"], cwd=tmp_path, env=clean_env(),
                                capture_output=True, text=True, timeout=60)
        assert agents.returncode == 0 and len(json.loads(agents.stdout)) == 1, agents.stderr
        # elsewhere, with the line `up` printed; the shared flags after the command
        elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"  # no .tessera there, nor above
        elsewhere.mkdir()
        tasks = subprocess.run([*TESSERA, "tasks", "--json"], cwd=elsewhere, capture_output=True, text=True,
                               timeout=60, env={**clean_env(), "TESSERA_MASTERS": ",".join(addresses)})
        assert tasks.returncode == 0 and json.loads(tasks.stdout) == [], tasks.stderr
        history = subprocess.run([*TESSERA, "state", "--at", "1", "--json"], cwd=tmp_path, env=clean_env(),
                                 capture_output=True, text=True, timeout=60)
        assert history.returncode == 0 and json.loads(history.stdout)["at"]["index"], history.stderr

        # a second `up` on the same data dir refuses in one line
        again = subprocess.run([*TESSERA, "up"], cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                               timeout=60)
        assert again.returncode != 0 and "already running" in again.stderr and "Traceback" not in again.stderr

        os.kill(up.proc.pid, signal.SIGTERM)
        assert up.proc.wait(timeout=60) == 0, up.output()
        up.reader.join(timeout=10)
        assert all(gone(p) for p in pids), [p for p in pids if not gone(p)]
        assert json.loads(state_file.read_text())["status"] == "stopped"
        assert up.lines[-1].startswith("stopped")
    finally:
        kill_all(up, pids)


def test_up_again_restarts_the_same_cluster_with_its_history(tmp_path: Path) -> None:
    first = Up(tmp_path, "--masters", "3", "--agents", "0", "--duration", "1", "--quiet")
    try:
        assert first.proc.wait(timeout=120) == 0, first.output()
    finally:
        kill_all(first, [])
    before = json.loads((tmp_path / ".tessera" / "cluster.json").read_text())
    second = Up(tmp_path, "--masters", "3", "--agents", "0", "--duration", "120", "--quiet")
    pids: list[int] = []
    try:
        second.wait_ready()
        pids = child_pids(tmp_path / ".tessera" / "cluster.json")
        after = json.loads((tmp_path / ".tessera" / "cluster.json").read_text())
        assert after["masters"] == before["masters"]
        # the master answering may be a follower still applying the new leader's barrier: poll, bounded
        deadline = time.monotonic() + 30
        while True:
            events = subprocess.run([*TESSERA, "events", "--type", "LeaderElected", "--json"], cwd=tmp_path,
                                    env=clean_env(), capture_output=True, text=True, timeout=60)
            assert events.returncode == 0, events.stderr
            terms = [json.loads(line)["payload"]["term"] for line in events.stdout.splitlines()]
            if len(terms) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(terms) >= 2 and terms == sorted(terms)  # the first run's leader is still in the history
        wrong = subprocess.run([*TESSERA, "up", "--masters", "5"], cwd=tmp_path, env=clean_env(),
                               capture_output=True, text=True, timeout=60)
        assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
        os.kill(second.proc.pid, signal.SIGTERM)
        assert second.proc.wait(timeout=60) == 0
        assert all(gone(p) for p in pids)
    finally:
        kill_all(second, pids)
