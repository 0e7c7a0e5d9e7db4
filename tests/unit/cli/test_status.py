"""`tessera status` summarises a live master: quorum, agents, tasks and resources."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tessera.control_plane.cli.main import cli
from tests.support.inprocess import InProcessMaster
from tests.support.scripted import ScriptedAgent

pytestmark = pytest.mark.timeout(60)


def test_status_counts_agents_and_resources() -> None:
    with InProcessMaster() as node:
        agent = ScriptedAgent(node.channel, resources="cpus:4;mem:2048").start()
        assert agent.registered.wait(5)
        result = CliRunner().invoke(cli, ["--masters", node.grpc_address, "--json", "status"])
        agent.close()
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["agents"] == {"ACTIVE": 1}
    assert data["resources"]["cpus"] == {"used": 0.0, "total": 4.0}
    assert data["resources"]["mem"]["total"] == 2048.0
    assert data["has_quorum"] and data["leader"] == node.grpc_address
