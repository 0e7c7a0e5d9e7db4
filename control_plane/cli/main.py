"""The `tessera` command: run a master, and operate a cluster over the Operator API.

Every command that talks to a cluster finds the masters as every Tessera client does (`--masters`, else
TESSERA_MASTERS, else the ./.tessera/cluster.json `tessera up` wrote, else 127.0.0.1:5050), follows the
leader on its own, prints a table for people or JSON with `--json`, exits non-zero on failure and says in
one line why (no traceback). A secured cluster wants `--tls-dir DIR` (ca.pem, cert.pem, key.pem of an
operator certificate) and a bearer token (`--token-file FILE`, or TESSERA_TLS_DIR / TESSERA_TOKEN_FILE /
TESSERA_TOKEN). These shared flags are accepted before or after any command (`cli.shared`).

List commands (`agents`, `frameworks`, `tasks`, `state`) read from the leader (a consistent read);
`--stale` lets any master answer from its own copy, and the output then says so (a follower does not know
which agents are connected, nor the tasks' usage). Mutating commands print the event index they
committed, in JSON with `--json`.

Secrets never come from the command line, which every local user can read in /proc/PID/cmdline: the
token and the Raft password come from a file or the environment (readable by their owner only), and
the old `--token` / `--raft-password` flags are refused with one line naming the alternatives.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.table import Table

from tessera.control_plane.cli.shared import (
    DEFAULT_TIMEOUT,
    MASTERS_HELP,
    TOKEN_ALTERNATIVES,
    Ctx,
    TesseraGroup,
    fail,
    refuse_secret_flag,
    stale_note,
)
from tessera.control_plane.logsetup import log_options, setup_logging

console = Console(width=None if sys.stdout.isatty() else 200)


def read_secret_file(path: Path, flag: str) -> str:
    """The secret in `path` (surrounding whitespace removed); one line and exit 2 if unusable."""
    try:
        secret = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{flag}: cannot read {path} ({getattr(exc, 'strerror', None) or exc})", 2)
    if not secret:
        fail(f"{flag}: {path} is empty", 2)
    return secret


def to_dict(msg: Any) -> dict[str, Any]:
    return MessageToDict(msg, preserving_proto_field_name=True)


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(cls=TesseraGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                 "auto_envvar_prefix": "TESSERA"})
@click.version_option(package_name="tessera-kernel", prog_name="tessera", message="%(prog)s %(version)s",
                      help="Print the version and exit.")
@click.option("--masters", default=None, allow_from_autoenv=False, metavar="HOST:PORT,...", help=MASTERS_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, type=click.FloatRange(min=0, min_open=True),
              metavar="SECONDS", help="Seconds to wait for the cluster.")
@click.option("--tls-dir", envvar="TESSERA_TLS_DIR", default=None, metavar="DIR",
              help="mTLS: DIR holds ca.pem, cert.pem and key.pem (or TESSERA_TLS_DIR). Plaintext without it.")
@click.option("--token-file", envvar="TESSERA_TOKEN_FILE", default=None, metavar="FILE",
              help="Read the bearer token of your principal from FILE (or TESSERA_TOKEN_FILE; or the token "
                   "itself in TESSERA_TOKEN). Never on the command line.")
@click.option("--token", hidden=True, expose_value=False, is_eager=True, allow_from_autoenv=False,
              callback=refuse_secret_flag(TOKEN_ALTERNATIVES))
@click.pass_context
def cli(ctx: click.Context, masters: str | None, as_json: bool, timeout: float, tls_dir: str | None,
        token_file: str | None) -> None:
    """Tessera: a datacenter kernel with a Raft-replicated, event-sourced master.

    The options below (--masters, --json, --timeout, --tls-dir, --token-file) are accepted before or after
    any command: `tessera --json tasks` and `tessera tasks --json` are the same."""
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
@click.option("--framework-takeover-delay", default=1.0, show_default=True,
              help="Seconds a framework stays disconnected before a standby instance takes its lease.")
@click.option("--raft-compaction-entries", type=click.IntRange(min=2), default=5000, show_default=True,
              help="Snapshot the Raft log (a dump of the state) once it holds this many entries.")
@click.option("--no-pre-vote", "no_pre_vote", is_flag=True,
              help="Elect as pysyncobj alone does, without pre-vote and check-quorum: a restarted or healed master "
                   "then raises the term and forces an election. Only to measure the difference.")
@click.option("--grpc-workers", default=256, show_default=True,
              help="gRPC threads; every agent, framework and event watcher holds one.")
@click.option("--event-retention", type=click.IntRange(min=0), default=0, show_default=True,
              help="Keep at least the last N events in events.db; older ones are pruned in the background "
                   "(0 = keep all).")
@click.option("--history-deltas", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Write a delta snapshot of the history every N events (e.g. 500), so the web UI's and "
                   "`tessera state --at` first visits to any point start near it. Costs a background thread "
                   "(~0.2 ms of CPU per event) and up to ~300 MB for decoded bases at 10,000 tasks; 0 = off.")
@click.option("--metrics", "metrics_address", default=None,
              help="HOST:PORT to serve Prometheus /metrics on (off when not given).")
@click.option("--http", "http_address", default="127.0.0.1:0", show_default=True, metavar="HOST:PORT|off",
              help="Serve the web UI and its JSON API here (port 0: a free one; the URL is logged and written to "
                   "DATA_DIR/ui-url). HTTPS with a token when --acl is given; without an ACL, loopback only. "
                   "docs/http-api.md.")
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
@click.option("--unsafe-no-fsync", is_flag=True,
              help="UNSAFE: acknowledge writes before the Raft journal is on disk (pysyncobj's own behaviour). "
                   "Faster, but a power loss of a majority of masters loses acknowledged writes. For tests only.")
@log_options("the master")
def master(name: str, raft_address: str, grpc_address: str, peers: str, raft_bind: str | None, data_dir: Path,
           raft_password_file: Path | None, agent_timeout: float, agent_heartbeat_interval: float,
           reregistration_timeout: float, allocation_interval: float, offer_timeout: float,
           framework_reconnect_timeout: float, framework_takeover_delay: float, raft_compaction_entries: int,
           no_pre_vote: bool, grpc_workers: int, event_retention: int, history_deltas: int,
           metrics_address: str | None, http_address: str, master_tls_dir: Path | None, acl_path: Path | None,
           limits: tuple[str, ...], insecure_dev: bool, unsafe_no_fsync: bool, log_level: str,
           log_format: str) -> None:
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
    are closed, as are frames larger than a master ever sends.

    \b
    Memory debugging: TESSERA_TRACEMALLOC=DIR makes the master write tracemalloc
    snapshots and its RssAnon/RssFile to DIR every TESSERA_TRACEMALLOC_EVERY
    seconds (60), TESSERA_TRACEMALLOC_FRAMES frames deep (10); compare two with
    python -m tessera.control_plane.runtime.memprobe BEFORE AFTER. Allocations
    then cost about twice as much: for debugging only."""
    setup_logging(log_level, log_format, name)
    from tessera.control_plane.runtime.leader import LeaderSettings
    from tessera.control_plane.runtime.process import MasterConfig, run_master

    for flag, value in (("--agent-timeout", agent_timeout), ("--agent-heartbeat-interval", agent_heartbeat_interval),
                        ("--allocation-interval", allocation_interval)):
        if not value > 0:
            fail(f"{flag}: must be a positive number of seconds, got {value}", 2)
    for flag, value in (("--offer-timeout", offer_timeout), ("--reregistration-timeout", reregistration_timeout),
                        ("--framework-reconnect-timeout", framework_reconnect_timeout),
                        ("--framework-takeover-delay", framework_takeover_delay)):
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
            framework_takeover_delay=framework_takeover_delay,
        ),
        raft_compaction_entries=raft_compaction_entries,
        pre_vote=not no_pre_vote,
        grpc_workers=grpc_workers,
        metrics_address=metrics_address,
        http_address=http_address,
        event_retention=event_retention,
        history_deltas=history_deltas,
        tls_dir=master_tls_dir, acl_path=acl_path, insecure_dev=insecure_dev, limits=master_limits,
        fsync=not unsafe_no_fsync,
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
    """Leader, term, commit index, each member's applied index and its web UI's URL."""
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
    for m in resp.members:  # one line each, never wrapped by the table: the URLs are copied from here
        url = m.ui_url or ("not answering" if not m.reachable else "none (started without --http)")
        click.echo(f"ui {m.name or m.raft_address}: {url}")


