"""Running a task's health checks: the probes, the checker thread of the task's supervisor, health.json.

Where checks run. The task's supervisor runs them (`HealthChecker`, one thread beside its wait for the
task), not the agent, for the reasons Mesos has its executors run them:
- a supervisor is per task and outlives the agent: checks go on (and an unhealthy task is still killed)
  while the agent restarts or is cut off from the masters;
- it already owns the kill (SIGTERM, the task's kill grace period, SIGKILL) and records how the task
  ended, so a kill for failing the check is its own and cannot race with it;
- one task's slow check never delays another's, nor the agent's loop;
- a COMMAND check of a command task runs like the task itself (its user, its sandbox, its cgroups: what
  a check uses is counted against the task, as in Mesos).
The decisions (when to check, what counts, when to report, when to kill) are the pure
`tessera.agent.core.health`; this module does the I/O around them.

Targets. HTTP and TCP checks of a command task (or a container on the host network) go to 127.0.0.1 and
the port; of a container on the bridge network to the container's address (task.json's `ip_addresses`)
and the container port. A COMMAND check of a command task runs as the task's user in its sandbox with its
environment (and the check's own) inside its isolation; of a container, inside the container
(`runc exec` with the container's id and the agent's runc state root). Each check is bounded by its
timeout: a command still running then is killed with everything it started.

health.json (in the run directory, root's, written atomically, only when something changes): the
changes so far as `{"seq": N, "changes": [{"seq", "healthy", "message", "kill", "at"}, ...]}`, the newest
`KEPT_CHANGES` of them. The agent reads the changes newer than the last it saw (`read_changes`); after an
agent restart, only the newest (the statuses it reported before say what the master knows).
"""

from __future__ import annotations

import http.client
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from tessera.agent.core import health as machine
from tessera.agent.core.health import HealthChange
from tessera.control_plane.core.containers import SANDBOX_MOUNT
from tessera.control_plane.core.health_checks import healthy_status_code, http_path
from tessera.control_plane.core.values import CommandInfo, HealthCheck, HealthCheckType, HttpCheck, TcpCheck

log = logging.getLogger(__name__)

KEPT_CHANGES = 32  # changes health.json keeps (the agent reads it every observation, 0.2 s)
OUTPUT_TAIL = 300  # characters of a command check's output in a status message
LOOPBACK = "127.0.0.1"


# ---- launch.json --------------------------------------------------------------------------------------

def check_to_json(check: HealthCheck) -> dict[str, Any]:
    """The health check as launch.json carries it to the supervisor."""
    data: dict[str, Any] = {
        "type": check.type.name, "delay_seconds": check.delay_seconds, "interval_seconds": check.interval_seconds,
        "timeout_seconds": check.timeout_seconds, "grace_period_seconds": check.grace_period_seconds,
        "consecutive_failures": check.consecutive_failures,
    }
    if check.command is not None:
        c = check.command
        data["command"] = {"shell": c.shell, "value": c.value, "arguments": list(c.arguments),
                           "environment": [list(p) for p in c.environment], "working_dir": c.working_dir}
    if check.http is not None:
        data["http"] = {"port": check.http.port, "path": check.http.path, "scheme": check.http.scheme,
                        "statuses": list(check.http.statuses)}
    if check.tcp is not None:
        data["tcp"] = {"port": check.tcp.port}
    return data


def check_from_json(data: dict[str, Any]) -> HealthCheck:
    """The mirror of `check_to_json`; raises KeyError/TypeError/ValueError on a damaged file."""
    command = http = tcp = None
    if data.get("command") is not None:
        c = data["command"]
        command = CommandInfo(shell=bool(c["shell"]), value=str(c["value"]),
                              arguments=tuple(str(a) for a in c.get("arguments") or ()),
                              environment=tuple((str(k), str(v)) for k, v in c.get("environment") or ()),
                              working_dir=str(c.get("working_dir") or ""))
    if data.get("http") is not None:
        h = data["http"]
        http = HttpCheck(port=int(h["port"]), path=str(h.get("path") or "/"), scheme=str(h.get("scheme") or "http"),
                         statuses=tuple(int(s) for s in h.get("statuses") or ()))
    if data.get("tcp") is not None:
        tcp = TcpCheck(port=int(data["tcp"]["port"]))
    return HealthCheck(type=HealthCheckType[str(data["type"])], command=command, http=http, tcp=tcp,
                       delay_seconds=float(data["delay_seconds"]), interval_seconds=float(data["interval_seconds"]),
                       timeout_seconds=float(data["timeout_seconds"]),
                       grace_period_seconds=float(data["grace_period_seconds"]),
                       consecutive_failures=int(data["consecutive_failures"]))


