"""The master's intake of agents' task status updates: propose each once, acknowledge by one policy.

An agent re-sends every status update until the master acknowledges it, so intake has two rules:

- **One commit per uuid in flight.** An update whose uuid is already being committed (the agent re-sent
  it while the first commit was in flight, e.g. under load) is not proposed again: the session that
  re-sent it is acknowledged with the first commit. Every path out of a proposal releases the uuid, so
  a re-send is never left waiting for a commit that will not come.
- **A task's updates in order.** The updates of one task in one message are decided in order into one
  entry (`core.decide.decide_each`: each against the state the earlier ones leave), so an agent sends a
  task's whole pending stream at once (STARTING, RUNNING, FINISHED: one commit, not one per update). An
  update whose task has an earlier update in another commit under way is proposed as usual (it commits
  after that one), but refused as an illegal transition it is not acknowledged (`_final`): the agent
  re-sends it and it is decided again once that commit settled, so a FINISHED re-sent beside a STARTING
  still in flight is never dropped as an illegal STAGING → FINISHED.
- **One acknowledgement policy** (`ACKNOWLEDGED_REFUSALS`, asked through `acknowledges`): an update is
  acknowledged once it is committed, or once it is refused for good — malformed, unknown task, illegal
  transition, another agent's identity — so the agent stops re-sending it. Anything else (no commit,
  an unknown outcome, a refusal that may pass later) is not acknowledged: the agent re-sends. The same
  table answers for a domain error raised by `decide` and for the error code `apply` recorded.

A single update (`status_update`) is proposed under the request id `status-<uuid>`; a batch
(`status_updates`) is decided update by update and the acceptable ones committed as one entry
(`Master.propose_each_async`), answered with one acknowledgement message per session. The entry of a
batch that ends tasks may also carry the leader's offers of what they free (`follow`:
`LeaderDuties.offers_for_ended`, given when `LeaderSettings.offers_with_frees` is on), so a framework gets
them with that commit instead of one commit later; with a `follow`, a single update goes the batch's way
too, as a batch of one. When this master
is not the leader the session is closed: the agent reconnects to the leader and re-sends.

The wire is not seen here: the gRPC edge (`api.agentlink`) supplies an `IntakePort` that reads an
update's uuid and trace context, decodes its status, and sends acknowledgements.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, Generic, Protocol, TypeVar

from tessera.control_plane.core import commands as cmd
from tessera.control_plane.core.decide import Follow
from tessera.control_plane.core.errors import (
    ERRORS_BY_CODE,
    Conflict,
    InvalidRequest,
    NotFound,
    NotLeader,
    PermissionDenied,
    TesseraError,
)
from tessera.control_plane.core.values import TaskKey, TaskStatus

log = logging.getLogger(__name__)

# refusals that are final: the update is acknowledged so the agent stops re-sending it
ACKNOWLEDGED_REFUSALS: tuple[type[TesseraError], ...] = (InvalidRequest, NotFound, Conflict, PermissionDenied)
# the codes `apply` records for them, subclasses' included (a Deposed or VersionConflict is a Conflict)
_ACKNOWLEDGED_CODES = frozenset(code for code, cls in ERRORS_BY_CODE.items() if issubclass(cls, ACKNOWLEDGED_REFUSALS))


def acknowledges(outcome: TesseraError | str | None) -> bool:
    """Whether an update with this outcome is acknowledged: None (committed), a domain error, or the
    error code `apply` recorded ("" when it applied)."""
    if outcome is None or outcome == "":
        return True
    if isinstance(outcome, str):
        return outcome in _ACKNOWLEDGED_CODES
    return isinstance(outcome, ACKNOWLEDGED_REFUSALS)


U = TypeVar("U")  # one status update as it came off the wire


class Session(Protocol):
    agent_id: str
    identity: str

    def close(self) -> None: ...


S = TypeVar("S", bound=Session)


S_in = TypeVar("S_in", bound=Session, contravariant=True)
U_in = TypeVar("U_in", contravariant=True)


class IntakePort(Protocol[S_in, U_in]):
    def uuid(self, update: U_in) -> str: ...

    def traceparent(self, update: U_in) -> str: ...

    def decode(self, session: S_in, update: U_in) -> TaskStatus:
        """The update's status, for `session`'s agent; raises a domain error when it is not acceptable."""

    def acknowledge(self, session: S_in, updates: Sequence[U_in]) -> None:
        """Acknowledge `updates` to `session`'s agent (in one message when it understands that)."""


