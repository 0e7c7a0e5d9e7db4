"""A task's output files and their rotation (agent/executor/output.py): the names, the bound, the order
of what is kept, a task that tampers with the names, a full disk, and a real process writing as fast as
it can through the pipes."""

from __future__ import annotations

import errno
import os
import subprocess
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.agent.executor import output as output_module
from tessera.agent.executor.output import LogRotation, OutputPump, RotatingLog, output_tail

KIB = 1024
NOBODY = 65534


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    d = tmp_path / "sandbox"
    d.mkdir()
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    yield d, fd
    os.close(fd)


def files(d: Path, name: str = "stdout") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name == name or p.name.startswith(name + ".")}


def kept(d: Path, keep: int, name: str = "stdout") -> bytes:
    """Everything on disk for one stream, oldest first."""
    return b"".join((d / f"{name}.{n}").read_bytes() for n in range(keep, 0, -1) if (d / f"{name}.{n}").exists()) \
        + (d / name).read_bytes()


def test_the_policy_refuses_nonsense_and_defaults_for_an_older_launch() -> None:
    with pytest.raises(ValueError):
        LogRotation(max_bytes=100)
    with pytest.raises(ValueError):
        LogRotation(keep=-1)
    assert LogRotation.from_json(None) == LogRotation() == LogRotation.from_json({"max_bytes": "x"})
    assert LogRotation.from_json(LogRotation(8192, 2).to_json()) == LogRotation(8192, 2)


def test_rotation_happens_at_the_size_exactly_and_keeps_the_newest_files(sandbox: tuple[Path, int]) -> None:
    d, fd = sandbox
    log = RotatingLog(fd, "stdout", os.geteuid(), os.getegid(), LogRotation(4 * KIB, 3), print)
    stream = b"".join(b"%07d\n" % i for i in range(10_000))  # 80 000 bytes, 19.5 files' worth
    for start in range(0, len(stream), 3000):
        log.write(stream[start:start + 3000])
    log.close()
    on_disk = files(d)
    assert set(on_disk) == {"stdout", "stdout.1", "stdout.2", "stdout.3"}
    assert all(len(data) == 4 * KIB for name, data in on_disk.items() if name != "stdout")
    assert kept(d, 3) == stream[-len(kept(d, 3)):]  # a suffix of the stream, in order, nothing lost inside it
    assert len(kept(d, 3)) == 3 * 4 * KIB + len(stream) % (4 * KIB)


def test_keep_zero_keeps_only_the_live_file(sandbox: tuple[Path, int]) -> None:
    d, fd = sandbox
    log = RotatingLog(fd, "stderr", os.geteuid(), os.getegid(), LogRotation(4 * KIB, 0), print)
    log.write(b"x" * (10 * KIB + 5))
    log.close()
    assert files(d, "stderr") == {"stderr": b"x" * (2 * KIB + 5)}


def test_files_belong_to_the_tasks_user(sandbox: tuple[Path, int]) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (it creates files for another user)")
    d, fd = sandbox
    log = RotatingLog(fd, "stdout", NOBODY, NOBODY, LogRotation(4 * KIB, 1), print)
    log.write(b"y" * (5 * KIB))
    log.close()
    for path in (d / "stdout", d / "stdout.1"):
        st = path.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (NOBODY, NOBODY, 0o600), path


def test_a_live_file_that_is_a_link_is_replaced_never_written_through(sandbox: tuple[Path, int], tmp_path: Path) -> None:
    d, fd = sandbox
    secret = tmp_path / "secret"
    secret.write_bytes(b"root only")
    (d / "stdout").symlink_to(secret)
    os.link(secret, d / "stderr")
    for name in ("stdout", "stderr"):
        log = RotatingLog(fd, name, os.geteuid(), os.getegid(), LogRotation(4 * KIB, 1), print)
        log.write(b"task output\n")
        log.close()
        assert (d / name).read_bytes() == b"task output\n" and not (d / name).is_symlink()
    assert secret.read_bytes() == b"root only"


