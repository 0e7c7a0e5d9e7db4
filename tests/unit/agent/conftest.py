"""Fixtures for agent tests: a fake master on a free port, and agents run on threads against it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tessera.agent.checkpoint import Checkpoint
from tessera.agent.config import AgentConfig, resolve
from tessera.agent.executor.isolation import Isolator, RlimitIsolator
from tessera.agent.executor.launcher import ProcessLauncher
from tessera.agent.runtime.agent import Agent, run_in_thread
from tessera.control_plane.core.values import ContainerSupport
from tests.unit.agent.fake_master import FakeMaster


@pytest.fixture
def fake_master() -> Iterator[FakeMaster]:
    master = FakeMaster()
    master.start()
    yield master
    master.stop()


@dataclass
class RunningAgent:
    agent: Agent
    thread: threading.Thread
    result: list[int]
    checkpoint: Checkpoint
    data_dir: Path

    def stop(self, timeout: float = 10.0) -> int:
        self.agent.stop("test")
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the agent loop did not stop"
        self.checkpoint.close()
        return self.result[0]


@dataclass
class AgentFactory:
    tmp_path: Path
    running: list[RunningAgent] = field(default_factory=list)
    defaults: dict[str, Any] = field(default_factory=dict)  # AgentConfig fields for every agent it starts

    def __call__(self, masters: list[str], *, data_dir: Path | None = None, isolator: Isolator | None = None,
                 images: Any = None, containers: ContainerSupport | None = None, **overrides: Any) -> RunningAgent:
        data_dir = data_dir or self.tmp_path / "agent"
        settings: dict[str, Any] = dict(heartbeat_interval=0.2, usage_interval=0.5, status_retry_initial=0.2,
                                        status_retry_max=1.0, reconnect_backoff_max=0.5,
                                        resources="cpus:2;mem:1024;disk:1024", hostname="test-host")
        settings.update(self.defaults)
        settings.update(overrides)
        config = resolve(AgentConfig(masters=tuple(masters), data_dir=data_dir, **settings))
        checkpoint = Checkpoint.open(data_dir / "agent.db")
        iso = isolator or RlimitIsolator()
        agent = Agent(config, checkpoint, ProcessLauncher(config.work_dir, iso), isolator_name=iso.name,
                      images=images, containers=containers or ContainerSupport())
        thread, result = run_in_thread(agent)
        running = RunningAgent(agent, thread, result, checkpoint, data_dir)
        self.running.append(running)
        return running

    def stop_all(self) -> None:
        for r in self.running:
            if r.thread.is_alive():
                r.stop()


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., RunningAgent]]:
    factory = AgentFactory(tmp_path)
    yield factory
    factory.stop_all()
