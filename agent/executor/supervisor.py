"""The task supervisor: `python -m tessera.agent.executor.supervisor --sandbox DIR`, or forked by the fork server.

The agent starts one supervisor per task (forked by `tessera.agent.executor.forkserver`, or as a fresh
interpreter), in a new session, and the supervisor outlives the agent: a
`kill -9` of the agent leaves every task running, and the restarted agent finds them again through the
files written here. The supervisor reads `launch.json` from the sandbox, fetches the task's URIs into
its sandbox (agent/executor/fetcher.py, in a fetch process it waits for), starts the task's command,
copies its output into rotated files while it waits for it, and records how it ended.

Files in the run directory (the `--sandbox` argument; root's, see agent/executor/sandbox.py for the
layout; every file is created 0600, every JSON file is written atomically: temp file, rename;
`exit_status.json`, the one that must survive a crash of the machine, also with fsyncs):
- `launch.json` (written by the agent, 0600): argv, environment, the task's sandbox and working
  directory, user, isolation spec, default kill grace period. Kept until the run directory is collected:
  it holds nothing the task's own environment does not, and only root may read it.
- `supervisor.json`: this process's pid and start time, written first thing, so an agent that crashed
  right after starting us can still find us (and tell us from a process that got our pid later).
- `task.json`: the task's pid, once its process exists (the agent reports TASK_RUNNING then).
- `stdout`, `stderr` and their rotations `stdout.1` ... `stdout.N`: the task's output, in the task's
  sandbox (`launch["sandbox"]`), owned by the task's user (see "Output" below). `stderr` also starts
  with one `tessera fetcher:` line per fetched URI.
- `kill.json` (written by the agent before it sends SIGTERM to the supervisor): the grace period and the
  shutdown delay (the drain before the task's SIGTERM: agent/core/kills.py). Found
  when the supervisor starts, it means the launch was called off: the task is never started.
- `health.json` (a health-checked task): the changes of its health its checker found, and the kill
  for failing the check (agent/executor/health.py); written only when something changes.
- `exit_status.json`: exit code or signal, whether the task was killed on request (or, `unhealthy`, for
  failing its health check), whether an isolator limit (memory) ended it, a launch error, a fetch error
  (`fetch_error`: "URI: why"; the task never started). Its presence means the task is over.
- `supervisor.log`: the supervisor's own messages.

Rules it keeps:
- The task runs in its own session (its pid is its session and process group id), inside its cgroups
  from its first instruction (joined between fork and exec), with its rlimits.
- SIGTERM to the supervisor means "kill the task": after the shutdown delay (the task drains: it is out
  of service discovery and still serving), SIGTERM to the task's session, then SIGKILL to the
  session (and its cgroups) when the grace period ends (the sequence: agent/core/kills.py). The supervisor itself never dies of it, because it
  must record the exit. SIGINT and SIGHUP are ignored (the agent's terminal is not the task's).
- A task with a health check is checked from its start (task.json) by a thread of the supervisor, which
  kills it the same way, with the task's kill grace period, after `consecutive_failures` failed checks;
  checking stops when a kill starts or the task ends.
- When the task's main process ends, whatever it left in its session or cgroups is killed: a task's
  life is its main process.
- Only the supervisor (the task's parent) signals the task's pid, so a recycled pid is never hit.
- A command that cannot be started records exit code 127 (not found) or 126 (not executable) with the
  error in `stderr` and `exit_status.json`, like a shell would.
- The task's working directory is entered as the task's user, below its sandbox, one component at a
  time without following any symlink (`enter_working_dir`): a symlink, or anything but a directory, on
  the way ends the launch (exit 126, the reason in `launch_error`); what is missing is created then.
- The task gets the conventional umask 022 (the agent and the supervisor run with 077).
- The task's URIs are fetched before anything of the task starts, in a fetch process that the
  supervisor kills (SIGKILL) when a kill request arrives (TASK_KILLED) or the fetcher's timeout is over;
  a failed fetch records `fetch_error` (TASK_FAILED, REASON_FETCHER_FAILED).

Output (Mesos's logrotate container logger, done by the supervisor; agent/executor/output.py). A task's
fds 1 and 2 are pipes to its supervisor, which copies them (splice(2), no copy through user space) into
`stdout`/`stderr` and rotates them by rename at `--log-max-mib`, keeping `--log-files` older files:
`stdout` is always the live file, `stdout.1` the newest rotation; each stream holds at most
(files + 1) x max on disk, exactly (a rotation happens when the live file holds max bytes). Why pipes
and not the alternatives:
- The task writing to the files itself (as before) cannot be bounded: only copy-truncate from outside
  is possible, and that loses whatever the task writes between the copy and the truncate (unbounded
  under load), leaves holes with O_APPEND-less writers, and overshoots the bound between two checks by
  whatever the task writes in that interval — a task writing as fast as it can fills GBs per second.
- A separate logger process per stream (Mesos's mesos-logrotate-logger) adds two processes per task
  that must be supervised themselves. The supervisor already exists per task, outlives the agent, and
  waits in a poll loop: the pipes join that loop (`wait_child`), and while it starts a container the
  loop's `OutputPump.wait` replaces its sleeps.
What this costs, and how it is bounded:
- The task never waits for the files, only for the supervisor's reading: each pipe holds 1 MiB (so a
  burst does not stall the task while the supervisor does something else, which is never more than a
  rotation's few renames or an exit record), and a write error (a full disk) drops output instead of
  blocking the pipe (counted, logged once in supervisor.log).
- The supervisor survives everything the task does to its output: binary data, a closed stdout (that
  pipe ends, the other goes on), its rotated files renamed, deleted or replaced by links or
  directories (each rotation step on its own; the bound holds, the task may lose its own old output).
- A supervisor that dies (only `kill -9` by someone can do that) takes the read ends with it: the
  task's next write fails (SIGPIPE, or EPIPE when it ignores the signal) — the task is not left writing
  into nothing unseen; and the agent reports the supervisor's loss (TASK_FAILED,
  REASON_EXECUTOR_TERMINATED) and kills what is left of the task, as it always did.
- When the task's main process ends, the pipes are read to their end before the exit is recorded (so
  the terminal status carries the last output), for at most DRAIN_SECONDS: a process that escaped the
  task's session and cgroups and holds a pipe open loses its output after that.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tessera.agent.core.kills import KillSequence, KillSignal, start_kill
from tessera.agent.executor import containers, fetcher
from tessera.agent.executor import health as health_checks
from tessera.agent.executor.containers import ContainerLaunch
from tessera.agent.executor.isolation import (
    IsolationSpec,
    MemoryWatchdog,
    cgroup_oom_killed,
    cgroup_pids,
    enter,
    kill_cgroup,
    memory_limit_message,
)
from tessera.agent.executor.output import LogRotation, OutputPump
from tessera.control_plane.core.values import HealthCheck

LAUNCH_FILE = "launch.json"
SUPERVISOR_FILE = "supervisor.json"
TASK_FILE = "task.json"
KILL_FILE = "kill.json"
EXIT_FILE = "exit_status.json"
HEALTH_FILE = "health.json"
STDOUT_FILE = "stdout"
STDERR_FILE = "stderr"
LOG_FILE = "supervisor.log"
DEFAULT_GRACE = 3.0


def write_json_atomic(path: Path, data: dict[str, Any], durable: bool = True) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one.

    `durable` also fsyncs the file and the rename: only for what must survive a crash of the machine
    (the exit status). Files that only matter to processes that die with the machine (launch, pids,
    kill requests) need the atomic rename alone, which every process sees at once."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, sort_keys=True)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if not durable:
        return
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def own_create_time() -> float:
    """This process's start time as psutil reports it (what the agent compares a pid's start time to)."""
    import psutil

    try:
        return float(psutil.Process().create_time())
    except psutil.Error:
        return 0.0


class WorkingDirError(Exception):
    """The task's working directory cannot be entered inside its sandbox; the message says why."""


