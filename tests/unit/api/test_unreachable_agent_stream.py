"""An agent marked unreachable while its stream survived (paused, or cut off without a reset, for longer
than the agent timeout but not long enough for its own stale-stream check) is not answered on that stream
any more: the master ends it, the agent's reconnection re-registers it, and it is active again — instead of
heartbeats acknowledged forever on the stream of an agent the replicated state holds unreachable."""

from __future__ import annotations

import pytest

from tessera.control_plane.core.values import AgentState
from tessera.v1 import agent_pb2
from tests.support.cluster import wait_for
from tests.support.inprocess import InProcessMaster
from tests.support.scripted import ScriptedAgent

pytestmark = pytest.mark.timeout(60)


def agent_state(node: InProcessMaster, agent_id: str) -> AgentState | None:
    agent = node.master.read_state(lambda s: s.agents.get(agent_id))
    return agent.state if agent is not None else None


def test_the_stream_of_an_agent_marked_unreachable_ends_and_it_registers_again() -> None:
    with InProcessMaster() as node:
        first = ScriptedAgent(node.channel).start()
        assert first.registered.wait(5)
        agent_id = first.agent_id
        first.stop_heartbeats()  # silent on an open stream: the master's agent timeout (1 s here) passes
        wait_for(lambda: agent_state(node, agent_id) is AgentState.AGENT_UNREACHABLE, 10,
                 what="the agent marked unreachable")
        acks_before = sum(m.WhichOneof("kind") == "heartbeat_ack" for m in first.received)
        first.outbox.put(agent_pb2.AgentMessage(heartbeat=agent_pb2.AgentHeartbeat(agent_id=agent_id)))
        assert first.ended.wait(10), "the master kept the stream of an agent it holds unreachable"
        assert sum(m.WhichOneof("kind") == "heartbeat_ack" for m in first.received) == acks_before
        first.close()
        again = ScriptedAgent(node.channel, agent_id=agent_id).start()  # what the agent does on a stream's end
        assert again.registered.wait(5)
        wait_for(lambda: agent_state(node, agent_id) is AgentState.AGENT_ACTIVE, 10, what="the agent active again")
        again.close()
