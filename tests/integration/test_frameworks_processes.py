"""Two-level scheduling with real processes: `tessera master` x3, `tessera agent` processes that run real
tasks, and frameworks built on the SDK (the example batch runner and service keeper as processes, and
small in-test schedulers on the blocking driver)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tessera.sdk import Filters, FrameworkInfo, Resources, Scheduler, SchedulerDriver, TaskInfo
from tessera.v1 import common_pb2, operator_pb2
from tests.support.cluster import LocalCluster, MasterProc, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FAST_MASTER = ["--allocation-interval", "0.2", "--agent-timeout", "5", "--reregistration-timeout", "5",
               "--framework-reconnect-timeout", "5"]


def cluster_with_agents(tmp_path: Path, agents: list[tuple[str, str]]) -> LocalCluster:
    cluster = LocalCluster(tmp_path, n=3)
    cluster.master_flags = FAST_MASTER
    cluster.start_all()
    cluster.leader()
    for resources, attributes in agents:
        cluster.add_agent(resources, attributes)
    cluster.wait_agents(len(agents))
    return cluster


def state(cluster: LocalCluster) -> operator_pb2.GetStateResponse:
    client = cluster.client()
    try:
        return client.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True))
    finally:
        client.close()


def events_once(master: MasterProc, done: Callable[[list[operator_pb2.EventRecord]], bool],
                timeout: float = 30.0) -> list[operator_pb2.EventRecord]:
    """`master`'s event log once `done` holds for it, or as it is at the timeout (the caller's assertions
    then say what is missing): a master, even the leader, stores what it applied a moment later."""
    deadline = time.monotonic() + timeout
    while True:
        events = master.list_events()
        if done(events) or time.monotonic() >= deadline:
            return events
        time.sleep(0.2)


def run_example(module: str, cluster: LocalCluster, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", module, "--masters", ",".join(cluster.grpc_addresses()), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen[str], cluster: LocalCluster, timeout: float) -> tuple[str, str]:
    """The example's output once it exits; killed, with the cluster's logs in the failure, if it does not."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"{' '.join(map(str, proc.args))} did not finish:\n{out}\n{err[-6000:]}\n"
                             f"{cluster.logs()}") from None


def test_batch_runner_completes_100_tasks(tmp_path: Path) -> None:
    with cluster_with_agents(tmp_path, [("cpus:4;mem:2048", ""), ("cpus:4;mem:2048", "")]) as cluster:
        proc = run_example("tessera.sdk.examples.batch", cluster, "--command", "true", "--count", "100",
                           "--cpus", "0.1", "--mem", "16", "--give-up-after", "120")
        out, err = finish(proc, cluster, 180)
        assert proc.returncode == 0, f"{out}\n{err}\n{cluster.logs()}"
        assert "100 succeeded, 0 failed" in out
        tasks = state(cluster).tasks
        # every task finished and was acknowledged (acknowledged terminal tasks leave the live table)
        assert all(t.state == common_pb2.TASK_FINISHED for t in tasks)
        launched = events_once(cluster.masters[0], lambda ev: sum(1 for e in ev if e.type == "TaskLaunched") >= 100)
        assert sum(1 for e in launched if e.type == "TaskLaunched") == 100


class Greedy(Scheduler):
    """Launches one long task per offer (a small bite, so weighted DRF decides who grows), declines the
    rest briefly so the allocator re-offers it at once."""

    def __init__(self, prefix: str, cpus: float, go: threading.Event | None = None) -> None:
        self.prefix = prefix
        self.need = Resources.of(cpus=cpus, mem=16)
        self.count = 0
        self.lock = threading.Lock()
        self.go = go  # until set, every offer is declined briefly (so several frameworks start together)

    def offers(self, driver, offers) -> None:  # type: ignore[no-untyped-def]
        for offer in offers:
            if (self.go is None or self.go.is_set()) and offer.fits(self.need):
                with self.lock:
                    self.count += 1
                    task_id = f"{self.prefix}-{self.count}"
                driver.launch(offer, [TaskInfo(task_id=task_id, resources=self.need, command="sleep 120")])
            else:
                driver.decline([offer], Filters(refuse_seconds=0.05))


