"""The stale-stream rule (`tessera.agent.core.liveness.stale_stream`), and the agent loop applying it in
the turn after a pause (SIGSTOP/SIGCONT), whatever message that turn handles before its timers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tessera.agent.checkpoint import Checkpoint
from tessera.agent.config import AgentConfig, resolve
from tessera.agent.core.liveness import stale_stream
from tessera.agent.executor.isolation import RlimitIsolator
from tessera.agent.executor.launcher import ProcessLauncher
from tessera.agent.runtime.agent import Agent
from tessera.agent.runtime.link import LinkStream, MessageReceived, StreamOpened
from tessera.v1 import agent_pb2

STALE = 2.5


def test_a_stream_with_both_sides_talking_is_kept() -> None:
    assert stale_stream(100.0, last_received=99.0, last_alive=99.5, stale_after=STALE) is None
    assert stale_stream(100.0, last_received=100.0 - STALE, last_alive=100.0 - STALE, stale_after=STALE) is None


def test_a_silent_master_drops_the_stream() -> None:
    reason = stale_stream(100.0, last_received=97.0, last_alive=99.9, stale_after=STALE)
    assert reason == "no message from the master for 3.0s"


def test_an_agent_that_did_not_heartbeat_drops_the_stream_even_after_a_fresh_message() -> None:
    # Resumed after a 30 s stop: an acknowledgement that was in flight was just handled.
    reason = stale_stream(130.0, last_received=130.0, last_alive=100.0, stale_after=STALE)
    assert reason is not None and reason.startswith("this agent sent no heartbeat for 30.0s")


@dataclass
class Loop:
    """An agent driven turn by turn on a test clock (no threads, no master: the stream only queues)."""

    agent: Agent
    clock: list[float]

    def now(self) -> float:
        return self.clock[0]

    def sent(self, stream: LinkStream) -> list[str]:
        kinds = []
        while not stream._outbox.empty():
            item = stream._outbox.get_nowait()
            if isinstance(item, agent_pb2.AgentMessage):
                kinds.append(str(item.WhichOneof("kind")))
        return kinds


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    config = resolve(AgentConfig(masters=("127.0.0.1:1",), data_dir=tmp_path / "agent", heartbeat_interval=0.5,
                                 resources="cpus:2;mem:1024;disk:1024", hostname="test-host"))
    checkpoint = Checkpoint.open(tmp_path / "agent" / "agent.db")
    launcher = ProcessLauncher(config.work_dir, RlimitIsolator())
    clock = [1000.0]
    try:
        yield Loop(Agent(config, checkpoint, launcher, isolator_name="rlimits", monotonic=lambda: clock[0]), clock)
    finally:
        launcher.close()
        checkpoint.close()


def message(**kind: object) -> agent_pb2.MasterMessage:
    return agent_pb2.MasterMessage(term=1, **kind)  # type: ignore[arg-type]


def registered_stream(loop: Loop) -> LinkStream:
    stream = LinkStream(1, "127.0.0.1:1")
    loop.agent.turn(StreamOpened(stream))
    loop.clock[0] += 0.1
    loop.agent.turn(MessageReceived(stream, message(registered=agent_pb2.Registered(
        agent_id="agent-1", heartbeat_interval_seconds=0.5))))
    assert loop.agent.registered and loop.sent(stream) == ["register", "heartbeat"]
    return stream


def test_heartbeats_and_their_acks_keep_the_stream(loop: Loop) -> None:
    stream = registered_stream(loop)
    for _ in range(20):
        loop.clock[0] += 0.5
        loop.agent.turn(MessageReceived(stream, message(heartbeat_ack=agent_pb2.AgentHeartbeatAck())))
    assert loop.agent.stream is stream and not stream.closed and loop.agent.registered
    assert loop.sent(stream).count("heartbeat") == 20  # and usage reports


def test_after_a_pause_the_stream_is_dropped_although_an_ack_is_handled_before_the_timers(loop: Loop) -> None:
    stream = registered_stream(loop)
    loop.clock[0] += 30.0  # SIGSTOP, the master marks the agent unreachable, SIGCONT
    # The first turn after the pause handles the acknowledgement of the last heartbeat (it was in flight
    # when the process stopped) before its timers run.
    loop.agent.turn(MessageReceived(stream, message(heartbeat_ack=agent_pb2.AgentHeartbeatAck())))
    assert stream.closed and loop.agent.stream is None and not loop.agent.registered
    assert loop.sent(stream) == []  # no heartbeat on the old stream: the link dials again, the agent re-registers


def test_a_registered_answer_in_flight_during_a_pause_does_not_keep_the_stream(loop: Loop) -> None:
    stream = LinkStream(1, "127.0.0.1:1")
    loop.agent.turn(StreamOpened(stream))
    loop.clock[0] += 30.0  # stopped right after sending Register; the master registered it, then timed it out
    loop.agent.turn(MessageReceived(stream, message(registered=agent_pb2.Registered(
        agent_id="agent-1", heartbeat_interval_seconds=0.5))))
    assert stream.closed and loop.agent.stream is None and not loop.agent.registered
    assert loop.sent(stream) == ["register"]
