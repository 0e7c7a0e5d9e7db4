"""Container networks with the real CNI plugins (containernetworking-plugins), as root.

Everything these tests create is named with the prefix `tsrtest` (bridges `tsrtest0`, `tsrtest1`,
`tsrtestd`, namespaces `tsrtest*-...`, CNI network names `tessera-tsrtest*`, nat rules carrying those names
or the test subnets 10.213.248-250.x) and removed after each test and, for leftovers of a crashed run,
before the first one. The shared portmap chains (CNI-HOSTPORT-*) and net.ipv4.ip_forward are put back as
they were before the session when nothing else uses the chains. Traffic goes only between the host and
the test's own namespaces. Not safe to run twice at once on one host (both would use `tsrtest0`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.agent.executor.network import (
    NETNS_DIR,
    CniNetwork,
    Network,
    NetworkConfig,
    NetworkError,
    PortMapping,
)
from tests.support.cni_host import (
    HostState,
    clean_leftovers,
    missing_requirements,
    namespaces,
    nat_chains,
    nat_rules,
    run,
)
from tests.support.network_contract import NetworkContract

PREFIX = "tsrtest"
BRIDGE, SUBNET = "tsrtest0", "10.213.250.0/24"
SMALL_BRIDGE, SMALL_SUBNET = "tsrtest1", "10.213.249.0/29"
DUMMY, DUMMY_SUBNET = "tsrtestd", "10.213.248.0/24"  # a device that is not a bridge
TEST_SUBNETS = (SUBNET, SMALL_SUBNET, DUMMY_SUBNET)
WAIT = 10.0  # seconds any wait in these tests may last


# ---- the host: requirements and clean-up of what carries the test prefix ------------------------------------


@pytest.fixture(scope="module", autouse=True)
def host() -> Iterator[None]:
    problems = missing_requirements(tools=[("busybox", "busybox-static")])
    if problems:
        pytest.fail("the CNI network tests need: " + "; ".join(problems))
    before = HostState.capture()
    clean_leftovers(PREFIX, TEST_SUBNETS)
    yield
    clean_leftovers(PREFIX, TEST_SUBNETS)
    before.restore()


@pytest.fixture(autouse=True)
def clean_each(host: None) -> Iterator[None]:
    yield
    clean_leftovers(PREFIX, TEST_SUBNETS)


# ---- helpers ----------------------------------------------------------------------------------------------


def _config(tmp_path: Path, bridge: str = BRIDGE, subnet: str = SUBNET, **changes: object) -> NetworkConfig:
    return NetworkConfig(state_dir=str(tmp_path / f"cni-{bridge}"), bridge=bridge, subnet=subnet,
                         **changes)  # type: ignore[arg-type]


def _chains_of(config: NetworkConfig, container_id: str) -> tuple[str, str]:
    """The per-container chains the plugins name (bridge's masquerade chain, portmap's DNAT chain):
    a prefix and the SHA-512 of network name + container id, cut to iptables' 28 characters."""
    digest = hashlib.sha512((config.network_name + container_id).encode()).hexdigest()
    return "CNI-" + digest[:24], "CNI-DN-" + digest[:21]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, deadline: float) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with opener.open(url, timeout=2) as response:
                return str(response.read().decode())
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise AssertionError(f"GET {url} did not answer within {WAIT:g} s: {last}")


def _links_on(bridge: str) -> list[str]:
    return [link["ifname"] for link in json.loads(run("ip", "-j", "link", "show", "master", bridge) or "[]")]


def _allocated(config: NetworkConfig) -> list[str]:
    """The addresses host-local holds (one file per address, besides its lock and last-reserved files)."""
    return [f for f in os.listdir(Path(config.ipam_dir, config.network_name)) if _is_address(f)]


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _addresses_in(netns: str) -> dict[str, dict[str, object]]:
    return {link["ifname"]: link for link in json.loads(run("ip", "-n", netns, "-j", "addr", "show") or "[]")}


# ---- the contract, on the real plugins -----------------------------------------------------------------------


