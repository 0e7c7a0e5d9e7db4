"""The OCI runtime spec of a container task (agent/executor/runtime_spec.py): pure."""

from __future__ import annotations

import pytest

from tessera.agent.executor.images import ImageConfig
from tessera.agent.executor.runtime_spec import (
    DEFAULT_CAPABILITIES,
    ContainerPlan,
    SpecError,
    build_spec,
    container_argv,
)
from tessera.control_plane.core.containers import SANDBOX_MOUNT

IMAGE = ImageConfig(entrypoint=("/bin/entry",), cmd=("serve",), env=("PATH=/image/bin", "A=image"),
                    working_dir="/srv")


def plan(**kw: object) -> ContainerPlan:
    base: dict[str, object] = dict(rootfs="/r/rootfs", sandbox="/w/sb", hostname="t1", uid=0, gid=0, image=IMAGE,
                                   netns_path="/run/netns/tessera0-x")
    base.update(kw)
    return ContainerPlan(**base)  # type: ignore[arg-type]


def test_the_image_command_runs_unless_the_task_names_one() -> None:
    assert build_spec(plan())["process"]["args"] == ["/bin/entry", "serve"]
    # an argv replaces the image's Cmd after its Entrypoint (Docker's rule); a shell command runs as it is
    assert build_spec(plan(argv=("--port", "80")))["process"]["args"] == ["/bin/entry", "--port", "80"]
    assert build_spec(plan(argv=("/bin/sh", "-c", "x"), shell=True))["process"]["args"] == ["/bin/sh", "-c", "x"]
    assert build_spec(plan(image=ImageConfig(cmd=("sh",)), argv=("ps",)))["process"]["args"] == ["ps"]
    with pytest.raises(SpecError, match="no command"):
        build_spec(plan(image=ImageConfig()))


def test_environment_working_dir_and_sandbox_mount() -> None:
    spec = build_spec(plan(env=(("A", "task"), ("B", "2"))))
    env = dict(item.split("=", 1) for item in spec["process"]["env"])
    assert env["PATH"] == "/image/bin" and env["A"] == "task" and env["B"] == "2"
    assert env["TESSERA_SANDBOX"] == SANDBOX_MOUNT and env["MESOS_SANDBOX"] == SANDBOX_MOUNT
    assert spec["process"]["cwd"] == "/srv"
    assert build_spec(plan(working_dir="logs/x"))["process"]["cwd"] == f"{SANDBOX_MOUNT}/logs/x"
    assert build_spec(plan(image=ImageConfig(cmd=("x",))))["process"]["cwd"] == "/"
    sandbox = [m for m in spec["mounts"] if m["destination"] == SANDBOX_MOUNT]
    assert sandbox == [{"destination": SANDBOX_MOUNT, "type": "bind", "source": "/w/sb", "options": ["rbind", "rw"]}]


def test_namespaces_per_network() -> None:
    def spaces(p: ContainerPlan) -> dict[str, str | None]:
        return {n["type"]: n.get("path") for n in build_spec(p)["linux"]["namespaces"]}

    assert spaces(plan()) == {"pid": None, "ipc": None, "uts": None, "mount": None,
                              "network": "/run/netns/tessera0-x"}
    assert "network" not in spaces(plan(network="host"))
    assert spaces(plan(network="none"))["network"] is None
    with pytest.raises(SpecError):
        build_spec(plan(netns_path=""))


def test_privileges() -> None:
    root = build_spec(plan())["process"]
    assert root["noNewPrivileges"] is True
    assert root["capabilities"]["effective"] == list(DEFAULT_CAPABILITIES)
    assert "CAP_SYS_ADMIN" not in root["capabilities"]["bounding"]
    nobody = build_spec(plan(uid=65534, gid=65534))["process"]
    assert nobody["user"] == {"uid": 65534, "gid": 65534, "additionalGids": []}
    assert nobody["capabilities"]["effective"] == [] and nobody["capabilities"]["permitted"] == []


def test_limits_come_from_the_isolation_cgroup_when_there_is_one() -> None:
    nested = build_spec(plan(cgroup_parent="/tessera/t1-abc", memory_limit_bytes=64 << 20, cpus=0.5))["linux"]
    assert nested["cgroupsPath"] == "/tessera/t1-abc/ctr"
    assert "memory" not in nested["resources"] and "cpu" not in nested["resources"]
    alone = build_spec(plan(memory_limit_bytes=64 << 20, cpus=0.5))["linux"]
    assert "cgroupsPath" not in alone
    assert alone["resources"]["memory"] == {"limit": 64 << 20}
    assert alone["resources"]["cpu"]["quota"] == 50_000


def test_volumes_and_readonly_root() -> None:
    spec = build_spec(plan(volumes=(("/srv/data", "/data", "ro"), ("/srv/w", "/w", "rw")), readonly_rootfs=True))
    assert spec["root"] == {"path": "/r/rootfs", "readonly": True}
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert mounts["/data"]["options"] == ["rbind", "ro"] and mounts["/w"]["options"] == ["rbind", "rw"]
    assert build_spec(plan(resolv_conf="/etc/resolv.conf", network="none"))["mounts"] == build_spec(plan(
        network="none"))["mounts"]


def test_argv() -> None:
    assert container_argv("/usr/sbin/runc", "/w/runc", "/w/b", "c1") == [
        "/usr/sbin/runc", "--root", "/w/runc", "run", "--bundle", "/w/b", "c1"]
