"""Where the masters' file proxy sends a task's calls (`api.files_proxy.place`, over the core's state): the
task's agent and its file service, or why not — NOT_FOUND for a task nobody knows, UNAVAILABLE naming
the agent when it is unreachable, removed, or serves no files."""

from __future__ import annotations

import pytest

from tessera.control_plane.api.files_proxy import place
from tessera.control_plane.core import commands as c
from tessera.control_plane.core.errors import NotFound, Unavailable
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import AgentInfo, TaskKey
from tests.unit.core.harness import Harness, launch, task


@pytest.fixture
def h() -> Harness:
    return Harness()


def launched(h: Harness, files_address: str = "127.0.0.1:7001") -> tuple[str, str]:
    result = h.run(c.RegisterAgent(AgentInfo(hostname="node-1", resources=Resources.parse("cpus:4;mem:4096"),
                                             files_address=files_address)))
    agent = result.events[0][1].agent_id  # type: ignore[union-attr]
    fw = h.framework(principal="alice")
    offer = h.offer(fw, agent)
    h.run(c.Accept(fw, (offer,), (launch(task("t1")),)))
    return fw, agent


def test_a_task_is_placed_on_its_agents_file_service_with_its_owner(h: Harness) -> None:
    fw, agent = launched(h)
    placement = place(h.state, TaskKey(fw, "t1"), None)
    assert (placement.agent_id, placement.files_address, placement.owner) == (agent, "127.0.0.1:7001", "alice")


def test_a_task_only_the_event_log_knows_is_placed_on_the_agent_it_names(h: Harness) -> None:
    fw, agent = launched(h)
    assert place(h.state, TaskKey(fw, "gone-from-state"), agent).agent_id == agent
    with pytest.raises(NotFound, match="no task"):
        place(h.state, TaskKey(fw, "never"), None)


def test_an_agent_that_is_unreachable_removed_or_serving_no_files_is_unavailable_by_name(h: Harness) -> None:
    fw, agent = launched(h)
    h.run(c.MarkAgentUnreachable(agent, "silent"))
    with pytest.raises(Unavailable, match=f"agent {agent} \\(node-1\\), which is unreachable"):
        place(h.state, TaskKey(fw, "t1"), None)
    other = Harness()
    fw2, agent2 = launched(other, files_address="")
    with pytest.raises(Unavailable, match=f"agent {agent2} \\(node-1\\) serves no files"):
        place(other.state, TaskKey(fw2, "t1"), None)
    with pytest.raises(Unavailable, match="agent agent-nope, which is gone"):
        place(other.state, TaskKey(fw2, "old"), "agent-nope")
