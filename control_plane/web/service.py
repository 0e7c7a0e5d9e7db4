"""The reads behind the JSON API: one method per endpoint, blocking, returning JSON-able dicts (the big
state-at/diff answers: JSON text) or raising the domain's errors (`core.errors`, `eventlog.errors`, `WebError` below), which the edge (`web.app`) maps to
status codes in one place.

Every read goes through the objects the Operator gRPC servicer uses (`api.operator.OperatorService`): the
replica's state under `StateView.read` (with the leader's soft state), the event log of this master, the
quorum view with its fan-out (`OperatorService.quorum_view`), the masters' proxy to the agents' file
services (`api.files_proxy.FilesProxy`), and the history modules (`eventlog.replay.state_and_diff` with
the servicer's cache of rebuilt states, `codec.operator_api.state_at_to_proto`) — so `/api/v1/state?at=N` is the
answer `tessera state --at N --json` prints, built by the same code. Nothing here writes: every method is
a read, on any master (a follower answers from its own replica; only traces need the leader, which keeps
the spans).

The caller's `Visibility` (`core.visibility`) is applied to every task, payload and span, as the
Operator API applies it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.json_format import MessageToDict

from tessera.control_plane.allocation import dominant_shares, snapshot_from_state
from tessera.control_plane.api.files_proxy import FilesProxy
from tessera.control_plane.codec.operator_api import state_at_to_proto
from tessera.control_plane.core.acl import Caller
from tessera.control_plane.core.errors import NotFound
from tessera.control_plane.core.values import TaskKey
from tessera.control_plane.core.visibility import Visibility, visibility_for
from tessera.control_plane.eventlog import EventFilter, EventRecord
from tessera.control_plane.eventlog.errors import AmbiguousTask, HistoryPruned
from tessera.control_plane.eventlog.replay import state_and_diff
from tessera.control_plane.eventlog.timeline import resolve_task, split_task_ref, timeline
from tessera.control_plane.eventlog.timepoints import Point, resolve_point
from tessera.control_plane.web import views
from tessera.control_plane.web.params import EventQuery, Listing, OutputQuery, Page
from tessera.v1 import files_pb2
from tessera.v1.operator_pb2 import GetStateAtResponse

MAX_TIMELINE = 10_000
ANSWERS_KEPT = 32  # state-at/diff answers kept written out (a page each: ~100 KB with 100 tasks)
QUORUM_REFRESH_SECONDS = 0.5
PEER_TIMEOUT = 1.0
Json = dict[str, Any]
K = TypeVar("K")
V = TypeVar("V")
log = logging.getLogger(__name__)


class WebError(Exception):
    """An answer of the web API that is not one of the domain's errors: `status`, `code`, extra fields."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


@dataclass(frozen=True)
class Resolved:
    """A task named by a `{ref}`: its key, and the record the state keeps (None: only events name it)."""

    key: TaskKey
    found: tuple[Any, bool] | None


class QuorumRefresher:
    """The members' own figures, asked off the request path: a daemon thread asks every master (the
    fan-out of `quorum_view`, up to `PEER_TIMEOUT` when one is down) every `interval` seconds and keeps
    the last answer with the monotonic time it was taken. Started by the first `latest()`, ended by
    `close()`."""

    def __init__(self, ask: Callable[[], Any], interval: float = QUORUM_REFRESH_SECONDS) -> None:
        self._ask, self._interval = ask, interval
        self._lock = threading.Lock()
        self._last: tuple[float, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def latest(self) -> tuple[Any, float] | None:
        """The last full view and its age in seconds (None before the first answer)."""
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="web-quorum", daemon=True)
                self._thread.start()
            last = self._last
        return None if last is None else (last[1], max(0.0, time.monotonic() - last[0]))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                view = self._ask()
            except Exception:  # noqa: BLE001 - a failed round keeps the previous answer (its age says so)
                log.warning("asking the masters for the quorum view failed", exc_info=True)
            else:
                with self._lock:
                    self._last = (time.monotonic(), view)
            self._stop.wait(self._interval)

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(PEER_TIMEOUT + 1.0)


def overlay_members(local: Any, probed: Any) -> Any:
    """The local view (leader, term, this master's indexes: fresh) with each other member's own figures
    taken from the last probe (`probed`, a `GetQuorumResponse`; a member it lacks stays as local says)."""
    by_address = {m.raft_address: m for m in probed.members}
    for m in local.members:
        seen = by_address.get(m.raft_address)
        if m.is_self or seen is None:
            continue
        is_leader = m.is_leader
        m.CopyFrom(seen)
        m.is_leader = is_leader
    return local


