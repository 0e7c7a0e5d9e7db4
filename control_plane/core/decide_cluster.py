"""decide of cluster and policy commands: a leader's election, masters announced and removed (the
quorum), role weights and quota (the operator's).
"""

from __future__ import annotations

from tessera.control_plane.core import commands as c
from tessera.control_plane.core.context import Context
from tessera.control_plane.core.decide_shared import Decider
from tessera.control_plane.core.errors import Conflict, InvalidRequest, NotFound
from tessera.control_plane.core.events import (
    Event,
    LeaderElected,
    MasterAdded,
    MasterRemoved,
    QuotaSet,
    RoleWeightSet,
)
from tessera.control_plane.core.state import (
    MAX_ID_LENGTH,
    MAX_WEIGHT,
    ClusterState,
    check_id,
    check_number,
    check_quota,
    check_role,
    check_text,
)


def _elect_leader(state: ClusterState, cmd: c.ElectLeader, ctx: Context) -> tuple[Event, ...]:
    if isinstance(cmd.term, bool) or not isinstance(cmd.term, int) or cmd.term < 1:
        raise InvalidRequest(f"term: must be a positive integer, got {cmd.term!r}")
    master = check_id(cmd.master, "master")
    grpc = check_text(cmd.grpc_address, "grpc_address", MAX_ID_LENGTH)
    name = check_text(cmd.name, "name", MAX_ID_LENGTH)
    if cmd.term < state.term:
        raise Conflict(f"term {cmd.term} is older than the current term {state.term}")
    if cmd.term == state.term:
        if master != state.leader:
            raise Conflict(f"term {cmd.term} already has a leader, {state.leader}")
        if (grpc, name) == (state.leader_grpc, state.leader_name):
            return ()
    return (LeaderElected(cmd.term, master, grpc, name),)


def _announce_master(state: ClusterState, cmd: c.AnnounceMaster, ctx: Context) -> tuple[Event, ...]:
    name = check_text(cmd.name, "name", MAX_ID_LENGTH)
    raft = check_id(cmd.raft_address, "raft_address")
    grpc = check_id(cmd.grpc_address, "grpc_address")
    if state.masters.get(raft) == (name, grpc):
        return ()
    return (MasterAdded(name, raft, grpc),)


def _remove_master(state: ClusterState, cmd: c.RemoveMaster, ctx: Context) -> tuple[Event, ...]:
    raft = check_id(cmd.raft_address, "raft_address")
    if raft not in state.masters:
        raise NotFound(f"master {raft} is not known")
    if raft == state.leader:
        raise Conflict(f"master {raft} is the leader; transfer leadership first")
    return (MasterRemoved(raft),)


def _set_role_weight(state: ClusterState, cmd: c.SetRoleWeight, ctx: Context) -> tuple[Event, ...]:
    role = check_role(cmd.role)
    weight = check_number(cmd.weight, "weight", positive=True, maximum=MAX_WEIGHT)
    return (RoleWeightSet(role, weight),)


def _set_quota(state: ClusterState, cmd: c.SetQuota, ctx: Context) -> tuple[Event, ...]:
    role = check_role(cmd.role)
    guarantee, limit = check_quota(cmd.guarantee, cmd.limit)
    return (QuotaSet(role, guarantee, limit),)


DECIDERS: dict[type, Decider] = {
    c.ElectLeader: _elect_leader,
    c.AnnounceMaster: _announce_master,
    c.RemoveMaster: _remove_master,
    c.SetRoleWeight: _set_role_weight,
    c.SetQuota: _set_quota,
}
