"""`tessera dns`: serve the cluster's tasks over DNS (UDP and TCP) with dnslib, kept current from the masters.

`DnsZone` is what `watch.StateWatcher` feeds: each new state becomes a zone (`dns_records.build_zone` over
`endpoints.endpoints_from_state`), swapped in whole — an answer never mixes two states.

`ZoneResolver` answers from the current zone: A, SRV (with the targets' A records as additional records),
SOA and NS at the apex, NXDOMAIN (with the SOA) for other names in the domain, REFUSED for names outside
it — this server forwards nothing, so it never sends a query anywhere. TTLs are short (`TTL`, 5 s): the
zone changes as tasks come and go.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from dnslib import AAAA, NS, QTYPE, RCODE, RR, SOA, SRV, A, DNSRecord
from dnslib.server import BaseResolver, DNSServer

from tessera.control_plane.discovery.dns_records import Zone, build_zone
from tessera.control_plane.discovery.endpoints import endpoints_from_state
from tessera.v1 import operator_pb2

log = logging.getLogger("tessera.dns")

TTL = 5


class DnsZone:
    """The zone currently served; `update` (the watcher's callback) replaces it."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.zone = Zone(domain=domain)

    def update(self, state: operator_pb2.GetStateResponse) -> None:
        self.zone = build_zone(endpoints_from_state(state), self.domain, index=int(state.index))

    def __call__(self) -> Zone:
        return self.zone


class ZoneResolver(BaseResolver):  # type: ignore[misc]
    """Answers from `zone()` (see the module docstring)."""

    def __init__(self, zone: Callable[[], Zone]) -> None:
        self.zone = zone

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        zone = self.zone()
        reply = request.reply()
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        domain = zone.domain
        if qname != domain and not qname.endswith("." + domain):
            reply.header.rcode = RCODE.REFUSED  # not ours, and this server forwards nothing
            return reply
        soa = RR(domain + ".", QTYPE.SOA, ttl=TTL, rdata=SOA(f"ns.{domain}.", f"admin.{domain}.",
                                                              (zone.index % (2**32), 60, 60, 600, TTL)))
        found = False
        if qname == domain:
            found = True
            if qtype in ("SOA", "ANY"):
                reply.add_answer(soa)
            if qtype in ("NS", "ANY"):
                reply.add_answer(RR(domain + ".", QTYPE.NS, ttl=TTL, rdata=NS(f"ns.{domain}.")))
        addresses = zone.a.get(qname, ())
        if addresses:
            found = True
            for address in addresses:
                ip = ipaddress.ip_address(address)
                if ip.version == 4 and qtype in ("A", "ANY"):
                    reply.add_answer(RR(qname + ".", QTYPE.A, ttl=TTL, rdata=A(address)))
                elif ip.version == 6 and qtype in ("AAAA", "ANY"):
                    reply.add_answer(RR(qname + ".", QTYPE.AAAA, ttl=TTL, rdata=AAAA(address)))
        records = zone.srv.get(qname, ())
        if records:
            found = True
            if qtype in ("SRV", "ANY"):
                targets = []
                for r in records:
                    reply.add_answer(RR(qname + ".", QTYPE.SRV, ttl=TTL,
                                        rdata=SRV(r.priority, r.weight, r.port, r.target + ".")))
                    targets.append(r.target)
                for target in dict.fromkeys(targets):
                    for address in zone.a.get(target, ()):
                        if ipaddress.ip_address(address).version == 4:
                            reply.add_ar(RR(target + ".", QTYPE.A, ttl=TTL, rdata=A(address)))
        if not found:
            reply.header.rcode = RCODE.NXDOMAIN
        if not reply.rr:
            reply.add_auth(soa)
        return reply


class DnsService:
    """UDP and TCP DNS servers on one port (0: a free one), answering from `zone()`."""

    def __init__(self, zone: Callable[[], Zone], host: str = "127.0.0.1", port: int = 0) -> None:
        resolver = ZoneResolver(zone)
        quiet = _QuietLogger()
        for _ in range(20):
            self.udp = DNSServer(resolver, address=host, port=port, logger=quiet)
            chosen = self.udp.server.server_address[1]
            try:
                self.tcp = DNSServer(resolver, address=host, port=chosen, tcp=True, logger=quiet)
                break
            except OSError:
                self.udp.server.server_close()
                if port:
                    raise
        else:
            raise OSError(f"no port on {host} free for both UDP and TCP")
        self.host, self.port = host, int(chosen)

    def start(self) -> None:
        self.udp.start_thread()
        self.tcp.start_thread()

    def stop(self) -> None:
        for server in (self.udp, self.tcp):
            server.stop()
            server.server.server_close()


class _QuietLogger:
    """dnslib logs every query by default; this keeps errors only."""

    def log_recv(self, *args: Any) -> None: ...
    def log_send(self, *args: Any) -> None: ...
    def log_request(self, *args: Any) -> None: ...
    def log_reply(self, *args: Any) -> None: ...
    def log_truncated(self, *args: Any) -> None: ...
    def log_data(self, *args: Any) -> None: ...

    def log_error(self, handler: Any, e: Exception) -> None:
        log.warning("dns: %s", e)
