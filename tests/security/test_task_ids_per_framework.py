"""Issue 14 item 11: task ids are scoped per framework, as in Mesos.

Before the fix a task id was global: a second framework launching `web-1` while another framework had
a `web-1` got `Conflict: task id web-1 is already used` — an existence oracle across tenants, and a way
for one tenant to squat another's ids. Now two frameworks may each launch `web-1`, even on the same
agent; statuses, kills and acknowledgements reach the task of the framework that names it; and a
framework's own duplicate is refused with text that names nothing of another framework.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tessera.control_plane.core import commands as c
from tessera.control_plane.core.errors import Conflict, NotFound
from tessera.control_plane.core.invariants import check_invariants
from tessera.control_plane.core.state import TaskKey
from tessera.control_plane.core.values import TaskState, TaskStatus
from tessera.v1 import common_pb2, scheduler_pb2
from tests.support.cluster import wait_for
from tests.support.inprocess import InProcessMaster
from tests.support.scripted import ScriptedAgent, ScriptedFramework
from tests.unit.core.harness import Harness, launch, task

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.run(c.ElectLeader(term=1, master="m1", grpc_address="127.0.0.1:5051", name="m1"))
    return harness


def status(h: Harness, fid: str, tid: str, state: TaskState) -> TaskStatus:
    return TaskStatus(task_id=tid, state=state, agent_id=h.state.tasks[TaskKey(fid, tid)].agent_id,
                      framework_id=fid, uuid=h.uuid())


# ---- the pure core ---------------------------------------------------------------------------------
def test_a_second_framework_may_launch_an_id_the_first_uses_on_the_same_agent(h: Harness) -> None:
    aid = h.agent()
    alice, bob = h.framework(principal="alice"), h.framework(principal="bob")
    h.launched(alice, aid, task("web-1"))
    h.launched(bob, aid, task("web-1"))  # Conflict "task id web-1 is already used" before the fix
    assert {TaskKey(alice, "web-1"), TaskKey(bob, "web-1")} <= set(h.state.tasks)
    assert h.state.tasks[TaskKey(bob, "web-1")].framework_id == bob
    assert check_invariants(h.state) == []


def test_statuses_kills_and_acks_reach_the_task_of_the_framework_that_names_it(h: Harness) -> None:
    aid = h.agent()
    alice, bob = h.framework(principal="alice"), h.framework(principal="bob")
    h.launched(alice, aid, task("web-1"))
    h.launched(bob, aid, task("web-1"))
    a_run = status(h, alice, "web-1", TaskState.TASK_RUNNING)
    h.run(c.UpdateStatus(a_run))
    assert h.state.tasks[TaskKey(alice, "web-1")].state is TaskState.TASK_RUNNING
    assert h.state.tasks[TaskKey(bob, "web-1")].state is TaskState.TASK_STAGING
    # bob cannot acknowledge alice's update: to bob it names nothing
    with pytest.raises(NotFound):
        h.decide(c.Acknowledge(bob, "web-1", a_run.uuid))
    h.run(c.Acknowledge(alice, "web-1", a_run.uuid))
    assert h.state.tasks[TaskKey(alice, "web-1")].unacknowledged == ()
    # bob's kill marks bob's task only
    h.run(c.Kill(bob, "web-1"))
    assert h.state.tasks[TaskKey(bob, "web-1")].kill_requested
    assert not h.state.tasks[TaskKey(alice, "web-1")].kill_requested
    killed = status(h, bob, "web-1", TaskState.TASK_KILLED)
    h.run(c.UpdateStatus(killed))
    h.run(c.Acknowledge(bob, "web-1", killed.uuid))
    assert TaskKey(bob, "web-1") in h.state.completed_tasks
    assert h.state.tasks[TaskKey(alice, "web-1")].state is TaskState.TASK_RUNNING
    # once bob's web-1 is done, bob may not reuse it, and alice's is untouched
    oid = h.offer(bob, aid)
    with pytest.raises(Conflict):
        h.decide(c.Accept(bob, (oid,), (launch(task("web-1")),)))
    assert check_invariants(h.state) == []


def test_an_update_naming_the_wrong_framework_does_not_touch_the_other_task(h: Harness) -> None:
    aid = h.agent()
    alice, bob = h.framework(principal="alice"), h.framework(principal="bob")
    h.launched(alice, aid, task("web-1"))
    with pytest.raises(NotFound):
        h.decide(c.UpdateStatus(TaskStatus(task_id="web-1", state=TaskState.TASK_RUNNING, agent_id=aid,
                                           framework_id=bob, uuid=h.uuid())))
    assert h.state.tasks[TaskKey(alice, "web-1")].state is TaskState.TASK_STAGING


def test_a_frameworks_own_duplicate_is_refused_without_naming_another_framework(h: Harness) -> None:
    aid = h.agent()
    alice, bob = h.framework(principal="alice"), h.framework(principal="bob")
    h.launched(alice, aid, task("secret-alice-job"))
    h.launched(bob, aid, task("web-1"))
    oid = h.offer(bob, aid)
    with pytest.raises(Conflict) as own:
        h.decide(c.Accept(bob, (oid,), (launch(task("web-1")),)))
    assert "web-1" in own.value.message
    for leaked in ("secret-alice-job", alice):
        assert leaked not in own.value.message
    # and the id another framework uses is simply free to bob: no oracle
    h.run(c.Accept(bob, (oid,), (launch(task("secret-alice-job")),)))
    assert check_invariants(h.state) == []


def test_a_bare_task_id_from_an_older_agent_names_one_task_or_is_refused(h: Harness) -> None:
    """An agent of an earlier version sends statuses without framework_id: a bare id names the one task
    of that id on the agent; when two frameworks run one there it names neither (never the wrong one)."""
    from tessera.control_plane.core.errors import InvalidRequest
    from tessera.control_plane.core.values import AgentInfo

    aid = h.agent()
    alice, bob = h.framework(principal="alice"), h.framework(principal="bob")
    h.launched(alice, aid, task("solo"))
    h.run(c.UpdateStatus(TaskStatus(task_id="solo", state=TaskState.TASK_RUNNING, agent_id=aid, uuid=h.uuid())))
    assert h.state.tasks[TaskKey(alice, "solo")].state is TaskState.TASK_RUNNING
    h.launched(alice, aid, task("web-1"))
    h.launched(bob, aid, task("web-1"))
    with pytest.raises(InvalidRequest, match="framework_id is needed"):
        h.decide(c.UpdateStatus(TaskStatus(task_id="web-1", state=TaskState.TASK_RUNNING, agent_id=aid,
                                           uuid=h.uuid())))
    # reregistering with the bare id: it names neither web-1 (both end as the agent lost them), the
    # unambiguous one is recognised
    info = AgentInfo(hostname="host", resources=h.state.agents[aid].info.resources)
    h.run(c.ReregisterAgent(aid, info, (
        TaskStatus("solo", TaskState.TASK_RUNNING, agent_id=aid),
        TaskStatus("web-1", TaskState.TASK_RUNNING, agent_id=aid))))
    assert h.state.tasks[TaskKey(alice, "solo")].state is TaskState.TASK_RUNNING
    assert h.state.tasks[TaskKey(alice, "web-1")].state is TaskState.TASK_LOST
    assert h.state.tasks[TaskKey(bob, "web-1")].state is TaskState.TASK_LOST
    assert check_invariants(h.state) == []


# ---- one in-process master over real gRPC --------------------------------------------------------
def _launch_once(task_id: str):  # type: ignore[no-untyped-def]
    done: list[str] = []
    lock = threading.Lock()

    def on_offers(fw: ScriptedFramework, offers: list[common_pb2.Offer]) -> None:
        with lock:
            first = not done
            done.append(offers[0].offer_id)
        if first:
            fw.launch(offers[0], task_id)
            offers = offers[1:]
        if offers:  # give the rest back at once, so that the other framework is offered the agent
            fw.stub.Decline(scheduler_pb2.DeclineRequest(header=fw.header(), offer_ids=[o.offer_id for o in offers],
                                                         filters=common_pb2.Filters(refuse_seconds=60)),
                           timeout=5)

    return on_offers


def test_two_frameworks_run_the_same_task_id_on_one_agent_over_grpc() -> None:
    with InProcessMaster() as node:
        assert node.channel is not None
        agent = ScriptedAgent(node.channel).start()
        assert agent.registered.wait(5)
        alice = ScriptedFramework(node.channel, name="alice", on_offers=_launch_once("web-1")).start()
        bob = ScriptedFramework(node.channel, name="bob", on_offers=_launch_once("web-1")).start()
        for fw in (alice, bob):
            wait_for(lambda fw=fw: fw.states_of("web-1")[-1:] == [common_pb2.TASK_FINISHED], 15,
                     what=f"{fw.info.name}'s web-1 to finish")
            assert fw.states_of("web-1") == [common_pb2.TASK_STARTING, common_pb2.TASK_RUNNING,
                                             common_pb2.TASK_FINISHED]
            assert {u.framework_id for u in fw.updates} == {fw.framework_id}
        run = agent.run_tasks()
        assert sorted((t.framework_id, t.task_id) for t in run) == sorted(
            [(alice.framework_id, "web-1"), (bob.framework_id, "web-1")])
        wait_for(lambda: not node.state().tasks, 10, what="both tasks to complete")
        done = node.state().completed_tasks
        assert TaskKey(alice.framework_id, "web-1") in done and TaskKey(bob.framework_id, "web-1") in done
        # a framework reconciling web-1 sees its own task only
        for fw in (alice, bob):
            reply = fw.stub.Reconcile(scheduler_pb2.ReconcileRequest(header=fw.header(), task_ids=["web-1"]),
                                      timeout=5)
            assert [(s.framework_id, s.state) for s in reply.statuses] == [
                (fw.framework_id, common_pb2.TASK_FINISHED)]
        alice.close()
        bob.close()
        agent.close()


# ---- the event log and the CLI take FRAMEWORK_ID/TASK_ID, or a bare id when it is unambiguous -------
def _two_web1(node: InProcessMaster) -> tuple[str, str]:
    """Two frameworks, each with a live `web-1` on one agent; a third framework's `solo` task."""
    from tessera.control_plane.core.resources import Resources
    from tessera.control_plane.core.values import AgentInfo, CommandInfo, FrameworkInfo, Offer, TaskInfo

    m = node.master
    m.propose([c.RegisterAgent(AgentInfo(hostname="h1", resources=Resources.parse("cpus:4;mem:1024")))])
    aid = next(iter(node.state().agents))
    fids = []
    for name, task_id in (("alice", "web-1"), ("bob", "web-1"), ("carol", "solo")):
        m.propose([c.SubscribeFramework(FrameworkInfo(name=name, principal=name, roles=("web",)))])
        fid = next(f for f, r in node.state().frameworks.items() if r.info.name == name)
        fids.append(fid)
        m.propose([c.IssueOffers((Offer("", fid, aid, role="web", resources=Resources.of(cpus=1, mem=64)),))])
        oid = next(o for o, r in node.state().offers.items() if r.framework_id == fid)
        info = TaskInfo(task_id=task_id, name=task_id, resources=Resources.of(cpus=1, mem=64),
                        command=CommandInfo(value="sleep 60"))
        m.propose([c.Accept(fid, (oid,), (c.Operation("LAUNCH", tasks=(info,)),))])
    return fids[0], fids[1]


