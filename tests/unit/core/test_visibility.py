"""The redaction decision (`core.visibility`): who sees which task in full, and what a redacted task,
event payload or span keeps."""

from __future__ import annotations

import json

from tessera.control_plane.codec import json_text, to_jsonable
from tessera.control_plane.core import events as ev
from tessera.control_plane.core.acl import Caller, Grant
from tessera.control_plane.core.values import CommandInfo, TaskInfo, TaskState, TaskStatus
from tessera.control_plane.core.visibility import (
    REDACTED,
    redact_event_payload,
    redact_span_attributes,
    redact_status,
    redact_task,
    visibility_for,
)

TASK = TaskInfo(task_id="t1", name="db", framework_id="f1", agent_id="a1",
                command=CommandInfo(shell=False, value="/bin/client", arguments=("--password", "s3cret", ""),
                                    environment=(("DB_PASSWORD", "s3cret"), ("EMPTY", "")), working_dir="w",
                                    user="nobody"),
                labels=(("secret", "s3cret"),))


def grant(principal: str, *actions: str) -> Grant:
    return Grant(principal, "0" * 64, actions=frozenset(actions))


def test_a_principal_sees_its_own_tasks_in_full_and_read_all_or_no_acl_sees_every_task() -> None:
    alice = visibility_for(Caller("framework", grant("alice", "read")))
    assert alice.sees_in_full("alice")
    assert not alice.sees_in_full("bob") and not alice.sees_in_full(None) and not alice.sees_in_full("")
    assert visibility_for(Caller("operator", grant("ops", "read", "read_all"))).sees_in_full("bob")
    assert visibility_for(Caller(None, None)).sees_in_full(None)  # no ACL: no tenants


def test_a_redacted_task_hides_values_and_keeps_its_shape() -> None:
    r = redact_task(TASK)
    assert r.command.value == REDACTED and r.command.arguments == (REDACTED, REDACTED, "")
    assert r.command.environment == (("DB_PASSWORD", REDACTED), ("EMPTY", ""))
    assert r.labels == (("secret", REDACTED),)
    assert (r.task_id, r.name, r.framework_id, r.agent_id, r.command.user, r.command.working_dir,
            r.command.shell) == ("t1", "db", "f1", "a1", "nobody", "w", False)
    status = TaskStatus(task_id="t1", state=TaskState.TASK_FAILED, message="exit 1", data=b"s3cret\n")
    assert redact_status(status).data == b"" and redact_status(status).message == "exit 1"


def test_event_payloads_are_redacted_like_the_values() -> None:
    launched = json.loads(json_text(to_jsonable(ev.TaskLaunched(task_id="t1", framework_id="f1", agent_id="a1",
                                                                 task=TASK))))
    updated = json.loads(json_text(to_jsonable(ev.TaskStatusUpdated(
        task_id="t1", framework_id="f1", agent_id="a1",
        status=TaskStatus(task_id="t1", state=TaskState.TASK_FAILED, data=b"s3cret")))))
    for payload in (launched, updated):
        redacted = redact_event_payload(payload)
        assert "s3cret" in json.dumps(payload) and "s3cret" not in json.dumps(redacted)
    assert redact_event_payload(launched)["task"]["command"]["environment"] == {"DB_PASSWORD": REDACTED,
                                                                               "EMPTY": ""}
    weight = {"role": "web", "weight": 2.0}
    assert redact_event_payload(weight) == weight


def test_span_attributes_keep_only_tesseras_own_values() -> None:
    assert redact_span_attributes({"tessera.task_id": "t1", "raft.index": 7, "db.password": "s3cret"}) == {
        "tessera.task_id": "t1", "raft.index": 7, "db.password": REDACTED}
