"""runtime.agent_intake: one commit per status uuid in flight, and one acknowledgement policy for a
single update and for a batch — without gRPC, threads or a replicator (a scripted master, futures the
test resolves)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest

from tessera.control_plane.core import commands as cmd
from tessera.control_plane.core.errors import (
    ERRORS_BY_CODE,
    Conflict,
    InvalidRequest,
    NotFound,
    NotLeader,
    PermissionDenied,
    ResourceExhausted,
    TesseraError,
    Unavailable,
)
from tessera.control_plane.core.state import ApplyResult
from tessera.control_plane.core.values import TaskState, TaskStatus
from tessera.control_plane.runtime.agent_intake import ACKNOWLEDGED_REFUSALS, StatusIntake, acknowledges


@dataclass(frozen=True)
class Update:
    uuid: str
    task_id: str = "t-1"
    malformed: bool = False
    traceparent: str = ""


@dataclass(eq=False)
class Session:
    agent_id: str = "agent-1"
    identity: str = "a1"
    closed: bool = False
    acked: list[list[str]] = field(default_factory=list)  # one list per acknowledgement message

    def close(self) -> None:
        self.closed = True


class Port:
    def uuid(self, update: Update) -> str:
        return update.uuid

    def traceparent(self, update: Update) -> str:
        return update.traceparent

    def decode(self, session: Session, update: Update) -> TaskStatus:
        if update.malformed:
            raise InvalidRequest("malformed")
        return TaskStatus(task_id=update.task_id, state=TaskState.TASK_RUNNING, uuid=update.uuid,
                          agent_id=session.agent_id, framework_id="fw-1")

    def acknowledge(self, session: Session, updates: Sequence[Update]) -> None:
        session.acked.append([u.uuid for u in updates])


class ScriptedMaster:
    """`propose_async` / `propose_each_async` return futures the test resolves; `refuse` raises at once."""

    def __init__(self) -> None:
        self.proposed: list[tuple[list[cmd.Command], str, str]] = []
        self.futures: list[Future[Any]] = []
        self.refuse: TesseraError | None = None

    def _propose(self, commands: list[cmd.Command], request_id: str, traceparent: str) -> Future[Any]:
        if self.refuse is not None:
            raise self.refuse
        self.proposed.append((list(commands), request_id, traceparent))
        fut: Future[Any] = Future()
        self.futures.append(fut)
        return fut

    def propose_async(self, commands: list[cmd.Command], *, request_id: str = "", traceparent: str = "") -> Future[Any]:
        return self._propose(commands, request_id, traceparent)

    def propose_each_async(self, commands: list[cmd.Command], *, traceparent: str = "",
                           traceparents: list[str] | None = None, follow: Any = None) -> Future[Any]:
        return self._propose(commands, "", traceparent or next((t for t in traceparents or () if t), ""))


@pytest.fixture
def master() -> ScriptedMaster:
    return ScriptedMaster()


@pytest.fixture
def intake(master: ScriptedMaster) -> StatusIntake[Any, Any]:
    return StatusIntake(master, Port())


def test_an_update_is_proposed_under_its_uuid_and_acknowledged_after_commit(master, intake) -> None:
    s = Session()
    intake.submit(s, Update("u-1", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01"))
    (commands, request_id, traceparent), = master.proposed
    assert request_id == "status-u-1" and traceparent.startswith("00-aaaa")
    assert commands == [cmd.UpdateStatus(status=Port().decode(s, Update("u-1")), identity="a1")]
    assert s.acked == []  # never before its commit
    master.futures[0].set_result(ApplyResult("applied"))
    assert s.acked == [["u-1"]]
    assert intake.in_flight() == 0


def test_a_resend_while_its_commit_is_in_flight_is_not_proposed_again_and_both_sessions_are_acknowledged(
        master, intake) -> None:
    first, second = Session(), Session()
    intake.submit(first, Update("u-1"))
    intake.submit(first, Update("u-1"))  # the same session again: remembered once
    intake.submit(second, Update("u-1"))  # the agent reconnected and re-sent it
    intake.submit_many(second, [Update("u-1")])
    assert len(master.proposed) == 1
    master.futures[0].set_result(ApplyResult("applied"))
    assert first.acked == [["u-1"]] and second.acked == [["u-1"]]


def test_an_update_not_committed_is_not_acknowledged_and_its_resend_is_proposed_again(master, intake) -> None:
    s = Session()
    intake.submit(s, Update("u-1"))
    master.futures[0].set_exception(Unavailable("outcome unknown"))
    assert s.acked == []
    intake.submit(s, Update("u-1"))
    assert len(master.proposed) == 2


def test_on_a_follower_the_session_closes_and_nothing_stays_in_flight(master, intake) -> None:
    s = Session()
    master.refuse = NotLeader("not the leader", None)
    intake.submit(s, Update("u-1"))
    intake.submit_many(s, [Update("u-2"), Update("u-3")])
    assert s.closed and s.acked == [] and intake.in_flight() == 0


def test_a_malformed_update_is_acknowledged_at_once_and_never_proposed(master, intake) -> None:
    s = Session()
    intake.submit(s, Update("u-1", malformed=True))
    intake.submit_many(s, [Update("u-2", malformed=True), Update("u-3")])
    assert s.acked == [["u-1"], ["u-2"]]
    assert [c.status.uuid for c in master.proposed[0][0]] == ["u-3"]
    assert intake.in_flight() == 1


@pytest.mark.parametrize("refusal", [InvalidRequest("x"), NotFound("x"), Conflict("x"), PermissionDenied("x")])
def test_a_final_refusal_by_decide_is_acknowledged(master, intake, refusal: TesseraError) -> None:
    s = Session()
    master.refuse = refusal
    intake.submit(s, Update("u-1"))
    assert s.acked == [["u-1"]] and intake.in_flight() == 0


@pytest.mark.parametrize("refusal", [Unavailable("x"), ResourceExhausted("x")])
def test_a_refusal_that_may_pass_later_is_not_acknowledged_for_one_update_as_for_a_batch(
        master, intake, refusal: TesseraError) -> None:
    """The single-update path used to acknowledge every refusal `decide` raised, the batch path only the
    final ones: the batch's policy is kept (an acknowledged update is never re-sent, so acknowledging a
    refusal that may pass later would lose it)."""
    s = Session()
    master.refuse = refusal
    intake.submit(s, Update("u-1"))
    assert s.acked == [] and intake.in_flight() == 0
    master.refuse = None
    intake.submit_many(s, [Update("u-2")])
    master.futures[0].set_result([refusal])
    assert s.acked == []


def test_a_batch_is_one_proposal_and_one_acknowledgement_of_what_was_recorded_or_refused_for_good(
        master, intake) -> None:
    s = Session()
    intake.submit_many(s, [Update("u-1"), Update("u-2", task_id="t-2", traceparent="tp-2"),
                           Update("u-3", task_id="t-3"), Update("u-4", task_id="t-4")])
    (commands, _, traceparent), = master.proposed
    assert len(commands) == 4 and traceparent == "tp-2"
    master.futures[0].set_result([None, NotFound("no such task"), Unavailable("x"), None])
    assert s.acked == [["u-1", "u-2", "u-4"]]
    assert intake.in_flight() == 0


def test_a_tasks_updates_of_one_message_go_into_one_proposal_in_order(master, intake) -> None:
    s = Session()
    intake.submit_many(s, [Update("u-1"), Update("u-2"), Update("u-3", task_id="t-2"), Update("u-4")])
    (commands, _, _), = master.proposed
    assert [c.status.uuid for c in commands] == ["u-1", "u-2", "u-3", "u-4"]
    master.futures[0].set_result([None] * 4)
    assert s.acked == [["u-1", "u-2", "u-3", "u-4"]]


def test_an_update_behind_one_still_in_a_commit_is_proposed_but_not_dropped_as_illegal(master, intake) -> None:
    """The agent re-sends its whole stream while the first commit is under way: the update already in
    flight is not proposed again; the next one of the same task is proposed (it commits after the first),
    but a Conflict for it (decided against a state the first commit has not settled: a FINISHED refused
    as STAGING -> FINISHED) is not final — not acknowledged, so the agent re-sends it — while a Conflict
    for an update of a task with nothing in flight is final as always."""
    s = Session()
    intake.submit_many(s, [Update("u-1")])
    intake.submit_many(s, [Update("u-1"), Update("u-2"), Update("v-1", task_id="t-2")])
    assert [[c.status.uuid for c in p[0]] for p in master.proposed] == [["u-1"], ["u-2", "v-1"]]
    master.futures[0].set_result([None])
    master.futures[1].set_result([Conflict("task t-1 is TASK_STAGING and cannot become TASK_FINISHED"),
                                  Conflict("task t-2 is TASK_FINISHED and cannot become TASK_RUNNING")])
    assert s.acked == [["u-1"], ["v-1"]]
    assert intake.in_flight() == 0
    intake.submit(s, Update("u-2"))  # the re-send, once the commit before it settled: final outcomes again
    master.futures[2].set_result(ApplyResult("applied", (), 1, 1, "", "", "status-u-2"))
    assert s.acked[-1] == ["u-2"]


@pytest.mark.parametrize("code", sorted(ERRORS_BY_CODE))
def test_the_policy_answers_alike_for_a_raised_error_and_a_recorded_error_code(code: str) -> None:
    error = ERRORS_BY_CODE[code]("x")
    assert acknowledges(error) == acknowledges(code) == isinstance(error, ACKNOWLEDGED_REFUSALS)


def test_committed_or_final_is_acknowledged_and_nothing_else() -> None:
    assert acknowledges(None) and acknowledges("")
    assert {c for c in ERRORS_BY_CODE if acknowledges(c)} == {"InvalidRequest", "NotFound", "Conflict",
                                                              "VersionConflict", "Deposed", "PermissionDenied"}
