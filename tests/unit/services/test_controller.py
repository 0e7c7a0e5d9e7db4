"""The service framework's controller (`tessera.sdk.services.controller`) driven through the public SDK against
`FakeMaster`: no processes, one manual clock shared by the fake and the controller (`clock=`), and every
round of the controller run by the test (`poll()`, then `send_offers()`, then the status updates settled),
so what each round did is exact: scale up and down, an instance lost and replaced, one its agent killed for
failing its health check replaced at once, the restart backoff and its maximum, the placement constraints over
several agents, a rolling deployment within minimumHealthCapacity/maximumOverCapacity, a deployment that fails
at `failure_limit` and says why, and a standby controller taking the lease over without losing or doubling an
instance."""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from tessera.sdk import FrameworkInfo, Offer, SchedulerDriver, TaskInfo, TaskState, TaskStatus
from tessera.sdk.protocol import AcceptCall, KillCall
from tessera.sdk.services.app import parse_app
from tessera.sdk.services.controller import APPS, FRAMEWORK_NAME, READY_SECONDS, STATUS, ServiceController
from tessera.sdk.services.deploy import failure_limit
from tessera.sdk.testing import FakeMaster, StatusStep, TaskView

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
WAIT = 10.0  # bound of every wait
AGENT = "cpus:8;mem:4096;ports:[31000-31099]"
INFO = FrameworkInfo(name=FRAMEWORK_NAME, failover_timeout=600.0)


