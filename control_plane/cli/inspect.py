"""`tessera state`, `tessera timeline` and `tessera events` (list, follow, export): history for operators.

Every command works against a running cluster (the Operator API: `GetState`, `GetStateAt`,
`ListEvents`, `WatchEvents`) and, with `--db PATH`, offline against an `events.db` file (a master's, or
an export), read-only. Both paths go through the same logic (`control_plane.eventlog.history`) and the
same printing, so they print alike.

Points in history (`--at`, `--diff`, `--since`) are an event index (`42`, `#42`), unix seconds
(`@1700000000`, or any number >= 1e9), ISO-8601 (UTC when no offset is given, as every time printed
here is UTC), or a relative time (`10m`, `2h ago`).

Rules: bad input, unknown ids, points outside the history, unreadable files and a cluster that does
not answer end with one line on stderr (`tessera: ...`) and a non-zero exit, never a traceback.
`--json` prints JSON (NDJSON for event streams) on stdout, nothing else.

These commands do not import `control_plane.cli.main` (which registers them): they use the group's
context object (masters, timeout, --json) through `click.pass_obj`.
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

from control_plane.codec.operator_api import (
    event_filter_to_proto,
    event_record_from_proto,
    history_point_to_proto,
    state_at_to_proto,
)
from control_plane.eventlog import EventFilter, EventRecord
from control_plane.eventlog import history as h
from control_plane.eventlog.errors import HistoryPruned

ID_KEYS = ("framework_id", "agent_id", "task_id", "offer_id")
WATCH_RECONNECT_PAUSE = 0.5
HISTORY_RPC_SECONDS = 120.0  # a rebuild far from any snapshot replays many events: allow for it


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"tessera: {message}", err=True)
    sys.exit(code)


def _json_mode(obj: Any, flag: bool) -> bool:
    return flag or bool(getattr(obj, "as_json", False))


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, sort_keys=True, ensure_ascii=False))


def _point(text: str, flag: str) -> h.Point:
    try:
        return h.parse_point(text, time.time())
    except ValueError as exc:
        fail(f"{flag}: {exc}", 2)


def _open_db(path: Path) -> h.EventFile:
    try:
        return h.EventFile(path)
    except h.HistoryError as exc:
        fail(str(exc))


# ---- talking to the cluster --------------------------------------------------------------------------
def _addresses(obj: Any) -> list[str]:
    from control_plane.api.operator import ADDRESS_RE

    text = getattr(obj, "masters_text", "") or ""
    addresses = [a.strip() for a in text.split(",") if a.strip()]
    if not addresses:
        fail("--masters: give at least one HOST:PORT", 2)
    for a in addresses:
        if not ADDRESS_RE.match(a):
            fail(f"--masters: expected HOST:PORT, got {a!r}", 2)
    return addresses


class _Cluster:
    """A leader-following client whose calls fail with one line (and may take long: history)."""

    def __init__(self, obj: Any, rpc_timeout: float | None = None) -> None:
        from control_plane.api.client import MasterClient

        self.timeout = float(getattr(obj, "timeout", 10.0) or 10.0)
        self.client = MasterClient(_addresses(obj), timeout=self.timeout, rpc_timeout=rpc_timeout or 5.0,
                                   security=getattr(obj, "security", None))

    def call(self, method: Callable[[Any], Any], request: Any, timeout: float | None = None) -> Any:
        from control_plane.api.client import NoMasterAvailable

        try:
            return self.client.call(method, request, timeout=timeout)
        except NoMasterAvailable as exc:
            fail(f"{exc}; is the cluster up? (tessera up, or --masters / TESSERA_MASTERS)")
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


def record_json(r: EventRecord, **extra: Any) -> dict[str, Any]:
    """One event as an NDJSON object: the event log's columns, `at` (ISO time) and the payload parsed."""
    out: dict[str, Any] = {"seq": r.seq, "raft_index": r.raft_index, "position": r.position, "type": r.type,
                           "time": r.time, "at": h.format_time(r.time), "term": r.term,
                           "request_id": r.request_id, "trace_id": r.trace_id, "span_id": r.span_id,
                           "payload": _payload(r)}
    for key in ID_KEYS:
        out[key] = getattr(r, key)
    out.update(extra)
    return out


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
    return f"{kind} {ids}  {compact}".rstrip()


