"""One master in this process over the in-memory twins (LocalReplicator, MemoryEventStore), serving
the real gRPC API on a free 127.0.0.1 port. Fast tests of everything above replication use it."""

from __future__ import annotations

from typing import Any

import grpc
from tessera.v1 import operator_pb2_grpc

from control_plane.api.operator import OperatorService
from control_plane.api.server import MasterServer
from control_plane.eventlog import EventStore, MemoryEventStore
from control_plane.replication import LocalReplicator
from control_plane.runtime.master import Master, MasterIdentity
from control_plane.runtime.statemachine import MasterStateMachine
from tests.support.cluster import free_port


class InProcessMaster:
    def __init__(self, events: EventStore | None = None) -> None:
        self.events = events or MemoryEventStore()
        self.sm = MasterStateMachine(self.events)
        self.replicator = LocalReplicator(self.sm)
        self.grpc_address = f"127.0.0.1:{free_port()}"
        self.master = Master(MasterIdentity("m1", "local:0", self.grpc_address), self.sm, self.replicator,
                             self.events)
        self.server = MasterServer(OperatorService(self.master), max_workers=16)
        self.server.bind(self.grpc_address)
        self.channel: grpc.Channel | None = None

    def __enter__(self) -> InProcessMaster:
        self.master.start()
        self.server.start()
        if not self.master.wait_serving(10):
            raise TimeoutError("in-process master did not start serving")
        self.channel = grpc.insecure_channel(self.grpc_address)
        return self

    def operator(self) -> operator_pb2_grpc.OperatorStub:
        assert self.channel is not None
        return operator_pb2_grpc.OperatorStub(self.channel)

    def __exit__(self, *exc: Any) -> None:
        if self.channel is not None:
            self.channel.close()
        self.server.stop(0.2)
        self.master.stop()
