"""Container tasks end to end with real processes: `tessera master`, `tessera agent` (runc, CNI on a test
bridge and subnet of its own, removed before and after), a real registry on 127.0.0.1, `tessera run
--image` and a framework on the SDK. Needs root and the Debian packages .ci/run installs; a missing one
fails the test, naming it."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tessera.sdk import (
    ContainerInfo,
    Filters,
    FrameworkInfo,
    Offer,
    PortMapping,
    Resources,
    SchedulerDriver,
    TaskInfo,
    TaskState,
)
from tessera.v1 import operator_pb2
from tests.support.cluster import LocalCluster, free_port, wait_for
from tests.support.cni_host import HostState, clean_leftovers, require_container_host
from tests.support.keeper import Keeper as BaseKeeper
from tests.support.keeper import launch, running
from tests.support.registry import Registry, corrupt_layer, push_busybox

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BRIDGE = "tsrproc0"
SUBNET = "10.213.246.0/24"
IMAGE = "tools/busybox:1.35"
FAST_MASTER = ["--allocation-interval", "0.2", "--agent-timeout", "5", "--reregistration-timeout", "5",
               "--framework-reconnect-timeout", "5"]
AGENT_FLAGS = ("--cni-bridge", BRIDGE, "--cni-subnet", SUBNET)


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    require_container_host()
    with Registry() as reg:
        push_busybox(reg, IMAGE)
        push_busybox(reg, "tools/broken:1", extra_files={"/etc/motd": "this layer will be corrupted\n"})
        yield reg


@pytest.fixture(scope="module")
def cluster(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    before = HostState.capture()
    clean_leftovers(BRIDGE, [SUBNET])
    root = tmp_path_factory.mktemp("containers")
    with LocalCluster(root, n=1) as c:
        c.master_flags = FAST_MASTER
        c.start_all()
        c.leader()
        c.add_agent("cpus:4;mem:2048;ports:[31000-31100]", flags=AGENT_FLAGS)
        c.wait_agents(1)
        yield c
    clean_leftovers(BRIDGE, [SUBNET])
    before.restore()


def tessera_run(cluster: LocalCluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tessera.control_plane.cli.main", "run", "--masters",
                           ",".join(cluster.grpc_addresses()), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def agents(cluster: LocalCluster) -> list[operator_pb2.AgentView]:  # type: ignore[name-defined]
    client = cluster.client()
    try:
        return list(client.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True)).agents)
    finally:
        client.close()


def test_tessera_run_image_prints_the_hostname_and_pid_1(cluster: LocalCluster, registry: Registry) -> None:
    done = tessera_run(cluster, "--image", f"{registry.host}/{IMAGE}", "--cpus", "0.2", "--mem", "64", "--",
                       "sh", "-c", "hostname; ps -o pid,args; exit 3")
    assert done.returncode == 3, done.stderr + cluster.logs()
    lines = done.stdout.splitlines()
    assert lines[0].startswith("tessera-run-"), lines  # the task id
    assert lines[2].split()[0] == "1" and "hostname; ps" in lines[2], lines
    assert len(lines) == 4, f"host processes are visible in the container: {lines}"
    assert "at 10.213.246." in done.stderr  # TASK_RUNNING carried the container's address


@pytest.fixture(scope="module")
def plain_agent(cluster: LocalCluster) -> Iterator[str]:
    """A second agent that runs no containers (--containers off); stopped when the module's tests end."""
    agent = cluster.add_agent("cpus:1;mem:512", "kind:plain", flags=("--containers", "off"))
    cluster.wait_agents(2)
    yield [a.agent_id for a in agents(cluster) if a.info.hostname == agent.name][0]
    cluster.kill(agent)


