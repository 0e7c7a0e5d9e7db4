"""The pure parts of the SDK's sandbox reader (`tessera.sdk.files`) and of `tessera logs`: where the last N
lines start, task references, durations."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.control_plane.cli.shared import parse_duration
from tessera.sdk.files import split_task_ref, tail_start


def backwards(data: bytes, block: int) -> Iterator[tuple[int, bytes]]:
    end = len(data)
    while end > 0:
        start = max(0, end - block)
        yield start, data[start:end]
        end = start


@pytest.mark.parametrize("data, lines, start", [
    (b"a\nb\nc\n", 1, 4), (b"a\nb\nc\n", 2, 2), (b"a\nb\nc\n", 3, 0), (b"a\nb\nc\n", 10, 0),
    (b"a\nb\nc", 1, 4), (b"a\nb\nc", 2, 2), (b"", 3, 0), (b"abc", 1, 0), (b"a\nb\n", 0, 4),
])
def test_the_last_lines_start_after_the_right_line_break(data: bytes, lines: int, start: int) -> None:
    assert tail_start(backwards(data, 2), len(data), lines) == start


@given(st.lists(st.text(alphabet="xy", max_size=5), max_size=12), st.booleans(), st.integers(0, 15),
       st.integers(1, 7))
def test_tail_agrees_with_splitting_the_whole_file(lines: list[str], final_break: bool, n: int, block: int) -> None:
    data = "\n".join(lines).encode() + (b"\n" if final_break and lines else b"")
    start = tail_start(backwards(data, block), len(data), n)
    expected = data.decode().splitlines(keepends=True)[-n:] if n else []
    assert data[start:].decode() == "".join(expected)


def test_task_references_and_durations() -> None:
    assert split_task_ref("fw-1/task/with/slashes") == ("fw-1", "task/with/slashes")
    assert split_task_ref("bare") == ("", "bare")
    assert split_task_ref("/lead") == ("", "/lead")
    assert [parse_duration(t) for t in ("30s", "10m", "2h", "1d", "5", "1.5m")] == [30, 600, 7200, 86400, 5, 90]
    for bad in ("", "m", "-1s", "10x", "1 0m"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
