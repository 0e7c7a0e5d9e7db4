"""`tessera events` (list, follow, export): the recorded events of a cluster or of an events.db, read-only.

Shares the rules, the cluster client and the printing of `tessera.control_plane.cli.inspect` (`tessera state`,
`tessera timeline`): one line on stderr and a non-zero exit for every failure, NDJSON with `--json`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click
import grpc

from tessera.control_plane.cli.inspect import (
    _Cluster,
    _emit,
    _json_mode,
    _open_db,
    _point,
    _remote_records,
    _rpc_message,
    fail,
    record_json,
    record_line,
)
from tessera.control_plane.codec.operator_api import event_filter_to_proto, event_record_from_proto
from tessera.control_plane.core.events import EVENT_FIELDS
from tessera.control_plane.eventlog import EventFilter, EventRecord
from tessera.control_plane.eventlog.errors import HistoryError, HistoryPruned
from tessera.control_plane.eventlog.export import export_events
from tessera.control_plane.eventlog.source import iter_records
from tessera.control_plane.eventlog.timepoints import Point, format_time

EVENT_TYPES = tuple(sorted(cls.__name__ for cls in EVENT_FIELDS))


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
@click.option("--type", "types", multiple=True, type=click.Choice(EVENT_TYPES), metavar="TYPE",
              help="Only events of this type (repeatable): " + ", ".join(EVENT_TYPES) + ".")
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
        fail(f"--since: {format_time(since.time)} is in the future")
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
            except (HistoryError, HistoryPruned) as exc:
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
                for shown, r in enumerate(iter_records(source, flt, from_seq=start, until_seq=last)):
                    if shown >= limit:
                        return
                    show(r)
                return
            cursor = last + 1  # like the cluster: without --since, only new events
            if start is not None or flt.since_time is not None:
                for r in iter_records(source, flt, from_seq=start, until_seq=last):
                    show(r)
            while True:  # a master writes this file: poll it
                time.sleep(0.5)
                last = source.last_seq()
                if last >= cursor:
                    for r in iter_records(source, flt, from_seq=cursor, until_seq=last):
                        show(r)
                    cursor = last + 1
        except HistoryPruned as exc:
            fail(f"{'fell behind' if follow else 'history not kept'}: {exc}; events are kept from index "
                 f"{exc.first_kept} (use --since {exc.first_kept})")
        except HistoryError as exc:
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
    import random

    from tessera.control_plane import wire
    from tessera.control_plane.api.client import BACKOFF
    from tessera.v1 import operator_pb2

    # Every master serves the stream (followers too), so no leader hint is followed: the walk over the
    # masters and its waits are the shared DialPlan's.
    plan = wire.DialPlan(cluster.client.addresses, BACKOFF)
    dial, down_since = plan.first(), None
    while True:
        time.sleep(dial.delay)
        address, served = dial.address, False
        stream = cluster.client.operator(address).WatchEvents(
            operator_pb2.WatchEventsRequest(from_index=cursor, filter=event_filter_to_proto(flt)),
            metadata=cluster.client.metadata)
        try:
            for batch in stream:
                down_since, served = None, True
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
        dial = plan.after(address, healthy=served, leader_hint=None, fraction=random.random())


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
                written = _write_export(dest, start, last, iter_records(source, from_seq=start),
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
    except (HistoryError, HistoryPruned, OSError) as exc:
        fail(f"export failed: {exc}")
    click.echo(f"exported {written} events ({start}..{start + written - 1 if written else start}) to {dest}",
               err=True)


def _export_range(first: int, last: int, since: Point | None,
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
            fail(f"--since: {format_time(since.time)} is in the future")
        found = first_after(since.time)
        if not found:
            fail(f"--since: no event at or after {format_time(since.time)}")
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
        return export_events(dest, start, records, snapshots=snapshots, spans=spans,
                               on_batch=lambda n: progress.advance(task, n))
