"""The `tessera` command: run a master, and operate a cluster over the Operator API.

Every command that talks to a cluster takes `--masters HOST:PORT,...` (or TESSERA_MASTERS), follows the
leader on its own, prints a table for people or JSON with `--json`, exits non-zero on failure and says in
one line why (no traceback). A secured cluster wants `--tls-dir DIR` (ca.pem, cert.pem, key.pem of an
operator certificate) and a bearer token (`--token-file FILE`, or TESSERA_TLS_DIR / TESSERA_TOKEN_FILE /
TESSERA_TOKEN).

Secrets never come from the command line, which every local user can read in /proc/PID/cmdline: the
token and the Raft password come from a file or the environment (readable by their owner only), and
the old `--token` / `--raft-password` flags are refused with one line naming the alternatives.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
import grpc
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.table import Table

DEFAULT_MASTERS = "127.0.0.1:5050"
console = Console(width=None if sys.stdout.isatty() else 200)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"tessera: {message}", err=True)
    sys.exit(code)


def refuse_secret_flag(alternatives: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    """A callback for a removed flag that took a secret: one line naming where the secret goes now."""

    def refuse(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            fail(f"{param.opts[0]} is not accepted: a secret on the command line is readable by every local "
                 f"user (/proc/PID/cmdline); use {alternatives}", 2)

    return refuse


def read_secret_file(path: Path, flag: str) -> str:
    """The secret in `path` (surrounding whitespace removed); one line and exit 2 if unusable."""
    try:
        secret = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{flag}: cannot read {path} ({getattr(exc, 'strerror', None) or exc})", 2)
    if not secret:
        fail(f"{flag}: {path} is empty", 2)
    return secret


def parse_masters(value: str) -> list[str]:
    """`tessera.control_plane.wire.parse_masters`; a bad list is one line and exit 2."""
    from tessera.control_plane import wire

    try:
        return list(wire.parse_masters(value))
    except ValueError as exc:
        fail(f"--masters: {exc}", 2)


class Ctx:
    def __init__(self, masters: str, as_json: bool, timeout: float, tls_dir: str | None = None,
                 token: str | None = None, token_file: str | None = None) -> None:
        self.masters_text = masters
        self.as_json = as_json
        self.timeout = timeout
        self.tls_dir, self.token, self.token_file = tls_dir, token, token_file
        self._client: Any = None
        self._security: Any = None

    @property
    def security(self) -> Any:
        """The ClientSecurity from --tls-dir and --token-file / TESSERA_TOKEN (one line and exit 2 if unusable)."""
        if self._security is None:
            from tessera.control_plane.tls import (
                ClientSecurity,
                TlsConfigError,
                cluster_security,
                read_token_file,
            )

            tls_dir, token_file = self.tls_dir, self.token_file
            if not (tls_dir or self.token or token_file):
                # a cluster started here with `tessera up --secure` names the operator's files
                tls_dir, token_file = cluster_security("operator") or (None, None)
            try:
                token = self.token or (read_token_file(token_file) if token_file else None)
                self._security = ClientSecurity.from_options(tls_dir, token)
            except TlsConfigError as exc:
                fail(str(exc), 2)
        return self._security

    @property
    def client(self) -> Any:
        if self._client is None:
            from tessera.control_plane.api.client import MasterClient

            self._client = MasterClient(parse_masters(self.masters_text), timeout=self.timeout,
                                        security=self.security)
        return self._client

    def call(self, method: Callable[[Any], Any], request: Any, **kw: Any) -> Any:
        from tessera.control_plane.api.client import NoMasterAvailable

        try:
            return self.client.call(method, request, **kw)
        except NoMasterAvailable as exc:
            plaintext = self.security.credentials is None
            fail(f"{exc}{'; a secured cluster needs --tls-dir (or TESSERA_TLS_DIR)' if plaintext else ''}")
        except grpc.RpcError as err:
            fail(f"{err.code().name}: {err.details()}")

    def emit(self, data: Any) -> None:
        click.echo(json.dumps(data, indent=2, sort_keys=True))


def to_dict(msg: Any) -> dict[str, Any]:
    return MessageToDict(msg, preserving_proto_field_name=True)


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "TESSERA"})
@click.option("--masters", default=DEFAULT_MASTERS, show_default=True, envvar="TESSERA_MASTERS",
              help="Comma-separated gRPC addresses of the masters.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the cluster.")
@click.option("--tls-dir", envvar="TESSERA_TLS_DIR", default=None, metavar="DIR",
              help="mTLS: DIR holds ca.pem, cert.pem and key.pem (or TESSERA_TLS_DIR). Plaintext without it.")
@click.option("--token-file", envvar="TESSERA_TOKEN_FILE", default=None, metavar="FILE",
              help="Read the bearer token of your principal from FILE (or TESSERA_TOKEN_FILE; or the token "
                   "itself in TESSERA_TOKEN). Never on the command line.")
@click.option("--token", hidden=True, expose_value=False, is_eager=True, allow_from_autoenv=False,
              callback=refuse_secret_flag("--token-file FILE, TESSERA_TOKEN_FILE or TESSERA_TOKEN"))
@click.pass_context
def cli(ctx: click.Context, masters: str, as_json: bool, timeout: float, tls_dir: str | None,
        token_file: str | None) -> None:
    """Tessera: a datacenter kernel with a Raft-replicated, event-sourced master."""
    ctx.obj = Ctx(masters, as_json, timeout, tls_dir, os.environ.get("TESSERA_TOKEN") or None, token_file)


# ---- master ------------------------------------------------------------------------------------
@cli.command()
@click.option("--name", required=True, help="This master's name (m1, m2, ...).")
@click.option("--raft", "raft_address", required=True, help="HOST:PORT of this master's Raft port.")
@click.option("--grpc", "grpc_address", required=True, help="HOST:PORT this master serves gRPC on.")
@click.option("--peers", default="", help="Comma-separated Raft addresses of the OTHER masters.")
@click.option("--raft-bind", "raft_bind", default=None,
              help="HOST:PORT to listen on for Raft when it differs from --raft, the address peers dial "
                   "(NAT, a proxy in front of the port). Default: --raft.")
@click.option("--data-dir", type=click.Path(path_type=Path), required=True, help="Journal, dump and events.db.")
@click.option("--raft-password-file", type=click.Path(path_type=Path), envvar="TESSERA_RAFT_PASSWORD_FILE",
              default=None, metavar="FILE",
              help="Read the password that encrypts the Raft port from FILE (or TESSERA_RAFT_PASSWORD_FILE; or "
                   "the password itself in TESSERA_RAFT_PASSWORD). Never on the command line. Required "
                   "unless --insecure-dev.")
@click.option("--raft-password", hidden=True, expose_value=False, is_eager=True, allow_from_autoenv=False,
              callback=refuse_secret_flag("--raft-password-file FILE, TESSERA_RAFT_PASSWORD_FILE or "
                                          "TESSERA_RAFT_PASSWORD"))
@click.option("--agent-timeout", default=10.0, show_default=True,
              help="Seconds without a heartbeat before an agent is marked unreachable.")
@click.option("--agent-heartbeat-interval", default=1.0, show_default=True,
              help="Heartbeat interval agents are told to use.")
@click.option("--reregistration-timeout", default=10.0, show_default=True,
              help="Grace a new leader gives every agent to reconnect before timing it.")
@click.option("--allocation-interval", default=1.0, show_default=True, help="Seconds between allocation rounds.")
@click.option("--offer-timeout", default=60.0, show_default=True,
              help="Seconds before an unused offer is rescinded (0 = never).")
@click.option("--framework-reconnect-timeout", default=5.0, show_default=True,
              help="Grace a new leader gives frameworks to resubscribe before disconnecting them.")
@click.option("--grpc-workers", default=256, show_default=True,
              help="gRPC threads; every agent, framework and event watcher holds one.")
@click.option("--event-retention", type=click.IntRange(min=0), default=0, show_default=True,
              help="Keep at least the last N events in events.db; older ones are pruned in the background "
                   "(0 = keep all).")
@click.option("--metrics", "metrics_address", default=None,
              help="HOST:PORT to serve Prometheus /metrics on (off when not given).")
@click.option("--tls-dir", "master_tls_dir", envvar="TESSERA_MASTER_TLS_DIR", default=None,
              type=click.Path(path_type=Path), metavar="DIR",
              help="mTLS: DIR holds ca.pem, cert.pem, key.pem of a master certificate (or TESSERA_MASTER_TLS_DIR).")
@click.option("--acl", "acl_path", envvar="TESSERA_ACL", default=None, type=click.Path(path_type=Path),
              help="TOML file of principals: token digests, roles, users, operator actions (or TESSERA_ACL).")
@click.option("--limit", "limits", multiple=True, metavar="NAME=VALUE",
              help="A per-principal or per-peer limit (repeat): frameworks_per_principal (100), tasks_per_principal "
                   "(10000), requests_per_second (1000), request_burst (2000), streams_per_peer and "
                   "streams_per_principal (0: half of what --grpc-workers leaves for streams), "
                   "agent_register_timeout (10 s).")
@click.option("--insecure-dev", is_flag=True, envvar="TESSERA_INSECURE_DEV",
              help="Start without mTLS, ACL or Raft password: a local development cluster only.")
@click.option("--log-level", default="INFO", show_default=True)
def master(name: str, raft_address: str, grpc_address: str, peers: str, raft_bind: str | None, data_dir: Path,
           raft_password_file: Path | None, agent_timeout: float, agent_heartbeat_interval: float,
           reregistration_timeout: float, allocation_interval: float, offer_timeout: float,
           framework_reconnect_timeout: float, grpc_workers: int, event_retention: int,
           metrics_address: str | None, master_tls_dir: Path | None, acl_path: Path | None,
           limits: tuple[str, ...], insecure_dev: bool, log_level: str) -> None:
    """Run one master of a Raft quorum.

    Refuses to start without --tls-dir, --acl and a Raft password (--raft-password-file or
    TESSERA_RAFT_PASSWORD) unless --insecure-dev is given.

    \b
    The Raft port must be reachable by the other masters only (a firewall rule):
    it authenticates peers by the password alone. pysyncobj derives the port's
    encryption key from the password with PBKDF2 and a fixed salt, the same in
    every installation, so the password must be long and random (tessera certs
    init writes one; or: python -c "import secrets; print(secrets.token_urlsafe(32))").
    Connections that do not complete the password handshake within a few seconds
    are closed, as are frames larger than a master ever sends."""
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    from tessera.control_plane.runtime.leader import LeaderSettings
    from tessera.control_plane.runtime.process import MasterConfig, run_master

    for flag, value in (("--agent-timeout", agent_timeout), ("--agent-heartbeat-interval", agent_heartbeat_interval),
                        ("--allocation-interval", allocation_interval)):
        if not value > 0:
            fail(f"{flag}: must be a positive number of seconds, got {value}", 2)
    for flag, value in (("--offer-timeout", offer_timeout), ("--reregistration-timeout", reregistration_timeout),
                        ("--framework-reconnect-timeout", framework_reconnect_timeout)):
        if not value >= 0:
            fail(f"{flag}: must not be negative, got {value}", 2)
    if grpc_workers < 8:
        fail(f"--grpc-workers: at least 8, got {grpc_workers}", 2)
    from tessera.control_plane.core.errors import InvalidRequest
    from tessera.control_plane.core.limits import parse_limits

    try:
        master_limits = parse_limits(limits)
    except InvalidRequest as exc:
        fail(exc.message, 2)
    if raft_password_file is not None:
        raft_password: str | None = read_secret_file(raft_password_file, "--raft-password-file")
    else:
        raft_password = os.environ.get("TESSERA_RAFT_PASSWORD") or None
    config = MasterConfig(
        name=name, raft_address=raft_address, grpc_address=grpc_address,
        peers=tuple(p.strip() for p in peers.split(",") if p.strip()), data_dir=data_dir,
        raft_password=raft_password or None, raft_bind=raft_bind or None,
        leader=LeaderSettings(
            agent_heartbeat_interval=agent_heartbeat_interval, agent_timeout=agent_timeout,
            reregistration_timeout=reregistration_timeout, allocation_interval=allocation_interval,
            offer_timeout=offer_timeout or None, framework_reconnect_timeout=framework_reconnect_timeout,
        ),
        grpc_workers=grpc_workers,
        metrics_address=metrics_address,
        event_retention=event_retention,
        tls_dir=master_tls_dir, acl_path=acl_path, insecure_dev=insecure_dev, limits=master_limits,
    )
    sys.exit(run_master(config))


# ---- certs -------------------------------------------------------------------------------------
@cli.group()
def certs() -> None:
    """Certificates and tokens for a cluster."""


@certs.command("init")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--host", "hosts", multiple=True, metavar="NAME|IP",
              help="Another name or address the masters' certificate is valid for (repeat).")
@click.option("--days", default=365, show_default=True, type=click.IntRange(min=1), help="Validity of every certificate.")
def certs_init(directory: Path, hosts: tuple[str, ...], days: int) -> None:
    """Create a local CA, a TLS directory per kind of peer, dev tokens, an ACL and a Raft password under
    DIRECTORY."""
    from tessera.control_plane.certs import RAFT_PASSWORD_FILE, init_dev_pki

    try:
        tokens = init_dev_pki(directory, master_hosts=hosts, days=days)
    except (FileExistsError, OSError, ValueError) as exc:
        fail(str(exc), 2)
    d = directory
    click.echo(f"CA {d / 'ca.pem'} (its key {d / 'ca-key.pem'}: keep it off the cluster's machines)")
    click.echo(f"TLS directories: {', '.join(str(d / k) for k in ('master', 'agent', 'framework', 'operator'))}")
    click.echo(f"ACL {d / 'acl.toml'}; tokens of {', '.join(sorted(tokens))} in {d / 'tokens'} "
               "(framework: role 'default', tasks as 'nobody')")
    click.echo(f"Raft password {d / RAFT_PASSWORD_FILE} (long and random; the same file on every master)")
    click.echo(f"  TESSERA_RAFT_PASSWORD_FILE={d / RAFT_PASSWORD_FILE} tessera master ... "
               f"--tls-dir {d / 'master'} --acl {d / 'acl.toml'}")
    click.echo(f"  tessera agent ... --tls-dir {d / 'agent'}   (one agent; give each agent its own: "
               f"tessera certs agent NAME --pki {d})")
    click.echo(f"  tessera --tls-dir {d / 'operator'} --token-file {d / 'tokens' / 'operator.token'} status")


@certs.command("agent")
@click.argument("name")
@click.option("--pki", "pki", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="The directory `tessera certs init` wrote (its ca.pem and ca-key.pem sign the certificate).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The agent's TLS directory to write  [default: PKI/agents/NAME]")
@click.option("--days", default=365, show_default=True, type=click.IntRange(min=1), help="Validity of the certificate.")
def certs_agent(name: str, pki: Path, out: Path | None, days: int) -> None:
    """Issue agent NAME its own certificate (urn:tessera:agent:NAME): the master binds the agent's id to
    it, so no other agent's certificate can re-register as that agent."""
    from tessera.control_plane.certs import issue_agent

    try:
        directory = issue_agent(pki, name, out, days=days)
    except (FileExistsError, FileNotFoundError, OSError, ValueError) as exc:
        fail(str(exc), 2)
    click.echo(f"agent {name}: {directory}")
    click.echo(f"  tessera agent ... --tls-dir {directory}")


