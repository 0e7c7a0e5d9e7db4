"""What a test makes happen to a `FakeMaster`'s connections and frameworks: messages and heartbeats on
the streams, a dropped stream, a leader failover, a master that is down, a removed framework, and
`fail_next(CallType, error, after_apply=)`, which makes the next such call fail before it is applied
or after (the answer lost), to test idempotent retries."""

from __future__ import annotations

from typing import Any

from tessera.control_plane.core.lifecycle import is_terminal
from tessera.sdk.errors import Conflict, NotLeader, TesseraError, Unavailable
from tessera.sdk.protocol import ErrorEvent, HeartbeatEvent, MessageEvent
from tessera.sdk.testing.leases import _LeaseBook
from tessera.sdk.testing.state import _Fault, _Framework
from tessera.sdk.types import TaskState


class _FaultControls(_LeaseBook):
    """Streams, leadership and fault injection (a layer of `FakeMaster`)."""

    # ---- frameworks and faults ----------------------------------------------------------------------------
    def send_message(self, framework_id: str, agent_id: str, data: bytes) -> None:
        with self._cond:
            stream = self._frameworks[framework_id].stream
            if stream is None:
                raise Conflict(f"framework {framework_id} is not connected")
            stream.push(MessageEvent(agent_id, data))

    def heartbeat(self) -> None:
        """Send a heartbeat on every open stream (standbys' too)."""
        with self._cond:
            for fw in self._frameworks.values():
                if fw.stream is not None:
                    fw.stream.push(HeartbeatEvent())
            for waiting in self._standbys:
                waiting.stream.push(HeartbeatEvent())

    def drop_stream(self, framework_id: str | None = None, error: TesseraError | None = None, *,
                    standbys: bool = False) -> None:
        """Break the connection of one framework (all when None): its stream ends with `error`
        (default: Unavailable), its offers are void, it keeps its tasks and may re-subscribe; the takeover
        delay of its lease starts (`advance` past it and a waiting standby takes over). `standbys`: end
        its waiting standbys' streams too."""
        with self._cond:
            ending = error if error is not None else Unavailable("connection to the master lost")
            if standbys:
                for waiting in [w for w in self._standbys if framework_id in (None, w.stream.framework_id)]:
                    self._standbys.remove(waiting)
                    waiting.stream.end(ending)
            for fw in list(self._frameworks.values()):
                if framework_id not in (None, fw.framework_id) or fw.stream is None:
                    continue
                stream, fw.stream = fw.stream, None
                stream.end(ending)
                self._disconnected(fw)
            self._changed()

    def failover(self, new_leader: str | None = None) -> str:
        """Another master leads: every stream ends with NotLeader naming it, offers are void, calls to
        the old leader are redirected. Returns the new leader's address."""
        with self._cond:
            if new_leader is None:
                i = self.addresses.index(self.leader)
                new_leader = self.addresses[(i + 1) % len(self.addresses)]
            if new_leader not in self.addresses:
                raise ValueError(f"{new_leader} is not one of {self.addresses}")
            old, self.leader = self.leader, new_leader
            self.drop_stream(error=NotLeader(f"{old} stopped leading", new_leader), standbys=True)
            return new_leader

    def set_down(self, address: str, down: bool = True) -> None:
        """Make a master unreachable (calls and subscriptions fail with Unavailable) or reachable."""
        with self._cond:
            if down:
                self._down.add(address)
                for waiting in [w for w in self._standbys if w.address == address]:
                    self._standbys.remove(waiting)
                    waiting.stream.end(Unavailable("connection to the master lost"))
                for fw in list(self._frameworks.values()):
                    if fw.stream is not None and fw.stream.address == address:
                        self.drop_stream(fw.framework_id)
            else:
                self._down.discard(address)
            self._changed()

    def add_address(self, address: str, *, leader: bool = False) -> None:
        with self._cond:
            if address not in self.addresses:
                self.addresses.append(address)
            if leader:
                self.leader = address

    def remove_framework(self, framework_id: str, message: str = "removed by the operator") -> None:
        """Remove a framework: its live tasks are killed, it gets an Error event, its stream ends, and a
        re-subscription with its id is refused (Conflict)."""
        with self._cond:
            fw = self._frameworks[framework_id]
            self._remove(fw, message)
            if fw.stream is not None:
                stream, fw.stream = fw.stream, None
                stream.push(ErrorEvent(message))
                stream.end(None)
            self._promote_standbys()
            self._changed()

    def _remove(self, fw: _Framework, why: str) -> None:
        fw.removed = why
        self._retire_offers_of(fw.framework_id, "framework removed")
        for task in self._tasks.values():
            if task.framework_id == fw.framework_id and not is_terminal(task.state):
                task.kill_requested = True
                self._update(task, TaskState.TASK_KILLED, message="framework removed")
        fw.unacked.clear()
        fw.kv.clear()  # its key/value state goes with it
        self._allocate_if_auto()

    def fail_next(self, kind: type[Any], error: TesseraError, *, after_apply: bool = False) -> None:
        """The next call of type `kind` (e.g. `AcceptCall`) fails with `error`, before it is applied or
        (`after_apply=True`: the answer is lost) after."""
        with self._cond:
            self._faults.append(_Fault(kind, error, after_apply))
