"""Sandbox files with real processes (docs/files.md): `tessera logs`, `tessera sandbox` and `tessera run`
against a master and agents on 127.0.0.1, each task run by a `tessera run` process.

- `logs -f` prints each line the task writes (the delay from the task's write to the line's arrival is
  measured and printed, not asserted: the machine is shared) and ends when the task ends;
- `tessera run` streams the output while its task runs, and SIGTERM kills its task and tears it down;
- paths that leave the sandbox, symlinks and special files are refused, by the agent and through the
  master, with their status codes; bad ranges too; unknown tasks, collected sandboxes and agents that
  are gone say so;
- an agent restarted under a following `logs -f` breaks it only for the agent's restart: the follow
  re-dials the agent's new address and goes on where it stopped, no line lost or repeated.

Every process a test starts is killed by PID at its end (the cluster's, and the CLI processes here)."""

from __future__ import annotations

import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tessera.v1 import common_pb2, files_pb2, files_pb2_grpc, operator_pb2
from tests.support.cluster import AgentProc, LocalCluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TESSERA = [sys.executable, "-m", "tessera.control_plane.cli.main"]
FAST_MASTER = ["--allocation-interval", "0.2"]
# The shared cluster's agent is restarted under a running task (the last test but one): an agent away for
# longer than --agent-timeout is unreachable, its task LOST for `tessera run` (not partition-aware), and
# killed when the agent is back. A restart took 10-25 s on a loaded machine: the timeout must outlast it.
PATIENT_MASTER = [*FAST_MASTER, "--agent-timeout", "120"]


class Procs:
    """The CLI processes of a test, killed by PID when it ends."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.started.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


class Lines:
    """A process's stdout line by line, each with the time it arrived (read by a thread)."""

    def __init__(self, stream: Any) -> None:
        self.queue: queue.Queue[tuple[bytes, float] | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for line in iter(stream.readline, b""):
            self.queue.put((line, time.time()))
        self.queue.put(None)

    def next(self, timeout: float = 30.0) -> tuple[bytes, float] | None:
        return self.queue.get(timeout=timeout)

    def rest(self, timeout: float = 60.0) -> list[bytes]:
        out = []
        while (item := self.next(timeout)) is not None:
            out.append(item[0])
        return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("files")
    with LocalCluster(root, n=1) as c:
        c.master_flags = PATIENT_MASTER
        c.start_all()
        c.leader()
        c.add_agent("cpus:8;mem:4096")
        c.wait_agents(1)
        yield c


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    p.kill_all()


def masters(c: LocalCluster) -> list[str]:
    return ["--masters", ",".join(c.grpc_addresses())]


def tessera(c: LocalCluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TESSERA, *masters(c), *args], capture_output=True, text=True, timeout=timeout)


def state(c: LocalCluster) -> operator_pb2.GetStateResponse:
    client = c.client()
    try:
        return client.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True))
    finally:
        client.close()


def task_of(c: LocalCluster, name: str, running: bool = True) -> operator_pb2.TaskView:
    """The task of the `tessera run --name NAME` framework, once it runs."""
    def find() -> operator_pb2.TaskView | None:
        st = state(c)
        ids = {f.framework_id for f in st.frameworks if f.info.name == name}
        return next((t for t in st.tasks if t.task.framework_id in ids
                     and (not running or t.state == common_pb2.TASK_RUNNING)), None)
    return wait_for(find, timeout=60, what=f"the task of {name} to run")


def run(procs: Procs, c: LocalCluster, name: str, command: str) -> tuple[subprocess.Popen[bytes], str]:
    """`tessera run --name NAME -- COMMAND` in the background; (the process, FRAMEWORK_ID/TASK_ID) once it runs."""
    proc = procs.start([*TESSERA, "run", *masters(c), "--name", name, "--", command])
    view = task_of(c, name)
    return proc, f"{view.task.framework_id}/{view.task.task_id}"


def agent_stub(c: LocalCluster) -> files_pb2_grpc.FilesStub:
    address = state(c).agents[0].info.files_address
    return files_pb2_grpc.FilesStub(grpc.insecure_channel(address))