@certs.command("token")
@click.argument("principal")
@click.option("--roles", default="", help="Comma-separated roles it may subscribe under ('*' = any).")
@click.option("--users", default="", help="Comma-separated users its tasks may run as; '' (or an empty item, "
                                          "'nobody,') is the agent's own user.")
@click.option("--actions", default="", help="Comma-separated: read, read_all, drain, quorum, weights, quota, teardown.")
def certs_token(principal: str, roles: str, users: str, actions: str) -> None:
    """Make a new token for PRINCIPAL; print it and the ACL table (with its digest) to add to acl.toml."""
    import secrets

    from tessera.control_plane.core.acl import parse_acl, token_digest
    from tessera.control_plane.core.errors import InvalidRequest

    def items(text: str) -> list[str]:
        return [x.strip() for x in text.split(",") if x.strip()]

    token = secrets.token_urlsafe(32)
    named_users = [] if not users else [x.strip().strip("'\"") for x in users.split(",")]
    grant = {"token_sha256": token_digest(token), "roles": items(roles),
             "users": list(dict.fromkeys(named_users)), "actions": items(actions)}
    try:
        parse_acl({"principals": {principal: grant}})  # the same checks the master applies
    except InvalidRequest as exc:
        fail(str(exc), 2)
    click.echo(f"token (give it to {principal}; it is not stored): {token}")
    click.echo(f"\n[principals.{principal}]")
    for key in ("token_sha256", "roles", "users", "actions"):
        click.echo(f"{key} = {json.dumps(grant[key])}")