def command_argv(command: CommandInfo) -> list[str]:
    """A check command's argv: `/bin/sh -c value` for a shell string, else the program and its arguments."""
    return ["/bin/sh", "-c", command.value] if command.shell else [command.value, *command.arguments]


# ---- probes -------------------------------------------------------------------------------------------

class Probe(Protocol):
    """One kind of check against one task: `run` checks once within `timeout` seconds and says
    (passed, what it found); `cancel` (from another thread) ends a check under way."""

    def run(self, timeout: float) -> tuple[bool, str]: ...
    def cancel(self) -> None: ...


class HttpProbe:
    """GET http://host:port/path; healthy when the status counts as such (`healthy_status_code`)."""

    def __init__(self, host: str, check: HttpCheck) -> None:
        self.host, self.check = host, check

    def run(self, timeout: float) -> tuple[bool, str]:
        deadline = time.monotonic() + timeout
        path = http_path(self.check)
        where = f"GET http://{self.host}:{self.check.port}{path}"
        conn = http.client.HTTPConnection(self.host, self.check.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"User-Agent": "tessera-health-check", "Connection": "close"})
            if conn.sock is not None:
                conn.sock.settimeout(max(0.001, deadline - time.monotonic()))
            response = conn.getresponse()
            code = response.status
        except (OSError, http.client.HTTPException) as exc:
            return False, f"{where}: {_why(exc, timeout)}"
        finally:
            conn.close()
        if healthy_status_code(self.check, code):
            return True, f"{where}: {code}"
        wanted = ", ".join(map(str, self.check.statuses)) or "200-399"
        return False, f"{where}: {code} (healthy: {wanted})"

    def cancel(self) -> None:
        return None  # bounded by its timeout


class TcpProbe:
    """Healthy when a TCP connection to host:port opens."""

    def __init__(self, host: str, check: TcpCheck) -> None:
        self.host, self.check = host, check

    def run(self, timeout: float) -> tuple[bool, str]:
        where = f"TCP connect to {self.host}:{self.check.port}"
        try:
            with socket.create_connection((self.host, self.check.port), timeout=timeout):
                return True, f"{where}: open"
        except OSError as exc:
            return False, f"{where}: {_why(exc, timeout)}"

    def cancel(self) -> None:
        return None


class Unreachable:
    """A check that cannot reach its task (a bridge container without an address): fails, saying why."""

    def __init__(self, why: str) -> None:
        self.why = why

    def run(self, timeout: float) -> tuple[bool, str]:
        return False, self.why

    def cancel(self) -> None:
        return None


def _why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class CommandProbe:
    """Runs `argv` (in a new session, output to an anonymous file); healthy when it exits 0. A check
    still running at its timeout is killed with everything it started (its session and descendants)."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str], cwd: str | None = None,
                 preexec: Callable[[], None] | None = None, what: str = "") -> None:
        self.argv, self.env, self.cwd, self.preexec = list(argv), env, cwd, preexec
        self.what = what or " ".join(self.argv)
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._cancelled = False

    def run(self, timeout: float) -> tuple[bool, str]:
        with tempfile.TemporaryFile() as output:
            with self._lock:
                if self._cancelled:
                    return False, "cancelled"
                try:
                    process = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                               stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                                               close_fds=True, preexec_fn=self.preexec)
                except (OSError, subprocess.SubprocessError) as exc:
                    return False, f"{self.what}: cannot run it: {exc}"
                self._process = process
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_tree(process)
                return False, f"{self.what}: still running after {timeout:g}s (killed){_tail(output)}"
            finally:
                with self._lock:
                    self._process = None
            if code == 0:
                return True, f"{self.what}: exit status 0"
            how = f"signal {-code}" if code < 0 else f"exit status {code}"
            return False, f"{self.what}: {how}{_tail(output)}"

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            process = self._process
        if process is not None:
            _kill_tree(process)


def _tail(output: Any) -> str:
    try:
        size = output.seek(0, os.SEEK_END)
        output.seek(max(0, size - OUTPUT_TAIL))
        text = output.read().decode(errors="replace").strip()
    except OSError:
        return ""
    return f"; output: {' '.join(text.split())[-OUTPUT_TAIL:]}" if text else ""


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a check's process, its session and its descendants (a `runc exec`'s process lives in the
    container's pid namespace, outside the session), then reap it."""
    import psutil

    targets: set[int] = set()
    try:
        targets.update(p.pid for p in psutil.Process(process.pid).children(recursive=True))
    except psutil.Error:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass
    for pid in targets:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        log.warning("health check process %d did not die", process.pid)


