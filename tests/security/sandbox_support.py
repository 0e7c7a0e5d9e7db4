"""Real processes for the sandbox tests: one `tessera master`, one `tessera agent`, and frameworks (SDK
schedulers in this process) that launch a list of tasks and record how each launch and each task ended.

Every wait is bounded; every process is killed by its PID at the end (tasks and supervisors too, since
they outlive their agent by design).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tessera.agent.executor.launcher import kill_tasks_in
from tessera.sdk.driver import SchedulerDriver
from tessera.sdk.errors import TesseraError
from tessera.sdk.scheduler import Scheduler
from tessera.sdk.types import DEFAULT_ROLE, Filters, FrameworkInfo, Offer, TaskInfo, TaskStatus
from tests.support.cluster import LocalCluster, kill_processes_under, spawn

MASTER_FLAGS = ["--agent-heartbeat-interval", "0.5", "--allocation-interval", "0.2"]


class Launches(Scheduler):
    """Launch each queued task on the next offer that fits; record refused launches and final statuses."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: list[TaskInfo] = []
        self.refused: dict[str, TesseraError] = {}  # task id -> why the master refused its launch
        self.final: dict[str, TaskStatus] = {}
        self.statuses: dict[str, list[TaskStatus]] = {}
        self.framework_id = ""
        self.changed = threading.Condition(self.lock)

    def submit(self, driver: SchedulerDriver, task: TaskInfo) -> None:
        with self.lock:
            self.queue.append(task)
        driver.revive()

    def subscribed(self, driver: SchedulerDriver, framework_id: str) -> None:
        with self.changed:
            self.framework_id = framework_id
            self.changed.notify_all()

    def offers(self, driver: SchedulerDriver, offers: list[Offer]) -> None:
        for offer in offers:
            while True:  # a refused launch leaves the offer ours: the next queued task may use it
                with self.lock:
                    task = next((t for t in self.queue if offer.fits(t.resources)), None)
                    if task is not None:
                        self.queue.remove(task)
                if task is None:
                    driver.decline([offer], Filters(0.2))
                    break
                try:
                    driver.launch(offer, [task])
                    break
                except TesseraError as exc:
                    with self.changed:
                        self.refused[task.task_id] = exc
                        self.changed.notify_all()

    def update(self, driver: SchedulerDriver, status: TaskStatus) -> None:
        with self.changed:
            self.statuses.setdefault(status.task_id, []).append(status)
            if status.is_terminal:
                self.final[status.task_id] = status
            self.changed.notify_all()

    def wait(self, predicate: object, timeout: float, what: str) -> None:
        with self.changed:
            if not self.changed.wait_for(predicate, timeout):  # type: ignore[arg-type]
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; statuses: "
                                     f"{ {k: [s.state.name for s in v] for k, v in self.statuses.items()} }, "
                                     f"refused: {self.refused}")

    def wait_final(self, task_id: str, timeout: float = 60.0) -> TaskStatus:
        self.wait(lambda: task_id in self.final, timeout, f"task {task_id} to end")
        return self.final[task_id]

    def wait_refused(self, task_id: str, timeout: float = 60.0) -> TesseraError:
        self.wait(lambda: task_id in self.refused, timeout, f"the launch of {task_id} to be refused")
        return self.refused[task_id]

    def wait_state(self, task_id: str, state: str, timeout: float = 60.0) -> None:
        self.wait(lambda: any(s.state.name == state for s in self.statuses.get(task_id, [])), timeout,
                  f"task {task_id} {state}")


@dataclass
class Tenant:
    name: str
    scheduler: Launches
    driver: SchedulerDriver

    @property
    def framework_id(self) -> str:
        return self.scheduler.framework_id

    def run(self, task: TaskInfo) -> None:
        self.scheduler.submit(self.driver, task)


@dataclass
class Cluster:
    master: LocalCluster
    agent_dir: Path
    agent_proc: subprocess.Popen[bytes] | None = None
    tenants: list[Tenant] = field(default_factory=list)

    @property
    def work_dir(self) -> Path:
        return self.agent_dir / "sandboxes"

    def tenant(self, name: str) -> Tenant:
        scheduler = Launches()
        framework = FrameworkInfo(name=name, roles=(DEFAULT_ROLE,), failover_timeout=60.0)
        driver = SchedulerDriver(scheduler, framework, self.master.grpc_addresses(), give_up_after=60.0)
        driver.start()
        tenant = Tenant(name, scheduler, driver)
        self.tenants.append(tenant)
        scheduler.wait(lambda: bool(scheduler.framework_id), 60, f"{name} to subscribe")
        return tenant

    def agent_log(self) -> str:
        path = self.agent_dir / "agent.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""


@contextmanager
def cluster(root: Path, gc_delay: float | None = None) -> Iterator[Cluster]:
    """One master, one agent (as root, like here), the agent's sandbox GC delay set through the
    environment when given."""
    with LocalCluster(root / "masters", n=1) as masters:
        masters.master_flags = MASTER_FLAGS
        masters.start_all()
        masters.leader(timeout=90)
        agent_dir = root / "agent"
        agent_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if gc_delay is not None:
            env["TESSERA_SANDBOX_GC_DELAY"] = str(gc_delay)
        cmd = [sys.executable, "-m", "tessera.control_plane.cli.main", "agent", "--masters",
               ",".join(masters.grpc_addresses()), "--data-dir", str(agent_dir),
               "--resources", "cpus:4;mem:2048;disk:2048", "--hostname", "sandbox-agent",
               "--heartbeat-interval", "0.5"]
        c = Cluster(masters, agent_dir)
        c.agent_proc = spawn(cmd, agent_dir / "agent.log", env)
        try:
            masters.wait_agents(1, timeout=60)
            yield c
        except BaseException:
            print("==== agent ====\n" + c.agent_log())
            raise
        finally:
            for tenant in c.tenants:
                tenant.driver.stop()
                tenant.driver.join(10)
            if c.agent_proc.poll() is None:
                c.agent_proc.kill()
                c.agent_proc.wait(timeout=10)
            if c.work_dir.exists():
                kill_tasks_in(c.work_dir)
            kill_processes_under(root)