class TestCniNetworkContract(NetworkContract):
    @pytest.fixture(autouse=True)
    def _state(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.config = _config(tmp_path)

    def network(self, *, small: bool = False) -> Network:
        if small:
            return CniNetwork(_config(self.tmp_path, SMALL_BRIDGE, SMALL_SUBNET))
        return CniNetwork(self.config)

    def reopen(self, network: Network) -> Network:
        assert isinstance(network, CniNetwork)
        return CniNetwork(network.config)


# ---- what only the real network shows ------------------------------------------------------------------------


def test_the_network_is_available_here(tmp_path: Path) -> None:
    assert CniNetwork(_config(tmp_path)).available() is None


def test_the_namespace_has_eth0_with_the_address_and_lo_up(tmp_path: Path) -> None:
    config = _config(tmp_path)
    net = CniNetwork(config)
    attachment = net.attach("ct-ns")
    netns = config.netns_name("ct-ns")
    assert attachment.netns_path == f"{NETNS_DIR}/{netns}" and os.path.exists(attachment.netns_path)
    links = _addresses_in(netns)
    assert set(links) == {"lo", "eth0"}
    eth0 = [a["local"] for a in links["eth0"]["addr_info"] if a["family"] == "inet"]  # type: ignore[index, union-attr]
    assert eth0 == list(attachment.ip_addresses)
    assert "UP" in links["lo"]["flags"]  # type: ignore[operator]
    assert any(a["local"] == "127.0.0.1" for a in links["lo"]["addr_info"])  # type: ignore[index, union-attr]
    assert len(_links_on(BRIDGE)) == 1
    net.detach("ct-ns")


def test_a_published_port_answers_on_127_0_0_1_and_the_container_address_answers_directly(tmp_path: Path) -> None:
    config = _config(tmp_path)
    net = CniNetwork(config)
    host_port = _free_port()
    attachment = net.attach("ct-web", [PortMapping(container_port=8080, host_port=host_port)])
    docroot = tmp_path / "www"
    docroot.mkdir()
    (docroot / "index.html").write_text("hello from ct-web\n")
    httpd = subprocess.Popen(["ip", "netns", "exec", config.netns_name("ct-web"), "busybox", "httpd", "-f",
                              "-p", "8080", "-h", str(docroot)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + WAIT
        assert _get(f"http://{attachment.ip_addresses[0]}:8080/", deadline) == "hello from ct-web\n"
        assert _get(f"http://127.0.0.1:{host_port}/", deadline) == "hello from ct-web\n"
    finally:
        httpd.kill()
        httpd.wait(timeout=WAIT)
    net.detach("ct-web")


_SEND_UDP = ("import socket, sys\n"
             "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
             "for host, port in zip(sys.argv[1::2], sys.argv[2::2]):\n"
             "    s.sendto(b'from the container', (host, int(port)))\n")


def test_one_masquerade_rule_for_the_subnet_and_no_chain_per_container(tmp_path: Path) -> None:
    config = _config(tmp_path)
    net = CniNetwork(config)
    net.attach("ct-masq")
    rules = [r for r in nat_rules() if r.startswith("-A POSTROUTING") and "MASQUERADE" in r and SUBNET in r]
    assert len(rules) == 1, rules
    assert _chains_of(config, "ct-masq")[0] not in nat_chains()  # the bridge plugin's per-container chain
    CniNetwork(config).attach("ct-masq2")  # a second instance (another supervisor) adds no second rule
    assert len([r for r in nat_rules() if "MASQUERADE" in r and SUBNET in r]) == 1
    net.detach("ct-masq")
    net.detach("ct-masq2")


def test_a_container_cannot_reach_services_on_the_hosts_loopback(tmp_path: Path) -> None:
    """portmap sets route_localnet on the bridge; the agent's guard rule keeps containers off 127.0.0.0/8."""
    config = _config(tmp_path)
    net = CniNetwork(config)
    net.attach("ct-sneaky", [PortMapping(container_port=8080, host_port=_free_port())])
    netns = config.netns_name("ct-sneaky")
    assert run("sysctl", "-n", f"net.ipv4.conf.{BRIDGE}.route_localnet").strip() == "1"
    # what a container with CAP_NET_ADMIN in its namespace (or CAP_NET_RAW and a raw socket) can do: send
    # packets for 127.0.0.1 to its gateway
    for step in ("ip route del local 127.0.0.0/8 dev lo table local", "ip route del local 127.0.0.1 dev lo table local",
                 "sysctl -qw net.ipv4.conf.eth0.route_localnet=1", f"ip route add 127.0.0.1/32 via {config.gateway}"):
        run("ip", "netns", "exec", netns, *step.split())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as on_loopback, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as on_gateway:
        on_loopback.bind(("127.0.0.1", 0))
        on_gateway.bind((config.gateway, 0))
        on_gateway.settimeout(WAIT)
        run("ip", "netns", "exec", netns, sys.executable, "-c", _SEND_UDP,
            "127.0.0.1", str(on_loopback.getsockname()[1]), config.gateway, str(on_gateway.getsockname()[1]))
        assert on_gateway.recvfrom(100)[0] == b"from the container"  # sent after the other one
        on_loopback.settimeout(0.5)
        with pytest.raises(TimeoutError):
            on_loopback.recvfrom(100)
    net.detach("ct-sneaky")


def test_detach_removes_the_namespace_veth_rules_and_address(tmp_path: Path) -> None:
    config = _config(tmp_path)
    net = CniNetwork(config)
    attachment = net.attach("ct-gone", [PortMapping(container_port=8080, host_port=_free_port())])
    address = attachment.ip_addresses[0]
    masq_chain, dnat_chain = _chains_of(config, "ct-gone")
    assert dnat_chain in nat_chains() and masq_chain not in nat_chains()  # masquerade: one rule for the subnet
    assert _allocated(config) == [address]
    assert len(_links_on(BRIDGE)) == 1

    CniNetwork(config).detach("ct-gone")  # a new instance: what detach needs is on disk (an agent restart)

    assert not os.path.exists(attachment.netns_path)
    assert _links_on(BRIDGE) == []
    assert not {masq_chain, dnat_chain} & nat_chains()
    assert not [r for r in nat_rules() if address in r or '"ct-gone"' in r]
    assert _allocated(config) == []
    assert os.listdir(config.records_dir) == []


def test_cleanup_orphans_removes_a_namespace_left_by_a_crashedrun(tmp_path: Path) -> None:
    config = _config(tmp_path)
    crashed = CniNetwork(config)
    attachment = crashed.attach("ct-crashed", [PortMapping(container_port=80, host_port=_free_port())])
    run("ip", "netns", "add", config.netns_name("ct-bare"))  # a crash between namespace and record
    masq_chain, dnat_chain = _chains_of(config, "ct-crashed")

    restarted = CniNetwork(config)
    assert restarted.cleanup_orphans([]) == ["ct-bare", "ct-crashed"]

    assert [n for n in namespaces(PREFIX) if n.startswith(config.netns_prefix)] == []
    assert _links_on(BRIDGE) == []
    assert not {masq_chain, dnat_chain} & nat_chains()
    assert not [r for r in nat_rules() if attachment.ip_addresses[0] in r]
    assert restarted.cleanup_orphans([]) == []


def test_a_missing_plugin_directory_is_reported_and_attach_fails_cleanly(tmp_path: Path) -> None:
    empty = tmp_path / "no-plugins"
    empty.mkdir()
    config = _config(tmp_path, plugin_dirs=(str(empty),))
    net = CniNetwork(config)
    reason = net.available()
    assert reason is not None
    assert f"CNI plugins loopback, bridge, host-local, portmap not found in {empty}" in reason
    with pytest.raises(NetworkError, match=f"CNI plugin loopback not found in {empty}") as failure:
        net.attach("ct-noplugins")
    assert "containernetworking-plugins" in failure.value.reason
    assert namespaces(PREFIX) == []
    assert net.lookup("ct-noplugins") is None


def test_a_failing_plugin_is_reported_with_its_message_and_the_chain_is_undone(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for name in ("bridge", "host-local", "loopback"):
        (plugins / name).symlink_to(f"/usr/lib/cni/{name}")
    failing = plugins / "portmap"
    failing.write_text(
        "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] || exit 0\n"
        "echo 'the test refuses' >&2\n"
        'echo \'{"cniVersion": "1.0.0", "code": 101, "msg": "portmap refused", "details": "by the test"}\'\n'
        "exit 1\n")
    failing.chmod(failing.stat().st_mode | stat.S_IXUSR)
    config = _config(tmp_path, plugin_dirs=(str(plugins),))
    net = CniNetwork(config)
    with pytest.raises(NetworkError) as failure:
        net.attach("ct-refused", [PortMapping(container_port=80, host_port=_free_port())])
    assert failure.value.reason == ("container network: CNI plugin portmap ADD failed: portmap refused: by the test "
                                    "(CNI error code 101); stderr: the test refuses")
    # bridge ADD had succeeded: its veth, masquerade chain and address were taken back
    assert namespaces(PREFIX) == []
    assert _links_on(BRIDGE) == []
    assert _chains_of(config, "ct-refused")[0] not in nat_chains()
    assert _allocated(config) == []
    assert net.lookup("ct-refused") is None and os.listdir(config.records_dir) == []


def test_a_bridge_plugin_error_names_the_device(tmp_path: Path) -> None:
    run("ip", "link", "add", DUMMY, "type", "veth", "peer", "name", f"{PREFIX}p")  # a device, not a bridge
    net = CniNetwork(_config(tmp_path, DUMMY, DUMMY_SUBNET))
    with pytest.raises(NetworkError, match=f"CNI plugin bridge ADD failed: .*{DUMMY}") as failure:
        net.attach("ct-notabridge")
    assert "container network: " in failure.value.reason
    assert [n for n in namespaces(PREFIX) if n.startswith(f"{DUMMY}-")] == []


def test_detach_with_a_torn_record_still_removes_the_namespace_and_the_interface(tmp_path: Path) -> None:
    config = _config(tmp_path)
    net = CniNetwork(config)
    attachment = net.attach("ct-torn")
    masq_chain = _chains_of(config, "ct-torn")[0]
    Path(config.records_dir, "ct-torn.json").write_text('{"container_id": "ct-to')  # a power loss mid-write
    with pytest.raises(NetworkError, match="unreadable"):
        net.lookup("ct-torn")
    net.detach("ct-torn")
    assert not os.path.exists(attachment.netns_path)
    assert _links_on(BRIDGE) == []
    assert masq_chain not in nat_chains()
    assert _allocated(config) == []
    assert os.listdir(config.records_dir) == []