def record_line(r: EventRecord) -> str:
    """One event for people: index, UTC time, type, ids, compact payload."""
    return f"{r.seq:>8}  {h.format_time(r.time)}  {_event_body(r)}"


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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def state(obj: Any, at_text: str | None, diff_text: str | None, db: Path | None, as_json: bool) -> None:
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
        _print_current_state(obj, as_json)
        return
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


def _state_at_offline(db: Path, at: h.Point | None, since: h.Point | None) -> Any:
    now = time.time()
    with _open_db(db) as source:
        try:
            target = at or h.Point(index=source.last_seq())
            result = h.state_at(source, target, now)
            before = diff = None
            if since is not None:
                before = h.state_at(source, since, now)
                diff = h.diff_states(before.state, result.state)
        except (h.HistoryError, HistoryPruned) as exc:
            fail(str(exc))
        return state_at_to_proto(result, before, diff, source.first_seq(), source.last_seq())


def _state_at_remote(obj: Any, at: h.Point | None, since: h.Point | None) -> Any:
    from tessera.v1 import operator_pb2

    req = operator_pb2.GetStateAtRequest(at=history_point_to_proto(at or h.Point(time=time.time())))
    if since is not None:
        req.diff_from.CopyFrom(history_point_to_proto(since))
    cluster = _Cluster(obj, rpc_timeout=HISTORY_RPC_SECONDS)
    try:
        # find a master that answers within --timeout; only then allow the rebuild its own, longer time
        cluster.call(lambda s: s.ListEvents, operator_pb2.ListEventsRequest(limit=1, descending=True))
        return cluster.call(lambda s: s.GetStateAt, req, timeout=HISTORY_RPC_SECONDS)
    finally:
        cluster.close()


def _print_current_state(obj: Any, as_json: bool) -> None:
    from google.protobuf.json_format import MessageToDict

    from tessera.v1 import operator_pb2

    cluster = _Cluster(obj)
    try:
        resp = cluster.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True))
    finally:
        cluster.close()
    if as_json:
        click.echo(json.dumps(MessageToDict(resp, preserving_proto_field_name=True), indent=2, sort_keys=True))
        return
    _print_state(resp, f"state now: index {resp.index}, term {resp.term}, leader {resp.leader or '?'}")


def _point_header(p: Any, s: Any) -> str:
    asked = f" (asked: {p.requested_index})" if p.requested_index != p.index else ""
    when = h.format_time(p.time) if p.time else "before the first event"
    how = (f"snapshot {p.snapshot_index} + {p.replayed_events} events replayed" if p.snapshot_index
           else f"{p.replayed_events} events replayed")
    return f"state at index {p.index}{asked}, {when}, term {s.term}, leader {s.leader or '-'}  [{how}]"


def _print_state(resp: Any, header: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from control_plane.codec import resources_from_proto
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
                          h.format_time(o.expires_at) if o.expires_at else "never")
        console.print(table)


_MARKS = {"added": ("+", "green"), "removed": ("-", "red"), "changed": ("~", "yellow")}


def _print_changes(resp: Any) -> None:
    a, b = resp.diff_from, resp.at
    click.echo(f"changes from index {a.index} ({h.format_time(a.time) if a.time else 'start'}) "
               f"to index {b.index} ({h.format_time(b.time) if b.time else 'start'})")
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
@click.option("--kind", type=click.Choice(h.KINDS), help="What ID is, when it names more than one kind.")
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
                kind = _choose_kind(ident, kind, h.detect_kinds(source, ident))
                if kind == "task":
                    ident = "/".join(h.resolve_task(source, ident))
                _print_timeline(ident, kind, h.iter_records(source, h.kind_filter(kind, ident)), as_json)
            except (h.HistoryError, HistoryPruned) as exc:
                fail(str(exc))
        return
    cluster = _Cluster(obj)
    try:
        found = [k for k in h.KINDS if next(_remote_records(cluster, h.kind_filter(k, ident), limit=1), None)]
        kind = _choose_kind(ident, kind, found)
        if kind == "task" and not h.split_task_ref(ident)[0]:
            named = h.frameworks_naming_task(_remote_records(cluster, h.kind_filter("task", ident)))
            if len(named) > 1:
                fail(str(h.AmbiguousTask(ident, named)))
            ident = f"{named[0]}/{ident}" if named else ident
        _print_timeline(ident, kind, _remote_records(cluster, h.kind_filter(kind, ident)), as_json)
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
    items = h.timeline(records)
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
        click.echo(f"{r.seq:>8}  {h.format_time(r.time)}  {gap:>11}  {_event_body(r)}")