# ---- quorum ------------------------------------------------------------------------------------
@cli.group()
def quorum() -> None:
    """Inspect and change the quorum of masters."""


@quorum.command("status")
@pass_ctx
def quorum_status(c: Ctx) -> None:
    """Leader, term, commit index and each member's applied index."""
    from tessera.v1 import operator_pb2

    resp = c.call(lambda s: s.GetQuorum, operator_pb2.GetQuorumRequest())
    if c.as_json:
        c.emit(to_dict(resp))
        return
    console.print(f"leader [bold]{resp.leader_grpc or '?'}[/] (raft {resp.leader or '?'})  term {resp.term}  "
                  f"commit {resp.commit_index}  quorum {'yes' if resp.has_quorum else 'NO'}")
    table = Table("name", "raft", "grpc", "role", "applied", "events", "match", "reachable")
    for m in resp.members:
        table.add_row(m.name or "?", m.raft_address, m.grpc_address or "?",
                      "leader" if m.is_leader else "follower", str(m.applied_index), str(m.event_index),
                      str(m.match_index), "yes" if m.reachable else f"no {m.error}")
    console.print(table)


@quorum.command("add")
@click.argument("raft_address")
@pass_ctx
def quorum_add(c: Ctx, raft_address: str) -> None:
    """Add a master (then start it with --peers listing every other member)."""
    from tessera.v1 import operator_pb2

    c.call(lambda s: s.AddMaster, operator_pb2.AddMasterRequest(raft_address=raft_address), timeout=30)
    click.echo(f"added {raft_address} to the quorum; start it with --peers naming every other member")