def test_timeline_tasks_and_trace_name_a_task_by_framework_and_refuse_an_ambiguous_bare_id() -> None:
    import json

    import grpc

    from tessera.control_plane.eventlog.errors import AmbiguousTask
    from tessera.control_plane.eventlog.timeline import resolve_task
    from tessera.v1 import operator_pb2
    from tests.unit.inspect.cli import ok, one_line_error, tessera

    with InProcessMaster(allocation=False) as node:
        alice, bob = _two_web1(node)
        node.events.flush()
        masters = ("--masters", node.grpc_address)
        # a bare id two frameworks use: a clear error listing them
        for command in (("timeline", "web-1"), ("tasks", "web-1"), ("trace", "web-1")):
            one_line_error(tessera(*masters, *command), "web-1", alice, bob, "FRAMEWORK_ID/web-1")
        with pytest.raises(AmbiguousTask, match=f"{alice}, {bob}"):
            resolve_task(node.events, "web-1")
        # the pair names one task
        out = ok(*masters, "--json", "timeline", f"{bob}/web-1").stdout.splitlines()
        events = [json.loads(line) for line in out]
        assert events and {e["framework_id"] for e in events} == {bob}
        assert {e["task_id"] for e in events} == {"web-1"}
        rows = json.loads(ok(*masters, "--json", "tasks", f"{alice}/web-1").stdout)
        assert [(r["task"]["framework_id"], r["task"]["task_id"]) for r in rows] == [(alice, "web-1")]
        # a bare id one framework uses is enough
        assert resolve_task(node.events, "solo")[1] == "solo"
        rows = json.loads(ok(*masters, "--json", "tasks", "solo").stdout)
        assert [r["task"]["task_id"] for r in rows] == ["solo"]
        # GetTrace: INVALID_ARGUMENT naming the frameworks for the bare id; the pair is looked up alone
        with pytest.raises(grpc.RpcError) as err:
            node.operator().GetTrace(operator_pb2.GetTraceRequest(task_id="web-1"), timeout=5)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and alice in (err.value.details() or "")
        # (whether the proposals were traced depends on the tracer provider earlier tests in this process
        # installed: found or NOT_FOUND, never the ambiguity refusal)
        try:
            node.operator().GetTrace(operator_pb2.GetTraceRequest(task_id="web-1", framework_id=bob), timeout=5)
        except grpc.RpcError as refused:
            assert refused.code() is grpc.StatusCode.NOT_FOUND, refused.details()


