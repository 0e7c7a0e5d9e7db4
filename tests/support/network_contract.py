"""The contract every container network (`tessera.agent.executor.network.Network`) keeps, run against the
real CNI network (tests/integration/test_cni_network.py) and its twin (tests/unit/agent/test_network.py).

A subclass provides `network` (a fresh one per test with its own state dir; `small=True`: on a /29, five
addresses for containers) and `reopen` (a new instance over the same state: an agent restart)."""

from __future__ import annotations

import ipaddress

import pytest

from tessera.agent.executor.network import Network, NetworkConfig, NetworkError, PortMapping


class NetworkContract:
    config: NetworkConfig

    def network(self, *, small: bool = False) -> Network:
        raise NotImplementedError

    def reopen(self, network: Network) -> Network:
        raise NotImplementedError

    def _in_subnet(self, address: str) -> bool:
        return ipaddress.ip_address(address) in ipaddress.ip_network(self.config.subnet)

    def test_attach_gives_one_address_in_the_subnet_other_than_the_gateway(self) -> None:
        net = self.network()
        attachment = net.attach("ct-one")
        assert len(attachment.ip_addresses) == 1
        assert self._in_subnet(attachment.ip_addresses[0])
        assert attachment.ip_addresses[0] != self.config.gateway
        assert attachment.interface == "eth0"
        assert attachment.netns_path.endswith("/" + self.config.netns_name("ct-one"))
        assert net.lookup("ct-one") == attachment
        net.detach("ct-one")

    def test_two_containers_get_different_addresses(self) -> None:
        net = self.network()
        first = net.attach("ct-a")
        second = net.attach("ct-b")
        assert first.ip_addresses != second.ip_addresses
        assert first.netns_path != second.netns_path
        net.detach("ct-a")
        net.detach("ct-b")

    def test_detach_is_idempotent(self) -> None:
        net = self.network()
        net.attach("ct-idem")
        net.detach("ct-idem")
        assert net.lookup("ct-idem") is None
        net.detach("ct-idem")  # again: nothing left to do, no error
        net.detach("ct-never-attached")

    def test_a_full_subnet_refuses_and_a_detach_frees_an_address(self) -> None:
        net = self.network(small=True)
        ids = [f"ct-full{i}" for i in range(5)]
        addresses = {net.attach(i).ip_addresses[0] for i in ids}
        assert len(addresses) == 5
        with pytest.raises(NetworkError):
            net.attach("ct-one-too-many")
        assert net.lookup("ct-one-too-many") is None
        freed = net.lookup(ids[2])
        assert freed is not None
        net.detach(ids[2])
        again = net.attach("ct-one-too-many")
        assert again.ip_addresses == freed.ip_addresses  # the only free address is the one freed
        for i in [*ids[:2], *ids[3:], "ct-one-too-many"]:
            net.detach(i)

    def test_a_repeated_attach_returns_the_same_attachment(self) -> None:
        net = self.network()
        mappings = [PortMapping(container_port=8080, host_port=31111)]
        first = net.attach("ct-twice", mappings)
        assert net.attach("ct-twice", mappings) == first
        assert first.port_mappings == tuple(mappings)
        net.detach("ct-twice")

    def test_bad_port_mappings_and_ids_fail_before_anything_is_created(self) -> None:
        net = self.network()
        for bad in ([PortMapping(8080, 0)], [PortMapping(70000, 8080)], [PortMapping(80, 8080, "sctp")],
                    [PortMapping(80, 8080), PortMapping(81, 8080)]):
            with pytest.raises(NetworkError):
                net.attach("ct-bad", bad)
            assert net.lookup("ct-bad") is None
        for bad_id in ("", "-x", "a/b", "x" * 300):
            with pytest.raises(NetworkError, match="container id"):
                net.attach(bad_id)

    def test_cleanup_orphans_detaches_what_is_not_live_after_a_restart(self) -> None:
        net = self.network()
        live = net.attach("ct-live")
        net.attach("ct-orphan")
        restarted = self.reopen(net)
        assert restarted.cleanup_orphans(["ct-live"]) == ["ct-orphan"]
        assert restarted.lookup("ct-orphan") is None
        assert restarted.lookup("ct-live") == live
        assert restarted.cleanup_orphans(["ct-live"]) == []
        restarted.detach("ct-live")
