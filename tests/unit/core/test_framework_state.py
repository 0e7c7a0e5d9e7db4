"""A framework's key/value state in the pure core: compare-and-set on versions, limits, atomic writes,
fencing by the lease term, removal with the framework, replay and old pickles."""

from __future__ import annotations

import json
import pickle

import pytest

from tessera.control_plane.codec import to_jsonable
from tessera.control_plane.core import commands as c
from tessera.control_plane.core import events as ev
from tessera.control_plane.core import limits
from tessera.control_plane.core.apply import replay
from tessera.control_plane.core.errors import Deposed, InvalidRequest, VersionConflict
from tessera.control_plane.core.framework_state import ABSENT, ANY_VERSION, get, listing
from tessera.control_plane.core.invariants import check_invariants
from tessera.control_plane.core.state import ClusterState, FrameworkRecord
from tessera.control_plane.core.values import FrameworkState
from tessera.control_plane.eventlog.decode import from_jsonable

from .harness import Harness


def world() -> tuple[Harness, str, str]:
    h = Harness()
    fid = h.framework()
    return h, fid, h.state.frameworks[fid].stream_id


def put(fid: str, sid: str, key: str, value: str, version: int = ANY_VERSION) -> c.WriteFrameworkState:
    return c.WriteFrameworkState(fid, (c.StateWrite(key, value, expected_version=version),), stream_id=sid)


def delete(fid: str, sid: str, key: str, version: int = ANY_VERSION) -> c.WriteFrameworkState:
    return c.WriteFrameworkState(fid, (c.StateWrite(key, delete=True, expected_version=version),), stream_id=sid)


def test_a_put_if_absent_creates_the_key_at_the_seq_of_its_event() -> None:
    h, fid, sid = world()
    result = h.run(put(fid, sid, "apps/web", '{"instances": 3}', ABSENT))
    (seq, event), = result.events
    assert isinstance(event, ev.FrameworkStatePut)
    entry = get(h.state, fid, "apps/web")
    assert entry is not None and (entry.version, entry.value) == (seq, '{"instances": 3}')


def test_a_second_put_if_absent_is_a_version_conflict_naming_the_current_version_and_changes_nothing() -> None:
    h, fid, sid = world()
    first = h.run(put(fid, sid, "k", "one", ABSENT)).last_seq
    before = h.state.fingerprint()
    with pytest.raises(VersionConflict, match=f"at version {first}") as info:
        h.decide(put(fid, sid, "k", "two", ABSENT))
    assert (info.value.key, info.value.current_version) == ("k", first)
    assert h.state.fingerprint() == before


def test_an_update_needs_the_current_version_and_gets_a_new_one() -> None:
    h, fid, sid = world()
    v1 = h.run(put(fid, sid, "k", "one", ABSENT)).last_seq
    v2 = h.run(put(fid, sid, "k", "two", v1)).last_seq
    assert v2 > v1
    with pytest.raises(VersionConflict, match=f"at version {v2}, not version {v1}"):
        h.decide(put(fid, sid, "k", "three", v1))
    h.run(put(fid, sid, "k", "any", ANY_VERSION))
    assert get(h.state, fid, "k").value == "any"  # type: ignore[union-attr]


def test_a_deleted_and_recreated_key_never_repeats_a_version() -> None:
    h, fid, sid = world()
    v1 = h.run(put(fid, sid, "k", "one", ABSENT)).last_seq
    h.run(delete(fid, sid, "k", v1))
    assert get(h.state, fid, "k") is None
    v2 = h.run(put(fid, sid, "k", "one", ABSENT)).last_seq
    assert v2 > v1
    with pytest.raises(VersionConflict):
        h.decide(delete(fid, sid, "k", v1))


def test_deleting_an_absent_key_with_any_version_is_recorded_and_changes_nothing() -> None:
    h, fid, sid = world()
    result = h.run(delete(fid, sid, "never"))
    assert [type(e) for _, e in result.events] == [ev.FrameworkStateDeleted]
    assert h.state.framework_state == {}
    with pytest.raises(VersionConflict, match="absent, not version 5"):
        h.decide(delete(fid, sid, "never", 5))


def test_the_writes_of_one_call_apply_together_or_not_at_all() -> None:
    h, fid, sid = world()
    v = h.run(put(fid, sid, "a", "1", ABSENT)).last_seq
    before = h.state.fingerprint()
    with pytest.raises(VersionConflict):
        h.decide(c.WriteFrameworkState(fid, (c.StateWrite("b", "2", expected_version=ABSENT),
                                             c.StateWrite("a", "x", expected_version=v + 100)), stream_id=sid))
    assert h.state.fingerprint() == before
    result = h.run(c.WriteFrameworkState(fid, (c.StateWrite("b", "2", expected_version=ABSENT),
                                               c.StateWrite("a", delete=True, expected_version=v)), stream_id=sid))
    assert result.last_seq - result.first_seq == 1  # one event per write, consecutive seqs
    assert get(h.state, fid, "b").version == result.first_seq  # type: ignore[union-attr]
    assert get(h.state, fid, "a") is None