def test_logs_follow_prints_each_line_as_written_and_ends_when_the_task_ends(cluster: LocalCluster,
                                                                            procs: Procs) -> None:
    # The task writes a line every 0.25 s until the test puts `stop` in its sandbox (once 20 lines are in
    # and some were written while the follow was on): on a loaded machine a fixed 20 lines were all
    # written before `logs -f` had started, and the follow then had nothing to follow.
    command = ('i=0; while [ ! -f "$TESSERA_SANDBOX/stop" ] && [ $i -lt 2000 ]; do i=$((i+1)); '
               'echo "line $i $(date +%s.%N)"; sleep 0.25; done')
    _, task = run(procs, cluster, "follow-me", command)
    [sandbox] = cluster.agents[0].data_dir.glob(f"sandboxes/*/{task.split('/', 1)[1]}/sandbox")
    logs = procs.start([*TESSERA, *masters(cluster), "logs", "-f", task])
    lines = Lines(logs.stdout)
    got, delays = [], []
    following_since = None
    while (item := lines.next()) is not None:
        line, arrived = item
        got.append(line)
        _, number, written = line.split()
        following_since = following_since or arrived
        if float(written) > following_since:  # written while the follow was on (not the backlog it began with)
            delays.append(arrived - float(written))
        if len(got) >= 20 and len(delays) >= 3:
            (sandbox / "stop").touch()
    assert logs.wait(timeout=60) == 0, logs.stderr.read() if logs.stderr else ""
    numbers = [int(line.split()[1]) for line in got]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 20
    assert numbers[-1] == len((sandbox / "stdout").read_bytes().splitlines())  # it ended after the last line
    assert delays, "no line was written while the follow was on"
    print(f"\nlogs -f: {len(delays)} lines, delay from the task's write to the line's arrival: "
          f"p50 {statistics.median(delays) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms (not asserted)")


def test_tessera_run_streams_its_tasks_output_while_the_task_runs(cluster: LocalCluster, procs: Procs) -> None:
    proc = procs.start([*TESSERA, "run", *masters(cluster), "--name", "streamer", "--",
                        "echo first; echo to-stderr >&2; sleep 3; echo second"])
    lines = Lines(proc.stdout)
    item = lines.next(timeout=60)
    assert item is not None and item[0] == b"first\n"
    assert task_of(cluster, "streamer", running=False).state == common_pb2.TASK_RUNNING  # still running
    assert lines.rest() == [b"second\n"]
    assert proc.wait(timeout=30) == 0
    assert proc.stderr is not None and b"to-stderr\n" in proc.stderr.read()


def test_tessera_run_takes_sigterm_like_ctrl_c_killing_its_task_and_tearing_down(cluster: LocalCluster,
                                                                                   procs: Procs) -> None:
    proc, task = run(procs, cluster, "terminated", "sleep 600")
    framework_id, task_id = task.split("/")
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert proc.stderr is not None and b"killing the task" in proc.stderr.read()
    client = cluster.client()
    try:
        def killed_and_removed() -> bool:
            events = client.call(lambda s: s.ListEvents, operator_pb2.ListEventsRequest(
                limit=10_000, filter=operator_pb2.EventFilter(framework_id=framework_id))).events
            states = [json.loads(e.payload_json).get("status", {}).get("state") for e in events
                      if e.type == "TaskStatusUpdated" and e.task_id == task_id]
            return "TASK_KILLED" in states and any(e.type == "FrameworkRemoved" for e in events)
        wait_for(killed_and_removed, timeout=60, what="the task killed and its framework removed")
    finally:
        client.close()


