"""`tessera run`: run one command on the cluster and wait for it, like mesos-execute.

    tessera run --cpus 0.5 --mem 64 -- python3 -c 'print(42)'
    tessera run --masters m1:5050,m2:5050 --env GREETING=hi -- 'echo $GREETING; sleep 1'
    tessera run --image 127.0.0.1:5000/tools/busybox:1.35 -- sh -c 'hostname; ps'
    tessera run --image 127.0.0.1:5000/tools/busybox:1.35 --publish 8080 -- httpd -f -p 8080

`--uri URL[,extract][,executable][,no-cache][,output=NAME]` (repeat) fetches an artifact into the task's
sandbox before it starts (docs/fetcher.md): http, https or file URLs; `extract` unpacks an archive.

With `--image` the task runs in a container of that image (docs/containers.md): `--network` bridge (the
default: its own address on the agent's bridge), host or none; `--publish PORT[/udp]` publishes a
container port on a host port taken from the offer (printed when the task runs); `--volume
HOST:CONTAINER[:ro]` mounts a host path the agent allows. With no command the image's own runs.

One argument after `--` is a shell command (`/bin/sh -c`); several are an argv. The command subscribes
a short-lived framework, takes the first offer that fits `--cpus`/`--mem`, launches one task, prints its
state transitions to stderr, and exits with the task's exit code. What it prints:

- Output, live. Once the task runs, its stdout and stderr are followed from its agent's file service
  (`tessera.sdk.files`, docs/files.md: directly, or through a master when the agent cannot be reached or
  its state not read) and written to this process's stdout and stderr as the task writes them, until the
  task ends and they are drained. When no file service answers (an older cluster, a test double), the
  output is printed when the task ends, as before: the task's stdout when the terminal status names a
  sandbox readable from here (`sandbox=PATH`), else the tail the agent sent with the status, else where
  it is. A follow that broke half-way says so (and names `tessera logs`) instead of printing twice.
- Exit status. TASK_FINISHED: the task's exit code (0). TASK_FAILED, KILLED, LOST, ERROR, DROPPED,
  GONE: the task's exit code when it has a non-zero one, else 1, with one line saying why. No master
  answering within `--connect-timeout`, or no fitting offer within `--offer-timeout`: 1. Bad input
  (non-positive --cpus/--mem, nothing to run, malformed --env or --masters): one line naming the flag,
  exit 2. Ctrl-C (and, in `tessera run`, SIGTERM) kills the task, tears the framework down and exits
  130 (143 after SIGTERM).

The framework is torn down at the end, so nothing is left behind on the master.
"""

from __future__ import annotations

import codecs
import math
import re
import shlex
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from tessera.control_plane import wire
from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.uris import check_uris
from tessera.control_plane.core.values import TaskInfo as CoreTaskInfo
from tessera.control_plane.tls import ClientSecurity
from tessera.sdk.driver import SchedulerDriver
from tessera.sdk.errors import TesseraError
from tessera.sdk.files import SandboxFiles
from tessera.sdk.grpc_transport import GrpcTransport
from tessera.sdk.scheduler import Scheduler
from tessera.sdk.transport import Transport
from tessera.sdk.types import (
    DEFAULT_ROLE,
    CommandURI,
    ContainerInfo,
    Filters,
    FrameworkInfo,
    Offer,
    PortMapping,
    Resources,
    TaskInfo,
    TaskState,
    TaskStatus,
    Volume,
)

DEFAULT_MASTERS = wire.DEFAULT_MASTERS
OUTPUT_DRAIN_SECONDS = 10.0  # after the task ended, how long its output may take to arrive
FOLLOW_RECONNECT_SECONDS = 15.0
FIRST_SOURCE_SECONDS = 3.0  # an agent that does not answer from here for this long: go through a master
SANDBOX_RE = re.compile(r"sandbox[=:]\s*(\S+)")
MAX_OUTPUT_BYTES = 1 << 20  # print at most the last MiB of a task's stdout


class BadInput(Exception):
    """A flag's value is unusable; the message names the flag."""


