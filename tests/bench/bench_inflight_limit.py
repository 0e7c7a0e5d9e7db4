"""Benchmark of keeping at most K tasks in flight (not a test): Suppress/Revive versus the declared limit.

    python tests/bench/bench_inflight_limit.py [--tasks 120] [--in-flight 4] [--agents 4] [--repeat 1]

The same workload runs twice, each on a fresh in-process master (tests/support/inprocess.py: the real
master, leader duties, allocator and gRPC API over the in-memory replication and event-log twins), with
`--agents` scripted agents and a framework built on the SDK's `SchedulerDriver`. The framework runs
`--tasks` tasks, never more than `--in-flight` at once, one task per offer; each task runs a staggered
0.02-0.29 s (the agents report TASK_RUNNING at once and TASK_FINISHED when it is due), so slots free up
one at a time, as in a "parallel map".

Modes:
- `suppress/revive`: what a framework had to do before the limit existed: launch while it has a free
  slot, decline what it cannot use, `suppress()` when its slots are full, `revive()` when a task of a
  suppressed framework ends (two replicated writes per freed slot).
- `max_tasks_in_flight`: `FrameworkInfo(max_tasks_in_flight=K)`; the allocator offers the framework
  nothing while its unfinished tasks plus its outstanding offers number K. Same scheduler code, no
  suppress or revive.

Printed per mode, for the events the master recorded from the subscription to the last TASK_FINISHED:
log entries (distinct Raft indexes that recorded an event) and events, each per finished task, the
events by type, and the wall time; then the ratio of the two modes.
"""

from __future__ import annotations

import argparse
import heapq
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere in the repo

from tessera.control_plane.eventlog.source import iter_records  # noqa: E402
from tessera.sdk import (  # noqa: E402
    Filters,
    FrameworkInfo,
    Offer,
    Resources,
    Scheduler,
    SchedulerDriver,
    TaskInfo,
    TaskStatus,
)
from tessera.v1 import common_pb2  # noqa: E402
from tests.support.cluster import wait_for  # noqa: E402
from tests.support.inprocess import InProcessMaster  # noqa: E402
from tests.support.scripted import ScriptedAgent  # noqa: E402

TASK = Resources.parse("cpus:0.5;mem:64")


def duration(index: int) -> float:
    """A staggered, deterministic run time: 0.02 to 0.29 s."""
    return 0.02 + (index * 37 % 10) * 0.03


class TimedAgents:
    """Answers every task of the scripted agents: TASK_RUNNING at once, TASK_FINISHED when it is due."""

    def __init__(self, agents: list[ScriptedAgent]) -> None:
        self.agents = agents
        self._seen: set[str] = set()
        self._due: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-agents", daemon=True)

    def start(self) -> TimedAgents:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            now = time.monotonic()
            for n, agent in enumerate(self.agents):
                for task in agent.run_tasks():
                    if task.task_id in self._seen:
                        continue
                    self._seen.add(task.task_id)
                    agent.send_status(task.task_id, common_pb2.TASK_RUNNING, framework_id=task.framework_id)
                    index = int(task.task_id.rsplit("-", 1)[1])
                    heapq.heappush(self._due, (now + duration(index), f"{n}\0{task.framework_id}\0{task.task_id}",
                                               n))
            while self._due and self._due[0][0] <= now:
                _, key, n = heapq.heappop(self._due)
                _, framework_id, task_id = key.split("\0")
                self.agents[n].send_status(task_id, common_pb2.TASK_FINISHED, exit_code=0,
                                           framework_id=framework_id)


