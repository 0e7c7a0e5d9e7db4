"""`tessera run`: run one command on the cluster and wait for it, like mesos-execute.

    tessera run --cpus 0.5 --mem 64 -- python3 -c 'print(42)'
    tessera run --masters m1:5050,m2:5050 --env GREETING=hi -- 'echo $GREETING; sleep 1'

One argument after `--` is a shell command (`/bin/sh -c`); several are an argv. The command subscribes
a short-lived framework, takes the first offer that fits `--cpus`/`--mem`, launches one task, prints its
state transitions to stderr, and exits with the task's exit code. What it prints when the task ends:

- Output. The master does not serve sandbox files (no Operator call reads them yet), so the task's
  stdout is printed only when the terminal status names the sandbox (`sandbox=PATH` in its message)
  and that directory is readable from here (a local cluster); otherwise the sandbox path, or the agent
  that holds it, is printed to stderr instead.
- Exit status. TASK_FINISHED: the task's exit code (0). TASK_FAILED, KILLED, LOST, ERROR, DROPPED,
  GONE: the task's exit code when it has a non-zero one, else 1, with one line saying why. No master
  answering within `--connect-timeout`, or no fitting offer within `--offer-timeout`: 1. Bad input
  (non-positive --cpus/--mem, nothing to run, malformed --env or --masters): one line naming the flag,
  exit 2. Ctrl-C kills the task and exits 130.

The framework is torn down at the end, so nothing is left behind on the master.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import click

from tessera.control_plane.tls import ClientSecurity, TlsConfigError
from tessera.sdk.driver import SchedulerDriver
from tessera.sdk.errors import TesseraError
from tessera.sdk.grpc_transport import GrpcTransport
from tessera.sdk.scheduler import Scheduler
from tessera.sdk.transport import Transport
from tessera.sdk.types import (
    DEFAULT_ROLE,
    Filters,
    FrameworkInfo,
    Offer,
    Resources,
    TaskInfo,
    TaskState,
    TaskStatus,
)

DEFAULT_MASTERS = "127.0.0.1:5050"
ADDRESS_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}\Z")
SANDBOX_RE = re.compile(r"sandbox[=:]\s*(\S+)")
MAX_OUTPUT_BYTES = 1 << 20  # print at most the last MiB of a task's stdout


class BadInput(Exception):
    """A flag's value is unusable; the message names the flag."""


@dataclass(frozen=True)
class RunOptions:
    command: tuple[str, ...]
    masters: tuple[str, ...] = (DEFAULT_MASTERS,)
    cpus: float = 0.1
    mem: float = 32.0
    name: str = "tessera-run"
    role: str = DEFAULT_ROLE
    env: tuple[tuple[str, str], ...] = ()
    offer_timeout: float = 60.0
    connect_timeout: float = 15.0
    user: str = ""  # the Unix user the task runs as ("" = the agent's own user); the ACL must allow it