# ---- the SDK's FakeMaster keeps the same rule -------------------------------------------------------
def test_the_sdk_fake_master_scopes_task_ids_per_framework() -> None:
    from tessera.sdk import Conflict as SdkConflict
    from tessera.sdk import FrameworkInfo, Resources, Scheduler, SchedulerDriver
    from tessera.sdk import TaskInfo as SdkTaskInfo
    from tessera.sdk.testing import FakeMaster

    class Web1(Scheduler):
        def __init__(self) -> None:
            self.errors: list[BaseException] = []
            self.launched = threading.Event()

        def offers(self, driver, offers) -> None:  # type: ignore[no-untyped-def]
            if self.launched.is_set():
                driver.decline(offers)
                return
            try:
                driver.launch(offers[0], [SdkTaskInfo(task_id="web-1", resources=Resources.of(cpus=0.5, mem=32),
                                                      command="true")])
                self.launched.set()
            except Exception as exc:  # noqa: BLE001 - kept for the assertion
                self.errors.append(exc)

    fake = FakeMaster()
    fake.add_agent("cpus:1;mem:256")
    alice, bob = Web1(), Web1()
    with SchedulerDriver(alice, FrameworkInfo(name="alice"), fake.addresses, transport=fake.transport()) as da, \
            SchedulerDriver(bob, FrameworkInfo(name="bob"), fake.addresses, transport=fake.transport()) as db:
        fake.wait_for(lambda: alice.launched.is_set() and bob.launched.is_set(), what="both launches")
        assert alice.errors == [] and bob.errors == []
        fa, fb = da.framework_id, db.framework_id
        assert fa and fb and fa != fb
        assert set(fake.tasks(fa)) == set(fake.tasks(fb)) == {"web-1"}
        with pytest.raises(ValueError, match="pass framework_id"):
            fake.task("web-1")
        fake.update("web-1", TaskState.TASK_RUNNING, framework_id=fb)
        assert fake.task("web-1", fb).state is TaskState.TASK_RUNNING
        assert fake.task("web-1", fa).state is TaskState.TASK_STAGING
        da.kill("web-1")
        assert fake.task("web-1", fa).state is TaskState.TASK_KILLED
        assert fake.task("web-1", fb).state is TaskState.TASK_RUNNING
        # a framework's own duplicate is still refused
        fake.add_agent("cpus:1;mem:256")
        bob.launched.clear()
        fake.wait_for(lambda: bool(bob.errors) or bob.launched.is_set(), what="bob's second launch")
        assert [type(e) for e in bob.errors] == [SdkConflict] and fa not in str(bob.errors[0])


