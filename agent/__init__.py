"""The Tessera agent: one per machine. It reports the machine's resources to the leading master, runs
tasks isolated from each other under supervisors that outlive it, and never loses a status update.

Layout (fastest-changing knowledge last):
- `tessera.agent.core`: pure: status-update manager, task table (the shared lifecycle table), dial plan.
- `tessera.agent.config`, `tessera.agent.checkpoint`: flags and what the machine has; agent.db.
- `tessera.agent.executor`: the supervisor program, isolation (cgroups v2/v1, rlimits + watchdog), launcher.
- `tessera.agent.runtime`: the master link (AgentLink over gRPC) and the agent loop.
- `tessera.agent.main.run_agent`, `tessera.agent.cli.agent_main`: the process; `tessera.agent.emulated`: N fake agents for scale.

Public names are importable from here; they load lazily, because the supervisor (started once per task)
imports this package and must not pay for grpc.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AgentConfig",
    "ConfigError",
    "EmulatedAgents",
    "EmulatedConfig",
    "agent_main",
    "detect_resources",
    "run_agent",
    "run_emulated",
]

_WHERE = {
    "AgentConfig": "tessera.agent.config",
    "ConfigError": "tessera.agent.config",
    "detect_resources": "tessera.agent.config",
    "run_agent": "tessera.agent.main",
    "agent_main": "tessera.agent.cli",
    "EmulatedAgents": "tessera.agent.emulated",
    "EmulatedConfig": "tessera.agent.emulated",
    "run_emulated": "tessera.agent.emulated",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'agent' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
