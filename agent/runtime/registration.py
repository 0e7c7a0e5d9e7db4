"""What an agent tells a master about itself, in one place: the `Register` message that opens every stream.

- `Advertisement` holds the facts: hostname, resources, attributes, the active isolator, the agent's
  version and the capabilities it announces (`Register.capabilities`; the names are wire facts in
  `tessera.control_plane.wire`, which the master's `control_plane/api/agentlink.py` reads too).
  `advertise(config, isolator)` builds it once, at the agent's start, from the resolved configuration
  and what the executor found on this machine. What an agent can newly do (say, run containers with a
  given runtime and network) is announced by adding it here.
- `Advertisement.register(agent_id, request_id, statuses)` is the message. A first registration (no
  agent id yet) carries the `request_id` the checkpoint keeps until it is answered, so a retry after a
  crash cannot register the machine twice; a re-registration carries the latest status of every task
  not yet done. Which case applies, and the answers, are the agent loop's (`agent.py`).

The real agent (`agent.py`) and the emulated agents (`tessera.agent.emulated`) build their messages here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tessera import installed_version
from tessera.agent.config import ResolvedConfig
from tessera.control_plane.codec import to_proto
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import AgentInfo, ContainerSupport, Labels, TaskStatus
from tessera.control_plane.wire import BATCHED_MESSAGES
from tessera.v1 import agent_pb2, common_pb2


def agent_version() -> str:
    """'tessera-agent 0.1.0': the installed distribution's version ('tessera-agent' when not installed)."""
    found = installed_version()
    return f"tessera-agent {found}" if found else "tessera-agent"


def capabilities(*, batch_messages: bool) -> tuple[str, ...]:
    """The protocol capabilities an agent announces (docs/protocol.md, AgentLink step 8)."""
    return (BATCHED_MESSAGES,) if batch_messages else ()


NO_CONTAINERS = ContainerSupport()


@dataclass(frozen=True)
class Advertisement:
    """Everything an agent announces when it (re-)registers, besides its id and its tasks."""

    hostname: str
    resources: Resources
    attributes: Labels
    isolator: str
    version: str
    capabilities: tuple[str, ...] = ()
    containers: ContainerSupport = NO_CONTAINERS  # which container tasks it runs, or why none
    files_address: str = ""  # where its file service serves its sandboxes ("" = none; docs/files.md)

    def info(self, agent_id: str) -> AgentInfo:
        return AgentInfo(agent_id=agent_id, hostname=self.hostname, resources=self.resources,
                         attributes=self.attributes, isolator=self.isolator, version=self.version,
                         containers=self.containers, files_address=self.files_address)

    def register(self, agent_id: str, request_id: str, statuses: Sequence[TaskStatus] = ()) -> agent_pb2.Register:
        """The `Register` message: `agent_id` empty for a first registration; `statuses` the tasks'
        latest, at a re-registration."""
        return agent_pb2.Register(agent_id=agent_id, info=to_proto(self.info(agent_id), common_pb2.AgentInfo),
                                  request_id=request_id, capabilities=self.capabilities,
                                  tasks=[to_proto(s, common_pb2.TaskStatus) for s in statuses])


def advertise(config: ResolvedConfig, isolator: str, containers: ContainerSupport = NO_CONTAINERS,
              files_address: str = "") -> Advertisement:
    """What this agent announces: its configuration, the isolator in use, its version and capabilities,
    its container support and its file service's address."""
    return Advertisement(hostname=config.hostname, resources=config.resources, attributes=config.attributes,
                         isolator=isolator, version=agent_version(),
                         capabilities=capabilities(batch_messages=config.config.batch_messages),
                         containers=containers, files_address=files_address)
