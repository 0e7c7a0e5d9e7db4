"""The file service's decisions (agent/core/files.py): which paths are inside a sandbox, which bytes a read
takes, what a follower does at the end of a file, where `--since` starts, which sandbox a task has."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.agent.core.files import (
    MAX_DEPTH,
    MAX_READ_BYTES,
    FollowStep,
    OutputTimeline,
    SandboxEntry,
    after_eof,
    find_sandbox,
    follow_start,
    read_range,
    sandbox_path,
)
from tessera.control_plane.core.errors import Conflict, InvalidRequest, NotFound
from tessera.control_plane.core.values import TaskKey


# ---- paths ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, parts", [
    ("", ()), (".", ()), ("./", ()), ("stdout", ("stdout",)), ("a/b/c", ("a", "b", "c")), ("a//b/./c/", ("a", "b", "c")),
    ("..a/b..", ("..a", "b..")), ("with space/ü", ("with space", "ü")),
])
def test_paths_inside_the_sandbox_are_split_into_their_components(path: str, parts: tuple[str, ...]) -> None:
    assert sandbox_path(path) == parts


@pytest.mark.parametrize("path, said", [
    ("..", "'..' is not allowed"), ("a/../b", "'..' is not allowed"), ("a/..", "'..' is not allowed"),
    ("/etc/passwd", "absolute path"), ("/", "absolute path"), ("a\0b", "NUL"),
    ("x/" * (MAX_DEPTH + 1), "components deep"), ("a" * 256, "longer than 255 bytes"), ("a/" * 2100, "bytes long"),
])
def test_paths_that_could_leave_the_sandbox_or_are_unreasonable_are_refused(path: str, said: str) -> None:
    with pytest.raises(InvalidRequest, match=said):
        sandbox_path(path)


@settings(max_examples=500)
@given(st.lists(st.sampled_from(["a", "b", ".", "/", "..", "\0", "é", " ", "\\", "//"]), max_size=40).map("".join))
def test_fuzz_no_accepted_path_can_climb_out_or_be_absolute(path: str) -> None:
    try:
        parts = sandbox_path(path)
    except InvalidRequest:
        return
    assert ".." not in parts and "" not in parts and "." not in parts
    assert all("/" not in p and "\0" not in p for p in parts)
    joined = posixpath.normpath(posixpath.join("/sandbox", *parts))
    assert joined == "/sandbox" or joined.startswith("/sandbox/")


# ---- reads ----------------------------------------------------------------------------------------------------
def test_a_read_takes_at_most_the_limit_and_stops_at_the_end() -> None:
    assert read_range(0, 0, 10, "f") == (0, 10)
    assert read_range(4, 3, 10, "f") == (4, 3)
    assert read_range(8, 100, 10, "f") == (8, 2)
    assert read_range(10, 5, 10, "f") == (10, 0)  # the end itself: nothing, not an error
    assert read_range(0, 0, 10 * MAX_READ_BYTES, "f") == (0, MAX_READ_BYTES)


@pytest.mark.parametrize("offset, length, said", [
    (-1, 0, "offset: must not be negative"), (0, -5, "length: must not be negative"),
    (0, MAX_READ_BYTES + 1, "at most"), (11, 0, "past the end of f \\(10 bytes\\)"),
    (2**62, 0, "past the end"),
])
def test_bad_ranges_are_refused_naming_the_numbers(offset: int, length: int, said: str) -> None:
    with pytest.raises(InvalidRequest, match=said):
        read_range(offset, length, 10, "f")


# ---- follows --------------------------------------------------------------------------------------------------
def test_a_follow_starts_at_its_offset_in_the_current_file() -> None:
    assert follow_start(5, 0, 7, 10, "stdout") == (5, False)
    assert follow_start(5, 7, 7, 10, "stdout") == (5, False)
    with pytest.raises(InvalidRequest, match="past the end"):
        follow_start(11, 0, 7, 10, "stdout")
    with pytest.raises(InvalidRequest, match="negative"):
        follow_start(-1, 0, 7, 10, "stdout")


def test_a_redial_into_a_rotated_file_starts_the_new_file_from_its_beginning() -> None:
    assert follow_start(500, 7, 8, 10, "stdout") == (0, True)  # renamed away: another inode
    assert follow_start(500, 7, 7, 10, "stdout") == (0, True)  # truncated: the same inode, shorter


def test_at_the_end_of_a_file_a_follower_waits_reopens_or_starts_over() -> None:
    assert after_eof(10, 7, 10, 7) is FollowStep.WAIT
    assert after_eof(10, 7, 10, None) is FollowStep.WAIT  # renamed, the new one not there yet
    assert after_eof(10, 7, 3, 7) is FollowStep.TRUNCATED  # copy-and-truncate
    assert after_eof(10, 7, 10, 8) is FollowStep.REOPEN  # renamed away and replaced
    assert after_eof(10, 7, 3, 8) is FollowStep.TRUNCATED  # both: the held file starts over first


# ---- --since ------------------------------------------------------------------------------------------------
def test_since_starts_at_the_size_sampled_at_or_before_the_time() -> None:
    line = OutputTimeline()
    for t, size in ((100.0, 0), (101.0, 10), (102.0, 25), (103.0, 25), (104.0, 40)):
        line.record(t, 7, size)
    assert [p.size for p in line.points] == [0, 10, 25, 40]  # unchanged samples are not kept
    assert line.offset_since(102.5, 7, 40, 104.0) == 25
    assert line.offset_since(101.0, 7, 40, 104.0) == 10
    assert line.offset_since(500.0, 7, 40, 104.0) == 40  # nothing since
    assert line.offset_since(50.0, 7, 40, 104.0) == 0  # before the first sample, changed since: all of it


def test_since_without_samples_decides_by_the_files_mtime() -> None:
    line = OutputTimeline()
    assert line.offset_since(100.0, 7, 40, 150.0) == 0
    assert line.offset_since(200.0, 7, 40, 150.0) == 40


def test_since_before_a_rotation_is_the_whole_current_file() -> None:
    renamed = OutputTimeline()
    renamed.record(100.0, 7, 50)
    renamed.record(102.0, 8, 5)
    assert renamed.offset_since(101.0, 8, 9, 103.0) == 0
    truncated = OutputTimeline()
    truncated.record(100.0, 7, 50)
    assert truncated.offset_since(101.0, 7, 9, 103.0) == 0  # now shorter than it was: truncated since


def test_a_full_timeline_thins_its_older_half() -> None:
    line = OutputTimeline(limit=8)
    for i in range(100):
        line.record(float(i), 1, i)
    assert len(line.points) <= 8
    assert line.points[-1].size == 99
    assert line.offset_since(99.0, 1, 99, 99.0) == 99


# ---- which sandbox -----------------------------------------------------------------------------------------
def test_which_sandbox_says_why_there_is_none() -> None:
    key = TaskKey("fw", "t")
    entries = {key: SandboxEntry("fw", "t", "alice", "/w/fw/t", "/w/fw/t/sandbox")}
    assert find_sandbox(entries, key, "agent-1").sandbox == "/w/fw/t/sandbox"
    with pytest.raises(NotFound, match="agent agent-1 has no task fw/other"):
        find_sandbox(entries, TaskKey("fw", "other"), "agent-1")
    gone = {key: SandboxEntry("fw", "t", "alice", "/w/fw/t", "/w/fw/t/sandbox", live=False, collected=True)}
    with pytest.raises(NotFound, match="was collected"):
        find_sandbox(gone, key, "agent-1")
    staging = {key: SandboxEntry("fw", "t", "alice")}
    with pytest.raises(Conflict, match="no sandbox yet"):
        find_sandbox(staging, key, "agent-1")
    never = {key: SandboxEntry("fw", "t", "alice", live=False)}
    with pytest.raises(NotFound, match="ended before it had a sandbox"):
        find_sandbox(never, key, "agent-1")
    with pytest.raises(InvalidRequest, match="task_id"):
        find_sandbox(entries, TaskKey("fw", ""), "agent-1")