@quorum.command("add")
@click.argument("raft_address", metavar="RAFT_HOST:PORT")
@pass_ctx
def quorum_add(c: Ctx, raft_address: str) -> None:
    """Add a master (then start it with --peers listing every other member)."""
    from tessera.v1 import operator_pb2

    c.call(lambda s: s.AddMaster, operator_pb2.AddMasterRequest(raft_address=raft_address), timeout=30)
    if c.as_json:  # a membership change of Raft itself, not an event of the log: no index to print
        c.emit({"raft_address": raft_address, "added": True})
        return
    click.echo(f"added {raft_address} to the quorum; start it with --peers naming every other member")


@quorum.command("remove")
@click.argument("raft_address", metavar="RAFT_HOST:PORT")
@pass_ctx
def quorum_remove(c: Ctx, raft_address: str) -> None:
    """Remove a master from the quorum."""
    from tessera.v1 import operator_pb2

    c.call(lambda s: s.RemoveMaster, operator_pb2.RemoveMasterRequest(raft_address=raft_address), timeout=30)
    if c.as_json:
        c.emit({"raft_address": raft_address, "removed": True})
        return
    click.echo(f"removed {raft_address} from the quorum")


@quorum.command("transfer")
@click.argument("raft_address", required=False, default="", metavar="[RAFT_HOST:PORT]")
@pass_ctx
def quorum_transfer(c: Ctx, raft_address: str) -> None:
    """Hand leadership to RAFT_ADDRESS (or any caught-up member)."""
    from tessera.v1 import operator_pb2

    c.call(lambda s: s.TransferLeadership,
           operator_pb2.TransferLeadershipRequest(raft_address=raft_address), timeout=30)
    if c.as_json:
        c.emit({"raft_address": raft_address, "transfer_requested": True})
        return
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
    """Give ROLE the weight WEIGHT (a positive number; 1 by default): under contention, weighted DRF offers
    each role resources in proportion to its weight. Commits RoleWeightSet."""
    from tessera.v1 import operator_pb2

    resp = c.call(lambda s: s.SetWeight,
                  operator_pb2.SetWeightRequest(role=role, weight=weight, request_id=request_id))
    if c.as_json:
        c.emit({"role": role, "weight": weight, "index": resp.index})
        return
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
@click.option("--guarantee", default="", metavar="RESOURCES",
              help="Resources ROLE is offered first, before any other role's share, e.g. 'cpus:4;mem:4096'.")