@quorum.command("remove")
@click.argument("raft_address")
@pass_ctx
def quorum_remove(c: Ctx, raft_address: str) -> None:
    """Remove a master from the quorum."""
    from tessera.v1 import operator_pb2

    c.call(lambda s: s.RemoveMaster, operator_pb2.RemoveMasterRequest(raft_address=raft_address), timeout=30)
    click.echo(f"removed {raft_address} from the quorum")


@quorum.command("transfer")
@click.argument("raft_address", required=False, default="")
@pass_ctx
def quorum_transfer(c: Ctx, raft_address: str) -> None:
    """Hand leadership to RAFT_ADDRESS (or any caught-up member)."""
    from tessera.v1 import operator_pb2

    c.call(lambda s: s.TransferLeadership,
           operator_pb2.TransferLeadershipRequest(raft_address=raft_address), timeout=30)
    click.echo(f"leadership transfer to {raft_address or 'a caught-up member'} requested")


# ---- policy ------------------------------------------------------------------------------------
@cli.group()
def weights() -> None:
    """Role weights for weighted DRF."""


@weights.command("set")
@click.argument("role")
@click.argument("weight", type=float)
@click.option("--request-id", default="", help="Idempotency key (retries with the same id apply once).")
@pass_ctx
def weights_set(c: Ctx, role: str, weight: float, request_id: str) -> None:
    from tessera.v1 import operator_pb2

    resp = c.call(lambda s: s.SetWeight,
                  operator_pb2.SetWeightRequest(role=role, weight=weight, request_id=request_id))
    click.echo(f"role {role}: weight {weight:g} (event {resp.index})")


