"""`tessera dns` against a real cluster: records of running tasks, following a scale-up and a kill, asked
with another DNS library (dnspython) over UDP and TCP on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import dns.message
import dns.query
import dns.rcode
import pytest

from tessera.sdk import Filters, FrameworkInfo, Resources, Scheduler, SchedulerDriver, TaskInfo
from tests.support.cluster import LocalCluster, wait_for
from tests.support.dns_process import dns_server as serve_dns

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

FAST_MASTER = ["--allocation-interval", "0.2"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("dns"), n=1) as c:
        c.master_flags = FAST_MASTER
        c.start_all()
        c.leader()
        # the agent's hostname is its address (127.0.0.1): where its tasks publish their ports
        c.add_agent("cpus:4;mem:2048;ports:[31200-31299]", flags=("--hostname", "127.0.0.1"))
        c.wait_agents(1)
        yield c


@pytest.fixture(scope="module")
def dns_server(cluster: LocalCluster) -> Iterator[tuple[str, int]]:
    with serve_dns(cluster.grpc_addresses(), cluster.root / "dns.log") as address:
        yield address


def query(server: tuple[str, int], name: str, rdtype: str, tcp: bool = False) -> dns.message.Message:
    request = dns.message.make_query(name, rdtype)
    ask = dns.query.tcp if tcp else dns.query.udp
    return ask(request, server[0], port=server[1], timeout=2)


def addresses(server: tuple[str, int], name: str) -> list[str]:
    answer = query(server, name, "A")
    return sorted(r.address for rrset in answer.answer for r in rrset)


def srv(server: tuple[str, int], name: str, tcp: bool = False) -> list[int]:
    answer = query(server, name, "SRV", tcp=tcp)
    return sorted(r.port for rrset in answer.answer for r in rrset)


class Web(Scheduler):
    """Keeps `wanted` tasks named `web` running, each holding one port of the offer."""

    def __init__(self) -> None:
        self.wanted = 0
        self.running: dict[str, int] = {}  # task id -> its port
        self.launched = 0
        self.lock = threading.Lock()

    def offers(self, driver: SchedulerDriver, offers: list) -> None:  # type: ignore[type-arg]
        for offer in offers:
            with self.lock:
                missing = self.wanted - len(self.running)
                tasks = []
                free = [p for b, e in offer.ports for p in range(b, e + 1)]
                for port in free[:max(missing, 0)]:
                    self.launched += 1
                    task_id = f"web.{self.launched}"
                    self.running[task_id] = port
                    tasks.append(TaskInfo(task_id=task_id, name="web",
                                          resources=Resources.of(cpus=0.1, mem=16, ports=[(port, port)]),
                                          command="sleep 600"))
            if tasks:
                driver.launch(offer, tasks, Filters(0.2))
            else:
                driver.decline([offer], Filters(0.2))

    def update(self, driver: SchedulerDriver, status) -> None:  # type: ignore[no-untyped-def]
        if status.is_terminal:
            with self.lock:
                self.running.pop(status.task_id, None)


def test_records_follow_a_scale_up_and_a_kill(cluster: LocalCluster, dns_server: tuple[str, int]) -> None:
    web = Web()
    driver = SchedulerDriver(web, FrameworkInfo(name="services"), cluster.grpc_addresses())
    driver.start()
    try:
        with web.lock:
            web.wanted = 2
        driver.revive()
        wait_for(lambda: len(srv(dns_server, "_web._tcp.tessera")) == 2, 30, what="two SRV records")
        assert addresses(dns_server, "web.tessera") == ["127.0.0.1"]
        assert addresses(dns_server, "web.services.tessera") == ["127.0.0.1"]
        with web.lock:
            ports = sorted(web.running.values())
        assert srv(dns_server, "_web._tcp.tessera") == ports
        assert srv(dns_server, "_web._tcp.tessera", tcp=True) == ports  # TCP answers the same
        # scale up: the record set follows, and how long it took is printed (not asserted: shared machine)
        started = time.monotonic()
        with web.lock:
            web.wanted = 3
        driver.revive()
        wait_for(lambda: len(srv(dns_server, "_web._tcp.tessera")) == 3, 30, what="three SRV records")
        print(f"scale-up visible in DNS after {time.monotonic() - started:.2f} s (launch included)")
        # a kill: the task's records go once it is no longer running
        with web.lock:
            web.wanted = 2
            victim, port = sorted(web.running.items())[0]
        killed = time.monotonic()
        driver.kill(victim)
        wait_for(lambda: port not in srv(dns_server, "_web._tcp.tessera"), 30, what="the killed task's record gone")
        print(f"kill visible in DNS after {time.monotonic() - killed:.2f} s")
        task_name = victim.replace(".", "-") + ".web.tessera"
        assert query(dns_server, task_name, "A").rcode() == dns.rcode.NXDOMAIN
        assert query(dns_server, "example.com", "A").rcode() == dns.rcode.REFUSED  # nothing forwarded
    finally:
        driver.teardown()
        driver.join(10)
    wait_for(lambda: not srv(dns_server, "_web._tcp.tessera"), 30, what="no records after the teardown")


def test_tessera_dns_refuses_a_bad_listen_address(cluster: LocalCluster) -> None:
    done = subprocess.run([sys.executable, "-m", "tessera.control_plane.cli.main", "--masters",
                           ",".join(cluster.grpc_addresses()), "dns", "--listen", "nowhere"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--listen: expected HOST:PORT" in done.stderr, done.stderr
