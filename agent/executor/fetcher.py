"""The fetcher (Mesos's): a task's URIs downloaded, copied or extracted into its sandbox before the task
starts (docs/fetcher.md). The task's supervisor calls `fetch` before it starts the task, so the agent's
loop never waits on a download, a slow server cannot hold anything but its own task, and a fetch goes on
across a restart of the agent like the task it belongs to.

How one fetch runs: the supervisor forks a fetch process and waits for it (`fetch`), reading its
progress from a pipe. The fetch process
1. downloads the http(s) URIs as root: from the agent's cache when it has the URL (`DownloadCache`,
   one entry per URL, shared by every task of the agent), else from the server into the cache (or into
   an anonymous file of the run directory for `no_cache` and for a download too big to cache);
2. drops to the task's user (its uid, gid and groups: the sandbox's owner, whom the launcher made it);
3. as that user, opens the file:// URIs (so a task never gets a file its user could not read: the
   fetcher runs as root, a `file:///etc/shadow` must not become a hole) and puts every URI into the
   sandbox: copied under its name (0644, or 0755 when `executable`), or extracted (`extract`), so what
   lands in the sandbox is the task's user's, made with that user's rights (agent/executor/artifacts.py).
The supervisor kills the fetch process (SIGKILL) when the task is killed meanwhile (TASK_KILLED) or when
the agent's `--fetcher-timeout` is over (TASK_FAILED); a download over `--fetcher-max-mib`, a server
error, an unsupported redirect, an unreadable file or an archive the extraction rules refuse end the
task TASK_FAILED with REASON_FETCHER_FAILED and a message naming the URI (`FetchOutcome.error`).

Rules it keeps:
- Only http, https and file URLs (the master refused others already); a redirect may lead to http or
  https only (never file://: a server must not make the fetcher read the agent's files).
- Each URI brings at most `max_bytes` into the sandbox: the download (a Content-Length over it is
  refused before reading) and, for an archive, the files it holds.
- An archive is checked whole before anything of it is written (`tessera.agent.core.fetching`: no
  absolute or climbing names, no device files, no symlink out, nothing written through a link) and is
  written with no symlink followed: every directory is opened O_NOFOLLOW from the sandbox's descriptor.
- file:// URIs are never cached (the cache is root's, shared by every user of the agent).
- The cache holds at most `cache_max_bytes`, least recently used entries removed first after each
  insert; an entry is replaced only by a complete download (written aside, renamed into place), and
  concurrent fetches of one URL wait for each other (a lock file per entry) so the server is asked once.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import signal
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tessera.agent.core.fetching import ArchiveRefused, CacheEntry, cache_key, plan_eviction
from tessera.agent.executor.artifacts import (
    COPY_CHUNK,
    MIB,
    FetchError,
    extract,
    open_local,
    place,
    write_all,
)
from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.uris import archive_kind, file_name_of, parse_url
from tessera.control_plane.core.values import CommandURI

DEFAULT_MAX_BYTES = 1024 * MIB  # --fetcher-max-mib
DEFAULT_TIMEOUT = 300.0  # --fetcher-timeout, seconds for all of a task's URIs
DEFAULT_CACHE_MAX_BYTES = 2048 * MIB  # --fetcher-cache-max-mib
STALE_PART_SECONDS = 24 * 3600.0  # a partial download older than this was left by a killed fetch
USER_AGENT = "tessera-fetcher"


@dataclass(frozen=True)
class FetcherConfig:
    """The agent's fetcher flags, as launch.json carries them to the supervisor."""

    max_bytes: int = DEFAULT_MAX_BYTES
    timeout: float = DEFAULT_TIMEOUT
    cache_dir: str = ""  # "": no cache
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: Any) -> FetcherConfig:
        if not isinstance(data, dict):
            return FetcherConfig()
        return FetcherConfig(int(data.get("max_bytes", DEFAULT_MAX_BYTES)), float(data.get("timeout", DEFAULT_TIMEOUT)),
                             str(data.get("cache_dir", "")), int(data.get("cache_max_bytes", DEFAULT_CACHE_MAX_BYTES)))