def cpus_by_role(st: operator_pb2.GetStateResponse) -> Counter[str]:
    roles = {f.framework_id: f.info.roles[0] for f in st.frameworks}
    used: Counter[str] = Counter()
    for t in st.tasks:
        if t.state in (common_pb2.TASK_STAGING, common_pb2.TASK_STARTING, common_pb2.TASK_RUNNING):
            used[roles[t.task.framework_id]] += sum(r.scalar for r in t.task.resources if r.name == "cpus")
    return used


def test_two_roles_with_weights_1_and_3_converge_to_a_1_to_3_cpu_split(tmp_path: Path) -> None:
    with cluster_with_agents(tmp_path, [("cpus:4;mem:4096", ""), ("cpus:4;mem:4096", "")]) as cluster:
        client = cluster.client()
        client.call(lambda s: s.SetWeight, operator_pb2.SetWeightRequest(role="light", weight=1.0))
        client.call(lambda s: s.SetWeight, operator_pb2.SetWeightRequest(role="heavy", weight=3.0))
        client.close()
        masters = cluster.grpc_addresses()
        go = threading.Event()  # the race starts when both are subscribed, not when the first one is
        drivers = [
            SchedulerDriver(Greedy("light", 0.25, go), FrameworkInfo(name="light", roles=("light",)), masters),
            SchedulerDriver(Greedy("heavy", 0.25, go), FrameworkInfo(name="heavy", roles=("heavy",)), masters),
        ]
        for d in drivers:
            d.start()
        try:
            wait_for(lambda: {f.info.name for f in state(cluster).frameworks} >= {"light", "heavy"}, 60,
                     interval=0.2, what="both frameworks subscribed")
            go.set()
            wait_for(lambda: sum(cpus_by_role(state(cluster)).values()) >= 8.0 - 0.25, 90, interval=0.5,
                     what="the cluster to fill up")
            used = cpus_by_role(state(cluster))
        finally:
            for d in drivers:
                d.stop()
        total = used["light"] + used["heavy"]
        assert abs(used["heavy"] / total - 0.75) <= 0.075, used  # 1:3 within 10 %


class Recorder(Scheduler):
    def __init__(self) -> None:
        self.offers_seen: list[tuple[float, str]] = []
        self.declined_agent = ""
        self.declined_at = 0.0
        self.errors: list[str] = []

    def offers(self, driver, offers) -> None:  # type: ignore[no-untyped-def]
        now = time.monotonic()
        for offer in offers:
            self.offers_seen.append((now, offer.agent_id))
            try:
                if not self.declined_agent:
                    self.declined_agent, self.declined_at = offer.agent_id, now
                    driver.decline([offer], Filters(refuse_seconds=3.0))
                else:
                    driver.decline([offer], Filters(refuse_seconds=0.05))
            except Exception as exc:  # noqa: BLE001 - kept for the assertion message
                self.errors.append(f"decline of {offer.offer_id}: {exc!r}")


def test_declined_agent_is_not_reoffered_within_refuse_seconds(tmp_path: Path) -> None:
    with cluster_with_agents(tmp_path, [("cpus:2;mem:1024", ""), ("cpus:2;mem:1024", "")]) as cluster:
        rec = Recorder()
        driver = SchedulerDriver(rec, FrameworkInfo(name="decliner"), cluster.grpc_addresses())
        driver.start()
        try:
            wait_for(lambda: rec.declined_agent, 20, what="a first offer")
            wait_for(lambda: any(a == rec.declined_agent and t > rec.declined_at for t, a in rec.offers_seen),
                     20, interval=0.1, what="the declined agent to be offered again after its filter")
        finally:
            driver.stop()
        again = min(t for t, a in rec.offers_seen if a == rec.declined_agent and t > rec.declined_at)
        assert again - rec.declined_at >= 3.0
        # the other agent kept being offered meanwhile
        assert any(a != rec.declined_agent and rec.declined_at < t < rec.declined_at + 3.0
                   for t, a in rec.offers_seen), (rec.offers_seen, rec.declined_at, rec.errors, cluster.logs())


