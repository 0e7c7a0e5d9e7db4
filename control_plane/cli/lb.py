"""`tessera lb`: an HAProxy in front of the services that ask for one (docs/load-balancing.md)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import click

from tessera.control_plane.cli.inspect import _Cluster, fail
from tessera.control_plane.logsetup import log_options, setup_logging


@click.command("lb")
@click.option("--bind", "bind_address", default="127.0.0.1", show_default=True,
              help="the address the service ports listen on")
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False), default=Path(".tessera/lb"),
              show_default=True, help="where haproxy.cfg and haproxy.log live")
@click.option("--haproxy", "binary", default="haproxy", show_default=True, help="the HAProxy binary")
@click.option("--interval", type=click.FloatRange(min=0.01, max=60), default=0.1, show_default=True,
              help="seconds between looks at the newest event index (a change renders the configuration)")
@log_options("the load balancer")
@click.pass_obj
def lb(obj: Any, bind_address: str, directory: Path, binary: str, interval: float, log_level: str,
       log_format: str) -> None:
    """Balance the ready tasks that carry the label tessera.lb.port=<service port>, with HAProxy.

    Each such service listens on BIND:<service port>; a change of the cluster renders the configuration,
    HAProxy checks it and reloads without dropping connections."""
    from tessera.control_plane.discovery.endpoints import Endpoint, Port, endpoints_from_state
    setup_logging(log_level, log_format, "tessera-lb")
    from tessera.control_plane.discovery.haproxy import Haproxy, HaproxyError
    from tessera.control_plane.discovery.haproxy_config import LB_PORT, render
    from tessera.control_plane.discovery.watch import StateWatcher

    haproxy = Haproxy(directory, binary)
    probe = [Endpoint("probe", "probe", "probe", "127.0.0.1", (Port(1),), ((LB_PORT, "1"),))]
    try:
        problem = haproxy.check(render(probe, bind_address).text)
    except HaproxyError as exc:
        fail(str(exc), 2)
    if problem is not None:
        fail(f"--bind: haproxy refuses it: {problem}", 2)
    shown: list[str] = []

    def on_state(state: Any) -> None:
        rendered = render(endpoints_from_state(state), bind_address, index=int(state.index))
        try:
            changed = haproxy.apply(rendered.text if rendered.backends else None)
        except HaproxyError as exc:
            click.echo(f"tessera lb: {exc}", err=True)
            return
        summary = [f"{b.service} {bind_address}:{b.service_port} ({len(b.servers)} servers)" for b in rendered.backends]
        if changed and summary != shown:
            shown[:] = summary
            click.echo("lb: " + ("; ".join(summary) or "no service asks for a load balancer yet"))
        for p in rendered.problems:
            click.echo(f"tessera lb: {p}", err=True)

    cluster = _Cluster(obj)
    watcher = StateWatcher(cluster.client, on_state, interval=interval, name="lb")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    watcher.start()
    click.echo(f"lb: haproxy configuration in {directory / 'haproxy.cfg'}")
    try:
        stop.wait()
    finally:
        watcher.stop()
        haproxy.stop()
        cluster.close()
