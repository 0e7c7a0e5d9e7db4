"""`tessera framework state FRAMEWORK_ID [PREFIX]` (in the `framework` group of cli/operate.py) prints
its key/value state (docs/protocol.md), every page of it, in key order; values of another principal's
framework read "<redacted>" unless the operator's grant has `read_all`."""

from __future__ import annotations

from typing import Any

import click

PAGE = 500  # keys asked for per call (the master caps a page at 1000 keys and about 1 MiB of values)


@click.command("state")
@click.argument("framework_id")
@click.argument("prefix", required=False, default="")
@click.option("--consistent", is_flag=True, help="Read after a barrier through the log (from the leader).")
@click.pass_context
def state(ctx: click.Context, framework_id: str, prefix: str, consistent: bool) -> None:
    """The key/value state of FRAMEWORK_ID (keys starting with PREFIX): key, version, size, value."""
    import sys

    from rich.console import Console
    from rich.table import Table

    from tessera.v1 import operator_pb2

    c: Any = ctx.obj
    entries: list[Any] = []
    start_after = ""
    while True:
        resp = c.call(lambda s: s.GetFrameworkState, operator_pb2.GetFrameworkStateRequest(
            framework_id=framework_id, prefix=prefix, start_after=start_after, limit=PAGE, consistent=consistent))
        entries.extend(resp.entries)
        if not resp.more or not resp.entries:
            break
        start_after = resp.entries[-1].key
    if c.as_json:
        c.emit({"framework_id": framework_id, "lease_term": resp.lease_term, "keys": resp.keys, "bytes": resp.bytes,
                "index": resp.index,
                "entries": [{"key": e.key, "value": e.value, "version": e.version, "size": e.size} for e in entries]})
        return
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(f"framework {framework_id}: lease term {resp.lease_term}, {resp.keys} keys, {resp.bytes} bytes "
                  f"(event index {resp.index}){f'; {len(entries)} with prefix {prefix!r}' if prefix else ''}")
    table = Table("key", "version", "bytes", "value")
    for e in entries:
        value = e.value if len(e.value) <= 80 else e.value[:79] + "…"
        table.add_row(e.key, str(e.version), str(e.size), value.replace("\n", "\\n"))
    console.print(table)
