"""The replicated state machine of a master: LogEntry bytes in, ClusterState and event records out.

Replication hands every committed batch to `apply_entries` on every master, in log order, on its own
apply thread. For each entry this decodes the `LogEntry`, runs the pure `apply`, hands the recorded
events to the event log, which makes their rows (the events' JSON payloads) on its own writer thread
(`EventStore.append_rows_later`: neither that encoding nor disk I/O happens here), and returns the
`ApplyResult` that the proposer's future resolves with.

Rules kept here:
- Never raise: an exception inside a replicated method would freeze the whole Raft cluster. Bytes that do
  not decode become a `Rejected` result (recorded nowhere: they changed nothing).
- `lock` guards `state`; readers (gRPC handlers) take it to read a consistent view.
- Listeners are called after the batch is applied, outside the lock, and must only hand work off
  (they run on the replication thread).
- State snapshots for the event log (`put_snapshot`, every `snapshot_every` events) are stored by a
  `Snapshotter` on its own thread; this thread tells it the new last seq after each batch, and at a
  crossing hands it the live state to pickle (bounded in time; see `tessera.control_plane.eventlog.background`).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tessera.control_plane import legacy_names
from tessera.control_plane.codec import entry_from_bytes, event_json, event_type_name
from tessera.control_plane.core import events as ev
from tessera.control_plane.core.apply import ApplyResult, apply
from tessera.control_plane.core.events import event_ids
from tessera.control_plane.core.state import ClusterState, upgrade_task_keys
from tessera.control_plane.eventlog import EventStore
from tessera.control_plane.eventlog.background import DeltaSnapshots, SnapshotBuilder, Snapshotter
from tessera.control_plane.eventlog.records import EventRow
from tessera.control_plane.eventlog.snapshots import DEFAULT_SNAPSHOT_EVERY
from tessera.control_plane.eventlog.statecache import SnapshotBases

log = logging.getLogger(__name__)

EXPECTED_LIMIT = 65_536  # proposed entries remembered for their apply (a leader has far fewer in flight)
_NOT_EXPECTED: tuple[None, bool] = (None, False)


@dataclass(frozen=True, slots=True)
class Applied:
    """One applied entry, as listeners see it."""

    raft_index: int
    entry: ev.Entry
    result: ApplyResult


def _trace_ids(traceparent: str) -> tuple[str, str]:
    parts = traceparent.split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
        return parts[1], parts[2]
    return "", ""


Recorded = tuple[int, ev.Entry, tuple[tuple[int, ev.Event], ...]]  # raft index, entry, its applied (seq, event)s


def event_rows(recorded: Sequence[Recorded]) -> list[EventRow]:
    """The event-log rows of applied entries' events, in order (called by the event log's writer thread)."""
    rows: list[EventRow] = []
    for raft_index, entry, events in recorded:
        add_event_rows(rows, raft_index, entry, events)
    return rows


def add_event_rows(rows: list[EventRow], raft_index: int, entry: ev.Entry,
                   events: tuple[tuple[int, ev.Event], ...]) -> None:
    """Append the event-log row of each of `entry`'s applied `events` (seq, event) to `rows`."""
    trace_id, span_id = _trace_ids(entry.traceparent)
    time, term, request_id = entry.time, entry.term, entry.request_id
    for position, (seq, event) in enumerate(events):
        fid, aid, tid, oid = event_ids(event)
        rows.append((
            seq, raft_index, position, event_type_name(event), time, term, request_id,
            fid, aid, tid, oid, trace_id, span_id, event_json(event),
        ))


def decode_failure(reason: str) -> ApplyResult:
    return ApplyResult(
        outcome="rejected", events=(), first_seq=0, last_seq=0,
        error_code="InvalidRequest", reason=reason, request_id="",
    )