def container_exec_argv(runc: str, state_root: str, container_id: str, command: CommandInfo,
                        sandbox_mount: str = SANDBOX_MOUNT) -> list[str]:
    """`runc exec` of a COMMAND check inside a running container: the container's user and environment,
    plus the check's environment and, given one, its working directory below the sandbox mount."""
    argv = [runc, "--root", state_root, "exec"]
    for key, value in command.environment:
        argv += ["--env", f"{key}={value}"]
    if command.working_dir:
        argv += ["--cwd", f"{sandbox_mount}/{command.working_dir.strip('/')}"]
    return [*argv, container_id, *command_argv(command)]


# ---- health.json ----------------------------------------------------------------------------------------

class HealthFile:
    """The checker's changes, in health.json (see the module docstring)."""

    def __init__(self, path: Path, write: Callable[[Path, dict[str, Any]], None]) -> None:
        self.path, self._write = path, write
        self.seq = 0
        self.changes: list[dict[str, Any]] = []

    def add(self, change: HealthChange) -> None:
        self.seq += 1
        self.changes.append({"seq": self.seq, "healthy": change.healthy, "message": change.message,
                             "kill": change.kill, "at": time.time()})
        self.changes = self.changes[-KEPT_CHANGES:]
        self._write(self.path, {"seq": self.seq, "changes": self.changes})


def read_changes(data: dict[str, Any] | None, after: int | None) -> tuple[int | None, tuple[HealthChange, ...]]:
    """From health.json's content: (its newest seq, the changes after `after`); `after` None (the agent
    restarted) gives the newest change only. A file that cannot be read gives nothing new."""
    if not data:
        return after, ()
    try:
        seq = int(data.get("seq") or 0)
        entries = [e for e in data.get("changes") or () if isinstance(e, dict)]
        if after is None:
            entries = entries[-1:]
        else:
            entries = [e for e in entries if int(e.get("seq") or 0) > after]
        return seq, tuple(HealthChange(bool(e.get("healthy")), str(e.get("message") or ""), bool(e.get("kill")))
                          for e in entries)
    except (TypeError, ValueError):
        return after, ()


# ---- the checker ------------------------------------------------------------------------------------------

class HealthChecker:
    """The thread that checks one task (in its supervisor): `tessera.agent.core.health` decides, this
    waits, runs the probe, records changes and calls `on_kill(why)` once when the task is to be killed."""

    def __init__(self, check: HealthCheck, probe: Probe, record: HealthFile, on_kill: Callable[[str], None], *,
                 started_at: float, clock: Callable[[], float] = time.monotonic,
                 log_line: Callable[[str], None] = lambda line: None) -> None:
        self.check, self.probe, self.record, self.on_kill = check, probe, record, on_kill
        self.started_at, self.clock, self.log_line = started_at, clock, log_line
        self._stop = threading.Event()
        self._lock = threading.Lock()  # a change is recorded wholly before `stop` returns, or not at all
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="health-check", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """No check starts, and no change is recorded, after this returns; a check under way is ended."""
        with self._lock:
            self._stop.set()
        self.probe.cancel()

    def _run(self) -> None:
        state = machine.start(self.check, self.started_at)
        try:
            while True:
                when = machine.due(state)
                if when is None or self._stop.wait(max(0.0, when - self.clock())):
                    return
                began = self.clock()
                ok, message = self.probe.run(self.check.timeout_seconds)
                step = machine.on_result(self.check, state, ok=ok, message=message, began=began, ended=self.clock())
                state = step.state
                with self._lock:
                    if self._stop.is_set():
                        return
                    for change in step.changes:
                        self.record.add(change)
                        self.log_line(("kill: " if change.kill else "healthy: " if change.healthy else "unhealthy: ")
                                      + change.message)
                        if change.kill:
                            self.on_kill(change.message)
                            return
        except Exception as exc:  # noqa: BLE001 - a broken checker must not take the supervisor down
            self.log_line(f"health checker failed: {exc!r}")
