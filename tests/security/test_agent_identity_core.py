"""Issue 14 item 2, in the pure core: an agent is bound to the certificate identity it registered with.

`RegisterAgent(identity=...)` records the identity in `AgentRegistered` (and the replicated state); a
`ReregisterAgent` or an `UpdateStatus` carrying any other identity is refused with PermissionDenied by
`decide`, before any event exists. The empty identity is the insecure development mode (no TLS): such
agents match only the empty identity, and agents registered with a name never match it.
"""

from __future__ import annotations

import os
import pickle

import pytest

from tessera.control_plane.codec import entry_from_bytes, entry_to_bytes
from tessera.control_plane.core import commands as c
from tessera.control_plane.core.errors import PermissionDenied
from tessera.control_plane.core.events import AgentRegistered
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.state import AgentRecord
from tessera.control_plane.core.values import AgentInfo, TaskState, TaskStatus
from tests.unit.core.harness import AGENT_RESOURCES, Harness, task


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.run(c.ElectLeader(term=1, master="m1", grpc_address="127.0.0.1:5051", name="m1"))
    return harness


def register(h: Harness, identity: str, hostname: str = "host") -> str:
    result = h.run(c.RegisterAgent(AgentInfo(hostname=hostname, resources=Resources.parse(AGENT_RESOURCES)),
                                   identity=identity))
    event = result.events[0][1]
    assert isinstance(event, AgentRegistered)
    return event.agent_id


def running_task(h: Harness, agent_id: str, task_id: str = "t1") -> str:
    """Launch a task on the agent and report it running; returns its framework's id."""
    fid = h.framework()
    h.launched(fid, agent_id, task(task_id))
    h.run(c.UpdateStatus(TaskStatus(task_id=task_id, state=TaskState.TASK_RUNNING, agent_id=agent_id,
                                    uuid=h.uuid(), framework_id=fid), identity=h.state.agents[agent_id].identity))
    return fid


def test_registration_records_the_certificate_identity_in_the_event_and_the_state(h: Harness) -> None:
    aid = register(h, "node-a")
    assert h.state.agents[aid].identity == "node-a"
    event = h.entries[-1].events[0]
    assert isinstance(event, AgentRegistered) and event.identity == "node-a"
    # it survives the log's encoding and a Raft snapshot
    assert entry_from_bytes(entry_to_bytes(h.entries[-1])).events[0] == event
    assert pickle.loads(pickle.dumps(h.state)).agents[aid].identity == "node-a"


def test_reregistration_under_another_identity_is_refused_and_writes_nothing(h: Harness) -> None:
    aid = register(h, "node-a")
    fid = running_task(h, aid)
    info = AgentInfo(agent_id=aid, hostname="host", resources=Resources.parse(AGENT_RESOURCES))
    before = pickle.dumps(h.state)
    for impostor in ("node-b", ""):
        with pytest.raises(PermissionDenied, match=aid):
            h.decide(c.ReregisterAgent(agent_id=aid, info=info, tasks=(), identity=impostor))
    assert pickle.dumps(h.state) == before
    assert h.state.find_task(fid, "t1").state is TaskState.TASK_RUNNING
    # the agent's own certificate may (its task, unreported, then ends as usual)
    h.run(c.ReregisterAgent(agent_id=aid, info=info, tasks=(), identity="node-a"))
    ended = h.state.find_task(fid, "t1")
    assert ended is not None and ended.state is TaskState.TASK_LOST


def test_a_status_update_from_another_identity_is_refused(h: Harness) -> None:
    aid = register(h, "node-a")
    register(h, "node-b", hostname="other")
    fid = running_task(h, aid)
    finished = TaskStatus(task_id="t1", state=TaskState.TASK_FINISHED, agent_id=aid, uuid=h.uuid(), framework_id=fid)
    for impostor in ("node-b", ""):
        with pytest.raises(PermissionDenied):
            h.decide(c.UpdateStatus(finished, identity=impostor))
    assert h.state.find_task(fid, "t1").state is TaskState.TASK_RUNNING
    h.run(c.UpdateStatus(finished, identity="node-a"))


def test_development_mode_agents_have_the_empty_identity_and_keep_working(h: Harness) -> None:
    aid = register(h, "")
    running_task(h, aid)
    info = AgentInfo(agent_id=aid, hostname="host", resources=Resources.parse(AGENT_RESOURCES))
    with pytest.raises(PermissionDenied):  # a named certificate cannot claim an agent registered without TLS
        h.decide(c.ReregisterAgent(agent_id=aid, info=info, tasks=(), identity="node-a"))
    status = TaskStatus(task_id="t1", state=TaskState.TASK_RUNNING, agent_id=aid, uuid="u-dev")
    h.run(c.ReregisterAgent(agent_id=aid, info=info, tasks=(status,)))


def test_an_identity_longer_than_an_id_is_invalid(h: Harness) -> None:
    from tessera.control_plane.core.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="identity"):
        h.decide(c.RegisterAgent(AgentInfo(hostname="h", resources=Resources.of(cpus=1)), identity="x" * 10_000))


def test_a_snapshot_of_an_earlier_version_restores_agents_with_the_empty_identity() -> None:
    record = AgentRecord(info=AgentInfo(agent_id="agent-1", hostname="h"), state=None,  # type: ignore[arg-type]
                         registered_at=1.0, total=Resources.of(cpus=1))
    reduced = record.__reduce_ex__(2)
    slots = dict(reduced[2][1])
    del slots["identity"]  # what a snapshot written before the field existed holds
    old = reduced[0](*reduced[1])
    old.__setstate__((None, slots))
    assert old.identity == "" and old.registered_at == 1.0 and old.agent_id == "agent-1"


def test_the_leaders_id_source_mints_agent_ids_from_fresh_random_bits() -> None:
    from tessera.control_plane.runtime.master import new_id

    ids = [new_id("agent") for _ in range(64)]
    suffixes = [i.removeprefix("agent-") for i in ids]
    assert len(set(ids)) == 64 and all(len(s) == 32 and int(s, 16) >= 0 for s in suffixes)
    # nothing shared from one id to the next (a counter or a per-process prefix would be)
    assert max(len(os.path.commonprefix([a, b])) for a, b in zip(suffixes, suffixes[1:], strict=False)) < 8
    # other ids keep the cheap per-process prefix and counter
    offers = [new_id("offer") for _ in range(2)]
    assert offers[0][:-8] == offers[1][:-8]
