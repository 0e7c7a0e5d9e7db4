"""`Follower`: a file of a sandbox from an offset as it grows, across rotations, until the task is over.

How it goes (the decisions are `tessera.agent.core.files.follow_start` and `after_eof`):
- The file is opened through the sandbox walk (never a symlink, never a special file); while the task is
  live and the file does not exist yet, it waits for it.
- It reads what is there (at most `MAX_READ_BYTES` a message) and, at the end of the file, looks at the
  file it holds (its size) and at what the path names now (its inode):
  - shorter than the offset: truncated in place (copy-and-truncate rotation): on from 0, same file;
  - another file: renamed away and replaced (rename rotation): what the old file still holds is read
    first, then the new one from 0;
  - else it waits, `poll_min` at first, doubling to `poll_max` while nothing comes (so a line written
    to a busy file shows within `poll_min`, to an idle one within `poll_max`).
  The first message after a rotation says `rotated` (offsets restart).
- It ends once the task is over and the file is drained: the task's state is read before the last read,
  so nothing written before the end is missed. It also ends when its caller goes away (`active`).
- When nothing is sent for `heartbeat` seconds it sends an empty message (the caller's sign of life and
  position), also while it waits for the file to appear: a client cuts a stream that stays silent (the
  SDK after `STALL_SECONDS`), and a wait for a file is not a dead agent.
Output written to a file between a rotation and the moment the writer reopens the path may be missed
(as with any tail -F); copy-and-truncate loses what was written between the copy and the truncation.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tessera.agent.core.files import MAX_READ_BYTES, FollowStep, after_eof, follow_start, shown_path
from tessera.agent.executor import sandbox_files
from tessera.control_plane.core.errors import NotFound

POLL_MIN = 0.01
POLL_MAX = 0.1
HEARTBEAT = 1.0


@dataclass(frozen=True, slots=True)
class Chunk:
    data: bytes
    offset: int  # where `data` starts in the file `inode`
    inode: int
    rotated: bool = False
    task_over: bool = False


class Follower:
    def __init__(self, root: int, parts: tuple[str, ...], live: Callable[[], bool], active: Callable[[], bool], *,
                 poll_min: float = POLL_MIN, poll_max: float = POLL_MAX, heartbeat: float = HEARTBEAT,
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.root = root  # an O_PATH descriptor of the sandbox (the caller's to close)
        self.parts = parts
        self.live = live
        self.active = active
        self.poll_min, self.poll_max, self.heartbeat = poll_min, poll_max, heartbeat
        self.sleep = sleep
        self.monotonic = monotonic

    def chunks(self, offset: int, inode: int = 0) -> Iterator[Chunk]:
        last_sent = self.monotonic()
        while True:  # the file, once it exists; NotFound when the task is over and it never appeared
            live = self.live()
            try:
                fd, info = sandbox_files.open_file(self.root, self.parts)
                break
            except NotFound:
                if not live:
                    raise
            if not self.active():
                return
            if self.monotonic() - last_sent >= self.heartbeat:  # alive, at the caller's position
                yield Chunk(b"", offset, inode)
                last_sent = self.monotonic()
            self.sleep(self.poll_max)
        try:
            offset, rotated = follow_start(offset, inode, info.st_ino, info.st_size, shown_path(self.parts))
            current = info.st_ino
            delay = self.poll_min
            while self.active():
                was_live = self.live()
                data = os.pread(fd, MAX_READ_BYTES, offset)
                if data:
                    yield Chunk(data, offset, current, rotated)
                    offset += len(data)
                    rotated, last_sent, delay = False, self.monotonic(), self.poll_min
                    continue
                step = after_eof(offset, current, os.fstat(fd).st_size,
                                 sandbox_files.inode_at(self.root, self.parts))
                if step is FollowStep.TRUNCATED:
                    offset, rotated = 0, True
                    continue
                if step is FollowStep.REOPEN:
                    while data := os.pread(fd, MAX_READ_BYTES, offset):  # what the old file still got
                        yield Chunk(data, offset, current, rotated)
                        offset += len(data)
                        rotated, last_sent = False, self.monotonic()
                    try:
                        new_fd, new_info = sandbox_files.open_file(self.root, self.parts)
                    except NotFound:
                        self.sleep(self.poll_min)  # gone again before it could be opened: look again
                        continue
                    os.close(fd)
                    fd, current, offset, rotated = new_fd, new_info.st_ino, 0, True
                    continue
                if not was_live:
                    yield Chunk(b"", offset, current, rotated, task_over=True)
                    return
                if self.monotonic() - last_sent >= self.heartbeat:
                    yield Chunk(b"", offset, current, rotated)
                    rotated, last_sent = False, self.monotonic()
                self.sleep(delay)
                delay = min(delay * 2, self.poll_max)
        finally:
            os.close(fd)
