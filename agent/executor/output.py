"""A task's stdout and stderr: the pipes the task writes to, and the rotated files the supervisor copies
them into (Mesos's logrotate container logger, in the supervisor). The mechanism and why are in the
supervisor's docstring (agent/executor/supervisor.py, "Output"); this module is its parts.

The contract with readers (the agent's terminal-status tails, the file service's `logs -f`):
- The live file is always `stdout` / `stderr` in the task's sandbox: it never disappears, not even
  during a rotation. Older content is in `stdout.1` (the newest) ... `stdout.N` (the oldest), N at most
  the policy's `keep`; older still is dropped.
- A rotation happens exactly when the live file holds `max_bytes`: every file holds at most `max_bytes`
  of the task's output, so each stream keeps at most `(keep + 1) * max_bytes` on disk.
- A rotation is: drop `.N`, rename `.i` to `.i+1` (oldest first), hard-link the live file as `.1`, then
  rename a fresh empty file over the live name. A reader that holds the old live file open reads it to
  its end and then finds a new inode under the live name; a reader that lists the names mid-rotation
  may see the old live file under two names (`stdout` and `stdout.1`) for a moment.
- Files are created 0600 and owned by the task's user, through no symlink (the supervisor is root and
  the task owns its sandbox): every name is opened `O_NOFOLLOW`/`O_EXCL` relative to the sandbox's
  directory descriptor, and a live file that is not a regular file with one link is replaced, never
  written through. What the task does to these names itself (renames, deletes, a directory named
  `stdout.3`) can cost it its old output, never the bound: a rotation that cannot rename starts the
  live file over.

`LogRotation` is the policy (the agent's `--log-max-mib` and `--log-files`, carried in launch.json);
`RotatingLog` one file; `OutputPump` both streams' pipes, driven by the supervisor's poll loop;
`output_tail` the end of a stream across its newest rotation (for terminal statuses).
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
DEFAULT_MAX_BYTES = 10 * MIB  # per file (--log-max-mib)
DEFAULT_KEEP = 5  # rotated files kept per stream (--log-files)
MIN_MAX_BYTES = 4096
MAX_KEEP = 1000
PIPE_SIZE = MIB  # each pipe's kernel buffer: what the task may write while the supervisor is busy elsewhere
CHUNK = 4 * MIB  # the most one `pump` call moves from one pipe before the supervisor looks at the rest
DRAIN_SECONDS = 5.0  # after the task ended: how long its leftover writers may hold a pipe open


@dataclass(frozen=True)
class LogRotation:
    """Rotate each stream at `max_bytes`, keeping `keep` older files (so at most (keep + 1) * max_bytes)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    keep: int = DEFAULT_KEEP

    def __post_init__(self) -> None:
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes < MIN_MAX_BYTES:
            raise ValueError(f"a log file's size limit must be at least {MIN_MAX_BYTES} bytes, got {self.max_bytes!r}")
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or not 0 <= self.keep <= MAX_KEEP:
            raise ValueError(f"the number of rotated log files must be 0 to {MAX_KEEP}, got {self.keep!r}")

    def to_json(self) -> dict[str, int]:
        return {"max_bytes": self.max_bytes, "keep": self.keep}

    @staticmethod
    def from_json(data: Any) -> LogRotation:
        """The policy launch.json names; the defaults for a launch.json of an older agent (or a bad one)."""
        if not isinstance(data, dict):
            return LogRotation()
        try:
            return LogRotation(int(data.get("max_bytes", DEFAULT_MAX_BYTES)), int(data.get("keep", DEFAULT_KEEP)))
        except (TypeError, ValueError):
            return LogRotation()


def rotated_name(name: str, n: int) -> str:
    return f"{name}.{n}"


