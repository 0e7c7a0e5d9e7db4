"""`tessera master`: one master process — event log, replicated state machine, Raft, gRPC.

Startup checks fail with one clear line (exit code 2), never a traceback: an unwritable data dir, a peer
list that names this master or repeats an address, an address that does not parse, a port in use.

Security: a master refuses to start without mTLS (`--tls-dir`), an ACL of bearer tokens (`--acl`) and a
Raft password, unless it is told it runs an insecure development cluster (`--insecure-dev`), which it
then says loudly in its log.

Health and readiness (`runtime/health.py` decides, this module wires): per-service gRPC health updated on
every leadership change, `/health` and `/leader` beside `/metrics`, and under systemd (`Type=notify`)
`READY=1` once the gRPC server is started and the state restored from the Raft journal and dump — not
once a quorum is found, so masters started one by one each start — then `STATUS=` lines as its role or
its leader changes, `STOPPING=1` at a stop. Masters reach each other (announcements, the quorum fan-out) over mTLS with
their own certificate. SIGHUP reloads the ACL file; a file that does not load leaves the previous ACL in
force (and says so in the log).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tessera.control_plane.api.agentlink import AgentLinkService
from tessera.control_plane.api.auth import AclFileError, Guard, load_acl, reload_acl
from tessera.control_plane.api.client import MasterClient
from tessera.control_plane.api.files_proxy import FilesProxy
from tessera.control_plane.api.operator import ADDRESS_RE, OperatorService
from tessera.control_plane.api.scheduler import SchedulerService
from tessera.control_plane.api.server import MasterServer
from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.limits import MasterLimits, stream_caps
from tessera.control_plane.eventlog import SqliteEventStore
from tessera.control_plane.eventlog.background import Retention
from tessera.control_plane.eventlog.rebuild_child import ChildRebuilder
from tessera.control_plane.replication import RaftReplicator, ReplicationConfig
from tessera.control_plane.runtime import memprobe
from tessera.control_plane.runtime.gcpolicy import tune_gc
from tessera.control_plane.runtime.health import MasterHealth, status_line
from tessera.control_plane.runtime.leader import LeaderDuties, LeaderSettings, default_allocator
from tessera.control_plane.runtime.master import Master, MasterIdentity
from tessera.control_plane.runtime.statemachine import MasterStateMachine
from tessera.control_plane.systemd import Notifier
from tessera.control_plane.tls import ClientSecurity, TlsConfigError, load_tls_dir, server_credentials
from tessera.control_plane.tracing import setup_tracing
from tessera.v1 import operator_pb2

log = logging.getLogger("tessera.master")

# How long a leader stopped on purpose waits to see a follower lead after telling it to stand (TimeoutNow);
# the hand-over takes a round trip and one election round, a few election timeouts bound it.
HAND_OVER_TIMEOUT_S = 2.0


class StartupError(Exception):
    """A configuration problem reported as one line."""


@dataclass(frozen=True)
class MasterConfig:
    name: str
    raft_address: str
    grpc_address: str
    peers: tuple[str, ...]
    data_dir: Path
    raft_password: str | None
    leader: LeaderSettings = LeaderSettings()
    grpc_workers: int = 256
    event_retention: int = 0  # keep at least this many events in events.db (0 = keep all)
    metrics_address: str | None = None  # HOST:PORT for Prometheus /metrics; None = no metrics server
    http_address: str | None = None  # --http: HOST:PORT of the web UI (port 0: a free one); None/"off" = none
    raft_bind: str | None = None  # HOST:PORT the Raft port listens on when peers dial another (NAT, proxy)
    tls_dir: Path | None = None  # ca.pem, cert.pem, key.pem (a master certificate); None = plaintext gRPC
    acl_path: Path | None = None  # principals, their token digests and grants (TOML); None = no tokens
    insecure_dev: bool = False  # start without TLS, ACL or Raft password (local development only)
    limits: MasterLimits = MasterLimits()  # per-principal and per-peer limits (--limit NAME=VALUE)
    raft_compaction_entries: int = 5000  # snapshot the Raft log once it holds this many entries
    fsync: bool = True  # False (--unsafe-no-fsync): acknowledge before the Raft journal is on disk
    pre_vote: bool = True  # pre-vote and check-quorum (replication/prevote.py); --no-pre-vote: off, to measure
    history_deltas: int = 0  # --history-deltas: write delta snapshots of the history every N events (0: none)


@dataclass(frozen=True)
class Security:
    """What `validate_security` loaded: server credentials, the guard, and how to dial other masters."""

    server_credentials: Any
    guard: Guard
    client: ClientSecurity
    missing: tuple[str, ...]  # what an insecure development master runs without


def validate_security(config: MasterConfig) -> Security:
    missing = tuple(what for what, present in (
        ("mTLS (--tls-dir)", config.tls_dir is not None), ("an ACL (--acl)", config.acl_path is not None),
        ("a Raft password (--raft-password-file or TESSERA_RAFT_PASSWORD)", bool(config.raft_password))) if not present)
    if missing and not config.insecure_dev:
        raise StartupError(f"refusing to start without {', '.join(missing)}; a local development cluster "
                           "may pass --insecure-dev")
    if config.acl_path is not None and config.tls_dir is None:
        raise StartupError("--acl needs --tls-dir: the client certificate is what tells masters, agents and "
                           "frameworks apart")
    credentials, client = None, ClientSecurity.insecure()
    try:
        if config.tls_dir is not None:
            credentials = server_credentials(load_tls_dir(config.tls_dir))
            client = ClientSecurity.from_options(config.tls_dir)
        acl = load_acl(config.acl_path) if config.acl_path is not None else None
    except (TlsConfigError, AclFileError) as exc:
        raise StartupError(str(exc)) from exc
    return Security(credentials, Guard(acl, tls=config.tls_dir is not None), client, missing)


def validate(config: MasterConfig) -> None:
    for field, value in (("--raft", config.raft_address), ("--grpc", config.grpc_address),
                         ("--raft-bind", config.raft_bind)):
        if value is not None and not ADDRESS_RE.match(value):
            raise StartupError(f"{field}: expected HOST:PORT, got {value!r}")
    seen: set[str] = set()
    for peer in config.peers:
        if not ADDRESS_RE.match(peer):
            raise StartupError(f"--peers: expected HOST:PORT entries, got {peer!r}")
        if peer == config.raft_address:
            raise StartupError(f"--peers: {peer} is this master's own --raft address; list only the others")
        if peer in seen:
            raise StartupError(f"--peers: {peer} is listed twice")
        seen.add(peer)
    if len(config.peers) % 2 == 1:
        log.warning("an even number of masters (%d) tolerates no more failures than one fewer",
                    len(config.peers) + 1)
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        probe = config.data_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise StartupError(f"--data-dir: {config.data_dir} is not writable ({exc.strerror or exc})") from exc


def _announce(leader_grpc: str, identity: MasterIdentity, security: ClientSecurity) -> None:
    client = MasterClient([leader_grpc], timeout=2.0, rpc_timeout=2.0, security=security)
    try:
        client.call(lambda s: s.AnnounceMaster, operator_pb2.AnnounceMasterRequest(
            name=identity.name, raft_address=identity.raft_address, grpc_address=identity.grpc_address,
        ), follow_leader=False)
    finally:
        client.close()


def _peer_quorum(address: str, security: ClientSecurity) -> operator_pb2.GetQuorumResponse:
    client = MasterClient([address], timeout=2.0, rpc_timeout=2.0, security=security)
    try:
        return client.call(lambda s: s.GetQuorum, operator_pb2.GetQuorumRequest(local_only=True),
                           follow_leader=False)
    finally:
        client.close()


def build_master(config: MasterConfig) -> tuple[Master, LeaderDuties, MasterServer]:
    validate(config)
    try:
        stream_caps(config.grpc_workers, config.limits)
    except InvalidRequest as exc:
        raise StartupError(exc.message) from exc
    security = validate_security(config)
    events = SqliteEventStore(config.data_dir / "events.db", durable=config.fsync)
    # the event log's snapshots are rebuilt in a child process, never pickled from the live state: a
    # rebuild's transient state left memory behind in the master every time (eventlog/rebuild_child.py),
    # and pickling the live state on pysyncobj's tick thread held back heartbeats long enough for an
    # election (docs/reliability.md)
    # --history-deltas (off by default): a thread of the master replays the log as it is written and stores
    # delta snapshots, so time travel starts near any point (eventlog/background.py, `DeltaSnapshots`;
    # its CPU per event and the decoded bases it keeps are in docs/benchmarks.md)
    sm = MasterStateMachine(events, snapshot_builder=ChildRebuilder(events.path), live_snapshots=False,
                            delta_every=config.history_deltas)
    replicator = RaftReplicator(ReplicationConfig(
        self_address=config.raft_address, peers=config.peers, data_dir=config.data_dir / "raft",
        password=config.raft_password, bind_address=config.raft_bind,
        log_compaction_min_entries=config.raft_compaction_entries, fsync=config.fsync, pre_vote=config.pre_vote,
    ), sm, before_dump=events.flush)
    identity = MasterIdentity(config.name, config.raft_address, config.grpc_address)
    # spans go next to the event log; not the global provider, so several masters can share a process
    tracer_provider = setup_tracing("tessera-master", span_store=events, instance_id=config.name, set_global=False)
    master = Master(identity, sm, replicator, events, tracer_provider=tracer_provider, limits=config.limits,
                    announce=lambda leader, who: _announce(leader, who, security.client))
    duties = LeaderDuties(master, config.leader, allocator=default_allocator(config.leader))
    server = MasterServer(
        OperatorService(master, peer_quorum=lambda address: _peer_quorum(address, security.client), duties=duties,
                        guard=security.guard, files=FilesProxy(master, security.client)),
        agent_link=AgentLinkService(duties, first_message_timeout=config.limits.agent_register_timeout),
        scheduler=SchedulerService(duties, guard=security.guard),
        max_workers=config.grpc_workers, tracer_provider=tracer_provider, guard=security.guard, limits=config.limits,
    )
    try:
        server.bind(config.grpc_address, security.server_credentials)
    except (OSError, RuntimeError) as exc:
        events.close()
        raise StartupError(f"--grpc: cannot listen on {config.grpc_address} ({exc})") from exc
    return master, duties, server


def start_web(config: MasterConfig, server: MasterServer) -> Any:
    """The web UI (`--http`, control_plane/web/), listening; None when it is off. Its URL is logged, written
    to DATA_DIR/ui-url and reported in GetQuorum (`ui_url`), so the other masters' UIs link to it."""
    from tessera.control_plane.web.server import (
        HttpAddressError,
        WebServer,
        parse_http_address,
        server_ssl_context,
    )

    try:
        bind = parse_http_address(config.http_address) if config.http_address else None
        if bind is None:
            return None
        ssl_context = server_ssl_context(config.tls_dir) if config.tls_dir is not None else None
        ui = WebServer(server.operator, bind[0], bind[1], insecure=config.acl_path is None,
                       ssl_context=ssl_context).start()
    except HttpAddressError as exc:
        raise StartupError(str(exc)) from exc
    except (OSError, ValueError) as exc:
        raise StartupError(f"--http: cannot serve on {config.http_address} ({exc})") from exc
    server.operator.quorum.ui_url = ui.url
    (config.data_dir / "ui-url").write_text(ui.url + "\n")
    log.info("web UI: %s%s", ui.url, "" if config.acl_path is not None else " (insecure: no token asked)")
    return ui