def test_agents_show_their_container_support(cluster: LocalCluster, plain_agent: str) -> None:
    by_host = {a.info.hostname: a.info.containers for a in agents(cluster)}
    assert by_host["a1"].runtime.startswith("runc ") and f"{BRIDGE} {SUBNET}" in by_host["a1"].network
    assert not by_host["a2"].runtime and "--containers off" in by_host["a2"].unavailable
    shown = subprocess.run([sys.executable, "-m", "tessera.control_plane.cli.main", "--masters",
                            ",".join(cluster.grpc_addresses()), "agents"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "runc" in shown.stdout and "--containers off" in shown.stdout.replace("\n", " ")


class Keeper(BaseKeeper):
    """The support keeper, launching only on agents that run containers (not the `kind:plain` one)."""

    def accepts(self, offer: Offer) -> bool:
        return offer.attributes.get("kind") != "plain"


@pytest.fixture(scope="module")
def framework(cluster: LocalCluster) -> Iterator[tuple[Keeper, SchedulerDriver]]:
    with running(Keeper(), cluster.grpc_addresses(), "container-tests") as framework:
        yield framework


def container(task_id: str, image: str, command: str | tuple[str, ...] = "", ports: list[tuple[int, int]] | None = None,
              **kw: object) -> TaskInfo:
    mappings = [PortMapping(container_port=c, host_port=h) for c, h in ports or []]
    resources = Resources.of(cpus=0.1, mem=32, ports=[(h, h) for _, h in ports or []])
    return TaskInfo(task_id=task_id, resources=resources, command=command,
                    container=ContainerInfo(image=image, port_mappings=mappings, **kw))  # type: ignore[arg-type]


def test_a_published_port_answers_and_the_second_task_does_not_pull(
        cluster: LocalCluster, registry: Registry, framework: tuple[Keeper, SchedulerDriver]) -> None:
    keeper, driver = framework
    push_busybox(registry, "tools/web:1")  # an image no other test pulled
    image = f"{registry.host}/tools/web:1"
    manifests_before = registry.request_count("/tools/web/manifests/", method="GET")
    host_port = 31050
    launch(framework, container("web", image, "mkdir -p /www && echo served > /www/index.html && "
                                "exec httpd -f -p 8080 -h /www", ports=[(8080, host_port)]))
    running = keeper.wait(lambda: next((s for s in keeper.statuses if s.task_id == "web"
                                        and s.state is TaskState.TASK_RUNNING), None))
    assert running.network is not None and running.network.ip_addresses[0].startswith("10.213.246."), running
    body = wait_for(lambda: _get(f"http://127.0.0.1:{host_port}/"), 30, what="the published port answers")
    assert body == "served\n"
    pulled = registry.request_count("/tools/web/manifests/", method="GET") - manifests_before
    assert pulled >= 1  # the first task pulled the image
    launch(framework, container("second", image, "echo again"))
    assert keeper.final("second").state is TaskState.TASK_FINISHED
    # the second task of the image did not reach the registry: the agent's store answered from its cache
    assert registry.request_count("/tools/web/manifests/", method="GET") - manifests_before == pulled
    driver.kill("web")
    assert keeper.final("web").state is TaskState.TASK_KILLED


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.read().decode()
    except OSError:
        return None


def test_bad_images_fail_the_task_with_the_reason_and_the_agent_keeps_serving(
        cluster: LocalCluster, registry: Registry, framework: tuple[Keeper, SchedulerDriver]) -> None:
    keeper, _ = framework
    closed = free_port()
    corrupt_layer(registry, "tools/broken", "1")
    cases = {
        "missing-tag": (f"{registry.host}/tools/busybox:9.99", "manifest unknown"),
        "unreachable": (f"127.0.0.1:{closed}/tools/busybox:1.35", "registry unreachable"),
        "corrupt": (f"{registry.host}/tools/broken:1", "corrupt layer"),
    }
    for task_id, (image, _) in cases.items():
        launch(framework, container(task_id, image, "true"))
    for task_id, (_, reason) in cases.items():
        final = keeper.final(task_id)
        assert final.state is TaskState.TASK_FAILED and final.reason == "REASON_CONTAINER_LAUNCH_FAILED", final
        assert reason in final.message, final.message
    # a reference that does not parse never reaches an agent: INVALID_ARGUMENT at the accept
    launch(framework, container("bad-ref", "Not A Reference", "true"))
    keeper.wait(lambda: any("container.image" in r for r in keeper.refusals))
    launch(framework, container("after", f"{registry.host}/{IMAGE}", "echo still here"))
    assert keeper.final("after").state is TaskState.TASK_FINISHED


def test_a_container_task_on_an_agent_without_containers_fails_with_the_reason(
        cluster: LocalCluster, registry: Registry, plain_agent: str) -> None:
    plain = plain_agent  # a framework that launches only there

    class OnPlain(Keeper):
        def offers(self, driver: SchedulerDriver, offers: list) -> None:  # type: ignore[type-arg]
            for offer in offers:
                with self.lock:
                    task = self.queue.pop() if self.queue and offer.agent_id == plain else None
                if task is not None:
                    driver.launch(offer, [task])
                else:
                    driver.decline([offer], Filters(0.2))

    keeper = OnPlain()
    driver = SchedulerDriver(keeper, FrameworkInfo(name="plain-test"), cluster.grpc_addresses())
    keeper.queue.append(container("nowhere", f"{registry.host}/{IMAGE}", "true"))
    driver.start()
    try:
        final = keeper.final("nowhere")
    finally:
        driver.teardown()
        driver.join(10)
    assert final.state is TaskState.TASK_FAILED and "cannot run container tasks" in final.message, final


def test_containers_survive_kill_9_of_the_agent_and_report_their_real_exit(
        cluster: LocalCluster, registry: Registry, framework: tuple[Keeper, SchedulerDriver]) -> None:
    keeper, _ = framework
    launch(framework, container("survivor", f"{registry.host}/{IMAGE}", "sleep 4; exit 5"))
    keeper.wait(lambda: any(s.task_id == "survivor" and s.state is TaskState.TASK_RUNNING for s in keeper.statuses))
    agent = cluster.agents[0]
    cluster.kill(agent)  # SIGKILL
    time.sleep(1.0)
    cluster.start_agent(agent)
    final = keeper.final("survivor", timeout=120)
    assert final.state is TaskState.TASK_FAILED and final.exit_code == 5, final