def _positive(flag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadInput(f"{flag}: expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise BadInput(f"{flag}: must be a positive number, got {text}")
    return value


def parse_options(*, command: Sequence[str], masters: str, cpus: str, mem: str, name: str, role: str,
                  env: Sequence[str], offer_timeout: str, connect_timeout: str, user: str = "") -> RunOptions:
    """Validate the flags of `tessera run`; raises BadInput naming the first bad one."""
    if not command or not any(part.strip() for part in command):
        raise BadInput("nothing to run: give a command after --, e.g. tessera run -- echo hello")
    addresses = tuple(a.strip() for a in masters.split(",") if a.strip())
    if not addresses:
        raise BadInput("--masters: give at least one HOST:PORT")
    for address in addresses:
        if not ADDRESS_RE.match(address) or not 0 < int(address.rsplit(":", 1)[1]) < 65536:
            raise BadInput(f"--masters: expected HOST:PORT, got {address!r}")
    pairs: list[tuple[str, str]] = []
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadInput(f"--env: expected KEY=VALUE, got {item!r}")
        pairs.append((key, value))
    if not name.strip():
        raise BadInput("--name: must not be empty")
    if not role.strip():
        raise BadInput("--role: must not be empty")
    return RunOptions(
        command=tuple(command), masters=addresses, cpus=_positive("--cpus", cpus), mem=_positive("--mem", mem),
        name=name, role=role, env=tuple(pairs), offer_timeout=_positive("--offer-timeout", offer_timeout),
        connect_timeout=_positive("--connect-timeout", connect_timeout), user=user.strip(),
    )


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class OneShot(Scheduler):
    """Launch one task on the first offer that fits, follow it to a terminal state, tear down."""

    def __init__(self, task: TaskInfo, say: Callable[[str], None]) -> None:
        self.task = task
        self.say = say
        self.offer: Offer | None = None  # where the task was launched
        self.final: TaskStatus | None = None
        self.failure: str | None = None
        self.subscribed_at: float | None = None
        self.launched = threading.Event()
        self.done = threading.Event()
        self._seen: set[str] = set()  # uuids: the master re-sends updates whose ack a failover lost

    def subscribed(self, driver: SchedulerDriver, framework_id: str) -> None:
        if self.subscribed_at is None:
            self.subscribed_at = time.monotonic()
            self.say(f"subscribed as framework {framework_id} with {driver.master}")
        elif self.offer is not None:
            # Back after a disconnection: the update we missed (if any) is re-sent; ask anyway.
            try:
                for status in driver.reconcile([self.task.task_id]):
                    self.update(driver, status)
            except TesseraError as exc:
                self.say(f"reconciliation failed: {exc}")

    def offers(self, driver: SchedulerDriver, offers: list[Offer]) -> None:
        chosen = None
        if self.offer is None:
            chosen = next((o for o in offers if o.fits(self.task.resources)), None)
        if chosen is not None:
            try:
                driver.launch(chosen, [self.task])
            except TesseraError as exc:
                self.say(f"launch on offer {chosen.offer_id} failed ({exc}); waiting for another offer")
                chosen = None
            else:
                self.offer = chosen
                self.launched.set()
                self.say(f"task {self.task.task_id} launched on agent {chosen.agent_id} ({chosen.hostname})")
        rest = [o for o in offers if o is not chosen]
        try:
            if rest:
                # Short refusal while still looking (resources may free up), long once launched.
                driver.decline(rest, Filters(3600.0 if self.offer is not None else 1.0))
            if self.offer is not None:
                driver.suppress()
        except TesseraError as exc:
            self.say(f"declining offers failed: {exc}")

    def update(self, driver: SchedulerDriver, status: TaskStatus) -> None:
        if status.task_id != self.task.task_id or self.final is not None or status.uuid in self._seen:
            return
        if status.uuid:
            self._seen.add(status.uuid)
        code = f" (exit {status.exit_code})" if status.exit_code is not None else ""
        why = f": {_one_line(status.message, 120)}" if status.message and status.is_terminal else ""
        self.say(f"task {status.task_id} {status.state.name}{code}{why}")
        if status.is_terminal:
            self.final = status
            self.done.set()
            try:
                driver.teardown()
            except TesseraError:
                driver.stop()

    def error(self, driver: SchedulerDriver, message: str) -> None:
        self.failure = message
        self.done.set()


def print_output(status: TaskStatus, offer: Offer | None, out: TextIO, say: Callable[[str], None]) -> None:
    """The task's stdout if it can be read from here, else where it is (see the module docstring)."""
    match = SANDBOX_RE.search(status.message)
    where = f"agent {status.agent_id or (offer.agent_id if offer else '?')}"
    if offer is not None and offer.hostname:
        where += f" ({offer.hostname})"
    if match is None:
        if status.data:  # the agent sent the tail of the output with the final status
            out.write(status.data.decode(errors="replace"))
            out.flush()
            return
        say(f"the task's output stays in its sandbox on {where}; the master does not serve sandbox files")
        return
    sandbox = Path(match.group(1))
    stdout = sandbox / "stdout"
    try:
        with stdout.open("rb") as f:
            size = stdout.stat().st_size
            if size > MAX_OUTPUT_BYTES:
                f.seek(size - MAX_OUTPUT_BYTES)
                say(f"(showing the last {MAX_OUTPUT_BYTES} bytes of {stdout})")
            data = f.read()
    except OSError:
        if status.data:  # not readable from here (another machine): the tail the agent sent
            say(f"(the last {len(status.data)} bytes of the output; all of it is in {sandbox} on {where})")
            out.write(status.data.decode(errors="replace"))
            out.flush()
            return
        say(f"the task's output is in {sandbox} on {where}")
        return
    out.write(data.decode(errors="replace"))
    out.flush()


def exit_code_for(status: TaskStatus) -> int:
    """The task's exit code; 1 for a task that did not finish and has no non-zero code of its own."""
    code = status.exit_code
    if status.state is TaskState.TASK_FINISHED:
        return code or 0
    return code if code else 1


def run_task(options: RunOptions, *, transport: Transport | None = None, out: TextIO | None = None,
             err: TextIO | None = None, security: ClientSecurity | None = None) -> int:
    """Run one task as `tessera run` does and return the process exit code.

    `security` (mTLS with a framework certificate, a bearer token) builds the gRPC transport when no
    `transport` is given."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr

    def say(line: str) -> None:
        err.write(f"tessera run: {line}\n")
        err.flush()

    command: str | tuple[str, ...] = options.command[0] if len(options.command) == 1 else options.command
    task = TaskInfo(task_id=f"{options.name}-{uuid.uuid4().hex[:12]}", name=options.name,
                    resources=Resources.of(cpus=options.cpus, mem=options.mem), command=command,
                    env=dict(options.env), user=options.user)
    scheduler = OneShot(task, say)
    framework = FrameworkInfo(name=options.name, roles=(options.role,), failover_timeout=60.0)
    if transport is None and security is not None:
        transport = GrpcTransport(credentials=security.credentials, token=security.token)
    driver = SchedulerDriver(scheduler, framework, list(options.masters), transport=transport,
                             give_up_after=options.connect_timeout)
    shown = shlex.join(options.command) if len(options.command) > 1 else options.command[0]
    say(f"running {shown!r} with cpus:{options.cpus:g};mem:{options.mem:g}")
    driver.start()
    try:
        while not driver.join(0.1):
            started = scheduler.subscribed_at
            if (not scheduler.launched.is_set() and started is not None
                    and time.monotonic() - started > options.offer_timeout):
                say(f"no offer fitting cpus:{options.cpus:g};mem:{options.mem:g} within "
                    f"{options.offer_timeout:g} s")
                _teardown(driver)
                return 1
    except KeyboardInterrupt:
        say("interrupted; killing the task")
        if scheduler.launched.is_set() and scheduler.final is None:
            try:
                driver.kill(task.task_id)
                scheduler.done.wait(10.0)
            except TesseraError as exc:
                say(f"kill failed: {exc}")
        _teardown(driver)
        return 130
    if scheduler.final is None:
        say(scheduler.failure or driver.failure or "the driver stopped before the task ended")
        return 1
    final = scheduler.final
    print_output(final, scheduler.offer, out, say)
    code = exit_code_for(final)
    if final.state is not TaskState.TASK_FINISHED:
        reason = f" ({final.reason})" if final.reason else ""
        say(f"task {final.task_id} ended {final.state.name}{reason}: "
            f"{_one_line(final.message) or 'no message'}; exit {code}")
    return code


def _teardown(driver: SchedulerDriver) -> None:
    try:
        driver.teardown()
    except TesseraError:
        driver.stop()
    driver.join(5.0)


def _security() -> ClientSecurity:
    """`tessera --tls-dir D --token-file F run ...`: the group's flags (and TESSERA_TOKEN), else
    TESSERA_TLS_DIR / TESSERA_TOKEN(_FILE), else the framework files a `tessera up --secure` cluster
    started here recorded, else plaintext."""
    from tessera.control_plane.tls import cluster_security, read_token_file

    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    obj = root.obj if root is not None and root is not ctx else None
    try:
        if obj is not None and any(getattr(obj, name, None) for name in ("tls_dir", "token", "token_file")):
            return obj.security  # type: ignore[no-any-return]
        if any(os.environ.get(name) for name in ("TESSERA_TLS_DIR", "TESSERA_TOKEN", "TESSERA_TOKEN_FILE")):
            return ClientSecurity.from_env()
        recorded = cluster_security("framework")
        if recorded is not None:
            return ClientSecurity.from_options(recorded[0], read_token_file(recorded[1]))
        return ClientSecurity.insecure()
    except TlsConfigError as exc:
        click.echo(f"tessera run: {exc}", err=True)
        sys.exit(2)


def _root_masters() -> str | None:
    """`tessera --masters X run ...`: the group's flag, when this command is registered in one."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    if root is not None and root is not ctx:
        value = root.params.get("masters")
        return str(value) if value else None
    return None


@click.command("run", context_settings={"allow_interspersed_args": False,
                                        "help_option_names": ["-h", "--help"]})
@click.option("--masters", default=None, metavar="HOST:PORT,...",
              help=f"masters to subscribe with (default: $TESSERA_MASTERS or {DEFAULT_MASTERS})")
@click.option("--cpus", default="0.1", metavar="N", show_default=True, help="CPUs for the task")
@click.option("--mem", default="32", metavar="N", show_default=True, help="memory for the task, in MiB")
@click.option("--name", default="tessera-run", show_default=True, help="framework and task name")
@click.option("--role", default=DEFAULT_ROLE, show_default=True, help="role to subscribe with")
@click.option("--env", multiple=True, metavar="KEY=VALUE", help="environment variable of the task (repeat)")
@click.option("--user", default="", metavar="USER",
              help="Unix user the task runs as (default: the agent's own); the ACL must grant it, e.g. nobody")
@click.option("--offer-timeout", default="60", metavar="N", show_default=True,
              help="seconds to wait for a fitting offer")
@click.option("--connect-timeout", default="15", metavar="N", show_default=True,
              help="seconds to wait for a master to answer")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run_command(masters: str | None, cpus: str, mem: str, name: str, role: str, env: tuple[str, ...], user: str,
                offer_timeout: str, connect_timeout: str, command: tuple[str, ...]) -> None:
    """Run one command as a task and exit with its exit code (like mesos-execute).

    One argument after -- is run with /bin/sh -c; several are an argv."""
    chosen = masters or _root_masters() or os.environ.get("TESSERA_MASTERS") or DEFAULT_MASTERS
    try:
        options = parse_options(command=command, masters=chosen, cpus=cpus, mem=mem, name=name, role=role,
                                env=env, offer_timeout=offer_timeout, connect_timeout=connect_timeout, user=user)
    except BadInput as exc:
        click.echo(f"tessera run: {exc}", err=True)
        sys.exit(2)
    # the framework side of the task's trace: the SDK's client spans go to the leader, stored next to
    # its event log, so `tessera trace TASK` starts at the framework's Accept
    from tessera.control_plane.api.span_reporter import OperatorSpanStore
    from tessera.control_plane.tracing import setup_tracing

    security = _security()
    provider = setup_tracing("tessera-run", span_store=OperatorSpanStore(list(options.masters), security=security))
    try:
        code = run_task(options, security=security)
    finally:
        provider.shutdown()
    sys.exit(code)


if __name__ == "__main__":
    run_command()
