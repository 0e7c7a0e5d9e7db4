"""apply of a framework's key/value state (`core.framework_state`): puts and deletes.

Each handler re-checks what `decide` checked against the state the log reached: the framework is not
removed, the writer still holds the lease it was decided under (`Deposed` otherwise: another instance
took over in between), the key is at the expected version (`VersionConflict`: a competing write
committed in between), and the framework stays within its totals (writes decided apart may together
pass them). A put's key gets this event's seq as its version. A delete of an absent key with any version
expected is recorded and changes nothing, so every write of a call has its event and seq.
"""

from __future__ import annotations

from tessera.control_plane.core.apply_tx import Handler, Tx, known_framework
from tessera.control_plane.core.errors import Conflict, Deposed
from tessera.control_plane.core.events import FrameworkStateDeleted, FrameworkStatePut
from tessera.control_plane.core.framework_state import check_expected, check_expected_version, table_of
from tessera.control_plane.core.limits import (
    check_state_key,
    check_state_totals,
    check_state_value,
    utf8_length,
)
from tessera.control_plane.core.state import ClusterState, FrameworkRecord, StateEntry, StateTable, check_term
from tessera.control_plane.core.values import FrameworkState


def _writer(state: ClusterState, framework_id: object, lease_term: object, by_operator: object
            ) -> FrameworkRecord:
    fw = known_framework(state, framework_id)
    lease_term = check_term(lease_term, "lease_term")
    if fw.state is FrameworkState.FRAMEWORK_REMOVED:
        raise Conflict(f"framework {fw.framework_id} was removed")
    if by_operator is not True and lease_term != fw.lease_term:  # an operator's write is not fenced
        raise Deposed(f"the write was decided under lease term {lease_term} of framework {fw.framework_id}, "
                      f"whose lease moved to term {fw.lease_term} before it was applied", lease_term=fw.lease_term)
    return fw


def _state_put(state: ClusterState, e: FrameworkStatePut, tx: Tx) -> bool:
    fw = _writer(state, e.framework_id, e.lease_term, e.by_operator)
    key = check_state_key(e.key)
    entry_size = utf8_length(key) + check_state_value(e.value)
    expected = check_expected_version(e.expected_version)
    fid = fw.framework_id
    table = table_of(state, fid)
    check_expected(table, key, expected)
    old = table.entries.get(key)
    size = table.size + entry_size - (0 if old is None else old.size)
    check_state_totals(fid, len(table.entries) + (old is None), size)
    if fid not in state.framework_state:
        table = StateTable()
        tx.put(state.framework_state, fid, table)
    tx.put(table.entries, key, StateEntry(tx.seq(), e.value, entry_size))
    tx.assign(table, "size", size)
    return True


def _state_deleted(state: ClusterState, e: FrameworkStateDeleted, tx: Tx) -> bool:
    fw = _writer(state, e.framework_id, e.lease_term, e.by_operator)
    key = check_state_key(e.key)
    expected = check_expected_version(e.expected_version)
    fid = fw.framework_id
    table = table_of(state, fid)
    check_expected(table, key, expected)
    old = table.entries.get(key)
    if old is not None:
        tx.pop(table.entries, key)
        tx.assign(table, "size", table.size - old.size)
        if not table.entries:
            tx.pop(state.framework_state, fid)
    return True


HANDLERS: dict[type, Handler] = {
    FrameworkStatePut: _state_put,
    FrameworkStateDeleted: _state_deleted,
}
