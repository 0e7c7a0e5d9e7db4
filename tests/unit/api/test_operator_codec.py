"""codec.operator_api: the Operator API's converters, one module for the master and the CLI; each
mirror pair gives back what it was given."""

from __future__ import annotations

import pytest

from tessera.control_plane.codec.operator_api import (
    event_filter_from_proto,
    event_filter_to_proto,
    event_record_from_proto,
    event_record_to_proto,
    history_point_from_proto,
    history_point_to_proto,
    span_from_proto,
    span_to_proto,
    state_to_proto,
)
from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.visibility import Visibility
from tessera.control_plane.eventlog import EventFilter, EventRecord, SpanRecord
from tessera.control_plane.eventlog.timepoints import Point
from tests.unit.core.harness import Harness, task

RECORD = EventRecord(seq=9, raft_index=4, position=1, type="TaskLaunched", time=12.5, term=2, request_id="r-1",
                     framework_id="fw-1", agent_id="ag-1", task_id="t-1", offer_id="o-1", trace_id="a" * 32,
                     span_id="b" * 16, payload='{"task":{"command":{"value":"secret"}}}')
SPAN = SpanRecord(trace_id="a" * 32, span_id="b" * 16, parent_span_id="c" * 16, name="agent.launch_task",
                  service="tessera-agent", kind="internal", start_time=1.0, end_time=2.0, status="OK",
                  attributes='{"tessera.task_id":"t-1"}', task_id="t-1")


def test_records_spans_filters_and_points_cross_the_wire_unchanged() -> None:
    assert event_record_from_proto(event_record_to_proto(RECORD)) == RECORD
    assert span_from_proto(span_to_proto(SPAN)) == SPAN
    flt = EventFilter(types=("TaskLaunched",), framework_id="fw-1", agent_id="ag-1", task_id="t-1",
                      offer_id="o-1", since_time=3.0, until_time=4.0)
    assert event_filter_from_proto(event_filter_to_proto(flt)) == flt
    for point in (Point(index=17), Point(time=1234.5)):
        assert history_point_from_proto(history_point_to_proto(point), "at") == point


def test_a_record_for_a_reader_who_may_not_see_the_task_has_its_payload_redacted() -> None:
    redacted = event_record_to_proto(RECORD, full=False)
    assert "secret" not in redacted.payload_json and redacted.task_id == "t-1"


def test_malformed_input_is_an_invalid_request() -> None:
    bad = span_to_proto(SPAN)
    bad.span_id = "XYZ"
    with pytest.raises(InvalidRequest):
        span_from_proto(bad)
    with pytest.raises(InvalidRequest):
        event_filter_from_proto(event_filter_to_proto(EventFilter(since_time=-1.0)))


def test_state_shows_soft_state_given_as_values_and_redacts_for_the_reader() -> None:
    h = Harness()
    agent = h.agent()
    fw = h.framework(principal="alice")
    h.launched(fw, agent, task("t-1"))
    resp = state_to_proto(h.state, "m1", 3, heartbeat_ages={agent: 1.5})
    (view,) = resp.agents
    assert view.connected and view.last_heartbeat_age == 1.5 and resp.term == 3
    command = h.state.find_task(fw, "t-1").info.command.value
    assert resp.tasks[0].task.command.value == command  # a reader who sees all: in full
    assert state_to_proto(h.state, "m1", 3, Visibility("alice", sees_all=False)).tasks[0].task.command.value \
        == command  # the owner: in full
    hidden = state_to_proto(h.state, "m1", 3, Visibility("mallory", sees_all=False))
    assert hidden.tasks[0].task.command.value == "<redacted>" and not hidden.agents[0].connected