def enter_working_dir(working_dir: str) -> None:
    """chdir to `working_dir` below the current directory (the task's sandbox), creating what is missing,
    following no symlink and never going up. Raises WorkingDirError."""
    parts = [p for p in working_dir.split("/") if p not in ("", ".")]
    if working_dir.startswith("/") or ".." in parts:
        raise WorkingDirError(f"working directory {working_dir!r}: must be a relative path inside the sandbox")
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, part in enumerate(parts):
            where = "/".join(parts[: i + 1])
            try:
                os.mkdir(part, 0o777, dir_fd=fd)
            except FileExistsError:
                pass
            except OSError as exc:
                raise WorkingDirError(f"working directory {working_dir!r}: cannot create {where!r}: "
                                      f"{exc.strerror or exc}") from exc
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                try:
                    link = stat.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode)
                except OSError:
                    link = False
                if link or exc.errno == errno.ELOOP:
                    why = "is a symlink (a working directory must not leave the sandbox)"
                elif exc.errno == errno.ENOTDIR:
                    why = "is not a directory"
                else:
                    why = exc.strerror or str(exc)
                raise WorkingDirError(f"working directory {working_dir!r}: {where!r} {why}") from exc
            os.close(fd)
            fd = inner
        os.fchdir(fd)
    finally:
        os.close(fd)


