"""A framework's key/value state as the Scheduler API serves it (`core.framework_state`).

Reads (`read_value`, `list_values`) answer from this master's applied state, on the serving leader only
(NotLeader otherwise), so a framework reads its own writes: a write returns once its entry is applied
here. They check what every scheduler call checks: the framework exists, is not removed, and a stream id
given is its current one (`Deposed` otherwise).

`write_values` commits one `WriteFrameworkState` (all writes in one entry) and returns each write's new
version: a put's is the seq of its event, and the events of one entry have consecutive seqs in the order
of the writes, so a retry answered from the log's memory of its request id gets the same versions. A
`VersionConflict` found when the entry was applied (a competing write committed in between) comes back
with the key that failed and its version now, as one found by `decide` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tessera.control_plane.core import commands as cmd
from tessera.control_plane.core.decide_shared import calling_framework
from tessera.control_plane.core.errors import NotLeader, VersionConflict
from tessera.control_plane.core.framework_state import (
    ABSENT,
    ANY_VERSION,
    Page,
    get,
    listing,
    table_of,
    version_of,
)
from tessera.control_plane.core.state import ClusterState, StateEntry

__all__ = ["list_values", "read_value", "write_values"]


def _serving(master: Any) -> None:
    if not master.is_serving():
        raise NotLeader("framework state is read from the leader", master.leader_grpc_hint())


def read_value(master: Any, framework_id: str, stream_id: str, key: str) -> StateEntry | None:
    _serving(master)

    def read(state: ClusterState) -> StateEntry | None:
        fw = calling_framework(state, framework_id, stream_id)
        return get(state, fw.framework_id, key)

    result: StateEntry | None = master.read_state(read)
    return result


def list_values(master: Any, framework_id: str, stream_id: str, prefix: str, start_after: str, limit: int) -> Page:
    _serving(master)

    def read(state: ClusterState) -> Page:
        fw = calling_framework(state, framework_id, stream_id)
        return listing(state, fw.framework_id, prefix, start_after, limit)

    page: Page = master.read_state(read)
    return page


def write_values(master: Any, framework_id: str, stream_id: str, writes: Sequence[cmd.StateWrite], *,
                 request_id: str = "", traceparent: str = "", operator: str | None = None) -> list[int]:
    """`operator` (a principal, "" without an ACL): an operator's write, not fenced by the lease."""
    command = cmd.WriteFrameworkState(framework_id=framework_id, writes=tuple(writes), stream_id=stream_id,
                                      by_operator=operator is not None, operator=operator or "")
    try:
        result = master.propose([command], request_id=request_id, traceparent=traceparent)
    except VersionConflict as exc:
        if exc.key is not None:
            raise
        raise _located(master, command, exc) from None
    return [0 if write.delete else result.first_seq + n for n, write in enumerate(command.writes)]


def _located(master: Any, command: cmd.WriteFrameworkState, exc: VersionConflict) -> VersionConflict:
    """The conflict `apply` recorded, with the first write whose expectation fails now and its version."""
    def find(state: ClusterState) -> tuple[str, int] | None:
        table = table_of(state, command.framework_id)
        for write in command.writes:
            current = version_of(table, write.key)
            if write.expected_version not in (ANY_VERSION, current):
                return write.key, current
        return None

    found = master.read_state(find)
    if found is None:
        return exc
    key, current = found
    now = "absent" if current == ABSENT else f"at version {current}"
    return VersionConflict(f"{exc.message} (key {key!r} is {now} now)", key=key, current_version=current)
