"""Agent metrics: what the agent's callables return is served under the documented names, in base units."""

from __future__ import annotations

import subprocess
import threading

import pytest

from tessera.agent.metrics import AgentMetrics
from tessera.control_plane.core.values import TaskState
from tessera.control_plane.metrics.specs import AGENT_METRICS, MIB, sample_names
from tests.unit.metrics.scraping import scrape, value

pytestmark = pytest.mark.timeout(30)


class FakeAgent:
    """Stands in for the agent's loop: counters it would keep, read from the scrape thread."""

    def __init__(self) -> None:
        self.retries = 0
        self.agent_id = ""
        self.tasks: dict[object, int] = {TaskState.TASK_RUNNING: 2, "TASK_FAILED": 1}

    def metrics(self, **extra: object) -> AgentMetrics:
        return AgentMetrics(
            total=lambda: {"cpus": 8, "mem": 16384, "disk": 2048, "ports": 1000},
            used=lambda: {"cpus": 1.5, "mem": 512},
            tasks_by_state=lambda: dict(self.tasks),
            status_update_retries=lambda: self.retries,
            isolator="cgroups_v1", hostname="host-1", **extra)  # type: ignore[arg-type]


def test_resources_tasks_retries_and_isolator_are_served() -> None:
    agent = FakeAgent()
    metrics = agent.metrics(pending_status_updates=lambda: 3, connected=lambda: True)
    metrics.start()
    try:
        samples, types = scrape(metrics.url)
        assert value(samples, "tessera_agent_capacity_cpus") == 8
        assert value(samples, "tessera_agent_allocated_cpus") == 1.5
        assert value(samples, "tessera_agent_capacity_mem_bytes") == 16384 * MIB
        assert value(samples, "tessera_agent_allocated_mem_bytes") == 512 * MIB
        assert value(samples, "tessera_agent_allocated_disk_bytes") == 0
        assert value(samples, "tessera_agent_capacity_gpus") == 0
        assert value(samples, "tessera_agent_tasks", state="running") == 2
        assert value(samples, "tessera_agent_tasks", state="failed") == 1
        assert value(samples, "tessera_agent_tasks", state="staging") == 0
        assert value(samples, "tessera_agent_status_update_retries_total") == 0
        assert types["tessera_agent_status_update_retries"] == "counter"
        assert value(samples, "tessera_agent_pending_status_updates") == 3
        assert value(samples, "tessera_agent_connected") == 1
        assert value(samples, "tessera_agent_info", hostname="host-1", isolator="cgroups_v1") == 1
        assert {n for n, _ in samples if n.startswith("tessera_")} <= sample_names(AGENT_METRICS)

        agent.retries, agent.agent_id = 5, "agent-0f3c9a"  # read again at the next scrape
        samples, _ = scrape(metrics.url)
        assert value(samples, "tessera_agent_status_update_retries_total") == 5
        assert value(samples, "tessera_agent_info", hostname="host-1", isolator="cgroups_v1") == 1
        # the unauthenticated endpoint never shows the agent's id (what an impostor would claim)
        assert "agent_id" not in metrics.text() and agent.agent_id not in metrics.text()
    finally:
        metrics.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("metrics-")]


def test_optional_families_are_left_out_and_a_failing_callable_is_counted() -> None:
    agent = FakeAgent()
    metrics = agent.metrics()
    agent.tasks = None  # type: ignore[assignment]  # tasks_by_state() now raises TypeError
    metrics.start()
    try:
        samples, types = scrape(metrics.url)
        assert "tessera_agent_connected" not in types and "tessera_agent_pending_status_updates" not in types
        assert "tessera_agent_tasks" not in types
        assert value(samples, "tessera_metrics_collect_errors_total", section="tasks") == 1
        assert value(samples, "tessera_agent_capacity_cpus") == 8
    finally:
        metrics.stop()


def test_agent_names_follow_the_conventions() -> None:
    for spec in AGENT_METRICS:
        assert spec.name.startswith("tessera_"), spec.name
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        if {"mem", "disk"} & set(spec.name.split("_")):
            assert spec.name.endswith("_bytes"), spec.name


@pytest.mark.usefixtures("needs_promtool")
def test_promtool_finds_nothing_to_lint_in_the_agent_exposition() -> None:
    metrics = FakeAgent().metrics(pending_status_updates=lambda: 0, connected=lambda: False)
    proc = subprocess.run(["promtool", "check", "metrics"], input=metrics.text(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr
