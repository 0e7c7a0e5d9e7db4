"""Container tasks through the real launcher and supervisor: runc, the image store (a real registry on
127.0.0.1), cgroups v1/v2 isolation and CNI (a test bridge and subnet of its own, removed before and
after). Needs root and the Debian packages .ci/run installs (runc, skopeo, umoci, docker-registry,
containernetworking-plugins, busybox-static); a missing one fails the test, naming it."""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tessera.agent.core.tasks import terminal_status
from tessera.agent.executor import containers
from tessera.agent.executor.images import Image, ImageStore
from tessera.agent.executor.isolation import detect_isolator
from tessera.agent.executor.launcher import LaunchHandle, Observation, ProcessLauncher
from tessera.agent.executor.network import DEFAULT_PLUGIN_DIRS
from tessera.agent.executor.output import LogRotation
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import (
    CommandInfo,
    CommandURI,
    ContainerInfo,
    PortMapping,
    TaskInfo,
    TaskState,
    Volume,
)
from tests.support.artifacts import ArtifactServer, tar_bytes
from tests.support.cluster import free_port
from tests.support.cni_host import HostState, clean_leftovers, require_container_host
from tests.support.registry import Registry, push_busybox

BRIDGE = "tsrctr0"
SUBNET = "10.213.247.0/24"
IMAGE = "tools/busybox:1.35"


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    require_container_host()
    with Registry() as reg:
        push_busybox(reg, IMAGE)
        yield reg


@pytest.fixture(scope="module")
def host_network() -> Iterator[None]:
    before = HostState.capture()
    clean_leftovers(BRIDGE, [SUBNET])
    yield
    clean_leftovers(BRIDGE, [SUBNET])
    before.restore()


@pytest.fixture()
def setup(registry: Registry, host_network: None, tmp_path: Path) -> Iterator[tuple[ProcessLauncher, Image]]:
    work = tmp_path / "work"
    work.mkdir()
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    isolator = detect_isolator("auto", root_name=f"tessera-test-{os.getpid()}")
    runtime = containers.detect(work, network={"state_dir": str(work / "cni"), "bridge": BRIDGE, "subnet": SUBNET,
                                               "plugin_dirs": DEFAULT_PLUGIN_DIRS},
                                volume_paths=(str(volumes),), isolation_kind=isolator.name)
    assert isinstance(runtime, containers.ContainerRuntime), runtime
    assert runtime.network_config is not None, runtime.network_unavailable
    store = ImageStore(tmp_path / "images")
    image = store.pull(f"{registry.host}/{IMAGE}")
    launcher = ProcessLauncher(work, isolator, containers=runtime)
    yield launcher, image
    launcher.close()


def container_task(command: str | tuple[str, ...], task_id: str = "c1", mem: float = 64, **container: object) -> TaskInfo:
    if isinstance(command, str):
        cmd = CommandInfo(shell=True, value=command)
    else:
        cmd = CommandInfo(shell=False, value=command[0], arguments=command[1:]) if command else CommandInfo(shell=False)
    ports = [(m.host_port, m.host_port) for m in container.get("port_mappings", ())]  # type: ignore[attr-defined]
    return TaskInfo(task_id=task_id, framework_id="fw", resources=Resources.of(cpus=0.2, mem=mem, ports=ports),
                    command=cmd, container=ContainerInfo(image=f"registry/{IMAGE}", **container))  # type: ignore[arg-type]


def wait(launcher: ProcessLauncher, handle: LaunchHandle, predicate, timeout: float = 30.0) -> Observation:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        obs = launcher.observe(handle)
        if predicate(obs):
            return obs
        assert time.monotonic() < deadline, f"timed out; last observation {obs}"
        time.sleep(0.05)


def launch(launcher: ProcessLauncher, image: Image, info: TaskInfo) -> LaunchHandle:
    handle = launcher.prepare(info, image)
    return launcher.start(info, handle)


def run_to_end(launcher: ProcessLauncher, image: Image, info: TaskInfo) -> tuple[LaunchHandle, Observation]:
    handle = launch(launcher, image, info)
    obs = wait(launcher, handle, lambda o: o.ended)
    launcher.release(handle)
    return handle, obs


def stdout(handle: LaunchHandle) -> str:
    return (handle.task_dir / "stdout").read_text()


def test_hostname_is_the_task_id_and_the_task_is_pid_1(setup: tuple[ProcessLauncher, Image]) -> None:
    launcher, image = setup
    handle, obs = run_to_end(launcher, image, container_task(("sh", "-c", "hostname; ps -o pid,args; exit 0"),
                                                             task_id="web-1"))
    assert obs.exit is not None and obs.exit.exit_code == 0, obs
    lines = stdout(handle).splitlines()
    assert lines[0] == "web-1"
    processes = lines[2:]
    assert processes[0].split()[0] == "1" and "hostname; ps" in processes[0], lines
    assert len(processes) == 2, f"host processes are visible in the container: {lines}"  # sh and ps only
    assert not (handle.sandbox / "container").exists(), "the overlay was not released"


def test_exit_code_and_output_in_the_sandbox(setup: tuple[ProcessLauncher, Image]) -> None:
    launcher, image = setup
    handle, obs = run_to_end(launcher, image, container_task("echo out; echo err >&2; exit 7"))
    assert obs.exit is not None and obs.exit.exit_code == 7
    assert stdout(handle) == "out\n" and (handle.task_dir / "stderr").read_text() == "err\n"
    assert terminal_status(obs.exit, False).state is TaskState.TASK_FAILED


def test_a_chatty_container_rotates_its_output_within_the_bound(setup: tuple[ProcessLauncher, Image]) -> None:
    # runc passes the supervisor's pipes to the container: its output rotates like a command task's
    launcher, image = setup
    launcher.log_rotation = LogRotation(max_bytes=64 * 1024, keep=2)
    handle, obs = run_to_end(launcher, image, container_task("yes | head -c 10000000; echo; echo END"))
    assert obs.exit is not None and obs.exit.exit_code == 0, obs
    names = sorted(p.name for p in handle.task_dir.iterdir() if p.name.startswith("stdout"))
    assert names == ["stdout", "stdout.1", "stdout.2"]
    assert sum((handle.task_dir / n).stat().st_size for n in names) <= 3 * 64 * 1024
    assert obs.exit.stdout_tail.endswith(b"y\n\nEND\n") and len(obs.exit.stdout_tail) == 4096


def test_a_container_task_gets_its_uris_in_the_sandbox_it_sees(setup: tuple[ProcessLauncher, Image]) -> None:
    launcher, image = setup
    with ArtifactServer() as server:
        url = server.add("/tool.tgz", tar_bytes([("bin/tool", b"#!/bin/sh\necho tool in a container\n", 0o755)]))
        info = replace(container_task("$TESSERA_SANDBOX/bin/tool"), uris=(CommandURI(url, extract=True),))
        handle, obs = run_to_end(launcher, image, info)
    assert obs.exit is not None and obs.exit.exit_code == 0, (obs, (handle.task_dir / "stderr").read_text())
    assert stdout(handle) == "tool in a container\n"


def test_the_sandbox_is_mounted_and_writable_as_the_tasks_user(setup: tuple[ProcessLauncher, Image]) -> None:
    launcher, image = setup
    handle, obs = run_to_end(launcher, image, container_task("id -u; echo hi > $TESSERA_SANDBOX/note; "
                                                             "echo $TESSERA_SANDBOX"))
    assert obs.exit is not None and obs.exit.exit_code == 0, stdout(handle)
    assert stdout(handle).split() == ["0", "/tessera/sandbox"]
    assert (handle.task_dir / "note").read_text() == "hi\n"


def test_a_missing_command_ends_like_a_shell_would(setup: tuple[ProcessLauncher, Image]) -> None:
    launcher, image = setup
    _, obs = run_to_end(launcher, image, container_task(("no-such-program",)))
    assert obs.exit is not None and obs.exit.exit_code == 127, obs
    assert "no-such-program" in obs.exit.container_error
    status = terminal_status(obs.exit, False)
    assert status.state is TaskState.TASK_FAILED and status.reason == "REASON_CONTAINER_LAUNCH_FAILED"


def test_a_memory_hog_is_stopped_by_its_limit(setup: tuple[ProcessLauncher, Image]) -> None:
    launcher, image = setup
    # 200 MiB of 'x' into a shell variable, in a container limited to 32 MiB
    _, obs = run_to_end(launcher, image, container_task("x=$(head -c 209715200 /dev/zero | tr '\\0' x); echo done",
                                                        mem=32))
    assert obs.exit is not None and obs.exit.limitation, obs
    status = terminal_status(obs.exit, False)
    assert status.state is TaskState.TASK_FAILED and status.reason == "REASON_CONTAINER_LIMITATION_MEMORY"


def test_kill_sends_sigterm_then_sigkill_after_the_grace_period(setup: tuple[ProcessLauncher, Image]) -> None:
    launcher, image = setup
    polite = container_task("trap 'echo got TERM; exit 3' TERM; echo up; while true; do sleep 0.1; done",
                            task_id="polite")
    handle = launch(launcher, image, polite)
    wait(launcher, handle, lambda o: stdout(handle).startswith("up") if (handle.task_dir / "stdout").exists()
         else False)
    launcher.kill(handle, 10.0)
    obs = wait(launcher, handle, lambda o: o.ended)
    launcher.release(handle)
    assert obs.exit is not None and obs.exit.killed and obs.exit.exit_code == 3
    assert "got TERM" in stdout(handle)
    # PID 1 without a TERM handler ignores SIGTERM (as in Docker): SIGKILL when the grace period ends
    stubborn = container_task(("sleep", "1000"), task_id="stubborn")
    handle = launch(launcher, image, stubborn)
    wait(launcher, handle, lambda o: o.started)  # reported once the container exists
    launcher.kill(handle, 0.5)
    obs = wait(launcher, handle, lambda o: o.ended)
    launcher.release(handle)
    assert obs.exit is not None and obs.exit.killed and obs.exit.status_code == 137, obs
    # SIGTERM first; the SIGKILL came from the grace period running out (the supervisor's log says so)
    assert "grace period over; SIGKILL to the task" in (handle.sandbox / "supervisor.log").read_text()
    assert terminal_status(obs.exit, True).state is TaskState.TASK_KILLED


def test_a_published_port_answers_on_the_host(setup: tuple[ProcessLauncher, Image], tmp_path: Path) -> None:
    launcher, image = setup
    host_port = free_port()
    info = container_task("mkdir -p /www && echo hello-from-container > /www/index.html && "
                          "exec httpd -f -p 8080 -h /www", task_id="web",
                          port_mappings=(PortMapping(8080, host_port),))
    handle = launch(launcher, image, info)
    obs = wait(launcher, handle, lambda o: o.started)
    assert obs.network == "bridge" and obs.ip_addresses and obs.ip_addresses[0].startswith("10.213.247.")
    body = ""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{host_port}/", timeout=2) as answer:
                body = answer.read().decode()
            break
        except OSError:
            time.sleep(0.1)
    launcher.kill(handle, 1.0)
    wait(launcher, handle, lambda o: o.ended)
    launcher.release(handle)
    assert body == "hello-from-container\n"
    assert not any(n.startswith(BRIDGE + "-") for n in os.listdir("/run/netns")), "the namespace was left"


def test_volumes_and_a_read_only_root(setup: tuple[ProcessLauncher, Image], tmp_path: Path) -> None:
    launcher, image = setup
    data = tmp_path / "volumes" / "data"
    data.mkdir()
    (data / "in.txt").write_text("from the host\n")
    info = container_task("cat /data/in.txt; touch /data/x 2>/dev/null || echo ro-volume; "
                          "touch /newfile 2>/dev/null || echo ro-root", network="none", readonly_rootfs=True,
                          volumes=(Volume(container_path="/data", host_path=str(data), mode="ro"),))
    handle, obs = run_to_end(launcher, image, info)
    assert obs.exit is not None and obs.exit.exit_code == 0, stdout(handle)
    assert stdout(handle).splitlines() == ["from the host", "ro-volume", "ro-root"]


def test_a_volume_outside_the_allowed_paths_is_refused_by_the_agent(setup: tuple[ProcessLauncher, Image]) -> None:
    from tessera.agent.executor.launcher import LaunchError

    launcher, image = setup
    info = container_task("true", volumes=(Volume(container_path="/etc2", host_path="/etc"),))
    with pytest.raises(LaunchError, match="allowed volume paths"):
        launcher.prepare(info, image)