class RotatingLog:
    """One output stream's files in the sandbox (`dir_fd`), written by the supervisor only.

    `write` takes the supervisor's own messages; `take_from` moves what the task wrote from its pipe
    (splice(2) where the file system allows it, read and write otherwise). Both rotate at the policy's
    size exactly and never raise for the file's sake: a write that fails (a full disk) is logged once
    and its data dropped, so the pipe keeps draining and the task never blocks on a stuck file."""

    def __init__(self, dir_fd: int, name: str, uid: int, gid: int, policy: LogRotation,
                 log: Callable[[str], None]) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.uid, self.gid = uid, gid
        self.policy = policy
        self.log = log
        self.dropped = 0  # bytes of output lost to write errors
        self._failing = ""  # the error last logged (each different one is logged once)
        self._splice = hasattr(os, "splice")
        self.fd, self.size = self._open_live()

    # ---- files ---------------------------------------------------------------------------------------
    def _create(self, name: str) -> int:
        """A new empty file `name` (whatever was there is unlinked first), 0600, the task's."""
        for _ in range(3):
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=self.dir_fd)
            except FileExistsError:
                _remove(name, self.dir_fd)
                continue
            try:
                if (self.uid, self.gid) != (os.geteuid(), os.getegid()):
                    os.fchown(fd, self.uid, self.gid)
            except BaseException:
                os.close(fd)
                raise
            return fd
        raise OSError(errno.EEXIST, f"cannot create {name}: something keeps taking its name")

    def _open_live(self) -> tuple[int, int]:
        """The live file, appended to if it is already there as a regular file of one link."""
        try:
            fd = os.open(self.name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.dir_fd)
        except OSError:
            fd = -1
        if fd >= 0:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
                os.set_blocking(fd, True)
                return fd, os.lseek(fd, 0, os.SEEK_END)
            os.close(fd)
        return self._create(self.name), 0

    def rotate(self) -> None:
        """Move the live file to `.1` (and the older ones up) and start an empty live file."""
        keep = self.policy.keep
        fresh_name = f".{self.name}.new"
        try:
            fresh = self._create(fresh_name)
        except OSError as exc:  # no new file (no space, no inodes): start the live one over instead
            self._note(f"cannot rotate {self.name} ({exc.strerror or exc}); its content so far is dropped")
            self._restart_in_place()
            return
        problems: list[str] = []  # each step on its own: one the task blocked does not stop the others

        def attempt(action: Callable[..., object], *args: object, **kwargs: object) -> None:
            try:
                action(*args, **kwargs)
            except FileNotFoundError:
                pass
            except OSError as exc:
                problems.append(exc.strerror or str(exc))

        if keep > 0:
            at = {"src_dir_fd": self.dir_fd, "dst_dir_fd": self.dir_fd}
            attempt(_remove, rotated_name(self.name, keep), self.dir_fd)
            for n in range(keep - 1, 0, -1):
                attempt(os.rename, rotated_name(self.name, n), rotated_name(self.name, n + 1), **at)
            attempt(os.link, self.name, rotated_name(self.name, 1), follow_symlinks=False, **at)
        if problems:  # the task moved things around: its older output may be lost, never the bound
            self._note(f"rotating {self.name}: {problems[0]}; older output may be lost")
        try:
            os.rename(fresh_name, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except OSError as exc:
            self._note(f"cannot rotate {self.name} ({exc.strerror or exc}); its content so far is dropped")
            os.close(fresh)
            _remove(fresh_name, self.dir_fd)
            self._restart_in_place()
            return
        os.close(self.fd)
        self.fd, self.size = fresh, 0

    def _restart_in_place(self) -> None:
        try:
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
        except OSError as exc:
            self._note(f"cannot truncate {self.name}: {exc.strerror or exc}")
        self.size = 0

    def _room(self) -> int:
        if self.size >= self.policy.max_bytes:
            self.rotate()
        return self.policy.max_bytes - self.size

    # ---- writing -------------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Append `data` (the supervisor's own messages), rotating at the size limit."""
        view = memoryview(data)
        while view:
            room = self._room()
            part = view[:room]
            try:
                written = os.write(self.fd, part)
            except OSError as exc:
                self._lost(len(view), exc)
                return
            self.size += written
            view = view[written:]

    def take_from(self, pipe_fd: int, limit: int) -> int:
        """Move at most `limit` bytes from `pipe_fd` (non-blocking) into the files. Returns how many were
        taken from the pipe (0: end of file); BlockingIOError when the pipe is empty."""
        room = self._room()
        count = min(limit, room)
        if self._splice:
            try:
                moved = os.splice(pipe_fd, self.fd, count)
            except BlockingIOError:
                raise
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    self._splice = False  # this file system takes no splice: copy through memory
                else:
                    return self._discard(pipe_fd, count, exc)
            else:
                self.size += moved
                return moved
        data = os.read(pipe_fd, count)
        if data:
            try:
                written = os.write(self.fd, data)
                self.size += written
                if written < len(data):
                    self.write(data[written:])
            except OSError as exc:
                self._lost(len(data), exc)
        return len(data)

    def _discard(self, pipe_fd: int, count: int, exc: OSError) -> int:
        """The file takes nothing (a full disk): read the pipe anyway, so the task is not blocked."""
        data = os.read(pipe_fd, count)
        self._lost(len(data), exc)
        return len(data)

    def _lost(self, size: int, exc: OSError) -> None:
        self.dropped += size
        self._note(f"cannot write {self.name} ({exc.strerror or exc}); output is dropped until it works again")

    def _note(self, message: str) -> None:
        if message != self._failing:
            self._failing = message
            self.log(message)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _remove(name: str, dir_fd: int) -> None:
    """Unlink `name` (a file or symlink; an empty directory too), if it is there."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        os.rmdir(name, dir_fd=dir_fd)
    except PermissionError:  # EPERM: unlink of a directory on Linux
        try:
            os.rmdir(name, dir_fd=dir_fd)
        except OSError:
            raise OSError(errno.EISDIR, f"{name} is a directory that is not empty") from None


class OutputPump:
    """The task's two pipes and the files they go to.

    Made before the task starts (`stdout_w`/`stderr_w` are what the task's fds 1 and 2 become; the
    supervisor closes its copies with `task_started`). `readable()` lists the pipes still open for the
    supervisor's poll; `pump(fd)` moves what one of them holds; `wait(seconds)` pumps while the
    supervisor has nothing else to do (a container being created); `drain()` reads both to their end
    once the task is over, bounded by DRAIN_SECONDS (a process that escaped the task's session and
    cgroups may hold a pipe open: its later writes fail with EPIPE)."""

    def __init__(self, sandbox: Path, uid: int, gid: int, policy: LogRotation, log: Callable[[str], None],
                 names: tuple[str, str] = ("stdout", "stderr")) -> None:
        self.dir_fd = os.open(sandbox, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.logs: dict[int, RotatingLog] = {}
        self.stdout = RotatingLog(self.dir_fd, names[0], uid, gid, policy, log)
        self.stderr = RotatingLog(self.dir_fd, names[1], uid, gid, policy, log)
        self._writers: list[int] = []
        for target in (self.stdout, self.stderr):
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            try:
                fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # the default 64 KiB: the task waits for the supervisor sooner, nothing is lost
            os.set_blocking(read_end, False)
            self.logs[read_end] = target
            self._writers.append(write_end)
        self.stdout_w, self.stderr_w = self._writers

    def task_started(self) -> None:
        """The task holds the write ends now: close ours, so the pipes end when the task's writers do."""
        for fd in self._writers:
            os.close(fd)
        self._writers = []

    def readable(self) -> list[int]:
        return list(self.logs)

    def pump(self, fd: int) -> bool:
        """Move what pipe `fd` holds (at most CHUNK); False once it is at its end (and closed)."""
        target = self.logs.get(fd)
        if target is None:
            return False
        moved = 0
        while moved < CHUNK:
            try:
                n = target.take_from(fd, CHUNK - moved)
            except BlockingIOError:
                return True
            except OSError as exc:
                target.log(f"reading the task's {target.name}: {exc.strerror or exc}; it is closed")
                n = 0
            if n == 0:
                del self.logs[fd]
                os.close(fd)
                return False
            moved += n
        return True

    def wait(self, seconds: float) -> None:
        """Pump both pipes for `seconds` (instead of sleeping)."""
        deadline = time.monotonic() + seconds
        while self.logs:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for fd in self._ready(left):
                self.pump(fd)
        remaining = deadline - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

    def _ready(self, timeout: float) -> list[int]:
        poller = select.poll()
        for fd in self.logs:
            poller.register(fd, select.POLLIN)
        return [fd for fd, _ in poller.poll(max(0, int(timeout * 1000)))]

    def drain(self, seconds: float = DRAIN_SECONDS) -> None:
        """Read both pipes to their end (the task is over), for at most `seconds`; then close them."""
        if self._writers:
            self.task_started()
        deadline = time.monotonic() + seconds
        while self.logs:
            left = deadline - time.monotonic()
            if left <= 0:
                for fd, target in list(self.logs.items()):
                    target.log(f"the task's {target.name} is still held open {seconds:g}s after the task ended "
                               "(by a process outside its session); no more of it is kept")
                    os.close(fd)
                self.logs.clear()
                break
            for fd in self._ready(left):
                self.pump(fd)

    def close(self) -> None:
        for fd in [*self.logs, *self._writers]:
            os.close(fd)
        self.logs.clear()
        self._writers = []
        self.stdout.close()
        self.stderr.close()
        os.close(self.dir_fd)


# ---- reading ---------------------------------------------------------------------------------------
@contextmanager
def _regular(path: Path) -> Iterator[int | None]:
    """An fd on `path` when it is a regular file with one link, opened through no symlink; else None
    (the agent reads as root from a directory the task owns)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        yield None
        return
    try:
        info = os.fstat(fd)
        yield fd if stat.S_ISREG(info.st_mode) and info.st_nlink == 1 else None
    finally:
        os.close(fd)


def _tail_of(path: Path, limit: int) -> bytes:
    with _regular(path) as fd:
        if fd is None or limit <= 0:
            return b""
        try:
            size = os.fstat(fd).st_size
            os.lseek(fd, max(0, size - limit), os.SEEK_SET)
            data = b""
            while len(data) < limit and (chunk := os.read(fd, limit - len(data))):
                data += chunk
            return data
        except OSError:
            return b""


def output_tail(task_dir: Path, name: str, limit: int) -> bytes:
    """The last `limit` bytes the task wrote to stream `name`: the live file's end, preceded by the end of
    its newest rotation when the live file holds less (a rotation just happened)."""
    data = _tail_of(task_dir / name, limit)
    if len(data) < limit:
        data = _tail_of(task_dir / rotated_name(name, 1), limit - len(data)) + data
    return data
