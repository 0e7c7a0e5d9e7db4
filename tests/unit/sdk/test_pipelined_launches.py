"""The blocking driver's pipelined launches (`launch_async`, `accept_async`) and `call_soon`, against the
in-memory FakeMaster: several Accepts under way at once, started in order, each outcome (or the error
`launch` would raise) in its future, the offer forgotten after a success, futures cancelled or failed
with DriverStopped once the driver stopped; `call_soon` runs on the callback thread, in order."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import pytest

from tessera.sdk import (
    Conflict,
    DriverStopped,
    FrameworkInfo,
    InvalidRequest,
    Offer,
    Resources,
    Scheduler,
    SchedulerDriver,
    TaskInfo,
    TaskState,
    Unavailable,
)
from tessera.sdk.protocol import NO_CLAIM, AcceptCall, Call, CallHeader, CallResult, LeaseClaim
from tessera.sdk.testing import FakeMaster
from tessera.sdk.types import FrameworkInfo as Info

pytestmark = pytest.mark.timeout(60)

SMALL = Resources.of(cpus=0.5, mem=64)


def task(task_id: str) -> TaskInfo:
    return TaskInfo(task_id=task_id, resources=SMALL, command="true")


class Recorder(Scheduler):
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.got: list[Offer] = []
        self.threads: list[str] = []
        self.order: list[str] = []

    def offers(self, driver: SchedulerDriver, offers: list[Offer]) -> None:
        with self.cond:
            self.got.extend(offers)
            self.threads.append(threading.current_thread().name)
            self.cond.notify_all()

    def wait(self, predicate: Any, what: str) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, 15), f"timed out waiting for {what}"


class GatedTransport:
    """The fake's transport, but each Accept waits at a gate; counts the Accepts under way at once."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.lock = threading.Condition()
        self.in_flight = 0
        self.most = 0
        self.started: list[tuple[str, ...]] = []

    def subscribe(self, address: str, info: Info, lease: LeaseClaim = NO_CLAIM) -> Any:
        return self.inner.subscribe(address, info, lease)

    def call(self, address: str, header: CallHeader, call: Call, timeout: float) -> CallResult:
        if not isinstance(call, AcceptCall):
            return self.inner.call(address, header, call, timeout)
        with self.lock:
            self.started.append(call.offer_ids)
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            self.lock.notify_all()
        try:
            assert self.gate.wait(20), "the test never opened the gate"
            return self.inner.call(address, header, call, timeout)
        finally:
            with self.lock:
                self.in_flight -= 1

    def close(self) -> None:
        self.inner.close()


def start(fake: FakeMaster, transport: Any = None, **options: Any) -> tuple[SchedulerDriver, Recorder]:
    rec = Recorder()
    driver = SchedulerDriver(rec, FrameworkInfo(name="pipelined"), fake.addresses,
                             transport=transport or fake.transport(), **options)
    driver.start()
    return driver, rec


def test_several_accepts_are_under_way_at_once_and_start_in_the_order_they_were_made() -> None:
    fake = FakeMaster(auto_offer=False)
    for _ in range(6):
        fake.add_agent("cpus:1;mem:256")
    gated = GatedTransport(fake.transport())
    driver, rec = start(fake, gated, accepts_in_flight=4)
    try:
        sent = fake.send_offers()
        rec.wait(lambda: len(rec.got) == 6, "six offers")
        futures = [driver.launch_async(offer, [task(f"t{i}")]) for i, offer in enumerate(sent)]
        with gated.lock:
            assert gated.lock.wait_for(lambda: gated.in_flight == 4, 15), "four Accepts under way"
        assert not any(f.done() for f in futures)  # none answered yet: they wait at the gate together
        # FIFO: the first four made are the four under way (four threads: their order among them is theirs)
        assert sorted(gated.started) == sorted((o.offer_id,) for o in sent[:4])
        gated.gate.set()
        for f in futures:
            assert f.result(15) is None
        assert gated.most == 4
        assert sorted(gated.started) == sorted((o.offer_id,) for o in sent)
        assert all(fake.task(f"t{i}").state is TaskState.TASK_STAGING for i in range(6))
        assert driver.outstanding_offers() == ()  # every used offer is forgotten
    finally:
        gated.gate.set()
        driver.stop()
        driver.join(10)


def test_a_future_carries_the_error_launch_would_raise_and_bad_requests_raise_at_once() -> None:
    fake = FakeMaster(auto_offer=False)
    fake.add_agent("cpus:1;mem:256")
    fake.add_agent("cpus:1;mem:256")
    driver, rec = start(fake)
    try:
        o1, o2 = fake.send_offers()
        rec.wait(lambda: len(rec.got) == 2, "two offers")
        with pytest.raises(InvalidRequest):  # no offer at all: wrong in itself, raised here
            driver.launch_async([], [task("t1")])
        two_agents = driver.launch_async([o1, o2], [task("t1")])  # the master refuses it: in the future
        assert isinstance(two_agents.exception(15), InvalidRequest)
        assert driver.launch_async(o1, [task("t1")]).result(15) is None
        used = driver.launch_async(o1, [task("t2")])  # the offer is used
        assert isinstance(used.exception(15), Conflict)
        fake.fail_next(AcceptCall, Unavailable("master busy"))  # retried with the same request id
        assert driver.accept_async(o2, [task("t3")]).result(15) is None
        assert fake.task("t3").state is TaskState.TASK_STAGING
    finally:
        driver.stop()
        driver.join(10)


def test_after_stop_a_launch_fails_with_driver_stopped_and_queued_ones_are_cancelled() -> None:
    fake = FakeMaster(auto_offer=False)
    for _ in range(3):
        fake.add_agent("cpus:1;mem:256")
    gated = GatedTransport(fake.transport())
    driver, rec = start(fake, gated, accepts_in_flight=1)
    sent = fake.send_offers()
    rec.wait(lambda: len(rec.got) == 3, "three offers")
    first = driver.launch_async(sent[0], [task("t0")])
    queued = driver.launch_async(sent[1], [task("t1")])
    with gated.lock:
        assert gated.lock.wait_for(lambda: gated.in_flight == 1, 15)
    driver.stop()
    gated.gate.set()
    assert queued.cancelled()
    first.exception(15)  # it was under way: it ends, one way or the other
    late: Future[None] = driver.launch_async(sent[2], [task("t2")])
    assert isinstance(late.exception(15), DriverStopped)
    assert driver.join(10)


def test_call_soon_runs_on_the_callback_thread_in_order() -> None:
    fake = FakeMaster()
    fake.add_agent("cpus:1;mem:256")
    driver, rec = start(fake)
    try:
        rec.wait(lambda: rec.got, "an offer")
        done = threading.Event()

        def note(name: str) -> None:
            rec.order.append(f"{name}@{threading.current_thread().name}")

        for name in ("a", "b", "c"):
            driver.call_soon(note, name)
        driver.call_soon(lambda: 1 / 0)  # logged; the driver goes on
        driver.call_soon(done.set)
        assert done.wait(15)
        assert rec.order == [f"{n}@{rec.threads[0]}" for n in ("a", "b", "c")]
        assert rec.threads[0] == "tessera-callbacks"
    finally:
        driver.stop()
        driver.join(10)


def test_accepts_in_flight_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SchedulerDriver(Scheduler(), FrameworkInfo(name="x"), ["127.0.0.1:1"], accepts_in_flight=0)
