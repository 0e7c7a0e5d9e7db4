"""The fetcher in real supervisors (launched by the process launcher), against a local HTTP server: URIs
land in the sandbox before the task starts, owned by the task's user; the cache serves a second task;
a failed fetch ends TASK_FAILED with REASON_FETCHER_FAILED naming the URI and the task never starts;
a kill during a fetch ends TASK_KILLED; a stalled server hits the timeout; file:// is read as the
task's user. Needs root (tasks run as `nobody`)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.agent.core.tasks import REASON_FETCHER_FAILED, Outcome, terminal_status
from tessera.agent.executor.fetcher import FetcherConfig
from tessera.agent.executor.isolation import RlimitIsolator
from tessera.agent.executor.launcher import LaunchHandle, Observation, ProcessLauncher
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import CommandInfo, CommandURI, TaskInfo, TaskState
from tests.support.artifacts import ArtifactServer, tar_bytes

NOBODY = 65534


@pytest.fixture
def server() -> Iterator[ArtifactServer]:
    with ArtifactServer() as s:
        yield s


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[ProcessLauncher]:
    if os.geteuid() != 0:
        pytest.fail("these tests need root: tasks run as the user nobody")
    launcher = ProcessLauncher(tmp_path / "sandboxes", RlimitIsolator(),
                               fetcher=FetcherConfig(timeout=30.0, cache_dir=str(tmp_path / "cache")))
    yield launcher
    launcher.close()


def task(task_id: str, command: str, *uris: CommandURI, user: str = "nobody") -> TaskInfo:
    return TaskInfo(task_id=task_id, framework_id="fw", resources=Resources.of(cpus=0.1, mem=64),
                    command=CommandInfo(value=command, user=user), uris=uris)


def run(launcher: ProcessLauncher, info: TaskInfo, timeout: float = 60.0) -> tuple[LaunchHandle, Observation, Outcome]:
    handle = launcher.launch(info)
    deadline = time.monotonic() + timeout
    while not (obs := launcher.observe(handle)).ended:
        assert time.monotonic() < deadline, f"task {info.task_id} did not end"
        time.sleep(0.05)
    launcher.release(handle)
    assert obs.exit is not None, obs
    return handle, obs, terminal_status(obs.exit, handle.kill_requested)


def test_uris_are_fetched_extracted_and_made_executable_before_the_task_starts(
        launcher: ProcessLauncher, server: ArtifactServer) -> None:
    archive = server.add("/app.tgz", tar_bytes([("app/greet.txt", b"hello\n", 0o644)]))
    tool = server.add("/bin/tool", b"#!/bin/sh\necho tool ran as $(id -un)\n")
    handle, obs, out = run(launcher, task("t1", "./tool && cat app/greet.txt",
                                          CommandURI(archive, extract=True), CommandURI(tool, executable=True)))
    assert out.state is TaskState.TASK_FINISHED, out
    assert out.data == b"tool ran as nobody\nhello\n"
    for name in ("tool", "app", "app/greet.txt"):
        assert (handle.task_dir / name).stat().st_uid == NOBODY, name  # made as the task's user
    assert stat.S_IMODE((handle.task_dir / "tool").stat().st_mode) == 0o755
    assert not (handle.task_dir / "app.tgz").exists()  # the archive is extracted, not kept
    stderr = (handle.task_dir / "stderr").read_text()
    assert f"tessera fetcher: {tool}: downloaded into the agent's cache" in stderr


def test_a_second_task_is_served_from_the_cache_unless_it_opts_out(
        launcher: ProcessLauncher, server: ArtifactServer) -> None:
    url = server.add("/data.txt", b"cached\n")
    for task_id in ("first", "second"):
        _, _, out = run(launcher, task(task_id, "cat data.txt", CommandURI(url)))
        assert out.state is TaskState.TASK_FINISHED and out.data == b"cached\n", out
    assert server.requests("/data.txt") == 1
    _, _, out = run(launcher, task("third", "cat data.txt", CommandURI(url, no_cache=True)))
    assert out.state is TaskState.TASK_FINISHED and server.requests("/data.txt") == 2


def test_a_missing_artifact_fails_the_task_naming_the_uri_and_it_never_starts(
        launcher: ProcessLauncher, server: ArtifactServer) -> None:
    ok = server.add("/ok", b"ok")
    missing = server.url("/missing.tgz")
    handle, obs, out = run(launcher, task("t1", "touch ran", CommandURI(ok), CommandURI(missing, extract=True)))
    assert out.state is TaskState.TASK_FAILED and out.reason == REASON_FETCHER_FAILED
    assert out.message.startswith(f"cannot fetch {missing}: HTTP 404"), out.message
    assert not obs.started and not (handle.task_dir / "ran").exists()


def test_a_download_over_the_limit_fails_the_task(launcher: ProcessLauncher, server: ArtifactServer) -> None:
    launcher.fetcher = FetcherConfig(max_bytes=1000, timeout=30.0)
    big = server.add("/big", b"x" * 5000, chunked=True)
    _, _, out = run(launcher, task("t1", "true", CommandURI(big)))
    assert out.reason == REASON_FETCHER_FAILED and big in out.message and "--fetcher-max-mib" in out.message


def test_a_stalled_server_hits_the_timeout_naming_the_uri(launcher: ProcessLauncher, server: ArtifactServer) -> None:
    launcher.fetcher = FetcherConfig(timeout=1.0)
    ok, slow = server.add("/ok", b"ok"), server.add("/slow", b"some", stall=True)
    _, obs, out = run(launcher, task("t1", "true", CommandURI(ok), CommandURI(slow)))
    assert out.state is TaskState.TASK_FAILED and out.reason == REASON_FETCHER_FAILED
    assert out.message.startswith(f"cannot fetch {slow}: not fetched within") and "--fetcher-timeout" in out.message


def test_a_task_killed_during_its_fetch_ends_killed(launcher: ProcessLauncher, server: ArtifactServer) -> None:
    slow = server.add("/slow", b"some", stall=True)
    handle = launcher.launch(task("t1", "true", CommandURI(slow)))
    deadline = time.monotonic() + 30
    while server.requests("/slow") == 0:
        assert time.monotonic() < deadline, "the fetch never asked the server"
        time.sleep(0.02)
    launcher.kill(handle, 5.0)
    while not (obs := launcher.observe(handle)).ended:
        assert time.monotonic() < deadline, "the kill did not end the fetch"
        time.sleep(0.05)
    launcher.release(handle)
    assert obs.exit is not None and terminal_status(obs.exit, True).state is TaskState.TASK_KILLED


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory everyone may enter (pytest's own are root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="tessera-fetch-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_file_uris_are_read_as_the_tasks_user(launcher: ProcessLauncher, shared_dir: Path) -> None:
    public = shared_dir / "public.sh"
    public.write_text("echo public\n")
    public.chmod(0o644)
    secret = shared_dir / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    handle, _, out = run(launcher, task("t1", "sh public.sh", CommandURI(f"file://{public}")))
    assert out.state is TaskState.TASK_FINISHED and out.data == b"public\n", out
    assert (handle.task_dir / "public.sh").stat().st_uid == NOBODY
    _, _, out = run(launcher, task("t2", "cat secret", CommandURI(f"file://{secret}")))
    assert out.state is TaskState.TASK_FAILED and out.reason == REASON_FETCHER_FAILED
    assert f"file://{secret}: cannot read {secret} as the task's user: Permission denied" in out.message
    # a task run as root may read what root may: the fetcher is never more than the task's user
    _, _, out = run(launcher, task("t3", "cat secret", CommandURI(f"file://{secret}"), user=""))
    assert out.state is TaskState.TASK_FINISHED and out.data == b"root only\n"
