"""`tessera up --demo` runs the service framework with one demo service, `hello`: it gets running and
healthy, `tessera dns` answers for it, `tessera lb` (HAProxy) reaches it, and stopping `up` leaves no
process behind — not even the demo's tasks. Bounded waits, free ports, kill by PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.integration.test_up import TESSERA, Up, child_pids, clean_env, gone, kill_all
from tests.support.cluster import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def hello_row(cwd: Path) -> dict[str, Any]:
    out = subprocess.run([*TESSERA, "--json", "service", "list"], cwd=cwd, env=clean_env(), capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0:
        return {}
    return next((r for r in json.loads(out.stdout)["services"] if r["id"] == "hello"), {})


def processes_in(root: Path) -> list[psutil.Process]:
    """Live processes whose working directory is under `root` (the demo's tasks run in sandboxes there)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and p.cwd().startswith(str(root)):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_up_demo_runs_a_healthy_hello_service_found_by_dns_and_reached_through_haproxy(tmp_path: Path) -> None:
    assert shutil.which("haproxy"), "this test needs HAProxy: apt-get install haproxy (the Debian package haproxy)"
    up = Up(tmp_path, "--masters", "1", "--agents", "1", "--demo", "--duration", "240")
    state_file = tmp_path / ".tessera" / "cluster.json"
    pids: list[int] = []
    tasks: list[psutil.Process] = []
    try:
        up.wait_ready()
        state = json.loads(state_file.read_text())
        pids = child_pids(state_file) + [state["lb"]["pid"]]
        assert "services" in [f["name"] for f in state["frameworks"]]
        assert up.line_starting("demo service: hello, 2 instances")
        definition = tmp_path / ".tessera" / "demo" / "hello.yaml"
        assert f"(the definition: {definition})" in up.line_starting("demo service: ")
        assert "  tessera service list" in up.lines
        dns_host, dns_port = up.line_starting("dns: ").split()[1].rsplit(":", 1)
        assert f"  dig @{dns_host} -p {dns_port} hello.tessera A" in up.lines
        lb_url = up.line_starting("lb: ").split()[1]
        assert lb_url.startswith("http://127.0.0.1:") and lb_url == state["lb"]["url"]

        # kept by the service framework: 2 instances running and healthy
        try:
            row = wait_for(lambda: (r := hello_row(tmp_path)).get("healthy") == 2 and r, 120,
                           what="2 healthy instances of hello")
        except TimeoutError as exc:
            show = subprocess.run([*TESSERA, "service", "show", "hello"], cwd=tmp_path, env=clean_env(),
                                  capture_output=True, text=True, timeout=60)
            raise AssertionError(f"{exc}\n{show.stdout}{show.stderr}\n{up.output()}") from None
        assert row["wanted"] == 2 and row["running"] == 2

        # answered by tessera dns: the address, and a SRV record per instance with its host port
        import dns.exception
        import dns.message
        import dns.query
        import dns.rdatatype

        def ask(name: str, kind: str) -> list[Any]:
            try:
                reply = dns.query.udp(dns.message.make_query(name, kind), dns_host, port=int(dns_port), timeout=2)
            except (OSError, dns.exception.Timeout):
                return []
            return [r for rrset in reply.answer for r in rrset]

        srv = wait_for(lambda: len(found := ask("_hello._tcp.tessera.", "SRV")) == 2 and found, 30,
                       what="two SRV records of hello")
        ports = sorted(r.port for r in srv)
        assert len(set(ports)) == 2 and all(31000 <= p < 32000 for p in ports), ports  # the agent's port range
        assert [r.address for r in ask("hello.tessera.", "A")] == ["127.0.0.1"]

        # reached through HAProxy on the service port up printed
        def get() -> int | None:
            try:
                with urllib.request.urlopen(lb_url, timeout=2) as resp:
                    return int(resp.status)
            except OSError:
                return None

        assert wait_for(get, 30, what="hello answering through tessera lb") == 200
        tasks = [p for p in processes_in(tmp_path / ".tessera" / "a1") if "http.server" in " ".join(p.cmdline())]
        assert len(tasks) >= 2, [p.cmdline() for p in tasks]

        # SIGTERM: every child stops, and the service framework tears its tasks down on its way out
        os.kill(up.proc.pid, signal.SIGTERM)
        assert up.proc.wait(timeout=90) == 0, up.output()
        up.reader.join(timeout=10)
        assert all(gone(p) for p in pids), [p for p in pids if not gone(p)]
        wait_for(lambda: not any(p.is_running() and not gone(p.pid) for p in tasks), 15,
                 what="the demo's tasks to end")
        assert any("the framework is torn down" in line for line in up.lines), up.output()
        assert json.loads(state_file.read_text())["lb"]["pid"] is None
    finally:
        kill_all(up, pids)
        # a test that failed midway leaves the demo's tasks running (an agent's tasks outlive it): they are
        # ours because they run in this test's directory, and would hold the agent's ports for the next run
        for p in [*tasks, *processes_in(tmp_path)]:
            if not gone(p.pid):
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
