"""A FUSE filesystem that loses, at a power cut, every write not yet synced: the disk of the power-cut test.

    python -m tests.faults.powercut_fs MOUNTPOINT IMAGE

It keeps every file in memory twice: as the programs see it (the page cache) and as it is on "disk". Only
``fsync``/``fdatasync``/``msync`` (a file's data and size) and an ``fsync`` of a directory (the names in it)
copy the first to the second. Writing to the magic name ``MOUNTPOINT/.power-cut`` cuts the power: every
file, name and byte goes back to what is on disk, the disk is saved to IMAGE, and every write that still
arrives (the kernel writing back pages the killed programs left dirty) is thrown away. ``MOUNTPOINT/.sync-all`` makes everything durable,
as a machine that has been up for a while has written back what it wrote long ago. At unmount the disk (only)
is saved to IMAGE, and a later mount over the same IMAGE starts from it: that is the restart after the cut.

Why FUSE (tests/faults/test_power_cut.py says it too): this kernel (a Firecracker VM) has no device-mapper
(``dmsetup targets``: no driver, no ``modprobe``), so neither dm-flakey nor dm-log-writes; an LD_PRELOAD shim
cannot see the stores a program makes into an mmap'd file (pysyncobj's journal); FUSE can, because the
kernel writes such pages back to the filesystem as WRITE requests and turns ``msync`` into FSYNC.
Needs the Debian packages ``fuse`` and ``libfuse2`` and ``fusepy`` (PyPI; the dev extra).
"""

from __future__ import annotations

import errno
import faulthandler
import os
import pickle
import signal
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuse import FUSE, FuseOSError, Operations

CUT = ".power-cut"
SYNC_ALL = ".sync-all"


@dataclass
class Node:
    mode: int
    data: bytearray = field(default_factory=bytearray)
    entries: dict[str, int] = field(default_factory=dict)  # a directory's names
    mtime: float = field(default_factory=time.time)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


@dataclass
class Disk:
    """What survives a power cut: per inode its synced mode, data and (a directory) names."""

    nodes: dict[int, tuple[int, bytes, dict[str, int]]] = field(default_factory=dict)
    next_ino: int = 2