@cli.group()
def quota() -> None:
    """Role quotas: a guarantee served first, a limit never exceeded."""


def _resources(text: str, flag: str) -> list[Any]:
    from tessera.control_plane.codec import resources_to_proto
    from tessera.control_plane.core.errors import InvalidRequest
    from tessera.control_plane.core.resources import Resources
    from tessera.v1 import operator_pb2

    try:
        res = Resources.parse(text)
    except InvalidRequest as exc:
        fail(f"{flag}: {exc}", 2)
    holder = operator_pb2.SetQuotaRequest()
    resources_to_proto(res, holder.guarantee)
    return list(holder.guarantee)


@quota.command("set")
@click.argument("role")
@click.option("--guarantee", default="", help="e.g. 'cpus:4;mem:4096'")
@click.option("--limit", default="", help="e.g. 'cpus:8;mem:8192'")
@click.option("--request-id", default="")
@pass_ctx
def quota_set(c: Ctx, role: str, guarantee: str, limit: str, request_id: str) -> None:
    from tessera.v1 import operator_pb2

    req = operator_pb2.SetQuotaRequest(role=role, request_id=request_id)
    req.guarantee.extend(_resources(guarantee, "--guarantee"))
    req.limit.extend(_resources(limit, "--limit"))
    resp = c.call(lambda s: s.SetQuota, req)
    click.echo(f"role {role}: quota set (event {resp.index})")


