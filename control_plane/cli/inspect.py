"""`tessera state` and `tessera timeline`: history for operators (`tessera events` is in `cli.events`, on the
same client and printing, which live here).

Every command works against a running cluster (the Operator API: `GetState`, `GetStateAt`,
`ListEvents`, `WatchEvents`) and, with `--db PATH`, offline against an `events.db` file (a master's, or
an export), read-only. Both paths go through the same logic (the `tessera.control_plane.eventlog` history
modules) and the same printing, so they print alike.

Points in history (`--at`, `--diff`, `--since`) are an event index (`42`, `#42`), unix seconds
(`@1700000000`, or any number >= 1e9), ISO-8601 (UTC when no offset is given, as every time printed
here is UTC), or a relative time (`10m`, `2h ago`).

Rules: bad input, unknown ids, points outside the history, unreadable files and a cluster that does
not answer end with one line on stderr (`tessera: ...`) and a non-zero exit, never a traceback.
`--json` prints JSON (NDJSON for event streams) on stdout, nothing else.

These commands do not import `tessera.control_plane.cli.main` (which registers them): they use the group's
context object (`cli.shared.Ctx`: masters, timeout, --json, security) through `click.pass_obj`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click
import grpc

from tessera.control_plane.cli.shared import ctx_of, stale_note
from tessera.control_plane.codec.operator_api import (
    event_filter_to_proto,
    event_record_from_proto,
    history_point_to_proto,
    state_at_to_proto,
)
from tessera.control_plane.eventlog import EventFilter, EventRecord
from tessera.control_plane.eventlog.errors import AmbiguousTask, HistoryError, HistoryPruned
from tessera.control_plane.eventlog.eventfile import EventFile
from tessera.control_plane.eventlog.export import record_json  # noqa: F401 - `tessera events --json` prints it
from tessera.control_plane.eventlog.replay import state_and_diff
from tessera.control_plane.eventlog.source import iter_records
from tessera.control_plane.eventlog.timeline import (
    KINDS,
    detect_kinds,
    frameworks_naming_task,
    kind_filter,
    resolve_task,
    split_task_ref,
)
from tessera.control_plane.eventlog.timeline import (
    timeline as timeline_items,
)
from tessera.control_plane.eventlog.timepoints import Point, format_time, parse_point

ID_KEYS = ("framework_id", "agent_id", "task_id", "offer_id")
HISTORY_RPC_SECONDS = 120.0  # a rebuild far from any snapshot replays many events: allow for it


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"tessera: {message}", err=True)
    sys.exit(code)


def _json_mode(obj: Any, flag: bool) -> bool:
    return flag or bool(getattr(obj, "as_json", False))


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, sort_keys=True, ensure_ascii=False))


def _point(text: str, flag: str) -> Point:
    try:
        return parse_point(text, time.time())
    except ValueError as exc:
        fail(f"{flag}: {exc}", 2)


def _open_db(path: Path) -> EventFile:
    try:
        return EventFile(path)
    except HistoryError as exc:
        fail(str(exc))


# ---- talking to the cluster --------------------------------------------------------------------------------
class _Cluster:
    """A leader-following client whose calls fail with one line (and may take long: history)."""

    def __init__(self, obj: Any, rpc_timeout: float | None = None) -> None:
        self.ctx = ctx_of(obj)
        self.timeout = self.ctx.timeout
        self.client = self.ctx.new_client(rpc_timeout or 5.0)

    def call(self, method: Callable[[Any], Any], request: Any, timeout: float | None = None) -> Any:
        from tessera.control_plane.api.client import NoMasterAvailable

        try:
            return self.client.call(method, request, timeout=timeout)
        except NoMasterAvailable as exc:
            self.ctx.no_master(exc)
        except grpc.RpcError as err:
            fail(_rpc_message(err))

    def close(self) -> None:
        self.client.close()


def _rpc_message(err: grpc.RpcError) -> str:
    code, details = err.code(), err.details() or ""
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return "this master does not serve that call (an older version?); read its events.db with --db"
    if code == grpc.StatusCode.OUT_OF_RANGE:
        return f"history not kept: {details}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return details
    return f"{code.name}: {details}"


def _remote_records(cluster: _Cluster, flt: EventFilter, from_index: int = 0,
                    limit: int | None = None) -> Iterator[EventRecord]:
    """Events from the cluster page by page (ListEvents holds at most 10000 per call)."""
    from tessera.v1 import operator_pb2

    cursor, left = from_index, limit
    while left is None or left > 0:
        page_size = 10_000 if left is None else min(left, 10_000)
        resp = cluster.call(lambda s: s.ListEvents, operator_pb2.ListEventsRequest(
            from_index=cursor, limit=page_size, filter=event_filter_to_proto(flt)))
        for r in resp.events:
            yield event_record_from_proto(r)
        if len(resp.events) < page_size:
            return
        cursor = resp.events[-1].index + 1
        if left is not None:
            left -= len(resp.events)


# ---- printing ------------------------------------------------------------------------------------------
def _compact(value: Any, skip: Iterable[str] = (), shown: frozenset[str] = frozenset()) -> str:
    """A payload in one short line: `k=v` pairs, empty values left out, nested objects dotted,
    resources in their flag form (cpus:1;mem:128), ids already `shown` on the line left out."""
    parts: list[str] = []

    def walk(prefix: str, v: Any) -> None:
        if v in ("", None, [], {}, False) or (isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0):
            return
        if isinstance(v, str) and v in shown and prefix.rsplit(".", 1)[-1] in ID_KEYS:
            return
        if isinstance(v, dict):
            for k, sub in v.items():
                walk(f"{prefix}.{k}" if prefix else k, sub)
        elif isinstance(v, list) and v and all(isinstance(x, dict) and "name" in x for x in v):
            parts.append(f"{prefix}={_resources_text(v)}")
        elif isinstance(v, list):
            parts.append(f"{prefix}=" + ",".join(str(x) for x in v))
        else:
            text = str(v)
            parts.append(f"{prefix}={text if ' ' not in text else json.dumps(text, ensure_ascii=False)}")

    if isinstance(value, dict):
        for k, v in value.items():
            if k not in skip:
                walk(k, v)
    else:
        walk("", value)
    return " ".join(parts)


def _resources_text(items: list[dict[str, Any]]) -> str:
    out = []
    for r in items:
        name = f"{r['name']}({r['role']})" if r.get("role") else r["name"]
        if "ranges" in r:
            out.append(f"{name}:[" + ",".join(f"{b}-{e}" for b, e in r["ranges"]) + "]")
        else:
            out.append(f"{name}:{r.get('scalar', 0):g}")
    return ";".join(out)


def _payload(r: EventRecord) -> Any:
    try:
        return json.loads(r.payload)
    except ValueError:
        return r.payload


_TYPE_COLOURS = {"Rejected": "red", "AgentUnreachable": "yellow", "AgentRemoved": "yellow",
                 "FrameworkRemoved": "yellow", "FrameworkDisconnected": "yellow", "LeaderElected": "magenta"}


def _event_body(r: EventRecord) -> str:
    """Type, ids and the compact payload of one event."""
    ids = " ".join(f"{k.removesuffix('_id')}={getattr(r, k)}" for k in ID_KEYS if getattr(r, k))
    payload = _payload(r)
    shown = frozenset(getattr(r, k) for k in ID_KEYS if getattr(r, k))
    compact = _compact(payload, skip=ID_KEYS, shown=shown) if isinstance(payload, dict) else str(payload)
    if len(compact) > 160:
        compact = compact[:159] + "…"
    kind = click.style(f"{r.type:<24}", fg=_TYPE_COLOURS.get(r.type, "cyan"))
    return f"{kind} {ids}  {_health_mark(payload)}{compact}".rstrip()


def _health_mark(payload: Any) -> str:
    """`healthy ` or `unhealthy ` before a status that carries health (docs/health-checks.md), which the
    compact payload would show last, or cut off."""
    status = payload.get("status") if isinstance(payload, dict) else None
    healthy = status.get("healthy") if isinstance(status, dict) else None
    if not isinstance(healthy, bool):
        return ""
    return click.style("healthy", fg="green") + " " if healthy else click.style("unhealthy", fg="red") + " "


def record_line(r: EventRecord) -> str:
    """One event for people: index, UTC time, type, ids, compact payload."""
    return f"{r.seq:>8}  {format_time(r.time)}  {_event_body(r)}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.3f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


# ---- tessera state ---------------------------------------------------------------------------------------
@click.command("state")
@click.option("--at", "at_text", metavar="INDEX|TIME",
              help="The state as of this event index or time (default: now, from the leader).")
@click.option("--diff", "diff_text", metavar="INDEX|TIME",
              help="Print what changed from this point to --at (default --at: the latest event).")
@click.option("--db", type=click.Path(path_type=Path),
              help="Read this events.db (a master's, or an export) instead of asking the cluster.")
@click.option("--stale", is_flag=True,
              help="The state now from any master's own copy (may be behind; a follower does not know which "
                   "agents are connected): the output then says so. Default: from the leader.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def state(obj: Any, at_text: str | None, diff_text: str | None, db: Path | None, stale: bool, as_json: bool) -> None:
    """The cluster state: now, as of an event index or time, or what changed between two points.

    \b
      tessera state                          the leader's state now
      tessera state --at 1200                as of event 1200
      tessera state --at 2025-01-31T12:00Z   as of the last event at or before that time
      tessera state --at 1200 --diff 1000    what changed from event 1000 to 1200
      tessera state --at 42 --db m1/events.db   offline, from a file
    """
    as_json = _json_mode(obj, as_json)
    at = _point(at_text, "--at") if at_text else None
    since = _point(diff_text, "--diff") if diff_text else None
    if db is None and at is None and since is None:
        _print_current_state(obj, as_json, stale)
        return
    if stale:
        fail("--stale: only for the state now (a point in history is read from the answering master's own log)", 2)
    if db is not None:
        resp = _state_at_offline(db, at, since)
    else:
        resp = _state_at_remote(obj, at, since)
    if as_json:
        from google.protobuf.json_format import MessageToDict

        click.echo(json.dumps(MessageToDict(resp, preserving_proto_field_name=True), indent=2, sort_keys=True))
        return
    if since is not None:
        _print_changes(resp)
    else:
        _print_state(resp.state, _point_header(resp.at, resp.state))


def _state_at_offline(db: Path, at: Point | None, since: Point | None) -> Any:
    now = time.time()
    with _open_db(db) as source:
        try:
            target = at or Point(index=source.last_seq())
            result, before, diff = state_and_diff(source, target, since, now)
        except (HistoryError, HistoryPruned) as exc:
            fail(str(exc))
        return state_at_to_proto(result, before, diff, source.first_seq(), source.last_seq())


def _state_at_remote(obj: Any, at: Point | None, since: Point | None) -> Any:
    from tessera.v1 import operator_pb2

    req = operator_pb2.GetStateAtRequest(at=history_point_to_proto(at or Point(time=time.time())))
    if since is not None:
        req.diff_from.CopyFrom(history_point_to_proto(since))
    cluster = _Cluster(obj, rpc_timeout=HISTORY_RPC_SECONDS)
    try:
        # find a master that answers within --timeout; only then allow the rebuild its own, longer time
        cluster.call(lambda s: s.ListEvents, operator_pb2.ListEventsRequest(limit=1, descending=True))
        return cluster.call(lambda s: s.GetStateAt, req, timeout=HISTORY_RPC_SECONDS)
    finally:
        cluster.close()


def _print_current_state(obj: Any, as_json: bool, stale: bool = False) -> None:
    from google.protobuf.json_format import MessageToDict

    from tessera.v1 import operator_pb2

    cluster = _Cluster(obj)
    try:
        resp = cluster.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=not stale))
    finally:
        cluster.close()
    if not resp.from_leader:
        stale_note(resp)
    if as_json:
        click.echo(json.dumps(MessageToDict(resp, preserving_proto_field_name=True), indent=2, sort_keys=True))
        return
    _print_state(resp, f"state {'now' if resp.from_leader else 'as a follower holds it'}: index {resp.index}, "
                       f"term {resp.term}, leader {resp.leader or '?'}")


def _point_header(p: Any, s: Any) -> str:
    asked = f" (asked: {p.requested_index})" if p.requested_index != p.index else ""
    when = format_time(p.time) if p.time else "before the first event"
    how = (f"snapshot {p.snapshot_index} + {p.replayed_events} events replayed" if p.snapshot_index
           else f"{p.replayed_events} events replayed")
    return f"state at index {p.index}{asked}, {when}, term {s.term}, leader {s.leader or '-'}  [{how}]"


def _print_state(resp: Any, header: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from tessera.control_plane.codec import resources_from_proto
    from tessera.v1 import common_pb2

    def res(items: Any) -> str:
        return str(resources_from_proto(items)) if len(items) else "-"

    def name(enum_type: Any, value: int, prefix: str) -> str:
        return (enum_type.Name(value) if value in enum_type.values() else str(value)).removeprefix(prefix)

    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(header, highlight=False, markup=False)
    by_state: dict[str, int] = {}
    for t in resp.tasks:
        key = name(common_pb2.TaskState, t.state, "TASK_")
        by_state[key] = by_state.get(key, 0) + 1
    states = ", ".join(f"{k} {v}" for k, v in sorted(by_state.items()))
    console.print(f"agents {len(resp.agents)}  frameworks {len(resp.frameworks)}  tasks {len(resp.tasks)}"
                  f"{f' ({states})' if states else ''}  offers {len(resp.offers)}  roles {len(resp.roles)}",
                  highlight=False, markup=False)
    if resp.agents:
        table = Table("agent", "host", "state", "used", "total", "offered", "tasks", title="agents",
                      title_justify="left")
        for a in resp.agents:
            table.add_row(a.agent_id, a.info.hostname, name(common_pb2.AgentState, a.state, "AGENT_"), res(a.used),
                          res(a.info.resources), res(a.offered), str(a.task_count))
        console.print(table)
    if resp.frameworks:
        table = Table("framework", "name", "state", "roles", "used", "offered", "suppressed", title="frameworks",
                      title_justify="left")
        for f in resp.frameworks:
            table.add_row(f.framework_id, f.info.name, name(common_pb2.FrameworkState, f.state, "FRAMEWORK_"),
                          ",".join(f.info.roles), res(f.used), res(f.offered), ",".join(f.suppressed_roles) or "-")
        console.print(table)
    if resp.tasks:
        table = Table("task", "framework", "agent", "state", "resources", "unacked", "message", title="tasks",
                      title_justify="left")
        for t in resp.tasks:
            table.add_row(t.task.task_id, t.task.framework_id, t.task.agent_id,
                          name(common_pb2.TaskState, t.state, "TASK_"), res(t.task.resources),
                          str(t.unacknowledged_updates), t.last_status.message[:60])
        console.print(table)
    if resp.roles:
        table = Table("role", "weight", "quota guarantee", "quota limit", title="roles", title_justify="left")
        for r in resp.roles:
            table.add_row(r.role, f"{r.weight:g}", res(r.quota_guarantee), res(r.quota_limit))
        console.print(table)
    if resp.offers:
        table = Table("offer", "framework", "agent", "role", "resources", "expires", title="offers",
                      title_justify="left")
        for o in resp.offers:
            table.add_row(o.offer_id, o.framework_id, o.agent_id, o.role, res(o.resources),
                          format_time(o.expires_at) if o.expires_at else "never")
        console.print(table)


_MARKS = {"added": ("+", "green"), "removed": ("-", "red"), "changed": ("~", "yellow")}


def _print_changes(resp: Any) -> None:
    a, b = resp.diff_from, resp.at
    click.echo(f"changes from index {a.index} ({format_time(a.time) if a.time else 'start'}) "
               f"to index {b.index} ({format_time(b.time) if b.time else 'start'})")
    if not resp.changes:
        click.echo("no change")
        return
    counts: dict[str, dict[str, int]] = {}
    for c in resp.changes:
        counts.setdefault(c.kind, {}).setdefault(c.change, 0)
        counts[c.kind][c.change] += 1
    click.echo("  ".join(f"{kind}s " + " ".join(f"{_MARKS[ch][0]}{n}" for ch, n in sorted(by.items()))
                         for kind, by in counts.items()))
    for c in resp.changes:
        mark, colour = _MARKS.get(c.change, ("?", "white"))
        head = click.style(f"{mark} {c.kind:<9} {c.id or '(cluster)'}", fg=colour)
        if c.change == "changed":
            detail = ", ".join(f"{f.field} {f.before or '-'} → {f.after or '-'}" for f in c.fields)
        else:
            detail = " ".join(f"{f.field}={f.after or f.before}" for f in c.fields if (f.after or f.before) not in
                              ("", "-", "0", "no"))
        click.echo(f"{head}  {detail}")


# ---- tessera timeline ----------------------------------------------------------------------------------
@click.command("timeline")
@click.argument("ident", metavar="TASK|FRAMEWORK|AGENT")
@click.option("--kind", type=click.Choice(KINDS), help="What ID is, when it names more than one kind.")
@click.option("--db", type=click.Path(path_type=Path), help="Read this events.db instead.")
@click.option("--json", "as_json", is_flag=True, help="Print NDJSON: one event per line, with gap_seconds.")
@click.pass_obj
def timeline(obj: Any, ident: str, kind: str | None, db: Path | None, as_json: bool) -> None:
    """Every event about one task, framework or agent, in order, with the time since the previous one.

    Task ids are scoped per framework: name a task FRAMEWORK_ID/TASK_ID, or by its bare id when one
    framework's tasks use it."""
    as_json = _json_mode(obj, as_json)
    if db is not None:
        with _open_db(db) as source:
            try:
                kind = _choose_kind(ident, kind, detect_kinds(source, ident))
                if kind == "task":
                    ident = "/".join(resolve_task(source, ident))
                _print_timeline(ident, kind, iter_records(source, kind_filter(kind, ident)), as_json)
            except (HistoryError, HistoryPruned) as exc:
                fail(str(exc))
        return
    cluster = _Cluster(obj)
    try:
        found = [k for k in KINDS if next(_remote_records(cluster, kind_filter(k, ident), limit=1), None)]
        kind = _choose_kind(ident, kind, found)
        if kind == "task" and not split_task_ref(ident)[0]:
            named = frameworks_naming_task(_remote_records(cluster, kind_filter("task", ident)))
            if len(named) > 1:
                fail(str(AmbiguousTask(ident, named)))
            ident = f"{named[0]}/{ident}" if named else ident
        _print_timeline(ident, kind, _remote_records(cluster, kind_filter(kind, ident)), as_json)
    finally:
        cluster.close()


def _choose_kind(ident: str, kind: str | None, found: list[str]) -> str:
    if kind is not None:
        if kind not in found:
            fail(f"no event names {kind} {ident!r}" + (f" (it names a {' and a '.join(found)})" if found else ""))
        return kind
    if not found:
        fail(f"no event names {ident!r} as a task, framework or agent (ids are case-sensitive; "
             "`tessera events` lists recent ones)")
    if len(found) > 1:
        fail(f"{ident!r} names a {' and a '.join(found)}; choose with --kind")
    return found[0]


def _print_timeline(ident: str, kind: str, records: Iterable[EventRecord], as_json: bool) -> None:
    items = timeline_items(records)
    first = True
    for item in items:
        r = item.record
        if as_json:
            _emit(record_json(r, gap_seconds=item.gap, since_start_seconds=item.since_start))
            continue
        if first:
            click.echo(f"{kind} {ident}")
            first = False
        gap = "" if item.gap is None else "+" + _duration(item.gap)
        click.echo(f"{r.seq:>8}  {format_time(r.time)}  {gap:>11}  {_event_body(r)}")
