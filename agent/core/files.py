"""Sandbox files, the decisions: which path, which bytes, which step of a follow, where `--since` starts,
which task's sandbox, and who may read it.

Pure: no I/O, no clock (times are inputs). The file service (`tessera.agent.files`) walks the disk
(`tessera.agent.executor.sandbox_files`) and asks these functions what to do; their errors are the core's
(`InvalidRequest`, `NotFound`, `Conflict`, `PermissionDenied`), mapped to status codes at the edge.

Rules kept here (docs/files.md):
- A path names something inside the task's sandbox: relative, '/'-separated, no '..' component (even one
  that would stay inside), no NUL byte, at most `MAX_PATH_BYTES` long, components of at most 255 bytes,
  at most `MAX_DEPTH` deep. "", "." and "/"-free repeats of "." all name the sandbox itself. Symlinks and
  special files are refused by the walk (only the disk can tell).
- A read takes at most `MAX_READ_BYTES` from an offset between 0 and the file's size (the size itself is
  the end: nothing to read, `eof`); a negative offset or length, a length over the limit or an offset
  past the end is refused, naming the numbers.
- A follow starts at an offset within the current file; a re-dial that names the file it was reading (its
  inode) and finds another one, or a shorter one, starts the new file from its beginning (`rotated`).
  When a read reaches the end of the open file: a file now shorter than the offset was truncated
  (copy-and-truncate rotation: go on from 0 in the same file); a path that now names another file was
  renamed away (rename rotation: the old one is drained, go on with the new one from 0); else wait.
- `--since T`: the agent samples the size of stdout and stderr about once a second (`OutputTimeline`);
  the output written from T on starts at the size the file had at the last sample at or before T. No
  sample that old: the whole file if it changed since T (its mtime), else its end. A rotation after T
  (another inode, or a size that went down): the whole current file.
- Which sandbox (`find_sandbox`): a task this agent never ran, or forgot, is NOT_FOUND naming the agent; a
  sandbox the garbage collection removed is NOT_FOUND saying so, as is one of a task that ended before it
  had one; a task not yet given a sandbox (its image is being pulled) is FAILED_PRECONDITION.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from tessera.control_plane.core.errors import Conflict, InvalidRequest, NotFound
from tessera.control_plane.core.state import check_working_dir
from tessera.control_plane.core.values import TaskKey

MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255
MAX_DEPTH = 64
MAX_READ_BYTES = 1 << 20  # one Read answer, one Follow message
MAX_LIST_ENTRIES = 10_000  # one List answer
MAX_TIMELINE_POINTS = 4096  # size samples kept per file (the older half is thinned when full)
OUTPUT_FILES = ("stdout", "stderr")  # what the agent samples for `--since`


def sandbox_path(path: str) -> tuple[str, ...]:
    """The components of `path` inside a sandbox (() is the sandbox itself); InvalidRequest when it could
    leave it or is unreasonable."""
    if not isinstance(path, str):
        raise InvalidRequest("path: must be a string")
    check_working_dir(path, "path")
    raw = path.encode("utf-8", errors="surrogateescape")
    if len(raw) > MAX_PATH_BYTES:
        raise InvalidRequest(f"path: {len(raw)} bytes long, at most {MAX_PATH_BYTES}")
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if len(parts) > MAX_DEPTH:
        raise InvalidRequest(f"path: {len(parts)} components deep, at most {MAX_DEPTH}")
    for part in parts:
        if len(part.encode("utf-8", errors="surrogateescape")) > MAX_COMPONENT_BYTES:
            raise InvalidRequest(f"path: the component {part[:40]!r}... is longer than {MAX_COMPONENT_BYTES} bytes")
    return parts


def shown_path(parts: tuple[str, ...]) -> str:
    """How a path is named back to callers: relative to the sandbox, '.' for the sandbox itself."""
    return "/".join(parts) or "."


def read_range(offset: int, length: int, size: int, where: str) -> tuple[int, int]:
    """(offset, count) of a read of `length` bytes (0: as many as one answer carries) at `offset` of a file
    of `size` bytes named `where`."""
    if offset < 0:
        raise InvalidRequest(f"offset: must not be negative, got {offset}")
    if length < 0:
        raise InvalidRequest(f"length: must not be negative, got {length}")
    if length > MAX_READ_BYTES:
        raise InvalidRequest(f"length: at most {MAX_READ_BYTES} bytes per read, got {length}; read in pieces")
    if offset > size:
        raise InvalidRequest(f"offset: {offset} is past the end of {where} ({size} bytes)")
    count = min(length or MAX_READ_BYTES, size - offset)
    return offset, count


def follow_start(offset: int, inode: int, current_inode: int, size: int, where: str) -> tuple[int, bool]:
    """Where a follow of `where` (now `current_inode`, `size` bytes) starts: (offset, rotated). `inode` 0:
    the caller's offset is in the current file."""
    if offset < 0:
        raise InvalidRequest(f"offset: must not be negative, got {offset}")
    if inode and (inode != current_inode or size < offset):
        return 0, True  # rotated while the caller was away: the new file from its beginning
    if offset > size:
        raise InvalidRequest(f"offset: {offset} is past the end of {where} ({size} bytes)")
    return offset, False


