"""The fetcher and the output rotation end to end with real processes: a `tessera master`, a `tessera
agent` (--fetcher-* and --log-* flags), a framework on the SDK, and a local HTTP server of artifacts
started by the test on 127.0.0.1 (a free port). Pinned: fetch + extract + executable bit before the
task starts; the second task of a URL is served from the agent's cache (the server counts requests);
an unsupported scheme is refused at the accept (INVALID_ARGUMENT, nothing recorded); a 404, an
oversized download and a stalled server end TASK_FAILED with REASON_FETCHER_FAILED naming the URI, and
the agent keeps serving; a task writing as fast as it can keeps its stdout within the rotation bound."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.sdk import CommandURI, Resources, SchedulerDriver, TaskInfo, TaskState
from tessera.v1 import operator_pb2
from tests.support.artifacts import ArtifactServer, tar_bytes, zip_bytes
from tests.support.cluster import LocalCluster, wait_for
from tests.support.recording import Recorder, launch, running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

KIB = 1024
LOG_MAX = 256 * KIB  # --log-max-mib 0.25
LOG_FILES = 2
FAST_MASTER = ["--allocation-interval", "0.2", "--agent-timeout", "5", "--reregistration-timeout", "5"]
AGENT_FLAGS = ("--log-max-mib", "0.25", "--log-files", str(LOG_FILES), "--fetcher-max-mib", "1",
               "--fetcher-timeout", "4", "--containers", "off")


@pytest.fixture(scope="module")
def server() -> Iterator[ArtifactServer]:
    with ArtifactServer() as s:
        yield s


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("fetcher"), n=1) as c:
        c.master_flags = FAST_MASTER
        c.start_all()
        c.leader()
        c.add_agent("cpus:4;mem:2048", flags=AGENT_FLAGS)
        c.wait_agents(1)
        yield c


@pytest.fixture(scope="module")
def framework(cluster: LocalCluster) -> Iterator[tuple[Recorder, SchedulerDriver]]:
    with running(Recorder(), cluster.grpc_addresses(), "fetcher-tests") as framework:
        yield framework


def task(task_id: str, command: str, *uris: CommandURI | str) -> TaskInfo:
    return TaskInfo(task_id=task_id, resources=Resources.of(cpus=0.1, mem=32), command=command, uris=uris)


def sandbox(cluster: LocalCluster, task_id: str) -> Path:
    found = list((cluster.agents[0].data_dir / "sandboxes").glob(f"*/{task_id}/sandbox"))
    assert len(found) == 1, found
    return found[0]


def agent_alive(cluster: LocalCluster) -> None:
    assert cluster.agents[0].alive, cluster.logs()
    client = cluster.client()
    try:
        agents = client.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True)).agents
    finally:
        client.close()
    assert [a.connected for a in agents] == [True]


def test_artifacts_are_fetched_extracted_and_executable_and_a_second_task_hits_the_cache(
        cluster: LocalCluster, server: ArtifactServer, framework: tuple[Recorder, SchedulerDriver]) -> None:
    keeper, _ = framework
    archive = server.add("/app.tgz", tar_bytes([("app/conf/greeting", b"hello", 0o644),
                                                ("app/run.sh", b"#!/bin/sh\necho \"$(cat app/conf/greeting) $1\"\n",
                                                 0o755)]))
    tool = server.add("/bin/shout", b"#!/bin/sh\ntr a-z A-Z\n")
    bundle = server.add("/lib.zip", zip_bytes([("lib/data.txt", b"zip data\n", 0o100644)]))
    command = "./app/run.sh world | ./shout && cat lib/data.txt && test -x shout"
    launch(framework, task("fetch-1", command, CommandURI(archive, extract=True), CommandURI(tool, executable=True),
                           CommandURI(bundle, extract=True)))
    first = keeper.final("fetch-1")
    assert first.state is TaskState.TASK_FINISHED, first
    assert first.data == b"HELLO WORLD\nzip data\n"
    assert "tessera fetcher:" in (sandbox(cluster, "fetch-1") / "stderr").read_text()
    launch(framework, task("fetch-2", command, CommandURI(archive, extract=True), CommandURI(tool, executable=True),
                           CommandURI(bundle, extract=True)))
    assert keeper.final("fetch-2").data == b"HELLO WORLD\nzip data\n"
    # the second task's artifacts came from the agent's cache: the server was asked once per URL
    assert [server.requests(p) for p in ("/app.tgz", "/bin/shout", "/lib.zip")] == [1, 1, 1]
    launch(framework, task("fetch-3", "cat shout", CommandURI(tool, no_cache=True)))
    assert keeper.final("fetch-3").state is TaskState.TASK_FINISHED and server.requests("/bin/shout") == 2


def test_an_unsupported_scheme_is_refused_at_the_accept_and_nothing_is_recorded(
        cluster: LocalCluster, framework: tuple[Recorder, SchedulerDriver]) -> None:
    keeper, _ = framework
    launch(framework, task("ftp-task", "true", "ftp://127.0.0.1/tool"))
    refusal = keeper.wait(lambda: next((r for r in keeper.refusals if "ftp" in r), None), 60)
    assert "uris[0].value: the scheme 'ftp' is not supported" in refusal
    leader = cluster.leader()
    assert not [e for e in leader.list_events() if e.task_id == "ftp-task"]  # nothing changed
    agent_alive(cluster)


def test_failed_fetches_end_the_task_failed_naming_the_uri_and_the_agent_keeps_serving(
        cluster: LocalCluster, server: ArtifactServer, framework: tuple[Recorder, SchedulerDriver]) -> None:
    keeper, _ = framework
    cases = {
        "missing": (server.url("/missing.tgz"), True, "HTTP 404"),
        "oversized": (server.add("/huge", b"h" * (2 * 1024 * 1024)), False,
                      "larger than the agent's limit of 1 MiB (--fetcher-max-mib)"),
        "stalled": (server.add("/stalled", b"part", stall=True), False,
                    "not fetched within the agent's fetcher timeout of 4s (--fetcher-timeout)"),
    }
    for task_id, (url, extract, _) in cases.items():
        launch(framework, task(task_id, "touch ran", CommandURI(url, extract=extract)))
    for task_id, (url, _, says) in cases.items():
        final = keeper.final(task_id)
        assert final.state is TaskState.TASK_FAILED and final.reason == "REASON_FETCHER_FAILED", final
        assert final.message.startswith(f"cannot fetch {url}: ") and says in final.message, final.message
        assert not (sandbox(cluster, task_id) / "ran").exists()  # the task itself never started
        assert not any(s.task_id == task_id and s.state is TaskState.TASK_RUNNING for s in keeper.statuses)
    agent_alive(cluster)
    launch(framework, task("after-failures", "echo still serving"))
    assert keeper.final("after-failures").data == b"still serving\n"


def test_a_task_writing_as_fast_as_it_can_stays_within_the_rotation_bound(
        cluster: LocalCluster, framework: tuple[Recorder, SchedulerDriver]) -> None:
    keeper, driver = framework
    launch(framework, task("chatty", "yes"))
    keeper.wait(lambda: any(s.task_id == "chatty" and s.state is TaskState.TASK_RUNNING for s in keeper.statuses))
    where = sandbox(cluster, "chatty")
    bound = (LOG_FILES + 1) * LOG_MAX
    # Sampled while `yes` writes, with no slack: the stream's names are at most `stdout`, `stdout.1` ...
    # `stdout.N` (N + 1 names), and no file under any of them ever holds more than the size limit, so a
    # listing that races rotations still sums at most (N + 1) x max; it may count one file under two
    # names (mid-rotation), never more names.
    samples: list[int] = []

    def sample() -> bool:
        total = 0
        for name in {p.name for p in where.iterdir() if p.name.startswith("stdout")}:
            try:
                total += (where / name).stat().st_size
            except FileNotFoundError:
                pass
        samples.append(total)
        return total > bound or (len(samples) >= 40 and (where / f"stdout.{LOG_FILES}").exists())

    wait_for(sample, 60, interval=0.05, what="the chatty task's output rotated")
    assert max(samples) <= bound, f"over the bound: {samples[-10:]}"
    driver.kill("chatty")
    final = keeper.final("chatty")
    assert final.state is TaskState.TASK_KILLED, final
    names = sorted(p.name for p in where.iterdir() if p.name.startswith("stdout"))
    assert names == ["stdout", "stdout.1", "stdout.2"]
    assert sum((where / n).stat().st_size for n in names) <= bound
    assert all((where / n).stat().st_size == LOG_MAX for n in ("stdout.1", "stdout.2"))
    assert final.data and set(final.data) <= set(b"y\n")  # the status still carries the tail of the output


def test_tessera_run_fetches_a_uri(cluster: LocalCluster, server: ArtifactServer) -> None:
    url = server.add("/hello.sh", b"#!/bin/sh\necho hello from a fetched script\n")
    done = subprocess.run([sys.executable, "-m", "tessera.control_plane.cli.main", "run", "--masters",
                           ",".join(cluster.grpc_addresses()), "--uri", f"{url},executable", "--", "./hello.sh"],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr + cluster.logs()
    assert "hello from a fetched script" in done.stdout
