"""The fetcher's I/O (agent/executor/fetcher.py, artifacts.py) without a supervisor: extraction of good and crafted
malicious archives (refused whole: nothing is written, nothing outside is touched), placing a file,
reading a local file, downloads from a local HTTP server (errors, limits, redirects, a stalled server)
and the download cache (a hit asks the server nothing; eviction)."""

from __future__ import annotations

import os
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.agent.core.fetching import ArchiveRefused
from tessera.agent.executor.artifacts import FetchError, extract, open_local, place
from tessera.agent.executor.fetcher import DownloadCache, anonymous_file, download
from tests.support.artifacts import ArtifactServer, tar_bytes, tar_member, zip_bytes

MIB = 1024 * 1024


@pytest.fixture
def where(tmp_path: Path) -> Iterator[tuple[Path, int, Path]]:
    """(sandbox, its descriptor, a directory outside it that a bad archive would aim at)."""
    sandbox, outside = tmp_path / "sandbox", tmp_path / "outside"
    sandbox.mkdir()
    outside.mkdir()
    fd = os.open(sandbox, os.O_RDONLY | os.O_DIRECTORY)
    yield sandbox, fd, outside
    os.close(fd)


@pytest.fixture
def server() -> Iterator[ArtifactServer]:
    with ArtifactServer() as s:
        yield s


