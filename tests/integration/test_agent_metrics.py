"""A real agent process serves Prometheus metrics with --metrics."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support.cluster import free_port, wait_for
from tests.support.inprocess import InProcessMaster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()


def test_agent_serves_its_resources_and_connection_state(tmp_path: Path) -> None:
    port = free_port()
    with InProcessMaster() as node:
        proc = subprocess.Popen([sys.executable, "-m", "tessera.control_plane.cli.main", "agent", "--masters",
                                 node.grpc_address, "--data-dir", str(tmp_path / "agent"), "--resources",
                                 "cpus:2;mem:512", "--metrics", f"127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            text = wait_for(lambda: (t := scrape(port)) and "tessera_agent_connected 1.0" in t and t, 30,
                            what="the agent to connect")
        finally:
            proc.kill()
            proc.wait(10)
    assert "tessera_agent_capacity_cpus 2.0" in text
    assert "tessera_agent_status_update_retries_total 0.0" in text
    assert 'isolator="' in text