def test_paths_out_of_the_sandbox_symlinks_and_special_files_are_refused(cluster: LocalCluster,
                                                                        procs: Procs) -> None:
    _, task = run(procs, cluster, "hostile", "ln -s /etc/passwd link; mkfifo fifo; mkdir -p d/e; echo ok > d/e/f; "
                                             "echo ready; sleep 600")
    wait_for(lambda: tessera(cluster, "sandbox", "cat", task, "d/e/f").stdout == "ok\n", timeout=30,
             what="the task's files")
    for via in ([], ["--via-master"]):
        for path, code, said in (("../../../etc/passwd", "INVALID_ARGUMENT", "'..' is not allowed"),
                                 ("/etc/passwd", "INVALID_ARGUMENT", "absolute path"),
                                 ("link", "PERMISSION_DENIED", "symlink"),
                                 ("fifo", "PERMISSION_DENIED", "special file"),
                                 ("d", "INVALID_ARGUMENT", "is a directory")):
            result = tessera(cluster, "sandbox", "cat", *via, task, path, timeout=30)
            assert result.returncode == 1 and f"{code}: " in result.stderr and said in result.stderr, (via, result)
        listing = json.loads(tessera(cluster, "sandbox", "ls", *via, "--json", task).stdout)
        assert {f["path"]: f["kind"] for f in listing["files"]} == {
            "d": "directory", "fifo": "special", "link": "symlink", "stderr": "file", "stdout": "file"}
    framework_id, task_id = task.split("/")
    stub = agent_stub(cluster)
    ref = files_pb2.SandboxRef(framework_id=framework_id, task_id=task_id)
    for request, said in ((files_pb2.ReadFileRequest(task=ref, path="stdout", offset=2**62), "past the end"),
                          (files_pb2.ReadFileRequest(task=ref, path="stdout", length=-1), "must not be negative"),
                          (files_pb2.ReadFileRequest(task=ref, path="stdout", length=1 << 30), "at most")):
        with pytest.raises(grpc.RpcError) as exc:
            stub.Read(request, timeout=10)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and said in (exc.value.details() or "")
    assert stub.Read(files_pb2.ReadFileRequest(task=ref, path="stdout"), timeout=10).data == b"ready\n"


def test_unknown_tasks_and_files_are_not_found(cluster: LocalCluster, procs: Procs) -> None:
    result = tessera(cluster, "logs", "no-such-task")
    assert result.returncode == 1 and "NOT_FOUND: no task no-such-task is known" in result.stderr
    result = tessera(cluster, "logs", "--via-master", "no-such-task")
    assert result.returncode == 1 and "NOT_FOUND" in result.stderr
    _, task = run(procs, cluster, "plain", "echo plain; sleep 600")
    result = tessera(cluster, "sandbox", "cat", task, "missing")
    assert result.returncode == 1 and "NOT_FOUND: missing: no such file in the sandbox" in result.stderr
    result = tessera(cluster, "logs", "--since", "ten minutes", task)
    assert result.returncode == 2 and "--since" in result.stderr


def test_logs_tail_since_via_master_and_get(cluster: LocalCluster, procs: Procs, tmp_path: Path) -> None:
    _, task = run(procs, cluster, "counter", "seq 1 1000; seq 1 5 >&2; sleep 600")
    wait_for(lambda: tessera(cluster, "logs", "--tail", "1", task).stdout == "1000\n", timeout=30,
             what="the whole output")
    assert tessera(cluster, "logs", "--tail", "3", task).stdout == "998\n999\n1000\n"
    assert tessera(cluster, "logs", "--via-master", "--stderr", task).stdout == "1\n2\n3\n4\n5\n"
    assert tessera(cluster, "logs", "--since", "1h", task).stdout.splitlines()[-1] == "1000"
    assert tessera(cluster, "logs", "--since", "0s", task).stdout == ""  # nothing since now
    got = tessera(cluster, "--json", "sandbox", "get", task, "stdout", "-o", str(tmp_path / "out.txt"))
    assert json.loads(got.stdout)["bytes"] == (tmp_path / "out.txt").stat().st_size
    assert (tmp_path / "out.txt").read_text().splitlines() == [str(i) for i in range(1, 1001)]


