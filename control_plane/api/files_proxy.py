"""The masters' proxy to the agents' file services: `Operator.ListFiles/StatFile/ReadFile/FollowFile`.

For clients that cannot reach the agents (a laptop outside the cluster network, agents that serve their
files on loopback only): the master finds the task's agent and forwards the call (docs/files.md).

- Which agent: the task's record in this master's state (live or completed), else the event log's
  `TaskLaunched` of the task (a task the state forgot). A bare task id is resolved as `tessera trace`
  does (`eventlog.timeline.resolve_task`: several frameworks using it is INVALID_ARGUMENT naming them).
  Unknown task: NOT_FOUND. The agent removed, unreachable, or serving no files: UNAVAILABLE naming it.
- Who may: the caller as the guard says (certificate kind, token), then `core.acl.check_file_read`
  against the principal this master's state records for the task's framework, before anything is
  forwarded. The agent trusts a master certificate's `Files` calls (no token is forwarded): the master is
  the one that checked.
- How: over the master's own certificate (`ClientSecurity.agent_channel`: the server must be an agent);
  one channel per agent address, at most `MAX_CHANNELS` kept. Unary calls get `FORWARD_TIMEOUT`; a
  follow is cancelled upstream when its caller goes away. The agent's status codes come back as they are;
  an agent that does not answer is UNAVAILABLE naming it.

Any master answers from its local state: the agents' addresses are replicated facts.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from tessera.control_plane.core.acl import Caller, check_file_read
from tessera.control_plane.core.errors import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    TesseraError,
    Unavailable,
)
from tessera.control_plane.core.state import ClusterState
from tessera.control_plane.core.values import AgentState, TaskKey
from tessera.control_plane.eventlog import EventFilter
from tessera.control_plane.eventlog.timeline import resolve_task
from tessera.control_plane.runtime.master import Master
from tessera.control_plane.tls import ClientSecurity
from tessera.v1 import files_pb2, files_pb2_grpc

FORWARD_TIMEOUT = 15.0
MAX_CHANNELS = 64


@dataclass(frozen=True)
class Placement:
    """Where a task's sandbox is, as this master knows it."""

    framework_id: str
    task_id: str
    owner: str | None  # the principal of its framework (None: the state does not know the framework)
    agent_id: str
    files_address: str


def place(state: ClusterState, key: TaskKey, launched_on: str | None) -> Placement:
    """The placement of task `key` (`launched_on`: its agent as the event log says, for a task the state
    forgot); raises NotFound / Unavailable (see the module docstring)."""
    task = state.tasks.get(key) or state.completed_tasks.get(key)
    agent_id = task.info.agent_id if task is not None else launched_on
    named = f"{key.framework_id}/{key.task_id}"
    if not agent_id:
        raise NotFound(f"no task {named} is known")
    framework = state.frameworks.get(key.framework_id)
    owner = framework.info.principal if framework is not None else None
    agent = state.agents.get(agent_id)
    if agent is None or agent.state is AgentState.AGENT_REMOVED:
        raise Unavailable(f"task {named} ran on agent {agent_id}, which is gone (removed); its sandbox went with it")
    if agent.state is AgentState.AGENT_UNREACHABLE:
        raise Unavailable(f"task {named} is on agent {agent_id} ({agent.info.hostname}), which is unreachable")
    if not agent.info.files_address:
        raise Unavailable(f"agent {agent_id} ({agent.info.hostname}) serves no files (--files-address off, or "
                          "its certificate cannot serve TLS: see its log)")
    return Placement(key.framework_id, key.task_id, owner, agent_id, agent.info.files_address)