def test_a_task_that_tampers_with_the_rotated_names_keeps_the_bound(sandbox: tuple[Path, int], tmp_path: Path) -> None:
    d, fd = sandbox
    secret = tmp_path / "secret"
    secret.write_bytes(b"root only")
    notes: list[str] = []
    log = RotatingLog(fd, "stdout", os.geteuid(), os.getegid(), LogRotation(4 * KIB, 3), notes.append)
    log.write(b"a" * (4 * KIB))
    (d / "stdout.1").symlink_to(secret)  # renamed as a name, never followed
    (d / "stdout.2").symlink_to(secret)
    log.write(b"b" * (4 * KIB))
    assert (d / "stdout.1").read_bytes() == b"a" * (4 * KIB) and (d / "stdout.3").is_symlink()
    (d / "stdout.3").unlink()
    (d / "stdout.3").mkdir()  # a directory no rotation can drop or rename over ...
    (d / "stdout.3" / "keep").write_text("mine")  # ... because it is not empty
    for _ in range(6):
        log.write(b"c" * (4 * KIB))
    log.close()
    assert secret.read_bytes() == b"root only"
    assert notes and "older output may be lost" in notes[0]
    ours = [p for p in d.iterdir() if p.is_file() and not p.is_symlink() and p.name.startswith("stdout")]
    assert sum(p.stat().st_size for p in ours) <= 4 * 4 * KIB  # (keep + 1) * max_bytes
    assert (d / "stdout.1").read_bytes() == b"c" * (4 * KIB)  # the rotations the task did not block go on
    assert (d / "stdout.3" / "keep").read_text() == "mine"  # the task's own things are left alone


def test_a_full_disk_drops_output_but_never_stops_the_pipe(sandbox: tuple[Path, int], monkeypatch: pytest.MonkeyPatch) -> None:
    d, fd = sandbox
    notes: list[str] = []
    log = RotatingLog(fd, "stdout", os.geteuid(), os.getegid(), LogRotation(4 * KIB, 1), notes.append)

    def full(fd: int, data: object, *rest: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    fake = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    fake.write, fake.splice = full, full
    monkeypatch.setattr(output_module, "os", fake)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.write(write_end, b"z" * 3000)
    assert log.take_from(read_end, 10_000) == 3000  # taken from the pipe although the file took nothing
    log.write(b"more")
    assert log.dropped == 3004 and len(notes) == 1 and "No space left" in notes[0]
    os.close(write_end)
    assert log.take_from(read_end, 10_000) == 0  # end of file
    os.close(read_end)
    log.close()


def test_a_process_writing_as_fast_as_it_can_stays_within_the_bound_and_loses_nothing_kept(
        sandbox: tuple[Path, int], tmp_path: Path) -> None:
    d, _ = sandbox
    policy = LogRotation(64 * KIB, 2)
    pump = OutputPump(d, os.geteuid(), os.getegid(), policy, print)
    # seq writes ~6.9 MB as fast as it can; stderr gets a few lines through the same loop
    child = subprocess.Popen(["sh", "-c", "seq 1 1000000; echo done >&2"], stdout=pump.stdout_w, stderr=pump.stderr_w)
    pump.task_started()
    peak = 0
    while pump.readable():
        pump.wait(0.01)
        sizes = []
        for name in {p.name for p in d.iterdir() if p.name.startswith("stdout")}:
            try:
                sizes.append((d / name).stat().st_size)
            except FileNotFoundError:
                pass
        peak = max(peak, sum(sizes))
        assert (d / "stdout").exists(), "the live file is always there"
    assert child.wait(timeout=60) == 0
    pump.drain()
    pump.close()
    # Sampled mid-run, no slack: at most keep + 1 names, none ever holding more than max_bytes.
    assert peak <= (policy.keep + 1) * policy.max_bytes
    data = kept(d, 2)
    assert len(data) <= (policy.keep + 1) * policy.max_bytes
    lines = data.split(b"\n")[1:-1]  # the first may be cut by the oldest rotation
    numbers = [int(x) for x in lines]
    assert numbers[-1] == 1_000_000 and numbers == list(range(numbers[0], 1_000_001))
    assert (d / "stderr").read_bytes() == b"done\n"
    assert output_tail(d, "stdout", 20) == data[-20:]


def test_the_tail_reaches_into_the_newest_rotation_when_the_live_file_is_short(tmp_path: Path) -> None:
    (tmp_path / "stdout.1").write_bytes(b"0123456789")
    (tmp_path / "stdout").write_bytes(b"abc")
    assert output_tail(tmp_path, "stdout", 6) == b"789abc"
    assert output_tail(tmp_path, "stdout", 2) == b"bc"
    assert output_tail(tmp_path, "stderr", 5) == b""
