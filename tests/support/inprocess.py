"""One master in this process over the in-memory twins (LocalReplicator, MemoryEventStore), serving
the real gRPC API (Operator, AgentLink, Scheduler) on a free 127.0.0.1 port, with its leader duties.
Fast tests of everything above replication use it."""

from __future__ import annotations

from typing import Any

import grpc

from tessera.control_plane.api.agentlink import FIRST_MESSAGE_TIMEOUT, AgentLinkService
from tessera.control_plane.api.auth import Guard
from tessera.control_plane.api.operator import OperatorService
from tessera.control_plane.api.scheduler import SchedulerService
from tessera.control_plane.api.server import MasterServer
from tessera.control_plane.core.limits import MasterLimits
from tessera.control_plane.eventlog import EventStore, MemoryEventStore
from tessera.control_plane.replication import GroupCommitConfig, LocalReplicator
from tessera.control_plane.runtime.leader import LeaderDuties, LeaderSettings, default_allocator
from tessera.control_plane.runtime.master import Master, MasterIdentity
from tessera.control_plane.runtime.statemachine import MasterStateMachine
from tessera.v1 import agent_pb2_grpc, operator_pb2_grpc, scheduler_pb2_grpc
from tests.support.cluster import free_port

FAST = LeaderSettings(agent_heartbeat_interval=0.2, agent_timeout=1.0, reregistration_timeout=1.0,
                      framework_heartbeat_interval=0.5, framework_reconnect_timeout=1.0,
                      allocation_interval=0.2, offer_timeout=30.0, status_update_retry=1.0, tick=0.05)


class InProcessMaster:
    def __init__(self, events: EventStore | None = None, settings: LeaderSettings = FAST,
                 allocation: bool = True, tracer_provider: Any = None, *, limits: MasterLimits | None = None,
                 guard: Guard | None = None, credentials: grpc.ServerCredentials | None = None,
                 group_commit: GroupCommitConfig | None = None, max_workers: int = 64, delta_every: int = 0) -> None:
        """`guard` and `credentials`: a secured master (mTLS, ACL); `self.channel` is then not opened and
        clients dial `grpc_address` with their own certificates. `limits`: the master's `--limit`s.
        `delta_every`: write delta snapshots of the history every that many events (0: none)."""
        self.events = events or MemoryEventStore()
        self.sm = MasterStateMachine(self.events, delta_every=delta_every)
        self.replicator = LocalReplicator(self.sm, group_commit=group_commit)
        self.grpc_address = f"127.0.0.1:{free_port()}"
        self.master = Master(MasterIdentity("m1", "local:0", self.grpc_address), self.sm, self.replicator,
                             self.events, tracer_provider=tracer_provider, limits=limits)
        self.duties = LeaderDuties(self.master, settings,
                                   allocator=default_allocator(settings) if allocation else None)
        first_message_timeout = limits.agent_register_timeout if limits is not None else FIRST_MESSAGE_TIMEOUT
        self.server = MasterServer(OperatorService(self.master, duties=self.duties, guard=guard),
                                   agent_link=AgentLinkService(self.duties, first_message_timeout=first_message_timeout),
                                   scheduler=SchedulerService(self.duties, guard=guard), max_workers=max_workers,
                                   guard=guard, limits=limits)
        self.server.bind(self.grpc_address, credentials)
        self.secured = credentials is not None
        self.channel: grpc.Channel | None = None

    def __enter__(self) -> InProcessMaster:
        self.master.start()
        self.duties.start()
        self.server.start()
        if not self.master.wait_serving(10):
            raise TimeoutError("in-process master did not start serving")
        if not self.secured:
            self.channel = grpc.insecure_channel(self.grpc_address)
        return self

    def operator(self) -> operator_pb2_grpc.OperatorStub:
        assert self.channel is not None
        return operator_pb2_grpc.OperatorStub(self.channel)

    def agent_link(self) -> agent_pb2_grpc.AgentLinkStub:
        assert self.channel is not None
        return agent_pb2_grpc.AgentLinkStub(self.channel)

    def scheduler(self) -> scheduler_pb2_grpc.SchedulerStub:
        assert self.channel is not None
        return scheduler_pb2_grpc.SchedulerStub(self.channel)

    def state(self) -> Any:
        return self.master.read_state(lambda s: s)

    def __exit__(self, *exc: Any) -> None:
        if self.channel is not None:
            self.channel.close()
        self.server.stop(0.2)
        self.duties.stop()
        self.master.stop()
