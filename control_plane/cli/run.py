"""`tessera run`: one command as a task, like mesos-execute — the command-line shell around
`tessera.sdk.run.run_task` (the SDK keeps the library; the CLI keeps the flags, the process exit and the
framework side of the task's trace, which goes to the leader's span store, and SIGTERM: handled as Ctrl-C,
so a `tessera run` stopped by its supervisor (systemd, a CI runner, `timeout`) kills its task and tears its
framework down instead of leaving the task running; it exits 143)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

import click

from tessera.control_plane.cli.shared import OneLineCommand
from tessera.control_plane.tls import ClientSecurity, TlsConfigError
from tessera.sdk.run import DEFAULT_MASTERS, BadInput, parse_options, run_task
from tessera.sdk.types import DEFAULT_ROLE


def _security() -> ClientSecurity:
    """`tessera --tls-dir D --token-file F run ...`: the group's flags (and TESSERA_TOKEN), else
    TESSERA_TLS_DIR / TESSERA_TOKEN(_FILE), else the framework files a `tessera up --secure` cluster
    started here recorded, else plaintext."""
    from tessera.control_plane.tls import cluster_security, read_token_file

    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    obj = root.obj if root is not None and root is not ctx else None
    try:
        if obj is not None and any(getattr(obj, name, None) for name in ("tls_dir", "token", "token_file")):
            return obj.security  # type: ignore[no-any-return]
        if any(os.environ.get(name) for name in ("TESSERA_TLS_DIR", "TESSERA_TOKEN", "TESSERA_TOKEN_FILE")):
            return ClientSecurity.from_env()
        recorded = cluster_security("framework")
        if recorded is not None:
            return ClientSecurity.from_options(recorded[0], read_token_file(recorded[1]))
        return ClientSecurity.insecure()
    except TlsConfigError as exc:
        click.echo(f"tessera run: {exc}", err=True)
        sys.exit(2)


def _root_masters() -> str | None:
    """`tessera --masters X run ...` (or `tessera run --masters X` through the shared flags): the group's
    flag, when this command is registered in one."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    if root is not None and root is not ctx:
        flag = getattr(root.obj, "masters_flag", None)
        value = flag or root.params.get("masters")
        return str(value) if value else None
    return None


class RunCommand(OneLineCommand):
    error_prefix = "tessera run"


@click.command("run", cls=RunCommand, context_settings={"allow_interspersed_args": False,
                                                        "help_option_names": ["-h", "--help"]})
@click.option("--masters", default=None, metavar="HOST:PORT,...",
              help=f"masters to subscribe with (default: $TESSERA_MASTERS, else ./.tessera/cluster.json, else "
                   f"{DEFAULT_MASTERS})")
@click.option("--cpus", default="0.1", metavar="N", show_default=True, help="CPUs for the task")
@click.option("--mem", default="32", metavar="N", show_default=True, help="memory for the task, in MiB")
@click.option("--name", default="tessera-run", show_default=True, help="framework and task name")
@click.option("--role", default=DEFAULT_ROLE, show_default=True, help="role to subscribe with")
@click.option("--env", multiple=True, metavar="KEY=VALUE", help="environment variable of the task (repeat)")
@click.option("--user", default="", metavar="USER",
              help="Unix user the task runs as (default: the agent's own); the ACL must grant it, e.g. nobody")
@click.option("--offer-timeout", default="60", metavar="N", show_default=True,
              help="seconds to wait for a fitting offer")
@click.option("--connect-timeout", default="15", metavar="N", show_default=True,
              help="seconds to wait for a master to answer")
@click.option("--image", default="", metavar="REFERENCE",
              help="run the command in a container of this OCI image, e.g. 127.0.0.1:5000/tools/busybox:1.35")
@click.option("--network", default="bridge", show_default=True, type=click.Choice(["bridge", "host", "none"]),
              help="a container's network")
@click.option("--publish", "-p", multiple=True, metavar="PORT[/udp]",
              help="publish a container port on a host port from the offer (repeat; bridge network)")
@click.option("--volume", "-v", multiple=True, metavar="HOST:CONTAINER[:ro]",
              help="mount a host path the agent allows into the container (repeat)")
@click.option("--uri", "uris", multiple=True, metavar="URL[,extract][,executable][,no-cache][,output=NAME]",
              help="fetch an http, https or file URL into the task's sandbox before it starts (repeat); "
                   "extract unpacks .tar(.gz|.bz2|.xz)/.tgz/.zip, executable makes it 0755")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run_command(masters: str | None, cpus: str, mem: str, name: str, role: str, env: tuple[str, ...], user: str,
                offer_timeout: str, connect_timeout: str, image: str, network: str, publish: tuple[str, ...],
                volume: tuple[str, ...], uris: tuple[str, ...], command: tuple[str, ...]) -> None:
    """Run one command as a task and exit with its exit code (like mesos-execute).

    One argument after -- is run with /bin/sh -c; several are an argv. With --image the task runs in a
    container of that image (with no command, the image's own)."""
    chosen = masters or _root_masters()  # None: found as every client finds them (tls.find_masters)
    try:
        options = parse_options(command=command, masters=chosen, cpus=cpus, mem=mem, name=name, role=role,
                                env=env, offer_timeout=offer_timeout, connect_timeout=connect_timeout, user=user,
                                image=image, network=network, publish=publish, volumes=volume, uris=uris)
    except BadInput as exc:
        click.echo(f"tessera run: {exc}", err=True)
        sys.exit(2)
    # the framework side of the task's trace: the SDK's client spans go to the leader, stored next to
    # its event log, so `tessera trace TASK` starts at the framework's Accept
    from tessera.control_plane.api.span_reporter import OperatorSpanStore
    from tessera.control_plane.tracing import setup_tracing

    security = _security()
    provider = setup_tracing("tessera-run", span_store=OperatorSpanStore(list(options.masters), security=security))
    terminated = []

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # SIGTERM as Ctrl-C: run_task kills the task and tears the framework down (exit 143, not 130)
        terminated.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm) if threading.current_thread() is threading.main_thread() else None
    try:
        code = run_task(options, security=security)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        provider.shutdown()
    sys.exit(128 + signal.SIGTERM if terminated and code == 130 else code)

