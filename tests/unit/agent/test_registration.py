"""What an agent announces when it registers (agent/runtime/registration.py, the one builder of the real
and the emulated agents' `Register`): its configuration, isolator, version and capabilities."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any

from tessera.agent.config import AgentConfig, ResolvedConfig, resolve
from tessera.agent.runtime.registration import Advertisement, advertise, agent_version, capabilities
from tessera.control_plane.codec import from_proto
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import AgentInfo, StatusSource, TaskState, TaskStatus
from tessera.control_plane.wire import BATCHED_MESSAGES


def config(tmp_path: Path, **overrides: Any) -> ResolvedConfig:
    settings: dict[str, Any] = dict(masters=("127.0.0.1:5050",), data_dir=tmp_path / "agent",
                                       resources="cpus:2;mem:1024;disk:1024", hostname="host-1",
                                       attributes="rack:r1")
    settings.update(overrides)
    return resolve(AgentConfig(**settings))


def test_the_version_announced_is_the_installed_distributions() -> None:
    # The distribution is tessera-kernel since the rename; asking for 'tessera' found nothing, so agents
    # announced a bare "tessera-agent".
    assert agent_version() == f"tessera-agent {version('tessera-kernel')}"


def test_an_agent_announces_its_configuration_isolator_version_and_capabilities(tmp_path: Path) -> None:
    resolved = config(tmp_path)
    ad = advertise(resolved, "cgroups-v1")
    assert (ad.hostname, ad.isolator, ad.version) == ("host-1", "cgroups-v1", agent_version())
    assert ad.resources == resolved.resources and dict(ad.attributes) == {"rack": "r1"}
    assert ad.capabilities == (BATCHED_MESSAGES,) == ("BATCHED_MESSAGES",)
    assert advertise(config(tmp_path, batch_messages=False), "rlimits").capabilities == ()
    # where its file service serves its sandboxes (docs/files.md): in every registration's AgentInfo
    assert ad.info("agent-1").files_address == ""
    served = advertise(resolved, "rlimits", files_address="127.0.0.1:4242")
    assert served.register("agent-1", "r").info.files_address == "127.0.0.1:4242"
    assert capabilities(batch_messages=True) == (BATCHED_MESSAGES,)


def test_a_first_registration_carries_its_request_id_and_a_re_registration_its_tasks() -> None:
    ad = Advertisement(hostname="h", resources=Resources.of(cpus=1), attributes=(("rack", "r1"),),
                       isolator="rlimits", version="tessera-agent 9", capabilities=(BATCHED_MESSAGES,))
    first = ad.register("", "register-1")
    assert (first.agent_id, first.request_id, list(first.tasks)) == ("", "register-1", [])
    assert list(first.capabilities) == ["BATCHED_MESSAGES"]
    assert from_proto(first.info, AgentInfo) == AgentInfo(hostname="h", resources=Resources.of(cpus=1),
                                                          attributes=(("rack", "r1"),), isolator="rlimits",
                                                          version="tessera-agent 9")
    running = TaskStatus(task_id="t1", state=TaskState.TASK_RUNNING, source=StatusSource.SOURCE_EXECUTOR,
                         agent_id="a-1", uuid="u1", framework_id="fw-1")
    again = ad.register("a-1", "reregister-2", [running])
    assert (again.agent_id, again.info.agent_id, again.request_id) == ("a-1", "a-1", "reregister-2")
    assert [from_proto(t, TaskStatus) for t in again.tasks] == [running]

