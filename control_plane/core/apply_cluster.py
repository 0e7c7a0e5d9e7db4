"""apply of the cluster's events: the leader's election, masters added and removed."""

from __future__ import annotations

from tessera.control_plane.core.apply_tx import Handler, Tx
from tessera.control_plane.core.errors import Conflict, InvalidRequest, NotFound
from tessera.control_plane.core.events import LeaderElected, MasterAdded, MasterRemoved
from tessera.control_plane.core.state import MAX_ID_LENGTH, ClusterState, check_id, check_term, check_text


def _leader_elected(state: ClusterState, e: LeaderElected, tx: Tx) -> bool:
    term = check_term(e.term)
    if term < 1:
        raise InvalidRequest("term: a leader is elected in term 1 or later")
    master = check_id(e.master, "master")
    grpc = check_text(e.grpc_address, "grpc_address", MAX_ID_LENGTH)
    name = check_text(e.name, "name", MAX_ID_LENGTH)
    if term < state.term:
        raise Conflict(f"term {term} is older than the current term {state.term}")
    if term == state.term and state.leader and master != state.leader:
        raise Conflict(f"term {term} already has a leader, {state.leader}")
    tx.assign(state, "term", term)
    tx.assign(state, "leader", master)
    tx.assign(state, "leader_grpc", grpc)
    tx.assign(state, "leader_name", name)
    return True


def _master_added(state: ClusterState, e: MasterAdded, tx: Tx) -> bool:
    name = check_text(e.name, "name", MAX_ID_LENGTH)
    raft = check_id(e.raft_address, "raft_address")
    grpc = check_id(e.grpc_address, "grpc_address")
    tx.put(state.masters, raft, (name, grpc))
    return True


def _master_removed(state: ClusterState, e: MasterRemoved, tx: Tx) -> bool:
    raft = check_id(e.raft_address, "raft_address")
    if raft not in state.masters:
        raise NotFound(f"master {raft} is not known")
    tx.pop(state.masters, raft)
    return True


HANDLERS: dict[type, Handler] = {
    LeaderElected: _leader_elected,
    MasterAdded: _master_added,
    MasterRemoved: _master_removed,
}
