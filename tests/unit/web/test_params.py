"""The JSON API's query parameters: what parses, and what is refused naming the parameter."""

from __future__ import annotations

import pytest

from tessera.control_plane.web import params
from tessera.control_plane.web.params import ParamError


def refused(fn, query, field: str) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ParamError) as err:
        fn(query)
    assert err.value.field == field
    return err.value.message


def test_paging_defaults_and_bounds() -> None:
    assert params.page({}) == params.Page(0, 100)
    assert params.page({"offset": "20", "limit": "1000"}) == params.Page(20, 1000)
    assert "from 1 to 1000" in refused(params.page, {"limit": "1001"}, "limit")
    refused(params.page, {"limit": "0"}, "limit")
    refused(params.page, {"limit": "-1"}, "limit")
    refused(params.page, {"offset": "1e3"}, "offset")
    refused(params.page, {"offset": "9" * 400}, "offset")
    refused(params.page, {"limit": "١٢"}, "limit")  # Arabic-Indic digits: isdigit() but not ASCII


def test_task_listing_states_sorts_and_default_order() -> None:
    listing = params.task_listing({"state": "running,TASK_FAILED", "sort": "cpus", "q": "web"})
    assert listing.states == {"TASK_RUNNING", "TASK_FAILED"} and listing.sort == "cpus"
    assert not listing.descending and listing.q == "web"
    assert params.task_listing({}).sort == "launched_at" and params.task_listing({}).descending
    assert "TASK_FINISHED" in params.task_listing({"state": "terminal"}).states
    assert "TASK_RUNNING" in params.task_listing({"state": "active"}).states
    assert "TASK_RUNNING" not in params.task_listing({"state": "terminal"}).states
    assert "unknown state" in refused(params.task_listing, {"state": "RUNNING'; DROP TABLE events;--"}, "state")
    refused(params.task_listing, {"sort": "payload"}, "sort")
    refused(params.task_listing, {"order": "sideways"}, "order")
    assert params.agent_listing({"state": "active"}).states == {"AGENT_ACTIVE"}
    assert params.framework_listing({"state": "connected"}).states == {"FRAMEWORK_CONNECTED"}


def test_text_is_bounded_and_free_of_control_characters() -> None:
    assert params.text({"q": "a/b %'\""}, "q") == "a/b %'\""
    refused(lambda q: params.text(q, "q"), {"q": "x" * 257}, "q")
    refused(lambda q: params.text(q, "q"), {"q": "a\x00b"}, "q")
    refused(lambda q: params.text(q, "q"), {"q": "a\nb"}, "q")


def test_event_query() -> None:
    q = params.event_query({"after": "41", "limit": "5", "type": "TaskLaunched,AgentRegistered", "task": "t"})
    assert (q.after, q.before, q.limit, q.types, q.task) == (41, None, 5, ("AgentRegistered", "TaskLaunched"), "t")
    assert "not both" in refused(params.event_query, {"after": "1", "before": "9"}, "before")
    refused(params.event_query, {"type": "Task Launched"}, "type")
    refused(params.event_query, {"type": "x'--"}, "type")
    refused(params.event_query, {"before": "0"}, "before")
    refused(params.event_query, {"after": str(2**63)}, "after")


def test_stream_start_prefers_last_event_id() -> None:
    assert params.stream_start({}, None) is None
    assert params.stream_start({"from": "7"}, None) == 7
    assert params.stream_start({"from": "7"}, "41") == 42
    with pytest.raises(ParamError) as err:
        params.stream_start({}, "abc")
    assert err.value.field == "Last-Event-ID"
    refused(lambda q: params.stream_start(q, None), {"from": "0"}, "from")


def test_points_in_history() -> None:
    assert params.point({"at": "42"}, "at", 2e9).index == 42  # type: ignore[union-attr]
    assert params.point({"at": "#42"}, "at", 2e9).index == 42  # type: ignore[union-attr]
    assert params.point({"at": "@1700000000"}, "at", 2e9).time == 1700000000.0  # type: ignore[union-attr]
    assert params.point({"at": "10m"}, "at", 2e9).time == 2e9 - 600  # type: ignore[union-attr]
    assert params.point({}, "at", 2e9) is None
    refused(lambda q: params.point(q, "at", 2e9), {"at": "yesterday-ish"}, "at")
    refused(lambda q: params.point(q, "at", 2e9), {"at": "#" + "9" * 30}, "at")
    refused(lambda q: params.point(q, "from", 2e9, required=True), {}, "from")


def test_output_query() -> None:
    assert params.output_query({}) == params.OutputQuery("stdout", 16384)
    assert params.output_query({"stream": "stderr", "tail": "10"}) == params.OutputQuery("stderr", 10)
    refused(params.output_query, {"stream": "../../etc/passwd"}, "stream")
    refused(params.output_query, {"tail": str(2 << 20)}, "tail")