# ---- state and events --------------------------------------------------------------------------
def _state(c: Ctx) -> Any:
    from tessera.v1 import operator_pb2

    return c.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=False))


def _enum_name(enum_type: Any, value: int) -> str:
    return str(enum_type.Name(value)) if value in enum_type.values() else str(value)


@cli.command()
@pass_ctx
def status(c: Ctx) -> None:
    """The cluster at a glance: quorum, leader, agents, frameworks, tasks, resources used/total."""
    from collections import Counter

    from tessera.control_plane.codec import resources_from_proto
    from tessera.control_plane.core.resources import EMPTY
    from tessera.v1 import common_pb2, operator_pb2

    q = c.call(lambda s: s.GetQuorum, operator_pb2.GetQuorumRequest())
    st = c.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True))
    total = used = EMPTY
    for a in st.agents:
        if a.state in (common_pb2.AGENT_ACTIVE, common_pb2.AGENT_DRAINING):
            total = total + resources_from_proto(a.info.resources).flatten()
            used = used + resources_from_proto(a.used).flatten()
    agents_by = Counter(_enum_name(common_pb2.AgentState, a.state).removeprefix("AGENT_") for a in st.agents)
    frameworks_by = Counter(_enum_name(common_pb2.FrameworkState, f.state).removeprefix("FRAMEWORK_")
                            for f in st.frameworks)
    tasks_by = Counter(_enum_name(common_pb2.TaskState, t.state).removeprefix("TASK_") for t in st.tasks)
    resources = {k: {"used": used.scalar(k), "total": total.scalar(k)} for k in ("cpus", "mem", "disk", "gpus")
                 if total.scalar(k)}
    if c.as_json:
        c.emit({"leader": q.leader_grpc, "leader_raft": q.leader, "term": q.term, "commit_index": q.commit_index,
                "has_quorum": q.has_quorum, "masters": len(q.members),
                "masters_reachable": sum(1 for m in q.members if m.reachable), "event_index": st.index,
                "agents": dict(agents_by), "frameworks": dict(frameworks_by), "tasks": dict(tasks_by),
                "resources": resources})
        return
    reachable = sum(1 for m in q.members if m.reachable)
    console.print(f"quorum: {reachable}/{len(q.members)} masters reachable, leader [bold]{q.leader_grpc or '?'}[/] "
                  f"term {q.term}, commit {q.commit_index}, event index {st.index}"
                  f"{'' if q.has_quorum else '  [red]NO QUORUM[/]'}")

    def counts(counter: Counter[str]) -> str:
        return ", ".join(f"{n} {k.lower()}" for k, n in sorted(counter.items())) or "none"

    console.print(f"agents: {counts(agents_by)}")
    console.print(f"frameworks: {counts(frameworks_by)}")
    console.print(f"tasks: {counts(tasks_by)}")
    for kind, v in resources.items():
        unit = " MiB" if kind in ("mem", "disk") else ""
        pct = 100 * v["used"] / v["total"] if v["total"] else 0.0
        console.print(f"{kind}: {v['used']:g}{unit} used of {v['total']:g}{unit} ({pct:.0f} %)")


