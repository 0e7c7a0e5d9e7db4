"""Artifacts into a task's sandbox, as the task's user (the fetcher's last step, docs/fetcher.md): a local
file opened for reading (`open_local`), a file put under its name (`place`), an archive extracted
(`extract`, after `tessera.agent.core.fetching.check_archive` accepted it whole). The fetch process
(agent/executor/fetcher.py) calls these after it dropped to the task's user, with a descriptor on the
sandbox it opened before.

Rules it keeps:
- Nothing is written through a symlink: every directory on a path is opened O_NOFOLLOW from the
  sandbox's descriptor, every file is created O_EXCL|O_NOFOLLOW; a name already taken by a file or a
  link is unlinked first (never followed), one taken by a directory fails (`FetchError`).
- A placed file is written aside and renamed into place, so its name never shows half a file.
- At most `max_bytes` are written per artifact, whatever its headers say; modes are the archive's
  permission bits without setuid, setgid or sticky, owner read and write always set.
"""

from __future__ import annotations

# What tarfile imports on first use, imported now: the fetch process extracts after it dropped to the
# task's user, who may not be able to read the interpreter's library.
import bz2  # noqa: F401
import errno
import gzip  # noqa: F401
import lzma  # noqa: F401
import os
import stat
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any
from zlib import error as zlib_error

from tessera.agent.core.fetching import ArchiveRefused, Member, MemberKind, check_archive, member_path

MIB = 1024 * 1024
MAX_ARCHIVE_MEMBERS = 100_000
COPY_CHUNK = MIB


class FetchError(Exception):
    """One URI could not be put into the sandbox; `reason` says why (without the URI)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# ---- into the sandbox (as the task's user) ---------------------------------------------------------------
def open_local(path: str, max_bytes: int) -> int:
    """Open a file:// URI's file for reading, as the task's user: a regular file within the size limit."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise FetchError(f"cannot read {path} as the task's user: {exc.strerror or exc}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise FetchError(f"{path} is {kind}")
    if info.st_size > max_bytes:
        os.close(fd)
        raise FetchError(f"larger than the agent's limit of {max_bytes / MIB:g} MiB (--fetcher-max-mib): "
                         f"{path} holds {info.st_size} bytes")
    os.set_blocking(fd, True)
    return fd


def _copy(src: IO[bytes] | int, dst: int, max_bytes: int, what: str) -> int:
    """Copy everything `src` (a descriptor, read from its start, or a file object) holds into `dst`, at
    most `max_bytes`; the byte count."""
    too_big = f"{what} is larger than the agent's limit of {max_bytes / MIB:g} MiB (--fetcher-max-mib)"
    total = 0
    if isinstance(src, int):
        offset = 0
        while True:
            try:
                sent = os.sendfile(dst, src, offset, COPY_CHUNK)
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOSYS):
                    os.lseek(src, offset, os.SEEK_SET)
                    return total + _copy(os.fdopen(os.dup(src), "rb"), dst, max_bytes - total, what)
                raise
            if sent == 0:
                return total
            offset += sent
            total += sent
            if total > max_bytes:
                raise FetchError(too_big)
    with src:
        while chunk := src.read(COPY_CHUNK):
            total += len(chunk)
            if total > max_bytes:
                raise FetchError(too_big)
            write_all(dst, chunk)
    return total


def place(src: int, sandbox: int, name: str, executable: bool, max_bytes: int) -> int:
    """Put the bytes of `src` into the sandbox as `name` (0755 when `executable`, else 0644): written aside
    and renamed over whatever file or link had the name. The byte count."""
    aside = f".{name}.fetching"[:255]
    _remove_entry(sandbox, aside)
    mode = 0o755 if executable else 0o644
    try:
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=sandbox)
    except OSError as exc:
        raise FetchError(f"cannot write {name} in the sandbox: {exc.strerror or exc}") from None
    try:
        size = _copy(src, fd, max_bytes, "the file")
        os.fchmod(fd, mode)
    except OSError as exc:
        os.unlink(aside, dir_fd=sandbox)
        raise FetchError(f"cannot write {name} in the sandbox: {exc.strerror or exc}") from None
    except BaseException:
        os.unlink(aside, dir_fd=sandbox)
        raise
    finally:
        os.close(fd)
    try:
        os.rename(aside, name, src_dir_fd=sandbox, dst_dir_fd=sandbox)
    except OSError as exc:
        os.unlink(aside, dir_fd=sandbox)
        why = "a directory has that name" if exc.errno in (errno.EISDIR, errno.ENOTEMPTY) else exc.strerror or str(exc)
        raise FetchError(f"cannot write {name} in the sandbox: {why}") from None
    return size


def _remove_entry(directory: int, name: str) -> None:
    """Unlink `name` in `directory` unless it is a directory (FetchError then); nothing when absent."""
    try:
        info = os.lstat(name, dir_fd=directory)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        raise FetchError(f"{name!r} is a directory in the sandbox")
    os.unlink(name, dir_fd=directory)


def _directory(root: int, parts: tuple[str, ...], name: str) -> int:
    """A descriptor on the directory `parts` below `root`, made where missing, through no symlink."""
    fd = os.dup(root)
    try:
        for i, part in enumerate(parts):
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise FetchError(f"archive member {name!r}: {'/'.join(parts[:i + 1])!r} in the sandbox is not a "
                                     "directory (a symlink or a file); nothing is written through it") from None
                raise
            os.close(fd)
            fd = inner
        return fd
    except BaseException:
        os.close(fd)
        raise


