"""Every event a realistic history records survives the replicated encoding (protobuf) and the event
log encoding (JSON) unchanged: the decoders chosen per type must read what the encoders wrote."""

from __future__ import annotations

import math

import pytest

from tessera.control_plane.codec import entry_from_bytes, entry_to_bytes, event_json, json_text, to_jsonable
from tessera.control_plane.core import events as ev
from tessera.control_plane.eventlog import MemoryEventStore
from tessera.control_plane.eventlog.decode import event_from_record

from .workload import realistic_history


def test_every_recorded_event_round_trips_through_both_encodings() -> None:
    store = MemoryEventStore()
    realistic_history(store, rounds=2, fingerprints=False)
    assert store.flush()
    records = store.list(limit=100_000)
    events = [event_from_record(r) for r in records]  # JSON -> core
    kinds = {type(e) for e in events}
    assert len(kinds) >= 18, sorted(k.__name__ for k in kinds)
    for event in events:
        entry = ev.Entry(term=3, leader="m1", time=1.5, request_id="req-1", traceparent="", events=(event,))
        assert entry_from_bytes(entry_to_bytes(entry)) == entry, type(event).__name__
    for batch in ((), tuple(events[:2]), tuple(events)):  # none, two, all: not only the one-event case
        entry = ev.Entry(term=3, leader="m1", time=1.5, request_id="req-2", traceparent="", events=batch)
        assert entry_from_bytes(entry_to_bytes(entry)) == entry, len(batch)
    store.close()


def test_the_event_log_payload_of_every_recorded_event_is_the_general_encoders_text() -> None:
    store = MemoryEventStore()
    realistic_history(store, rounds=2, fingerprints=False)
    assert store.flush()
    events = [event_from_record(r) for r in store.list(limit=100_000)]
    assert len({type(e) for e in events}) >= 18
    for event in events:
        assert event_json(event) == json_text(to_jsonable(event)), type(event).__name__
    store.close()


@pytest.mark.parametrize("event", [
    ev.RoleWeightSet(role="r\u00e9le \"quoted\" \\ \n \U0001f600", weight=2.5),
    ev.RoleWeightSet(role="", weight=math.inf),
    ev.RoleWeightSet(role="x", weight=-math.inf),
    ev.RoleWeightSet(role="x", weight=math.nan),
    ev.RoleWeightSet(role="x", weight=3),  # an int where a float is declared
    ev.RoleWeightSet(role="x", weight=True),  # a bool: JSON true, not 1
    ev.RoleWeightSet(role=None, weight=1e300),  # type: ignore[arg-type]
    ev.Rejected(reason="a, b: \"c\"", code="Conflict"),
])
def test_the_event_log_payload_of_scalar_fields_matches_the_general_encoder(event: ev.Event) -> None:
    assert event_json(event) == json_text(to_jsonable(event))