@click.option("--limit", default="", metavar="RESOURCES",
              help="Resources ROLE never holds more than, e.g. 'cpus:8;mem:8192' (empty: no limit).")
@click.option("--request-id", default="", help="Idempotency key (retries with the same id apply once).")
@pass_ctx
def quota_set(c: Ctx, role: str, guarantee: str, limit: str, request_id: str) -> None:
    """Set ROLE's quota: a guarantee served first and a limit never exceeded (empty ones clear them).
    Commits QuotaSet."""
    from tessera.v1 import operator_pb2

    req = operator_pb2.SetQuotaRequest(role=role, request_id=request_id)
    req.guarantee.extend(_resources(guarantee, "--guarantee"))
    req.limit.extend(_resources(limit, "--limit"))
    resp = c.call(lambda s: s.SetQuota, req)
    if c.as_json:
        c.emit({"role": role, "guarantee": guarantee, "limit": limit, "index": resp.index})
        return
    click.echo(f"role {role}: quota set (event {resp.index})")


# ---- state and events --------------------------------------------------------------------------
STALE_HELP = ("Let any master answer from its own copy (faster, works without a leader; may be behind, and a "
              "follower does not know which agents are connected): the output then says so.")


def _state(c: Ctx, stale: bool = False) -> Any:
    """The state from the leader (a consistent read: a barrier through the log first), or with `stale`
    from whichever master answers, with a note on stderr when that was not the leader."""
    from tessera.v1 import operator_pb2

    resp = c.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=not stale))
    if not resp.from_leader:
        stale_note(resp)
    return resp


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
@click.option("--stale", is_flag=True, help=STALE_HELP)
@pass_ctx
def agents(c: Ctx, stale: bool) -> None:
    """Agents: state, resources used/total, isolator, container support, tasks."""
    from tessera.v1 import common_pb2

    resp = _state(c, stale)
    if c.as_json:
        c.emit([to_dict(a) for a in resp.agents])
        return
    table = Table("agent", "host", "state", "connected", "isolator", "containers", "used", "total", "tasks",
                  "attributes")
    for a in resp.agents:
        table.add_row(a.agent_id, a.info.hostname, _enum_name(common_pb2.AgentState, a.state).removeprefix("AGENT_"),
                      ("yes" if a.connected else "no") if resp.from_leader else "?", a.info.isolator or "?",
                      _containers_text(a.info.containers),
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
@click.option("--stale", is_flag=True, help=STALE_HELP)
@pass_ctx
def frameworks(c: Ctx, stale: bool) -> None:
    """Frameworks: state, roles, resources used."""
    from tessera.v1 import common_pb2

    resp = _state(c, stale)
    if c.as_json:
        c.emit([to_dict(f) for f in resp.frameworks])
        return
    table = Table("framework", "name", "state", "roles", "used", "offered", "suppressed")
    for f in resp.frameworks:
        table.add_row(f.framework_id, f.info.name,
                      _enum_name(common_pb2.FrameworkState, f.state).removeprefix("FRAMEWORK_"),
                      ",".join(f.info.roles), _res_text(f.used), _res_text(f.offered), ",".join(f.suppressed_roles))
    console.print(table)


class TaskStateChoice(click.Choice):
    """A task state, with or without its TASK_ prefix, in any case (RUNNING, task_failed...)."""

    def __init__(self) -> None:
        from tessera.v1 import common_pb2

        super().__init__([n.removeprefix("TASK_") for n in common_pb2.TaskState.keys() if n != "TASK_STATE_UNKNOWN"],
                         case_sensitive=False)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        return super().convert(text[5:] if text.upper().startswith("TASK_") else text, param, ctx)


@cli.command()
@click.argument("task", required=False, default="", metavar="[[FRAMEWORK_ID/]TASK_ID]")
@click.option("--state", "state_filter", type=TaskStateChoice(), default=None,
              help="Only tasks in this state (RUNNING, FAILED, ...; the TASK_ prefix is optional).")
@click.option("--framework", default="", help="Only tasks of this framework id.")
@click.option("--all", "show_all", is_flag=True,
              help="Finished tasks too, rebuilt from the event log (the state keeps only live ones).")
@click.option("--db", type=click.Path(path_type=Path, dir_okay=False),
              help="With --all: read this events.db (a master's, or an export) instead of asking the cluster.")
@click.option("--stale", is_flag=True, help=STALE_HELP)
@pass_ctx
def tasks(c: Ctx, task: str, state_filter: str | None, framework: str, show_all: bool, db: Path | None,
          stale: bool) -> None:
    """Live tasks with their state, agent and latest status (with --all, finished ones too); or the one
    task named FRAMEWORK_ID/TASK_ID (task ids are scoped per framework), or by a bare TASK_ID that one
    framework's tasks use."""
    from tessera.control_plane.eventlog.errors import AmbiguousTask
    from tessera.control_plane.eventlog.timeline import split_task_ref
    from tessera.v1 import common_pb2

    if db is not None and not show_all:
        fail("--db: only with --all (the live tasks come from the cluster)", 2)
    wanted = f"TASK_{state_filter.upper()}" if state_filter else ""
    views: list[Any] = []
    live: set[tuple[str, str]] = set()
    history = None
    if db is None:
        resp = _state(c, stale)
        views = list(resp.tasks)
        live = {(t.task.framework_id, t.task.task_id) for t in views}
    if show_all:
        from tessera.control_plane.cli.operate import history_rows

        history, rows = history_rows(c, db, framework)
        views += [v for v in rows if (v.task.framework_id, v.task.task_id) not in live]
    named_framework, task_id = split_task_ref(task) if task else ("", "")
    if task_id:
        named = sorted({t.task.framework_id for t in views if t.task.task_id == task_id
                        and (not named_framework or t.task.framework_id == named_framework)})
        if not named:
            fail(f"no task {task}" if show_all else f"no live task {task} (--all: finished ones too)", 1)
        if len(named) > 1 and not framework:
            fail(str(AmbiguousTask(task_id, named)), 1)
        named_framework = named_framework or framework or named[0]
    rows = [t for t in views
            if (not wanted or common_pb2.TaskState.Name(t.state) == wanted)
            and (not framework or t.task.framework_id == framework)
            and (not task_id or (t.task.task_id, t.task.framework_id) == (task_id, named_framework))]
    ended = {(r.framework_id, r.task_id): r for r in history.rows} if history is not None else {}
    if c.as_json:
        out = []
        for t in rows:
            item = to_dict(t)
            if show_all:
                row = ended.get((t.task.framework_id, t.task.task_id))
                item["live"] = (t.task.framework_id, t.task.task_id) in live
                item["launched_at"] = row.launched_at if row is not None else None
                item["ended_at"] = (row.ended_at or None) if row is not None else None
            out.append(item)
        c.emit(out)
        return
    if history is not None and history.first_index > 1 and not task_id:
        click.echo(f"tessera: the event log answering keeps history from index {history.first_index}: tasks "
                   "launched before are shown from their later events only", err=True)
    columns = ["task", "framework", "agent", "state", "health", "resources", "message", "cpu s", "rss MiB"]
    table = Table(*columns, *(["ended"] if show_all else []))
    for t in rows:
        row = ended.get((t.task.framework_id, t.task.task_id))
        extra = []
        if show_all:
            from tessera.control_plane.eventlog.timepoints import format_time

            extra = [format_time(row.ended_at) if row is not None and row.ended_at else "-"]
        table.add_row(t.task.task_id, t.task.framework_id, t.task.agent_id,
                      _enum_name(common_pb2.TaskState, t.state).removeprefix("TASK_"), _health_text(t),
                      _res_text(t.task.resources), t.last_status.message[:60],
                      f"{t.usage.cpu_seconds:.2f}" if t.HasField("usage") else "",
                      f"{t.usage.rss_bytes / 2**20:.1f}" if t.HasField("usage") else "", *extra)
    console.print(table)


def _health_text(view: Any) -> str:
    """A task's health as its newest status says it: healthy or unhealthy; "pending" for a running task
    whose check has not decided yet; empty without a health check (docs/health-checks.md)."""
    if view.last_status.HasField("healthy"):
        return "healthy" if view.last_status.healthy else "unhealthy"
    from tessera.v1 import common_pb2

    if view.task.HasField("health_check") and view.state == common_pb2.TASK_RUNNING:
        return "pending"
    return ""


def _res_text(items: Any) -> str:
    from tessera.control_plane.codec import resources_from_proto

    return str(resources_from_proto(items)) if len(items) else "-"


def _agent_group() -> click.Group:
    """`tessera agent --data-dir D ...` runs an agent; `tessera agent drain AGENT_ID` drains one,
    `tessera agent undrain AGENT_ID` offers it again."""
    import copy

    from click.core import ParameterSource

    from tessera.agent.cli import agent_main
    from tessera.control_plane.cli.operate import agent_drain, agent_undrain

    params = []
    for param in agent_main.params:
        optional = copy.copy(param)
        optional.required = False  # --data-dir is required to run an agent, not to drain one
        params.append(optional)

    help_text = (f"{agent_main.help}\n\nWith a subcommand, act on an agent of the cluster instead: `tessera agent "
                 "drain AGENT_ID` (and wait until its tasks are gone), `tessera agent undrain AGENT_ID`.")

    @click.group("agent", invoke_without_command=True, params=params, help=help_text)
    @click.pass_context
    def agent(ctx: click.Context, **kwargs: Any) -> None:
        given = {name for name in ("masters", "agent_tls_dir")
                 if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}
        if ctx.invoked_subcommand is not None:
            # `tessera agent --masters X drain A`: the flags written before the subcommand are for it
            c = ctx.find_object(Ctx)
            if c is not None and "masters" in given:
                c.masters_flag = kwargs["masters"]
            if c is not None and "agent_tls_dir" in given:
                c.tls_dir = str(kwargs["agent_tls_dir"])
            return
        if kwargs.get("data_dir") is None:
            fail("--data-dir: required to run an agent (where agent.db and the sandboxes live)", 2)
        from tessera.control_plane.tls import find_masters

        try:  # an agent finds the masters as every client does (TESSERA_MASTERS, ./.tessera/cluster.json)
            kwargs["masters"] = find_masters(kwargs["masters"] if "masters" in given else None).text
        except ValueError as exc:
            fail(str(exc), 2)
        assert agent_main.callback is not None
        agent_main.callback(**kwargs)

    agent.add_command(agent_drain)
    agent.add_command(agent_undrain)
    return agent


cli.add_command(_agent_group())


def _operator_commands() -> list[click.Command]:
    from tessera.control_plane.cli.operate import framework_group, task_group
    from tessera.control_plane.cli.run import run_command

    return [task_group, framework_group, run_command]


def _history_commands() -> list[click.Command]:
    from tessera.control_plane.cli.events import events
    from tessera.control_plane.cli.inspect import state, timeline
    from tessera.control_plane.cli.trace import trace
    from tessera.control_plane.cli.up import up

    return [state, timeline, events, up, trace]


for _command in (*_operator_commands(), *_history_commands()):
    cli.add_command(_command)


def _discovery_commands() -> list[click.Command]:
    from tessera.control_plane.cli.dns import dns
    from tessera.control_plane.cli.lb import lb
    from tessera.control_plane.cli.services import service, services_command

    return [dns, lb, services_command, service]


for _command in _discovery_commands():
    cli.add_command(_command)


def _framework_state_command() -> click.Command:
    from tessera.control_plane.cli.framework import state
    from tessera.control_plane.cli.operate import framework_group

    framework_group.add_command(state)  # `tessera framework state`, beside `tessera framework teardown`
    return state


_framework_state_command()


def _files_commands() -> list[click.Command]:
    from tessera.control_plane.cli.completion import completion
    from tessera.control_plane.cli.files import logs, sandbox

    return [logs, sandbox, completion]


for _command in _files_commands():
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="tessera")


if __name__ == "__main__":
    main()
