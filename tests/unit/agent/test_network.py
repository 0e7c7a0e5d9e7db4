"""The pure parts of the container network (tessera.agent.executor.network) and its twin, FakeNetwork.

The real plugins are exercised in tests/integration/test_cni_network.py, against the same contract."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.agent.executor.network import (
    CONTAINER_IFNAME,
    DEFAULT_SUBNET,
    FakeNetwork,
    Network,
    NetworkConfig,
    NetworkError,
    PortMapping,
    check_container_id,
    container_id_for,
    localnet_guard_rule,
    loopback_config_list,
    masquerade_rule,
    network_config_list,
    orphans,
    parse_add_result,
    plugin_config,
    plugin_env,
    plugin_failure,
    subnet_conflict,
    validate_port_mappings,
)
from tests.support.network_contract import NetworkContract

# What bridge ADD followed by portmap ADD printed on this machine (containernetworking-plugins 1.1.1).
REAL_RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "expbr0", "mac": "06:bb:f5:f9:5f:ba"},
        {"name": "veth669f525e", "mac": "6e:49:be:83:6c:a1"},
        {"name": "eth0", "mac": "16:27:be:f0:2f:9a", "sandbox": "/run/netns/expx-c1"},
    ],
    "ips": [{"interface": 2, "address": "10.213.251.2/24", "gateway": "10.213.251.1"}],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {},
}


def config(**changes: object) -> NetworkConfig:
    values: dict[str, object] = {"state_dir": "/var/lib/tessera/agent/cni"}
    values.update(changes)
    return NetworkConfig(**values)  # type: ignore[arg-type]


# ---- configuration -----------------------------------------------------------------------------------------


def test_defaults_name_the_bridge_subnet_and_derived_names() -> None:
    c = config()
    assert (c.bridge, c.subnet, c.plugin_dirs) == ("tessera0", DEFAULT_SUBNET, ("/usr/lib/cni", "/opt/cni/bin"))
    assert c.network_name == "tessera-tessera0"
    assert c.netns_prefix == "tessera0-"
    assert c.netns_name("t1") == "tessera0-t1"
    assert c.gateway == "10.213.64.1"
    assert c.ipam_dir == "/var/lib/tessera/agent/cni/ipam"
    assert c.records_dir == "/var/lib/tessera/agent/cni/attachments"


@pytest.mark.parametrize("changes, message", [
    ({"bridge": "a-b"}, "bridge name"),
    ({"bridge": ""}, "bridge name"),
    ({"bridge": "x" * 16}, "bridge name"),
    ({"subnet": "10.213.64.7/24"}, "not a network address"),
    ({"subnet": "banana"}, "not a network address"),
    ({"subnet": "fd00::/64"}, "only IPv4"),
    ({"subnet": "10.0.0.0/30"}, "too small"),
    ({"plugin_dirs": ()}, "plugin directory"),
    ({"state_dir": "relative/dir"}, "absolute"),
])
def test_bad_configurations_are_refused_with_the_reason(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config(**changes)


@given(st.from_regex(r"[A-Za-z0-9_]{1,15}", fullmatch=True), st.from_regex(r"[A-Za-z0-9_]{1,15}", fullmatch=True),
       st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,30}", fullmatch=True))
def test_one_agent_never_claims_a_namespace_of_another_bridge(mine: str, other: str, container_id: str) -> None:
    if mine == other:
        return
    theirs = config(bridge=other).netns_name(container_id)
    assert orphans(config(bridge=mine).netns_prefix, [theirs], [], []) == []


# ---- the configuration lists and what each plugin reads ------------------------------------------------------


def test_the_network_is_bridge_with_gateway_and_masquerade_on_host_local_then_portmap() -> None:
    c = config(bridge="br7", subnet="10.9.8.0/24")
    conf = network_config_list(c)
    assert conf["cniVersion"] == "1.0.0" and conf["name"] == "tessera-br7"
    bridge, portmap = conf["plugins"]
    assert bridge["type"] == "bridge" and bridge["bridge"] == "br7"
    # masquerading is one agent-wide rule (masquerade_rule), not the plugin's chain per container
    assert bridge["isGateway"] is True and bridge["ipMasq"] is False
    assert masquerade_rule(c) == ["-s", "10.9.8.0/24", "!", "-d", "10.9.8.0/24", "-m", "comment", "--comment",
                                  "tessera-br7: masquerade what leaves the container subnet", "-j", "MASQUERADE"]
    assert bridge["ipam"] == {"type": "host-local", "ranges": [[{"subnet": "10.9.8.0/24", "gateway": "10.9.8.1"}]],
                              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": c.ipam_dir}
    assert portmap["type"] == "portmap" and portmap["capabilities"] == {"portMappings": True}
    assert loopback_config_list(c) == {"cniVersion": "1.0.0", "name": "tessera-br7-lo",
                                       "plugins": [{"type": "loopback"}]}
    json.dumps(conf)  # it is what goes on stdin
    # no published port: no portmap in the chain (its DEL alone runs iptables a dozen times)
    assert [p["type"] for p in network_config_list(c, port_mappings=False)["plugins"]] == ["bridge"]


def test_each_plugin_gets_the_list_name_version_its_capabilities_and_the_previous_result() -> None:
    conf = network_config_list(config())
    mappings = [PortMapping(container_port=8080, host_port=31005), PortMapping(53, 31053, "udp")]
    first = plugin_config(conf, 0, port_mappings=mappings)
    assert first["name"] == "tessera-tessera0" and first["cniVersion"] == "1.0.0"
    assert "runtimeConfig" not in first and "prevResult" not in first  # bridge declares no capability
    second = plugin_config(conf, 1, port_mappings=mappings, prev_result=REAL_RESULT)
    assert second["runtimeConfig"] == {"portMappings": [
        {"hostPort": 31005, "containerPort": 8080, "protocol": "tcp"},
        {"hostPort": 31053, "containerPort": 53, "protocol": "udp"}]}
    assert second["prevResult"] == REAL_RESULT
    assert "runtimeConfig" not in plugin_config(conf, 1, port_mappings=())
    assert "name" not in conf["plugins"][0] and "runtimeConfig" not in conf["plugins"][1]  # not mutated


def test_plugin_environment_carries_the_cni_variables_and_path() -> None:
    env = plugin_env({"PATH": "/usr/sbin:/usr/bin", "HOME": "/root"}, command="ADD", container_id="t1",
                     netns_path="/run/netns/tessera0-t1", ifname="eth0", plugin_dirs=("/usr/lib/cni", "/opt/cni/bin"))
    assert env == {"PATH": "/usr/sbin:/usr/bin", "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "t1",
                   "CNI_NETNS": "/run/netns/tessera0-t1", "CNI_IFNAME": "eth0",
                   "CNI_PATH": "/usr/lib/cni:/opt/cni/bin"}
    assert plugin_env({}, command="DEL", container_id="t1", netns_path="", ifname="lo",
                      plugin_dirs=("/p",))["PATH"].startswith("/usr/local/sbin")


def test_the_guard_drops_new_connections_from_the_bridge_to_127_8_and_names_the_network() -> None:
    rule = localnet_guard_rule(config(bridge="br7"))
    assert rule[:4] == ["-i", "br7", "-d", "127.0.0.0/8"]
    assert rule[rule.index("--ctstate") - 1:rule.index("--ctstate") + 2] == ["!", "--ctstate", "RELATED,ESTABLISHED,DNAT"]
    assert rule[rule.index("--comment") + 1].startswith("tessera-br7: ")
    assert rule[-2:] == ["-j", "DROP"]


# ---- results and errors ------------------------------------------------------------------------------------


def test_the_container_addresses_are_those_on_its_sandbox_interface() -> None:
    assert parse_add_result(REAL_RESULT) == ("10.213.251.2",)
    on_host = {**REAL_RESULT, "ips": [{"interface": 0, "address": "10.213.251.1/24"},
                                      {"interface": 2, "address": "10.213.251.9/24"},
                                      {"interface": 7, "address": "10.213.251.10/24"}]}
    assert parse_add_result(on_host) == ("10.213.251.9",)
    assert parse_add_result({"ips": [{"address": "10.1.1.5/24"}, {"address": "junk"}]}) == ("10.1.1.5",)
    assert parse_add_result(REAL_RESULT, ifname="net1") == ()
    assert parse_add_result({}) == ()


def test_a_plugin_failure_reads_as_the_plugin_message_with_its_details_and_stderr() -> None:
    stdout = json.dumps({"cniVersion": "1.0.0", "code": 11, "msg": "failed to allocate for range 0",
                         "details": "no IP addresses available in range set: 10.9.8.1-10.9.8.6"}).encode()
    reason = plugin_failure("bridge", "ADD", 1, stdout, b"warning: something\n")
    assert reason == ("CNI plugin bridge ADD failed: failed to allocate for range 0: no IP addresses available "
                      "in range set: 10.9.8.1-10.9.8.6 (CNI error code 11); stderr: warning: something")
    assert plugin_failure("portmap", "DEL", 2, b"not json", b"") == "CNI plugin portmap DEL failed: not json"
    assert plugin_failure("loopback", "ADD", 139, b"", b"") == "CNI plugin loopback ADD failed: exit status 139"
    assert "stderr: panic" in plugin_failure("bridge", "ADD", 2, b"", b"panic: boom")


# ---- validation --------------------------------------------------------------------------------------------


def test_port_mappings_are_tcp_or_udp_in_range_and_never_publish_a_host_port_twice() -> None:
    good = [PortMapping(8080, 31005), PortMapping(8080, 31005, "udp"), PortMapping(1, 65535)]
    assert validate_port_mappings(good) == tuple(good)
    assert validate_port_mappings([]) == ()
    cases: list[tuple[list[PortMapping], str]] = [
        ([PortMapping(8080, 31005, "sctp")], "protocol"),
        ([PortMapping(0, 31005)], "container port"),
        ([PortMapping(8080, 65536)], "host port"),
        ([PortMapping(80, 31005), PortMapping(81, 31005)], "mapped twice"),
        ([PortMapping(True, 31005)], "container port"),  # a bool is not a port
    ]
    for bad, message in cases:
        with pytest.raises(NetworkError, match=message):
            validate_port_mappings(bad)


def test_container_ids_follow_the_cni_rule_and_tasks_get_valid_distinct_ones() -> None:
    check_container_id("t1")
    check_container_id("a.b_c-d")
    for bad in ("", ".x", "-x", "a/b", "a b", "a:b", "x" * 201):
        with pytest.raises(NetworkError, match="container id"):
            check_container_id(bad)
    ids = {container_id_for(f, t) for f, t in [("fw1", "web"), ("fw2", "web"), ("fw1", "web/2"), ("fw1", "web_2"),
                                               ("fw1", ""), ("fw1", "ü" * 300)]}
    assert len(ids) == 6
    for i in ids:
        check_container_id(i)
    assert container_id_for("fw1", "web") == container_id_for("fw1", "web")


def test_a_subnet_overlapping_a_route_of_another_device_is_named() -> None:
    routes = [{"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
              {"dst": "192.0.2.0/24", "dev": "eth0"},
              {"dst": "10.9.8.0/24", "dev": "br7"},
              {"type": "local", "dst": "10.9.8.1", "dev": "br7"}]
    assert subnet_conflict("10.9.8.0/24", routes, "br7") is None
    assert subnet_conflict("10.9.0.0/16", routes, "br9") == (
        "subnet 10.9.0.0/16 overlaps the route to 10.9.8.0/24 on br7")
    assert subnet_conflict("192.0.2.128/25", routes, "br7") is not None
    assert subnet_conflict("10.1.0.0/24", routes + [{"dst": "not-an-address", "dev": "x"}], "br7") is None


def test_orphans_are_the_namespaces_of_this_prefix_and_records_that_are_not_live() -> None:
    names = ["tessera0-a", "tessera0-b", "tessera1-c", "tessera0-", "tessera0--probe", "other"]
    assert orphans("tessera0-", names, ["d", "b"], ["a"]) == ["b", "d"]


# ---- the twin keeps the contract -----------------------------------------------------------------------------


class TestFakeNetworkContract(NetworkContract):
    config = NetworkConfig(state_dir="/nonexistent/fake", bridge="fake0", subnet="10.99.0.0/24")

    def network(self, *, small: bool = False) -> Network:
        if small:
            return FakeNetwork(config=NetworkConfig(state_dir="/nonexistent/fake", bridge="fake1",
                                                    subnet="10.99.1.0/29"))
        return FakeNetwork(config=self.config)

    def reopen(self, network: Network) -> Network:
        assert isinstance(network, FakeNetwork)
        return FakeNetwork(config=network.config, attached=dict(network.attached))


def test_the_fake_fails_as_told_and_records_its_calls() -> None:
    net = FakeNetwork(unavailable="not running as root", fail_attach="CNI plugin bridge ADD failed: boom")
    assert net.available() == "not running as root"
    with pytest.raises(NetworkError, match="bridge ADD failed: boom"):
        net.attach("t1")
    assert net.lookup("t1") is None
    net.fail_attach = None
    attachment = net.attach("t1", [PortMapping(8080, 31005)])
    assert attachment.interface == CONTAINER_IFNAME
    net.fail_detach = "CNI plugin portmap DEL failed: busy"
    with pytest.raises(NetworkError, match="portmap DEL failed"):
        net.detach("t1")
    assert net.lookup("t1") == attachment
    assert net.calls == [("attach", "t1"), ("attach", "t1"), ("detach", "t1")]