class Lru(Generic[K, V]):
    """A thread-safe map keeping its `size` most recently used entries."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class WebReader:
    """The JSON API's reads over one master (`operator`: its `OperatorService`)."""

    def __init__(self, operator: Any, *, insecure: bool, clock: Callable[[], float] = time.time) -> None:
        self.operator = operator
        self.master = operator.master
        self.files: FilesProxy = operator.files
        self.insecure = insecure
        self._clock = clock
        self._refresher = QuorumRefresher(lambda: operator.quorum_view(peer_timeout=PEER_TIMEOUT))
        self._overview_lock = threading.Lock()
        self._overview: tuple[tuple[int, float], Json] | None = None
        self._answers: Lru[tuple[int, int | None, Visibility, Page], tuple[str, Json]] = Lru(ANSWERS_KEPT)

    # ---- helpers -------------------------------------------------------------------------------------
    def _read(self, fn: Callable[[Any, Any], Any]) -> Any:
        return self.operator.state_view.read(fn)

    def quorum(self) -> tuple[Any, float | None]:
        """This master's quorum view, read now, with the other members' figures from the background
        refresher's last round, and that round's age in seconds (None: no round finished yet)."""
        local = self.operator.quorum_view(local_only=True)
        latest = self._refresher.latest()
        if latest is None:
            return local, None
        probed, age = latest
        return overlay_members(local, probed), age

    def close(self) -> None:
        """End the background quorum refresher."""
        self._refresher.close()

    def leader_url(self) -> str | None:
        leader = next((m for m in self.quorum()[0].members if m.is_leader), None)
        return leader.ui_url or None if leader is not None else None

    # ---- overview -----------------------------------------------------------------------------------
    def cluster(self, visibility: Visibility) -> Json:
        now = self._clock()

        def build(s: Any, soft: Any) -> Json:
            # counts, resources and shares change only when an entry is applied: one walk per (seq, time)
            key = (s.seq, s.time)
            with self._overview_lock:
                if self._overview is not None and self._overview[0] == key:
                    return self._overview[1]
            shares = dominant_shares(snapshot_from_state(s, now))
            body = {"index": s.seq, "time": s.time, "counts": views.counts_json(s),
                    "resources": views.resources_summary(s),
                    "roles": views.roles_json(s, shares, views.role_allocations(s))}
            with self._overview_lock:
                self._overview = (key, body)
            return body

        body = self._read(build)
        view, age = self.quorum()
        quorum = views.quorum_json(view, body["index"])
        return {"insecure": self.insecure, **body, **quorum, "quorum_age": None if age is None else round(age, 3)}

    # ---- tables -------------------------------------------------------------------------------------
    def agents(self, listing: Listing) -> Json:
        return self._read(lambda s, soft: {"index": s.seq, **views.agents_page(s, listing, soft.heartbeat_ages)})

    def agent(self, agent_id: str) -> Json:
        def one(s: Any, soft: Any) -> Json:
            a = s.agents.get(agent_id)
            if a is None:
                raise NotFound(f"no agent {agent_id!r} is known")
            return {"index": s.seq, **views.agent_json(agent_id, a, soft.heartbeat_ages)}
        result: Json = self._read(one)
        return result

    def frameworks(self, listing: Listing) -> Json:
        return self._read(lambda s, soft: {"index": s.seq, **views.frameworks_page(s, listing)})

    def framework(self, framework_id: str) -> Json:
        def one(s: Any, soft: Any) -> Json:
            f = s.frameworks.get(framework_id)
            if f is None:
                raise NotFound(f"no framework {framework_id!r} is known")
            return {"index": s.seq, **views.framework_json(s, framework_id, f)}
        result: Json = self._read(one)
        return result

    def tasks(self, listing: Listing) -> Json:
        return self._read(lambda s, soft: {"index": s.seq, **views.tasks_page(s, listing)})

    # ---- one task -----------------------------------------------------------------------------------
    def resolve(self, ref: str) -> Resolved:
        """The task `ref` names: `FRAMEWORK_ID/TASK_ID` or a bare id one framework uses (state, then log)."""
        framework_id, task_id = split_task_ref(ref)
        if not task_id:
            raise NotFound("no task named")
        if not framework_id:
            using = self.master.read_state(lambda s: views.frameworks_using(s, task_id))
            if len(using) > 1:
                raise AmbiguousTask(task_id, using)
            framework_id = using[0] if using else resolve_task(self.master.events, task_id)[0]
            if not framework_id:
                raise NotFound(f"no task {task_id!r} is known")
        key = TaskKey(framework_id, task_id)
        found = self.master.read_state(lambda s: views.find_task(s, key))
        if found is None and not self._task_events(key, 1):
            raise NotFound(f"no task {framework_id}/{task_id} is known")
        return Resolved(key, found)

    def _task_events(self, key: TaskKey, limit: int) -> list[EventRecord]:
        store = self.master.events
        flt = EventFilter(task_id=key.task_id, framework_id=key.framework_id)
        records: list[EventRecord] = store.list(from_seq=store.first_seq(), limit=limit, flt=flt)
        return records

    def task(self, ref: str, visibility: Visibility) -> Json:
        r = self.resolve(ref)
        records = self._task_events(r.key, MAX_TIMELINE)

        def detail(s: Any, soft: Any) -> Json:
            found = views.find_task(s, r.key)
            reader = views.Reader.of(visibility, s)
            if found is None:
                out = views.task_from_events(r.key.framework_id, r.key.task_id, records)
                out.update(info=None, agent=None, framework=None)
            else:
                out = views.task_detail(s, found[0], found[1], reader)
            return {"index": s.seq, **out, "statuses": views.status_history(records)}

        result: Json = self._read(detail)
        return result

    def task_timeline(self, ref: str, visibility: Visibility) -> Json:
        r = self.resolve(ref)
        records = self._task_events(r.key, MAX_TIMELINE + 1)
        reader = self._read(lambda s, soft: views.Reader.of(visibility, s))
        items = views.timeline_json(ref, timeline(records[:MAX_TIMELINE]), reader)
        return {"ref": views.task_ref(*r.key), "index": self.master.events.last_seq(), "items": items,
                "truncated": len(records) > MAX_TIMELINE}

    def task_trace(self, ref: str, visibility: Visibility) -> Json:
        r = self.resolve(ref)
        if not self.master.is_serving():
            raise WebError(503, "not_leader", "traces are kept by the leader: ask its UI",
                           leader_url=self.leader_url())
        store = self.master.events
        trace_ids = store.traces_for_task(r.key.task_id, r.key.framework_id)
        if not trace_ids:
            raise NotFound(f"no trace names task {views.task_ref(*r.key)}")
        events = self._task_events(r.key, MAX_TIMELINE)

        def build(s: Any, soft: Any) -> Json:
            reader = views.Reader.of(visibility, s)
            full = reader.sees(r.key.framework_id)
            return {"ref": views.task_ref(*r.key), "index": s.seq, "traces": [
                views.trace_json(t, store.spans_for_trace(t), [e for e in events if e.trace_id == t], full, reader)
                for t in trace_ids]}

        result: Json = self._read(build)
        return result

    def task_output(self, ref: str, q: OutputQuery, caller: Caller) -> Json:
        r = self.resolve(ref)
        placement, sandbox = self.files.authorize(caller, files_pb2.SandboxRef(
            framework_id=r.key.framework_id, task_id=r.key.task_id))
        stat = self.files.call(placement, lambda stub: stub.Stat, files_pb2.StatFileRequest(
            task=sandbox, path=q.stream))
        size = int(stat.file.size)
        start = max(0, size - q.tail)
        data, eof = b"", True
        if size > start:
            read = self.files.call(placement, lambda stub: stub.Read, files_pb2.ReadFileRequest(
                task=sandbox, path=q.stream, offset=start, length=size - start))
            data, eof, start = bytes(read.data), bool(read.eof), int(read.offset)
        return {"ref": views.task_ref(*r.key), "stream": q.stream, "size": size, "offset": start,
                "data": data.decode("utf-8", errors="replace"), "eof": eof, "truncated": start > 0}

    # ---- events -------------------------------------------------------------------------------------
    @staticmethod
    def event_filter(q: EventQuery) -> EventFilter:
        return EventFilter(types=q.types, framework_id=q.framework, agent_id=q.agent, task_id=q.task)

    def events(self, q: EventQuery, visibility: Visibility) -> Json:
        store = self.master.events
        first, last = store.first_seq(), store.last_seq()
        flt = self.event_filter(q)
        want = q.limit + 1
        records: list[EventRecord]
        if q.after is not None:
            if q.after + 1 < first:
                raise HistoryPruned(first)
            records = store.list(from_seq=q.after + 1, limit=want, flt=flt) if q.after < last else []
            more = len(records) > q.limit
            records = records[:q.limit]
        else:
            start = last if q.before is None else min(q.before - 1, last)
            if q.before is not None and start < first and start >= 1:
                raise HistoryPruned(first)
            records = store.list(from_seq=start, limit=want, flt=flt, descending=True) if start >= 1 else []
            more = len(records) > q.limit
            records = list(reversed(records[:q.limit]))
        reader = self._read(lambda s, soft: views.Reader.of(visibility, s))
        return {"index": last, "first_index": first, "last_index": last,
                "first_time": self._time_of(first, last), "last_time": self._time_of(last, last),
                "items": [reader.event(r) for r in records], "more": more}

    def _time_of(self, seq: int, last: int) -> float | None:
        """The time event `seq` was recorded (None: no such event, or retention removed it meanwhile)."""
        if seq < 1 or seq > last:
            return None
        try:
            found = self.master.events.list(from_seq=seq, limit=1)
        except HistoryPruned:
            return None
        return float(found[0].time) if found and found[0].seq == seq else None

    def reader_for(self, visibility: Visibility) -> views.Reader:
        reader: views.Reader = self._read(lambda s, soft: views.Reader.of(visibility, s))
        return reader

    # ---- history ------------------------------------------------------------------------------------
    def state_at(self, at: Point | None, since: Point | None, visibility: Visibility, page: Page) -> str:
        """`tessera state --at AT [--diff SINCE] --json`, from this master's event log, as JSON text, with
        one page of its tasks and changes (`page`; `tasks_total`, `changes_total`: how many in all).

        The states come from `eventlog.replay.state_and_diff` with this master's cache of rebuilt states
        (`OperatorService.history_cache`, shared with Operator.GetStateAt); the answer for the same
        resolved points, page and reader is kept written out (`ANSWERS_KEPT`: the history of an index
        never changes), with this master's first and last index filled in fresh on every request."""
        store = self.master.events
        now = self._clock()
        target = resolve_point(store, at or Point(index=store.last_seq()), now)
        origin = None if since is None else resolve_point(store, since, now)
        key = (target, origin, visibility, page)
        kept = self._answers.get(key)
        if kept is None:
            result, before, diff = state_and_diff(
                store, Point(index=target), None if origin is None else Point(index=origin), now,
                cache=self.operator.history_cache, keep=self.operator.history_snapshots().keep)
            resp = state_at_to_proto(result, before, diff, visibility=visibility, page=(page.offset, page.limit))
            totals: Json = {"offset": page.offset, "limit": page.limit, "tasks_total": len(result.state.tasks)}
            if diff is not None:
                totals["changes_total"] = len(diff.changes)
            kept = (views.json_text(MessageToDict(resp, preserving_proto_field_name=True)), totals)
            self._answers.put(key, kept)
        text, totals = kept
        head = GetStateAtResponse(first_index=store.first_seq(), last_index=store.last_seq())
        return views.with_fields({**MessageToDict(head, preserving_proto_field_name=True), **totals}, text)

    # ---- services -----------------------------------------------------------------------------------
    def services(self, visibility: Visibility) -> Json:
        def build(s: Any, soft: Any) -> Json:
            fid = views.services_framework(s)
            if fid is not None and not views.Reader.of(visibility, s).sees(fid):
                return {"index": s.seq, "framework_id": fid, "items": []}
            return {"index": s.seq, "framework_id": fid, "items": views.services_json(s, fid)}
        result: Json = self._read(build)
        return result

    def service(self, app_id: str, visibility: Visibility) -> Json:
        def build(s: Any, soft: Any) -> Json:
            fid = views.services_framework(s)
            if fid is not None and not views.Reader.of(visibility, s).sees(fid):
                fid = None
            found = views.service_json(s, fid, app_id)
            if found is None:
                raise NotFound(f"no service {app_id!r}")
            return {"index": s.seq, **found}
        result: Json = self._read(build)
        return result

    # ---- UI routes ----------------------------------------------------------------------------------
    def page_exists(self, kind: str, ident: str) -> str | None:
        """None when the page's id names something; else the not-found message."""
        try:
            if kind == "agents":
                self.agent(ident)
            elif kind == "frameworks":
                self.framework(ident)
            elif kind == "tasks":
                self.resolve(ident)
            elif kind == "services":
                self.service(ident, Visibility(None, sees_all=True))
        except NotFound as exc:
            return exc.message
        except AmbiguousTask:
            return None  # the page explains it (its API call answers 400 naming the frameworks)
        return None


def web_caller(guard: Any, token: str | None) -> Caller:
    """The reader behind a web request: anyone without an ACL; else the token's principal, which needs the
    `read` action. Raises Unauthenticated / PermissionDenied (`core.acl`)."""
    from tessera.control_plane.core.acl import authenticate, check_operator

    acl = guard.acl
    if acl is None:
        return Caller(None, None)
    caller = authenticate(acl, None, "Operator/GetState", token)
    check_operator(caller, "GetState")
    return caller


def visibility_of(caller: Caller) -> Visibility:
    return visibility_for(caller)