class MasterStateMachine:
    """Holds the replicated `ClusterState` and feeds the event log."""

    def __init__(self, events: EventStore, snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
                 snapshot_builder: SnapshotBuilder | None = None, live_snapshots: bool = True,
                 delta_every: int = 0) -> None:
        # Raft dumps and snapshots written before the tessera.* rename name the core's old modules; the
        # replicator unpickles them into this state machine (see control_plane/legacy_names.py).
        legacy_names.install()
        self.state = ClusterState()
        self.lock = threading.RLock()
        self.events = events
        # 0 disables the event log's state snapshots ("state as of" then replays from the start)
        # `snapshot_builder`: who rebuilds a snapshot the live state could not give (None: the snapshotter's
        # thread; a master passes a `ChildRebuilder`, see eventlog/rebuild_child.py). `live_snapshots=False`:
        # never pickle the live state on the applying thread (a master: that thread is pysyncobj's tick
        # thread, which also sends the heartbeats; a 0.2-0.4 s pickle there let followers elect)
        self.snapshots = (Snapshotter(events, snapshot_every, builder=snapshot_builder,
                                      **({} if live_snapshots else {"live_budget_s": 0.0}))
                          if snapshot_every > 0 else None)
        # the decoded full snapshots this master's history rebuilds start from (GetStateAt, the web UI:
        # `OperatorService.history_cache`), and with `delta_every` > 0 the writer of delta snapshots every
        # that many events, which hands it the bases it makes (eventlog/background.py, `DeltaSnapshots`)
        self.history_bases = SnapshotBases()
        self.deltas = (DeltaSnapshots(events, snapshot_every, delta_every, bases=self.history_bases)
                       if delta_every > 0 and snapshot_every > 0 else None)
        self._listeners: list[Callable[[Sequence[Applied]], None]] = []
        self._expected: dict[bytes, tuple[ev.Entry, bool]] = {}
        self.commit_info: dict[str, tuple[int, int]] = {}  # request id -> (raft index, entries in its batch)  # leader only: entries proposed here, not yet applied

    def expect(self, data: bytes, entry: ev.Entry, *, commit_info: bool = True) -> None:
        """The leader proposes `entry` as `data`: when it comes back committed, skip decoding it again
        (bytes equal means the same entry), and, with `commit_info`, note where it landed in
        `commit_info` (for a commit span). Bounded: forgotten entries are simply decoded."""
        if len(self._expected) >= EXPECTED_LIMIT:
            self._expected.clear()
        self._expected[data] = (entry, commit_info)

    def add_listener(self, fn: Callable[[Sequence[Applied]], None]) -> None:
        self._listeners.append(fn)

    # ---- the replication port ------------------------------------------------------------------
    def apply_entries(self, raft_index: int, entries: list[bytes]) -> list[object]:
        results: list[object] = []
        applied: list[Applied] = []  # made only for listeners
        listening = bool(self._listeners)
        last_events: tuple[tuple[int, ev.Event], ...] = ()  # what the batch's last applied entry recorded
        recorded: list[Recorded] = []  # the entries that recorded events, made into rows by the event log
        recorded_events = 0
        with self.lock:
            for data in entries:
                try:
                    proposed, wants_info = self._expected.pop(data, _NOT_EXPECTED)
                    entry = proposed or entry_from_bytes(data)
                    if wants_info and proposed is not None and proposed.request_id:
                        # for the proposer's commit span: where its entry landed in the Raft log
                        if len(self.commit_info) >= EXPECTED_LIMIT:
                            self.commit_info.clear()
                        self.commit_info[proposed.request_id] = (raft_index, len(entries))
                except Exception as exc:  # noqa: BLE001 - anything undecodable is rejected, never raised
                    results.append(decode_failure(f"undecodable log entry: {exc}"))
                    continue
                try:
                    result = apply(self.state, entry)
                except Exception as exc:  # noqa: BLE001 - apply is total; this is a last line of defence
                    log.exception("apply raised; entry treated as rejected")
                    result = decode_failure(f"apply failed: {exc}")
                results.append(result)
                last_events = result.events
                if listening:
                    applied.append(Applied(raft_index, entry, result))
                if result.events:
                    recorded.append((raft_index, entry, result.events))
                    recorded_events += len(result.events)
        if recorded:
            # The rows are made on the event log's writer thread: entries and events are immutable. On
            # pysyncobj's tick thread (every master's apply) their JSON was ~45 % of applying a batch, time in
            # which the node neither received, acknowledged nor committed the next entries (issue 22).
            self.events.append_rows_later(functools.partial(event_rows, recorded), recorded_events)
            last_seq = recorded[-1][2][-1][0]
            if self.snapshots is not None:
                # the live state is the state as of the last record only when the entry that made it
                # ended the batch (a later entry without events may have changed soft facts)
                exact = bool(last_events) and last_events[-1][0] == last_seq
                self.snapshots.observe(last_seq, self.state if exact else None)
            if self.deltas is not None:
                self.deltas.observe(last_seq)
        for fn in self._listeners if listening else ():  # a listener added meanwhile waits for the next batch
            try:
                fn(applied)
            except Exception:  # noqa: BLE001 - a listener bug must not stop replication
                log.exception("apply listener failed")
        return results

    def close(self) -> None:
        """Stop the history snapshotter (bounded wait). Call once nothing is applied any more (the
        replicator has stopped) and before the event store closes."""
        if self.snapshots is not None:
            self.snapshots.stop()
        if self.deltas is not None:
            self.deltas.stop()

    def snapshot(self) -> object:
        with self.lock:
            return self.state

    def restore(self, snap: object) -> None:
        if not isinstance(snap, ClusterState):
            log.error("ignoring a snapshot of unexpected type %s", type(snap).__name__)
            return
        upgrade_task_keys(snap)  # a snapshot from before task ids were scoped per framework
        with self.lock:
            self.state = snap
        if self.snapshots is not None:
            self.snapshots.restored(snap)