class PowerCutFS(Operations):  # type: ignore[misc]
    def __init__(self, disk: Disk, image: Path | None = None) -> None:
        self._mutex = threading.RLock()
        self.image = image
        self.disk = disk
        if 1 not in disk.nodes:
            disk.nodes[1] = (stat.S_IFDIR | 0o755, b"", {})
        self.nodes: dict[int, Node] = {}
        self.next_ino = disk.next_ino
        self.cut = False
        self.syncs = 0
        self._load()

    # ---- the two copies -----------------------------------------------------------------------------
    def _load(self) -> None:
        """The page cache as it is after a (re)boot: exactly what is on disk, reachable from the root."""
        self.nodes = {}
        todo = [1]
        while todo:
            ino = todo.pop()
            if ino in self.nodes or ino not in self.disk.nodes:
                continue
            mode, data, entries = self.disk.nodes[ino]
            self.nodes[ino] = Node(mode, bytearray(data), {k: v for k, v in entries.items() if v in self.disk.nodes})
            todo.extend(entries.values())

    def _sync(self, ino: int) -> None:
        node = self.nodes[ino]
        self.disk.nodes[ino] = (node.mode, bytes(node.data), dict(node.entries))
        for child in node.entries.values():  # a name on disk for a file whose data never was: empty
            if child not in self.disk.nodes:
                self.disk.nodes[child] = (self.nodes[child].mode, b"", {})
        self.syncs += 1

    def power_cut(self) -> None:
        """Drop what is not on disk; from now on nothing changes, so the disk is saved at once (the test
        mounts it again without waiting for this process to end)."""
        with self._mutex:
            self.cut = True
            self._load()
            self.save()

    def save(self) -> None:
        if self.image is not None:
            with self._mutex:
                tmp = self.image.with_name(self.image.name + ".tmp")
                tmp.write_bytes(pickle.dumps(self.disk))
                os.replace(tmp, self.image)

    def sync_all(self) -> None:
        with self._mutex:
            for ino in list(self.nodes):
                self._sync(ino)

    # ---- paths --------------------------------------------------------------------------------------
    def _lookup(self, path: str) -> int:
        ino = 1
        for part in [p for p in path.split("/") if p]:
            node = self.nodes.get(ino)
            if node is None or not node.is_dir or part not in node.entries:
                raise FuseOSError(errno.ENOENT)
            ino = node.entries[part]
        return ino

    def _parent(self, path: str) -> tuple[Node, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self.nodes[self._lookup(head or "/")]
        if not parent.is_dir:
            raise FuseOSError(errno.ENOTDIR)
        return parent, name

    def _new(self, path: str, mode: int) -> int:
        parent, name = self._parent(path)
        if name in parent.entries:
            raise FuseOSError(errno.EEXIST)
        ino = self.next_ino
        self.next_ino += 1
        self.disk.next_ino = self.next_ino  # inode numbers are never reused, not even across a cut
        self.nodes[ino] = Node(mode)
        parent.entries[name] = ino
        parent.mtime = time.time()
        return ino

    # ---- operations ---------------------------------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self._mutex:
            ino = fh if fh is not None and fh in self.nodes else self._lookup(path)
            node = self.nodes[ino]
            return {"st_mode": node.mode, "st_ino": ino, "st_nlink": 2 if node.is_dir else 1,
                    "st_size": len(node.data), "st_uid": os.getuid(), "st_gid": os.getgid(),
                    "st_atime": node.mtime, "st_mtime": node.mtime, "st_ctime": node.mtime,
                    "st_blocks": (len(node.data) + 511) // 512, "st_blksize": 4096}

    def readdir(self, path: str, fh: int) -> list[str]:
        with self._mutex:
            return [".", "..", *self.nodes[self._lookup(path)].entries]

    def mkdir(self, path: str, mode: int) -> None:
        with self._mutex:
            self._new(path, stat.S_IFDIR | mode)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        name = path.rsplit("/", 1)[-1]
        if name == CUT:
            self.power_cut()
            raise FuseOSError(errno.EROFS)  # nothing is created: the machine is off
        if name == SYNC_ALL:
            self.sync_all()
            raise FuseOSError(errno.EROFS)
        with self._mutex:
            if self.cut:
                raise FuseOSError(errno.EROFS)
            return self._new(path, stat.S_IFREG | mode)

    def open(self, path: str, flags: int) -> int:
        with self._mutex:
            ino = self._lookup(path)
            if flags & os.O_TRUNC and not self.cut:
                self.nodes[ino].data.clear()
            return ino

    def opendir(self, path: str) -> int:
        with self._mutex:
            return self._lookup(path)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._mutex:
            return bytes(self.nodes[fh].data[offset:offset + size])

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self._mutex:
            if self.cut:
                return len(data)  # the page the kernel writes back after the cut goes nowhere
            buf = self.nodes[fh].data
            if offset > len(buf):
                buf.extend(b"\0" * (offset - len(buf)))
            buf[offset:offset + len(data)] = data
            self.nodes[fh].mtime = time.time()
            return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        with self._mutex:
            if self.cut:
                return
            ino = fh if fh is not None and fh in self.nodes else self._lookup(path)
            buf = self.nodes[ino].data
            if length < len(buf):
                del buf[length:]
            else:
                buf.extend(b"\0" * (length - len(buf)))

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        with self._mutex:
            if not self.cut and fh in self.nodes:
                self._sync(fh)

    def fsyncdir(self, path: str, datasync: int, fh: int) -> None:
        with self._mutex:
            if not self.cut:
                self._sync(fh if fh in self.nodes else self._lookup(path))

    def flush(self, path: str, fh: int) -> None:
        return None

    def release(self, path: str, fh: int) -> None:
        return None

    def releasedir(self, path: str, fh: int) -> None:
        return None

    def unlink(self, path: str) -> None:
        with self._mutex:
            if self.cut:
                raise FuseOSError(errno.EROFS)
            parent, name = self._parent(path)
            if name not in parent.entries:
                raise FuseOSError(errno.ENOENT)
            del parent.entries[name]  # the inode stays for open handles (and on disk until the dir is synced)

    def rmdir(self, path: str) -> None:
        with self._mutex:
            if self.cut:
                raise FuseOSError(errno.EROFS)
            parent, name = self._parent(path)
            ino = parent.entries.get(name)
            if ino is None:
                raise FuseOSError(errno.ENOENT)
            if self.nodes[ino].entries:
                raise FuseOSError(errno.ENOTEMPTY)
            del parent.entries[name]

    def rename(self, old: str, new: str) -> None:
        with self._mutex:
            if self.cut:
                raise FuseOSError(errno.EROFS)
            old_parent, old_name = self._parent(old)
            new_parent, new_name = self._parent(new)
            if old_name not in old_parent.entries:
                raise FuseOSError(errno.ENOENT)
            new_parent.entries[new_name] = old_parent.entries.pop(old_name)

    def chmod(self, path: str, mode: int) -> None:
        with self._mutex:
            node = self.nodes[self._lookup(path)]
            node.mode = (node.mode & ~0o7777) | (mode & 0o7777)

    def chown(self, path: str, uid: int, gid: int) -> None:
        return None

    def utimens(self, path: str, times: tuple[float, float] | None = None) -> None:
        with self._mutex:
            self.nodes[self._lookup(path)].mtime = times[1] if times else time.time()

    def access(self, path: str, amode: int) -> None:
        with self._mutex:
            self._lookup(path)

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 22, "f_bfree": 1 << 21,
                "f_bavail": 1 << 21, "f_files": 1 << 20, "f_ffree": 1 << 19, "f_namemax": 255}


def main(argv: list[str]) -> int:
    faulthandler.register(signal.SIGUSR1)  # the test asks for the threads' stacks when it does not exit
    mountpoint, image = Path(argv[0]), Path(argv[1])
    disk = pickle.loads(image.read_bytes()) if image.exists() else Disk()
    fs = PowerCutFS(disk, image)
    try:
        # foreground, multithreaded; the kernel's page cache on (an mmap'd file needs it; direct_io off)
        FUSE(fs, str(mountpoint), foreground=True, nothreads=False, allow_other=True, default_permissions=False)
    finally:
        if not fs.cut:  # after a cut the disk was saved then, and has not changed since
            fs.save()
        print(f"powercut_fs: {len(fs.disk.nodes)} inodes on disk, {fs.syncs} syncs, cut={fs.cut}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
