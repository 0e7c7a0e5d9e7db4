"""`tessera master`: one master process — event log, replicated state machine, Raft, gRPC.

Startup checks fail with one clear line (exit code 2), never a traceback: an unwritable data dir, a peer
list that names this master or repeats an address, an address that does not parse, a port in use.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from control_plane.api.agentlink import AgentLinkService
from control_plane.api.client import MasterClient
from control_plane.api.operator import ADDRESS_RE, OperatorService
from control_plane.api.scheduler import SchedulerService
from control_plane.api.server import MasterServer
from control_plane.eventlog import SqliteEventStore
from control_plane.eventlog.history import Retention
from control_plane.replication import RaftReplicator, ReplicationConfig
from control_plane.runtime.leader import LeaderDuties, LeaderSettings, default_allocator
from control_plane.runtime.master import Master, MasterIdentity
from control_plane.runtime.statemachine import MasterStateMachine
from control_plane.tracing import setup_tracing
from tessera.v1 import operator_pb2

log = logging.getLogger("tessera.master")


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


def validate(config: MasterConfig) -> None:
    for field, value in (("--raft", config.raft_address), ("--grpc", config.grpc_address)):
        if not ADDRESS_RE.match(value):
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


def _announce(leader_grpc: str, identity: MasterIdentity) -> None:
    client = MasterClient([leader_grpc], timeout=2.0, rpc_timeout=2.0)
    try:
        client.call(lambda s: s.AnnounceMaster, operator_pb2.AnnounceMasterRequest(
            name=identity.name, raft_address=identity.raft_address, grpc_address=identity.grpc_address,
        ), follow_leader=False)
    finally:
        client.close()


def _peer_quorum(address: str) -> operator_pb2.GetQuorumResponse:
    client = MasterClient([address], timeout=2.0, rpc_timeout=2.0)
    try:
        return client.call(lambda s: s.GetQuorum, operator_pb2.GetQuorumRequest(local_only=True),
                           follow_leader=False)
    finally:
        client.close()


def build_master(config: MasterConfig) -> tuple[Master, LeaderDuties, MasterServer]:
    validate(config)
    events = SqliteEventStore(config.data_dir / "events.db")
    sm = MasterStateMachine(events)
    replicator = RaftReplicator(ReplicationConfig(
        self_address=config.raft_address, peers=config.peers, data_dir=config.data_dir / "raft",
        password=config.raft_password,
    ), sm)
    identity = MasterIdentity(config.name, config.raft_address, config.grpc_address)
    # spans go next to the event log; not the global provider, so several masters can share a process
    tracer_provider = setup_tracing("tessera-master", span_store=events, set_global=False)
    master = Master(identity, sm, replicator, events, announce=_announce, tracer_provider=tracer_provider)
    duties = LeaderDuties(master, config.leader, allocator=default_allocator(config.leader))
    server = MasterServer(
        OperatorService(master, peer_quorum=_peer_quorum, duties=duties),
        agent_link=AgentLinkService(duties), scheduler=SchedulerService(duties),
        max_workers=config.grpc_workers, tracer_provider=tracer_provider,
    )
    try:
        server.bind(config.grpc_address)
    except (OSError, RuntimeError) as exc:
        events.close()
        raise StartupError(f"--grpc: cannot listen on {config.grpc_address} ({exc})") from exc
    return master, duties, server


def run_master(config: MasterConfig) -> int:
    try:
        master, duties, server = build_master(config)
    except StartupError as exc:
        print(f"tessera master: {exc}", file=sys.stderr)
        return 2
    metrics = None
    if config.metrics_address:
        from control_plane.runtime.metrics import MasterMetrics

        try:
            metrics = MasterMetrics(master, duties, address=config.metrics_address)
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
    try:
        master.start()
    except Exception as exc:  # noqa: BLE001 - report a startup failure as one line
        print(f"tessera master: cannot start Raft on {config.raft_address}: {exc}", file=sys.stderr)
        return 2
    duties.start()
    server.start()
    retention = Retention(master.events, keep=config.event_retention).start() if config.event_retention else None
    log.info("master %s: raft %s, grpc %s, peers %s, data %s (pid %d)", config.name, config.raft_address,
             config.grpc_address, ",".join(config.peers) or "-", config.data_dir, os.getpid())
    if config.raft_password is None:
        log.warning("INSECURE: the Raft port %s has no password; anyone who can reach it can take over "
                    "the cluster. Set --raft-password or TESSERA_RAFT_PASSWORD outside local development.",
                    config.raft_address)
    while not stop.wait(0.5):
        master.maybe_announce()
    duties.stop()
    server.stop()
    if metrics is not None:
        metrics.stop()
    if retention is not None:
        retention.stop()
    master.stop()
    log.info("master %s stopped", config.name)
    return 0
