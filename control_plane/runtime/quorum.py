"""The quorum as the Operator API sees it: this master's view of the Raft group, and membership changes.

Owns every call the operator surface makes on the replicator (`Master.replicator`): reading its status,
adding and removing members, transferring leadership, and translating the replicator's errors into the
domain's error tree (`core.errors`), which `api.errors` maps to status codes. The gRPC servicer checks
the shape of the request (addresses) and authorizes; everything after that is here.

Membership changes are the leader's: each refuses with `NotLeader(hint)` on any other master. A change
waits at most `change_timeout` seconds for the quorum's answer; no answer is `Unavailable`, an answer
whose outcome is unknown is `Unavailable` too (the operator checks `tessera quorum status`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tessera.control_plane.core import commands as cmd
from tessera.control_plane.core.errors import Conflict, InvalidRequest, NotFound, NotLeader, Unavailable
from tessera.control_plane.replication.api import QuorumStatus
from tessera.control_plane.replication.errors import (
    NotLeaderError,
    NotSupportedError,
    QuorumChangeError,
    UnknownOutcomeError,
)

CHANGE_TIMEOUT = 15.0


@dataclass(frozen=True)
class LocalQuorum:
    """This master's view: the replicator's status, the announced masters (raft address -> (name, gRPC
    address)), the last applied event index, and the addresses to name for the leader and for itself."""

    status: QuorumStatus
    announced: Mapping[str, tuple[str, str]]
    event_index: int
    leader_grpc: str
    self_name: str
    self_grpc: str
    self_ui: str = ""  # this master's web UI URL ("" when it serves none)


class Quorum:
    """The replicator behind a master, as the operator surface uses it."""

    def __init__(self, master: Any, change_timeout: float = CHANGE_TIMEOUT) -> None:
        self.master = master
        self.change_timeout = change_timeout
        self.ui_url = ""  # set by the master process once its web UI listens (`tessera master --http`)

    def term(self) -> int:
        """The replicator's current term (what a state whose entry named none reports)."""
        return int(self.master.replicator.term())

    def local(self) -> LocalQuorum:
        st = self.master.replicator.status()
        announced = self.master.read_state(lambda s: {address: (m[0], m[1]) for address, m in s.masters.items()})
        return LocalQuorum(status=st, announced=announced, event_index=self.master.read_state(lambda s: s.seq),
                           leader_grpc=self.master.leader_grpc_hint() or "",
                           self_name=self.master.identity.name, self_grpc=self.master.identity.grpc_address,
                           self_ui=self.ui_url)

    def add_member(self, address: str) -> None:
        self._leader_only()
        if address in self._members():
            raise InvalidRequest(f"raft_address: {address} is already a member")
        self._wait(self.master.replicator.add_member(address), f"adding {address}")

    def remove_member(self, address: str) -> None:
        """Remove `address` from the group, then forget its announcement (never announced: nothing to)."""
        self._leader_only()
        if address not in self._members():
            raise InvalidRequest(f"raft_address: {address} is not a member")
        if address == self.master.identity.raft_address:
            raise InvalidRequest("raft_address: the leader cannot remove itself; transfer leadership first")
        self._wait(self.master.replicator.remove_member(address), f"removing {address}")
        try:
            self.master.propose([cmd.RemoveMaster(raft_address=address)])
        except NotFound:
            pass  # never announced: nothing recorded about it

    def transfer_leadership(self, target: str | None) -> None:
        """Hand leadership to `target` (None: the replicator picks)."""
        self._leader_only()
        self._wait(self.master.replicator.transfer_leadership(target), "leadership transfer")

    def _members(self) -> set[str]:
        return {m.address for m in self.master.replicator.status().members}

    def _leader_only(self) -> None:
        if not self.master.is_serving():
            raise NotLeader("quorum changes go to the leader", self.master.leader_grpc_hint())

    def _wait(self, fut: Any, what: str) -> None:
        try:
            fut.result(timeout=self.change_timeout)
        except TimeoutError as exc:
            raise Unavailable(f"{what}: no answer from the quorum within {self.change_timeout:g} s") from exc
        except NotSupportedError as exc:
            raise Conflict(f"{what}: {exc}") from exc
        except QuorumChangeError as exc:
            raise Conflict(f"{what} refused: {exc}") from exc
        except NotLeaderError as exc:
            raise NotLeader(f"{what}: leadership moved", self.master.leader_grpc_hint()) from exc
        except UnknownOutcomeError as exc:
            raise Unavailable(f"{what}: outcome unknown ({exc}); check `tessera quorum status`") from exc
