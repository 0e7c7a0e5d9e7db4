"""`tessera lb` with the real Debian HAProxy in front of a real cluster's tasks: a service reached through
its service port, following a scale-up (a reload) and a kill, with a request loop running all along."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.sdk import Filters, FrameworkInfo, Resources, Scheduler, SchedulerDriver, TaskInfo
from tests.support.cluster import LocalCluster, free_port, one_agent_cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with one_agent_cluster(tmp_path_factory.mktemp("lb"), "cpus:4;mem:2048;ports:[31300-31399]") as c:
        yield c


class Web(Scheduler):
    """Keeps `wanted` HTTP servers named `web` running, each answering with its own task id."""

    def __init__(self, service_port: int, root: Path) -> None:
        self.service_port = service_port
        self.root = root
        self.wanted = 0
        self.running: dict[str, int] = {}
        self.launched = 0
        self.lock = threading.Lock()

    def offers(self, driver: SchedulerDriver, offers: list) -> None:  # type: ignore[type-arg]
        for offer in offers:
            tasks = []
            with self.lock:
                free = [p for b, e in offer.ports for p in range(b, e + 1)]
                for port in free[:max(self.wanted - len(self.running), 0)]:
                    self.launched += 1
                    task_id = f"web.{self.launched}"
                    page = self.root / task_id
                    page.mkdir(parents=True, exist_ok=True)
                    (page / "index.html").write_text(task_id)
                    page.chmod(0o755)
                    self.running[task_id] = port
                    tasks.append(TaskInfo(
                        task_id=task_id, name="web", resources=Resources.of(cpus=0.1, mem=32, ports=[(port, port)]),
                        command=(sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                 "--directory", str(page)),
                        labels={"tessera.lb.port": str(self.service_port), "tessera.lb.mode": "http"}))
            if tasks:
                driver.launch(offer, tasks, Filters(0.2))
            else:
                driver.decline([offer], Filters(0.2))

    def update(self, driver: SchedulerDriver, status) -> None:  # type: ignore[no-untyped-def]
        if status.is_terminal:
            with self.lock:
                self.running.pop(status.task_id, None)


def get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.read().decode()
    except OSError:
        return None


def test_a_service_port_follows_scale_and_kill_through_reloads(cluster: LocalCluster, tmp_path: Path) -> None:
    service_port = free_port()
    lb = subprocess.Popen([sys.executable, "-m", "tessera.control_plane.cli.main", "--masters",
                           ",".join(cluster.grpc_addresses()), "lb", "--dir", str(tmp_path / "lb")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    web = Web(service_port, tmp_path / "pages")
    driver = SchedulerDriver(web, FrameworkInfo(name="services"), cluster.grpc_addresses())
    driver.start()
    url = f"http://127.0.0.1:{service_port}/"
    try:
        with web.lock:
            web.wanted = 2
        driver.revive()
        wait_for(lambda: get(url), 60, what="the service answering through HAProxy")
        # round robin over both, once both servers listen: a task is RUNNING (and in the backend) as soon
        # as its process started, and HAProxy's check keeps a server whose port is not bound yet out
        wait_for(lambda: {get(url) for _ in range(6)} == {"web.1", "web.2"}, 60,
                 what="round robin over web.1 and web.2")

        results: list[str | None] = []
        done = threading.Event()

        def loop() -> None:
            while not done.is_set():
                results.append(get(url))
                time.sleep(0.01)

        looper = threading.Thread(target=loop, daemon=True)
        looper.start()
        with web.lock:
            web.wanted = 3
        driver.revive()
        wait_for(lambda: "web.3" in {get(url) for _ in range(6)}, 60, what="the third server behind the port")
        reload_errors = results.count(None)
        with web.lock:
            web.wanted = 2
        driver.kill("web.1")
        wait_for(lambda: "web.1" not in {get(url) for _ in range(9)}, 60, what="web.1 out of the backend")
        time.sleep(1.0)
        done.set()
        looper.join(5)
        errors = results.count(None)
        print(f"{len(results)} requests through HAProxy during a reload and a kill: {errors} failed "
              f"({reload_errors} during the reload)")
        assert reload_errors == 0, "a reload dropped requests"
        # a killed server may fail the requests that reach it between its end and the next reload (HAProxy
        # retries a refused connection on another server: redispatch), so at most a handful
        assert errors <= 3, f"{errors} of {len(results)} requests failed"
    finally:
        driver.teardown()
        driver.join(10)
        lb.terminate()
        try:
            out, _ = lb.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            lb.kill()
            out, _ = lb.communicate(timeout=5)
    assert re.search(r"lb: web 127\.0\.0\.1:\d+ \(3 servers\)", out), out
    assert not subprocess.run(["pgrep", "-f", str(tmp_path / "lb")], capture_output=True).stdout, \
        "haproxy outlived tessera lb"
