"""Every event a realistic history records survives the replicated encoding (protobuf) and the event
log encoding (JSON) unchanged: the decoders chosen per type must read what the encoders wrote."""

from __future__ import annotations

from tessera.control_plane.codec import entry_from_bytes, entry_to_bytes
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
    store.close()