def keeper_tasks(cluster: LocalCluster, framework_id: str) -> dict[str, int]:
    return {t.task.task_id: t.state for t in state(cluster).tasks if t.task.framework_id == framework_id}


def start_keeper(cluster: LocalCluster, tmp: Path, *extra: str) -> subprocess.Popen[str]:
    return run_example("tessera.sdk.examples.service", cluster, "--command", "sleep 300", "--instances", "2",
                       "--cpus", "0.1", "--mem", "16", *extra)


def framework_id_of(cluster: LocalCluster, name: str) -> str:
    return wait_for(lambda: next((f.framework_id for f in state(cluster).frameworks
                                  if f.info.name == name and f.state == common_pb2.FRAMEWORK_CONNECTED), ""),
                    20, what=f"framework {name}")


def kill_task_process(cluster: LocalCluster, task_id: str) -> None:
    """SIGKILL the process of `task_id` (found by its sandbox directory) on the agent's machine."""
    import psutil

    for proc in psutil.process_iter(["pid", "cwd", "cmdline"]):
        try:
            if proc.info["cwd"] and proc.info["cwd"].endswith(f"/{task_id}/sandbox") and "sleep" in " ".join(
                    proc.info["cmdline"] or []):
                proc.kill()
                return
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    raise AssertionError(f"no process found for task {task_id}")


def test_framework_failover_keeps_its_tasks_and_past_the_timeout_they_are_killed(tmp_path: Path) -> None:
    with cluster_with_agents(tmp_path, [("cpus:2;mem:1024", "")]) as cluster:
        first = start_keeper(cluster, tmp_path, "--name", "keeper", "--failover-timeout", "30")
        try:
            fid = framework_id_of(cluster, "keeper")
            wait_for(lambda: list(keeper_tasks(cluster, fid).values()).count(common_pb2.TASK_RUNNING) == 2, 30,
                     what="2 running instances")
            before = keeper_tasks(cluster, fid)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        # restarted with the same id inside the failover timeout: same tasks, still running, updates flow
        second = start_keeper(cluster, tmp_path, "--name", "keeper", "--failover-timeout", "3",
                              "--framework-id", fid)
        try:
            wait_for(lambda: any(f.framework_id == fid and f.state == common_pb2.FRAMEWORK_CONNECTED
                                 for f in state(cluster).frameworks), 20, what="resubscription")
            assert keeper_tasks(cluster, fid) == before
            # updates reach the failed-over framework: end one instance's process on the agent; the
            # keeper is told (and acknowledges) and starts a replacement
            victim = sorted(before)[0]
            kill_task_process(cluster, victim)
            try:
                # the victim leaves the state once the keeper has acknowledged its terminal update
                wait_for(lambda: victim not in (tasks := keeper_tasks(cluster, fid)) and sum(
                    1 for s in tasks.values() if s == common_pb2.TASK_RUNNING) == 2,
                         30, what="the keeper to replace the failed instance and acknowledge its end")
            except TimeoutError:
                print(keeper_tasks(cluster, fid), second.poll())
                second.kill()
                print(second.communicate(timeout=5))
                print(cluster.logs())
                raise
            events = events_once(cluster.masters[0], lambda ev: any(
                e.type == "TaskStatusAcknowledged" and e.task_id == victim for e in ev))
            assert any(e.type == "TaskStatusAcknowledged" and e.task_id == victim for e in events)
            before = keeper_tasks(cluster, fid)
        finally:
            second.send_signal(signal.SIGKILL)
            second.wait(10)
        # past the (new, 3 s) failover timeout the framework is removed and its tasks killed
        wait_for(lambda: all(s == common_pb2.TASK_KILLED for s in keeper_tasks(cluster, fid).values())
                 or not keeper_tasks(cluster, fid), 40, interval=0.5, what="tasks killed after the timeout")
        def killed_tasks(events: list[operator_pb2.EventRecord]) -> set[str]:
            return {e.task_id for e in events if e.type == "TaskStatusUpdated" and e.framework_id == fid
                    and '"TASK_KILLED"' in e.payload_json}

        events = events_once(cluster.masters[0], lambda ev: killed_tasks(ev) >= set(before) and any(
            e.type == "FrameworkRemoved" and e.framework_id == fid for e in ev))
        assert any(e.type == "FrameworkRemoved" and e.framework_id == fid for e in events)
        assert killed_tasks(events) == set(before)


