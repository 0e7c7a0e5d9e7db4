"""One contract for FakeMaster and the real master (in process, its Scheduler service on 127.0.0.1, a
scripted agent): the refusals a scheduler can meet come back as the same error classes, and reconciling
an unknown task answers the same TASK_LOST. FakeMaster keeps its own copy of `decide`'s accept rules
(tessera.sdk.testing.protocol); this suite is what keeps the copy honest."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tessera.sdk import (
    Conflict,
    FrameworkInfo,
    InvalidRequest,
    NotFound,
    Offer,
    Resources,
    TaskInfo,
    TaskState,
)
from tessera.sdk.testing import FakeMaster
from tests.support.inprocess import InProcessMaster
from tests.support.scripted import ScriptedAgent
from tests.unit.sdk.harness import SyncHarness

pytestmark = pytest.mark.timeout(60)

SMALL = Resources.of(cpus=0.5, mem=64)
AGENT = "cpus:2;mem:1024"


@pytest.fixture(params=["fake", "master"])
def harness(request: pytest.FixtureRequest) -> Iterator[SyncHarness]:
    if request.param == "fake":
        fake = FakeMaster()
        fake.add_agent(AGENT)
        h = SyncHarness(fake, FrameworkInfo(name="contract"))
        yield h.start()
        h.stop()
        return
    with InProcessMaster() as m:
        assert m.channel is not None
        agent = ScriptedAgent(m.channel, resources=AGENT).start()
        assert agent.registered.wait(10)
        h = SyncHarness(None, FrameworkInfo(name="contract"), masters=[m.grpc_address])
        try:
            yield h.start()
            h.stop()
        finally:
            agent.close()


def an_offer(h: SyncHarness, seen: int = 0) -> Offer:
    return h.rec.wait_for(lambda: h.rec.offers()[seen:], "an offer")[0]


def task(task_id: str, resources: Resources = SMALL, **kw: object) -> TaskInfo:
    return TaskInfo(task_id=task_id, resources=resources, command="true", **kw)  # type: ignore[arg-type]


def reuse_a_task_id(h: SyncHarness) -> None:
    h.call("launch", an_offer(h), [task("t1")])
    h.rec.wait_for(lambda: [s for s in h.rec.statuses("t1") if s.is_terminal] or h.rec.offers()[1:],
                   "the task to end or another offer")
    h.call("revive")
    h.call("launch", an_offer(h, 1), [task("t1")])


CASES: dict[str, tuple[Callable[[SyncHarness], object], type[Exception]]] = {
    "a task id used before": (reuse_a_task_id, Conflict),
    "one id twice in a launch": (lambda h: h.call("launch", an_offer(h), [task("d"), task("d")]), Conflict),
    "a task that does not fit": (lambda h: h.call("launch", an_offer(h), [task("big", Resources.of(cpus=64))]),
                                 Conflict),
    "an unknown offer": (lambda h: an_offer(h) and h.call("launch", "no-such-offer", [task("u")]), NotFound),
    "an offer used already": (lambda h: _use_then(h, lambda o: h.call("decline", o)), Conflict),
    "another agent's task": (lambda h: h.call("launch", an_offer(h), [task("w", agent_id="elsewhere")]),
                             InvalidRequest),
    "killing an unknown task": (lambda h: an_offer(h) and h.call("kill", "nobody"), NotFound),
}


def _use_then(h: SyncHarness, then: Callable[[Offer], object]) -> object:
    offer = an_offer(h)
    h.call("launch", offer, [task("first")])
    return then(offer)


@pytest.mark.parametrize("case", sorted(CASES))
def test_refusals_are_the_same_error_class(harness: SyncHarness, case: str) -> None:
    act, error = CASES[case]
    with pytest.raises(error):
        act(harness)


def test_reconciling_an_unknown_task_answers_lost_for_reconciliation(harness: SyncHarness) -> None:
    an_offer(harness)
    (status,) = harness.call("reconcile", ["never-launched"])
    assert (status.task_id, status.state, status.reason) == ("never-launched", TaskState.TASK_LOST,
                                                             "REASON_RECONCILIATION")
