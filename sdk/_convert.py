"""SDK values <-> `tessera.v1` protobuf, in both directions.

The gRPC transport uses the framework-side half (calls out, events in); `tessera.sdk.testing`'s gRPC face of the
fake master uses the other half (calls in, events out), which is also what lets the tests check every
conversion as a round trip. Only this module and `tessera.sdk.grpc_transport`/`tessera.sdk.testing` import protobuf.

Incoming resources are rebuilt with `Resources.from_items`, which validates them: a malformed message
raises `InvalidRequest` here rather than producing a value the scheduler cannot trust.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeAlias

from tessera.sdk.errors import InvalidRequest
from tessera.sdk.protocol import (
    AcceptCall,
    AcknowledgeCall,
    AcknowledgeManyCall,
    Call,
    CallHeader,
    DeclineCall,
    ErrorEvent,
    Event,
    GetValueCall,
    HeartbeatEvent,
    KillCall,
    KvPage,
    LeaseClaim,
    ListValuesCall,
    MessageCall,
    MessageEvent,
    OffersEvent,
    ReconcileCall,
    RescindEvent,
    ReviveCall,
    StandbyEvent,
    SubscribedEvent,
    SuppressCall,
    TeardownCall,
    UpdateEvent,
    WriteValuesCall,
)
from tessera.sdk.types import (
    CommandURI,
    ContainerInfo,
    Filters,
    FrameworkInfo,
    HealthCheck,
    HttpCheck,
    KvDelete,
    KvEntry,
    KvPut,
    KvWrite,
    Launch,
    NetworkInfo,
    Offer,
    Operation,
    PortMapping,
    Reserve,
    Resources,
    TaskInfo,
    TaskState,
    TaskStatus,
    TcpCheck,
    Unreserve,
    Volume,
)
from tessera.v1 import common_pb2, scheduler_pb2

# ---- values -------------------------------------------------------------------------------------------


def resources_to_proto(resources: Resources) -> list[common_pb2.Resource]:
    return [
        common_pb2.Resource(name=name, scalar=scalar, reservation_role=role,
                            ranges=[common_pb2.Range(begin=b, end=e) for b, e in ranges])
        for name, role, scalar, ranges in resources.items()
    ]


def resources_from_proto(items: Iterable[common_pb2.Resource]) -> Resources:
    return Resources.from_items(
        (r.name, r.reservation_role, r.scalar, [(rg.begin, rg.end) for rg in r.ranges]) for r in items
    )


def _labels(mapping: Mapping[str, str]) -> list[common_pb2.Label]:
    return [common_pb2.Label(key=k, value=v) for k, v in mapping.items()]


def _mapping(labels: Iterable[common_pb2.Label]) -> dict[str, str]:
    return {label.key: label.value for label in labels}


def info_to_proto(info: FrameworkInfo) -> common_pb2.FrameworkInfo:
    return common_pb2.FrameworkInfo(
        framework_id=info.framework_id, name=info.name, principal=info.principal, roles=list(info.roles),
        failover_timeout_seconds=info.failover_timeout, partition_aware=info.partition_aware,
        user=info.user, hostname=info.hostname, max_tasks_in_flight=info.max_tasks_in_flight,
        min_offer=resources_to_proto(info.min_offer),
    )


def info_from_proto(msg: common_pb2.FrameworkInfo) -> FrameworkInfo:
    return FrameworkInfo(
        framework_id=msg.framework_id, name=msg.name, principal=msg.principal, roles=tuple(msg.roles),
        failover_timeout=msg.failover_timeout_seconds, partition_aware=msg.partition_aware,
        user=msg.user, hostname=msg.hostname, max_tasks_in_flight=msg.max_tasks_in_flight,
        min_offer=resources_from_proto(msg.min_offer),
    )


def offer_to_proto(offer: Offer) -> common_pb2.Offer:
    return common_pb2.Offer(
        offer_id=offer.offer_id, framework_id=offer.framework_id, agent_id=offer.agent_id,
        hostname=offer.hostname, role=offer.role, resources=resources_to_proto(offer.resources),
        attributes=_labels(offer.attributes), expires_at=offer.expires_at,
    )


def offer_from_proto(msg: common_pb2.Offer) -> Offer:
    return Offer(
        offer_id=msg.offer_id, framework_id=msg.framework_id, agent_id=msg.agent_id, hostname=msg.hostname,
        role=msg.role, resources=resources_from_proto(msg.resources), attributes=_mapping(msg.attributes),
        expires_at=msg.expires_at,
    )


def task_to_proto(task: TaskInfo) -> common_pb2.TaskInfo:
    if isinstance(task.command, str):
        command = common_pb2.CommandInfo(shell=True, value=task.command)
    elif not task.command:  # a container task running its image's command
        command = common_pb2.CommandInfo(shell=False)
    else:
        # argv form: `value` is the program, `arguments` what follows it (argv[1:]), as the agent runs it.
        command = common_pb2.CommandInfo(shell=False, value=task.command[0], arguments=list(task.command[1:]))
    command.environment.extend(_labels(task.env))
    command.working_dir = task.working_dir
    command.user = task.user
    msg = common_pb2.TaskInfo(
        task_id=task.task_id, name=task.name, agent_id=task.agent_id,
        resources=resources_to_proto(task.resources), command=command,
        kill_grace_period_seconds=task.kill_grace_period, labels=_labels(task.labels),
        shutdown_delay_seconds=task.shutdown_delay,
        uris=[common_pb2.CommandURI(value=u.value, extract=u.extract, executable=u.executable,
                                    output_file=u.output_file, no_cache=u.no_cache) for u in task.uris],
    )
    if task.container is not None:
        c = task.container
        msg.container.CopyFrom(common_pb2.ContainerInfo(
            image=c.image, network=c.network, readonly_rootfs=c.readonly_rootfs, hostname=c.hostname,
            port_mappings=[common_pb2.PortMapping(container_port=m.container_port, host_port=m.host_port,
                                                  protocol=m.protocol, name=m.name) for m in c.port_mappings],
            volumes=[common_pb2.Volume(container_path=v.container_path, host_path=v.host_path, mode=v.mode)
                     for v in c.volumes],
        ))
    if task.health_check is not None:
        msg.health_check.CopyFrom(_health_check_to_proto(task.health_check))
    return msg


def _health_check_to_proto(check: HealthCheck) -> common_pb2.HealthCheck:
    msg = common_pb2.HealthCheck(
        type=common_pb2.HealthCheck.Type.ValueType(int(check.type)), delay_seconds=check.delay,
        interval_seconds=check.interval, timeout_seconds=check.timeout, grace_period_seconds=check.grace_period,
        consecutive_failures=check.consecutive_failures)
    if check.http is not None:
        msg.http.CopyFrom(common_pb2.HealthCheck.HTTPCheckInfo(port=check.http.port, path=check.http.path,
                                                               scheme=check.http.scheme,
                                                               statuses=list(check.http.statuses)))
    if check.tcp is not None:
        msg.tcp.CopyFrom(common_pb2.HealthCheck.TCPCheckInfo(port=check.tcp.port))
    command = check.command_info()
    if command is not None:
        msg.command.CopyFrom(common_pb2.CommandInfo(shell=command.shell, value=command.value,
                                                    arguments=list(command.arguments),
                                                    environment=[common_pb2.Label(key=k, value=v)
                                                                 for k, v in command.environment],
                                                    working_dir=command.working_dir))
    return msg


def _health_check_from_proto(msg: common_pb2.HealthCheck) -> HealthCheck:
    command: str | tuple[str, ...] = ""
    if msg.HasField("command"):
        c = msg.command
        command = c.value if c.shell else (c.value, *c.arguments)
    return HealthCheck(
        http=(HttpCheck(msg.http.port, msg.http.path or "/", msg.http.scheme or "http", tuple(msg.http.statuses))
              if msg.HasField("http") else None),
        tcp=TcpCheck(msg.tcp.port) if msg.HasField("tcp") else None, command=command,
        env=_mapping(msg.command.environment), working_dir=msg.command.working_dir,
        delay=msg.delay_seconds if msg.HasField("delay_seconds") else 15.0,
        interval=msg.interval_seconds if msg.HasField("interval_seconds") else 10.0,
        timeout=msg.timeout_seconds if msg.HasField("timeout_seconds") else None,
        grace_period=msg.grace_period_seconds if msg.HasField("grace_period_seconds") else 10.0,
        consecutive_failures=msg.consecutive_failures if msg.HasField("consecutive_failures") else 3,
    )


def _container_from_proto(msg: common_pb2.ContainerInfo) -> ContainerInfo:
    return ContainerInfo(
        image=msg.image, network=msg.network or "bridge", readonly_rootfs=msg.readonly_rootfs, hostname=msg.hostname,
        port_mappings=tuple(PortMapping(m.container_port, m.host_port, m.protocol or "tcp", m.name)
                            for m in msg.port_mappings),
        volumes=tuple(Volume(v.container_path, v.host_path, v.mode or "rw") for v in msg.volumes),
    )


def task_from_proto(msg: common_pb2.TaskInfo) -> TaskInfo:
    cmd = msg.command
    command: str | tuple[str, ...] = cmd.value if cmd.shell else ((cmd.value, *cmd.arguments) if cmd.value else ())
    return TaskInfo(
        task_id=msg.task_id, name=msg.name, agent_id=msg.agent_id, resources=resources_from_proto(msg.resources),
        command=command, env=_mapping(cmd.environment), kill_grace_period=msg.kill_grace_period_seconds,
        labels=_mapping(msg.labels), working_dir=cmd.working_dir, user=cmd.user,
        container=_container_from_proto(msg.container) if msg.HasField("container") else None,
        health_check=_health_check_from_proto(msg.health_check) if msg.HasField("health_check") else None,
        shutdown_delay=msg.shutdown_delay_seconds,
        uris=tuple(CommandURI(value=u.value, extract=u.extract, executable=u.executable, output_file=u.output_file,
                              no_cache=u.no_cache) for u in msg.uris),
    )


def status_to_proto(status: TaskStatus) -> common_pb2.TaskStatus:
    msg = common_pb2.TaskStatus(
        task_id=status.task_id, state=common_pb2.TaskState.ValueType(int(status.state)), message=status.message,
        reason=status.reason, agent_id=status.agent_id, uuid=status.uuid, timestamp=status.timestamp,
        framework_id=status.framework_id, data=status.data,
    )
    if status.exit_code is not None:
        msg.exit_code = status.exit_code
    if status.network is not None:
        msg.network.CopyFrom(common_pb2.NetworkInfo(name=status.network.name,
                                                    ip_addresses=list(status.network.ip_addresses)))
    if status.healthy is not None:
        msg.healthy = status.healthy
    return msg


def status_from_proto(msg: common_pb2.TaskStatus) -> TaskStatus:
    try:
        state = TaskState(msg.state)
    except ValueError:
        state = TaskState.TASK_STATE_UNKNOWN  # a state added after this SDK was built
    return TaskStatus(
        task_id=msg.task_id, state=state, message=msg.message, reason=msg.reason,
        exit_code=msg.exit_code if msg.HasField("exit_code") else None, agent_id=msg.agent_id,
        uuid=msg.uuid, timestamp=msg.timestamp, framework_id=msg.framework_id, data=msg.data,
        network=(NetworkInfo(msg.network.name, tuple(msg.network.ip_addresses)) if msg.HasField("network")
                 else None),
        healthy=msg.healthy if msg.HasField("healthy") else None,
    )


def _filters_to_proto(filters: Filters | None) -> common_pb2.Filters:
    return common_pb2.Filters(refuse_seconds=filters.refuse_seconds if filters is not None else 0.0)


def _filters_from_proto(msg: common_pb2.Filters) -> Filters | None:
    return Filters(msg.refuse_seconds) if msg.refuse_seconds > 0 else None


def operation_to_proto(op: Operation) -> scheduler_pb2.Operation:
    if isinstance(op, Launch):
        return scheduler_pb2.Operation(type=scheduler_pb2.Operation.LAUNCH,
                                       tasks=[task_to_proto(t) for t in op.tasks])
    kind = scheduler_pb2.Operation.RESERVE if isinstance(op, Reserve) else scheduler_pb2.Operation.UNRESERVE
    return scheduler_pb2.Operation(type=kind, resources=resources_to_proto(op.resources))


def operation_from_proto(msg: scheduler_pb2.Operation) -> Operation:
    if msg.type == scheduler_pb2.Operation.LAUNCH:
        return Launch(tuple(task_from_proto(t) for t in msg.tasks))
    if msg.type == scheduler_pb2.Operation.RESERVE:
        return Reserve(resources_from_proto(msg.resources))
    if msg.type == scheduler_pb2.Operation.UNRESERVE:
        return Unreserve(resources_from_proto(msg.resources))
    raise InvalidRequest(f"operations[].type: unknown operation type {msg.type}")


# ---- events -------------------------------------------------------------------------------------------


def event_to_proto(event: Event) -> scheduler_pb2.SchedulerEvent:
    E = scheduler_pb2.SchedulerEvent
    if isinstance(event, SubscribedEvent):
        return E(subscribed=scheduler_pb2.Subscribed(
            framework_id=event.framework_id, stream_id=event.stream_id,
            heartbeat_interval_seconds=event.heartbeat_interval_seconds, master=event.master,
            capabilities=list(event.capabilities), lease_term=event.lease_term))
    if isinstance(event, StandbyEvent):
        return E(standby=scheduler_pb2.Standby(
            framework_id=event.framework_id, lease_term=event.lease_term,
            heartbeat_interval_seconds=event.heartbeat_interval_seconds, master=event.master))
    if isinstance(event, OffersEvent):
        return E(offers=scheduler_pb2.Offers(offers=[offer_to_proto(o) for o in event.offers]))
    if isinstance(event, RescindEvent):
        return E(rescind=scheduler_pb2.Rescind(offer_id=event.offer_id))
    if isinstance(event, UpdateEvent):
        return E(update=scheduler_pb2.Update(status=status_to_proto(event.status)))
    if isinstance(event, MessageEvent):
        return E(message=scheduler_pb2.FrameworkMessage(agent_id=event.agent_id, data=event.data))
    if isinstance(event, HeartbeatEvent):
        return E(heartbeat=scheduler_pb2.Heartbeat())
    return E(error=scheduler_pb2.Error(message=event.message, lease_term=event.lease_term))


def event_from_proto(msg: scheduler_pb2.SchedulerEvent) -> Event | None:
    """The SDK event, or None for a kind this SDK does not know (newer master): skipped."""
    kind = msg.WhichOneof("kind")
    if kind == "subscribed":
        s = msg.subscribed
        return SubscribedEvent(s.framework_id, s.stream_id, s.heartbeat_interval_seconds, s.master,
                               tuple(s.capabilities), s.lease_term)
    if kind == "standby":
        b = msg.standby
        return StandbyEvent(b.framework_id, b.lease_term, b.heartbeat_interval_seconds, b.master)
    if kind == "offers":
        return OffersEvent(tuple(offer_from_proto(o) for o in msg.offers.offers))
    if kind == "rescind":
        return RescindEvent(msg.rescind.offer_id)
    if kind == "update":
        return UpdateEvent(status_from_proto(msg.update.status))
    if kind == "message":
        return MessageEvent(msg.message.agent_id, msg.message.data)
    if kind == "heartbeat":
        return HeartbeatEvent()
    if kind == "error":
        return ErrorEvent(msg.error.message, msg.error.lease_term)
    return None


def events_from_proto(msg: scheduler_pb2.SchedulerEvent) -> list[Event]:
    """The SDK events one stream message carries: several for `updates` (BATCHED_UPDATES), in order."""
    if msg.WhichOneof("kind") == "updates":
        return [UpdateEvent(status_from_proto(u.status)) for u in msg.updates.updates]
    event = event_from_proto(msg)
    return [] if event is None else [event]


# ---- calls --------------------------------------------------------------------------------------------

CallRequest: TypeAlias = (
    scheduler_pb2.AcceptRequest | scheduler_pb2.DeclineRequest | scheduler_pb2.ReviveRequest
    | scheduler_pb2.SuppressRequest | scheduler_pb2.KillRequest | scheduler_pb2.AcknowledgeRequest
    | scheduler_pb2.ReconcileRequest | scheduler_pb2.TeardownRequest | scheduler_pb2.MessageRequest
    | scheduler_pb2.GetValueRequest | scheduler_pb2.ListValuesRequest | scheduler_pb2.WriteValuesRequest
)

ANY_VERSION = -1  # on the wire: a write that expects whatever version the key has (the SDK's None)


def subscribe_request(info: FrameworkInfo, lease: LeaseClaim, capabilities: Iterable[str] = ()
                      ) -> scheduler_pb2.SubscribeRequest:
    return scheduler_pb2.SubscribeRequest(info=info_to_proto(info), capabilities=list(capabilities),
                                          standby=lease.standby, lease_term=lease.term)


def lease_from_request(request: scheduler_pb2.SubscribeRequest) -> LeaseClaim:
    return LeaseClaim(request.standby, request.lease_term)


def write_to_proto(write: KvWrite) -> scheduler_pb2.ValueWrite:
    version = ANY_VERSION if write.version is None else write.version
    if isinstance(write, KvDelete):
        return scheduler_pb2.ValueWrite(key=write.key, delete=True, expected_version=version)
    return scheduler_pb2.ValueWrite(key=write.key, value=write.value, expected_version=version)


def write_from_proto(msg: scheduler_pb2.ValueWrite) -> KvWrite:
    if msg.expected_version < ANY_VERSION:
        raise InvalidRequest(f"writes[].expected_version: -1 (any), 0 (absent) or a version, got {msg.expected_version}")
    version = None if msg.expected_version == ANY_VERSION else msg.expected_version
    if msg.delete:
        if msg.value:
            raise InvalidRequest("writes[].value: a delete carries no value")
        return KvDelete(msg.key, version)
    return KvPut(msg.key, msg.value, version)


def entry_to_proto(entry: KvEntry) -> scheduler_pb2.StateValue:
    return scheduler_pb2.StateValue(key=entry.key, value=entry.value, version=entry.version)


def entry_from_proto(msg: scheduler_pb2.StateValue) -> KvEntry:
    return KvEntry(msg.key, msg.value, msg.version)


def page_to_proto(page: KvPage) -> scheduler_pb2.ListValuesResponse:
    return scheduler_pb2.ListValuesResponse(values=[entry_to_proto(e) for e in page.entries], more=page.more)


def page_from_proto(msg: scheduler_pb2.ListValuesResponse) -> KvPage:
    return KvPage(tuple(entry_from_proto(v) for v in msg.values), msg.more)


def header_to_proto(header: CallHeader) -> scheduler_pb2.CallHeader:
    return scheduler_pb2.CallHeader(framework_id=header.framework_id, stream_id=header.stream_id,
                                    request_id=header.request_id)


def header_from_proto(msg: scheduler_pb2.CallHeader) -> CallHeader:
    return CallHeader(msg.framework_id, msg.stream_id, msg.request_id)


def call_to_proto(header: CallHeader, call: Call) -> tuple[str, CallRequest]:
    """(the Scheduler method name, its request) for a call."""
    h = header_to_proto(header)
    if isinstance(call, AcceptCall):
        return "Accept", scheduler_pb2.AcceptRequest(
            header=h, offer_ids=list(call.offer_ids), operations=[operation_to_proto(o) for o in call.operations],
            filters=_filters_to_proto(call.filters))
    if isinstance(call, DeclineCall):
        return "Decline", scheduler_pb2.DeclineRequest(header=h, offer_ids=list(call.offer_ids),
                                                       filters=_filters_to_proto(call.filters))
    if isinstance(call, ReviveCall):
        return "Revive", scheduler_pb2.ReviveRequest(header=h, roles=list(call.roles))
    if isinstance(call, SuppressCall):
        return "Suppress", scheduler_pb2.SuppressRequest(header=h, roles=list(call.roles))
    if isinstance(call, KillCall):
        return "Kill", scheduler_pb2.KillRequest(header=h, task_id=call.task_id,
                                                 grace_period_seconds=call.grace_period_seconds)
    if isinstance(call, AcknowledgeCall):
        return "Acknowledge", scheduler_pb2.AcknowledgeRequest(header=h, task_id=call.task_id,
                                                               agent_id=call.agent_id, uuid=call.uuid)
    if isinstance(call, AcknowledgeManyCall):
        return "Acknowledge", scheduler_pb2.AcknowledgeRequest(header=h, updates=[
            scheduler_pb2.Acknowledgement(task_id=a.task_id, agent_id=a.agent_id, uuid=a.uuid) for a in call.acks])
    if isinstance(call, ReconcileCall):
        return "Reconcile", scheduler_pb2.ReconcileRequest(header=h, task_ids=list(call.task_ids))
    if isinstance(call, TeardownCall):
        return "Teardown", scheduler_pb2.TeardownRequest(header=h)
    if isinstance(call, GetValueCall):
        return "GetValue", scheduler_pb2.GetValueRequest(header=h, key=call.key)
    if isinstance(call, ListValuesCall):
        return "ListValues", scheduler_pb2.ListValuesRequest(header=h, prefix=call.prefix, start_after=call.start_after,
                                                             limit=call.limit, keys_only=call.keys_only)
    if isinstance(call, WriteValuesCall):
        return "WriteValues", scheduler_pb2.WriteValuesRequest(header=h, writes=[write_to_proto(w) for w in call.writes])
    return "Message", scheduler_pb2.MessageRequest(header=h, agent_id=call.agent_id, data=call.data)


def call_from_proto(request: CallRequest) -> tuple[CallHeader, Call]:
    header = header_from_proto(request.header)
    call: Call
    if isinstance(request, scheduler_pb2.AcceptRequest):
        call = AcceptCall(tuple(request.offer_ids), tuple(operation_from_proto(o) for o in request.operations),
                          _filters_from_proto(request.filters))
    elif isinstance(request, scheduler_pb2.DeclineRequest):
        call = DeclineCall(tuple(request.offer_ids), _filters_from_proto(request.filters))
    elif isinstance(request, scheduler_pb2.ReviveRequest):
        call = ReviveCall(tuple(request.roles))
    elif isinstance(request, scheduler_pb2.SuppressRequest):
        call = SuppressCall(tuple(request.roles))
    elif isinstance(request, scheduler_pb2.KillRequest):
        call = KillCall(request.task_id, request.grace_period_seconds)
    elif isinstance(request, scheduler_pb2.AcknowledgeRequest) and request.updates:
        acks = [AcknowledgeCall(request.task_id, request.agent_id, request.uuid)] if request.task_id else []
        acks.extend(AcknowledgeCall(a.task_id, a.agent_id, a.uuid) for a in request.updates)
        call = AcknowledgeManyCall(tuple(acks))
    elif isinstance(request, scheduler_pb2.AcknowledgeRequest):
        call = AcknowledgeCall(request.task_id, request.agent_id, request.uuid)
    elif isinstance(request, scheduler_pb2.ReconcileRequest):
        call = ReconcileCall(tuple(request.task_ids))
    elif isinstance(request, scheduler_pb2.TeardownRequest):
        call = TeardownCall()
    elif isinstance(request, scheduler_pb2.GetValueRequest):
        call = GetValueCall(request.key)
    elif isinstance(request, scheduler_pb2.ListValuesRequest):
        call = ListValuesCall(request.prefix, request.start_after, request.limit, request.keys_only)
    elif isinstance(request, scheduler_pb2.WriteValuesRequest):
        call = WriteValuesCall(tuple(write_from_proto(w) for w in request.writes))
    else:
        call = MessageCall(request.agent_id, request.data)
    return header, call
