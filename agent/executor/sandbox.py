"""Task sandboxes on disk: their names, their owners and modes, their garbage collection.

Layout (one run directory per task, under the agent's work dir):

    WORK_DIR/                          root, 0711 (others may pass through, not list)
      <framework>/                     root, 0711
        <task>/                        root, 0711: the run directory, the supervisor's control files
          launch.json                  root, 0600: argv, environment (the task's secrets), user, isolation
          supervisor.json, task.json, kill.json, exit_status.json, supervisor.log, supervisor.out  (0600)
          sandbox/                     the task's user, 0700: TESSERA_SANDBOX, HOME, stdout, stderr

The control files live outside the task's sandbox, as Mesos keeps its meta directory apart from the
sandbox: a task owns its sandbox (it may create, rename and delete anything in it), so a file the agent
or the supervisor trusts, or writes as root, must not be in it. A root-run task keeps a root sandbox.
Tasks run as the same user are not kept apart from each other by file modes (nobody is nobody).

Names: `sandbox_name(framework_id, task_id)` is injective: each id is escaped reversibly (bytes outside
`[A-Za-z0-9_.-]`, `%` itself, and a leading `.` become `%XX`; the empty id is `%`), and an escaped id
longer than `MAX_COMPONENT` is cut and given a digest suffix after a `~` (which escaping never makes).
So `col/1` (`col%2F1`) and `col_1` never share a sandbox, nor do two frameworks' tasks of one id.
Sandboxes made by older agents (ids with unsafe characters replaced by `_`) are still found: the
checkpoint stores each task's run directory, and the GC collects old ones like new ones.

Garbage collection: `plan_collection` (pure) picks the run directories of finished tasks to remove:
those finished at least `delay` seconds ago, then, oldest first, as many as needed to bring what the
finished ones hold under `max_bytes`. `scan_finished` and `remove_run_dir` are its edges.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tessera.agent.executor.supervisor import EXIT_FILE, SUPERVISOR_FILE, read_json

SANDBOX_SUBDIR = "sandbox"
RUN_DIR_MODE = 0o711  # the task's user passes through to its sandbox; nobody lists run directories
SANDBOX_MODE = 0o700
MAX_COMPONENT = 200  # bytes of an escaped id kept before the digest suffix (names stay under 255)
_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def _escape(text: str) -> str:
    raw = text.encode("utf-8", errors="surrogateescape")
    if not raw:
        return "%"
    out = []
    for i, byte in enumerate(raw):
        if byte in _PLAIN and not (i == 0 and byte == ord(".")):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    name = "".join(out)
    if len(name) > MAX_COMPONENT:
        name = name[:MAX_COMPONENT] + "~" + hashlib.sha256(raw).hexdigest()[:32]
    return name


def sandbox_name(framework_id: str, task_id: str) -> str:
    """The run directory of a task, relative to the work dir: `<framework>/<task>`, injective in the pair."""
    return f"{_escape(framework_id)}/{_escape(task_id)}"


# ---- ownership ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int


def owner_of(user: str) -> Owner:
    """Who a task's sandbox belongs to: its user, or this process's user for a task without one.
    Raises KeyError for an unknown user."""
    if not user:
        return Owner(os.geteuid(), os.getegid())
    import pwd

    entry = pwd.getpwnam(user)
    return Owner(entry.pw_uid, entry.pw_gid)


def make_private_dir(path: Path, mode: int, owner: Owner | None = None) -> None:
    """Create `path` (or take it as it is) as a real directory with `mode`, owned by `owner` (this
    process when None). A symlink in its place is refused: OSError(ELOOP)."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if owner is not None:
            os.fchown(fd, owner.uid, owner.gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def secure_work_dir(work_dir: Path) -> None:
    """The work dir: root's, 0711 (a task's user must pass through it to reach its sandbox)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(work_dir, RUN_DIR_MODE)


# ---- garbage collection -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FinishedSandbox:
    """The run directory of a task that is over: when it ended (wall clock) and what it holds."""

    path: str
    finished_at: float
    size_bytes: int


@dataclass(frozen=True)
class CollectionPlan:
    collect: tuple[str, ...]  # run directories to remove now
    next_due: float | None  # when the next kept one reaches its delay (None: none kept)


def plan_collection(finished: Iterable[FinishedSandbox], now: float, delay: float,
                    max_bytes: int) -> CollectionPlan:
    """Which finished sandboxes to remove: every one finished `delay` or more seconds before `now`, then
    the oldest of the rest until the rest hold at most `max_bytes` (0: no cap). Pure."""
    expired: list[FinishedSandbox] = []
    kept: list[FinishedSandbox] = []
    for item in sorted(finished, key=lambda f: (f.finished_at, f.path)):
        (expired if now - item.finished_at >= delay else kept).append(item)
    if max_bytes > 0:
        total = sum(item.size_bytes for item in kept)
        while kept and total > max_bytes:
            oldest = kept.pop(0)
            total -= oldest.size_bytes
            expired.append(oldest)
    next_due = min((item.finished_at + delay for item in kept), default=None)
    return CollectionPlan(tuple(item.path for item in expired), next_due)


def _size(path: Path) -> int:
    total = 0
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in files + dirs:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


START_TIME_TOLERANCE = 0.05  # psutil start times are rounded to clock ticks


def started_at(pid: int, create_time: float) -> bool:
    """Is `pid` a live process (not a zombie) that started at `create_time`, so not a recycled pid?"""
    import psutil

    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        return bool(proc.status() != psutil.STATUS_ZOMBIE
                    and abs(proc.create_time() - create_time) <= START_TIME_TOLERANCE)
    except psutil.Error:
        return False


def recorded_supervisor(run_dir: Path) -> tuple[int, float]:
    """The supervisor's pid and start time as it wrote them to run_dir's supervisor.json ((0, 0.0) when
    it wrote nothing)."""
    found = read_json(run_dir / SUPERVISOR_FILE) or {}
    return int(found.get("supervisor_pid") or 0), float(found.get("create_time") or 0.0)


def _supervisor_alive(run_dir: Path) -> bool:
    """Is the supervisor named in run_dir's supervisor.json still that process (pid and start time)?"""
    return started_at(*recorded_supervisor(run_dir))


def scan_finished(work_dir: Path, live: set[str]) -> list[FinishedSandbox]:
    """The run directories under `work_dir` (`*/*`) that are not in `live` and whose task is over: its
    exit is recorded, or its supervisor is gone (a leftover of a launch that never ran). The end time
    is the recorded one, else the directory's last change."""
    out: list[FinishedSandbox] = []
    try:
        frameworks = [p for p in work_dir.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return out
    for framework in frameworks:
        try:
            runs = [p for p in framework.iterdir() if p.is_dir() and not p.is_symlink()]
        except OSError:
            continue
        for run_dir in runs:
            if str(run_dir) in live:
                continue
            record = read_json(run_dir / EXIT_FILE)
            if record is None and _supervisor_alive(run_dir):
                continue  # a task no one here knows about is still running: not ours to remove
            try:
                finished_at = float((record or {}).get("finished_at") or run_dir.stat().st_mtime)
            except (OSError, TypeError, ValueError):
                continue
            out.append(FinishedSandbox(str(run_dir), finished_at, _size(run_dir)))
    return out


def remove_run_dir(path: Path) -> None:
    """Remove a run directory and its sandbox (symlinks inside are removed, never followed), then its
    framework directory when that is left empty."""
    if path.is_symlink() or not stat.S_ISDIR(path.lstat().st_mode):
        path.unlink()
    else:
        shutil.rmtree(path)
    try:
        path.parent.rmdir()
    except OSError:
        pass