@dataclass(frozen=True)
class RunOptions:
    command: tuple[str, ...]
    masters: tuple[str, ...] = (DEFAULT_MASTERS,)
    masters_source: str = ""  # where `masters` came from (--masters, TESSERA_MASTERS, a cluster.json...)
    cpus: float = 0.1
    mem: float = 32.0
    name: str = "tessera-run"
    role: str = DEFAULT_ROLE
    env: tuple[tuple[str, str], ...] = ()
    offer_timeout: float = 60.0
    connect_timeout: float = 15.0
    user: str = ""  # the Unix user the task runs as ("" = the agent's own user); the ACL must allow it
    image: str = ""  # run the command in a container of this image ("" = a command task)
    network: str = "bridge"  # a container's network: bridge, host or none
    publish: tuple[tuple[int, str], ...] = ()  # container ports (and protocols) to publish on host ports
    volumes: tuple[tuple[str, str, str], ...] = ()  # (host path, container path, "ro" | "rw")
    uris: tuple[CommandURI, ...] = ()  # fetched into the sandbox before the task starts


def _positive(flag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadInput(f"{flag}: expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise BadInput(f"{flag}: must be a positive number, got {text}")
    return value


def _publish(items: Sequence[str]) -> tuple[tuple[int, str], ...]:
    out = []
    for item in items:
        port, _, protocol = item.partition("/")
        protocol = protocol or "tcp"
        if not port.isdigit() or not 0 < int(port) < 65536 or protocol not in ("tcp", "udp"):
            raise BadInput(f"--publish: expected a container port (1-65535), optionally /tcp or /udp, got {item!r}")
        out.append((int(port), protocol))
    return tuple(out)


def _volumes(items: Sequence[str]) -> tuple[tuple[str, str, str], ...]:
    out = []
    for item in items:
        parts = item.split(":")
        if len(parts) not in (2, 3) or not all(parts[:2]) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise BadInput(f"--volume: expected HOST_PATH:CONTAINER_PATH[:ro|rw], got {item!r}")
        out.append((parts[0], parts[1], parts[2] if len(parts) == 3 else "rw"))
    return tuple(out)


_URI_FLAGS = ("extract", "executable", "no-cache")


def _uris(items: Sequence[str]) -> tuple[CommandURI, ...]:
    """`URL[,extract][,executable][,no-cache][,output=NAME]`: the options are taken from the end, so a URL
    may hold commas itself. Checked as the master checks them (core/uris.py)."""
    out = []
    for item in items:
        url, output = item, ""
        flags: set[str] = set()
        while "," in url:
            head, _, last = url.rpartition(",")
            if last in _URI_FLAGS:
                flags.add(last)
            elif last.startswith("output=") and not output:
                output = last[len("output="):]
            else:
                break
            url = head
        out.append(CommandURI(url, extract="extract" in flags, executable="executable" in flags, output_file=output,
                              no_cache="no-cache" in flags))
    try:
        check_uris(CoreTaskInfo("run", uris=tuple(out)), "task")
    except InvalidRequest as exc:
        raise BadInput(f"--uri: {exc.message.removeprefix('task.')}") from None
    return tuple(out)


def parse_options(*, command: Sequence[str], masters: str | None, cpus: str, mem: str, name: str, role: str,
                  env: Sequence[str], offer_timeout: str, connect_timeout: str, user: str = "", image: str = "",
                  network: str = "bridge", publish: Sequence[str] = (), volumes: Sequence[str] = (),
                  uris: Sequence[str] = ()) -> RunOptions:
    """Validate the flags of `tessera run`; raises BadInput naming the first bad one. `masters` None or
    empty: found as every client finds them (`tessera.control_plane.tls.find_masters`)."""
    if not image and (not command or not any(part.strip() for part in command)):
        raise BadInput("nothing to run: give a command after --, e.g. tessera run -- echo hello")
    if not image and (publish or volumes):
        raise BadInput(f"{'--publish' if publish else '--volume'}: only a container task (--image) has one")
    if network not in ("bridge", "host", "none"):
        raise BadInput(f"--network: must be bridge, host or none, got {network!r}")
    if publish and network != "bridge":
        raise BadInput(f"--publish: only the bridge network publishes ports (--network is {network})")
    from tessera.control_plane.tls import find_masters

    try:
        found = find_masters(masters)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
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
        command=tuple(command), masters=found.addresses, masters_source=found.source,
        cpus=_positive("--cpus", cpus), mem=_positive("--mem", mem),
        name=name, role=role, env=tuple(pairs), offer_timeout=_positive("--offer-timeout", offer_timeout),
        connect_timeout=_positive("--connect-timeout", connect_timeout), user=user.strip(), image=image.strip(),
        network=network, publish=_publish(publish), volumes=_volumes(volumes), uris=_uris(uris),
    )


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class OneShot(Scheduler):
    """Launch one task on the first offer that fits, follow it to a terminal state, tear down."""

    def __init__(self, task: TaskInfo, say: Callable[[str], None],
                 on_running: Callable[[str, TaskStatus], None] | None = None) -> None:
        self.task = task
        self.say = say
        self.on_running = on_running  # (framework id, status): the task runs (or ended first); once
        self.framework_id = ""
        self._running_told = False
        self.offer: Offer | None = None  # where the task was launched
        self.final: TaskStatus | None = None
        self.failure: str | None = None
        self.subscribed_at: float | None = None
        self.launched = threading.Event()
        self.done = threading.Event()
        self._seen: set[str] = set()  # uuids: the master re-sends updates whose ack a failover lost

    def subscribed(self, driver: SchedulerDriver, framework_id: str) -> None:
        self.framework_id = framework_id
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
            chosen = next((o for o in offers if o.fits(self.task.resources) and _host_ports(self.task, o)
                           is not None), None)
        if chosen is not None:
            self.task = _with_host_ports(self.task, chosen)
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
        where = ""
        if status.network is not None and status.network.ip_addresses and not status.is_terminal:
            where = f" at {', '.join(status.network.ip_addresses)}"
        self.say(f"task {status.task_id} {status.state.name}{code}{where}{why}")
        container = self.task.container
        if status.state is TaskState.TASK_RUNNING and container is not None and self.offer is not None:
            for m in container.port_mappings:
                self.say(f"container port {m.container_port}/{m.protocol} is published on "
                         f"{self.offer.hostname or self.offer.agent_id}:{m.host_port}")
        if (status.state is TaskState.TASK_RUNNING or status.is_terminal) and not self._running_told:
            self._running_told = True
            if self.on_running is not None and (status.state is TaskState.TASK_RUNNING or status.agent_id):
                self.on_running(self.framework_id, status)
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


def _host_ports(task: TaskInfo, offer: Offer) -> list[int] | None:
    """The offer's first free ports, one per port mapping the task's container asks for; None: too few."""
    container = task.container
    wanted = len(container.port_mappings) if container is not None else 0
    ports: list[int] = []
    for begin, end in offer.ports:
        for port in range(begin, end + 1):
            if len(ports) == wanted:
                return ports
            ports.append(port)
    return ports if len(ports) == wanted else None


def _with_host_ports(task: TaskInfo, offer: Offer) -> TaskInfo:
    """`task` with its port mappings' host ports taken from `offer` and added to its resources (Marathon's
    way: host ports are resources, so no two tasks on one agent get the same one)."""
    container = task.container
    ports = _host_ports(task, offer)
    if container is None or not container.port_mappings or not ports:
        return task
    mappings = tuple(PortMapping(m.container_port, port, m.protocol, m.name) for m, port in zip(container.port_mappings,
                                                                                        ports, strict=True))
    resources = task.resources + Resources.of(ports=[(p, p) for p in ports])
    return replace(task, resources=resources, container=replace(container, port_mappings=mappings))


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


class OutputStreams:
    """The task's stdout and stderr followed live into `out` and `err` (see the module docstring): one
    thread each, started once the task runs."""

    def __init__(self, files: SandboxFiles, out: TextIO, err: TextIO, say: Callable[[str], None]) -> None:
        self.files = files
        self.out, self.err, self.say = out, err, say
        self.threads: list[threading.Thread] = []
        self.written = {"stdout": 0, "stderr": 0}
        self.completed: set[str] = set()
        self.errors: dict[str, TesseraError] = {}

    def start(self, framework_id: str, task_id: str) -> None:
        ref = f"{framework_id}/{task_id}" if framework_id else task_id
        for name, sink in (("stdout", self.out), ("stderr", self.err)):
            thread = threading.Thread(target=self._follow, args=(ref, name, sink), name=f"run-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def _follow(self, ref: str, name: str, sink: TextIO) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        offset, inode = 0, 0
        sources = [self.files]
        if not self.files.via_master:  # the agent unreachable from here, or the state not readable: via a master
            sources.append(SandboxFiles(self.files.masters, self.files.security, via_master=True))
        for i, files in enumerate(sources):
            last = i == len(sources) - 1
            try:
                task = files.task(ref)
                reconnect = FOLLOW_RECONNECT_SECONDS if last else FIRST_SOURCE_SECONDS
                for chunk in task.follow(name, offset, inode, reconnect_for=reconnect):
                    if chunk.data:
                        sink.write(decoder.decode(chunk.data))
                        sink.flush()
                        self.written[name] += len(chunk.data)
                    offset, inode = chunk.offset + len(chunk.data), chunk.inode
                sink.write(decoder.decode(b"", final=True))
                sink.flush()
                self.completed.add(name)
                return
            except TesseraError as exc:
                self.errors[name] = exc

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def started(self) -> bool:
        return bool(self.threads)

    def streamed(self, name: str) -> bool:
        """The whole of `name` was written here (or, broken half-way, some of it: never print it twice)."""
        return name in self.completed or self.written[name] > 0


def exit_code_for(status: TaskStatus) -> int:
    """The task's exit code; 1 for a task that did not finish and has no non-zero code of its own."""
    code = status.exit_code
    if status.state is TaskState.TASK_FINISHED:
        return code or 0
    return code if code else 1


def run_task(options: RunOptions, *, transport: Transport | None = None, out: TextIO | None = None,
             err: TextIO | None = None, security: ClientSecurity | None = None,
             files: SandboxFiles | None = None) -> int:
    """Run one task as `tessera run` does and return the process exit code.

    `security` (mTLS with a framework certificate, a bearer token) builds the gRPC transport when no
    `transport` is given. `files` reads the task's output live (built from the masters and `security`
    when no `transport` is given; with a given transport and no `files`, the output is printed at the end)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr

    def say(line: str) -> None:
        err.write(f"tessera run: {line}\n")
        err.flush()

    command: str | tuple[str, ...] = (options.command[0] if len(options.command) == 1 else options.command)
    container = None
    if options.image:
        container = ContainerInfo(
            image=options.image, network=options.network,
            port_mappings=tuple(PortMapping(port, 0, protocol) for port, protocol in options.publish),
            volumes=tuple(Volume(container_path=c, host_path=h, mode=m) for h, c, m in options.volumes))
    task = TaskInfo(task_id=f"{options.name}-{uuid.uuid4().hex[:12]}", name=options.name,
                    resources=Resources.of(cpus=options.cpus, mem=options.mem), command=command,
                    env=dict(options.env), user=options.user, container=container, uris=options.uris)
    if files is None and transport is None:
        files = SandboxFiles(list(options.masters), security or ClientSecurity.insecure())
    streams = OutputStreams(files, out, err, say) if files is not None else None
    scheduler = OneShot(task, say, on_running=(lambda fid, status: streams.start(fid, status.task_id))
                        if streams is not None else None)
    framework = FrameworkInfo(name=options.name, roles=(options.role,), failover_timeout=60.0)
    if transport is None and security is not None:
        transport = GrpcTransport(credentials=security.credentials, token=security.token)
    driver = SchedulerDriver(scheduler, framework, list(options.masters), transport=transport,
                             give_up_after=options.connect_timeout, masters_source=options.masters_source or None)
    shown = (shlex.join(options.command) if len(options.command) > 1 else
             options.command[0] if options.command else "the image's command")
    image = f" in a container of {options.image} ({options.network} network)" if options.image else ""
    say(f"running {shown!r}{image} with cpus:{options.cpus:g};mem:{options.mem:g}")
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
    if streams is not None and streams.started:
        try:
            streams.wait(OUTPUT_DRAIN_SECONDS)
        except KeyboardInterrupt:  # the task is over already: nothing to kill
            say("interrupted while its output drained")
            return 130
    if streams is None or not streams.streamed("stdout"):
        print_output(final, scheduler.offer, out, say)
    elif "stdout" not in streams.completed:
        why = streams.errors.get("stdout")
        say(f"the output stream stopped after {streams.written['stdout']} bytes"
            f"{f' ({why.message})' if why else ''}; all of it: tessera logs {scheduler.framework_id}/{final.task_id}")
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
