"""The follower (agent/files/follow.py) on real files, driven step by step: each time it would sleep, the
test does the next thing a task or a log rotation does (write, rename away, copy and truncate, end). So
every interleaving here is exact, without threads or timing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tessera.agent.executor import sandbox_files
from tessera.agent.files.follow import Chunk, Follower
from tessera.control_plane.core.errors import NotFound

pytestmark = pytest.mark.timeout(60)


class Script:
    """What happens while the follower waits: one step per sleep; then the task ends."""

    def __init__(self, box: Path, steps: list[Callable[[Path], None]]) -> None:
        self.box = box
        self.steps = list(steps)
        self.live = True
        self.active = True
        self.now = 0.0
        self.sleeps = 0

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds
        if self.sleeps > 1000:
            raise AssertionError("the follower never ended")
        if self.steps:
            self.steps.pop(0)(self.box)
        else:
            self.live = False


def append(name: str, data: bytes) -> Callable[[Path], None]:
    def step(box: Path) -> None:
        with open(box / name, "ab") as f:
            f.write(data)
    return step


def rename_rotate(box: Path) -> None:
    os.rename(box / "stdout", box / "stdout.1")


def copy_truncate(box: Path) -> None:
    shutil.copyfile(box / "stdout", box / "stdout.1")
    os.truncate(box / "stdout", 0)


def nothing(box: Path) -> None:
    pass


@pytest.fixture
def box(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    fd = sandbox_files.open_sandbox(str(tmp_path))
    yield tmp_path, fd
    os.close(fd)


def follow(box: tuple[Path, int], script: Script, offset: int = 0, inode: int = 0, **kw: float) -> list[Chunk]:
    follower = Follower(box[1], ("stdout",), live=lambda: script.live, active=lambda: script.active,
                        sleep=script.sleep, monotonic=lambda: script.now, **kw)
    return list(follower.chunks(offset, inode))


def text(chunks: list[Chunk]) -> bytes:
    return b"".join(c.data for c in chunks)


def test_a_follow_prints_what_is_written_and_ends_when_the_task_ends_and_the_file_is_drained(
        box: tuple[Path, int]) -> None:
    (box[0] / "stdout").write_bytes(b"one\n")
    script = Script(box[0], [append("stdout", b"two\n"), nothing, append("stdout", b"three\n")])
    chunks = follow(box, script)
    assert text(chunks) == b"one\ntwo\nthree\n"
    assert chunks[-1].task_over and chunks[-1].data == b""
    assert [c.offset for c in chunks if c.data] == [0, 4, 8]


def test_output_written_as_the_task_ends_is_still_delivered(box: tuple[Path, int]) -> None:
    (box[0] / "stdout").write_bytes(b"")

    def last_words_then_end(path: Path) -> None:
        append("stdout", b"last\n")(path)
        script.live = False  # the end is seen before the last read: that read still gets the line

    script = Script(box[0], [last_words_then_end])
    assert text(follow(box, script)) == b"last\n"


def test_the_end_is_read_before_the_last_read_so_a_line_written_just_before_it_is_not_lost(
        box: tuple[Path, int]) -> None:
    (box[0] / "stdout").write_bytes(b"")
    calls = []

    def live() -> bool:
        calls.append(1)
        if len(calls) < 3:  # opening the file, then the first look
            return True
        if len(calls) == 3:  # the task writes its last line and ends between two looks
            append("stdout", b"last\n")(box[0])
        return False

    follower = Follower(box[1], ("stdout",), live=live, active=lambda: True, sleep=lambda _: None)
    assert text(list(follower.chunks(0))) == b"last\n"


def test_a_rename_rotation_is_followed_into_the_new_file_after_draining_the_old(box: tuple[Path, int]) -> None:
    (box[0] / "stdout").write_bytes(b"a1\n")

    def rotate_with_a_late_write(path: Path) -> None:
        rename_rotate(path)
        append("stdout.1", b"a2\n")(path)  # the writer wrote once more to the old file before reopening
        append("stdout", b"b1\n")(path)

    script = Script(box[0], [nothing, rotate_with_a_late_write, append("stdout", b"b2\n")])
    chunks = follow(box, script)
    assert text(chunks) == b"a1\na2\nb1\nb2\n"
    first_new = next(c for c in chunks if c.data.startswith(b"b1"))
    assert first_new.rotated and first_new.offset == 0
    assert first_new.inode == os.stat(box[0] / "stdout").st_ino != chunks[0].inode
    assert not any(c.rotated for c in chunks if c is not first_new and c.data)


def test_a_rename_rotation_waits_for_the_new_file_to_appear(box: tuple[Path, int]) -> None:
    (box[0] / "stdout").write_bytes(b"a1\n")
    script = Script(box[0], [rename_rotate, nothing, nothing, append("stdout", b"b1\n")])
    assert text(follow(box, script)) == b"a1\nb1\n"


def test_a_copy_and_truncate_rotation_goes_on_from_the_start_of_the_same_file(box: tuple[Path, int]) -> None:
    (box[0] / "stdout").write_bytes(b"first line\nsecond line\n")

    def truncate_then_write(path: Path) -> None:
        copy_truncate(path)
        append("stdout", b"b1\n")(path)

    script = Script(box[0], [truncate_then_write, append("stdout", b"b2\n")])
    chunks = follow(box, script)
    assert text(chunks) == b"first line\nsecond line\nb1\nb2\n"
    rotated = [c for c in chunks if c.rotated]
    assert len(rotated) == 1 and rotated[0].data == b"b1\n" and rotated[0].offset == 0
    assert (box[0] / "stdout.1").read_bytes() == b"first line\nsecond line\n"


def test_a_redial_with_the_old_inode_after_a_rotation_starts_the_new_file(box: tuple[Path, int]) -> None:
    (box[0] / "stdout").write_bytes(b"old content\n")
    old_inode = os.stat(box[0] / "stdout").st_ino
    os.rename(box[0] / "stdout", box[0] / "stdout.1")
    (box[0] / "stdout").write_bytes(b"new\n")
    script = Script(box[0], [])
    chunks = follow(box, script, offset=12, inode=old_inode)
    assert text(chunks) == b"new\n" and chunks[0].rotated


def test_a_follow_waits_for_the_file_of_a_live_task_and_fails_for_an_ended_one(box: tuple[Path, int]) -> None:
    script = Script(box[0], [nothing, append("stdout", b"late start\n")])
    assert text(follow(box, script)) == b"late start\n"
    (box[0] / "stdout").unlink()
    ended = Script(box[0], [])
    ended.live = False
    with pytest.raises(NotFound):
        follow(box, ended)


def test_a_quiet_follow_sends_heartbeats_and_stops_when_its_caller_goes(box: tuple[Path, int]) -> None:
    (box[0] / "stdout").write_bytes(b"x\n")
    script = Script(box[0], [nothing] * 200)
    follower = Follower(box[1], ("stdout",), live=lambda: script.live, active=lambda: script.active,
                        sleep=script.sleep, monotonic=lambda: script.now, heartbeat=1.0, poll_max=0.1)
    it = follower.chunks(0)
    assert next(it).data == b"x\n"
    beat = next(it)
    assert beat.data == b"" and not beat.task_over and beat.offset == 2
    script.active = False
    assert list(it) == []  # ends, without a final message: nobody is listening


def test_a_follow_waiting_for_its_file_sends_heartbeats_at_the_callers_position(box: tuple[Path, int]) -> None:
    """A client cuts a stream that stays silent (the SDK after STALL_SECONDS) and counts it as broken: a
    follow of a file the task has not created yet (or not again, after an agent restart) must not look
    like a dead agent."""
    script = Script(box[0], [nothing] * 25 + [append("stdout", b"late\n")])
    chunks = follow(box, script, offset=0, inode=0, heartbeat=1.0, poll_max=0.1)
    waiting = [c for c in chunks if c.data == b"" and not c.task_over]
    assert len(waiting) >= 2 and all((c.offset, c.inode) == (0, 0) for c in waiting)
    assert chunks.index(waiting[0]) == 0  # before the file existed
    assert text(chunks) == b"late\n" and chunks[-1].task_over
