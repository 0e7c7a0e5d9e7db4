"""runtime.quorum: the operator surface's calls on the replicator — the leader-only rule, the member
checks, and every replicator error translated into the domain's error tree — over a scripted replicator."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest

from tessera.control_plane.core import commands as cmd
from tessera.control_plane.core.errors import Conflict, InvalidRequest, NotFound, NotLeader, Unavailable
from tessera.control_plane.replication.api import MemberStatus, QuorumStatus
from tessera.control_plane.replication.errors import (
    NotLeaderError,
    NotSupportedError,
    QuorumChangeError,
    UnknownOutcomeError,
)
from tessera.control_plane.runtime.quorum import Quorum

SELF, PEER, NEW = "10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"


def _future(outcome: BaseException | None = None) -> Future[Any]:
    fut: Future[Any] = Future()
    if outcome is None:
        fut.set_result(None)
    else:
        fut.set_exception(outcome)
    return fut


class Replicator:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.outcome: BaseException | None = None

    def term(self) -> int:
        return 7

    def status(self) -> QuorumStatus:
        return QuorumStatus(self_address=SELF, leader=SELF, term=7, commit_index=40, last_applied=39,
                            has_quorum=True, log_len=12, members=(
                                MemberStatus(SELF, True, 40, True), MemberStatus(PEER, False, None, False)))

    def _change(self, name: str, arg: Any) -> Future[Any]:
        self.calls.append((name, arg))
        return _future(self.outcome)

    def add_member(self, address: str) -> Future[Any]:
        return self._change("add", address)

    def remove_member(self, address: str) -> Future[Any]:
        return self._change("remove", address)

    def transfer_leadership(self, address: str | None = None) -> Future[Any]:
        return self._change("transfer", address)


class Master:
    def __init__(self) -> None:
        self.replicator = Replicator()
        self.identity = SimpleNamespace(name="m1", raft_address=SELF, grpc_address="10.0.0.1:5050")
        self.serving = True
        self.proposed: list[Any] = []
        self.refuse: Exception | None = None
        self.state = SimpleNamespace(seq=123, masters={PEER: ("m2", "10.0.0.2:5050")})

    def is_serving(self) -> bool:
        return self.serving

    def leader_grpc_hint(self) -> str:
        return "10.0.0.1:5050"

    def read_state(self, fn: Any) -> Any:
        return fn(self.state)

    def propose(self, commands: list[Any], **_: Any) -> Any:
        self.proposed.extend(commands)
        if self.refuse is not None:
            raise self.refuse


@pytest.fixture
def master() -> Master:
    return Master()


def test_changes_go_to_the_leader_only(master: Master) -> None:
    master.serving = False
    q = Quorum(master)
    for change in (lambda: q.add_member(NEW), lambda: q.remove_member(PEER), lambda: q.transfer_leadership(None)):
        with pytest.raises(NotLeader) as info:
            change()
        assert info.value.leader_hint == "10.0.0.1:5050"
    assert master.replicator.calls == []


def test_members_are_checked_before_the_replicator_is_asked(master: Master) -> None:
    q = Quorum(master)
    with pytest.raises(InvalidRequest, match="already a member"):
        q.add_member(PEER)
    with pytest.raises(InvalidRequest, match="is not a member"):
        q.remove_member(NEW)
    with pytest.raises(InvalidRequest, match="cannot remove itself"):
        q.remove_member(SELF)
    assert master.replicator.calls == []


def test_a_removed_member_is_forgotten_and_one_never_announced_is_fine(master: Master) -> None:
    q = Quorum(master)
    q.remove_member(PEER)
    assert master.replicator.calls == [("remove", PEER)]
    assert master.proposed == [cmd.RemoveMaster(raft_address=PEER)]
    master.refuse = NotFound("never announced")
    q.remove_member(PEER)  # not raised


@pytest.mark.parametrize(("raised", "expected", "text"), [
    (TimeoutError(), Unavailable, "no answer from the quorum within 15 s"),
    (NotSupportedError("single-node"), Conflict, "single-node"),
    (QuorumChangeError("a change is under way"), Conflict, "refused"),
    (NotLeaderError("10.0.0.2:7000"), NotLeader, "leadership moved"),
    (UnknownOutcomeError("timeout"), Unavailable, "tessera quorum status"),
])
def test_each_replicator_error_is_one_domain_error(master: Master, raised: BaseException,
                                                   expected: type[Exception], text: str) -> None:
    master.replicator.outcome = raised
    with pytest.raises(expected, match=text):
        Quorum(master).add_member(NEW)
    with pytest.raises(expected, match="leadership transfer"):
        Quorum(master).transfer_leadership(PEER)


def test_the_local_view_names_announced_members_and_this_master(master: Master) -> None:
    view = Quorum(master).local()
    assert view.status.term == 7 and view.event_index == 123
    assert dict(view.announced) == {PEER: ("m2", "10.0.0.2:5050")}
    assert (view.self_name, view.self_grpc, view.leader_grpc) == ("m1", "10.0.0.1:5050", "10.0.0.1:5050")
    from tessera.control_plane.codec.operator_api import quorum_to_proto

    resp = quorum_to_proto(view)
    me, peer = resp.members
    assert me.is_self and me.is_leader and me.name == "m1" and me.event_index == 123 and me.reachable
    assert peer.name == "m2" and peer.grpc_address == "10.0.0.2:5050" and not peer.connected
