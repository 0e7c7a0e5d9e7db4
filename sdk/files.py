"""Reading a task's sandbox: its files, and its output as it is written. `tessera logs`, `tessera sandbox`
and `tessera run`'s live output are built on this module; a framework may use it for its own tasks.

    files = SandboxFiles(["127.0.0.1:5050"], security)
    task = files.task("my-task")                  # or "FRAMEWORK_ID/my-task"
    for chunk in task.follow("stdout"):           # as the task writes it, until it ends
        sys.stdout.buffer.write(chunk.data)

Every agent serves the sandboxes of its tasks (`tessera.v1.Files`, docs/files.md) at the address its
registration announces (`AgentInfo.files_address`). By default `SandboxFiles` finds the task's agent in a
master's state (`Operator.GetState`; a finished task the state no longer holds, from the event log's
`TaskLaunched`) and calls the agent directly: file traffic, follows above all, does not pass through the
masters (the leader serves the whole cluster), and reading works while the masters fail over. With
`via_master=True` the same calls go to a master (`Operator.ListFiles/StatFile/ReadFile/FollowFile`),
which checks the caller and forwards them to the agent: for clients that cannot reach the agents (agents
serve on loopback by default). Either way the caller's principal reads its own frameworks' tasks; others'
need the `logs` action.

Errors are the SDK's error tree (`tessera.sdk.errors`): NotFound (unknown task or file, a collected
sandbox: the message says which), PermissionDenied, InvalidRequest (a path leaving the sandbox, a bad
range, a bare task id several frameworks use), Unavailable (the task's agent is gone or does not answer:
the message names it).

`SandboxTask.follow` re-dials when its stream breaks (the agent restarted: once it has re-registered the
master's state gives its new address) from where it stopped, with backoff, for up to `reconnect_for`
seconds, and also when no message came for `STALL_SECONDS` (an agent sends one about every second). A
rotation of the file (stdout -> stdout.1) is followed by the agent; `FileChunk.rotated` marks where the
offsets restart.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from tessera.control_plane.tls import ClientSecurity
from tessera.control_plane.wire import Backoff
from tessera.sdk.errors import InvalidRequest, NotFound, PermissionDenied, TesseraError, Unavailable
from tessera.sdk.grpc_transport import error_from_rpc
from tessera.v1 import common_pb2, files_pb2, files_pb2_grpc, operator_pb2, operator_pb2_grpc

__all__ = ["FileChunk", "FileStat", "SandboxFiles", "SandboxTask", "tail_start"]

READ_BYTES = 1 << 20  # one Read call (the agent's limit)
STALL_SECONDS = 10.0  # no message (not even a heartbeat) for this long: the stream is dead, re-dial
MAX_TAIL_SCAN = 64 << 20  # `--tail` looks at most this far back for line breaks
CONNECT_TIMEOUT = 1.0  # a master that does not take a connection within this is skipped
# A broken follow is re-dialled after these codes; any other ends it with its error.
_BREAKS = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
                     grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})
_KIND_NAMES = {files_pb2.FILE_REGULAR: "file", files_pb2.FILE_DIRECTORY: "directory",
               files_pb2.FILE_SYMLINK: "symlink", files_pb2.FILE_SPECIAL: "special"}


@dataclass(frozen=True, slots=True)
class FileStat:
    path: str  # relative to the sandbox
    kind: str  # file, directory, symlink (never followed), special (FIFO, socket, device: never opened)
    size: int
    mtime: float
    mode: int
    inode: int


@dataclass(frozen=True, slots=True)
class FileChunk:
    data: bytes  # empty: a heartbeat, or the end
    offset: int  # where `data` starts in the file `inode`
    inode: int
    rotated: bool = False  # the file was rotated before this chunk: offsets restart
    task_over: bool = False  # the last chunk: the task is over and the file drained


def _stat(info: files_pb2.FileInfo) -> FileStat:
    return FileStat(info.path, _KIND_NAMES.get(info.kind, "unknown"), info.size, info.mtime, info.mode, info.inode)


def split_task_ref(ref: str) -> tuple[str, str]:
    """`FRAMEWORK_ID/TASK_ID` as (framework_id, task_id); a bare task id as ("", task_id) (framework ids
    never hold a '/'; a task id may)."""
    framework_id, sep, task_id = ref.partition("/")
    return (framework_id, task_id) if sep and framework_id and task_id else ("", ref)


def tail_start(blocks: Iterator[tuple[int, bytes]], size: int, lines: int) -> int:
    """Where the last `lines` lines of a file of `size` bytes start, reading `blocks` — (offset, data)
    from the end backwards. A final line break ends the last line (it does not start another)."""
    if lines <= 0:
        return size
    seen = 0
    for offset, data in blocks:
        for i in range(len(data) - 1, -1, -1):
            if data[i] == 0x0A and offset + i != size - 1:
                seen += 1
                if seen == lines:
                    return offset + i + 1
    return 0


class SandboxFiles:
    """How to reach the sandboxes: the masters, the credentials, direct or through a master."""

    def __init__(self, masters: Sequence[str], security: ClientSecurity | None = None, *,
                 via_master: bool = False, timeout: float = 10.0) -> None:
        if not masters:
            raise InvalidRequest("no master address given")
        self.masters = list(masters)
        self.security = security or ClientSecurity.insecure()
        self.via_master = via_master
        self.timeout = timeout
        self._channels: dict[tuple[str, str], grpc.Channel] = {}
        self._lock = threading.Lock()
        self._master: str | None = None

    # ---- channels -------------------------------------------------------------------------------------
    def _channel(self, kind: str, address: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get((kind, address))
            if channel is None:
                channel = (self.security.agent_channel(address) if kind == "agent"
                           else self.security.channel(address))
                self._channels[(kind, address)] = channel
            return channel

    def _operator(self) -> operator_pb2_grpc.OperatorStub:
        """A master that takes connections (the first of the list that does within CONNECT_TIMEOUT)."""
        if self._master is not None:
            return operator_pb2_grpc.OperatorStub(self._channel("master", self._master))
        for address in self.masters:
            if not _takes_connections(address):
                continue
            self._master = address
            return operator_pb2_grpc.OperatorStub(self._channel("master", address))
        raise Unavailable(f"no master answers at {', '.join(self.masters)}")

    def _unary(self, method: Callable[[], Any], request: Any) -> Any:
        try:
            return method()(request, metadata=self.security.metadata, timeout=self.timeout)
        except grpc.RpcError as err:
            self._master = None  # the next call looks for a master again
            raise error_from_rpc(err) from None

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()

    # ---- finding the task -----------------------------------------------------------------------------
    def task(self, ref: str) -> SandboxTask:
        """The sandbox of task `ref` (`FRAMEWORK_ID/TASK_ID`, or a bare task id that one framework's tasks
        use); through a master, the master resolves it."""
        framework_id, task_id = split_task_ref(ref)
        if not task_id:
            raise InvalidRequest("a task id is needed")
        if self.via_master:
            return SandboxTask(self, files_pb2.SandboxRef(framework_id=framework_id, task_id=task_id), "", "")
        return self._locate(framework_id, task_id)

    def _locate(self, framework_id: str, task_id: str) -> SandboxTask:
        named = f"{framework_id}/{task_id}" if framework_id else task_id
        try:
            state = self._unary(lambda: self._operator().GetState, operator_pb2.GetStateRequest(consistent=False))
        except PermissionDenied as exc:
            raise PermissionDenied(f"{exc.message}; finding the task's agent reads the state (the `read` action): "
                                   "read through a master instead (--via-master)") from None
        views = [t for t in state.tasks if t.task.task_id == task_id
                 and (not framework_id or t.task.framework_id == framework_id)]
        placed = [(t.task.framework_id, t.task.agent_id) for t in views]
        if not placed:  # finished and forgotten by the state: the event log knows where it was launched
            flt = operator_pb2.EventFilter(types=["TaskLaunched"], task_id=task_id, framework_id=framework_id)
            events = self._unary(lambda: self._operator().ListEvents,
                                 operator_pb2.ListEventsRequest(filter=flt, limit=1000, descending=True))
            placed = [(e.framework_id, e.agent_id) for e in events.events]
        frameworks = sorted({f for f, _ in placed})
        if not placed:
            raise NotFound(f"no task {named} is known to the masters")
        if len(frameworks) > 1:
            raise InvalidRequest(f"task id {task_id} is used by {len(frameworks)} frameworks "
                                 f"({', '.join(frameworks)}); name one as FRAMEWORK_ID/{task_id}")
        framework_id, agent_id = placed[0]
        named = f"{framework_id}/{task_id}"
        agent = next((a for a in state.agents if a.agent_id == agent_id), None)
        if agent is None or agent.state == common_pb2.AGENT_REMOVED:
            raise Unavailable(f"task {named} ran on agent {agent_id}, which is gone (removed); its sandbox went "
                              "with it")
        if agent.state == common_pb2.AGENT_UNREACHABLE:
            raise Unavailable(f"task {named} is on agent {agent_id} ({agent.info.hostname}), which is unreachable")
        if not agent.info.files_address:
            raise Unavailable(f"agent {agent_id} ({agent.info.hostname}) serves no files (--files-address off, or "
                              "its certificate cannot serve TLS: see its log)")
        return SandboxTask(self, files_pb2.SandboxRef(framework_id=framework_id, task_id=task_id), agent_id,
                           agent.info.files_address)


class SandboxTask:
    """One task's sandbox (see the module docstring)."""

    def __init__(self, files: SandboxFiles, ref: files_pb2.SandboxRef, agent_id: str, address: str) -> None:
        self.files = files
        self.ref = ref
        self.agent_id = agent_id  # "" through a master
        self.address = address  # the agent's file service ("" through a master)

    @property
    def name(self) -> str:
        return f"{self.ref.framework_id}/{self.ref.task_id}" if self.ref.framework_id else self.ref.task_id

    def _method(self, agent_name: str, master_name: str) -> Callable[[], Any]:
        if self.files.via_master:
            return lambda: getattr(self.files._operator(), master_name)
        return lambda: getattr(files_pb2_grpc.FilesStub(self.files._channel("agent", self.address)), agent_name)

    def _call(self, agent_name: str, master_name: str, request: Any) -> Any:
        try:
            return self.files._unary(self._method(agent_name, master_name), request)
        except Unavailable as exc:
            if self.files.via_master:
                raise
            raise Unavailable(f"agent {self.agent_id} at {self.address} does not answer ({exc.message})") from None

    def list(self, path: str = "") -> tuple[list[FileStat], bool]:
        """The entries of a directory of the sandbox ("" = the sandbox), and whether there were more."""
        resp = self._call("List", "ListFiles", files_pb2.ListFilesRequest(task=self.ref, path=path))
        return [_stat(f) for f in resp.files], resp.truncated

    def stat(self, path: str, since_time: float = 0.0) -> tuple[FileStat, bool, int]:
        """(what `path` is, whether the task is over, where output from `since_time` on starts)."""
        resp = self._call("Stat", "StatFile", files_pb2.StatFileRequest(task=self.ref, path=path,
                                                                          since_time=since_time))
        return _stat(resp.file), resp.task_over, resp.since_offset

    def read(self, path: str, offset: int, length: int = 0) -> files_pb2.ReadFileResponse:
        resp: files_pb2.ReadFileResponse = self._call("Read", "ReadFile", files_pb2.ReadFileRequest(
            task=self.ref, path=path, offset=offset, length=length))
        return resp

    def read_range(self, path: str, start: int, end: int | None = None) -> Iterator[bytes]:
        """The bytes of `path` from `start` to `end` (None: to the end as it is when reached), in pieces."""
        offset = start
        while end is None or offset < end:
            want = READ_BYTES if end is None else min(READ_BYTES, end - offset)
            resp = self.read(path, offset, want)
            if resp.data:
                yield resp.data
                offset += len(resp.data)
            if resp.eof or not resp.data:
                return

    def tail_start(self, path: str, size: int, lines: int) -> int:
        """Where the last `lines` lines of `path` (of `size` bytes) start (at most MAX_TAIL_SCAN back)."""
        def blocks() -> Iterator[tuple[int, bytes]]:
            end = size
            while end > 0 and size - end < MAX_TAIL_SCAN:
                start = max(0, end - READ_BYTES)
                data = b"".join(self.read_range(path, start, end))
                yield start, data
                end = start

        found = tail_start(blocks(), size, lines)
        return max(found, size - MAX_TAIL_SCAN) if found == 0 and size > MAX_TAIL_SCAN else found

    def follow(self, path: str, offset: int = 0, inode: int = 0, *, reconnect_for: float = 30.0,
               on_break: Callable[[TesseraError, float], None] | None = None,
               backoff: Backoff | None = None) -> Iterator[FileChunk]:
        """`path` from `offset` as it grows, until the task is over and it is drained (see the module
        docstring). `on_break(error, wait)` is told of each break before the re-dial."""
        backoff = backoff or Backoff(initial=0.2, maximum=2.0)
        attempt = 0
        broken_since: float | None = None
        while True:
            request = files_pb2.FollowFileRequest(task=self.ref, path=path, offset=offset, inode=inode)
            try:
                call = self._method("Follow", "FollowFile")()(request, metadata=self.files.security.metadata)
                for msg in _watched(call):
                    attempt, broken_since = 0, None
                    chunk = FileChunk(msg.data, msg.offset, msg.inode, msg.rotated, msg.task_over)
                    offset, inode = msg.offset + len(msg.data), msg.inode
                    yield chunk
                    if msg.task_over:
                        return
                return
            except grpc.RpcError as err:
                error: TesseraError = error_from_rpc(err)
                if err.code() not in _BREAKS:
                    raise error from None
            now = time.monotonic()
            broken_since = broken_since if broken_since is not None else now
            if now - broken_since >= reconnect_for:
                raise Unavailable(f"the output of task {self.name} could not be followed for {reconnect_for:g} s: "
                                  f"{error.message}")
            wait = backoff.delay(attempt, random.random())
            attempt += 1
            if on_break is not None:
                on_break(error, wait)
            time.sleep(wait)
            self.files._master = None
            if not self.files.via_master:
                try:  # the agent may be back elsewhere (a new port after a restart)
                    found = self.files._locate(self.ref.framework_id, self.ref.task_id)
                    self.address, self.agent_id = found.address, found.agent_id
                except Unavailable:
                    pass  # not re-registered yet: dial the old address again, after the next wait


def _takes_connections(address: str) -> bool:
    """Does `address` (HOST:PORT, [V6]:PORT) accept a TCP connection within CONNECT_TIMEOUT? (A refused or
    silent master is skipped at once instead of failing the call after its whole timeout.)"""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT):
            return True
    except (OSError, ValueError):
        return False


def _watched(call: Any) -> Iterator[Any]:
    """The messages of a server stream, cancelled when none comes for STALL_SECONDS."""
    last = [time.monotonic()]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(1.0):
            if time.monotonic() - last[0] > STALL_SECONDS:
                call.cancel()
                return

    watcher = threading.Thread(target=watch, name="follow-watchdog", daemon=True)
    watcher.start()
    try:
        for msg in call:
            last[0] = time.monotonic()
            yield msg
    finally:
        done.set()
        call.cancel()
