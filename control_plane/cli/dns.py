"""`tessera dns`: serve the cluster's tasks over DNS, Mesos-DNS style (docs/dns.md; control_plane/discovery/)."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import click

from tessera.control_plane.cli.inspect import _Cluster, fail
from tessera.control_plane.logsetup import log_options, setup_logging


@click.command("dns")
@click.option("--listen", default="127.0.0.1:0", show_default=True, metavar="HOST:PORT",
              help="where to answer DNS queries over UDP and TCP (port 0: a free one, printed)")
@click.option("--domain", default="tessera", show_default=True, help="the zone served: <service>.<domain>")
@click.option("--interval", type=click.FloatRange(min=0.01, max=60), default=0.1, show_default=True,
              help="seconds between looks at the newest event index (a change rebuilds the zone)")
@click.option("--refresh", type=click.FloatRange(min=1, max=3600), default=30.0, show_default=True,
              help="seconds between rebuilds when nothing changed")
@log_options("the DNS server")
@click.pass_obj
def dns(obj: Any, listen: str, domain: str, interval: float, refresh: float, log_level: str, log_format: str) -> None:
    """Serve A and SRV records of the running (and healthy) tasks, from the masters' state.

    Names: <service>.<domain> and <task>.<service>.<domain> (A), _<service>._tcp.<domain> and
    _<port-name>._tcp.<service>.<domain> (SRV), where <service> is the task's name. Names outside the
    domain are refused: nothing is forwarded."""
    from tessera.control_plane.discovery.dns_records import normalize_domain
    setup_logging(log_level, log_format, "tessera-dns")
    from tessera.control_plane.discovery.dns_server import DnsService, DnsZone
    from tessera.control_plane.discovery.watch import StateWatcher

    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) < 65536 or not host:
        fail(f"--listen: expected HOST:PORT, got {listen!r}", 2)
    try:
        zone_name = normalize_domain(domain)
    except ValueError as exc:
        fail(f"--domain: {exc}", 2)
    cluster = _Cluster(obj)
    zone = DnsZone(zone_name)
    watcher = StateWatcher(cluster.client, zone.update, interval=interval, refresh=refresh, name="dns")
    try:
        service = DnsService(zone, host.strip("[]"), int(port_text))
    except OSError as exc:
        fail(f"--listen: cannot bind {listen}: {exc.strerror or exc}", 2)
    watcher.start()
    service.start()
    click.echo(f"dns: {service.host}:{service.port} (zone {zone_name}.)", err=False)
    sys.stdout.flush()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if not watcher.ready.wait(cluster.timeout):
        click.echo(f"tessera dns: no cluster state yet ({watcher.last_error or 'no master answered'}); "
                   "answering NXDOMAIN until one does", err=True)
    stop.wait()
    service.stop()
    watcher.stop()
    cluster.close()