def test_an_agent_restart_breaks_a_following_logs_f_only_for_the_restart(cluster: LocalCluster,
                                                                         procs: Procs) -> None:
    # The task writes a numbered line every 0.2 s until the test puts `stop` in its sandbox: however slow
    # the machine (a restart under load took 10-25 s here), the agent restarts while the task writes and
    # the follow has lines to resume with. `--reconnect-for` is long for the same reason: what is checked
    # is that the follow resumes where it stopped, not how soon the agent is back.
    _, task = run(procs, cluster, "survivor",
                  'i=0; while [ ! -f "$TESSERA_SANDBOX/stop" ] && [ $i -lt 3000 ]; do i=$((i+1)); echo $i; '
                  'sleep 0.2; done')
    agent: AgentProc = cluster.agents[0]
    [sandbox] = agent.data_dir.glob(f"sandboxes/*/{task.split('/', 1)[1]}/sandbox")
    logs = procs.start([*TESSERA, *masters(cluster), "logs", "-f", "--reconnect-for", "240", task])
    lines = Lines(logs.stdout)
    got = []
    while len(got) < 5:
        item = lines.next()
        assert item is not None
        got.append(item[0])
    old_address = state(cluster).agents[0].info.files_address
    stopped = time.time()
    cluster.kill(agent, signal.SIGTERM)  # its tasks run on under their supervisors
    cluster.start_agent(agent)
    wait_for(lambda: (a := state(cluster).agents[0]).connected and a.info.files_address != old_address, 120,
             what="the agent re-registered with a new files address")
    written = len((sandbox / "stdout").read_bytes().splitlines())  # on disk once the agent is back
    arrivals = [stopped]
    while int(got[-1]) <= written:  # the follow goes on past what was written before the agent was back
        item = lines.next(timeout=120)
        assert item is not None, f"logs -f ended while the task still wrote: {logs.wait(timeout=60)}, " + (
            logs.stderr.read().decode() if logs.stderr else "")
        got.append(item[0])
        arrivals.append(item[1])
    (sandbox / "stop").write_text("")
    while (item := lines.next(timeout=60)) is not None:
        got.append(item[0])
        arrivals.append(item[1])
    gap = max(b - a for a, b in zip(arrivals, arrivals[1:], strict=False))  # the break: lines come every 0.2 s
    assert logs.wait(timeout=60) == 0
    numbers = [int(x) for x in got]
    assert numbers == list(range(1, len(numbers) + 1)), "a line was lost or repeated across the restart"
    assert numbers[-1] == len((sandbox / "stdout").read_bytes().splitlines())  # through the last line
    new_address = state(cluster).agents[0].info.files_address
    err = logs.stderr.read().decode() if logs.stderr else ""
    assert new_address != old_address and "re-dialling" in err, err
    print(f"\nagent restart under logs -f: the longest pause between two lines was {gap:.1f} s (the task writes "
          f"one every 0.2 s; the agent moved from {old_address} to {new_address}; not asserted)")


def test_a_collected_sandbox_and_a_gone_agent_say_so(tmp_path: Path, procs: Procs) -> None:
    with LocalCluster(tmp_path, n=1) as c:
        c.master_flags = FAST_MASTER
        c.start_all()
        c.leader(timeout=60)  # 20 s was too short on a loaded machine
        agent = c.add_agent("cpus:4;mem:1024", flags=("--sandbox-gc-delay", "0"))
        c.wait_agents(1)
        proc = procs.start([*TESSERA, "run", *masters(c), "--name", "short", "--", "echo short-lived"])
        assert proc.wait(timeout=120) == 0
        client = c.client()  # the state may have forgotten the finished task: its launch is in the event log
        try:
            events = client.call(lambda s: s.ListEvents, operator_pb2.ListEventsRequest(
                limit=1000, filter=operator_pb2.EventFilter(types=["TaskLaunched"]))).events
        finally:
            client.close()
        task = f"{events[-1].framework_id}/{events[-1].task_id}"

        def collected() -> str:
            result = tessera(c, "sandbox", "ls", task)
            return result.stderr if "was collected" in result.stderr else ""

        said = wait_for(collected, timeout=60, what="the sandbox to be collected")
        assert said.startswith("tessera: NOT_FOUND: the sandbox of task") and "--sandbox-gc-delay" in said
        via = tessera(c, "sandbox", "ls", "--via-master", task)
        assert via.returncode == 1 and "was collected" in via.stderr
        agent_id = state(c).agents[0].agent_id
        c.kill(agent, signal.SIGKILL)
        for via_master in ([], ["--via-master"]):
            result = tessera(c, "logs", *via_master, task, timeout=60)
            assert result.returncode == 1 and "UNAVAILABLE" in result.stderr and agent_id in result.stderr, result