def test_batch_runner_finishes_when_the_leading_master_is_killed(tmp_path: Path) -> None:
    with cluster_with_agents(tmp_path, [("cpus:4;mem:2048", ""), ("cpus:4;mem:2048", "")]) as cluster:
        proc = run_example("tessera.sdk.examples.batch", cluster, "--command", "sleep 0.3", "--count", "60",
                           "--cpus", "0.25", "--mem", "16", "--give-up-after", "120", "--verbose")
        leader = cluster.leader()
        wait_for(lambda: sum(1 for e in leader.list_events() if e.type == "TaskLaunched") >= 10, 60,
                 what="the batch to be under way")
        cluster.kill(leader, signal.SIGKILL)
        out, err = finish(proc, cluster, 120)
        assert proc.returncode == 0, f"{out}\n{err}\n{cluster.logs()}"
        assert "60 succeeded, 0 failed" in out
        survivor = next(m for m in cluster.masters if m.alive)

        def tally(events: list[operator_pb2.EventRecord]) -> tuple[set[str], set[str], set[str]]:
            finished = {e.task_id for e in events
                        if e.type == "TaskStatusUpdated" and '"TASK_FINISHED"' in e.payload_json}
            launched = {e.task_id for e in events if e.type == "TaskLaunched"}
            ended = {e.task_id for e in events if e.type == "TaskStatusUpdated" and any(
                f'"{s}"' in e.payload_json for s in ("TASK_FINISHED", "TASK_FAILED", "TASK_LOST", "TASK_KILLED",
                                                      "TASK_DROPPED", "TASK_GONE", "TASK_ERROR"))}
            return finished, launched, ended

        def settled(events: list[operator_pb2.EventRecord]) -> bool:
            finished, launched, ended = tally(events)
            return len(finished) >= 60 and launched == ended

        finished, launched, ended = tally(events_once(survivor, settled))
        # every launched task is accounted for: finished, or ended otherwise and retried by the runner
        assert launched == ended
        assert len(finished) >= 60


def test_leader_killed_while_100_tasks_report_loses_no_terminal_update(tmp_path: Path) -> None:
    """kill -9 of the leading master while 100 real tasks report their status: every one of the 100
    terminal updates is in the event log exactly once (agents retry until a leader acknowledges; apply
    de-duplicates by uuid)."""
    with cluster_with_agents(tmp_path, [("cpus:4;mem:4096", ""), ("cpus:4;mem:4096", "")]) as cluster:
        proc = run_example("tessera.sdk.examples.batch", cluster, "--command", "sleep 3", "--count", "100",
                           "--cpus", "0.08", "--mem", "8", "--max-retries", "0", "--give-up-after", "120")
        leader = cluster.leader()
        wait_for(lambda: sum(1 for e in leader.list_events()
                             if e.type == "TaskStatusUpdated" and '"TASK_RUNNING"' in e.payload_json) >= 50,
                 120, interval=0.5, what="tasks running")
        cluster.kill(leader, signal.SIGKILL)
        out, err = finish(proc, cluster, 180)
        assert proc.returncode == 0, f"{out}\n{err}\n{cluster.logs()}"
        assert "100 succeeded, 0 failed" in out
        survivor = next(m for m in cluster.masters if m.alive)

        def terminal_updates(events: list[operator_pb2.EventRecord]) -> Counter[str]:
            return Counter(e.task_id for e in events
                           if e.type == "TaskStatusUpdated" and '"TASK_FINISHED"' in e.payload_json)

        terminal = terminal_updates(events_once(survivor, lambda ev: len(terminal_updates(ev)) >= 100))
        assert len(terminal) == 100 and set(terminal.values()) == {1}, terminal
