"""Reading a task's sandbox from the agent, which runs as root, without ever leaving the sandbox.

The task owns its sandbox: it may put symlinks, FIFOs, device nodes (a root task) or hard links to other
files there, and rename anything at any moment. So the agent never resolves a path by name. It walks
component by component from a descriptor of the sandbox, each step `openat(O_PATH | O_NOFOLLOW)` (an
`O_PATH` descriptor opens nothing: no FIFO blocks, no device is touched), checks what it got with
`fstat`, and only then opens a regular file or a directory for reading through that very descriptor
(`/proc/self/fd/N`), so what is read is what was checked (as `enter_working_dir` of the supervisor walks
without following symlinks). Refused (`PermissionDenied`, the core's error): a symlink anywhere on the
way (never followed, even to a place inside the sandbox), a special file (FIFO, socket, device), a
regular file with more than one hard link (it could be a link to a file outside the sandbox, made by a
task that could read it; the launcher's stdout tail keeps the same rule). Missing: `NotFound`. A
component that is not a directory: `InvalidRequest`. Which path is acceptable at all is decided first by
`tessera.agent.core.files.sandbox_path`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tessera.agent.core.files import MAX_LIST_ENTRIES, shown_path
from tessera.control_plane.core.errors import InvalidRequest, NotFound, PermissionDenied

_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

REGULAR, DIRECTORY, SYMLINK, SPECIAL = "regular", "directory", "symlink", "special"


@dataclass(frozen=True, slots=True)
class Entry:
    path: str  # relative to the sandbox
    kind: str  # REGULAR, DIRECTORY, SYMLINK, SPECIAL
    size: int
    mtime: float
    mode: int  # permission bits
    inode: int
    nlink: int = 1


def kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return REGULAR
    if stat.S_ISDIR(mode):
        return DIRECTORY
    if stat.S_ISLNK(mode):
        return SYMLINK
    return SPECIAL


def entry_of(path: str, info: os.stat_result) -> Entry:
    return Entry(path, kind_of(info.st_mode), info.st_size, info.st_mtime, stat.S_IMODE(info.st_mode),
                 info.st_ino, info.st_nlink)


def _refuse(where: str, info: os.stat_result, wanted: str) -> None:
    kind = kind_of(info.st_mode)
    if kind == SYMLINK:
        raise PermissionDenied(f"{where} is a symlink: symlinks in a sandbox are never followed")
    if kind == SPECIAL:
        raise PermissionDenied(f"{where} is a special file (FIFO, socket or device): never opened")
    if wanted == DIRECTORY and kind != DIRECTORY:
        raise InvalidRequest(f"{where} is not a directory")
    if wanted == REGULAR and kind == DIRECTORY:
        raise InvalidRequest(f"{where} is a directory: list it instead")


def open_sandbox(sandbox: str) -> int:
    """An `O_PATH` descriptor of the sandbox directory (the path up to it is the agent's own)."""
    try:
        fd = os.open(sandbox, _PATH_FLAGS | os.O_DIRECTORY)
    except FileNotFoundError:
        raise NotFound("the task's sandbox is gone from the disk") from None
    except OSError as exc:
        raise PermissionDenied(f"the task's sandbox cannot be opened: {exc.strerror or exc}") from None
    return fd


def walk(root: int, parts: tuple[str, ...]) -> int:
    """An `O_PATH` descriptor of `parts` below the directory `root` (not followed if it is a symlink);
    every component on the way must be a real directory. The caller closes it."""
    fd = os.dup(root)
    try:
        for i, part in enumerate(parts):
            where = shown_path(parts[: i + 1])
            try:
                inner = os.open(part, _PATH_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                raise NotFound(f"{where}: no such file in the sandbox") from None
            except NotADirectoryError:
                raise InvalidRequest(f"{shown_path(parts[:i])} is not a directory") from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise PermissionDenied(f"{where} is a symlink: symlinks in a sandbox are never followed") from None
                raise PermissionDenied(f"{where}: {exc.strerror or exc}") from None
            os.close(fd)
            fd = inner
            if i < len(parts) - 1:
                _refuse(where, os.fstat(fd), DIRECTORY)
        return fd
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def _path_fd(root: int, parts: tuple[str, ...]) -> Iterator[int]:
    fd = walk(root, parts)
    try:
        yield fd
    finally:
        os.close(fd)


def reopen(path_fd: int, flags: int) -> int:
    """Open for reading the very file an `O_PATH` descriptor holds."""
    return os.open(f"/proc/self/fd/{path_fd}", flags | os.O_CLOEXEC)


def stat_path(root: int, parts: tuple[str, ...]) -> Entry:
    """What `parts` is (a symlink or a special file is described, never followed or opened)."""
    with _path_fd(root, parts) as fd:
        return entry_of(shown_path(parts), os.fstat(fd))


def list_dir(root: int, parts: tuple[str, ...], limit: int = MAX_LIST_ENTRIES) -> tuple[list[Entry], bool]:
    """The entries of the directory `parts`, sorted by name, at most `limit` (and whether there were more)."""
    where = shown_path(parts)
    with _path_fd(root, parts) as fd:
        _refuse(where, os.fstat(fd), DIRECTORY)
        dir_fd = reopen(fd, os.O_RDONLY | os.O_DIRECTORY)
        try:
            names = []
            with os.scandir(dir_fd) as it:
                for item in it:
                    names.append(item.name)
                    if len(names) > limit:
                        break
            truncated = len(names) > limit
            entries = []
            for name in sorted(names)[:limit]:
                try:
                    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed meanwhile
                entries.append(entry_of("/".join((*parts, name)), info))
            return entries, truncated
        finally:
            os.close(dir_fd)


def open_file(root: int, parts: tuple[str, ...]) -> tuple[int, os.stat_result]:
    """A descriptor for reading the regular file `parts`, and its stat; the caller closes it."""
    where = shown_path(parts)
    with _path_fd(root, parts) as fd:
        info = os.fstat(fd)
        _refuse(where, info, REGULAR)
        if info.st_nlink != 1:
            raise PermissionDenied(f"{where} has {info.st_nlink} hard links: only files with one are served "
                                   "(another link could be a file outside the sandbox)")
        readable = reopen(fd, os.O_RDONLY | os.O_NONBLOCK)
    return readable, info


def inode_at(root: int, parts: tuple[str, ...]) -> int | None:
    """The inode `parts` names now, if it is a regular file (None: nothing there, or something else)."""
    try:
        with _path_fd(root, parts) as fd:
            info = os.fstat(fd)
    except (NotFound, InvalidRequest, PermissionDenied, OSError):
        return None
    return info.st_ino if stat.S_ISREG(info.st_mode) else None
