"""The sandbox walk (agent/executor/sandbox_files.py) on a real file system: nothing outside the sandbox is
ever read, symlinks are never followed, special files are never opened (a FIFO would block the thread),
hard links are refused; fuzzed with hypothesis over a sandbox a hostile task prepared.

The device-node case needs root (only root makes device nodes): run as another user it fails saying so."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.agent.core.files import sandbox_path
from tessera.agent.executor import sandbox_files
from tessera.control_plane.core.errors import InvalidRequest, NotFound, PermissionDenied, TesseraError

pytestmark = pytest.mark.timeout(60)  # a FIFO opened by mistake would block here forever

SECRET = b"the agent's secret, outside the sandbox\n"
INSIDE = b"inside\n"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """A sandbox as a hostile task leaves it, next to a secret: (sandbox, O_PATH descriptor of it)."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root: it makes a device node in the sandbox, as a root task could (mknod)")
    root = tmp_path_factory.mktemp("walk")
    (root / "secret").write_bytes(SECRET)
    box = root / "sandbox"
    (box / "dir" / "deeper").mkdir(parents=True)
    (box / "stdout").write_bytes(INSIDE)
    (box / "dir" / "file").write_bytes(INSIDE)
    (box / "dir" / "deeper" / "file").write_bytes(INSIDE)
    os.symlink(root / "secret", box / "link_out")
    os.symlink("../secret", box / "rel_out")
    os.symlink("stdout", box / "link_in")
    os.symlink(root, box / "dir_out")
    os.symlink("dir", box / "dir_in")
    os.mkfifo(box / "fifo")
    os.mknod(box / "dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    os.link(root / "secret", box / "hard")
    fd = sandbox_files.open_sandbox(str(box))
    yield box, fd
    os.close(fd)


def read_all(fd: int, parts: tuple[str, ...]) -> bytes:
    opened, info = sandbox_files.open_file(fd, parts)
    try:
        return os.pread(opened, info.st_size + 1, 0)
    finally:
        os.close(opened)


def test_files_inside_are_read(hostile: tuple[Path, int]) -> None:
    _, fd = hostile
    assert read_all(fd, ("stdout",)) == INSIDE
    assert read_all(fd, ("dir", "deeper", "file")) == INSIDE


@pytest.mark.parametrize("path", ["link_out", "rel_out", "link_in", "dir_out/secret", "dir_in/file"])
def test_symlinks_are_never_followed_even_to_inside(hostile: tuple[Path, int], path: str) -> None:
    _, fd = hostile
    with pytest.raises(PermissionDenied, match="symlink"):
        read_all(fd, sandbox_path(path))


@pytest.mark.parametrize("path", ["fifo", "dev"])
def test_special_files_are_refused_without_being_opened(hostile: tuple[Path, int], path: str) -> None:
    _, fd = hostile
    with pytest.raises(PermissionDenied, match="special file"):
        read_all(fd, (path,))
    assert sandbox_files.stat_path(fd, (path,)).kind == sandbox_files.SPECIAL  # described, not opened


def test_a_hard_link_to_a_file_outside_is_refused(hostile: tuple[Path, int]) -> None:
    _, fd = hostile
    with pytest.raises(PermissionDenied, match="2 hard links"):
        read_all(fd, ("hard",))


def test_missing_files_directories_and_non_directories_say_what_they_are(hostile: tuple[Path, int]) -> None:
    _, fd = hostile
    with pytest.raises(NotFound, match="no such file"):
        read_all(fd, ("nope",))
    with pytest.raises(InvalidRequest, match="is a directory"):
        read_all(fd, ("dir",))
    with pytest.raises(InvalidRequest, match="stdout is not a directory"):
        read_all(fd, ("stdout", "x"))
    with pytest.raises(InvalidRequest, match="not a directory"):
        sandbox_files.list_dir(fd, ("stdout",))


def test_a_listing_shows_symlinks_and_special_files_as_what_they_are(hostile: tuple[Path, int]) -> None:
    _, fd = hostile
    entries, truncated = sandbox_files.list_dir(fd, ())
    kinds = {e.path: e.kind for e in entries}
    assert not truncated
    assert kinds == {"dev": "special", "dir": "directory", "dir_in": "symlink", "dir_out": "symlink",
                     "fifo": "special", "hard": "regular", "link_in": "symlink", "link_out": "symlink",
                     "rel_out": "symlink", "stdout": "regular"}
    assert [e.path for e in entries] == sorted(kinds)
    inner, _ = sandbox_files.list_dir(fd, ("dir",))
    assert [e.path for e in inner] == ["dir/deeper", "dir/file"]
    with pytest.raises(PermissionDenied, match="symlink"):
        sandbox_files.list_dir(fd, ("dir_out",))


def test_a_listing_is_cut_at_its_limit(tmp_path: Path) -> None:
    for i in range(30):
        (tmp_path / f"f{i:02d}").write_bytes(b"")
    fd = sandbox_files.open_sandbox(str(tmp_path))
    try:
        entries, truncated = sandbox_files.list_dir(fd, (), limit=10)
    finally:
        os.close(fd)
    assert truncated and len(entries) == 10


_COMPONENTS = ["stdout", "dir", "deeper", "file", "link_out", "rel_out", "link_in", "dir_out", "dir_in", "fifo",
               "dev", "hard", "secret", "..", ".", "", "sandbox", "nope"]


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.lists(st.sampled_from(_COMPONENTS), max_size=6).map("/".join),
       st.booleans())
def test_fuzz_nothing_outside_the_sandbox_is_ever_read(hostile: tuple[Path, int], path: str, absolute: bool) -> None:
    _, fd = hostile
    path = ("/" if absolute else "") + path
    try:
        parts = sandbox_path(path)
        data = read_all(fd, parts)
    except TesseraError:
        return
    assert data == INSIDE, f"{path!r} read {data!r}"


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.lists(st.sampled_from(_COMPONENTS), max_size=6).map("/".join))
def test_fuzz_listings_never_leave_the_sandbox(hostile: tuple[Path, int], path: str) -> None:
    box, fd = hostile
    try:
        entries, _ = sandbox_files.list_dir(fd, sandbox_path(path))
    except TesseraError:
        return
    for e in entries:
        assert (box / e.path).parent.resolve().is_relative_to(box.resolve()), e.path