@dataclass
class KInFlight(Scheduler):
    """Runs `total` tasks, at most `k` at once, one per offer; `suppress_revive` selects the old pattern."""

    total: int
    k: int
    suppress_revive: bool
    launched: int = 0
    finished: int = 0
    running: set[str] = field(default_factory=set)
    suppressed: bool = False
    calls: Counter[str] = field(default_factory=Counter)
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def offers(self, driver: SchedulerDriver, offers: list[Offer]) -> None:
        for offer in offers:
            with self.lock:
                task = None
                if self.launched < self.total and len(self.running) < self.k and offer.resources.contains(TASK):
                    task = TaskInfo(task_id=f"t-{self.launched}", resources=TASK, command="true")
                    self.launched += 1
                    self.running.add(task.task_id)
            if task is not None:
                driver.launch(offer, [task], Filters(0.001))
                self.calls["launch"] += 1
            else:
                driver.decline(offer, Filters(0.001))
                self.calls["decline"] += 1
        self._want_offers(driver)

    def update(self, driver: SchedulerDriver, status: TaskStatus) -> None:
        if not status.is_terminal:
            return
        with self.lock:
            if status.task_id not in self.running:
                return
            self.running.discard(status.task_id)
            self.finished += 1
            if self.finished == self.total:
                self.done.set()
        self._want_offers(driver)

    def _want_offers(self, driver: SchedulerDriver) -> None:
        if not self.suppress_revive:
            return
        with self.lock:
            full = len(self.running) >= self.k or self.launched >= self.total
            change = full != self.suppressed
            self.suppressed = full
        if change:
            if full:
                driver.suppress()
                self.calls["suppress"] += 1
            else:
                driver.revive()
                self.calls["revive"] += 1


@dataclass
class Result:
    mode: str
    tasks: int
    entries: int
    events: int
    by_type: Counter[str]
    calls: Counter[str]
    seconds: float


def run(mode: str, tasks: int, k: int, n_agents: int) -> Result:
    with InProcessMaster() as node:
        assert node.channel is not None
        agents = [ScriptedAgent(node.channel, hostname=f"h{i}", resources="cpus:8;mem:8192", auto_run=False).start()
                  for i in range(n_agents)]
        for agent in agents:
            agent.registered.wait(10)
        timed = TimedAgents(agents).start()
        limit = k if mode == "max_tasks_in_flight" else 0
        scheduler = KInFlight(tasks, k, suppress_revive=mode == "suppress/revive")
        info = FrameworkInfo(name=f"bench-{mode}", max_tasks_in_flight=limit)
        first = node.events.last_seq() + 1
        started = time.monotonic()
        driver = SchedulerDriver(scheduler, info, node.grpc_address).start()
        try:
            if not scheduler.done.wait(600):
                raise TimeoutError(f"{mode}: {scheduler.finished}/{tasks} tasks finished")
            seconds = time.monotonic() - started
            # the last TASK_FINISHED is committed before the framework sees it; wait for its store
            wait_for(lambda: node.events.flush(1.0), 10, what="the event store")
            last = node.events.last_seq()
        finally:
            driver.stop()
            timed.stop()
            for agent in agents:
                agent.close()
        records = [r for r in iter_records(node.events, from_seq=first) if r.seq <= last]
        entries = len({r.raft_index for r in records})
        return Result(mode, tasks, entries, len(records), Counter(r.type for r in records), scheduler.calls,
                      seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=120)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    print(f"{args.tasks} tasks, at most {args.in_flight} in flight, {args.agents} agents, one task per offer, "
          "in-process master (allocation every 0.2 s)")
    totals: dict[str, list[Result]] = {"suppress/revive": [], "max_tasks_in_flight": []}
    for _ in range(args.repeat):
        for mode in totals:
            r = run(mode, args.tasks, args.in_flight, args.agents)
            totals[mode].append(r)
            top = ", ".join(f"{t} {n}" for t, n in r.by_type.most_common())
            print(f"{mode:>20}: {r.entries / r.tasks:5.2f} log entries and {r.events / r.tasks:5.2f} events per "
                  f"finished task ({r.entries} entries, {r.events} events, {r.seconds:.1f} s); "
                  f"calls {dict(r.calls)}")
            print(f"{'':>22}events: {top}")
    old = sum(r.entries for r in totals["suppress/revive"]) / sum(r.tasks for r in totals["suppress/revive"])
    new = sum(r.entries for r in totals["max_tasks_in_flight"]) / sum(r.tasks for r in totals["max_tasks_in_flight"])
    old_e = sum(r.events for r in totals["suppress/revive"]) / sum(r.tasks for r in totals["suppress/revive"])
    new_e = (sum(r.events for r in totals["max_tasks_in_flight"])
             / sum(r.tasks for r in totals["max_tasks_in_flight"]))
    print(f"log entries per finished task: {old:.2f} -> {new:.2f} ({old / new:.2f}x fewer with the limit); "
          f"events: {old_e:.2f} -> {new_e:.2f} ({old_e / new_e:.2f}x)")


if __name__ == "__main__":
    main()