def uris_to_json(uris: tuple[CommandURI, ...]) -> list[dict[str, Any]]:
    return [asdict(u) for u in uris]


def uris_from_json(data: Any) -> tuple[CommandURI, ...]:
    if not isinstance(data, list):
        return ()
    return tuple(CommandURI(str(u.get("value", "")), bool(u.get("extract")), bool(u.get("executable")),
                            str(u.get("output_file", "")), bool(u.get("no_cache"))) for u in data if isinstance(u, dict))


@dataclass
class FetchOutcome:
    error: str = ""  # "URI: why", for TASK_FAILED (REASON_FETCHER_FAILED)
    killed: bool = False  # the task was killed during the fetch
    notes: list[str] = field(default_factory=list)  # one line per URI, for the task's stderr


# ---- the supervisor's side -------------------------------------------------------------------------------------
def fetch(uris: tuple[CommandURI, ...], task_dir: Path, run_dir: Path, user: str, config: FetcherConfig, *,
          wake_fd: int, cancelled: Callable[[], bool], log: Callable[[str], None]) -> FetchOutcome:
    """Fetch `uris` into `task_dir` in a fetch process (see the module doc) and wait for it: until it is
    done, the task is killed (`cancelled()`, checked whenever `wake_fd` is readable) or the timeout is over."""
    owner = os.stat(task_dir)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the fetch process: never returns
        code = 1
        try:
            os.close(read_end)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _fetch_process(write_end, uris, task_dir, run_dir, user, owner.st_uid, owner.st_gid, config)
            code = 0
        except BaseException as exc:  # noqa: BLE001 - a fetch process reports and exits, whatever happened
            try:
                _report(write_end, {"error": f"the fetcher failed: {exc!r}"})
            except BaseException:  # noqa: BLE001
                pass
        finally:
            os._exit(code)
    os.close(write_end)
    return _await_fetch(pid, read_end, uris, config, wake_fd, cancelled, log)


def _await_fetch(pid: int, read_end: int, uris: tuple[CommandURI, ...], config: FetcherConfig, wake_fd: int,
                 cancelled: Callable[[], bool], log: Callable[[str], None]) -> FetchOutcome:
    outcome = FetchOutcome()
    current = 0  # the URI being worked on (names it in a timeout)
    done = False
    buffer = b""
    deadline = time.monotonic() + config.timeout
    poller = select.poll()
    poller.register(read_end, select.POLLIN)
    poller.register(wake_fd, select.POLLIN)
    stop = ""
    try:
        while not done:
            if cancelled():
                stop = "killed"
                break
            left = deadline - time.monotonic()
            if left <= 0:
                stop = "timeout"
                break
            for fd, _ in poller.poll(max(1, int(min(left, 5.0) * 1000))):
                if fd == wake_fd:
                    try:
                        os.read(wake_fd, 1024)
                    except OSError:
                        pass
                    continue
                chunk = os.read(read_end, 65536)
                if not chunk:
                    done = True
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    message = json.loads(line)
                    if "start" in message:
                        current = int(message["start"])
                    if message.get("note"):
                        outcome.notes.append(str(message["note"]))
                        log(f"fetcher: {message['note']}")
                    if message.get("error"):
                        where = uris[int(message["index"])].value if "index" in message else "the task's URIs"
                        outcome.error = f"{where}: {message['error']}"
    finally:
        os.close(read_end)
    if stop:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if stop == "killed":
        outcome.killed = True
        log("the task was killed while its URIs were fetched")
    elif stop == "timeout":
        outcome.error = (f"{uris[current].value}: not fetched within the agent's fetcher timeout of "
                         f"{config.timeout:g}s (--fetcher-timeout)")
    elif not outcome.error and os.waitstatus_to_exitcode(status) != 0:
        outcome.error = f"{uris[current].value}: the fetcher ended with status {os.waitstatus_to_exitcode(status)}"
    if outcome.error:
        log(f"fetch failed: {outcome.error}")
    return outcome