class TaskSetupError(Exception):
    """A step between fork and exec of the task (or of a health check run in its place) failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def become_task(spec: IsolationSpec, user: str, uid: int, gid: int, working_dir: str) -> None:
    """Between fork and exec, in the task's sandbox: join the task's isolation, switch to its user
    (`user` empty: stay), take the umask 022, enter its working directory. Raises TaskSetupError."""
    step = "set up the task's isolation"
    try:
        enter(spec)
        if user:
            step = f"switch to user {user!r}"
            os.initgroups(user, gid)
            os.setgid(gid)
            os.setuid(uid)
        os.umask(0o022)
        if working_dir:
            step = "enter the working directory"
            enter_working_dir(working_dir)  # as the task's user
    except BaseException as exc:
        raise TaskSetupError(str(exc) if isinstance(exc, WorkingDirError) else f"cannot {step}: {exc!r}") from exc


def session_pids(sid: int) -> list[int]:
    """Every process whose session id is `sid` (the task's session)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.getsid(pid) == sid:
                out.append(pid)
        except OSError:
            continue
    return out


class Supervisor:
    def __init__(self, sandbox: Path) -> None:
        self.sandbox = sandbox
        launch = read_json(sandbox / LAUNCH_FILE)
        if launch is None:
            raise SystemExit(f"supervisor: cannot read {sandbox / LAUNCH_FILE}")
        self.launch: dict[str, Any] = launch
        self.spec = IsolationSpec.from_json(self.launch.get("isolation") or {})
        self.grace = float(self.launch.get("grace_period_seconds") or DEFAULT_GRACE)
        self.child: subprocess.Popen[bytes] | None = None
        self.kill_requested = False
        self.kill_sequence: KillSequence | None = None  # once a kill started: drain, SIGTERM, SIGKILL
        self.kill_sent = KillSignal.NONE
        self.killed = False  # we signalled the task on request
        self.unhealthy = ""  # why the health checker asked to kill the task ("" when it did not)
        self.health: health_checks.HealthChecker | None = None
        self.ip_addresses: tuple[str, ...] = ()  # a bridge container's, once it runs
        self.watchdog: MemoryWatchdog | None = None
        self._wake_r, self._wake_w = os.pipe()
        self.log_file = os.fdopen(os.open(sandbox / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW,
                                          0o600), "a", buffering=1)
        # The task's own directory: a sandbox beside the control files, or (a launch written by an older
        # agent) this directory itself.
        self.task_dir = Path(str(self.launch.get("sandbox") or sandbox))
        self.container: ContainerLaunch | None = (
            ContainerLaunch.from_json(self.launch["container"]) if self.launch.get("container") else None)
        self.log_rotation = LogRotation.from_json(self.launch.get("log_rotation"))
        self.uris = fetcher.uris_from_json(self.launch.get("uris"))
        self.fetch_notes: list[str] = []  # what the fetcher did, for the task's stderr
        self.output: OutputPump | None = None  # the task's pipes and rotated files, made just before it starts

    def log(self, message: str) -> None:
        self.log_file.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} supervisor[{os.getpid()}]: {message}\n")

    # ---- signals ---------------------------------------------------------------------------------------
    def _on_term(self, signum: int, frame: object) -> None:
        self.kill_requested = True
        try:
            os.write(self._wake_w, b"k")
        except OSError:
            pass

    def install_signals(self) -> None:
        os.set_blocking(self._wake_w, False)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    # ---- killing ---------------------------------------------------------------------------------------
    def signal_task(self, sig: int) -> None:
        if self.child is None:
            return
        sid = self.child.pid
        targets = set(session_pids(sid))
        if self.child.returncode is None:
            targets.add(sid)
        for d in self.spec.cgroups:
            targets.update(cgroup_pids(d))
        targets.discard(os.getpid())
        for pid in sorted(targets):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                continue
        if sig == signal.SIGKILL:
            for d in self.spec.cgroups:
                kill_cgroup(d)

    def _kill_for_limit(self) -> None:
        self.signal_task(signal.SIGKILL)

    def _start_kill(self) -> None:
        if self.health is not None:
            self.health.stop()  # no checks while the task is killed (Mesos)
        request = read_json(self.sandbox / KILL_FILE) or {}
        grace = request.get("grace_period_seconds")
        grace = self.grace if grace is None else max(0.0, float(grace))
        delay = float(request.get("shutdown_delay_seconds") or 0.0)
        self.kill_sequence = start_kill(time.monotonic(), grace, delay, unhealthy=bool(self.unhealthy))
        drain = self.kill_sequence.shutdown_delay
        self.log(f"kill {'for failing the health check' if self.unhealthy else 'requested'}; "
                 + (f"draining {drain:g}s, then " if drain else "") + f"SIGTERM to the task, SIGKILL in {grace:g}s"
                 + (" after it" if drain else ""))
        self.killed = True

    def _advance_kill(self) -> float | None:
        """Send the signal the kill sequence has due now; seconds until the next one (None: none)."""
        assert self.kill_sequence is not None
        now = time.monotonic()
        due, next_at = self.kill_sequence.step(now, self.kill_sent)
        if due is KillSignal.TERM:
            if self.kill_sequence.shutdown_delay:
                self.log("drain over; SIGTERM to the task")
            self.signal_task(signal.SIGTERM)
            self.kill_sent = due
        elif due is KillSignal.KILL:
            if self.kill_sequence.grace > 0:
                self.log("grace period over; SIGKILL to the task")
            self.signal_task(signal.SIGKILL)
            self.kill_sent = due
        return None if next_at is None else max(0.0, next_at - now)

    # ---- running ---------------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {str(k): str(v) for k, v in (self.launch.get("env") or {}).items()}
        return env

    def fetch_uris(self) -> dict[str, Any] | None:
        """Fetch the task's URIs into its sandbox (agent/executor/fetcher.py); on failure or a kill
        meanwhile the exit record to write."""
        if not self.uris:
            return None
        config = fetcher.FetcherConfig.from_json(self.launch.get("fetcher"))
        self.log(f"fetching {len(self.uris)} URI(s)")
        outcome = fetcher.fetch(self.uris, self.task_dir, self.sandbox, str(self.launch.get("user") or ""), config,
                                wake_fd=self._wake_r, cancelled=lambda: self.kill_requested, log=self.log)
        self.fetch_notes = outcome.notes
        if outcome.killed:
            self.killed = True
            return {"exit_code": None, "signal": signal.SIGKILL, "killed": True, "launch_error": ""}
        if outcome.error:
            return {"exit_code": None, "fetch_error": outcome.error}
        return None

    def open_output(self) -> OutputPump:
        """The task's pipes and the rotated files in its sandbox, owned by the sandbox's owner (the task's
        user; the launcher made it so)."""
        owner = os.stat(self.task_dir)
        self.output = OutputPump(self.task_dir, owner.st_uid, owner.st_gid, self.log_rotation, self.log,
                                 (STDOUT_FILE, STDERR_FILE))
        for note in self.fetch_notes:
            self.output.stderr.write(f"tessera fetcher: {note}\n".encode(errors="replace"))
        return self.output

    def start_container(self, container: ContainerLaunch, output: OutputPump) -> dict[str, Any] | None:
        """Start a container task under runc (agent/executor/containers.py); on failure the exit record."""
        try:
            started = containers.start(container, self.sandbox, output.stdout_w, output.stderr_w, wait=output.wait)
        except containers.ContainerError as exc:
            self.log(f"container launch failed: {exc.reason}")
            return {"exit_code": None, "container_error": exc.reason}
        finally:
            output.task_started()
        self.child = started.process
        self.ip_addresses = tuple(started.ip_addresses)
        write_json_atomic(self.sandbox / TASK_FILE, {"task_pid": self.child.pid, "started_at": time.time(),
                                                     "container_pid": started.container_pid,
                                                     "ip_addresses": list(started.ip_addresses),
                                                     "network": container.plan.network}, durable=False)
        self.log(f"started container {container.container_id} (runc pid {self.child.pid}, "
                 f"addresses {list(started.ip_addresses)})")
        return None

    def start_child(self) -> dict[str, Any] | None:
        """Start the task; on failure return the exit record to write."""
        output = self.output if self.output is not None else self.open_output()
        if self.container is not None:
            return self.start_container(self.container, output)
        argv = [str(a) for a in self.launch["argv"]]
        cwd = str(self.task_dir if "sandbox" in self.launch else (self.launch.get("cwd") or self.sandbox))
        working_dir = str(self.launch.get("working_dir") or "")
        spec = self.spec
        user = self.launch.get("user") or ""
        if user:
            import pwd

            try:
                entry = pwd.getpwnam(user)
            except KeyError:
                return {"exit_code": 126, "launch_error": f"cannot switch to user {user!r}: no such user"}
            uid, gid = entry.pw_uid, entry.pw_gid
        else:
            uid, gid = os.geteuid(), os.getegid()
        # Why the preexec step failed: Python reports only "Exception occurred in preexec_fn".
        why_r, why_w = os.pipe()

        def preexec() -> None:
            # Runs in the child after fork (with start_new_session: after setsid), after its stdout and
            # stderr were redirected and after the chdir to the sandbox, before exec.
            try:
                become_task(spec, user, uid, gid, working_dir)
            except TaskSetupError as exc:
                os.write(why_w, exc.reason.encode(errors="replace")[:4000])
                os.write(2, f"tessera supervisor: {exc.reason}\n".encode(errors="replace"))
                raise

        try:
            self.child = subprocess.Popen(
                argv, cwd=cwd, env=self._env(), stdin=subprocess.DEVNULL, stdout=output.stdout_w,
                stderr=output.stderr_w, start_new_session=True, preexec_fn=preexec, close_fds=True,
            )
        except OSError as exc:
            code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
            what = f"{argv[0]}: {exc.strerror or exc}"
            if exc.errno == errno.ENOENT and not os.path.isdir(cwd):
                what = f"working directory {cwd}: {exc.strerror or exc}"
            output.stderr.write(f"tessera supervisor: cannot execute {what}\n".encode())
            return {"exit_code": code, "launch_error": what}
        except subprocess.SubprocessError as exc:  # the preexec step failed (cgroup join, user, working dir)
            os.close(why_w)
            why_w = -1
            with os.fdopen(why_r, "rb") as pipe:
                why_r = -1
                what = pipe.read().decode(errors="replace") or f"cannot set up the task's isolation: {exc}"
            self.log(f"launch failed: {what}")
            return {"exit_code": 126, "launch_error": what}
        finally:
            output.task_started()
            for fd in (why_r, why_w):
                if fd >= 0:
                    os.close(fd)
        write_json_atomic(self.sandbox / TASK_FILE, {"task_pid": self.child.pid, "started_at": time.time()},
                          durable=False)
        self.log(f"started task pid {self.child.pid}: {argv!r}")
        if spec.watchdog_rss_bytes > 0:
            self.watchdog = MemoryWatchdog(self.child.pid, spec.watchdog_rss_bytes, self._kill_for_limit)
            self.watchdog.start()
        return None

    # ---- health checks (agent/executor/health.py) ----------------------------------------------------
    def start_health_checks(self) -> None:
        """Check the task's health from now on, when its launch asks for it."""
        data = self.launch.get("health_check")
        if not data:
            return
        try:
            check = health_checks.check_from_json(data)
            probe = self._health_probe(check)
        except (KeyError, TypeError, ValueError) as exc:
            self.log(f"cannot check the task's health: {exc!r}")
            return
        record = health_checks.HealthFile(self.sandbox / HEALTH_FILE,
                                          lambda path, data: write_json_atomic(path, data, durable=False))
        self.health = health_checks.HealthChecker(check, probe, record, self._on_unhealthy,
                                                  started_at=time.monotonic(), log_line=self.log)
        self.health.start()
        self.log(f"checking the task's health ({check.type.name}) every {check.interval_seconds:g}s after "
                 f"{check.delay_seconds:g}s")

    def _health_probe(self, check: HealthCheck) -> health_checks.Probe:
        container = self.container
        host = health_checks.LOOPBACK
        if container is not None and container.plan.network == "bridge" and check.command is None:
            # the container's own address (IPv4 first)
            addresses = sorted(self.ip_addresses, key=lambda a: ":" in a)
            if not addresses:
                return health_checks.Unreachable("the container has no address on its network")
            host = addresses[0]
        if check.http is not None:
            return health_checks.HttpProbe(host, check.http)
        if check.tcp is not None:
            return health_checks.TcpProbe(host, check.tcp)
        command = check.command
        assert command is not None  # a COMMAND check (core.health_checks)
        if container is not None:
            return health_checks.CommandProbe(
                health_checks.container_exec_argv(container.runc, container.state_root, container.container_id,
                                                  command),
                env=containers.runc_env(), what=f"command check in container {container.container_id}")
        env = self._env()
        env.update(dict(command.environment))
        spec, user = self.spec, str(self.launch.get("user") or "")
        uid, gid = os.geteuid(), os.getegid()
        if user:
            import pwd

            entry = pwd.getpwnam(user)  # the task started as this user: it exists
            uid, gid = entry.pw_uid, entry.pw_gid
        working_dir = command.working_dir or str(self.launch.get("working_dir") or "")

        def preexec() -> None:
            become_task(spec, user, uid, gid, working_dir)

        return health_checks.CommandProbe(health_checks.command_argv(command), env=env, cwd=str(self.task_dir),
                                          preexec=preexec, what="command check")

    def _on_unhealthy(self, why: str) -> None:
        """From the checker's thread: kill the task as if asked, with its own grace period."""
        self.unhealthy = why
        self.kill_requested = True
        try:
            os.write(self._wake_w, b"h")
        except OSError:
            pass

    def wait_child(self) -> int:
        assert self.child is not None
        pid = self.child.pid
        pidfd = None
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        output = self.output
        pipes = set(output.readable()) if output is not None else set()
        for fd in pipes:
            poller.register(fd, select.POLLIN)
        try:
            while True:
                status = self.child.poll()
                if status is not None:
                    return status
                if self.kill_requested and self.kill_sequence is None:
                    self._start_kill()
                timeout: float = 0.5 if pidfd is None else 5.0
                if self.kill_sequence is not None:
                    remaining = self._advance_kill()
                    timeout = min(timeout, 0.5 if remaining is None else remaining)
                for fd, _ in poller.poll(max(0, int(timeout * 1000))):
                    if fd == self._wake_r:
                        try:
                            os.read(self._wake_r, 1024)
                        except OSError:
                            pass
                    elif fd in pipes and output is not None and not output.pump(fd):
                        poller.unregister(fd)
                        pipes.discard(fd)
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def run(self) -> int:
        write_json_atomic(self.sandbox / SUPERVISOR_FILE, {"supervisor_pid": os.getpid(), "started_at": time.time(),
                                                           "create_time": own_create_time()}, durable=False)
        self.install_signals()
        record: dict[str, Any]
        if self.kill_requested or (self.sandbox / KILL_FILE).exists():  # killed before the task even started
            record = {"exit_code": None, "signal": signal.SIGKILL, "killed": True, "launch_error": ""}
        else:
            failure = self.fetch_uris()
            if failure is None:
                failure = self.start_child()
            if failure is not None:
                record = failure
            else:
                self.start_health_checks()
                status = self.wait_child()
                if self.health is not None:
                    self.health.stop()
                # Whatever the task left behind dies with it.
                self.signal_task(signal.SIGKILL)
                if self.watchdog is not None:
                    self.watchdog.stop()
                record = self._exit_record(status)
            self.close_output()
            if self.container is not None:
                self._end_container(self.container, record)
        record["finished_at"] = time.time()
        write_json_atomic(self.sandbox / EXIT_FILE, record)
        self.log(f"task ended: {record}")
        return 0

    def close_output(self) -> None:
        """Read what the task's pipes still hold into its files (bounded), then close them."""
        if self.output is None:
            return
        output, self.output = self.output, None
        try:
            output.drain()
        finally:
            output.close()
            if output.stdout.dropped or output.stderr.dropped:
                self.log(f"output lost to write errors: {output.stdout.dropped} bytes of stdout, "
                         f"{output.stderr.dropped} bytes of stderr")

    def _end_container(self, container: ContainerLaunch, record: dict[str, Any]) -> None:
        """Tear the container down before its exit is recorded, and tell runc's failures from the task's."""
        failure = containers.runc_failure(self.sandbox)
        if failure and "container_error" not in record and record.get("exit_code") == 1 and not self.killed:
            record["container_error"] = failure
            record["exit_code"] = containers.failure_exit_code(failure)
        problems = containers.teardown(container, self.sandbox)
        for problem in problems:
            self.log(f"container teardown: {problem}")
        record["container_torn_down"] = not problems

    def _exit_record(self, returncode: int) -> dict[str, Any]:
        sig = -returncode if returncode < 0 else None
        code = returncode if returncode >= 0 else None
        record: dict[str, Any] = {"exit_code": code, "signal": sig, "killed": self.killed}
        if self.unhealthy and self.killed:
            record["unhealthy"] = self.unhealthy
        died_by_sigkill = sig == signal.SIGKILL or code == 128 + signal.SIGKILL
        limitation = ""
        if self.watchdog is not None and self.watchdog.tripped:
            limitation = self.watchdog.tripped
        elif cgroup_oom_killed(self.spec, died_by_sigkill):
            limitation = memory_limit_message(self.spec.memory_limit_bytes, "the kernel OOM-killed it in its cgroup")
        record["limitation"] = limitation
        return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tessera.agent.executor.supervisor")
    parser.add_argument("--sandbox", required=True, type=Path, help="the task's sandbox directory")
    args = parser.parse_args(argv)
    supervisor = Supervisor(args.sandbox.absolute())
    try:
        return supervisor.run()
    except Exception as exc:  # noqa: BLE001 - whatever happens, the agent must learn that the task ended
        supervisor.log(f"supervisor failed: {exc!r}")
        if supervisor.child is not None and supervisor.child.poll() is None:
            supervisor.signal_task(signal.SIGKILL)
            supervisor.child.wait()
        try:
            supervisor.close_output()
        except Exception as again:  # noqa: BLE001 - the exit record below matters more
            supervisor.log(f"closing the task's output failed: {again!r}")
        write_json_atomic(args.sandbox / EXIT_FILE, {
            "exit_code": None, "signal": None, "killed": supervisor.killed,
            "launch_error": f"supervisor failed: {exc}", "finished_at": time.time(),
        })
        return 1


if __name__ == "__main__":
    sys.exit(main())
