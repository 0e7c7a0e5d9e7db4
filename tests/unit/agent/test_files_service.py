"""The agent's file service over real gRPC on 127.0.0.1 (agent/files/: catalog, servicer, server), in this
process: what each call answers, every refusal's status code and message, and that follows are bounded
(capped below the thread pool, freed when their caller goes) so no agent thread is ever stuck."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tessera.agent.core.files import MAX_READ_BYTES, SandboxEntry
from tessera.agent.files.catalog import OutputSampler, SandboxCatalog
from tessera.agent.files.server import FileServer, advertised, certificate_can_serve
from tessera.control_plane.api.auth import Guard
from tessera.control_plane.core.values import TaskKey
from tessera.v1 import files_pb2, files_pb2_grpc

pytestmark = pytest.mark.timeout(60)

FW = "framework-1"


class Served:
    def __init__(self, tmp: Path, *, recovered: bool = True) -> None:
        self.catalog = SandboxCatalog()
        self.catalog.agent = "agent-7"
        if recovered:
            self.catalog.replace_all([])  # what the agent's recovery does before it registers
        self.now = [1000.0]
        self.sampler = OutputSampler(self.catalog, clock=lambda: self.now[0])
        self.server = FileServer(self.catalog, Guard.open(), threads=8, sampler=self.sampler)
        self.server.service.poll_max, self.server.service.heartbeat = 0.02, 0.2
        port = self.server.bind("127.0.0.1:0", None)
        self.server.server.start()  # the sampler is driven by hand (sample())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = files_pb2_grpc.FilesStub(self.channel)
        self.tmp = tmp

    def task(self, task_id: str, *, live: bool = True) -> Path:
        run_dir = self.tmp / task_id
        sandbox = run_dir / "sandbox"
        sandbox.mkdir(parents=True)
        self.catalog.add(SandboxEntry(FW, task_id, "alice", str(run_dir), str(sandbox), live=live))
        return sandbox

    def close(self) -> None:
        self.channel.close()
        self.server.server.stop(0).wait(5)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path)
    yield s
    s.close()


def ref(task_id: str) -> files_pb2.SandboxRef:
    return files_pb2.SandboxRef(framework_id=FW, task_id=task_id)


def refused(call: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    try:
        result = call(request, timeout=10)
        if hasattr(result, "__iter__") and not hasattr(result, "ByteSize"):
            list(result)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    raise AssertionError("the call was not refused")


def test_list_stat_and_read_answer_from_the_sandbox(served: Served) -> None:
    box = served.task("t1")
    (box / "stdout").write_bytes(b"hello\nworld\n")
    (box / "sub").mkdir()
    listing = served.stub.List(files_pb2.ListFilesRequest(task=ref("t1")), timeout=10)
    assert [(f.path, f.kind) for f in listing.files] == [("stdout", files_pb2.FILE_REGULAR),
                                                          ("sub", files_pb2.FILE_DIRECTORY)]
    assert not listing.task_over
    stat = served.stub.Stat(files_pb2.StatFileRequest(task=ref("t1"), path="stdout"), timeout=10)
    assert stat.file.size == 12 and stat.file.inode == os.stat(box / "stdout").st_ino
    read = served.stub.Read(files_pb2.ReadFileRequest(task=ref("t1"), path="stdout", offset=6, length=3), timeout=10)
    assert (read.data, read.offset, read.size, read.eof) == (b"wor", 6, 12, False)
    rest = served.stub.Read(files_pb2.ReadFileRequest(task=ref("t1"), path="stdout", offset=6), timeout=10)
    assert rest.data == b"world\n" and rest.eof
    end = served.stub.Read(files_pb2.ReadFileRequest(task=ref("t1"), path="stdout", offset=12), timeout=10)
    assert end.data == b"" and end.eof


@pytest.mark.parametrize("request_, code, said", [
    (files_pb2.ReadFileRequest(path="stdout", offset=2**62), grpc.StatusCode.INVALID_ARGUMENT, "past the end"),
    (files_pb2.ReadFileRequest(path="stdout", offset=-1), grpc.StatusCode.INVALID_ARGUMENT, "offset: must not be negative"),
    (files_pb2.ReadFileRequest(path="stdout", length=-5), grpc.StatusCode.INVALID_ARGUMENT, "length: must not be negative"),
    (files_pb2.ReadFileRequest(path="stdout", length=MAX_READ_BYTES + 1), grpc.StatusCode.INVALID_ARGUMENT, "at most"),
    (files_pb2.ReadFileRequest(path="../t2/stdout"), grpc.StatusCode.INVALID_ARGUMENT, "'..' is not allowed"),
    (files_pb2.ReadFileRequest(path="/etc/shadow"), grpc.StatusCode.INVALID_ARGUMENT, "absolute path"),
    (files_pb2.ReadFileRequest(path="escape"), grpc.StatusCode.PERMISSION_DENIED, "symlink"),
    (files_pb2.ReadFileRequest(path="pipe"), grpc.StatusCode.PERMISSION_DENIED, "special file"),
    (files_pb2.ReadFileRequest(path="nope"), grpc.StatusCode.NOT_FOUND, "no such file"),
    (files_pb2.ReadFileRequest(path=""), grpc.StatusCode.INVALID_ARGUMENT, "is a directory"),
])
def test_bad_reads_are_refused_with_their_code_and_a_clear_message(served: Served, request_: Any,
                                                                    code: grpc.StatusCode, said: str) -> None:
    box = served.task("t1")
    (box / "stdout").write_bytes(b"0123456789")
    os.symlink("/etc/shadow", box / "escape")
    os.mkfifo(box / "pipe")
    request_.task.CopyFrom(ref("t1"))
    got, details = refused(served.stub.Read, request_)
    assert got == code and said in details, details


def test_unknown_tasks_and_collected_sandboxes_are_not_found_saying_which(served: Served) -> None:
    assert refused(served.stub.List, files_pb2.ListFilesRequest(task=ref("ghost"))) == (
        grpc.StatusCode.NOT_FOUND, f"agent agent-7 has no task {FW}/ghost (never ran it, or forgot it long ago)")
    box = served.task("done", live=False)
    served.catalog.collected([str(box.parent)])
    code, details = refused(served.stub.List, files_pb2.ListFilesRequest(task=ref("done")))
    assert code == grpc.StatusCode.NOT_FOUND and "was collected" in details and "--sandbox-gc-delay" in details


def test_until_the_agent_has_recovered_its_tasks_every_call_is_unavailable_not_not_found(tmp_path: Path) -> None:
    starting = Served(tmp_path, recovered=False)
    try:
        for call, request in ((starting.stub.List, files_pb2.ListFilesRequest(task=ref("t1"))),
                              (starting.stub.Read, files_pb2.ReadFileRequest(task=ref("t1"), path="stdout"))):
            code, details = refused(call, request)
            assert code == grpc.StatusCode.UNAVAILABLE and "has not recovered its tasks" in details, details
        with pytest.raises(grpc.RpcError) as exc:
            next(starting.stub.Follow(files_pb2.FollowFileRequest(task=ref("t1"), path="stdout"), timeout=10))
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        starting.catalog.replace_all([])  # recovered: an unknown task is NOT_FOUND from now on
        assert refused(starting.stub.List, files_pb2.ListFilesRequest(task=ref("t1")))[0] == grpc.StatusCode.NOT_FOUND
    finally:
        starting.close()


def test_a_follow_re_dialled_while_a_restarted_agent_recovers_goes_on_where_it_stopped(tmp_path: Path) -> None:
    """The SDK's follow (`tessera logs -f`) of a task whose agent restarts: a re-dial that reaches the new
    agent before it recovered its tasks is re-dialled again (it used to end the follow with NOT_FOUND), and
    the follow goes on from its offset once the agent has recovered."""
    from tessera.control_plane.wire import Backoff
    from tessera.sdk.files import SandboxFiles, SandboxTask

    starting = Served(tmp_path, recovered=False)
    run_dir = tmp_path / "t1"
    (run_dir / "sandbox").mkdir(parents=True)
    (run_dir / "sandbox" / "stdout").write_bytes(b"one\ntwo\n")
    entry = SandboxEntry(FW, "t1", "alice", str(run_dir), str(run_dir / "sandbox"), live=True)
    breaks: list[str] = []

    def on_break(error: Any, wait: float) -> None:
        breaks.append(error.message)
        if len(breaks) == 2:  # the agent recovers between two re-dials, and the task writes on
            starting.catalog.replace_all([entry])
            with open(run_dir / "sandbox" / "stdout", "ab") as f:
                f.write(b"three\n")

    files = SandboxFiles(["127.0.0.1:1"])  # no master answers: the follow re-dials the same address
    try:
        task = SandboxTask(files, files_pb2.SandboxRef(framework_id=FW, task_id="t1"), "agent-7",
                           f"127.0.0.1:{starting.server.port}")
        got = b""
        for chunk in task.follow("stdout", offset=4, inode=os.stat(run_dir / "sandbox" / "stdout").st_ino,
                                 reconnect_for=30, on_break=on_break, backoff=Backoff(initial=0.01, maximum=0.05)):
            got += chunk.data
            if got == b"two\nthree\n":
                starting.catalog.ended(TaskKey(FW, "t1"), 1.0)
            assert not chunk.task_over or got == b"two\nthree\n"
        assert got == b"two\nthree\n"
        assert len(breaks) >= 2 and all("has not recovered its tasks" in b for b in breaks[:2]), breaks
    finally:
        files.close()
        starting.close()


def test_a_follow_streams_what_is_written_and_ends_when_the_task_has_ended(served: Served) -> None:
    box = served.task("t1")
    (box / "stdout").write_bytes(b"a\n")
    call = served.stub.Follow(files_pb2.FollowFileRequest(task=ref("t1"), path="stdout"), timeout=30)
    first = next(call)
    assert first.data == b"a\n" and first.offset == 0
    with open(box / "stdout", "ab") as f:
        f.write(b"b\n")
    got = b""
    while got != b"b\n":
        got += next(call).data
    served.catalog.ended(TaskKey(FW, "t1"), 1.0)
    rest = list(call)
    assert rest[-1].task_over and b"".join(m.data for m in rest) == b""


def test_follows_are_capped_below_the_pool_and_freed_when_their_callers_go(served: Served) -> None:
    served.task("t1")
    (served.tmp / "t1" / "sandbox" / "stdout").write_bytes(b"x")
    calls = []
    # 8 threads: 2 kept for unary calls, 6 for streams, at most half of them (3) per peer
    for _ in range(3):
        call = served.stub.Follow(files_pb2.FollowFileRequest(task=ref("t1"), path="stdout"))
        assert next(call).data == b"x"
        calls.append(call)
    extra = served.stub.Follow(files_pb2.FollowFileRequest(task=ref("t1"), path="stdout"), timeout=10)
    with pytest.raises(grpc.RpcError) as exc:
        next(extra)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # the unary calls still have their threads
    assert served.stub.Read(files_pb2.ReadFileRequest(task=ref("t1"), path="stdout"), timeout=5).data == b"x"
    for call in calls:
        call.cancel()
    deadline = time.monotonic() + 20
    while True:  # each cancelled follow ends on the agent side and gives its slot back
        again = served.stub.Follow(files_pb2.FollowFileRequest(task=ref("t1"), path="stdout"), timeout=10)
        try:
            assert next(again).data == b"x"
            again.cancel()
            break
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() < deadline, "cancelled follows never gave their slots back"
            time.sleep(0.1)


def test_since_starts_where_the_output_stood_at_that_time(served: Served) -> None:
    box = served.task("t1")
    out = box / "stdout"
    out.write_bytes(b"early\n")
    served.sampler.sample()  # at 1000
    served.now[0] = 1010.0
    with open(out, "ab") as f:
        f.write(b"late\n")
    served.sampler.sample()  # at 1010
    stat = served.stub.Stat(files_pb2.StatFileRequest(task=ref("t1"), path="stdout", since_time=1005.0), timeout=5)
    assert stat.since_offset == len(b"early\n")
    code, _ = refused(served.stub.Stat, files_pb2.StatFileRequest(task=ref("t1"), path="stdout", since_time=-1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_wildcard_bind_is_announced_with_the_hostname_and_old_certificates_cannot_serve(tmp_path: Path) -> None:
    assert advertised("0.0.0.0:0", 4242, "node-1") == "node-1:4242"
    assert advertised("[::]:0", 4242, "node-1") == "node-1:4242"
    assert advertised("127.0.0.1:0", 4242, "node-1") == "127.0.0.1:4242"
    from tessera.control_plane.certs import init_dev_pki, issue, load_ca

    init_dev_pki(tmp_path / "pki")
    assert certificate_can_serve((tmp_path / "pki" / "agent" / "cert.pem").read_bytes()) == ""
    framework = issue(load_ca(tmp_path / "pki"), "framework", "f")
    assert "no server usage" in certificate_can_serve(framework.cert_pem)
    master = (tmp_path / "pki" / "master" / "cert.pem").read_bytes()
    assert "does not name agent.tessera" in certificate_can_serve(master)