def _report(fd: int, message: dict[str, Any]) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


# ---- the fetch process ---------------------------------------------------------------------------------------
def _fetch_process(out: int, uris: tuple[CommandURI, ...], task_dir: Path, run_dir: Path, user: str, uid: int,
                   gid: int, config: FetcherConfig) -> None:
    cache = DownloadCache(Path(config.cache_dir), config.cache_max_bytes) if config.cache_dir else None
    sources: dict[int, tuple[int, str]] = {}  # index -> (a descriptor on the downloaded bytes, how it was got)
    index = 0
    try:
        for index, uri in enumerate(uris):  # 1. downloads, as root (the cache is root's)
            parsed = parse_url(uri.value, "uri")
            if parsed.scheme == "file":
                continue
            _report(out, {"start": index})
            if cache is not None and not uri.no_cache:
                sources[index] = cache.get(uri.value, lambda fd, url=uri.value: download(url, fd, config.max_bytes,
                                                                                         config.timeout))
            else:
                fd = anonymous_file(run_dir)
                download(uri.value, fd, config.max_bytes, config.timeout)
                sources[index] = (fd, "downloaded")
        # the sandbox is opened as root (the path is the agent's, root's all the way), used as the user
        sandbox = os.open(task_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        _become(user, uid, gid)  # 2. the task's user from here on
        os.umask(0o022)
        for index, uri in enumerate(uris):  # 3. into the sandbox, as the task's user
            _report(out, {"start": index})
            name = file_name_of(uri)
            if index in sources:
                fd, how = sources[index]
            else:
                fd, how = open_local(parse_url(uri.value, "uri").path, config.max_bytes), "copied"
            try:
                if uri.extract:
                    summary = extract(fd, archive_kind(name), sandbox, config.max_bytes)
                    note = f"{uri.value}: {how}, extracted {summary}"
                else:
                    size = place(fd, sandbox, name, uri.executable, config.max_bytes)
                    note = f"{uri.value}: {how}, {size} bytes as {name}{' (executable)' if uri.executable else ''}"
            finally:
                os.close(fd)
            _report(out, {"done": index, "note": note})
    except (FetchError, ArchiveRefused, InvalidRequest) as exc:
        reason = exc.reason if isinstance(exc, FetchError) else (
            exc.message if isinstance(exc, InvalidRequest) else f"archive refused: {exc}")
        _report(out, {"error": reason, "index": index})


def _become(user: str, uid: int, gid: int) -> None:
    """Drop to the task's user: its uid, its primary group and (when it is a named user) its groups."""
    if os.geteuid() != 0 or uid == 0:
        return
    groups_set = False
    if user:
        import pwd

        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            entry = None
        if entry is not None and entry.pw_uid == uid:
            os.initgroups(user, gid)
            groups_set = True
    if not groups_set:
        os.setgroups([gid])
    os.setgid(gid)
    os.setuid(uid)


def anonymous_file(directory: Path) -> int:
    """A file without a name in `directory` (freed when closed)."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise FetchError(f"cannot make a file in {directory}: {exc.strerror or exc}") from exc
    path = directory / f".fetch.{os.getpid()}.{time.monotonic_ns()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.unlink(path)
    return fd


# ---- downloads ---------------------------------------------------------------------------------------------
class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, but to http and https only (urllib would follow ftp too)."""

    def http_error_302(self, req: Any, fp: Any, code: int, msg: str, headers: Any) -> Any:
        target = urllib.parse.urljoin(req.full_url, headers.get("location") or headers.get("uri") or "")
        if urllib.parse.urlsplit(target).scheme.lower() not in ("http", "https"):
            raise FetchError(f"redirected to {target[:200]!r}: only http and https redirects are followed")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener() -> urllib.request.OpenerDirector:
    """http and https only (no ftp, file or data handlers), the environment's proxies."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    _HttpOnlyRedirects(), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def download(url: str, fd: int, max_bytes: int, timeout: float) -> int:
    """Write what `url` serves into `fd` (from its start); the byte count. Raises FetchError: an HTTP
    error, a network error, more than `max_bytes`."""
    too_big = f"larger than the agent's limit of {max_bytes / MIB:g} MiB (--fetcher-max-mib)"
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with _opener().open(request, timeout=max(1.0, timeout)) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > max_bytes:
                raise FetchError(f"{too_big}: the server announces {int(length)} bytes")
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            total = 0
            while chunk := response.read(COPY_CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise FetchError(too_big)
                write_all(fd, chunk)
            if length is not None and length.strip().isdigit() and total != int(length):
                raise FetchError(f"the server sent {total} of the {int(length)} bytes it announced")
            return total
    except urllib.error.HTTPError as exc:
        raise FetchError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        raise FetchError(f"cannot reach the server: {getattr(reason, 'strerror', None) or reason}") from None
    except TimeoutError:
        raise FetchError("the server stopped answering (timed out)") from None
    except OSError as exc:
        raise FetchError(f"download failed: {exc.strerror or exc}") from None
    except ValueError as exc:  # http.client's own complaints (a bad URL, a bad header)
        raise FetchError(f"download failed: {exc}") from None


class DownloadCache:
    """The agent's downloads, one entry per URL (`cache_key`), in a root-only directory. `get` gives a
    descriptor on the URL's bytes, downloading them once (concurrent fetches of one URL wait on the
    entry's lock file), and evicts least recently used entries over `max_bytes` (`plan_eviction`)."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def get(self, url: str, fill: Callable[[int], int]) -> tuple[int, str]:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise FetchError(f"cannot use the fetcher cache {self.directory}: {exc.strerror or exc}") from exc
        key = cache_key(url)
        entry = self.directory / key
        with self._locked(key):
            try:
                fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                os.utime(fd)  # the least recently used go first
                return fd, "from the agent's cache"
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise FetchError(f"cannot read the fetcher cache entry {entry}: {exc.strerror or exc}") from exc
            part = self.directory / f"{key}.{os.getpid()}.part"
            fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                size = fill(fd)
                if size > self.max_bytes:  # too big for the cache: used once, not kept
                    os.unlink(part)
                    return fd, "downloaded (too big for the agent's cache)"
                os.rename(part, entry)
            except BaseException:
                os.close(fd)
                part.unlink(missing_ok=True)
                raise
        self.evict(keep=key)
        return fd, "downloaded into the agent's cache"

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        fd = os.open(self.directory / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a fetch waits for another's download of the same URL
            yield
        finally:
            os.close(fd)

    def evict(self, keep: str = "") -> list[str]:
        """Remove least recently used entries until the cache holds at most its size; an entry being
        fetched (its lock held) is skipped. Also removes partial downloads left by killed fetches."""
        entries: list[CacheEntry] = []
        now = time.time()
        for path in self.directory.iterdir():
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            if path.suffix == ".part" and now - info.st_mtime > STALE_PART_SECONDS:
                path.unlink(missing_ok=True)
            elif len(path.name) == 64 and stat.S_ISREG(info.st_mode):
                entries.append(CacheEntry(path.name, info.st_size, info.st_mtime))
        removed = []
        for name in plan_eviction(entries, self.max_bytes, frozenset({keep})):
            lock = os.open(self.directory / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                           0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock)
                continue
            try:
                (self.directory / name).unlink(missing_ok=True)
                (self.directory / f"{name}.lock").unlink(missing_ok=True)
                removed.append(name)
            finally:
                os.close(lock)
        return removed
