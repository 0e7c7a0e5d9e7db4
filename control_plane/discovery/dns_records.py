"""The DNS zone of the cluster's tasks, decided from what the masters' state says (pure, docs/dns.md).

Names follow Mesos-DNS, with the domain `tessera.` by default and the task's name (its `name`, else its id)
as the service name, made a DNS label (lower case, letters, digits and '-', at most 63 characters):

    <service>.<domain>                   A     the address of every ready task of that name
    <service>.<framework>.<domain>       A     the same, within one framework (names may repeat across them)
    <task>.<service>.<domain>            A     one task (its id as a label)
    _<service>._<proto>.<domain>         SRV   every published port of every ready task of that name
    _<port>._<proto>.<service>.<domain>  SRV   the ports named <port> (a container port mapping's `name`)

Only ready tasks are in the zone, at their agent's address (`endpoints.py`). SRV targets are the
`<task>.<service>.<domain>` names, whose A records come in the additional section.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tessera.control_plane.discovery.endpoints import Endpoint, dns_label

__all__ = ["DEFAULT_DOMAIN", "Srv", "Zone", "build_zone", "normalize_domain"]

DEFAULT_DOMAIN = "tessera"
_DOMAIN = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*\Z")


def normalize_domain(domain: str) -> str:
    """'Tessera.' -> 'tessera'; ValueError when it is not a domain name."""
    name = domain.strip().rstrip(".").lower()
    if not _DOMAIN.match(name) or len(name) > 200:
        raise ValueError(f"not a domain name: {domain!r}")
    return name


@dataclass(frozen=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True)
class Zone:
    """Answers by (lower-case) name without the final dot."""

    domain: str = DEFAULT_DOMAIN
    a: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    srv: Mapping[str, tuple[Srv, ...]] = field(default_factory=dict)
    index: int = 0  # the event index of the state this zone was built from

    def names(self) -> int:
        return len(self.a) + len(self.srv)


def build_zone(endpoints: Iterable[Endpoint], domain: str = DEFAULT_DOMAIN, index: int = 0) -> Zone:
    """The zone for `endpoints` (deterministic: sorted answers, no duplicates)."""
    a: dict[str, set[str]] = {}
    srv: dict[str, set[Srv]] = {}
    for e in endpoints:
        service, framework, task = dns_label(e.service), dns_label(e.framework), dns_label(e.task_id)
        target = f"{task}.{service}.{domain}"
        for name in (f"{service}.{domain}", f"{service}.{framework}.{domain}", target):
            a.setdefault(name, set()).add(e.address)
        for port in e.ports:
            proto = "udp" if port.protocol == "udp" else "tcp"
            record = Srv(0, 0, port.number, target)
            srv.setdefault(f"_{service}._{proto}.{domain}", set()).add(record)
            if port.name:
                srv.setdefault(f"_{dns_label(port.name)}._{proto}.{service}.{domain}", set()).add(record)
    return Zone(domain=domain, a={k: tuple(sorted(v)) for k, v in sorted(a.items())},
                srv={k: tuple(sorted(v, key=lambda r: (r.target, r.port))) for k, v in sorted(srv.items())},
                index=index)
