"""`tessera trace TASK_ID`: a task's traces as span trees (from the spans stored next to the leader's event
log, no collector needed), each followed by the events of that trace.

Unknown task (no span and no event names it with a trace): one line on stderr, exit 1.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click
import grpc
from rich.console import Console
from rich.tree import Tree

from tessera.control_plane.cli.inspect import _Cluster, _rpc_message, fail
from tessera.control_plane.eventlog.timeline import split_task_ref


def _label(span: Any, t0: float) -> str:
    duration = max(0.0, span.end_time - span.start_time) * 1000
    status = " [red]ERROR[/red]" if span.status == "ERROR" else ""
    return (f"[bold]{span.name}[/bold] [cyan]{span.service}[/cyan] {span.kind} "
            f"+{(span.start_time - t0) * 1000:.1f}ms [green]{duration:.2f}ms[/green]{status}")


def render_trace(trace: Any, task_id: str) -> Tree:
    """The span tree of one trace (spans whose parent is not stored hang from the root), then its events."""
    spans: Sequence[Any] = list(trace.spans)
    times = [s.start_time for s in spans] + [e.time for e in trace.events]
    t0 = min(times) if times else 0.0
    root = Tree(f"trace [bold]{trace.trace_id}[/bold] (task {task_id})")
    known = {s.span_id for s in spans}
    children: dict[str, list[Any]] = {}
    for s in spans:
        children.setdefault(s.parent_span_id if s.parent_span_id in known else "", []).append(s)

    def add(node: Tree, parent_id: str, depth: int) -> None:
        for s in sorted(children.get(parent_id, ()), key=lambda x: (x.start_time, x.span_id)):
            child = node.add(_label(s, t0))
            if depth < 64:
                add(child, s.span_id, depth + 1)

    add(root, "", 0)
    if not spans:
        root.add("[dim](no stored spans)[/dim]")
    if trace.events:
        events = root.add("[bold]events[/bold]")
        for e in trace.events:
            events.add(f"#{e.index} [yellow]{e.type}[/yellow] +{(e.time - t0) * 1000:.1f}ms span {e.span_id or '-'}")
    return root


@click.command("trace")
@click.argument("task_id", metavar="[FRAMEWORK_ID/]TASK_ID")
@click.option("--json", "json_flag", is_flag=True, help="Print the traces as JSON.")
@click.pass_obj
def trace(obj: Any, task_id: str, json_flag: bool) -> None:
    """Draw a task's traces: the span tree (name, service, offset, duration) and the events of each.

    Task ids are scoped per framework: name the task FRAMEWORK_ID/TASK_ID, or by its bare id when one
    framework's tasks use it (several: the error lists them)."""
    from google.protobuf.json_format import MessageToDict

    from tessera.control_plane.api.client import NoMasterAvailable
    from tessera.v1 import operator_pb2

    cluster = _Cluster(obj)
    try:
        try:
            framework_id, bare_id = split_task_ref(task_id)
            resp = cluster.client.call(lambda s: s.GetTrace, operator_pb2.GetTraceRequest(
                task_id=bare_id, framework_id=framework_id))
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                fail(f"no trace found for task {task_id}")
            fail(_rpc_message(err))
        except NoMasterAvailable as exc:
            cluster.ctx.no_master(exc)
    finally:
        cluster.close()
    if json_flag or getattr(obj, "as_json", False):
        click.echo(json.dumps(MessageToDict(resp, preserving_proto_field_name=True), sort_keys=True))
        return
    console = Console(highlight=False, soft_wrap=True)
    for t in resp.traces:
        console.print(render_trace(t, task_id))