class StatusIntake(Generic[S, U]):
    def __init__(self, master: Any, port: IntakePort[S, U], follow: Follow | None = None) -> None:
        self.master = master
        self.port = port
        self.follow = follow  # the leader's offers of what a batch frees, in the batch's entry (`decide_each`)
        # status uuid -> sessions to acknowledge once the commit under way finishes
        self._inflight: dict[str, list[S]] = {}
        # tasks with an update in a commit under way (status uuid -> its task; task -> how many)
        self._task_of: dict[str, TaskKey] = {}
        self._task_commits: dict[TaskKey, int] = {}
        self._lock = threading.Lock()

    def in_flight(self) -> int:
        with self._lock:
            return len(self._inflight)

    # ---- the in-flight table ---------------------------------------------------------------------
    def _claim(self, uuid: str, session: S) -> bool:
        """True when this session is to propose the update; False when a commit of it is under way (the
        session is then acknowledged when that commit finishes)."""
        with self._lock:
            waiting = self._inflight.get(uuid)
            if waiting is None:
                self._inflight[uuid] = [session]
                return True
            if not any(s is session for s in waiting):
                waiting.append(session)
            return False

    def _release(self, uuid: str) -> list[S]:
        with self._lock:
            key = self._task_of.pop(uuid, None)
            if key is not None:
                left = self._task_commits[key] - 1
                if left:
                    self._task_commits[key] = left
                else:
                    del self._task_commits[key]
            return self._inflight.pop(uuid, [])

    def _note_commit(self, uuid: str, key: TaskKey, batch: set[TaskKey]) -> bool:
        """Note the update as in this proposal's commit; True when an earlier update of its task is in the
        commit of another proposal (it is then decided against a state that commit has not settled)."""
        with self._lock:
            behind = key not in batch and key in self._task_commits
            batch.add(key)
            self._task_of[uuid] = key
            self._task_commits[key] = self._task_commits.get(key, 0) + 1
            return behind

    @staticmethod
    def _final(outcome: TesseraError | str | None, behind: bool) -> bool:
        """Whether to acknowledge an update with this outcome: the policy (`acknowledges`), except that a
        `Conflict` (an illegal transition) of an update decided behind another commit of its task is not
        final — decided again on the agent's re-send, after that commit (a FINISHED re-sent beside a
        STARTING still in flight is not refused as STAGING -> FINISHED)."""
        if behind and outcome:
            cls = ERRORS_BY_CODE.get(outcome, TesseraError) if isinstance(outcome, str) else type(outcome)
            if issubclass(cls, Conflict):
                return False
        return acknowledges(outcome)

    # ---- one update ------------------------------------------------------------------------------
    def submit(self, session: S, update: U) -> None:
        if self.follow is not None:
            # as a batch of one: its entry carries the offers of what it frees too
            self.submit_many(session, [update])
            return
        uuid = self.port.uuid(update)
        if uuid and not self._claim(uuid, session):
            return  # re-sent while its commit is under way
        try:
            status = self.port.decode(session, update)
        except TesseraError as exc:
            self._release(uuid)
            self._refused(session, uuid, exc)
            self.port.acknowledge(session, [update])
            return
        behind = bool(uuid) and self._note_commit(uuid, TaskKey(status.framework_id, status.task_id), set())
        try:
            fut = self.master.propose_async([cmd.UpdateStatus(status=status, identity=session.identity)],
                                            request_id=f"status-{uuid}", traceparent=self.port.traceparent(update))
        except NotLeader:
            self._release(uuid)
            session.close()  # the agent reconnects to the leader and re-sends
            return
        except TesseraError as exc:
            # refused by `decide`: acknowledged when final (the agent stops retrying), and said why
            self._refused(session, uuid, exc)
            waiting = self._release(uuid) or [session]
            if self._final(exc, behind):
                for s in waiting:
                    self.port.acknowledge(s, [update])
            return
        except BaseException:
            self._release(uuid)  # never leave it marked in flight: its re-sends would wait forever
            raise
        fut.add_done_callback(lambda f: self._committed(f, session, update, behind))

    def _committed(self, fut: Future[Any], session: S, update: U, behind: bool = False) -> None:
        uuid = self.port.uuid(update)
        waiting = self._release(uuid) if uuid else [session]
        try:
            result = fut.result()
        except Exception as exc:  # noqa: BLE001 - not acknowledged: the agent re-sends
            log.info("status update %s not committed (%s); the agent will retry", uuid, exc)
            return
        if not self._final(getattr(result, "error_code", ""), behind):
            return
        for s in waiting or [session]:
            self.port.acknowledge(s, [update])

    # ---- a batch from one agent -----------------------------------------------------------------
    def submit_many(self, session: S, updates: Sequence[U]) -> None:
        """One entry for the updates that can be recorded, one acknowledgement for those refused now."""
        refused: list[U] = []
        proposed: list[U] = []
        commands: list[cmd.Command] = []
        batch: set[TaskKey] = set()
        behind: set[str] = set()
        for update in updates:
            uuid = self.port.uuid(update)
            if uuid and not self._claim(uuid, session):
                continue  # re-sent while its commit is under way (checked before decoding: retries are cheap)
            try:
                status = self.port.decode(session, update)
            except TesseraError as exc:
                self._release(uuid)
                self._refused(session, uuid, exc)
                refused.append(update)
                continue
            # a task's updates of one message are decided in order in one entry (`core.decide.decide_each`)
            if uuid and self._note_commit(uuid, TaskKey(status.framework_id, status.task_id), batch):
                behind.add(uuid)
            proposed.append(update)
            commands.append(cmd.UpdateStatus(status=status, identity=session.identity))
        if commands:
            try:
                # each update keeps its own task's trace: one entry per trace context
                fut = self.master.propose_each_async(commands, traceparents=[self.port.traceparent(u) for u in proposed],
                                                     follow=self.follow)
            except NotLeader:
                for update in proposed:
                    self._release(self.port.uuid(update))
                session.close()  # the agent reconnects to the leader and re-sends
                return
            except BaseException:
                for update in proposed:  # never leave an update marked in flight: its re-sends would wait forever
                    self._release(self.port.uuid(update))
                raise
            fut.add_done_callback(lambda f: self._batch_committed(f, session, proposed, behind))
        if refused:
            self.port.acknowledge(session, refused)

    def _batch_committed(self, fut: Future[list[TesseraError | None]], session: S, updates: list[U],
                         behind: set[str] | None = None) -> None:
        uuids = [self.port.uuid(u) for u in updates]
        waiting = [self._release(uuid) if uuid else [session] for uuid in uuids]
        try:
            outcomes = fut.result()
        except Exception as exc:  # noqa: BLE001 - not acknowledged: the agent re-sends
            log.info("%d status updates not committed (%s); the agent will retry", len(updates), exc)
            return
        acks: dict[int, tuple[S, list[U]]] = {}
        for update, uuid, outcome, sessions in zip(updates, uuids, outcomes, waiting, strict=True):
            if not self._final(outcome, uuid in (behind or ())):
                continue  # not recorded, not refused for good: the agent re-sends
            if outcome is not None:
                self._refused(session, uuid, outcome)
            for s in sessions or [session]:
                acks.setdefault(id(s), (s, []))[1].append(update)
        for s, items in acks.values():
            self.port.acknowledge(s, items)

    @staticmethod
    def _refused(session: Session, uuid: str, exc: Exception) -> None:
        log.warning("status update %s from agent %s refused: %s", uuid, session.agent_id, exc)