@cli.command()
@pass_ctx
def agents(c: Ctx) -> None:
    """Agents: state, resources used/total, isolator, container support, tasks."""
    from tessera.v1 import common_pb2

    resp = _state(c)
    if c.as_json:
        c.emit([to_dict(a) for a in resp.agents])
        return
    table = Table("agent", "host", "state", "connected", "isolator", "containers", "used", "total", "tasks",
                  "attributes")
    for a in resp.agents:
        table.add_row(a.agent_id, a.info.hostname, _enum_name(common_pb2.AgentState, a.state).removeprefix("AGENT_"),
                      "yes" if a.connected else "no", a.info.isolator or "?", _containers_text(a.info.containers),
                      _res_text(a.used), _res_text(a.info.resources), str(a.task_count),
                      ";".join(f"{x.key}:{x.value}" for x in a.info.attributes))
    console.print(table)


def _containers_text(support: Any) -> str:
    """'runc 1.1.5, cni bridge tessera0 10.213.64.0/24', or 'no (why)'."""
    if not support.runtime:
        return f"no ({support.unavailable})" if support.unavailable else "no"
    network = support.network
    if not network:
        network = f"host/none networks only ({support.unavailable})" if support.unavailable else "host/none networks only"
    return ", ".join(part for part in (support.runtime, network) if part)


@cli.command()
@pass_ctx
def frameworks(c: Ctx) -> None:
    """Frameworks: state, roles, resources used."""
    from tessera.v1 import common_pb2

    resp = _state(c)
    if c.as_json:
        c.emit([to_dict(f) for f in resp.frameworks])
        return
    table = Table("framework", "name", "state", "roles", "used", "offered", "suppressed")
    for f in resp.frameworks:
        table.add_row(f.framework_id, f.info.name,
                      _enum_name(common_pb2.FrameworkState, f.state).removeprefix("FRAMEWORK_"),
                      ",".join(f.info.roles), _res_text(f.used), _res_text(f.offered), ",".join(f.suppressed_roles))
    console.print(table)


