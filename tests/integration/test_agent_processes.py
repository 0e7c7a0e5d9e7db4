"""Real `tessera master` processes (LocalCluster) and real `tessera agent` processes on 127.0.0.1.

Tasks are launched by a small partition-aware framework built on the SDK (`tessera.sdk.run.OneShot`). What is
pinned here: the agent's registration is visible in the master's state; a `kill -9` of the agent leaves
its task running, and the restarted agent re-registers and reports the task's real exit status; SIGTERM
stops the agent but not its tasks; an agent that stops heartbeating (SIGSTOP) is marked unreachable and
comes back after SIGCONT; a leader failover moves the agent to the new leader.

Tasks wait for a `release` file in their sandbox instead of sleeping, so no test depends on timing.
Every wait has a timeout; every process is killed by its PID at the end.

The three masters are shared by the module's tests (starting them and electing a leader was most of
each test's time); each test has an agent of its own (own data directory and hostname, killed with
its tasks at the test's end) and looks only at its own agent and task, so none sees what another left.
The failover test, which kills the leader, starts it again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tessera.agent.executor.launcher import kill_tasks_in
from tessera.agent.executor.supervisor import read_json
from tessera.sdk.driver import SchedulerDriver
from tessera.sdk.errors import TesseraError
from tessera.sdk.run import OneShot
from tessera.sdk.types import DEFAULT_ROLE, Filters, FrameworkInfo, Offer, TaskStatus
from tessera.sdk.types import Resources as SdkResources
from tessera.sdk.types import TaskInfo as SdkTaskInfo
from tessera.v1 import common_pb2, operator_pb2
from tests.support.cluster import LocalCluster, MasterProc, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MASTER_FLAGS = ["--agent-timeout", "3", "--reregistration-timeout", "3", "--agent-heartbeat-interval", "0.5",
                "--allocation-interval", "0.2", "--insecure-dev"]
GATED = 'while [ ! -f "$TESSERA_SANDBOX/release" ]; do sleep 0.1; done; echo done; exit 7'


class AgentCluster(LocalCluster):
    """LocalCluster whose masters time agents out quickly (so SIGSTOP tests stay short)."""

    def start(self, m: MasterProc) -> None:
        assert not m.alive, f"{m.name} is already running"
        env = {k: v for k, v in os.environ.items() if k != "TESSERA_RAFT_PASSWORD"}
        if self.password:
            env["TESSERA_RAFT_PASSWORD"] = self.password
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", "tessera.control_plane.cli.main", "master", "--name", m.name, "--raft", m.raft,
               "--grpc", m.grpc, "--peers", ",".join(m.peers), "--data-dir", str(m.data_dir), *MASTER_FLAGS]
        with open(m.log_path, "ab") as log:
            m.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)


@dataclass
class AgentProcess:
    data_dir: Path
    masters: list[str]
    hostname: str = "agent-host-1"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "agent.log"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "tessera.control_plane.cli.main", "agent", "--masters", ",".join(self.masters),
               "--data-dir", str(self.data_dir), "--resources", "cpus:2;mem:1024;disk:2048",
               "--attributes", "rack:r1;zone:a", "--hostname", self.hostname, "--heartbeat-interval", "0.5"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill_everything(self) -> None:
        """The agent, then every task it left (through their supervisors, then directly)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        kill_tasks_in(self.data_dir / "sandboxes")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentCluster]:
    with AgentCluster(tmp_path_factory.mktemp("masters"), n=3) as c:
        c.start_all()
        try:
            c.leader(timeout=90)
        except TimeoutError:
            print(c.logs())  # shown by pytest with the failure
            raise
        yield c


@pytest.fixture
def agent_proc(cluster: AgentCluster, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    agent = AgentProcess(tmp_path / "agent", cluster.grpc_addresses(), hostname=f"agent-host-{uuid.uuid4().hex[:8]}")
    agent.start()
    try:
        yield agent
    finally:
        # Printed output is shown only for a failing test: the logs that explain it.
        print("==== agent ====\n" + agent.logs() + "\n" + cluster.logs())
        agent.kill_everything()


def state(cluster: LocalCluster) -> operator_pb2.GetStateResponse:
    """The leader's view: `consistent` makes a follower redirect, and only the leader knows which agents
    are connected (soft state)."""
    client = cluster.client(timeout=10)
    try:
        return client.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True))
    finally:
        client.close()


def the_agent(cluster: LocalCluster, hostname: str) -> operator_pb2.AgentView | None:
    agents = [a for a in state(cluster).agents if a.info.hostname == hostname]
    return agents[0] if agents else None


def connected_agent(cluster: LocalCluster, agent: AgentProcess, timeout: float = 60) -> operator_pb2.AgentView:
    def check() -> operator_pb2.AgentView | None:
        a = the_agent(cluster, agent.hostname)
        return a if a is not None and a.connected and a.state == common_pb2.AGENT_ACTIVE else None

    return wait_for(check, timeout, interval=0.2, what="the agent registered and connected")


