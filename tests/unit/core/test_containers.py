"""The master's checks of container tasks (control_plane/core/containers.py)."""

from __future__ import annotations

import pytest

from tessera.control_plane.core.containers import SANDBOX_MOUNT, check_container, hostname_of, network_of
from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.state import check_task_info
from tessera.control_plane.core.values import (
    AgentInfo,
    CommandInfo,
    ContainerInfo,
    ContainerSupport,
    PortMapping,
    TaskInfo,
    Volume,
)

AGENT = AgentInfo(agent_id="a1", containers=ContainerSupport(runtime="runc 1.1.5", volume_paths=("/srv/data",)))


def task(container: ContainerInfo | None, ports: tuple[tuple[int, int], ...] = ((31000, 31009),),
         command: CommandInfo | None = None) -> TaskInfo:
    return TaskInfo("t1", resources=Resources.of(cpus=0.1, mem=32, ports=ports),
                    command=command or CommandInfo(value="true"), container=container)


def refused(container: ContainerInfo, field: str, agent: AgentInfo | None = AGENT, **kw: object) -> str:
    with pytest.raises(InvalidRequest) as caught:
        check_container(task(container, **kw), agent, "task")  # type: ignore[arg-type]
    assert field in caught.value.message, caught.value.message
    return caught.value.message


def test_a_command_task_and_a_plain_container_pass() -> None:
    check_container(task(None), AGENT, "task")
    check_container(task(ContainerInfo(image="127.0.0.1:5000/tools/busybox:1.35")), AGENT, "task")
    digest = "sha256:" + "a" * 64
    check_container(task(ContainerInfo(image=f"busybox@{digest}", network="none")), None, "task")


def test_an_image_reference_that_does_not_parse_is_refused() -> None:
    for image in ("", "Upper/Case:1", "bad ref", "busybox@sha256:short"):
        refused(ContainerInfo(image=image), "task.container.image")


def test_network_names() -> None:
    assert network_of(ContainerInfo(image="b", network="")) == "bridge"
    refused(ContainerInfo(image="busybox", network="overlay"), "task.container.network")


def test_a_host_port_must_be_one_of_the_tasks_ports() -> None:
    ok = ContainerInfo(image="busybox", port_mappings=(PortMapping(8080, 31005),))
    check_container(task(ok), AGENT, "task")
    message = refused(ContainerInfo(image="busybox", port_mappings=(PortMapping(8080, 32000),)),
                      "port_mappings[0].host_port")
    assert "31000-31009" in message
    refused(ContainerInfo(image="busybox", port_mappings=(PortMapping(8080, 31005),)), "host_port", ports=())


def test_port_mapping_fields() -> None:
    refused(ContainerInfo(image="busybox", port_mappings=(PortMapping(0, 31005),)), "container_port")
    refused(ContainerInfo(image="busybox", port_mappings=(PortMapping(70000, 31005),)), "container_port")
    refused(ContainerInfo(image="busybox", port_mappings=(PortMapping(80, 31005, "sctp"),)), "protocol")
    twice = (PortMapping(80, 31005), PortMapping(81, 31005))
    refused(ContainerInfo(image="busybox", port_mappings=twice), "mapped twice")
    check_container(task(ContainerInfo(image="busybox", port_mappings=(PortMapping(80, 31005),
                                                                        PortMapping(80, 31005, "udp")))),
                    AGENT, "task")
    refused(ContainerInfo(image="busybox", network="host", port_mappings=(PortMapping(80, 31005),)),
            "only a bridge network")


def test_volumes() -> None:
    good = Volume(container_path="/data", host_path="/srv/data/app", mode="ro")
    check_container(task(ContainerInfo(image="busybox", volumes=(good,))), AGENT, "task")
    refused(ContainerInfo(image="busybox", volumes=(Volume("data", "/srv/data"),)), "relative path")
    refused(ContainerInfo(image="busybox", volumes=(Volume("/data", "/srv/data/../../etc"),)), "'..'")
    refused(ContainerInfo(image="busybox", volumes=(Volume(SANDBOX_MOUNT, "/srv/data"),)), "container_path")
    refused(ContainerInfo(image="busybox", volumes=(Volume(SANDBOX_MOUNT + "/x", "/srv/data"),)), "container_path")
    refused(ContainerInfo(image="busybox", volumes=(Volume("/proc/x", "/srv/data"),)), "/proc")
    refused(ContainerInfo(image="busybox", volumes=(Volume("/", "/srv/data"),)), "root")
    refused(ContainerInfo(image="busybox", volumes=(Volume("/d", "/etc"),)), "allowed volume paths")
    refused(ContainerInfo(image="busybox", volumes=(Volume("/d", "/srv/database"),)), "allowed volume paths")
    message = refused(ContainerInfo(image="busybox", volumes=(Volume("/d", "/srv/data"),)), "host_path",
                      agent=AgentInfo(agent_id="a2"))
    assert "--allowed-volume-paths" in message
    refused(ContainerInfo(image="busybox", volumes=(Volume("/d", "/srv/data", "rx"),)), "mode")
    twice = (Volume("/d", "/srv/data"), Volume("/d/", "/srv/data/x"))
    refused(ContainerInfo(image="busybox", volumes=twice), "mounted twice")


def test_hostname() -> None:
    check_container(task(ContainerInfo(image="busybox", hostname="web-1.example")), AGENT, "task")
    refused(ContainerInfo(image="busybox", hostname="under_score"), "hostname")
    refused(ContainerInfo(image="busybox", hostname="-x"), "hostname")
    assert hostname_of(task(ContainerInfo(image="busybox"))) == "t1"
    assert hostname_of(task(ContainerInfo(image="busybox", hostname="web"))) == "web"


def test_a_container_task_needs_no_command_but_a_command_task_does() -> None:
    check_task_info(task(ContainerInfo(image="busybox"), command=CommandInfo(value="")))
    with pytest.raises(InvalidRequest, match="command.value"):
        check_task_info(task(None, command=CommandInfo(value="")))
    with pytest.raises(InvalidRequest, match="command.value"):  # arguments without a program
        check_task_info(task(ContainerInfo(image="busybox"), command=CommandInfo(shell=False, arguments=("x",))))