def test_a_competing_write_committed_in_between_makes_the_later_one_a_rejected_version_conflict() -> None:
    h, fid, sid = world()
    v = h.run(put(fid, sid, "k", "one", ABSENT)).last_seq
    first = h.decide(put(fid, sid, "k", "from-a", v))
    second = h.decide(put(fid, sid, "k", "from-b", v))  # both decided against version v
    assert h.commit(first).ok
    late = h.commit(second)
    assert (late.outcome, late.error_code) == ("rejected", VersionConflict.code)
    assert isinstance(late.error(), VersionConflict)
    assert get(h.state, fid, "k").value == "from-a"  # type: ignore[union-attr]
    assert check_invariants(h.state) == []


def test_a_write_decided_before_the_lease_moved_is_refused_when_applied() -> None:
    h, fid, sid = world()
    write = h.decide(put(fid, sid, "k", "from-the-old-holder"))
    info = h.state.frameworks[fid].info
    h.run(c.SubscribeFramework(info))  # another instance takes the framework over: lease term 2
    assert h.state.frameworks[fid].lease_term == 2
    late = h.commit(write)
    assert late.error_code == Deposed.code and "term 2" in late.reason
    assert h.state.framework_state == {}


def test_a_deposed_stream_is_refused_naming_the_lease_term() -> None:
    h, fid, sid = world()
    h.run(c.SubscribeFramework(h.state.frameworks[fid].info))
    with pytest.raises(Deposed, match="lease is at term 2") as info:
        h.decide(put(fid, sid, "k", "v"))
    assert info.value.lease_term == 2


def test_writes_name_the_writers_stream() -> None:
    h, fid, _ = world()
    with pytest.raises(InvalidRequest, match="stream id"):
        h.decide(put(fid, "", "k", "v"))