@dataclass
class OneTask:
    """One task launched by a partition-aware framework (sdk's OneShot scheduler, in this process).

    Partition-aware: while the agent is away (killed, restarting), the master reports the task
    UNREACHABLE rather than LOST, so it can come back RUNNING when the agent re-registers; a framework
    that is not partition-aware loses its tasks as soon as the agent's stream breaks."""

    scheduler: OneShot
    driver: SchedulerDriver
    lines: list[str]
    task_id: str

    def wait_final(self, timeout: float = 60.0) -> TaskStatus:
        assert self.scheduler.done.wait(timeout), "the task did not end: " + "\n".join(self.lines)
        assert self.scheduler.final is not None, self.scheduler.failure
        return self.scheduler.final

    def close(self) -> None:
        self.driver.stop()
        self.driver.join(10)


class OneShotOn(OneShot):
    """OneShot on one agent: the module's masters outlive each test's agent, and an earlier test's agent
    may still be offered (its stream not yet ended) while this test's starts; the others are declined."""

    def __init__(self, hostname: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hostname = hostname

    def offers(self, driver: SchedulerDriver, offers: list[Offer]) -> None:
        others = [o for o in offers if o.hostname != self.hostname]
        if others:
            try:
                driver.decline(others, Filters(1.0))
            except TesseraError as exc:
                self.say(f"declining offers failed: {exc}")
        mine = [o for o in offers if o.hostname == self.hostname]
        if mine:
            super().offers(driver, mine)


def launch_one(cluster: LocalCluster, command: str, hostname: str) -> OneTask:
    lines: list[str] = []
    task = SdkTaskInfo(task_id=f"gated-{uuid.uuid4().hex[:8]}", resources=SdkResources.of(cpus=0.1, mem=32),
                       command=command)

    def say(line: str) -> None:
        lines.append(line)
        print(f"framework: {line}")  # shown with a failing test

    scheduler = OneShotOn(hostname, task, say)
    framework = FrameworkInfo(name="agent-test", roles=(DEFAULT_ROLE,), failover_timeout=60.0, partition_aware=True)
    driver = SchedulerDriver(scheduler, framework, cluster.grpc_addresses(), give_up_after=60.0)
    driver.start()
    return OneTask(scheduler, driver, lines, task.task_id)


def running_task(cluster: LocalCluster, run: OneTask, timeout: float = 60) -> operator_pb2.TaskView:
    def check() -> operator_pb2.TaskView | None:
        tasks = [t for t in state(cluster).tasks if t.state == common_pb2.TASK_RUNNING
                 and t.task.task_id == run.task_id]
        return tasks[0] if tasks else None

    return wait_for(check, timeout, interval=0.2, what="a RUNNING task")


def sandbox_of(agent: AgentProcess, task: operator_pb2.TaskView) -> Path:
    [sandbox] = list(agent.data_dir.glob(f"sandboxes/*/{task.task.task_id}"))
    return sandbox


def test_registration_is_visible_in_the_masters_state(cluster: AgentCluster, agent_proc: AgentProcess) -> None:
    view = connected_agent(cluster, agent_proc)
    assert view.agent_id
    scalars = {r.name: r.scalar for r in view.info.resources if not r.ranges}
    assert scalars["cpus"] == 2 and scalars["mem"] == 1024 and scalars["disk"] == 2048
    ports = [r for r in view.info.resources if r.name == "ports"]
    assert [(x.begin, x.end) for x in ports[0].ranges] == [(31000, 32000)]
    assert {(a.key, a.value) for a in view.info.attributes} == {("rack", "r1"), ("zone", "a")}
    assert view.info.isolator in ("cgroups_v2", "cgroups_v1", "rlimits")
    from tessera.agent.checkpoint import Checkpoint

    def on_disk() -> str:
        cp = Checkpoint.open(agent_proc.data_dir / "agent.db")
        try:
            return cp.agent_id
        finally:
            cp.close()

    # the id the master minted reaches the agent's disk (the master shows the session as soon as it
    # answers; the agent writes the id when it reads that answer)
    wait_for(lambda: on_disk() == view.agent_id, timeout=10, what="the agent id on the agent's disk")


def task_view(cluster: LocalCluster, task_id: str) -> operator_pb2.TaskView | None:
    return next((t for t in state(cluster).tasks if t.task.task_id == task_id), None)


def fork_server_of(agent: AgentProcess) -> psutil.Process:
    """The agent's supervisor fork server (started with the agent)."""
    assert agent.proc is not None

    def find() -> psutil.Process | None:
        for child in psutil.Process(agent.proc.pid).children():  # type: ignore[union-attr]
            try:
                if "tessera.agent.executor.forkserver" in " ".join(child.cmdline()):
                    return child
            except psutil.Error:
                continue
        return None

    return wait_for(find, 20, what="the agent's fork server")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("killed", ["agent", "agent and fork server"])
def test_kill_9_of_the_agent_leaves_the_task_running_and_its_exit_is_reported_after_restart(
        cluster: AgentCluster, agent_proc: AgentProcess, killed: str) -> None:
    first = connected_agent(cluster, agent_proc)
    run = launch_one(cluster, GATED, agent_proc.hostname)
    try:
        task = running_task(cluster, run)
        sandbox = sandbox_of(agent_proc, task)
        task_pid = int(wait_for(lambda: (read_json(sandbox / "task.json") or {}).get("task_pid"), 20,
                                what="task.json"))
        supervisor_pid = int((read_json(sandbox / "supervisor.json") or {})["supervisor_pid"])
        server = fork_server_of(agent_proc)
        assert psutil.Process(supervisor_pid).ppid() == server.pid  # forked by it, in a session of its own
        assert os.getsid(supervisor_pid) == supervisor_pid and os.getsid(task_pid) == task_pid
        agent_proc.signal(signal.SIGKILL)
        agent_proc.wait()
        if killed == "agent and fork server":
            server.kill()
        server.wait(timeout=20)  # it ends with its agent (end of file on its stdin) if not killed
        assert alive(task_pid), "the task died with its agent"
        assert alive(supervisor_pid), "the supervisor died with its agent or fork server"
        agent_proc.start()
        again = connected_agent(cluster, agent_proc)
        assert fork_server_of(agent_proc).pid != server.pid  # the new agent has a new fork server
        assert again.agent_id == first.agent_id  # re-registered, not registered anew
        # Whatever the master concluded while the agent was away, the re-registration says RUNNING.
        wait_for(lambda: (v := task_view(cluster, task.task.task_id)) is not None
                 and v.state == common_pb2.TASK_RUNNING, 30, interval=0.2, what="the task RUNNING again")
        (sandbox / "sandbox" / "release").write_text("go")  # the task's own directory, beside the control files
        final = run.wait_final()
        assert final.state.name == "TASK_FAILED" and final.exit_code == 7, run.lines
        assert final.agent_id == first.agent_id
        # The master recorded the agent's own update (not a status it made up).
        leader = cluster.leader()

        def recorded() -> dict[str, object] | None:
            for e in leader.list_events():
                if e.type == "TaskStatusUpdated" and e.task_id == task.task.task_id:
                    status = json.loads(e.payload_json)["status"]
                    if status["state"] == "TASK_FAILED":
                        return status
            return None

        status = wait_for(recorded, 30, interval=0.2, what="TaskStatusUpdated(TASK_FAILED) in the event log")
        assert status["exit_code"] == 7 and status["source"] == "SOURCE_EXECUTOR"
        assert status["data"] == "done\n"  # the tail of stdout rides on the terminal status
    finally:
        run.close()


def test_sigterm_stops_the_agent_but_not_its_task(cluster: AgentCluster, agent_proc: AgentProcess) -> None:
    connected_agent(cluster, agent_proc)
    run = launch_one(cluster, GATED, agent_proc.hostname)
    try:
        task = running_task(cluster, run)
        sandbox = sandbox_of(agent_proc, task)
        task_pid = int(wait_for(lambda: (read_json(sandbox / "task.json") or {}).get("task_pid"), 20,
                                what="task.json"))
        agent_proc.signal(signal.SIGTERM)
        assert agent_proc.wait() == 0
        assert psutil.pid_exists(task_pid) and psutil.Process(task_pid).status() != psutil.STATUS_ZOMBIE
        assert "tasks keep running" in agent_proc.logs()
        agent_proc.start()
        connected_agent(cluster, agent_proc)
        (sandbox / "sandbox" / "release").write_text("go")  # the task's own directory, beside the control files
        final = run.wait_final()
        assert final.exit_code == 7, run.lines
    finally:
        run.close()


def test_a_stopped_agent_becomes_unreachable_and_recovers_after_sigcont(
        cluster: AgentCluster, agent_proc: AgentProcess) -> None:
    first = connected_agent(cluster, agent_proc)
    agent_proc.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: (a := the_agent(cluster, agent_proc.hostname)) is not None and a.state == common_pb2.AGENT_UNREACHABLE, 60,
                 interval=0.2, what="the agent marked unreachable")
    finally:
        agent_proc.signal(signal.SIGCONT)
    back = connected_agent(cluster, agent_proc)
    assert back.agent_id == first.agent_id


def test_leader_failover_moves_the_agent_to_the_new_leader(cluster: AgentCluster, agent_proc: AgentProcess) -> None:
    first = connected_agent(cluster, agent_proc)
    old = cluster.leader()
    cluster.kill(old, signal.SIGKILL)
    new = wait_for(lambda: (m := cluster.leader(timeout=30)) is not old and m, 60, what="a new leader")
    assert new is not old

    def on_new_leader() -> bool:
        a = the_agent(cluster, agent_proc.hostname)
        return a is not None and a.connected and a.agent_id == first.agent_id and a.state == common_pb2.AGENT_ACTIVE

    wait_for(on_new_leader, 60, interval=0.2, what="the agent re-registered with the new leader")
    cluster.start(old)  # the masters are the module's: whole again for whatever runs next