def web(instances: int = 3, cmd: str = "serve", **extra: Any) -> dict[str, Any]:
    return {"id": "web", "instances": instances, "cpus": 0.1, "mem": 32, "cmd": cmd, "backoffSeconds": 0,
            "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.5}, **extra}


HEALTH: dict[str, Any] = {"portDefinitions": [{"port": 0, "name": "http"}],
          "healthChecks": [{"protocol": "HTTP", "path": "/", "portIndex": 0, "intervalSeconds": 2,
                            "timeoutSeconds": 1}]}


def healthy_when_running(task: TaskInfo) -> list[TaskState | StatusStep]:
    """Tasks start and run; with a health check they report healthy too. A command with `fail` in it exits
    1 before it runs; one with `crash` exits 1 as soon as it runs (the agent reports TASK_RUNNING, then
    TASK_FAILED, as for a process that starts and exits at once); one with `sick` runs and never becomes
    healthy."""
    command = task.command if isinstance(task.command, str) else " ".join(task.command)
    if "fail" in command:
        return [TaskState.TASK_STARTING, StatusStep(TaskState.TASK_FAILED, exit_code=1, message="exited 1")]
    if "crash" in command:
        return [TaskState.TASK_STARTING, TaskState.TASK_RUNNING,
                StatusStep(TaskState.TASK_FAILED, exit_code=1, message="exited 1")]
    steps: list[TaskState | StatusStep] = [TaskState.TASK_STARTING, TaskState.TASK_RUNNING]
    if task.health_check is not None and "sick" not in command:
        steps.append(StatusStep(TaskState.TASK_RUNNING, healthy=True))
    return steps


def running_only(task: TaskInfo) -> list[TaskState | StatusStep]:
    """Tasks run; the test says when each becomes healthy."""
    return [TaskState.TASK_STARTING, TaskState.TASK_RUNNING]


class Observed(ServiceController):
    """The controller, telling the test when each callback has returned."""

    def __init__(self, fake: FakeMaster) -> None:
        super().__init__(clock=lambda: fake.now)
        self.cond = threading.Condition()
        self.done: list[str] = []

    def _returned(self, name: str) -> None:
        with self.cond:
            self.done.append(name)
            self.cond.notify_all()

    def count(self, name: str) -> int:
        with self.cond:
            return self.done.count(name)

    def wait(self, predicate: Callable[[], T], what: str) -> T:
        with self.cond:
            if not self.cond.wait_for(predicate, WAIT):
                raise TimeoutError(f"timed out waiting for {what}; callbacks so far: {self.done}")
            return predicate()

    def became_active(self, driver: SchedulerDriver, lease_term: int) -> None:
        super().became_active(driver, lease_term)
        self._returned("became_active")

    def standing_by(self, driver: SchedulerDriver, framework_id: str, lease_term: int) -> None:
        super().standing_by(driver, framework_id, lease_term)
        self._returned("standing_by")

    def deposed(self, driver: SchedulerDriver, lease_term: int) -> None:
        super().deposed(driver, lease_term)
        self._returned("deposed")

    def subscribed(self, driver: SchedulerDriver, framework_id: str) -> None:
        super().subscribed(driver, framework_id)
        self._returned("subscribed")

    def offers(self, driver: SchedulerDriver, offers: list[Offer]) -> None:
        super().offers(driver, offers)
        self._returned("offers")

    def update(self, driver: SchedulerDriver, status: TaskStatus) -> None:
        super().update(driver, status)
        self._returned("update")


class Instance:
    """One `tessera services` process: a controller and its standby-capable driver on the fake."""

    def __init__(self, fake: FakeMaster) -> None:
        self.fake = fake
        self.controller = Observed(fake)
        self.driver = SchedulerDriver(self.controller, INFO, fake.addresses, transport=fake.transport(), standby=True)
        self.driver.start()

    def wait_active(self) -> str:
        self.controller.wait(lambda: self.controller.count("became_active"), "the lease")
        return self.fake.wait_for(lambda: self.fake.framework().framework_id, what="the framework")


class Cluster:
    """A FakeMaster with agents and one active service controller, driven round by round."""

    def __init__(self, agents: list[tuple[str, dict[str, str]]] | None = None, behaviour: Any = healthy_when_running
                 ) -> None:
        self.fake = FakeMaster(auto_offer=False, behaviour=behaviour)
        self.agents = {}
        for hostname, attributes in agents or [("h1", {}), ("h2", {}), ("h3", {})]:
            self.agents[self.fake.add_agent(AGENT, hostname=hostname, attributes=attributes)] = hostname
        self.active = Instance(self.fake)
        self.framework_id = self.active.wait_active()

    @property
    def controller(self) -> Observed:
        return self.active.controller

    def apply(self, doc: dict[str, Any]) -> None:
        """What `tessera service apply` writes."""
        app = parse_app(doc)
        self.active.driver.kv.put(APPS + app.id, json.dumps(app.to_json(), sort_keys=True))

    def settle(self) -> None:
        """Wait until the controller has handled (and so acknowledged) every status update sent so far."""
        self.fake.wait_for(lambda: not self.fake.framework(self.framework_id).unacknowledged,
                           timeout=WAIT, what="every status update handled")

    def poll(self) -> None:
        self.settle()
        self.controller.poll()
        self.settle()

    def offer(self) -> list[Offer]:
        """Offer every agent's free resources once; returns the offers after the controller handled them."""
        handled = self.controller.count("offers")
        sent = self.fake.send_offers()
        if sent:
            self.controller.wait(lambda: self.controller.count("offers") > handled, "the offers handled")
            self.fake.wait_for(lambda: not self.fake.offers(), timeout=WAIT, what="the offers used or declined")
        self.settle()
        return sent

    def round(self) -> None:
        self.poll()
        self.offer()
        self.poll()

    def rounds_until(self, state: str, rounds: int = 10, check: Callable[[], None] = lambda: None) -> dict[str, Any]:
        """Rounds until the deployment is in `state` (at most `rounds`; `check` after each); the status record."""
        for _ in range(rounds):
            self.round()
            check()
            if self.status()["deployment"]["state"] == state:
                break
        return self.status()

    def take_over(self) -> None:
        """A standby instance starts, the active one stops, the standby takes the lease and is the active one."""
        standby = Instance(self.fake)
        standby.controller.wait(lambda: standby.controller.count("standing_by"), "the standby waiting")
        assert self.fake.framework(self.framework_id).standbys == 1
        self.stop()
        self.fake.wait_for(lambda: not self.fake.framework(self.framework_id).connected, timeout=WAIT,
                           what="the active stream ended")
        assert not standby.controller.count("became_active"), "the holder may come back within the takeover delay"
        self.fake.advance(self.fake.takeover_delay)
        assert standby.wait_active() == self.framework_id
        self.active = standby

    def live(self) -> list[TaskView]:
        return sorted((t for t in self.fake.tasks(self.framework_id).values() if t.state in LIVE),
                      key=lambda t: t.info.task_id)

    def launched(self) -> int:
        return sum(len(op.tasks) for call in self.fake.calls_of(AcceptCall) for op in call.operations)

    def status(self, app_id: str = "web") -> dict[str, Any]:
        """The status record the controller wrote in its key/value state."""
        record = self.fake.kv(self.framework_id).get(STATUS + app_id)
        assert record is not None, f"no status record of {app_id}"
        return dict(json.loads(record.value))

    def host_of(self, task: TaskView) -> str:
        return self.agents[task.agent_id]

    def stop(self) -> None:
        self.active.driver.stop()


LIVE = {TaskState.TASK_STAGING, TaskState.TASK_STARTING, TaskState.TASK_RUNNING}


def ready(task: TaskView) -> bool:
    """Running and, with a health check, healthy (its latest health report)."""
    if task.state is not TaskState.TASK_RUNNING:
        return False
    if task.info.health_check is None:
        return True
    health = [s.healthy for s in task.statuses if s.healthy is not None]
    return bool(health) and health[-1] is True


def version_of(task: TaskView) -> str:
    return str(task.info.env["TESSERA_APP_VERSION"])


@pytest.fixture()
def made() -> Iterator[list[Cluster]]:
    clusters: list[Cluster] = []
    yield clusters
    for c in clusters:
        c.stop()


@pytest.fixture()
def cluster(made: list[Cluster]) -> Cluster:
    c = Cluster()
    made.append(c)
    return c


# ---- scale ---------------------------------------------------------------------------------------------------
def test_a_scale_up_launches_only_the_missing_and_a_scale_down_kills_the_newest(cluster: Cluster) -> None:
    cluster.apply(web(3))
    cluster.round()
    first = {t.info.task_id for t in cluster.live()}
    assert len(first) == 3 and all(ready(t) for t in cluster.live())
    assert cluster.status()["deployment"]["state"] == "running", "no health check: done after READY_SECONDS"
    cluster.fake.advance(READY_SECONDS)
    cluster.poll()
    record = cluster.status()
    assert (record["wanted"], record["running"], record["healthy"], record["deployment"]["state"]) == (3, 3, 3, "done")

    cluster.fake.advance(10)  # the next ones are newer
    cluster.apply(web(5))  # a scale is no new version: nothing is replaced
    cluster.round()
    live = {t.info.task_id for t in cluster.live()}
    assert len(live) == 5 and first < live and cluster.launched() == 5
    assert not cluster.fake.calls_of(KillCall)
    cluster.fake.advance(READY_SECONDS)
    cluster.poll()
    assert cluster.status()["history"] == [] and cluster.status()["deployment"]["state"] == "done"

    cluster.apply(web(2))
    cluster.round()
    kept = {t.info.task_id for t in cluster.live()}
    assert len(kept) == 2 and kept < first, "the two newest and then one more are killed; the oldest stay"
    assert {c.task_id for c in cluster.fake.calls_of(KillCall)} == live - kept
    assert cluster.launched() == 5
    assert (cluster.status()["wanted"], cluster.status()["running"]) == (2, 2)


def test_a_lost_instance_is_replaced_on_another_agent(cluster: Cluster) -> None:
    cluster.apply(web(2, constraints=[["hostname", "UNIQUE"]]))
    cluster.round()
    before = cluster.live()
    assert sorted(cluster.host_of(t) for t in before) == ["h1", "h2"]
    lost = next(t for t in before if cluster.host_of(t) == "h1")
    cluster.fake.remove_agent(lost.agent_id)  # its task becomes TASK_LOST
    cluster.settle()
    assert cluster.fake.task(lost.info.task_id).state is TaskState.TASK_LOST
    cluster.round()
    after = cluster.live()
    assert len(after) == 2 and lost.info.task_id not in {t.info.task_id for t in after}
    assert sorted(cluster.host_of(t) for t in after) == ["h2", "h3"]
    assert lost.info.task_id not in {i["task_id"] for i in cluster.status()["instances"]}


# ---- restart backoff ---------------------------------------------------------------------------------------
def test_restarts_wait_the_backoff_which_grows_to_its_maximum(cluster: Cluster) -> None:
    # every instance exits 1 before it runs: delays 4, 8, then capped at 10
    cluster.apply(web(1, cmd="fail", backoffSeconds=4, backoffFactor=2, maxLaunchDelaySeconds=10))
    cluster.round()
    assert cluster.launched() == 1 and not cluster.live()
    for failures, delay in [(1, 4.0), (2, 8.0), (3, 10.0), (4, 10.0)]:
        assert cluster.status()["failures"] == failures
        failed_at = cluster.fake.now
        cluster.poll()
        assert cluster.offer(), "an agent is offered"
        assert cluster.launched() == failures, f"launched at once after failure {failures}, no backoff"
        cluster.fake.advance(delay - 1)  # past the decline filter, short of the backoff
        assert cluster.offer(), "an agent is offered again"
        assert cluster.launched() == failures, f"launched {delay - 1} s after failure {failures}: before its backoff"
        cluster.fake.advance(1)
        assert cluster.fake.now == failed_at + delay
        cluster.offer()
        assert cluster.launched() == failures + 1, f"not launched {delay} s after failure {failures}"
        cluster.poll()


def test_an_instance_that_stayed_ready_resets_the_backoff(made: list[Cluster]) -> None:
    c = Cluster(behaviour=running_only)
    made.append(c)
    c.apply(web(1, backoffSeconds=4, backoffFactor=2, maxLaunchDelaySeconds=10))
    for n in range(2):  # twice: the instance runs for READY_SECONDS, then fails
        c.round()
        (task,) = c.live()
        assert c.launched() == n + 1 and c.status()["failures"] == n, "a start alone ends no failures in a row"
        c.fake.advance(READY_SECONDS - 1)
        c.poll()
        assert c.status()["failures"] == n, "ready for less than READY_SECONDS ends no failures in a row"
        c.fake.advance(1)
        c.poll()
        assert c.status()["failures"] == 0, "an instance ready for READY_SECONDS ends the failures in a row"
        c.fake.update(task.info.task_id, TaskState.TASK_FAILED, exit_code=1)
        c.poll()
        assert c.status()["failures"] == 1, "a failure after a run is the first in a row"
        c.fake.advance(4)  # backoffSeconds: enough after the first failure in a row, not after a second
    c.offer()
    assert c.launched() == 3 and len(c.live()) == 1


def test_an_instance_its_agent_killed_for_being_unhealthy_is_replaced_at_once_with_no_deployment(
        cluster: Cluster) -> None:
    """The agent kills an instance that fails its health check (REASON_TASK_UNHEALTHY); the controller never
    kills it itself, and replaces it at the next round although the backoff is long: the other instances of
    the version have been ready for READY_SECONDS, which ends the failures in a row. No deployment starts
    or fails (the real-process test: tests/integration/test_services_unhealthy_processes.py)."""
    cluster.apply(web(3, backoffSeconds=60, **HEALTH))
    before = cluster.rounds_until("done")
    assert before["healthy"] == 3
    cluster.fake.advance(READY_SECONDS)
    cluster.poll()
    victim, *others = cluster.live()
    cluster.fake.update(victim.info.task_id, TaskState.TASK_RUNNING, healthy=False,
                        reason="REASON_TASK_HEALTH_CHECK_STATUS_UPDATED")
    cluster.poll()
    assert cluster.status()["healthy"] == 2 and not cluster.fake.calls_of(KillCall), "the agent kills, not the framework"
    cluster.fake.update(victim.info.task_id, TaskState.TASK_KILLING, healthy=False, reason="REASON_TASK_UNHEALTHY")
    cluster.fake.update(victim.info.task_id, TaskState.TASK_KILLED, healthy=False, reason="REASON_TASK_UNHEALTHY")
    after = cluster.rounds_until("done", rounds=3)
    live = cluster.live()
    assert cluster.launched() == 4 and len(live) == 3 and all(ready(t) for t in live), "replaced at once"
    assert {t.info.task_id for t in others} < {t.info.task_id for t in live}
    assert victim.info.task_id not in {t.info.task_id for t in live}
    assert not cluster.fake.calls_of(KillCall), "nothing else stopped"
    assert after["failures"] == 0 and after["history"] == before["history"], after
    assert after["deployment"]["version"] == before["deployment"]["version"] and after["healthy"] == 3


def test_an_instance_that_runs_and_exits_at_once_counts_as_a_failure_in_a_row(cluster: Cluster) -> None:
    # no health check: TASK_RUNNING then TASK_FAILED at once is a crash loop, not a run that resets the backoff
    cluster.apply(web(1, cmd="crash", backoffSeconds=4, backoffFactor=2, maxLaunchDelaySeconds=100))
    cluster.round()
    for failures in (1, 2, 3):
        assert cluster.status()["failures"] == failures
        cluster.fake.advance(4 * 2 ** (failures - 1))  # the backoff: 4, 8, 16
        cluster.round()
    assert cluster.launched() == 4


def test_a_new_version_that_crashes_as_it_starts_fails_its_deployment(cluster: Cluster) -> None:
    cluster.apply(web(3))
    cluster.round()
    old = {t.info.task_id for t in cluster.live()}
    cluster.fake.advance(READY_SECONDS)
    cluster.apply(web(3, cmd="crash"))
    record = cluster.rounds_until("failed")
    assert record["deployment"]["state"] == "failed", record
    assert "failed in a row" in record["deployment"]["reason"]
    assert {t.info.task_id for t in cluster.live()} <= old and len(cluster.live()) == 2


# ---- constraints -------------------------------------------------------------------------------------------
RACKS = [("h1", {"rack": "r1", "zone": "z1"}), ("h2", {"rack": "r1", "zone": "z2"}),
         ("h3", {"rack": "r2", "zone": "z1"}), ("h4", {"rack": "r3", "zone": "z9"})]


@pytest.mark.parametrize(("constraints", "instances", "hosts", "unplaced"), [
    ([["hostname", "UNIQUE"]], 5, {"h1": 1, "h2": 1, "h3": 1, "h4": 1}, "hostname UNIQUE"),
    ([["rack", "GROUP_BY", "3"]], 6, {"r1": 2, "r2": 2, "r3": 2}, ""),
    ([["zone", "LIKE", "z[12]"], ["hostname", "MAX_PER", "1"]], 4, {"h1": 1, "h2": 1, "h3": 1}, "zone LIKE z[12]"),
    ([["rack", "UNLIKE", "r1"], ["hostname", "UNIQUE"]], 3, {"h3": 1, "h4": 1}, "rack UNLIKE r1"),
    ([["rack", "MAX_PER", "2"]], 7, {"r1": 2, "r2": 2, "r3": 2}, "rack MAX_PER 2"),
], ids=["unique-hostname", "group-by-rack", "like-zone", "unlike-rack", "max-per-rack"])
def test_constraints_place_instances_over_the_offered_agents(made: list[Cluster], constraints: list[list[str]],
                                                             instances: int, hosts: dict[str, int],
                                                             unplaced: str) -> None:
    c = Cluster(RACKS)
    made.append(c)
    c.apply(web(instances, constraints=constraints))
    for _ in range(3):  # several offer rounds: what could be placed is, what could not stays unplaced
        c.round()
    by_rack = any(key.startswith("r") for key in hosts)
    attributes = dict(RACKS)
    placed = Counter(attributes[c.host_of(t)]["rack"] if by_rack else c.host_of(t) for t in c.live())
    assert dict(placed) == hosts
    record = c.status()
    assert record["waiting"] == instances - sum(hosts.values())
    assert unplaced in record["unplaced"] and bool(record["unplaced"]) == bool(unplaced)


# ---- rolling deployments -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("min_hc", "max_oc"), [(0.5, 0.5), (1.0, 0.25), (0.25, 0.0)])
def test_a_rolling_deployment_keeps_the_minimum_healthy_and_the_maximum_total(made: list[Cluster], min_hc: float,
                                                                           max_oc: float) -> None:
    c = Cluster(behaviour=running_only)
    made.append(c)
    strategy = {"minimumHealthCapacity": min_hc, "maximumOverCapacity": max_oc}
    c.apply(web(4, **HEALTH, upgradeStrategy=strategy))
    c.round()

    def make_healthy() -> None:
        for t in c.live():
            if t.state is TaskState.TASK_RUNNING and not ready(t):
                c.fake.update(t.info.task_id, TaskState.TASK_RUNNING, healthy=True)
        c.settle()

    make_healthy()
    c.poll()
    old = {t.info.task_id for t in c.live()}
    assert len(old) == 4 and c.status()["deployment"]["state"] == "done"
    c.apply(web(4, cmd="serve --v2", **HEALTH, upgradeStrategy=strategy))
    minimum, maximum = math.ceil(4 * min_hc), 4 + math.floor(4 * max_oc)
    readies, totals = [], []

    def observe() -> None:
        live = c.live()
        readies.append(sum(1 for t in live if ready(t)))
        totals.append(len(live))

    for _ in range(30):
        c.poll()
        observe()
        c.offer()
        observe()
        make_healthy()
        observe()
        c.poll()
        if c.status()["deployment"]["state"] == "done":
            break
    record = c.status()
    assert record["deployment"]["state"] == "done", record["deployment"]
    new = c.live()
    assert len(new) == 4 and not old & {t.info.task_id for t in new} and all(ready(t) for t in new)
    assert len({version_of(t) for t in new}) == 1
    assert record["history"][0]["state"] == "done"  # the first deployment, kept in the history
    no_room = minimum >= maximum  # Marathon's one step below the minimum when the bounds leave no move
    assert min(readies) >= minimum - (1 if no_room else 0), (readies, minimum)
    assert max(totals) <= maximum, (totals, maximum)
    # the minimum was used, not just respected; the maximum counts each instance asked to stop until its end
    # is seen, and the fake ends a killed task at once, so the live total seen here stays below it (the
    # planner's simulation in tests/unit/services/test_app_and_planning.py checks the maximum with kills that
    # take rounds to end)
    assert min(readies) == minimum - (1 if no_room else 0), (readies, totals)


def test_a_deployment_whose_instances_keep_failing_stops_at_the_failure_limit_and_says_why(cluster: Cluster) -> None:
    cluster.apply(web(3))
    cluster.round()
    old = {t.info.task_id for t in cluster.live()}
    assert len(old) == 3
    first = cluster.status()["version"]
    bad = web(3, cmd="fail")
    cluster.apply(bad)
    limit = failure_limit(parse_app(bad))

    def keeps_the_minimum() -> None:
        assert sum(1 for t in cluster.live() if ready(t)) >= 2, "below minimumHealthCapacity 0.5 of 3"

    record = cluster.rounds_until("failed", check=keeps_the_minimum)
    deployment = record["deployment"]
    assert deployment["state"] == "failed", deployment
    assert record["failures"] >= limit
    assert f"{record['failures']} instances of version" in deployment["reason"]
    assert "failed in a row" in deployment["reason"] and deployment["finished"] == cluster.fake.now
    assert record["version"] != first
    survivors = cluster.live()
    assert len(survivors) == 2 and {t.info.task_id for t in survivors} <= old, "the previous version keeps running"
    # stopped: no more launches, and the controller no longer asks for offers
    launched = cluster.launched()
    for _ in range(3):
        cluster.fake.advance(30)
        cluster.round()
    assert cluster.launched() == launched
    assert cluster.fake.framework(cluster.framework_id).suppressed_roles
    assert {t.info.task_id for t in cluster.live()} == {t.info.task_id for t in survivors}
    # a fixed version deploys again; the failed deployment stays in the history with its reason
    cluster.apply(web(3, cmd="serve --fixed"))
    record = cluster.rounds_until("done", check=lambda: cluster.fake.advance(READY_SECONDS))
    assert record["deployment"]["state"] == "done" and len(cluster.live()) == 3
    assert record["history"][0]["state"] == "failed" and "failed in a row" in record["history"][0]["reason"]


def test_without_a_health_check_a_new_instance_counts_ready_only_after_ready_seconds(made: list[Cluster]) -> None:
    # the agent reports a process that starts and exits at once TASK_RUNNING for a moment: a round that sees
    # that moment must not stop old instances for it (Kubernetes' minReadySeconds)
    c = Cluster(behaviour=running_only)
    made.append(c)
    c.apply(web(3))
    c.round()
    old = {t.info.task_id for t in c.live()}
    c.fake.advance(READY_SECONDS)
    c.apply(web(3, cmd="serve --v2"))
    c.round()  # one old instance stopped (3 -> 2 = the minimum), one new one launched and running: the one
    # being stopped counts in the maximum (4) until its end is seen
    new = {t.info.task_id for t in c.live()} - old
    assert len(new) == 1 and len(old & {t.info.task_id for t in c.live()}) == 2
    c.poll()
    assert len(old & {t.info.task_id for t in c.live()}) == 2, "old instances stopped for new ones just started"
    for task_id in new:  # they exit
        c.fake.update(task_id, TaskState.TASK_FAILED, exit_code=1)
    c.round()
    assert len(old & {t.info.task_id for t in c.live()}) == 2
    # new instances that stay up count once they have been ready for READY_SECONDS: the deployment goes on
    c.apply(web(3, cmd="serve --v3"))
    c.fake.advance(READY_SECONDS)
    record = c.rounds_until("done", rounds=20, check=lambda: c.fake.advance(READY_SECONDS))
    assert record["deployment"]["state"] == "done" and not old & {t.info.task_id for t in c.live()}


def test_an_instance_that_never_becomes_healthy_is_not_counted_ready(cluster: Cluster) -> None:
    cluster.apply(web(2, **HEALTH))
    cluster.round()
    old = {t.info.task_id for t in cluster.live()}
    cluster.apply(web(2, cmd="serve sick", **HEALTH, upgradeStrategy={"minimumHealthCapacity": 1.0,
                                                                       "maximumOverCapacity": 0.5}))
    for _ in range(5):
        cluster.round()
    live = cluster.live()
    assert old <= {t.info.task_id for t in live}, "no healthy instance is stopped for one that is not healthy"
    assert cluster.status()["deployment"]["state"] == "running" and cluster.status()["healthy"] == 2


# ---- the lease: standby and takeover ---------------------------------------------------------------------------
def test_a_standby_controller_takes_over_without_losing_or_doubling_an_instance(made: list[Cluster]) -> None:
    c = Cluster()
    made.append(c)
    c.apply(web(3))
    c.round()
    before = {t.info.task_id for t in c.live()}
    status_before = c.status()
    launched, kills = c.launched(), len(c.fake.calls_of(KillCall))
    c.take_over()  # a standby starts, the active process is gone, the standby takes the lease
    assert c.fake.framework(c.framework_id).lease_term == 2
    for _ in range(3):
        c.round()
    assert {t.info.task_id for t in c.live()} == before, "the same instances, none lost or doubled"
    assert (c.launched(), len(c.fake.calls_of(KillCall))) == (launched, kills)
    record = c.status()
    assert record["deployment"] == status_before["deployment"], "the deployment is the one the first instance kept"
    where = {i["task_id"]: (i["agent_id"], i["hostname"]) for i in record["instances"]}
    assert where == {i["task_id"]: (i["agent_id"], i["hostname"]) for i in status_before["instances"]}
    c.apply(web(4))
    c.round()
    assert len(c.live()) == 4 and before < {t.info.task_id for t in c.live()}


def test_a_failed_deployment_stays_failed_after_a_takeover(made: list[Cluster]) -> None:
    c = Cluster()
    made.append(c)
    c.apply(web(3))
    c.round()
    c.apply(web(3, cmd="fail"))
    failed = c.rounds_until("failed")
    assert failed["deployment"]["state"] == "failed"
    c.take_over()
    launched = c.launched()
    for _ in range(3):
        c.round()
    assert c.launched() == launched, "the new active instance must not retry a failed deployment"
    assert c.status()["deployment"] == failed["deployment"]


def test_a_deposed_controller_forgets_its_apps_and_acts_no_more(made: list[Cluster]) -> None:
    c = Cluster()
    made.append(c)
    c.apply(web(2))
    c.round()
    first = c.active
    # another instance subscribes with the framework id (Mesos failover): the lease moves to it
    other = Instance.__new__(Instance)
    other.fake = c.fake
    other.controller = Observed(c.fake)
    other.driver = SchedulerDriver(other.controller, FrameworkInfo(name=FRAMEWORK_NAME, failover_timeout=600.0,
                                                                   framework_id=c.framework_id),
                                   c.fake.addresses, transport=c.fake.transport())
    other.driver.start()
    other.wait_active()
    first.controller.wait(lambda: first.controller.count("deposed"), "the first instance deposed")
    assert first.controller.snapshot() == {}
    calls = len(c.fake.calls)
    first.controller.poll()  # a round of a deposed controller calls nothing
    assert len(c.fake.calls) == calls
    c.active = other
    c.round()
    assert len(c.live()) == 2 and c.launched() == 2
    first.driver.stop()
