"""decide of writes to a framework's key/value state (`core.framework_state`): one `WriteFrameworkState`
becomes one `FrameworkStatePut` or `FrameworkStateDeleted` per write, committed in one entry, so they
apply together or not at all.

Refused, with nothing written: a caller that is not the instance holding the framework's lease (no
stream id: InvalidRequest; another stream: `Deposed`) unless it is an operator (`by_operator`: not fenced
by the lease, the versions are still checked), malformed or oversized keys, values and calls and a
framework over its totals (InvalidRequest naming the limit, `core.limits`), a key named twice
(InvalidRequest), a key not at the version a write expects (`VersionConflict` with its current version).
"""

from __future__ import annotations

from tessera.control_plane.core import commands as c
from tessera.control_plane.core.context import Context
from tessera.control_plane.core.decide_shared import Decider, calling_framework
from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.events import Event, FrameworkStateDeleted, FrameworkStatePut
from tessera.control_plane.core.framework_state import check_expected, check_expected_version, table_of
from tessera.control_plane.core.limits import (
    MAX_STATE_WRITES,
    check_state_key,
    check_state_totals,
    check_state_value,
    check_state_write_size,
    utf8_length,
)
from tessera.control_plane.core.state import ClusterState


def _write_framework_state(state: ClusterState, cmd: c.WriteFrameworkState, ctx: Context) -> tuple[Event, ...]:
    if cmd.by_operator is not False and cmd.by_operator is not True:
        raise InvalidRequest("by_operator: must be a bool")
    if cmd.by_operator and cmd.stream_id:
        raise InvalidRequest("stream_id: an operator's write names no stream")
    if not isinstance(cmd.operator, str) or len(cmd.operator) > 128:
        raise InvalidRequest("operator: a principal of at most 128 characters")
    fw = calling_framework(state, cmd.framework_id, cmd.stream_id)
    if not cmd.stream_id and not cmd.by_operator:
        raise InvalidRequest("stream_id: a framework's state is written by the instance holding its lease; "
                             "give that instance's stream id")
    writes = cmd.writes
    if not isinstance(writes, tuple) or not writes:
        raise InvalidRequest("writes: give at least one write")
    if len(writes) > MAX_STATE_WRITES:
        check_state_write_size(len(writes), 0)
    fid = fw.framework_id
    table = table_of(state, fid)
    keys, size, length = len(table.entries), table.size, 0
    seen: set[str] = set()
    events: list[Event] = []
    for n, write in enumerate(writes):
        what = f"writes[{n}]"
        if not isinstance(write, c.StateWrite):
            raise InvalidRequest(f"{what}: must be a StateWrite")
        key = check_state_key(write.key, f"{what}.key")
        if key in seen:
            raise InvalidRequest(f"{what}.key: {key!r} is written twice in one call")
        seen.add(key)
        if not isinstance(write.delete, bool):
            raise InvalidRequest(f"{what}.delete: must be a bool")
        expected = check_expected_version(write.expected_version, f"{what}.expected_version")
        old = table.entries.get(key)
        if write.delete:
            if write.value:
                raise InvalidRequest(f"{what}.value: a delete carries no value")
            check_expected(table, key, expected)
            if old is not None:
                keys, size = keys - 1, size - old.size
            length += utf8_length(key)
            events.append(FrameworkStateDeleted(fid, key, expected, fw.lease_term, cmd.by_operator, cmd.operator))
            continue
        entry_size = utf8_length(key) + check_state_value(write.value, f"{what}.value")
        check_expected(table, key, expected)
        keys, size = keys + (old is None), size + entry_size - (0 if old is None else old.size)
        length += entry_size
        events.append(FrameworkStatePut(fid, key, write.value, expected, fw.lease_term, cmd.by_operator,
                                         cmd.operator))
    check_state_write_size(len(writes), length)
    check_state_totals(fid, keys, size)
    return tuple(events)


DECIDERS: dict[type, Decider] = {
    c.WriteFrameworkState: _write_framework_state,
}