@pytest.mark.parametrize(("key", "value", "limit"), [
    ("k", "x" * (limits.MAX_STATE_VALUE_LENGTH + 1), "MAX_STATE_VALUE_LENGTH"),
    ("k", "é" * (limits.MAX_STATE_VALUE_LENGTH // 2 + 1), "MAX_STATE_VALUE_LENGTH"),  # bytes, not characters
    ("k" * (limits.MAX_STATE_KEY_LENGTH + 1), "v", "MAX_STATE_KEY_LENGTH"),
])
def test_a_put_over_a_size_limit_is_an_invalid_request_naming_the_limit(key: str, value: str, limit: str) -> None:
    h, fid, sid = world()
    before = h.state.fingerprint()
    with pytest.raises(InvalidRequest, match=limit):
        h.decide(put(fid, sid, key, value))
    assert h.state.fingerprint() == before


@pytest.mark.parametrize("write", [
    c.StateWrite("", "v"), c.StateWrite("a\nb", "v"), c.StateWrite("k", "\ud800"),
    c.StateWrite("k", "v", delete=True), c.StateWrite("k", "v", expected_version=-2),
    c.StateWrite("k", b"bytes"),  # type: ignore[arg-type]
])
def test_malformed_writes_are_invalid_requests(write: c.StateWrite) -> None:
    h, fid, sid = world()
    with pytest.raises(InvalidRequest):
        h.decide(c.WriteFrameworkState(fid, (write,), stream_id=sid))


def test_a_key_written_twice_in_one_call_is_refused() -> None:
    h, fid, sid = world()
    with pytest.raises(InvalidRequest, match="twice"):
        h.decide(c.WriteFrameworkState(fid, (c.StateWrite("k", "1"), c.StateWrite("k", "2")), stream_id=sid))


def test_the_keys_of_a_framework_are_capped_by_decide_and_again_by_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_STATE_KEYS", 2)
    h, fid, sid = world()
    h.run(put(fid, sid, "a", "1"))
    b, c_ = h.decide(put(fid, sid, "b", "2")), h.decide(put(fid, sid, "c", "3"))  # each fits on its own
    assert h.commit(b).ok
    late = h.commit(c_)
    assert late.error_code == InvalidRequest.code and "MAX_STATE_KEYS" in late.reason
    with pytest.raises(InvalidRequest, match="MAX_STATE_KEYS"):
        h.decide(put(fid, sid, "d", "4"))
    h.run(put(fid, sid, "a", "overwriting a key adds none"))


def test_the_bytes_of_a_framework_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_STATE_BYTES", 10)
    h, fid, sid = world()
    h.run(put(fid, sid, "ab", "cdefgh"))  # 8 bytes
    with pytest.raises(InvalidRequest, match="MAX_STATE_BYTES"):
        h.decide(put(fid, sid, "x", "yz"))  # 11 in all
    h.run(c.WriteFrameworkState(fid, (c.StateWrite("ab", delete=True), c.StateWrite("x", "yz")), stream_id=sid))


def test_the_state_goes_with_the_framework() -> None:
    h, fid, sid = world()
    h.run(put(fid, sid, "k", "v"))
    h.run(c.Teardown(fid, sid))
    assert fid not in h.state.framework_state
    assert check_invariants(h.state) == []


def test_listing_pages_through_a_prefix_in_key_order() -> None:
    h, fid, sid = world()
    for key in ("apps/b", "apps/a", "deploy/1", "apps/c", "apps"):
        h.run(put(fid, sid, key, key.upper()))
    page = listing(h.state, fid, "apps/", limit=2)
    assert [k for k, _ in page.entries] == ["apps/a", "apps/b"] and page.more
    rest = listing(h.state, fid, "apps/", start_after="apps/b", limit=2)
    assert [k for k, _ in rest.entries] == ["apps/c"] and not rest.more
    assert [k for k, _ in listing(h.state, fid).entries] == ["apps", "apps/a", "apps/b", "apps/c", "deploy/1"]
    with pytest.raises(InvalidRequest):
        listing(h.state, fid, limit=100_000)


def test_the_log_replays_to_the_same_state_from_entries_and_from_event_payloads() -> None:
    h, fid, sid = world()
    h.run(put(fid, sid, "k", "ünïcode ✓ " * 100, ABSENT))
    h.run(put(fid, sid, "k2", "x"))
    h.run(delete(fid, sid, "k2"))
    assert replay(h.entries).fingerprint() == h.state.fingerprint()
    put_event = next(e for entry in h.entries for e in entry.events if isinstance(e, ev.FrameworkStatePut))
    payload = json.loads(json.dumps(to_jsonable(put_event)))
    assert from_jsonable(payload, ev.FrameworkStatePut) == put_event


def test_a_state_pickled_before_framework_state_existed_loads_with_defaults() -> None:
    h, fid, sid = world()
    h.run(put(fid, sid, "k", "v"))
    old = pickle.loads(pickle.dumps(h.state))
    del old.__dict__["framework_state"]  # what an earlier version pickled
    restored = pickle.loads(pickle.dumps(old))
    assert restored.framework_state == {}
    record = h.state.frameworks[fid]
    slots = {name: getattr(record, name) for name in ("info", "state", "stream_id", "subscribed_at")}
    loaded = FrameworkRecord.__new__(FrameworkRecord)
    loaded.__setstate__((None, slots))  # as pickle restores a slots record written without the lease fields
    assert (loaded.lease_term, loaded.by_name, loaded.disconnected_at, loaded.stream_id) == (0, False, 0.0, sid)


def test_invariants_see_a_broken_state_table() -> None:
    h, fid, sid = world()
    h.run(put(fid, sid, "k", "v"))
    h.state.framework_state[fid].size += 1
    assert any("size" in p for p in check_invariants(h.state))
    state = ClusterState()
    state.framework_state["nobody"] = h.state.framework_state[fid]
    assert any("unknown or removed" in p for p in check_invariants(state))
    h.state.frameworks[fid].state = FrameworkState.FRAMEWORK_REMOVED
    assert any("unknown or removed" in p for p in check_invariants(h.state))


def test_the_event_logs_state_snapshots_keep_the_framework_state() -> None:
    from tessera.control_plane.eventlog.snapshots import decode_snapshot, encode_snapshot

    h, fid, sid = world()
    h.run(put(fid, sid, "k", "v"))
    restored = decode_snapshot(encode_snapshot(h.state))  # the core-only unpickler admits its records
    assert restored is not None and restored.fingerprint() == h.state.fingerprint()
    assert get(restored, fid, "k") == get(h.state, fid, "k")


def operator_put(fid: str, key: str, value: str, version: int = ANY_VERSION) -> c.WriteFrameworkState:
    return c.WriteFrameworkState(fid, (c.StateWrite(key, value, expected_version=version),), by_operator=True,
                                 operator="ops")


def test_an_operators_write_needs_no_stream_keeps_compare_and_set_and_names_the_operator() -> None:
    h, fid, _ = world()
    v = h.run(operator_put(fid, "apps/web", "one", ABSENT)).last_seq
    assert get(h.state, fid, "apps/web").value == "one"  # type: ignore[union-attr]
    with pytest.raises(VersionConflict):
        h.decide(operator_put(fid, "apps/web", "two", ABSENT))
    (_, put_event), = h.run(operator_put(fid, "apps/web", "two", v)).events
    assert isinstance(put_event, ev.FrameworkStatePut) and (put_event.by_operator, put_event.operator) == (True, "ops")


def test_an_operators_write_is_not_fenced_by_the_lease() -> None:
    h, fid, _ = world()
    write = h.decide(operator_put(fid, "apps/web", "one"))
    h.run(c.SubscribeFramework(h.state.frameworks[fid].info))  # the lease moves before it is applied
    assert h.commit(write).ok
    assert get(h.state, fid, "apps/web").value == "one"  # type: ignore[union-attr]


def test_an_operators_write_names_no_stream() -> None:
    h, fid, sid = world()
    with pytest.raises(InvalidRequest, match="names no stream"):
        h.decide(c.WriteFrameworkState(fid, (c.StateWrite("k", "v"),), stream_id=sid, by_operator=True))
