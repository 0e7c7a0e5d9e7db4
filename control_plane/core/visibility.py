"""What a reader may see of each framework's tasks: the redaction decision, as pure functions.

The read calls (`GetState`, `ListEvents`, `WatchEvents`, `GetStateAt`, `GetTrace`) need the `read`
action. What they show of a task depends on whose it is:

- a principal sees the tasks of frameworks recorded under its own principal in full;
- a principal whose grant also lists `read_all` sees every task in full (Mesos: `view_frameworks` /
  `view_tasks` for any principal);
- a caller without a principal — no ACL (insecure development mode, or TLS without an ACL) — sees
  everything;
- of every other task (another principal's, or one whose framework the state no longer knows) it sees a
  redacted copy.

Redacted are what a task's author may put secrets in, by value, keeping the shape:

- the command's `value` (the shell line or the executable) and each of its `arguments`;
- the value of each environment variable (the names stay, so "it sets DB_PASSWORD" is visible, not
  the password);
- the value of each task label (the keys stay);
- a status update's `data` (the tail of the task's output, which may print any of the above);
- the values of a framework's key/value state (`core.framework_state`: a framework's own records, such
  as app definitions with their environment), in `GetFrameworkState` and in `FrameworkStatePut` events
  (keys, versions and sizes stay);
- in traces, every span attribute but the ones Tessera itself writes (`SAFE_SPAN_ATTRIBUTES`).

Everything else stays: ids, names, resources, the command's user, working directory and shell flag,
states, status messages and reasons, the framework's info, agents, offers, roles, times, event types and
trace ids. A redacted value reads `REDACTED`; an empty value stays empty (there was nothing to hide).

The functions here work on the core's values (`TaskInfo`, `TaskStatus`) and on the JSON form of events
(`codec.to_jsonable`: a task is `{"command": {"value", "arguments": [...], "environment": {name: value}},
"labels": {key: value}, ...}`), so the event log's stored payloads are redacted the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tessera.control_plane.core.acl import Caller
from tessera.control_plane.core.state import ClusterState
from tessera.control_plane.core.values import CommandInfo, TaskInfo, TaskStatus

READ_ALL = "read_all"
REDACTED = "<redacted>"
# Span attributes Tessera's own code sets; none carries a command, an environment or a label.
SAFE_SPAN_ATTRIBUTES = frozenset({
    "tessera.task_id", "tessera.task_state", "tessera.event_index", "tessera.entry_bytes",
    "tessera.batch_entries", "raft.term", "raft.index", "rpc.method", "rpc.service", "rpc.system",
    "rpc.grpc.status_code",
})


@dataclass(frozen=True, slots=True)
class Visibility:
    """Which tasks a reader sees in full: all of them, or those of frameworks under `principal`."""

    principal: str | None
    sees_all: bool

    def sees_in_full(self, owner: str | None) -> bool:
        """Whether a task of a framework recorded under principal `owner` (None: unknown) is shown in full."""
        return self.sees_all or (owner is not None and owner == self.principal)


FULL = Visibility(None, sees_all=True)


def visibility_for(caller: Caller) -> Visibility:
    """What the caller of a read call sees (no grant: no ACL in force, so everything)."""
    grant = caller.grant
    if grant is None:
        return FULL
    return Visibility(grant.principal, sees_all=READ_ALL in grant.actions)


def framework_owners(state: ClusterState) -> dict[str, str]:
    """framework id -> the principal it was recorded under, for every framework the state knows."""
    return {framework_id: f.info.principal for framework_id, f in state.frameworks.items()}


def _hide(value: str) -> str:
    return REDACTED if value else value


def redact_command(command: CommandInfo) -> CommandInfo:
    return dataclasses.replace(
        command, value=_hide(command.value), arguments=tuple(_hide(a) for a in command.arguments),
        environment=tuple((name, _hide(value)) for name, value in command.environment))


def redact_task(task: TaskInfo) -> TaskInfo:
    """The task as another tenant sees it."""
    return dataclasses.replace(task, command=redact_command(task.command),
                               labels=tuple((key, _hide(value)) for key, value in task.labels))


def redact_status(status: TaskStatus) -> TaskStatus:
    """A status update as another tenant sees it: without the task's output."""
    return dataclasses.replace(status, data=b"") if status.data else status


def _redact_json_task(task: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(task)
    command = task.get("command")
    if isinstance(command, Mapping):
        c = dict(command)
        if isinstance(c.get("value"), str):
            c["value"] = _hide(c["value"])
        if isinstance(c.get("arguments"), list):
            c["arguments"] = [_hide(a) if isinstance(a, str) else REDACTED for a in c["arguments"]]
        if isinstance(c.get("environment"), Mapping):
            c["environment"] = {k: _hide(v) if isinstance(v, str) else REDACTED for k, v in c["environment"].items()}
        out["command"] = c
    if isinstance(task.get("labels"), Mapping):
        out["labels"] = {k: _hide(v) if isinstance(v, str) else REDACTED for k, v in task["labels"].items()}
    return out


def redact_state_value(value: str) -> str:
    """A framework-state value as another tenant sees it."""
    return _hide(value)


def redact_event_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """An event's JSON form as another tenant sees it: the task it carries (`TaskLaunched.task`), the
    status' output (`TaskStatusUpdated.status.data`) and a framework-state value (`FrameworkStatePut.value`)
    redacted; every other field as it was."""
    out = dict(payload)
    if isinstance(payload.get("key"), str) and "value" in payload:
        value = payload["value"]
        out["value"] = _hide(value) if isinstance(value, str) else REDACTED
    task = payload.get("task")
    if isinstance(task, Mapping):
        out["task"] = _redact_json_task(task)
    status = payload.get("status")
    if isinstance(status, Mapping) and status.get("data"):
        out["status"] = {**status, "data": ""}
    return out


def redact_span_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """A span's attributes as another tenant sees them: Tessera's own kept, every other value hidden."""
    return {k: v if k in SAFE_SPAN_ATTRIBUTES else REDACTED for k, v in attributes.items()}
