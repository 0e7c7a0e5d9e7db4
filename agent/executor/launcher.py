"""The process launcher: start a task under its supervisor, watch it, kill it, find it again.

`ProcessLauncher` is the agent's only way to touch task processes. Each task gets a run directory
(`<work_dir>/<framework>/<task>`, named by `sandbox_name`, root's) holding the supervisor's control files
and the task's sandbox (`sandbox/`, 0700, owned by the task's user; layout and modes in
agent/executor/sandbox.py), its isolation (`Isolator.prepare`), and a supervisor process
(`tessera.agent.executor.supervisor`) in a new session, which starts the command and records its exit in the
sandbox. Supervisors are forked by the fork server (`tessera.agent.executor.forkserver`, started on first use and
again when it died), or, with `fork_server=False`, started as fresh interpreters. The launcher never waits on anything: `observe` looks at the sandbox files and the supervisor's
liveness and says what changed, and the agent loop calls it periodically.

Rules it keeps:
- Nothing about a task lives only in this process: the sandbox files and the checkpointed supervisor pid
  + start time are enough for `observe` after an agent restart (a pid is trusted only when its start
  time matches, so a recycled pid is never taken for a supervisor).
- `kill` writes the shutdown delay and the grace period to the sandbox, then sends SIGTERM to the
  supervisor, which carries out drain / SIGTERM / grace / SIGKILL on the task's session even if the agent
  dies meanwhile.
- With the fork server, the launcher learns that a supervisor exited when it happens
  (`watch_exits`); observation stays the way to learn what happened.
- A launch that fails (sandbox, cgroups, supervisor start) raises `LaunchError` with the reason; a
  command that cannot be executed is not a launch failure: it ends like a shell would (exit 127/126),
  recorded by the supervisor.
- The isolation of a task is removed only after its exit status was read (`release`).
- The agent (root) reads from a task's sandbox only its stdout and stderr tails (`output.output_tail`:
  the live file, and its newest rotation when a rotation just emptied it), never through a symlink and
  only from a regular file with one link: the task owns that directory.
- A health-checked task's supervisor checks it (agent/executor/health.py); `observe` hands on the changes
  of its health.json the agent has not seen (after an agent restart, the newest one), reading the file
  only when it changed.
- Each launch carries the agent's output rotation (`LogRotation`: --log-max-mib, --log-files) in
  launch.json; the supervisor rotates the task's stdout and stderr by it (agent/executor/output.py).
  A task with URIs also carries them and the agent's fetcher settings (`FetcherConfig`): the supervisor
  fetches them before it starts the task (agent/executor/fetcher.py).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tessera.agent.core.health import HealthChange
from tessera.agent.core.tasks import ExitRecord
from tessera.agent.executor import containers as container_steps
from tessera.agent.executor import health as health_checks
from tessera.agent.executor.containers import ContainerError, ContainerLaunch, ContainerRuntime
from tessera.agent.executor.fetcher import FetcherConfig, uris_to_json
from tessera.agent.executor.forkserver import ForkServer, ForkServerLost
from tessera.agent.executor.images import Image
from tessera.agent.executor.isolation import IsolationSpec, Isolator, cgroup_pids, container_name
from tessera.agent.executor.isolation import cleanup as cleanup_isolation
from tessera.agent.executor.network import container_id_for
from tessera.agent.executor.output import LogRotation, output_tail
from tessera.agent.executor.sandbox import (
    RUN_DIR_MODE,
    SANDBOX_MODE,
    SANDBOX_SUBDIR,
    make_private_dir,
    owner_of,
    recorded_supervisor,
    sandbox_name,
    secure_work_dir,
    started_at,
)
from tessera.agent.executor.supervisor import (
    EXIT_FILE,
    HEALTH_FILE,
    KILL_FILE,
    LAUNCH_FILE,
    STDERR_FILE,
    STDOUT_FILE,
    SUPERVISOR_FILE,
    TASK_FILE,
    read_json,
    write_json_atomic,
)
from tessera.control_plane.core.values import TaskInfo

log = logging.getLogger(__name__)

LOST_SUPERVISOR_WAIT = 2.0  # seconds to look for a supervisor forked by a fork server that died meanwhile
STDERR_TAIL_BYTES = 2048
STDOUT_TAIL_BYTES = 4096  # what a terminal status may carry (MAX_STATUS_DATA)
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class LaunchError(Exception):
    """The task could not be started (its sandbox, isolation or supervisor); the message says why."""


@dataclass
class LaunchHandle:
    """What the agent keeps (and checkpoints) about a launched task."""

    task_id: str
    framework_id: str
    sandbox: Path  # the run directory (control files); the task's own directory is `task_dir`
    supervisor_pid: int = 0
    supervisor_start: float = 0.0
    isolation: IsolationSpec = field(default_factory=lambda: IsolationSpec(kind="rlimits"))
    kill_requested: bool = False
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_seen: bool = False  # task.json was seen
    cpu_seconds_prev: float = 0.0
    sandbox_dir: Path | None = None  # the task's sandbox; None: the run directory (an older agent's layout)
    network: str = ""  # from task.json: a container's network and addresses
    ip_addresses: tuple[str, ...] = ()
    container: ContainerLaunch | None = field(default=None, repr=False)  # until launch.json is written
    # The newest health.json change handed on (None: not known, after an agent restart) and the file's
    # identity when it was read (it is read again only when that changes).
    health_seq: int | None = 0
    health_stamp: tuple[int, int, int] = (0, 0, 0)

    @property
    def task_dir(self) -> Path:
        """Where the task runs and writes stdout and stderr (TESSERA_SANDBOX)."""
        return self.sandbox_dir if self.sandbox_dir is not None else self.sandbox


@dataclass(frozen=True)
class Observation:
    """What `observe` found: `started` (the task's process exists or existed), `exit` (it ended)."""

    started: bool
    exit: ExitRecord | None = None
    supervisor_lost: str = ""  # the supervisor vanished without recording an exit; the reason
    network: str = ""  # a container task's network ("bridge", "host", "none"); "" for a command task
    ip_addresses: tuple[str, ...] = ()  # a bridge container's addresses
    health: tuple[HealthChange, ...] = ()  # changes of the task's health not handed on before, oldest first

    @property
    def ended(self) -> bool:
        return self.exit is not None or bool(self.supervisor_lost)


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    rss_bytes: int
    timestamp: float


def _argv(info: TaskInfo) -> list[str]:
    command = info.command
    if command.shell:
        return ["/bin/sh", "-c", command.value]
    # `value` is the program and `arguments` are the arguments after it (argv[1:]).
    return [command.value, *command.arguments]


class ProcessLauncher:
    def __init__(self, work_dir: Path, isolator: Isolator, *, agent_id: str = "",
                 python: str = sys.executable, fork_server: bool = True,
                 containers: ContainerRuntime | None = None, log_rotation: LogRotation | None = None,
                 fetcher: FetcherConfig | None = None) -> None:
        self.work_dir = Path(work_dir)
        self.log_rotation = log_rotation or LogRotation()
        self.fetcher = fetcher or FetcherConfig()
        self.isolator = isolator
        self.containers = containers  # None: this agent runs no container tasks
        self.agent_id = agent_id
        self.python = python
        self._exit_listener: Callable[[int], None] | None = None
        self._work_dir_secured = False
        self.fork_server: ForkServer | None = (
            ForkServer(python, env=_supervisor_env(), on_exit=self._supervisor_exited) if fork_server else None)

    def watch_exits(self, listener: Callable[[int], None] | None) -> None:
        """Call `listener(supervisor_pid)` (on another thread) when a supervisor exits, where known."""
        self._exit_listener = listener

    def _supervisor_exited(self, pid: int) -> None:
        listener = self._exit_listener
        if listener is not None:
            listener(pid)

    def warm_up(self) -> None:
        """Start the fork server now rather than at the first launch."""
        if self.fork_server is not None:
            try:
                self.fork_server.ensure_started()
            except ForkServerLost as exc:
                log.warning("%s (it is tried again at the next launch)", exc)

    def close(self) -> None:
        """Stop the fork server; the supervisors (and tasks) run on."""
        if self.fork_server is not None:
            self.fork_server.close()

    def sandbox_for(self, info: TaskInfo) -> Path:
        """The task's run directory (its sandbox is `SANDBOX_SUBDIR` inside)."""
        return self.work_dir / sandbox_name(info.framework_id, info.task_id)

    # ---- launch ----------------------------------------------------------------------------------------
    def prepare(self, info: TaskInfo, image: Image | None = None) -> LaunchHandle:
        """Create the run directory, the sandbox (owned by the task's user) and the isolation (step one of
        a launch; checkpoint the handle after it). A container task needs its `image`, pulled already."""
        if info.container is not None and (self.containers is None or image is None):
            raise LaunchError("this agent cannot run container tasks" if self.containers is None
                              else "the container's image was not pulled")
        run_dir = self.sandbox_for(info)
        try:
            owner = owner_of(info.command.user)
        except KeyError:
            raise LaunchError(f"cannot run the task as user {info.command.user!r}: no such user") from None
        task_dir = run_dir / SANDBOX_SUBDIR
        try:
            if not self._work_dir_secured:
                secure_work_dir(self.work_dir)
                self._work_dir_secured = True
            make_private_dir(run_dir.parent, RUN_DIR_MODE)
            make_private_dir(run_dir, RUN_DIR_MODE)
            make_private_dir(task_dir, SANDBOX_MODE, owner)
            for leftover in (EXIT_FILE, TASK_FILE, SUPERVISOR_FILE, KILL_FILE, LAUNCH_FILE, HEALTH_FILE):
                (run_dir / leftover).unlink(missing_ok=True)
        except OSError as exc:
            raise LaunchError(f"cannot create the sandbox {task_dir}: {exc.strerror or exc}") from exc
        try:
            spec = self.isolator.prepare(container_name(info.framework_id, info.task_id), info.resources)
        except OSError as exc:
            raise LaunchError(f"cannot set up {self.isolator.name} isolation: {exc.strerror or exc}") from exc
        handle = LaunchHandle(task_id=info.task_id, framework_id=info.framework_id, sandbox=run_dir,
                              isolation=spec, sandbox_dir=task_dir)
        if info.container is not None and self.containers is not None and image is not None:
            try:
                handle.container = self.containers.launch_for(info, image, str(task_dir), owner.uid, owner.gid, spec)
            except ContainerError as exc:
                self.isolator.cleanup(spec)
                raise LaunchError(exc.reason) from exc
        return handle

    def start(self, info: TaskInfo, handle: LaunchHandle) -> LaunchHandle:
        """Write launch.json and start the supervisor (step two); fills the supervisor pid and start time."""
        self._write_launch(info, handle)
        if self.fork_server is not None:
            try:
                found: tuple[int, float] | Exception = self.fork_server.spawn(handle.sandbox)
            except (OSError, ForkServerLost) as exc:
                found = exc
            return self._forked(handle, found, time.monotonic() + LOST_SUPERVISOR_WAIT)
        return self._start_interpreter(handle)

    def start_many(self, launches: list[tuple[TaskInfo, LaunchHandle]]) -> list[LaunchHandle | LaunchError]:
        """`start` for several tasks at once: with the fork server, every request is sent before the
        first answer is awaited. One result per launch, in order: the handle, or why it failed."""
        results: list[LaunchHandle | LaunchError] = []
        ready: list[int] = []
        for info, handle in launches:
            try:
                self._write_launch(info, handle)
                results.append(handle)
                ready.append(len(results) - 1)
            except LaunchError as exc:
                results.append(exc)
        if self.fork_server is None:
            for i in ready:
                try:
                    results[i] = self._start_interpreter(launches[i][1])
                except LaunchError as exc:
                    results[i] = exc
            return results
        spawned = self.fork_server.spawn_many([launches[i][1].sandbox for i in ready])
        deadline = time.monotonic() + LOST_SUPERVISOR_WAIT  # shared: a lost server is waited for once
        for i, found in zip(ready, spawned, strict=True):
            try:
                results[i] = self._forked(launches[i][1], found, deadline)
            except LaunchError as exc:
                results[i] = exc
        return results

    def _write_launch(self, info: TaskInfo, handle: LaunchHandle) -> None:
        command = info.command
        sandbox = handle.task_dir
        # The working directory is entered (and made) by the supervisor as the task's user, inside the
        # sandbox and through no symlink; an absolute or climbing one never gets this far (validate_task).
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        env.setdefault("PATH", DEFAULT_PATH)
        env.update({
            "HOME": str(sandbox), "TESSERA_SANDBOX": str(sandbox), "TESSERA_TASK_ID": info.task_id,
            "TESSERA_FRAMEWORK_ID": info.framework_id, "TESSERA_AGENT_ID": self.agent_id or info.agent_id,
            "MESOS_SANDBOX": str(sandbox),
        })
        env.update(dict(command.environment))
        launch = {
            "task_id": info.task_id, "framework_id": info.framework_id, "argv": _argv(info), "env": env,
            "sandbox": str(sandbox), "working_dir": command.working_dir, "user": command.user,
            "isolation": handle.isolation.to_json(), "grace_period_seconds": info.kill_grace_period_seconds or None,
            "log_rotation": self.log_rotation.to_json(),
        }
        if info.uris:
            launch["uris"] = uris_to_json(info.uris)
            launch["fetcher"] = self.fetcher.to_json()
        if handle.container is not None:
            launch["container"] = handle.container.to_json()
        if info.health_check is not None:
            launch["health_check"] = health_checks.check_to_json(info.health_check)
        try:
            write_json_atomic(handle.sandbox / LAUNCH_FILE, launch, durable=False)
        except OSError as exc:
            raise LaunchError(f"cannot write to the sandbox {handle.sandbox}: {exc.strerror or exc}") from exc

    def _start_interpreter(self, handle: LaunchHandle) -> LaunchHandle:
        try:
            log_file = os.fdopen(os.open(handle.sandbox / "supervisor.out",
                                         os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600), "ab")
        except OSError as exc:
            raise LaunchError(f"cannot write to the sandbox {handle.sandbox}: {exc.strerror or exc}") from exc
        try:
            popen = subprocess.Popen(
                [self.python, "-m", "tessera.agent.executor.supervisor", "--sandbox", str(handle.sandbox)],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, cwd=str(handle.sandbox),
                start_new_session=True, close_fds=True, env=_supervisor_env(),
            )
        except OSError as exc:
            raise LaunchError(f"cannot start the supervisor: {exc.strerror or exc}") from exc
        finally:
            log_file.close()
        handle.popen = popen
        handle.supervisor_pid = popen.pid
        handle.supervisor_start = _start_time(popen.pid) or time.time()
        return handle

    def _forked(self, handle: LaunchHandle, found: tuple[int, float] | Exception, deadline: float) -> LaunchHandle:
        """Fill `handle` from the fork server's answer (pid and start time), or raise LaunchError."""
        if isinstance(found, tuple):
            handle.supervisor_pid, handle.supervisor_start = found
        elif isinstance(found, ForkServerLost):
            exc = found
            # The server may have forked the supervisor before it died: that one writes supervisor.json
            # first thing. Otherwise call the launch off (kill.json stops a supervisor that starts late).
            late = self._await_supervisor_file(handle, deadline)
            if late is None:
                try:
                    write_json_atomic(handle.sandbox / KILL_FILE, {"grace_period_seconds": 0.0,
                                                                   "requested_at": time.time()}, durable=False)
                except OSError:
                    pass
                raise LaunchError(f"cannot start the supervisor: {exc}") from exc
            handle.supervisor_pid, handle.supervisor_start = late
        else:
            reason = found.strerror if isinstance(found, OSError) and found.strerror else str(found)
            raise LaunchError(f"cannot start the supervisor: {reason}") from found
        if not handle.supervisor_start:
            handle.supervisor_start = _start_time(handle.supervisor_pid) or time.time()
        return handle

    @staticmethod
    def _await_supervisor_file(handle: LaunchHandle, deadline: float) -> tuple[int, float] | None:
        while True:
            found = read_json(handle.sandbox / SUPERVISOR_FILE)
            if found and int(found.get("supervisor_pid") or 0) > 0:
                pid = int(found["supervisor_pid"])
                return pid, float(found.get("create_time") or 0.0) or (_start_time(pid) or 0.0)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def launch(self, info: TaskInfo) -> LaunchHandle:
        """prepare + start, releasing the isolation when the start fails."""
        handle = self.prepare(info)
        try:
            return self.start(info, handle)
        except LaunchError:
            self.release(handle)
            raise

    # ---- observation -----------------------------------------------------------------------------------
    def supervisor_alive(self, handle: LaunchHandle) -> bool:
        if handle.popen is not None:
            return handle.popen.poll() is None
        return started_at(handle.supervisor_pid, handle.supervisor_start)

    def observe(self, handle: LaunchHandle) -> Observation:
        """Non-blocking: has the task started, has it ended, is its supervisor gone?"""
        sandbox = handle.sandbox
        if not handle.started_seen:
            started = read_json(sandbox / TASK_FILE)
            if started is not None:
                handle.started_seen = True
                handle.network = str(started.get("network") or "")
                handle.ip_addresses = tuple(str(a) for a in started.get("ip_addresses") or ())
        health = self._health_changes(handle) if handle.started_seen else ()
        record = self.read_exit(handle)
        if record is not None:
            if handle.popen is not None:
                try:  # reap our child so no zombie is left; it exits right after writing the file
                    handle.popen.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
            return Observation(started=handle.started_seen, exit=record, network=handle.network,
                               ip_addresses=handle.ip_addresses, health=health)
        if handle.supervisor_pid <= 0:
            found = read_json(sandbox / SUPERVISOR_FILE)
            if found:
                handle.supervisor_pid = int(found.get("supervisor_pid") or 0)
                handle.supervisor_start = _start_time(handle.supervisor_pid) or 0.0
        if self.supervisor_alive(handle):
            return Observation(started=handle.started_seen, network=handle.network,
                               ip_addresses=handle.ip_addresses, health=health)
        record = self.read_exit(handle)  # it may have written the file and exited just now
        if record is not None:
            return Observation(started=handle.started_seen, exit=record)
        self._kill_orphans(handle)
        return Observation(started=handle.started_seen,
                           supervisor_lost=f"the task's supervisor (pid {handle.supervisor_pid}) is gone "
                                           "without recording an exit status")

    @staticmethod
    def _health_changes(handle: LaunchHandle) -> tuple[HealthChange, ...]:
        """The changes of the task's health.json not handed on yet (read only when the file changed)."""
        path = handle.sandbox / HEALTH_FILE
        try:
            info = os.stat(path)
        except OSError:
            return ()
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp == handle.health_stamp:
            return ()
        handle.health_stamp = stamp
        handle.health_seq, changes = health_checks.read_changes(read_json(path), handle.health_seq)
        return changes

    def read_exit(self, handle: LaunchHandle) -> ExitRecord | None:
        data = read_json(handle.sandbox / EXIT_FILE)
        if data is None:
            return None
        stderr_tail = ""
        code = data.get("exit_code")
        if data.get("launch_error") or data.get("container_error") or (code not in (None, 0)) or data.get("signal"):
            stderr_tail = output_tail(handle.task_dir, STDERR_FILE, STDERR_TAIL_BYTES).decode("utf-8", errors="replace")
        return ExitRecord(
            exit_code=None if code is None else int(code),
            signal=None if data.get("signal") is None else int(data["signal"]),
            killed=bool(data.get("killed")), limitation=str(data.get("limitation") or ""),
            launch_error=str(data.get("launch_error") or ""),
            container_error=str(data.get("container_error") or ""), stderr_tail=stderr_tail,
            unhealthy=str(data.get("unhealthy") or ""),
            fetch_error=str(data.get("fetch_error") or ""),
            stdout_tail=output_tail(handle.task_dir, STDOUT_FILE, STDOUT_TAIL_BYTES),
        )

    def _kill_orphans(self, handle: LaunchHandle) -> None:
        """The supervisor died without recording an exit (someone killed it): kill what it ran."""
        task = read_json(handle.sandbox / TASK_FILE) or {}
        task_pid = int(task.get("task_pid") or 0)
        targets: set[int] = set()
        if task_pid > 0:
            for proc in psutil.process_iter():
                try:
                    if os.getsid(proc.pid) == task_pid:
                        targets.add(proc.pid)
                except OSError:
                    continue
        for directory in handle.isolation.cgroups:
            targets.update(cgroup_pids(directory))
        for pid in targets:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue

    # ---- kill ------------------------------------------------------------------------------------------
    def kill(self, handle: LaunchHandle, grace_period: float, shutdown_delay: float = 0.0) -> None:
        """Ask the supervisor to kill the task: SIGTERM after `shutdown_delay` seconds (the drain), SIGKILL
        `grace_period` seconds later (agent/core/kills.py)."""
        handle.kill_requested = True
        try:
            write_json_atomic(handle.sandbox / KILL_FILE,
                              {"grace_period_seconds": max(0.0, grace_period),
                               "shutdown_delay_seconds": max(0.0, shutdown_delay), "requested_at": time.time()},
                              durable=False)
        except OSError as exc:
            log.warning("cannot write the kill request of task %s: %s", handle.task_id, exc)
        if not self.supervisor_alive(handle):
            return
        try:
            os.kill(handle.supervisor_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    # ---- cleanup and usage -----------------------------------------------------------------------------
    def cleanup_containers(self, live: list[LaunchHandle]) -> list[str]:
        """At start, after recovery: remove the runc state and the networks of containers whose tasks are
        not among `live` (their supervisors died before tearing them down). Returns their ids."""
        if self.containers is None:
            return []
        ids = {container_id_for(h.framework_id, h.task_id) for h in live}
        return container_steps.cleanup_orphans(self.containers, ids)

    def release(self, handle: LaunchHandle) -> None:
        """Remove the task's isolation (after its exit was read), and a container's leftovers (its
        supervisor tears the container down itself; this covers a supervisor killed before it could)."""
        container = handle.container
        if (read_json(handle.sandbox / EXIT_FILE) or {}).get("container_torn_down"):
            container = None  # the supervisor took it down
        elif container is None:
            launch = read_json(handle.sandbox / LAUNCH_FILE) or {}
            if launch.get("container"):
                try:
                    container = ContainerLaunch.from_json(launch["container"])
                except (KeyError, TypeError, ValueError) as exc:
                    log.warning("task %s: unreadable container launch: %s", handle.task_id, exc)
        if container is not None:
            for problem in container_steps.teardown(container, handle.sandbox):
                log.warning("task %s: container teardown: %s", handle.task_id, problem)
        # The spec names what to remove, whichever isolator made it (a recovered task may predate a
        # change of --isolation).
        try:
            cleanup_isolation(handle.isolation)
        except OSError as exc:
            log.warning("cannot clean up the isolation of task %s: %s", handle.task_id, exc)

    def usage(self, handle: LaunchHandle) -> Usage | None:
        """CPU seconds and resident memory of the task's processes, or None when it has none."""
        pids: set[int] = set()
        for directory in handle.isolation.cgroups:
            pids.update(cgroup_pids(directory))
        if not pids and handle.supervisor_pid > 0 and self.supervisor_alive(handle):
            try:
                sup = psutil.Process(handle.supervisor_pid)
                pids.update(p.pid for p in sup.children(recursive=True))
            except psutil.Error:
                pass
        if not pids:
            return None
        cpu, rss = 0.0, 0
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                with proc.oneshot():
                    times = proc.cpu_times()
                    cpu += times.user + times.system
                    rss += proc.memory_info().rss
            except psutil.Error:
                continue
        return Usage(cpu_seconds=cpu, rss_bytes=rss, timestamp=time.time())

    def handle_from_checkpoint(self, task_id: str, framework_id: str, sandbox: str, supervisor_pid: int,
                               supervisor_start: float, isolation: dict[str, Any],
                               kill_requested: bool) -> LaunchHandle:
        return LaunchHandle(
            task_id=task_id, framework_id=framework_id, sandbox=Path(sandbox), supervisor_pid=supervisor_pid,
            supervisor_start=supervisor_start, isolation=IsolationSpec.from_json(isolation),
            kill_requested=kill_requested, sandbox_dir=_task_dir_of(Path(sandbox)),
            health_seq=None,  # what the previous agent saw is not known: only the newest change counts
        )


def _task_dir_of(run_dir: Path) -> Path | None:
    """The task's sandbox as its launch file names it; None for a launch of an older agent (whose
    sandbox is the run directory itself) or when no launch file was written."""
    launch = read_json(run_dir / LAUNCH_FILE)
    if launch is not None:
        found = launch.get("sandbox")
        return Path(found) if isinstance(found, str) and found else None
    return run_dir / SANDBOX_SUBDIR if (run_dir / SANDBOX_SUBDIR).is_dir() else None


def _start_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _supervisor_env() -> dict[str, str]:
    """The supervisor needs to import `agent`: give it the agent's import path."""
    env = dict(os.environ)
    roots = [str(Path(__file__).resolve().parents[2])]
    if env.get("PYTHONPATH"):
        roots.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(roots)
    env.pop("PYTHONSTARTUP", None)
    return env


def kill_tasks_in(work_dir: Path, timeout: float = 10.0) -> int:
    """Kill every task still running under `work_dir` and remove its isolation; returns how many.

    For tools and test harnesses that stop an agent for good (tasks outlive their agent by design, so
    nothing else would end them). Each task is killed through its supervisor (grace 0), which records
    the exit as usual; a supervisor that is gone has its task's session killed directly."""
    handles: list[LaunchHandle] = []
    for launch_file in Path(work_dir).glob(f"*/*/{LAUNCH_FILE}"):
        sandbox = launch_file.parent
        if (sandbox / EXIT_FILE).exists():
            continue
        launch = read_json(launch_file) or {}
        sup = read_json(sandbox / SUPERVISOR_FILE) or {}
        pid = int(sup.get("supervisor_pid") or 0)
        handle = LaunchHandle(task_id=str(launch.get("task_id", sandbox.name)),
                              framework_id=str(launch.get("framework_id", "")), sandbox=sandbox,
                              supervisor_pid=pid, supervisor_start=_start_time(pid) or 0.0 if pid else 0.0,
                              isolation=IsolationSpec.from_json(launch.get("isolation") or {}))
        handles.append(handle)
    launcher = ProcessLauncher(Path(work_dir), Isolator(), fork_server=False)
    for handle in handles:
        if _is_supervisor_of(handle):
            launcher.kill(handle, 0.0)
        else:
            launcher._kill_orphans(handle)
    deadline = time.monotonic() + timeout
    for handle in handles:
        while _is_supervisor_of(handle) and time.monotonic() < deadline:
            time.sleep(0.05)
        launcher.release(handle)
    return len(handles)


def _is_supervisor_of(handle: LaunchHandle) -> bool:
    """Is `handle.supervisor_pid` a live supervisor of this very sandbox (not a recycled pid)?

    A supervisor started as an interpreter names the sandbox on its command line; one forked by the fork
    server is known by the start time it wrote to supervisor.json."""
    if handle.supervisor_pid <= 0:
        return False
    try:
        proc = psutil.Process(handle.supervisor_pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if str(handle.sandbox) in proc.cmdline():
            return True
    except psutil.Error:
        return False
    pid, create_time = recorded_supervisor(handle.sandbox)
    return pid == handle.supervisor_pid and started_at(pid, create_time)