@dataclass(frozen=True)
class _Entry:
    member: Member
    mode: int
    mtime: float
    open_data: Callable[[], IO[bytes]] | None  # a regular file's content


def _tar_entries(tar: tarfile.TarFile) -> Iterator[_Entry]:
    for info in tar:
        if info.isreg():
            kind, what = MemberKind.FILE, ""
        elif info.isdir():
            kind, what = MemberKind.DIRECTORY, ""
        elif info.issym():
            kind, what = MemberKind.SYMLINK, ""
        elif info.islnk():
            kind, what = MemberKind.HARDLINK, ""
        else:
            kind = MemberKind.OTHER
            what = ("character device" if info.ischr() else "block device" if info.isblk() else
                    "FIFO" if info.isfifo() else f"member of tar type {info.type!r}")
        data = (lambda info=info: tar.extractfile(info)) if kind is MemberKind.FILE else None  # type: ignore[misc]
        yield _Entry(Member(info.name, kind, info.size, info.linkname, what), info.mode, float(info.mtime), data)


_ZIP_KINDS = {stat.S_IFREG: MemberKind.FILE, stat.S_IFDIR: MemberKind.DIRECTORY, stat.S_IFLNK: MemberKind.SYMLINK}


def _zip_entries(archive: zipfile.ZipFile) -> Iterator[_Entry]:
    for info in archive.infolist():
        unix = info.external_attr >> 16 if info.create_system == 3 else 0
        file_type = stat.S_IFMT(unix)
        if file_type == 0:
            kind = MemberKind.DIRECTORY if info.is_dir() else MemberKind.FILE
        else:
            kind = _ZIP_KINDS.get(file_type, MemberKind.OTHER)
        link = ""
        if kind is MemberKind.SYMLINK:
            if info.file_size > 4096:
                raise ArchiveRefused(f"member {info.filename!r}: a symlink with an overlong target")
            link = archive.read(info).decode("utf-8", errors="surrogateescape")
        mode = stat.S_IMODE(unix) or (0o755 if kind is MemberKind.DIRECTORY else 0o644)
        mtime = time.mktime((*info.date_time, 0, 0, -1))
        data = (lambda info=info: archive.open(info)) if kind is MemberKind.FILE else None  # type: ignore[misc]
        yield _Entry(Member(info.filename, kind, info.file_size, link, "special file"), mode, mtime, data)


def extract(src: int, kind: str, sandbox: int, max_bytes: int) -> str:
    """Extract the archive `src` ("tar", any compression tarfile reads, or "zip") into the sandbox, after
    checking it whole; a summary ("N files, M bytes"). Raises ArchiveRefused or FetchError."""
    os.lseek(src, 0, os.SEEK_SET)
    stream = os.fdopen(os.dup(src), "rb")
    try:
        if kind == "zip":
            try:
                archive: Any = zipfile.ZipFile(stream)
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                raise FetchError(f"not a zip archive: {exc}") from None
            entries: Callable[[], Iterator[_Entry]] = lambda: _zip_entries(archive)  # noqa: E731
        else:
            try:
                archive = tarfile.open(fileobj=stream, mode="r:*")
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise FetchError(f"not a tar archive: {exc}") from None
            entries = lambda: _tar_entries(archive)  # noqa: E731
        with archive:
            try:
                summary = check_archive((e.member for e in entries()), MAX_ARCHIVE_MEMBERS, max_bytes)
                written = 0
                for entry in entries():
                    written += _extract_one(entry, sandbox, max_bytes - written)
            except (tarfile.TarError, zipfile.BadZipFile, EOFError, ValueError, zlib_error) as exc:
                raise FetchError(f"the archive is damaged: {exc}") from None
            except (NotImplementedError, RuntimeError) as exc:  # zip: a compression method or encryption
                raise FetchError(f"cannot extract: {exc}") from None
            except OSError as exc:
                raise FetchError(f"cannot extract: {exc.strerror or exc}") from None
    finally:
        stream.close()
    return f"{summary.files} files, {written} bytes"


def _extract_one(entry: _Entry, sandbox: int, budget: int) -> int:
    member = entry.member
    parts = member_path(member.name)
    if not parts:
        return 0
    parent = _directory(sandbox, parts[:-1], member.name)
    last = parts[-1]
    try:
        if member.kind is MemberKind.DIRECTORY:
            try:
                os.mkdir(last, 0o700, dir_fd=parent)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(last, dir_fd=parent).st_mode):
                    raise FetchError(f"archive member {member.name!r}: a file or link in the sandbox has its name") from None
            os.chmod(last, (entry.mode & 0o777) | 0o700, dir_fd=parent, follow_symlinks=False)
            return 0
        _remove_entry(parent, last)
        if member.kind is MemberKind.SYMLINK:
            os.symlink(member.link, last, dir_fd=parent)
            return 0
        if member.kind is MemberKind.HARDLINK:
            target = member_path(member.link)
            source = _directory(sandbox, target[:-1], member.name)
            try:
                os.link(target[-1], last, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False)
            finally:
                os.close(source)
            return 0
        assert entry.open_data is not None
        fd = os.open(last, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            data = entry.open_data()
            written = _copy(data, fd, budget, "the archive's content")
            os.fchmod(fd, (entry.mode & 0o777) | 0o600)
            os.utime(fd, (entry.mtime, entry.mtime))
        finally:
            os.close(fd)
        return written
    finally:
        os.close(parent)
