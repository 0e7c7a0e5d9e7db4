"""`tessera logs` and `tessera sandbox`: a task's output and the files of its sandbox (docs/files.md).

    tessera logs TASK_ID [-f] [--stderr] [--tail N] [--since 10m]
    tessera sandbox ls TASK_ID [PATH]
    tessera sandbox cat TASK_ID PATH
    tessera sandbox get TASK_ID PATH -o FILE

A task is named FRAMEWORK_ID/TASK_ID, or by its bare id when one framework's tasks use it (several: the
error lists them), as in `tessera timeline`. Each command finds the task's agent in the masters' state and
reads from the agent's file service directly; `--via-master` sends the same calls through a master, which
forwards them (for a machine that cannot reach the agents). The library is `tessera.sdk.files`.

`logs -f` follows the output as the task writes it, across rotations (stdout -> stdout.1), and ends when
the task has ended and its output is drained; when the agent restarts it re-dials (saying so on stderr)
for up to `--reconnect-for` seconds. Errors are one line and exit 1: NOT_FOUND (an unknown task or file, a
collected sandbox: the message says which), PERMISSION_DENIED (another principal's task without the
`logs` action, a symlink or special file in the sandbox), INVALID_ARGUMENT (a path leaving the sandbox),
UNAVAILABLE (the task's agent is gone or does not answer, named); bad flags exit 2.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NoReturn

import click

from tessera.control_plane.cli.inspect import fail
from tessera.control_plane.cli.shared import ctx_of, parse_duration


def _via_master_option(fn: Any) -> Any:
    return click.option("--via-master", is_flag=True,
                        help="Read through a master, which forwards to the task's agent (when this machine cannot "
                             "reach the agents); by default the agent is read directly.")(fn)


def _files(obj: Any, via_master: bool) -> Any:
    from tessera.sdk.files import SandboxFiles

    ctx = ctx_of(obj)
    return SandboxFiles(list(ctx.found.addresses), ctx.security, via_master=via_master, timeout=ctx.timeout)


def _failed(exc: Exception) -> NoReturn:
    from tessera.sdk.errors import status_for_error

    status, details, _ = status_for_error(exc)
    fail(f"{status}: {details}")


def _task(obj: Any, ref: str, via_master: bool) -> Any:
    from tessera.sdk.errors import TesseraError

    try:
        return _files(obj, via_master).task(ref)
    except TesseraError as exc:
        _failed(exc)


def _out() -> IO[bytes]:
    return click.get_binary_stream("stdout")


def _write(out: IO[bytes], data: bytes) -> None:
    try:
        out.write(data)
        out.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        sys.exit(0)


# ---- logs --------------------------------------------------------------------------------------------------
@click.command("logs")
@click.argument("task", metavar="[FRAMEWORK_ID/]TASK_ID")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what the task writes until it ends.")
@click.option("--stderr", "use_stderr", is_flag=True, help="The task's stderr instead of its stdout.")
@click.option("--tail", type=click.IntRange(min=0), default=None, metavar="N",
              help="Only the last N lines (then, with -f, what comes).")
@click.option("--since", default=None, metavar="DURATION",
              help="Only what was written in the last DURATION (30s, 10m, 2h, 1d; to about a second).")
@click.option("--reconnect-for", type=click.FloatRange(min=0), default=30.0, show_default=True, metavar="SECONDS",
              help="With -f: how long to keep re-dialling when the stream breaks (an agent restart).")
@_via_master_option
@click.pass_obj
def logs(obj: Any, task: str, follow: bool, use_stderr: bool, tail: int | None, since: str | None,
         reconnect_for: float, via_master: bool) -> None:
    """Print a task's stdout (or stderr): all of it, its last N lines, or what it wrote lately; with -f
    go on as it writes, across log rotations, until the task ends."""
    from tessera.sdk.errors import TesseraError

    since_time = 0.0
    if since is not None:
        try:
            since_time = time.time() - parse_duration(since)
        except ValueError as exc:
            fail(f"--since: {exc}", 2)
    path = "stderr" if use_stderr else "stdout"
    sandbox = _task(obj, task, via_master)
    out = _out()
    try:
        found, _, since_offset = sandbox.stat(path, since_time=since_time)
        start = since_offset if since_time else 0
        if tail is not None:
            start = max(start, sandbox.tail_start(path, found.size, tail))
        if not follow:
            for data in sandbox.read_range(path, start, found.size):
                _write(out, data)
            return

        def on_break(error: TesseraError, wait: float) -> None:
            click.echo(f"tessera logs: the stream broke ({error.message}); re-dialling in {wait:.1f} s", err=True)

        for chunk in sandbox.follow(path, start, found.inode, reconnect_for=reconnect_for, on_break=on_break):
            if chunk.rotated:
                click.echo(f"tessera logs: {path} was rotated (older output is in {path}.1, ...)", err=True)
            if chunk.data:
                _write(out, chunk.data)
    except TesseraError as exc:
        _failed(exc)
    except KeyboardInterrupt:
        sys.exit(130)


# ---- sandbox -----------------------------------------------------------------------------------------------
@click.group("sandbox")
def sandbox() -> None:
    """The files of a task's sandbox: list, print, download (from its agent, or --via-master)."""