class FollowStep(enum.Enum):
    WAIT = "wait"  # nothing new: look again later
    TRUNCATED = "truncated"  # copied and truncated: go on from 0 in the same file
    REOPEN = "reopen"  # renamed away and replaced: drain the old file, then the new one from 0


def after_eof(offset: int, open_inode: int, open_size: int, path_inode: int | None) -> FollowStep:
    """What a follower does when a read at `offset` of the file it holds open (`open_inode`, now
    `open_size` bytes) returned nothing, and the path now names `path_inode` (None: nothing, e.g. between
    a rename and the new file's creation)."""
    if open_size < offset:
        return FollowStep.TRUNCATED
    if path_inode is not None and path_inode != open_inode:
        return FollowStep.REOPEN
    return FollowStep.WAIT


# ---- `--since`: when each byte of stdout and stderr was (about) written -------------------------------------
@dataclass(frozen=True, slots=True)
class SizePoint:
    time: float
    inode: int
    size: int


class OutputTimeline:
    """Samples of one file's (inode, size) over time, a point only when either changed; at most
    `MAX_TIMELINE_POINTS`, the older half thinned to every other point when full (coarser far back)."""

    def __init__(self, limit: int = MAX_TIMELINE_POINTS) -> None:
        self.limit = max(4, limit)
        self.points: list[SizePoint] = []

    def record(self, now: float, inode: int, size: int) -> None:
        last = self.points[-1] if self.points else None
        if last is not None and (last.inode, last.size) == (inode, size):
            return
        self.points.append(SizePoint(now, inode, size))
        if len(self.points) > self.limit:
            half = len(self.points) // 2
            self.points = self.points[:half:2] + self.points[half:]

    def offset_since(self, since: float, inode: int, size: int, mtime: float) -> int:
        """Where the output written from `since` on starts in the file as it is now (`inode`, `size`,
        modified at `mtime`); see the module docstring."""
        before = None
        after: list[SizePoint] = []
        for point in self.points:
            if point.time <= since:
                before = point
            else:
                after.append(point)
        if before is None:
            return 0 if mtime >= since else size
        previous = before
        for point in [*after, SizePoint(since, inode, size)]:
            if point.inode != before.inode or point.size < previous.size:
                return 0  # rotated after `since`: all of the current file is newer
            previous = point
        return min(before.size, size)


# ---- which sandbox -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SandboxEntry:
    """A task of this agent as its file service sees it: whose it is and where its sandbox is."""

    framework_id: str
    task_id: str
    principal: str = ""  # the framework's principal as the master recorded it ("": not known)
    run_dir: str = ""  # the task's run directory ("": not prepared yet)
    sandbox: str = ""  # the task's own directory inside it
    live: bool = True  # not yet terminal
    collected: bool = False  # removed by the sandbox garbage collection
    ended_at: float = 0.0  # wall time it became terminal (0: live)

    @property
    def key(self) -> TaskKey:
        return TaskKey(self.framework_id, self.task_id)


def task_name(key: TaskKey) -> str:
    return f"{key.framework_id}/{key.task_id}" if key.framework_id else key.task_id


def find_sandbox(entries: Mapping[TaskKey, SandboxEntry], key: TaskKey, agent: str) -> SandboxEntry:
    """The entry of the task `key` on this agent (named `agent` in messages), or why there is none."""
    if not key.task_id:
        raise InvalidRequest("task.task_id: required")
    entry = entries.get(key)
    if entry is None:
        raise NotFound(f"agent {agent} has no task {task_name(key)} (never ran it, or forgot it long ago)")
    if entry.collected:
        raise NotFound(f"the sandbox of task {task_name(key)} on agent {agent} was collected: removed by the "
                       "sandbox garbage collection after the task ended (--sandbox-gc-delay, --sandbox-gc-max-mib)")
    if not entry.sandbox and not entry.live:
        raise NotFound(f"task {task_name(key)} on agent {agent} ended before it had a sandbox")
    if not entry.sandbox:
        raise Conflict(f"task {task_name(key)} on agent {agent} has no sandbox yet (its image is being pulled, "
                       "or it is being launched); retry in a moment")
    return entry