def source(tmp_path: Path, data: bytes) -> int:
    path = tmp_path / f"source-{time.monotonic_ns()}"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def tree(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


# ---- extraction ----------------------------------------------------------------------------------------------
def test_a_tarball_is_extracted_with_its_directories_links_and_modes(where: tuple[Path, int, Path],
                                                                     tmp_path: Path) -> None:
    sandbox, fd, _ = where
    data = tar_bytes([("./app/bin/run", b"#!/bin/sh\necho run\n", 0o4755), ("app/lib/libx.so.1", b"lib", 0o644),
                      tar_member("app/lib/libx.so", tarfile.SYMTYPE, "libx.so.1"),
                      tar_member("app/bin/lib", tarfile.SYMTYPE, "../lib"),
                      tar_member("app/bin/run2", tarfile.LNKTYPE, "app/bin/run"),
                      tar_member("app/empty", tarfile.DIRTYPE)])
    summary = extract(source(tmp_path, data), "tar", fd, MIB)
    assert summary == "2 files, 22 bytes"
    run = sandbox / "app/bin/run"
    assert run.read_bytes().startswith(b"#!/bin/sh") and stat.S_IMODE(run.stat().st_mode) == 0o755  # no setuid
    assert (sandbox / "app/lib/libx.so").read_bytes() == b"lib" and (sandbox / "app/bin/lib").is_symlink()
    assert (sandbox / "app/bin/run2").stat().st_ino == run.stat().st_ino
    assert (sandbox / "app/empty").is_dir()


def test_a_zip_is_extracted_with_its_unix_modes_and_links(where: tuple[Path, int, Path], tmp_path: Path) -> None:
    sandbox, fd, _ = where
    data = zip_bytes([("tool/", b"", stat.S_IFDIR | 0o755), ("tool/run.sh", b"echo hi\n", stat.S_IFREG | 0o755),
                      ("tool/data.txt", b"d", 0), ("tool/current", b"run.sh", stat.S_IFLNK | 0o777)])
    extract(source(tmp_path, data), "zip", fd, MIB)
    assert stat.S_IMODE((sandbox / "tool/run.sh").stat().st_mode) == 0o755
    assert (sandbox / "tool/data.txt").read_bytes() == b"d"
    assert os.readlink(sandbox / "tool/current") == "run.sh"


def dev(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tar_member(name, kind)
    info.devmajor, info.devminor = 1, 3
    return info


MALICIOUS_TARS = {
    "absolute name": [("ok", b"x", 0o644), ("/tmp/evil", b"x", 0o644)],
    "climbing name": [("ok", b"x", 0o644), ("a/../../evil", b"x", 0o644)],
    "absolute symlink": [tar_member("etc", tarfile.SYMTYPE, "/etc")],
    "climbing symlink": [tar_member("up", tarfile.SYMTYPE, "../outside")],
    "symlink then write through it": [tar_member("d", tarfile.SYMTYPE, "sub"), ("d/x", b"x", 0o644)],
    "link chain": [tar_member("a", tarfile.DIRTYPE), tar_member("a/s", tarfile.SYMTYPE, ".."),
                   tar_member("x", tarfile.DIRTYPE), tar_member("x/L", tarfile.SYMTYPE, "../a/s/..")],
    "hard link out": [tar_member("h", tarfile.LNKTYPE, "../outside/secret")],
    "hard link to a symlink": [tar_member("l", tarfile.SYMTYPE, "x"), tar_member("h", tarfile.LNKTYPE, "l")],
    "character device": [("ok", b"x", 0o644), dev("null", tarfile.CHRTYPE)],
    "block device": [dev("sda", tarfile.BLKTYPE)],
    "FIFO": [tar_member("pipe", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS_TARS))
def test_a_malicious_tarball_is_refused_whole(case: str, where: tuple[Path, int, Path], tmp_path: Path) -> None:
    sandbox, fd, outside = where
    (outside / "secret").write_text("keep")
    with pytest.raises(ArchiveRefused):
        extract(source(tmp_path, tar_bytes(MALICIOUS_TARS[case])), "tar", fd, MIB)
    assert tree(sandbox) == set(), "nothing of a refused archive is written"
    assert tree(outside) == {"secret"} and (outside / "secret").read_text() == "keep"


MALICIOUS_ZIPS = {
    "climbing name": [("../evil", b"x", stat.S_IFREG | 0o644)],
    "absolute name": [("/tmp/evil", b"x", stat.S_IFREG | 0o644)],
    "symlink out": [("up", b"../outside", stat.S_IFLNK | 0o777)],
    "absolute symlink": [("root", b"/", stat.S_IFLNK | 0o777)],
    "device": [("null", b"", stat.S_IFCHR | 0o666)],
    "write through a link": [("d", b"sub", stat.S_IFLNK | 0o777), ("d/x", b"x", stat.S_IFREG | 0o644)],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS_ZIPS))
def test_a_malicious_zip_is_refused_whole(case: str, where: tuple[Path, int, Path], tmp_path: Path) -> None:
    sandbox, fd, outside = where
    with pytest.raises(ArchiveRefused):
        extract(source(tmp_path, zip_bytes(MALICIOUS_ZIPS[case])), "zip", fd, MIB)
    assert tree(sandbox) == set() and tree(outside) == set()


def test_an_archive_holding_more_than_the_limit_is_refused_before_a_byte_is_written(
        where: tuple[Path, int, Path], tmp_path: Path) -> None:
    sandbox, fd, _ = where
    bomb = tar_bytes([(f"zeros{i}", b"\0" * MIB, 0o644) for i in range(3)])  # compresses to a few KiB
    assert len(bomb) < 64 * 1024
    with pytest.raises(ArchiveRefused, match="--fetcher-max-mib"):
        extract(source(tmp_path, bomb), "tar", fd, 2 * MIB)
    assert tree(sandbox) == set()


def test_a_link_left_in_the_sandbox_by_an_earlier_uri_is_not_written_through(
        where: tuple[Path, int, Path], tmp_path: Path) -> None:
    sandbox, fd, outside = where
    (sandbox / "d").symlink_to(outside)
    with pytest.raises(FetchError, match="not a directory"):
        extract(source(tmp_path, tar_bytes([("d/x", b"x", 0o644)])), "tar", fd, MIB)
    assert tree(outside) == set()


def test_garbage_is_not_an_archive(where: tuple[Path, int, Path], tmp_path: Path) -> None:
    _, fd, _ = where
    with pytest.raises(FetchError, match="not a zip archive"):
        extract(source(tmp_path, b"this is no zip"), "zip", fd, MIB)
    with pytest.raises(FetchError, match="not a tar archive"):
        extract(source(tmp_path, b"\x1f\x8b this is no tarball" * 40), "tar", fd, MIB)


# ---- placing and local files -----------------------------------------------------------------------------------
def test_place_writes_the_file_with_its_mode_and_replaces_a_link_without_following_it(
        where: tuple[Path, int, Path], tmp_path: Path) -> None:
    sandbox, fd, outside = where
    (outside / "target").write_text("keep")
    (sandbox / "tool").symlink_to(outside / "target")
    assert place(source(tmp_path, b"#!/bin/sh\n"), fd, "tool", True, MIB) == 10
    tool = sandbox / "tool"
    assert not tool.is_symlink() and stat.S_IMODE(tool.stat().st_mode) == 0o755
    assert (outside / "target").read_text() == "keep"
    place(source(tmp_path, b"data"), fd, "plain", False, MIB)
    assert stat.S_IMODE((sandbox / "plain").stat().st_mode) == 0o644
    (sandbox / "dir").mkdir()
    with pytest.raises(FetchError, match="directory"):
        place(source(tmp_path, b"x"), fd, "dir", False, MIB)
    with pytest.raises(FetchError, match="--fetcher-max-mib"):
        place(source(tmp_path, b"x" * 2000), fd, "big", False, 1000)
    assert tree(sandbox) == {"tool", "plain", "dir"}  # nothing half-written left behind


def test_open_local_takes_regular_files_within_the_limit_only(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    os.close(open_local(str(tmp_path / "f"), 10))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(FetchError, match="not a regular file"):
        open_local(str(tmp_path / "fifo"), 10)  # never blocks on a FIFO without a writer
    with pytest.raises(FetchError, match="is a directory"):
        open_local(str(tmp_path), 10)
    with pytest.raises(FetchError, match="holds 5 bytes"):
        open_local(str(tmp_path / "f"), 4)
    with pytest.raises(FetchError, match="No such file"):
        open_local(str(tmp_path / "missing"), 4)


# ---- downloads -------------------------------------------------------------------------------------------
def fetched(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 10 * MIB)


def test_download_writes_the_body_and_follows_http_redirects(server: ArtifactServer, tmp_path: Path) -> None:
    server.add("/a", b"payload")
    server.add("/moved", location=server.url("/a"), status=301)
    fd = anonymous_file(tmp_path)
    assert download(server.url("/moved"), fd, MIB, 10) == 7 and fetched(fd) == b"payload"
    server.add("/chunked", b"c" * 200_000, chunked=True)
    assert download(server.url("/chunked"), fd, MIB, 10) == 200_000 and fetched(fd) == b"c" * 200_000


@pytest.mark.parametrize(("path", "says"), [
    ("/missing", "HTTP 404"),
    ("/error", "HTTP 500"),
    ("/to-file", "only http and https redirects"),
    ("/big", "the server announces 2000 bytes"),
    ("/big-chunked", "larger than the agent's limit"),
])
def test_download_failures_say_why(server: ArtifactServer, tmp_path: Path, path: str, says: str) -> None:
    server.add("/error", status=500)
    server.add("/to-file", location="file:///etc/passwd")
    server.add("/big", b"b" * 2000)
    server.add("/big-chunked", b"b" * 2000, chunked=True)
    with pytest.raises(FetchError, match=says):
        download(server.url(path), anonymous_file(tmp_path), 1000, 10)


def test_a_stalled_server_and_a_closed_port_are_errors(server: ArtifactServer, tmp_path: Path) -> None:
    server.add("/slow", b"first bytes", stall=True)
    with pytest.raises(FetchError, match="timed out"):
        download(server.url("/slow"), anonymous_file(tmp_path), MIB, 1.0)
    closed = ArtifactServer()
    url = closed.url("/x")
    closed.server.server_close()
    with pytest.raises(FetchError, match="cannot reach the server"):
        download(url, anonymous_file(tmp_path), MIB, 5)


# ---- the cache ---------------------------------------------------------------------------------------------
def test_the_cache_asks_the_server_once_per_url_and_evicts_the_least_recently_used(
        server: ArtifactServer, tmp_path: Path) -> None:
    cache = DownloadCache(tmp_path / "cache", max_bytes=250)
    for name in ("a", "b", "c"):
        server.add(f"/{name}", name.encode() * 100)

    def get(name: str) -> tuple[bytes, str]:
        url = server.url(f"/{name}")
        fd, how = cache.get(url, lambda out: download(url, out, MIB, 10))
        try:
            return fetched(fd), how
        finally:
            os.close(fd)

    assert get("a") == (b"a" * 100, "downloaded into the agent's cache")
    assert get("a") == (b"a" * 100, "from the agent's cache") and server.requests("/a") == 1
    os.utime(next(p for p in (tmp_path / "cache").iterdir() if len(p.name) == 64), (1, 1))  # a was used long ago
    get("b")
    get("c")  # 300 bytes > 250: the least recently used (a) goes
    assert get("b")[1] == "from the agent's cache" and get("c")[1] == "from the agent's cache"
    assert get("a")[1] == "downloaded into the agent's cache" and server.requests("/a") == 2
    entries = [p for p in (tmp_path / "cache").iterdir() if len(p.name) == 64]
    assert sum(p.stat().st_size for p in entries) <= 250


def test_a_download_too_big_for_the_cache_is_used_once_and_a_failed_one_leaves_nothing(
        server: ArtifactServer, tmp_path: Path) -> None:
    cache = DownloadCache(tmp_path / "cache", max_bytes=10)
    url = server.add("/big", b"x" * 100)
    fd, how = cache.get(url, lambda out: download(url, out, MIB, 10))
    assert fetched(fd) == b"x" * 100 and "too big for the agent's cache" in how
    os.close(fd)
    missing = server.url("/missing")
    with pytest.raises(FetchError, match="404"):
        cache.get(missing, lambda out: download(missing, out, MIB, 10))
    assert {p.suffix for p in (tmp_path / "cache").iterdir()} <= {".lock"}  # no entry, no partial download
