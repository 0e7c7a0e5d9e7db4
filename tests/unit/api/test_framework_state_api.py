"""A framework's key/value state as operators read it: the Operator API's `GetFrameworkState` (pages,
NOT_FOUND, redaction of another principal's values), `GetState`'s lease term and state totals, the events
in the log (`FrameworkStatePut` payloads redacted like the rest), and `tessera framework state`."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest

from tessera.control_plane.codec.operator_api import framework_state_to_proto
from tessera.control_plane.core import commands as c
from tessera.control_plane.core.values import FrameworkInfo
from tessera.control_plane.core.visibility import REDACTED, Visibility, redact_event_payload
from tessera.v1 import operator_pb2
from tests.support.inprocess import InProcessMaster
from tests.unit.inspect.cli import ok, one_line_error, tessera

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def node() -> Iterator[tuple[InProcessMaster, str]]:
    with InProcessMaster(allocation=False) as m:
        result = m.master.propose([c.SubscribeFramework(FrameworkInfo(name="svc", principal="alice",
                                                                      roles=("web",)))])
        fid = result.events[0][1].framework_id  # type: ignore[union-attr]
        sid = m.state().frameworks[fid].stream_id
        m.master.propose([c.WriteFrameworkState(fid, tuple(c.StateWrite(f"apps/{n}", f'{{"n": {n}}}')
                                                           for n in range(5)) + (c.StateWrite("seeded", "yes"),),
                                                stream_id=sid)])
        yield m, fid


def test_get_framework_state_pages_through_a_prefix(node: tuple[InProcessMaster, str]) -> None:
    m, fid = node
    op = m.operator()
    first = op.GetFrameworkState(operator_pb2.GetFrameworkStateRequest(framework_id=fid, prefix="apps/", limit=3,
                                                                       consistent=True), timeout=5)
    assert [e.key for e in first.entries] == ["apps/0", "apps/1", "apps/2"] and first.more
    assert (first.lease_term, first.keys) == (1, 6) and first.bytes == sum(len(k) + len(v) for k, v in (
        *((f"apps/{n}", f'{{"n": {n}}}') for n in range(5)), ("seeded", "yes")))
    rest = op.GetFrameworkState(operator_pb2.GetFrameworkStateRequest(framework_id=fid, prefix="apps/",
                                                                      start_after="apps/2"), timeout=5)
    assert [(e.key, e.value, e.size) for e in rest.entries] == [("apps/3", '{"n": 3}', 8), ("apps/4", '{"n": 4}', 8)]
    assert not rest.more and rest.entries[0].version < rest.entries[1].version
    view = next(f for f in op.GetState(operator_pb2.GetStateRequest(), timeout=5).frameworks if f.framework_id == fid)
    assert (view.lease_term, view.state_keys, view.state_bytes) == (1, 6, first.bytes)


def test_an_unknown_framework_is_not_found_and_a_bad_limit_invalid(node: tuple[InProcessMaster, str]) -> None:
    m, fid = node
    with pytest.raises(grpc.RpcError) as info:
        m.operator().GetFrameworkState(operator_pb2.GetFrameworkStateRequest(framework_id="nobody"), timeout=5)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        m.operator().GetFrameworkState(operator_pb2.GetFrameworkStateRequest(framework_id=fid, limit=5000), timeout=5)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_another_principals_values_are_redacted_and_their_keys_and_versions_kept(
        node: tuple[InProcessMaster, str]) -> None:
    m, fid = node
    state = m.state()
    mine = framework_state_to_proto(state, fid, "", "", 0, Visibility("alice", sees_all=False))
    theirs = framework_state_to_proto(state, fid, "", "", 0, Visibility("bob", sees_all=False))
    assert [e.value for e in mine.entries][-1] == "yes"
    assert {e.value for e in theirs.entries} == {REDACTED}
    assert [(e.key, e.version, e.size) for e in theirs.entries] == [(e.key, e.version, e.size) for e in mine.entries]
    assert framework_state_to_proto(state, fid, "", "", 0, Visibility("bob", sees_all=True)) == mine


def test_state_events_are_in_the_log_and_redacted_for_others(node: tuple[InProcessMaster, str]) -> None:
    m, fid = node
    m.events.flush()
    records = m.operator().ListEvents(operator_pb2.ListEventsRequest(filter=operator_pb2.EventFilter(
        types=["FrameworkStatePut"], framework_id=fid)), timeout=5).events
    assert len(records) == 6
    payload = json.loads(records[-1].payload_json)
    assert (payload["key"], payload["value"], payload["lease_term"]) == ("seeded", "yes", 1)
    assert redact_event_payload(payload) == {**payload, "value": REDACTED}


def test_tessera_framework_state_prints_the_keys(node: tuple[InProcessMaster, str]) -> None:
    m, fid = node
    out = json.loads(ok("--masters", m.grpc_address, "--json", "framework", "state", fid, "apps/").output)
    assert [e["key"] for e in out["entries"]] == [f"apps/{n}" for n in range(5)]
    assert (out["lease_term"], out["keys"]) == (1, 6)
    table = ok("--masters", m.grpc_address, "framework", "state", fid).output
    assert "seeded" in table and "lease term 1" in table and "6 keys" in table
    one_line_error(tessera("--masters", m.grpc_address, "framework", "state", "nobody"), "NOT_FOUND")
