"""Ports for local masters and agents: chosen below the kernel's ephemeral range, so that a master
restarted on its port never finds it taken by some outgoing connection's source port."""

from __future__ import annotations

import socket
from pathlib import Path

from tessera.control_plane.cli.up import LOWEST_LISTEN_PORT, free_ports, listen_port_range


def test_the_range_lies_below_the_ephemeral_ports(tmp_path: Path) -> None:
    f = tmp_path / "ip_local_port_range"
    f.write_text("32768\t60999\n")
    assert listen_port_range(f) == (LOWEST_LISTEN_PORT, 32767)
    f.write_text("10500 65535\n")  # too little room below it
    assert listen_port_range(f) is None
    f.write_text("garbage")
    assert listen_port_range(f) is None
    assert listen_port_range(tmp_path / "missing") is None


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    span = listen_port_range()
    if span is not None:  # where the kernel says its range (Linux), every port is below it
        assert all(span[0] <= p <= span[1] for p in ports), ports
    for p in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", p))
            s.listen()