# ---- tessera events ---------------------------------------------------------------------------------------
class _DefaultList(click.Group):
    """`tessera events [OPTIONS]` runs `list`; `tessera events export FILE` exports."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@click.group("events", cls=_DefaultList)
def events() -> None:
    """The event log: `tessera events [list options]` tails and follows it, `tessera events export FILE.db`
    copies it to an SQLite file (Datasette, sqlite-utils).

    \b
      tessera events --since 10m --type TaskStatusUpdated
      tessera events --follow --task t-1 --json
      tessera events --db .tessera/m1/events.db --limit 20
      tessera events export history.db --since 2025-01-31T00:00Z
    """


@events.command("list")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming new events (Ctrl-C stops).")
@click.option("--type", "types", multiple=True, help="Only events of this type (repeatable).")
@click.option("--framework", default="", help="Only events naming this framework id.")
@click.option("--agent", default="", help="Only events naming this agent id.")
@click.option("--task", default="", help="Only events naming this task id.")
@click.option("--offer", default="", help="Only events naming this offer id.")
@click.option("--since", "since_text", metavar="INDEX|TIME", help="Start at this event index or time.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1),
              help="At most this many events (before following).")
@click.option("--last", type=click.IntRange(min=1), default=None, metavar="N",
              help="The N most recent matching events instead (with --follow: then follow, like tail -f).")
@click.option("--db", type=click.Path(path_type=Path), help="Read this events.db instead.")
@click.option("--json", "as_json", is_flag=True, help="Print NDJSON, one event per line.")
@click.pass_obj
def events_list(obj: Any, follow: bool, types: tuple[str, ...], framework: str, agent: str, task: str, offer: str,
                since_text: str | None, limit: int, last: int | None, db: Path | None, as_json: bool) -> None:
    """Events in order from --since (default: the first kept; --last N: the N most recent), optionally
    followed live."""
    as_json = _json_mode(obj, as_json)
    if last is not None and since_text:
        fail("--last and --since: give one of them", 2)
    since = _point(since_text, "--since") if since_text else None
    if since is not None and since.time is not None and since.time > time.time() + 1:
        fail(f"--since: {h.format_time(since.time)} is in the future")
    flt = EventFilter(types=types, framework_id=framework, agent_id=agent, task_id=task, offer_id=offer,
                      since_time=since.time if since is not None else None)
    start = since.index if since is not None and since.index is not None else None

    def show(r: EventRecord) -> None:
        if as_json:
            _emit(record_json(r))
        else:
            click.echo(record_line(r))

    try:
        if last is not None:
            start = _show_last(obj, db, flt, last, show)
            if not follow:
                return
        if db is not None:
            _events_offline(db, flt, start, limit, follow, show)
        else:
            _events_remote(obj, flt, start, limit, follow, show)
    except KeyboardInterrupt:
        pass


def _show_last(obj: Any, db: Path | None, flt: EventFilter, n: int, show: Callable[[EventRecord], None]) -> int:
    """Show the `n` most recent matching events; returns the index to follow from."""
    if db is not None:
        with _open_db(db) as source:
            last = source.last_seq()
            try:
                records = source.list(from_seq=last, limit=n, flt=flt, descending=True)
            except (h.HistoryError, HistoryPruned) as exc:
                fail(str(exc))
    else:
        from tessera.v1 import operator_pb2

        cluster = _Cluster(obj)
        try:
            resp = cluster.call(lambda s: s.ListEvents, operator_pb2.ListEventsRequest(
                limit=min(n, 10_000), filter=event_filter_to_proto(flt), descending=True))
        finally:
            cluster.close()
        last = resp.last_index
        records = [event_record_from_proto(r) for r in resp.events if r.index <= last]
    for r in reversed(records):
        show(r)
    return last + 1


def _events_offline(db: Path, flt: EventFilter, start: int | None, limit: int, follow: bool,
                    show: Callable[[EventRecord], None]) -> None:
    with _open_db(db) as source:
        try:
            last = source.last_seq()  # read before listing: what is appended meanwhile comes next round
            if start is not None and start > last + 1 and not follow:
                fail(f"--since: index {start} is beyond the last event of this log ({last})")
            if not follow:
                for shown, r in enumerate(h.iter_records(source, flt, from_seq=start, until_seq=last)):
                    if shown >= limit:
                        return
                    show(r)
                return
            cursor = last + 1  # like the cluster: without --since, only new events
            if start is not None or flt.since_time is not None:
                for r in h.iter_records(source, flt, from_seq=start, until_seq=last):
                    show(r)
            while True:  # a master writes this file: poll it
                time.sleep(0.5)
                last = source.last_seq()
                if last >= cursor:
                    for r in h.iter_records(source, flt, from_seq=cursor, until_seq=last):
                        show(r)
                    cursor = last + 1
        except HistoryPruned as exc:
            fail(f"{'fell behind' if follow else 'history not kept'}: {exc}; events are kept from index "
                 f"{exc.first_kept} (use --since {exc.first_kept})")
        except h.HistoryError as exc:
            fail(str(exc))


def _events_remote(obj: Any, flt: EventFilter, start: int | None, limit: int, follow: bool,
                   show: Callable[[EventRecord], None]) -> None:
    from tessera.v1 import operator_pb2

    cluster = _Cluster(obj)
    try:
        if not follow:
            if start is not None:
                info = cluster.call(lambda s: s.ListEvents, operator_pb2.ListEventsRequest(limit=1, descending=True))
                if start > info.last_index:
                    fail(f"--since: index {start} is beyond the last event ({info.last_index})")
            for r in _remote_records(cluster, flt, from_index=start or 0, limit=limit):
                show(r)
            return
        # WatchEvents replays history from its start index, then streams: one call does both
        if start is not None:
            cursor = start
        elif flt.since_time is not None:
            head = list(_remote_records(cluster, EventFilter(since_time=flt.since_time), limit=1))
            cursor = head[0].seq if head else 0
        else:
            cursor = 0
        if not cursor:
            info = cluster.call(lambda s: s.ListEvents, operator_pb2.ListEventsRequest(limit=1, descending=True))
            cursor = info.last_index + 1
        _follow(cluster, flt, cursor, show)
    finally:
        cluster.close()


def _follow(cluster: _Cluster, flt: EventFilter, cursor: int, show: Callable[[EventRecord], None]) -> None:
    """Stream events from `cursor` on; when a master goes away, resume from the next one at the same index.

    Every master keeps the same history (same indexes), so resuming elsewhere neither repeats nor skips.
    Falling behind what a master keeps is the one error that cannot be resumed: OUT_OF_RANGE.
    """
    from tessera.v1 import operator_pb2

    addresses = cluster.client.addresses
    i, down_since = 0, None
    while True:
        address = addresses[i % len(addresses)]
        stream = cluster.client.operator(address).WatchEvents(
            operator_pb2.WatchEventsRequest(from_index=cursor, filter=event_filter_to_proto(flt)),
            metadata=cluster.client.metadata)
        try:
            for batch in stream:
                down_since = None
                for r in batch.events:
                    show(event_record_from_proto(r))
                    cursor = r.index + 1
        except grpc.RpcError as err:
            code = err.code()
            if code == grpc.StatusCode.OUT_OF_RANGE:
                fail(f"fell behind: {err.details()} on {address}; the events since index {cursor} are gone "
                     "from this master (resume with --since at the first kept index)")
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                            grpc.StatusCode.CANCELLED):
                fail(_rpc_message(err))
        except KeyboardInterrupt:
            stream.cancel()
            raise
        now = time.monotonic()
        down_since = down_since or now
        if now - down_since > cluster.timeout:
            fail(f"lost the event stream: no master answered for {cluster.timeout:g}s (last index {cursor - 1})")
        i += 1
        time.sleep(WATCH_RECONNECT_PAUSE)


# ---- tessera events export ------------------------------------------------------------------------------
@events.command("export")
@click.argument("dest", metavar="FILE.db", type=click.Path(path_type=Path))
@click.option("--since", "since_text", metavar="INDEX|TIME", help="From this event index or time on "
              "(rounded down to the start of its entry).")
@click.option("--db", type=click.Path(path_type=Path),
              help="Export from this events.db (with its snapshots and spans) instead of the cluster.")
@click.option("--force", is_flag=True, help="Replace FILE.db if it exists.")
@click.pass_obj
def events_export(obj: Any, dest: Path, since_text: str | None, db: Path | None, force: bool) -> None:
    """Copy the event log into FILE.db: the same schema as a master's events.db, so `tessera events
    --db`, `tessera state --db`, `sqlite-utils` and Datasette open it."""
    since = _point(since_text, "--since") if since_text else None
    if dest.exists() and not force:
        fail(f"{dest} exists; use --force to replace it")
    if db is not None and dest.resolve() == db.resolve():
        fail("the export cannot replace the file it reads")
    try:
        if db is not None:
            with _open_db(db) as source:
                start, last = _export_range(source.first_seq(), source.last_seq(), since,
                                            lambda f, n: source.list(from_seq=f, limit=n),
                                            lambda t: source.list(from_seq=source.first_seq(), limit=1,
                                                                  flt=EventFilter(since_time=t)))
                written = _write_export(dest, start, last, h.iter_records(source, from_seq=start),
                                        snapshots=source.snapshots(max(start - 1, 0)), spans=source.spans())
        else:
            cluster = _Cluster(obj)
            try:
                from tessera.v1 import operator_pb2

                info = cluster.call(lambda s: s.ListEvents, operator_pb2.ListEventsRequest(limit=1, descending=True))
                start, last = _export_range(
                    info.first_index, info.last_index, since,
                    lambda f, n: list(_remote_records(cluster, EventFilter(), from_index=f, limit=n)),
                    lambda t: list(_remote_records(cluster, EventFilter(since_time=t), limit=1)))
                written = _write_export(dest, start, last, _remote_records(cluster, EventFilter(), from_index=start))
            finally:
                cluster.close()
    except (h.HistoryError, HistoryPruned, OSError) as exc:
        fail(f"export failed: {exc}")
    click.echo(f"exported {written} events ({start}..{start + written - 1 if written else start}) to {dest}",
               err=True)


def _export_range(first: int, last: int, since: h.Point | None,
                  at: Callable[[int, int], list[EventRecord]],
                  first_after: Callable[[float], list[EventRecord]]) -> tuple[int, int]:
    start = max(first, 1)
    if since is not None and since.index is not None:
        if since.index > last:
            fail(f"--since: index {since.index} is beyond the last event ({last})")
        if since.index < first:
            fail(f"--since: history before index {first} was pruned")
        start = max(since.index, 1)
    elif since is not None:
        assert since.time is not None
        if since.time > time.time() + 1:
            fail(f"--since: {h.format_time(since.time)} is in the future")
        found = first_after(since.time)
        if not found:
            fail(f"--since: no event at or after {h.format_time(since.time)}")
        start = found[0].seq
    head = at(start, 1)
    if head and head[0].seq == start and head[0].position and start - head[0].position >= first:
        start -= head[0].position  # whole entries only, so the export replays
    return start, last


def _write_export(dest: Path, start: int, last: int, records: Iterable[EventRecord],
                  snapshots: Iterable[tuple[int, bytes]] = (), spans: Iterable[dict[str, Any]] = ()) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    total = max(last - start + 1, 0)
    progress = Progress(TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=True, disable=total < 20_000)
    with progress:
        task = progress.add_task("events", total=total)
        return h.export_events(dest, start, records, snapshots=snapshots, spans=spans,
                               on_batch=lambda n: progress.advance(task, n))