class FilesProxy:
    def __init__(self, master: Master, security: ClientSecurity | None = None) -> None:
        self.master = master
        self.security = security or ClientSecurity.insecure()
        self._channels: OrderedDict[str, grpc.Channel] = OrderedDict()
        self._lock = threading.Lock()

    def locate(self, task: files_pb2.SandboxRef) -> Placement:
        if not task.task_id:
            raise InvalidRequest("task.task_id: required")
        framework_id = task.framework_id
        store = self.master.events
        if not framework_id:
            framework_id = self.master.read_state(lambda s: _only_framework(s, task.task_id))
            if not framework_id:
                framework_id, _ = resolve_task(store, task.task_id)
            if not framework_id:
                raise NotFound(f"no task {task.task_id} is known")
        key = TaskKey(framework_id, task.task_id)
        known = self.master.read_state(lambda s: key in s.tasks or key in s.completed_tasks)
        launched_on = None
        if not known:
            found = store.list(limit=1, flt=EventFilter(types=("TaskLaunched",), task_id=key.task_id,
                                                        framework_id=key.framework_id))
            launched_on = found[0].agent_id if found else None
        placement: Placement = self.master.read_state(lambda s: place(s, key, launched_on))
        return placement

    def authorize(self, caller: Caller, task: files_pb2.SandboxRef) -> tuple[Placement, files_pb2.SandboxRef]:
        """Where the task is, once `caller` may read it; the reference with its framework filled in."""
        placement = self.locate(task)
        check_file_read(caller, placement.owner)
        return placement, files_pb2.SandboxRef(framework_id=placement.framework_id, task_id=placement.task_id)

    def _stub(self, address: str) -> files_pb2_grpc.FilesStub:
        with self._lock:
            channel = self._channels.pop(address, None)
            if channel is None:
                channel = self.security.agent_channel(address)
            self._channels[address] = channel
            while len(self._channels) > MAX_CHANNELS:
                _, old = self._channels.popitem(last=False)
                old.close()
        return files_pb2_grpc.FilesStub(channel)

    def unary(self, placement: Placement, method: Callable[[files_pb2_grpc.FilesStub], Any], request: Any,
              context: grpc.ServicerContext) -> Any:
        try:
            return method(self._stub(placement.files_address))(request, timeout=FORWARD_TIMEOUT)
        except grpc.RpcError as err:
            relay(err, placement, context)

    def call(self, placement: Placement, method: Callable[[files_pb2_grpc.FilesStub], Any], request: Any) -> Any:
        """A unary call for a caller that is not a gRPC call (the web UI): the agent's refusal as the
        domain's error (`domain_error`), an agent that does not answer `Unavailable` naming it."""
        try:
            return method(self._stub(placement.files_address))(request, timeout=FORWARD_TIMEOUT)
        except grpc.RpcError as err:
            raise domain_error(err, placement) from err

    def stream(self, placement: Placement, request: files_pb2.FollowFileRequest,
               context: grpc.ServicerContext) -> Iterator[files_pb2.FollowFileResponse]:
        call = self._stub(placement.files_address).Follow(request)
        context.add_callback(call.cancel)
        try:
            yield from call
        except grpc.RpcError as err:
            if context.is_active():
                relay(err, placement, context)

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()


def _only_framework(state: ClusterState, task_id: str) -> str:
    """The framework of the one task of this id the state knows (several: "", left to the event log's
    resolution, which names them)."""
    found = {k.framework_id for k in (*state.tasks, *state.completed_tasks) if k.task_id == task_id}
    return found.pop() if len(found) == 1 else ""


def domain_error(err: grpc.RpcError, placement: Placement) -> TesseraError:
    """The agent's answer as the domain's error; what does not map is `Unavailable` naming the agent."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    mapped = {grpc.StatusCode.NOT_FOUND: NotFound, grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
              grpc.StatusCode.PERMISSION_DENIED: PermissionDenied, grpc.StatusCode.OUT_OF_RANGE: InvalidRequest}
    if code in mapped:
        return mapped[code](details or code.name)
    return Unavailable(f"agent {placement.agent_id} at {placement.files_address} does not answer "
                       f"({code.name}: {details})")


def relay(err: grpc.RpcError, placement: Placement, context: grpc.ServicerContext) -> None:
    """End the call as the agent ended it; an agent that did not answer is UNAVAILABLE naming it."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        details = (f"agent {placement.agent_id} at {placement.files_address} does not answer "
                   f"({code.name}: {details})")
        code = grpc.StatusCode.UNAVAILABLE
    context.abort(code, details)
