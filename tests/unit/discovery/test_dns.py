"""The DNS zone of the tasks (control_plane/dns/records.py) and the answers built from it (server.py's
resolver, over dnslib's wire format, no sockets)."""

from __future__ import annotations

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from tessera.control_plane.discovery.dns_records import build_zone, normalize_domain
from tessera.control_plane.discovery.dns_server import ZoneResolver
from tessera.control_plane.discovery.endpoints import Endpoint, Port, dns_label, endpoints_from_state
from tessera.v1 import common_pb2, operator_pb2


def test_labels_and_domains() -> None:
    assert dns_label("Web_Frontend.v2") == "web-frontend-v2"
    assert dns_label("--x--") == "x" and dns_label("__") == "x"
    assert len(dns_label("a" * 100)) == 63
    assert normalize_domain("Tessera.") == "tessera"
    assert normalize_domain("svc.example") == "svc.example"
    for bad in ("", "-a", "a..b", "a b"):
        with pytest.raises(ValueError):
            normalize_domain(bad)


ZONE = build_zone([
    Endpoint("web.1", "web", "services", "127.0.0.1", (Port(31001, "tcp", "http"),)),
    Endpoint("web.2", "web", "services", "127.0.0.2", (Port(31002, "tcp", "http"), Port(31003, "udp"))),
    Endpoint("db-1", "db", "other", "127.0.0.3", ()),
], "tessera", index=42)


def test_a_and_srv_records() -> None:
    assert ZONE.a["web.tessera"] == ("127.0.0.1", "127.0.0.2")
    assert ZONE.a["web.services.tessera"] == ("127.0.0.1", "127.0.0.2")
    assert ZONE.a["web-1.web.tessera"] == ("127.0.0.1",)
    assert [(r.port, r.target) for r in ZONE.srv["_http._tcp.web.tessera"]] == [
        (31001, "web-1.web.tessera"), (31002, "web-2.web.tessera")]
    assert [r.port for r in ZONE.srv["_web._tcp.tessera"]] == [31001, 31002]
    assert [r.port for r in ZONE.srv["_web._udp.tessera"]] == [31003]
    assert "db.tessera" in ZONE.a and not any(k.endswith("db.tessera") for k in ZONE.srv)  # no ports: no SRV


def ask(name: str, qtype: str) -> DNSRecord:
    return ZoneResolver(lambda: ZONE).resolve(DNSRecord.question(name, qtype), None)


def test_answers() -> None:
    a = ask("web.tessera.", "A")
    assert sorted(str(r.rdata) for r in a.rr) == ["127.0.0.1", "127.0.0.2"] and a.header.rcode == RCODE.NOERROR
    srv = ask("_http._tcp.web.tessera", "SRV")
    assert sorted((r.rdata.port, str(r.rdata.target)) for r in srv.rr) == [
        (31001, "web-1.web.tessera."), (31002, "web-2.web.tessera.")]
    assert sorted(str(r.rdata) for r in srv.ar) == ["127.0.0.1", "127.0.0.2"]  # the targets' addresses
    missing = ask("nope.tessera", "A")
    assert missing.header.rcode == RCODE.NXDOMAIN and QTYPE[missing.auth[0].rtype] == "SOA"
    assert ask("example.com", "A").header.rcode == RCODE.REFUSED  # not ours: nothing is forwarded
    assert ask("WEB.Tessera", "A").rr  # names are case-insensitive
    assert QTYPE[ask("tessera", "SOA").rr[0].rtype] == "SOA"
    empty = ask("web.tessera", "SRV")  # a name that exists without records of that type: NOERROR, no answer
    assert empty.header.rcode == RCODE.NOERROR and not empty.rr


def state_with(*tasks: operator_pb2.TaskView) -> operator_pb2.GetStateResponse:
    return operator_pb2.GetStateResponse(
        index=7, agents=[operator_pb2.AgentView(agent_id="a1", info=common_pb2.AgentInfo(hostname="127.0.0.9")),
                         operator_pb2.AgentView(agent_id="a2", info=common_pb2.AgentInfo(hostname="node2.local"))],
        frameworks=[operator_pb2.FrameworkView(framework_id="f1", info=common_pb2.FrameworkInfo(name="svc"))],
        tasks=list(tasks))


def view(task_id: str, state: int, agent: str = "a1", **task: object) -> operator_pb2.TaskView:
    info = common_pb2.TaskInfo(task_id=task_id, framework_id="f1", agent_id=agent, **task)  # type: ignore[arg-type]
    return operator_pb2.TaskView(task=info, state=state)  # type: ignore[arg-type]


def test_only_running_tasks_on_agents_with_an_address_are_published() -> None:
    ports = [common_pb2.Resource(name="ports", ranges=[common_pb2.Range(begin=31000, end=31001)])]
    state = state_with(
        view("web.1", common_pb2.TASK_RUNNING, name="web", resources=ports),
        view("web.2", common_pb2.TASK_STAGING, name="web"),
        view("web.3", common_pb2.TASK_FINISHED, name="web"),
        view("web.4", common_pb2.TASK_RUNNING, agent="a2", name="web"),  # its agent's name is not an address
        view("c.1", common_pb2.TASK_RUNNING, name="c", container=common_pb2.ContainerInfo(
            image="busybox", port_mappings=[common_pb2.PortMapping(container_port=80, host_port=31005,
                                                                   name="http")])))
    endpoints = {e.task_id: e for e in endpoints_from_state(state)}
    assert set(endpoints) == {"web.1", "c.1"}
    assert endpoints["web.1"] == Endpoint("web.1", "web", "svc", "127.0.0.9", (Port(31000), Port(31001)))
    assert endpoints["c.1"].ports == (Port(31005, "tcp", "http"),)  # a container publishes its host ports