def run_master(config: MasterConfig) -> int:
    os.umask(0o077)  # events.db, the Raft journal and dump, spans: readable by the master's user only
    try:
        master, duties, server = build_master(config)
    except StartupError as exc:
        print(f"tessera master: {exc}", file=sys.stderr)
        return 2
    notifier = Notifier()  # systemd's NOTIFY_SOCKET, taken out of the environment (no child inherits it)
    health = MasterHealth(master, set_service=server.set_serving, status=notifier.status)
    master.add_leadership_observer(health.on_leadership_change)
    try:
        ui = start_web(config, server)
    except StartupError as exc:
        print(f"tessera master: {exc}", file=sys.stderr)
        return 2
    metrics = None
    if config.metrics_address:
        from tessera.control_plane.runtime.metrics import MasterMetrics

        try:
            metrics = MasterMetrics(master, duties, address=config.metrics_address)
            metrics.add_probe("/health", health.health)
            metrics.add_probe("/leader", health.leader)
            metrics.start()
        except (OSError, ValueError) as exc:
            print(f"tessera master: --metrics: cannot serve on {config.metrics_address} ({exc})", file=sys.stderr)
            return 2
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received signal %d, stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    acl_reload = threading.Event()
    if config.acl_path is not None:
        signal.signal(signal.SIGHUP, lambda _signum, _frame: acl_reload.set())
    try:
        master.start()
    except Exception as exc:  # noqa: BLE001 - report a startup failure as one line
        print(f"tessera master: cannot start Raft on {config.raft_address}: {exc}", file=sys.stderr)
        return 2
    duties.start()
    server.start()
    notifier.ready(status_line(health.mark_serving()))  # after the gRPC server answers, never before
    tune_gc()  # after startup: what exists now is long-lived (see gcpolicy)
    probe = memprobe.start_from_env(config.name)  # None unless TESSERA_TRACEMALLOC is set (a debugging aid)
    retention = Retention(master.events, keep=config.event_retention).start() if config.event_retention else None
    log.info("master %s: raft %s, grpc %s, peers %s, data %s (pid %d)", config.name, config.raft_address,
             config.grpc_address, ",".join(config.peers) or "-", config.data_dir, os.getpid())
    if config.raft_password is None:
        log.warning("INSECURE: the Raft port %s has no password; anyone who can reach it can take over the "
                    "cluster. Set --raft-password-file (or TESSERA_RAFT_PASSWORD_FILE, TESSERA_RAFT_PASSWORD) "
                    "outside local development.", config.raft_address)
    if not config.fsync:
        log.warning("UNSAFE: --unsafe-no-fsync: writes are acknowledged before the Raft journal is on disk; a "
                    "power loss of a majority of masters loses acknowledged writes. For tests only.")
    if config.tls_dir is None:
        log.warning("INSECURE: gRPC on %s is plaintext and unauthenticated (--insecure-dev); anyone who can "
                    "reach it can run tasks and change the cluster. Not for production.", config.grpc_address)
    elif config.acl_path is None:
        log.warning("INSECURE: no --acl: every peer with a certificate from the CA may do anything (--insecure-dev)")
    while not stop.wait(0.5):
        master.maybe_announce()
        try:
            health.refresh()  # the leader a follower knows changes without a leadership change here
        except Exception:  # noqa: BLE001 - reported again at the next turn
            log.debug("health refresh failed", exc_info=True)
        if acl_reload.is_set() and config.acl_path is not None:
            acl_reload.clear()
            reload_acl(server.guard, config.acl_path)
    notifier.stopping()
    # A planned stop of the leader hands leadership over first: the cluster elects at once (TimeoutNow).
    master.hand_over_leadership(timeout=HAND_OVER_TIMEOUT_S)
    health.mark_stopping()
    if probe is not None:
        probe.stop()
    duties.stop()
    if ui is not None:
        ui.stop()
    server.stop()
    if metrics is not None:
        metrics.stop()
    if retention is not None:
        retention.stop()
    master.stop()
    log.info("master %s stopped", config.name)
    return 0
