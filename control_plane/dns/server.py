"""`tessera dns`: serve the cluster's tasks over DNS (UDP and TCP) with dnslib, kept current from the masters.

`StateWatcher` follows the masters with the operator client (it follows the leader and survives a
failover): it asks for the newest event index every `interval` (0.1 s by default; one small call) and,
when it moved, reads the state (`GetState`) and builds the zone (`records.build_zone`), which it swaps in
whole — an answer never mixes two states. It also rebuilds every `refresh` seconds whatever happens. So a
change is served within one interval plus one state read (measured in tests/bench and docs/dns.md).

`ZoneResolver` answers from the current zone: A, SRV (with the targets' A records as additional records),
SOA and NS at the apex, NXDOMAIN (with the SOA) for other names in the domain, REFUSED for names outside
it — this server forwards nothing, so it never sends a query anywhere. TTLs are short (`TTL`, 5 s): the
zone changes as tasks come and go.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from dnslib import AAAA, NS, QTYPE, RCODE, RR, SOA, SRV, A, DNSRecord
from dnslib.server import BaseResolver, DNSServer

from tessera.control_plane.dns.records import DEFAULT_DOMAIN, Endpoint, Port, Zone, build_zone
from tessera.v1 import common_pb2, operator_pb2

log = logging.getLogger("tessera.dns")

TTL = 5
DEFAULT_INTERVAL = 0.1
DEFAULT_REFRESH = 30.0


def agent_address(info: common_pb2.AgentInfo) -> str | None:
    """Where an agent's tasks publish their ports: its hostname when that is an IP address, else the host
    of its file service address when that is one (agents on one machine: 127.0.0.1)."""
    candidates = [info.hostname]
    files = getattr(info, "files_address", "")
    if files:
        candidates.append(files.rsplit(":", 1)[0].strip("[]"))
    for candidate in candidates:
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return None


def _healthy(status: common_pb2.TaskStatus, has_check: bool) -> bool:
    """A task with a health check counts once its latest status says healthy; one without, always."""
    return not has_check or bool(status.HasField("healthy") and status.healthy)


def endpoints_from_state(state: operator_pb2.GetStateResponse,
                         resolve: Callable[[common_pb2.AgentInfo], str | None] = agent_address) -> list[Endpoint]:
    """The ready tasks of a state (records.py says what ready means), with their agent's address and
    published ports."""
    agents = {a.agent_id: a.info for a in state.agents}
    frameworks = {f.framework_id: f.info.name or f.framework_id for f in state.frameworks}
    out: list[Endpoint] = []
    for view in state.tasks:
        task = view.task
        if view.state != common_pb2.TASK_RUNNING:
            continue
        has_check = "health_check" in task.DESCRIPTOR.fields_by_name and task.HasField("health_check")
        if not _healthy(view.last_status, has_check):
            continue
        info = agents.get(task.agent_id)
        address = resolve(info) if info is not None else None
        if address is None:
            continue
        ports: list[Port] = []
        if task.HasField("container") and task.container.port_mappings:
            ports = [Port(m.host_port, m.protocol or "tcp", m.name) for m in task.container.port_mappings]
        else:
            ports = [Port(p, "tcp") for r in task.resources if r.name == "ports"
                     for span in r.ranges for p in range(span.begin, min(span.end, span.begin + 64) + 1)]
        out.append(Endpoint(task_id=task.task_id, service=task.name or task.task_id,
                            framework=frameworks.get(task.framework_id, task.framework_id), address=address,
                            ports=tuple(ports)))
    return out


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


class StateWatcher:
    """Keeps `zone` current from the masters (see the module docstring)."""

    def __init__(self, client: Any, domain: str = DEFAULT_DOMAIN, interval: float = DEFAULT_INTERVAL,
                 refresh: float = DEFAULT_REFRESH, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.domain = domain
        self.interval = interval
        self.refresh = refresh
        self.zone = Zone(domain=domain)
        self.updated_at = 0.0  # monotonic time of the last rebuild
        self.rebuilds = 0
        self.last_error = ""
        self._seen = -1
        self._next_refresh = 0.0
        self._monotonic = monotonic
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()  # set after the first zone was built

    def poll(self) -> bool:
        """One round: rebuild when the log moved or the refresh is due; True when it rebuilt."""
        head = self.client.call(lambda s: s.ListEvents, operator_pb2.ListEventsRequest(limit=1, descending=True))
        now = self._monotonic()
        if head.last_index == self._seen and now < self._next_refresh:
            return False
        state = self.client.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=False))
        self.zone = build_zone(endpoints_from_state(state), self.domain, index=int(state.index))
        self._seen = max(int(head.last_index), int(state.index))
        self._next_refresh = now + self.refresh
        self.updated_at = now
        self.rebuilds += 1
        self.ready.set()
        return True

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
                self.last_error = ""
            except Exception as exc:  # noqa: BLE001 - the masters may be away; keep serving the last zone
                message = str(getattr(exc, "details", lambda: "")() or exc)
                if message != self.last_error:
                    log.warning("cannot read the cluster state (serving the last zone): %s", message)
                self.last_error = message
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="dns-state-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


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