def _mtime(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


@sandbox.command("ls")
@click.argument("task", metavar="[FRAMEWORK_ID/]TASK_ID")
@click.argument("path", default="", required=False)
@click.option("--json", "json_flag", is_flag=True, help="Print JSON.")
@_via_master_option
@click.pass_obj
def sandbox_ls(obj: Any, task: str, path: str, json_flag: bool, via_master: bool) -> None:
    """List a directory of the task's sandbox (PATH relative to it; the sandbox itself by default).
    Symlinks are shown, never followed; a collected sandbox says so."""
    import json as jsonlib

    from rich.console import Console
    from rich.table import Table

    from tessera.sdk.errors import TesseraError

    found = _task(obj, task, via_master)
    try:
        entries, truncated = found.list(path)
    except TesseraError as exc:
        _failed(exc)
    if json_flag or getattr(obj, "as_json", False):
        click.echo(jsonlib.dumps({"task": found.name, "path": path or ".", "truncated": truncated,
                                  "files": [{"path": e.path, "kind": e.kind, "size": e.size, "mtime": e.mtime,
                                             "mode": f"{e.mode:04o}"} for e in entries]}, indent=2))
        return
    table = Table("kind", "mode", "size", "modified (UTC)", "path")
    for e in entries:
        table.add_row(e.kind, f"{e.mode:04o}", str(e.size), _mtime(e.mtime), e.path + ("/" if e.kind == "directory" else ""))
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    if truncated:
        click.echo(f"(more entries than one answer carries: showing {len(entries)})", err=True)


@sandbox.command("cat")
@click.argument("task", metavar="[FRAMEWORK_ID/]TASK_ID")
@click.argument("path")
@_via_master_option
@click.pass_obj
def sandbox_cat(obj: Any, task: str, path: str, via_master: bool) -> None:
    """Print a file of the task's sandbox (as it is now)."""
    from tessera.sdk.errors import TesseraError

    found = _task(obj, task, via_master)
    out = _out()
    try:
        for data in found.read_range(path, 0):
            _write(out, data)
    except TesseraError as exc:
        _failed(exc)


@sandbox.command("get")
@click.argument("task", metavar="[FRAMEWORK_ID/]TASK_ID")
@click.argument("path")
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="Where to write it ('-': stdout).")
@click.option("--json", "json_flag", is_flag=True, help="Print what was written as JSON.")
@_via_master_option
@click.pass_obj
def sandbox_get(obj: Any, task: str, path: str, output: Path, json_flag: bool, via_master: bool) -> None:
    """Download a file of the task's sandbox to FILE (its size when the download started)."""
    import json as jsonlib

    from tessera.sdk.errors import TesseraError

    found = _task(obj, task, via_master)
    try:
        info, _, _ = found.stat(path)
        if info.kind != "file":
            fail(f"INVALID_ARGUMENT: {path} is a {info.kind}, not a file", 1)
        pieces: Iterator[bytes] = found.read_range(path, 0, info.size)
        written = 0
        if str(output) == "-":
            out = _out()
            for data in pieces:
                _write(out, data)
                written += len(data)
        else:
            partial = output.with_name(output.name + ".part")
            try:
                with open(partial, "wb") as f:
                    for data in pieces:
                        f.write(data)
                        written += len(data)
                partial.replace(output)
            except OSError as exc:
                partial.unlink(missing_ok=True)
                fail(f"-o: cannot write {output} ({exc.strerror or exc})", 2)
    except TesseraError as exc:
        _failed(exc)
    if json_flag or getattr(obj, "as_json", False):
        click.echo(jsonlib.dumps({"task": found.name, "path": path, "file": str(output), "bytes": written}))
    elif str(output) != "-":
        click.echo(f"wrote {written} bytes of {found.name}:{path} to {output}", err=True)