# ---- real processes: tessera master x3 + a tessera agent running real tasks, SDK frameworks -------
def test_two_sdk_frameworks_share_a_task_id_on_one_real_agent(tmp_path: Path) -> None:
    from tessera.sdk import FrameworkInfo, Resources, Scheduler, SchedulerDriver, TaskInfo
    from tests.integration.test_frameworks_processes import cluster_with_agents

    class OneTask(Scheduler):
        def __init__(self, command: str) -> None:
            self.command = command
            self.launched = threading.Event()
            self.statuses: list[tuple[str, str, str]] = []  # (framework_id, task_id, state)
            self.lock = threading.Lock()

        def offers(self, driver, offers) -> None:  # type: ignore[no-untyped-def]
            if self.launched.is_set():
                driver.decline(offers)
                return
            self.launched.set()
            driver.launch([offers[0]], [TaskInfo(task_id="web-1", name="web-1", command=self.command,
                                                 resources=Resources.parse("cpus:0.1;mem:32"))])
            driver.decline(offers[1:]) if offers[1:] else None

        def update(self, driver, status) -> None:  # type: ignore[no-untyped-def]
            with self.lock:
                self.statuses.append((status.framework_id, status.task_id, status.state.name))

        def states(self) -> list[str]:
            with self.lock:
                return [s for _, _, s in self.statuses]

    with cluster_with_agents(tmp_path, [("cpus:2;mem:1024", "")]) as cluster:
        masters = cluster.grpc_addresses()
        short = OneTask("sleep 1")  # finishes on its own
        long = OneTask("sleep 600")  # killed by its framework
        drivers = [SchedulerDriver(short, FrameworkInfo(name="short", roles=("default",)), masters),
                   SchedulerDriver(long, FrameworkInfo(name="long", roles=("default",)), masters)]
        try:
            for d in drivers:
                d.start()
            wait_for(lambda: "TASK_RUNNING" in long.states(), 60, what="the long framework's web-1 to run")
            wait_for(lambda: "TASK_FINISHED" in short.states(), 60, what="the short framework's web-1 to finish")
            assert "TASK_KILLED" not in long.states()
            drivers[1].kill("web-1")
            wait_for(lambda: "TASK_KILLED" in long.states(), 60, what="the long framework's web-1 to be killed")
            time.sleep(0.5)
            assert short.states()[-1] == "TASK_FINISHED" and "TASK_KILLED" not in short.states()
            ids = {d.framework_id for d in drivers}
            assert len(ids) == 2
            for sched, driver in ((short, drivers[0]), (long, drivers[1])):
                assert {(f, t) for f, t, _ in sched.statuses} == {(driver.framework_id, "web-1")}

            def both_completed() -> bool:
                from tessera.v1 import operator_pb2
                client = cluster.client()
                try:
                    st = client.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True))
                finally:
                    client.close()
                # a task leaves the live tasks once it ended and its framework acknowledged every update
                return not [t for t in st.tasks if t.task.task_id == "web-1"]

            wait_for(both_completed, 30, what="every update of both web-1 tasks to be acknowledged")
        finally:
            for d in drivers:
                d.stop()
