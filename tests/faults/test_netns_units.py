"""The pure parts of the netns harness: the delay process's decision per packet and its nfnetlink queue
messages (tests/faults/nfq_delay.py), and the partition rules (tests/faults/netns.py). No root needed."""

from __future__ import annotations

import socket
import struct

import pytest

from tests.faults.netns import BLACKHOLE, RESET, cut_rules
from tests.faults.nfq_delay import (
    NF_ACCEPT,
    NFQNL_CFG_CMD_BIND,
    Shape,
    config_message,
    decide,
    packet_ids,
    verdict_message,
)


def test_decide_drops_below_the_loss_probability_and_delays_within_the_jitter() -> None:
    shape = Shape(delay=0.020, jitter=0.010, loss=0.01, reorder=0.0)
    assert decide(shape, 100.0, 0.005, 0.5, 0.5) is None  # lost
    assert decide(shape, 100.0, 0.01, 0.5, 0.5) == pytest.approx(100.020)  # kept at the boundary
    assert decide(shape, 100.0, 0.5, 0.5, 0.0) == pytest.approx(100.010)  # -jitter
    assert decide(shape, 100.0, 0.5, 0.5, 0.999999) == pytest.approx(100.030, abs=1e-6)  # +jitter
    assert decide(Shape(delay=0.005, jitter=0.010), 100.0, 0.5, 0.5, 0.0) == 100.0  # never before now


def test_decide_lets_a_reordered_packet_go_at_once() -> None:
    shape = Shape(delay=0.020, reorder=0.25)
    assert decide(shape, 7.0, 0.9, 0.1, 0.5) == 7.0
    assert decide(shape, 7.0, 0.9, 0.3, 0.5) == pytest.approx(7.020)


def test_config_and_verdict_messages_are_nfnetlink_queue_messages() -> None:
    bind = config_message(3, 1, NFQNL_CFG_CMD_BIND)
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", bind)
    assert length == len(bind) and kind == (3 << 8) | 2 and flags == 1 | 4 and seq == 1
    assert struct.unpack_from("!BBH", bind, 16) == (socket.AF_UNSPEC, 0, 3)
    assert struct.unpack_from("=HH", bind, 20) == (8, 1)  # NFQA_CFG_CMD
    assert struct.unpack_from("!BxH", bind, 24) == (NFQNL_CFG_CMD_BIND, socket.AF_INET)
    params = config_message(3, 2)
    assert struct.unpack_from("=HH", params, 20) == (9, 2)  # NFQA_CFG_PARAMS: copy range, mode (padded)
    assert struct.unpack_from("!IB", params, 24) == (0, 1)  # META only
    assert len(params) % 4 == 0
    verdict = verdict_message(3, 0xABCDEF, NF_ACCEPT)
    assert struct.unpack_from("=IHHII", verdict)[:2] == (len(verdict), (3 << 8) | 1)
    assert struct.unpack_from("=HH", verdict, 20) == (12, 2)
    assert struct.unpack_from("!II", verdict, 24) == (NF_ACCEPT, 0xABCDEF)


def _packet(packet_id: int) -> bytes:
    hdr = struct.pack("!IHB", packet_id, 0x0800, 3)  # id, hw protocol, hook (7 bytes, padded to 8)
    other = struct.pack("=HH", 9, 5) + b"\7" * 5 + b"\0" * 3  # an attribute before it (padded), skipped
    attrs = other + struct.pack("=HH", 4 + len(hdr), 1) + hdr + b"\0"
    body = struct.pack("!BBH", socket.AF_INET, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), 3 << 8, 0, 0, 0) + body


def test_packet_ids_reads_every_packet_of_one_read_and_the_errors() -> None:
    ack = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", 0) + b"\0" * 16
    refused = struct.pack("=IHHII", 36, 2, 0, 2, 0) + struct.pack("=i", -1) + b"\0" * 16
    ids, errors = packet_ids(_packet(5) + _packet(2**32 - 1) + ack + refused)
    assert ids == [5, 2**32 - 1]
    assert errors == [0, 1]
    assert packet_ids(b"") == ([], [])


def test_cut_rules_drop_or_reset_each_direction_asked_for() -> None:
    assert cut_rules("10.213.240.12", BLACKHOLE) == [["-A", "TSR-OUT", "-d", "10.213.240.12", "-j", "DROP"],
                                                     ["-A", "TSR-IN", "-s", "10.213.240.12", "-j", "DROP"]]
    assert cut_rules("10.213.240.12", BLACKHOLE, inbound=False) == [
        ["-A", "TSR-OUT", "-d", "10.213.240.12", "-j", "DROP"]]
    reset = cut_rules("10.213.240.13", RESET, outbound=False)
    assert reset == [["-A", "TSR-IN", "-s", "10.213.240.13", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
                     ["-A", "TSR-IN", "-s", "10.213.240.13", "-j", "DROP"]]  # what is not TCP is dropped
    with pytest.raises(ValueError, match="unknown cut mode"):
        cut_rules("10.213.240.13", "sideways")


def test_missing_requirements_name_root_and_the_debian_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.faults import netns

    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(netns.shutil, "which", lambda tool: None if tool in ("iptables", "mkfs.ext4") else "/x")
    problems = netns.missing_requirements()
    assert problems[0].startswith("root")
    assert "iptables (Debian package iptables)" in problems
    assert "mkfs.ext4 (Debian package e2fsprogs)" in problems
    with pytest.raises(AssertionError, match="netns hosts harness needs: root"):
        netns.require_hosts()