@cli.command()
@click.argument("task", required=False, default="", metavar="[[FRAMEWORK_ID/]TASK_ID]")
@click.option("--state", "state_filter", default="", help="Only tasks in this state (RUNNING, TASK_FAILED...).")
@click.option("--framework", default="", help="Only tasks of this framework id.")
@pass_ctx
def tasks(c: Ctx, task: str, state_filter: str, framework: str) -> None:
    """Tasks with their state, agent and latest status; or the one task named FRAMEWORK_ID/TASK_ID (task ids
    are scoped per framework), or by a bare TASK_ID that one framework's live tasks use."""
    from tessera.control_plane.eventlog.errors import AmbiguousTask
    from tessera.control_plane.eventlog.timeline import split_task_ref
    from tessera.v1 import common_pb2

    wanted = state_filter.upper()
    if wanted and not wanted.startswith("TASK_"):
        wanted = "TASK_" + wanted
    if wanted and wanted not in common_pb2.TaskState.keys():
        fail(f"--state: unknown task state {state_filter!r}", 2)
    resp = _state(c)
    named_framework, task_id = split_task_ref(task) if task else ("", "")
    if task_id:
        named = sorted({t.task.framework_id for t in resp.tasks if t.task.task_id == task_id
                        and (not named_framework or t.task.framework_id == named_framework)})
        if not named:
            fail(f"no live task {task}", 1)
        if len(named) > 1 and not framework:
            fail(str(AmbiguousTask(task_id, named)), 1)
        named_framework = named_framework or framework or named[0]
    rows = [t for t in resp.tasks
            if (not wanted or common_pb2.TaskState.Name(t.state) == wanted)
            and (not framework or t.task.framework_id == framework)
            and (not task_id or (t.task.task_id, t.task.framework_id) == (task_id, named_framework))]
    if c.as_json:
        c.emit([to_dict(t) for t in rows])
        return
    table = Table("task", "framework", "agent", "state", "resources", "message", "cpu s", "rss MiB")
    for t in rows:
        table.add_row(t.task.task_id, t.task.framework_id, t.task.agent_id,
                      _enum_name(common_pb2.TaskState, t.state).removeprefix("TASK_"), _res_text(t.task.resources),
                      t.last_status.message[:60], f"{t.usage.cpu_seconds:.2f}" if t.HasField("usage") else "",
                      f"{t.usage.rss_bytes / 2**20:.1f}" if t.HasField("usage") else "")
    console.print(table)


def _res_text(items: Any) -> str:
    from tessera.control_plane.codec import resources_from_proto

    return str(resources_from_proto(items)) if len(items) else "-"


def _agent_group() -> click.Group:
    """`tessera agent --data-dir D ...` runs an agent; `tessera agent drain AGENT_ID` drains one."""
    import copy

    from tessera.agent.cli import agent_main

    params = []
    for param in agent_main.params:
        optional = copy.copy(param)
        optional.required = False  # --data-dir is required to run an agent, not to drain one
        params.append(optional)

    @click.group("agent", invoke_without_command=True, params=params, help=agent_main.help)
    @click.pass_context
    def agent(ctx: click.Context, **kwargs: Any) -> None:
        if ctx.invoked_subcommand is not None:
            return
        if kwargs.get("data_dir") is None:
            fail("--data-dir: required to run an agent (where agent.db and the sandboxes live)", 2)
        assert agent_main.callback is not None
        agent_main.callback(**kwargs)

    @agent.command("drain")
    @click.argument("agent_id")
    @click.option("--request-id", default="")
    @click.pass_context
    def drain(ctx: click.Context, agent_id: str, request_id: str) -> None:
        """Stop offering AGENT_ID and kill its tasks with their grace period."""
        from tessera.v1 import operator_pb2

        c = ctx.find_object(Ctx)
        assert c is not None
        resp = c.call(lambda s: s.DrainAgent, operator_pb2.DrainAgentRequest(agent_id=agent_id,
                                                                             request_id=request_id))
        click.echo(f"agent {agent_id} is draining (event {resp.index})")

    return agent


cli.add_command(_agent_group())


def _run_command() -> click.Command:
    from tessera.control_plane.cli.run import run_command

    return run_command


cli.add_command(_run_command(), name="run")


def _history_commands() -> list[click.Command]:
    from tessera.control_plane.cli.events import events
    from tessera.control_plane.cli.inspect import state, timeline
    from tessera.control_plane.cli.up import install_default_masters, up

    # --masters: TESSERA_MASTERS, else ./.tessera/cluster.json (written by `tessera up`), else 127.0.0.1:5050
    install_default_masters(cli)
    return [state, timeline, events, up]


for _command in _history_commands():
    cli.add_command(_command)


def _trace_command() -> click.Command:
    from tessera.control_plane.cli.trace import trace

    return trace


cli.add_command(_trace_command())


def _files_commands() -> list[click.Command]:
    from tessera.control_plane.cli.files import logs, sandbox

    return [logs, sandbox]


for _command in _files_commands():
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="tessera")


if __name__ == "__main__":
    main()
