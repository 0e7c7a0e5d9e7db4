"""runtime.registrations: an agent's registration committed and named; a retried registration (the agent
lost the reply) learns its agent id without waiting for the event log's writer, and only under the
certificate that registered it."""

from __future__ import annotations

from typing import Any

import pytest

from tessera.control_plane.core.errors import NotFound, PermissionDenied, Unavailable
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import AgentInfo
from tessera.control_plane.eventlog import EventRecord, MemoryEventStore
from tessera.control_plane.runtime.registrations import RegisteredAgents, Registrations
from tests.support.inprocess import InProcessMaster

pytestmark = pytest.mark.timeout(60)

INFO = AgentInfo(hostname="host-1", resources=Resources.parse("cpus:2;mem:1024"))


class UnwrittenLog(MemoryEventStore):
    """An event log whose writer has not got to anything yet (and would make a waiter wait)."""

    def get(self, seq: int) -> EventRecord | None:
        return None

    def flush(self, timeout: float = 5.0) -> bool:
        raise AssertionError("nothing waits for the event log's writer")


def test_a_retried_registration_is_answered_with_its_agent_id_before_the_log_is_written() -> None:
    with InProcessMaster(events=UnwrittenLog(), allocation=False) as node:
        regs = Registrations(node.master)
        agent_id = regs.register(INFO, "node-a", request_id="reg-1")
        assert regs.register(INFO, "node-a", request_id="reg-1") == agent_id
        assert len(node.master.read_state(lambda s: s.agents)) == 1  # recorded once


def test_a_retried_registration_is_answered_only_to_the_certificate_that_registered() -> None:
    with InProcessMaster(allocation=False) as node:
        regs = Registrations(node.master)
        agent_id = regs.register(INFO, "node-a", request_id="reg-1")
        with pytest.raises(PermissionDenied, match=agent_id):
            regs.register(INFO, "node-b", request_id="reg-1")


def test_what_memory_forgot_comes_from_the_event_log_and_neither_knowing_is_unavailable() -> None:
    with InProcessMaster(allocation=False) as node:
        agent_id = Registrations(node.master).register(INFO, "node-a", request_id="reg-1")
        node.events.flush()
        forgetful = Registrations(node.master, RegisteredAgents(limit=0))  # e.g. after this master restarted
        assert forgetful.register(INFO, "node-a", request_id="reg-1") == agent_id
    with InProcessMaster(events=UnwrittenLog(), allocation=False) as node:
        Registrations(node.master).register(INFO, "node-a", request_id="reg-1")
        with pytest.raises(Unavailable):
            Registrations(node.master, RegisteredAgents(limit=0)).register(INFO, "node-a", request_id="reg-1")


def test_memory_keeps_the_latest_registrations_only() -> None:
    memory = RegisteredAgents(limit=2)
    for i in range(3):
        memory.remember(f"reg-{i}", f"agent-{i}")
    assert [memory.get(f"reg-{i}") for i in range(3)] == [None, "agent-1", "agent-2"]


def test_a_removed_or_unknown_agent_must_register_anew() -> None:
    with InProcessMaster(allocation=False) as node:
        with pytest.raises(NotFound, match="register anew"):
            Registrations(node.master).reregister("agent-404", INFO, (), "node-a")


def test_a_follower_learns_registrations_from_the_applied_log() -> None:
    """The memory is filled by every master's apply, not by the proposer: a new leader answers the
    retries of registrations its predecessor committed."""
    memory = RegisteredAgents()

    class Applied:
        def __init__(self, entry: Any, outcome: str) -> None:
            self.entry, self.result = entry, type("R", (), {"outcome": outcome})()

    from tessera.control_plane.core import events as ev

    registered = ev.AgentRegistered("agent-7", INFO, "node-a")
    entry = ev.Entry(1, "m1", 1.0, "reg-7", "", (registered,))
    memory.on_applied([Applied(entry, "applied"), Applied(ev.Entry(1, "m1", 1.0, "reg-8", "", (registered,)),
                                                            "rejected")])
    assert memory.get("reg-7") == "agent-7" and memory.get("reg-8") is None
