"""`FileService`: the agent's `tessera.v1.Files` servicer (List, Stat, Read, Follow) — thin: authorize,
decide (agent/core/files.py), walk (agent/executor/sandbox_files.py), convert.

Every call names a task (framework id and task id) and a path in its sandbox. The caller is who the
guard says (certificate kind and token, as on the masters); `check_file_read` decides against the
principal the master recorded for the task's framework (sent with its RunTask). The task's own entry is
found first, so an unknown task is NOT_FOUND for everyone (a task id is not a secret: the master's state
shows it to every reader). Errors go through `@grpc_errors`, like the masters'.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from tessera.agent.core.files import SandboxEntry, read_range, sandbox_path, shown_path
from tessera.agent.executor import sandbox_files
from tessera.agent.files.catalog import OutputSampler, SandboxCatalog
from tessera.agent.files.follow import HEARTBEAT, POLL_MAX, POLL_MIN, Follower
from tessera.control_plane.api.auth import Guard
from tessera.control_plane.api.errors import grpc_errors
from tessera.control_plane.core.acl import check_file_read
from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.values import TaskKey
from tessera.v1 import files_pb2, files_pb2_grpc

_KINDS = {sandbox_files.REGULAR: files_pb2.FILE_REGULAR, sandbox_files.DIRECTORY: files_pb2.FILE_DIRECTORY,
          sandbox_files.SYMLINK: files_pb2.FILE_SYMLINK, sandbox_files.SPECIAL: files_pb2.FILE_SPECIAL}


@contextmanager
def opened(entry: SandboxEntry) -> Iterator[int]:
    """An O_PATH descriptor of the task's sandbox, closed after the block."""
    root = sandbox_files.open_sandbox(entry.sandbox)
    try:
        yield root
    finally:
        os.close(root)


def file_info(entry: sandbox_files.Entry) -> files_pb2.FileInfo:
    return files_pb2.FileInfo(path=entry.path, kind=_KINDS[entry.kind], size=entry.size, mtime=entry.mtime,
                              mode=entry.mode, inode=entry.inode)


class FileService(files_pb2_grpc.FilesServicer):
    def __init__(self, catalog: SandboxCatalog, guard: Guard, sampler: OutputSampler | None = None, *,
                 poll_min: float = POLL_MIN, poll_max: float = POLL_MAX, heartbeat: float = HEARTBEAT) -> None:
        self.catalog = catalog
        self.guard = guard
        self.sampler = sampler
        self.poll_min, self.poll_max, self.heartbeat = poll_min, poll_max, heartbeat

    def _target(self, context: grpc.ServicerContext, method: str, task: files_pb2.SandboxRef,
                path: str) -> tuple[SandboxEntry, tuple[str, ...]]:
        """The task's entry and the path's components, once the caller may read that sandbox."""
        caller = self.guard.caller(context, f"Files/{method}")
        parts = sandbox_path(path)
        entry = self.catalog.find(TaskKey(task.framework_id, task.task_id))
        check_file_read(caller, entry.principal or None)
        return entry, parts

    @grpc_errors
    def List(self, request: files_pb2.ListFilesRequest, context: grpc.ServicerContext) -> Any:
        entry, parts = self._target(context, "List", request.task, request.path)
        with opened(entry) as root:
            entries, truncated = sandbox_files.list_dir(root, parts)
        return files_pb2.ListFilesResponse(files=[file_info(e) for e in entries], truncated=truncated,
                                           task_over=not self.catalog.live(entry.key))

    @grpc_errors
    def Stat(self, request: files_pb2.StatFileRequest, context: grpc.ServicerContext) -> Any:
        entry, parts = self._target(context, "Stat", request.task, request.path)
        if request.since_time < 0:
            raise InvalidRequest(f"since_time: must not be negative, got {request.since_time}")
        with opened(entry) as root:
            found = sandbox_files.stat_path(root, parts)
        resp = files_pb2.StatFileResponse(file=file_info(found), task_over=not self.catalog.live(entry.key))
        if request.since_time and found.kind == sandbox_files.REGULAR:
            sampler = self.sampler or OutputSampler(self.catalog)
            resp.since_offset = sampler.offset_since(entry.key, shown_path(parts), request.since_time, found.inode,
                                                     found.size, found.mtime)
        return resp

    @grpc_errors
    def Read(self, request: files_pb2.ReadFileRequest, context: grpc.ServicerContext) -> Any:
        entry, parts = self._target(context, "Read", request.task, request.path)
        with opened(entry) as root:
            fd, info = sandbox_files.open_file(root, parts)
        try:
            offset, count = read_range(request.offset, request.length, info.st_size, shown_path(parts))
            data = os.pread(fd, count, offset) if count else b""
        finally:
            os.close(fd)
        return files_pb2.ReadFileResponse(data=data, offset=offset, size=info.st_size,
                                          eof=offset + len(data) >= info.st_size, inode=info.st_ino)

    @grpc_errors
    def Follow(self, request: files_pb2.FollowFileRequest,
               context: grpc.ServicerContext) -> Iterator[files_pb2.FollowFileResponse]:
        entry, parts = self._target(context, "Follow", request.task, request.path)
        key = entry.key
        with opened(entry) as root:
            follower = Follower(root, parts, live=lambda: self.catalog.live(key), active=context.is_active,
                                poll_min=self.poll_min, poll_max=self.poll_max, heartbeat=self.heartbeat)
            for chunk in follower.chunks(request.offset, request.inode):
                yield files_pb2.FollowFileResponse(data=chunk.data, offset=chunk.offset, inode=chunk.inode,
                                                   rotated=chunk.rotated, task_over=chunk.task_over)

