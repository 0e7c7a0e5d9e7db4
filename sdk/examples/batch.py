"""A batch runner: run N commands to completion on the cluster, retry failures, print a summary.

    python -m tessera.sdk.examples.batch --count 10 --command 'sleep 0.1'
    python -m tessera.sdk.examples.batch --command 'make test-a' --command 'make test-b' --max-retries 1

Each command is one job; a job's attempt is one task (a fresh task id per attempt, since the master
never reuses one). A job whose task ends in any state but TASK_FINISHED is launched again until it has
been retried `max_retries` times. The process exits 0 only when every job succeeded.

How it uses offers (the habits of a well-behaved Mesos framework):
- packs as many waiting jobs into the offers of each agent as fit (`Offer.resources` arithmetic; the
  offers of one agent and role in one Accept, `offers_by_agent`), and launches with
  `driver.launch_async`: the Accepts of a batch of offers are under way together, each outcome handled
  on the callback thread (`driver.call_soon`);
- declares the smallest offer it can use, one job's resources (`FrameworkInfo.min_offer`, set by
  `BatchRunner.framework_info` and `run_batch`): the master then never offers it an agent's leftover
  memory alone once the agent's cpus are taken — an offer it could only decline, whose refuse filter
  would hide the agent's next freed cpus until a revive;
- declines what it cannot use with a refuse filter (the offers of one callback in one call), and
  suppresses offers altogether once nothing waits, so the allocator can give the resources to others;
- revives when jobs wait again while offers are suppressed, or a task ended while jobs wait and it
  holds refuse filters (a revive clears them); otherwise a task that ended needs no revive: the master
  offers what it freed in its next allocation pass;
- after a re-subscription, reconciles the tasks it believes running: a task that ended while the
  scheduler was away is handled like any update;
- a launch the master refused (`tessera.sdk.errors.REFUSED`: it was not applied) puts its jobs back in line,
  declines the offer and revives, so other offers come at once; a launch that failed any other way (timed
  out, the master failed) may have been applied: its tasks are settled by reconciling them — the master's
  answer says whether they exist — and are never launched again under a fresh id (they would run twice);
- tears the framework down when every job is done.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import threading
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tessera.sdk import (
    Filters,
    FrameworkInfo,
    Offer,
    Resources,
    Scheduler,
    SchedulerDriver,
    TaskInfo,
    TaskState,
    TaskStatus,
    TesseraError,
)
from tessera.sdk.errors import REFUSED, DriverStopped

log = logging.getLogger("tessera.sdk.examples.batch")

Command = str | tuple[str, ...]


@dataclass
class _Job:
    index: int
    command: Command
    attempts: int = 0
    task_id: str | None = None
    state: TaskState | None = None
    exit_code: int | None = None
    message: str = ""
    exit_codes: list[int | None] = field(default_factory=list)
    relaunches: int = 0  # launches found not applied after an unknown outcome (their ids stay used)

    def next_task_id(self, prefix: str) -> str:
        return f"{prefix}-{self.index}.{self.attempts}" + (f"r{self.relaunches}" if self.relaunches else "")


@dataclass(frozen=True)
class JobResult:
    index: int
    command: Command
    attempts: int
    state: TaskState | None  # None: never finished (the run was cut short)
    exit_code: int | None
    message: str
    exit_codes: tuple[int | None, ...]  # one per attempt that ended

    @property
    def succeeded(self) -> bool:
        return self.state is TaskState.TASK_FINISHED


@dataclass(frozen=True)
class BatchSummary:
    results: tuple[JobResult, ...]
    error: str | None = None  # why the run ended early, if it did

    @property
    def succeeded(self) -> list[JobResult]:
        return [r for r in self.results if r.succeeded]

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.results if not r.succeeded]

    @property
    def retried(self) -> int:
        """Attempts beyond the first, over every job."""
        return sum(max(0, r.attempts - 1) for r in self.results)

    @property
    def ok(self) -> bool:
        return self.error is None and all(r.succeeded for r in self.results)

    def exit_codes(self) -> Counter[int | None]:
        """How many ended attempts exited with each code (None: no exit code, e.g. lost)."""
        return Counter(code for r in self.results for code in r.exit_codes)

    def render(self) -> str:
        lines = [f"{len(self.succeeded)} succeeded, {len(self.failed)} failed, {self.retried} retried "
                 f"({len(self.results)} jobs)"]
        codes = ", ".join(f"{'none' if c is None else c}: {n}" for c, n in sorted(
            self.exit_codes().items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))
        if codes:
            lines.append(f"exit codes: {codes}")
        for r in self.failed:
            state = r.state.name if r.state is not None else "NOT FINISHED"
            lines.append(f"  job {r.index} failed after {r.attempts} attempt(s): {state}"
                         f"{'' if r.exit_code is None else f' exit {r.exit_code}'} {r.message}".rstrip())
        if self.error:
            lines.append(f"stopped early: {self.error}")
        return "\n".join(lines)


class BatchRunner(Scheduler):
    def __init__(self, commands: Sequence[Command], resources: Resources, *, max_retries: int = 2,
                 name: str = "batch", env: dict[str, str] | None = None, refuse_seconds: float = 30.0,
                 user: str = "") -> None:
        if not commands:
            raise ValueError("a batch needs at least one command")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.resources = resources
        self.max_retries = max_retries
        self.name = name
        self.env = dict(env or {})
        self.user = user  # the Unix user of every task ("" = the agent's own); the ACL must grant it
        self.refuse_seconds = refuse_seconds
        self.run_id = uuid.uuid4().hex[:8]  # task ids are never reused by the master, across runs too
        self.jobs = [_Job(i, c) for i, c in enumerate(commands)]
        self._waiting: deque[_Job] = deque(self.jobs)
        self._running: dict[str, _Job] = {}
        self._unsettled: set[str] = set()  # task ids whose launch failed without a definite refusal
        self._launching: set[str] = set()  # task ids whose pipelined launch has no outcome yet
        self._suppressed: bool | None = None  # None: unknown (the master keeps it across reconnections)
        self._filtered = False  # declined with a refuse filter since the last revive
        self._finished = False
        self.failure: str | None = None
        self.done = threading.Event()

    def framework_info(self, info: FrameworkInfo) -> FrameworkInfo:
        """`info` with `min_offer` set to what one job needs (`min_offer_for`), unless it sets one."""
        if info.min_offer:
            return info
        return dataclasses.replace(info, min_offer=min_offer_for(self.resources))

    # ---- callbacks ------------------------------------------------------------------------------------
    def subscribed(self, driver: SchedulerDriver, framework_id: str) -> None:
        log.info("subscribed as %s", framework_id)
        self._suppressed = None
        self._settle(driver)
        # a task whose launch is still under way is settled by that launch's outcome, not by reconciling
        # it now (the master may not have applied it yet: it would answer "unknown" and the job run twice)
        running = [task_id for task_id in self._running
                   if task_id not in self._unsettled and task_id not in self._launching]
        if running:
            try:
                for status in driver.reconcile(running):
                    self._handle(driver, status)
            except TesseraError as exc:
                log.warning("reconciliation failed: %s", exc)
        self._want_offers(driver)

    def offers(self, driver: SchedulerDriver, offers: list[Offer]) -> None:
        if self._settle(driver):
            self._revive(driver)
        unused: list[Offer] = []
        for group in offers_by_agent(offers):
            tasks = self._pack(group)
            if not tasks:
                unused.extend(group)
                continue
            # One Accept per agent, naming all its offers (several may come for one agent: offers the
            # master decided into the commits that freed them, one per agent message). Pipelined: the
            # Accepts of all these agents are under way at once; each outcome is handled on the
            # callback thread (`_launched`), like any other event.
            self._launching.update(t.task_id for t in tasks)
            future = driver.launch_async(group, tasks)
            future.add_done_callback(partial(self._relay, driver, group, tasks))
        if unused:
            self._decline_all(driver, unused)
        self._want_offers(driver)

    def _decline_all(self, driver: SchedulerDriver, offers: list[Offer]) -> None:
        """Give back every offer of a callback it cannot use in one call, with the refuse filter."""
        self._filtered = True
        self._give_back(driver, offers, Filters(self.refuse_seconds))

    def _give_back(self, driver: SchedulerDriver, offers: list[Offer], filters: Filters | None = None) -> None:
        """Decline offers in one call; when the master refuses the call (an offer of it is gone
        meanwhile), one call per offer, so the others still go back."""
        try:
            driver.decline(offers, filters)
        except REFUSED:
            if len(offers) > 1:
                for offer in offers:
                    self._call(driver.decline, offer, filters)
        except TesseraError as exc:
            log.warning("decline failed: %s", exc)

    def _relay(self, driver: SchedulerDriver, offers: list[Offer], tasks: list[TaskInfo],
               future: Future[None]) -> None:
        """A sender thread: hand the launch's outcome to the callback thread."""
        driver.call_soon(self._launched, driver, offers, tasks, future)

    def _launched(self, driver: SchedulerDriver, offers: list[Offer], tasks: list[TaskInfo],
                  future: Future[None]) -> None:
        """The outcome of one pipelined launch on one agent's offers (on the callback thread)."""
        named = ", ".join(o.offer_id for o in offers)
        self._launching.difference_update(t.task_id for t in tasks)
        exc = None if future.cancelled() else future.exception()
        if future.cancelled() or isinstance(exc, DriverStopped):
            return  # the driver stopped: nothing more happens
        if isinstance(exc, REFUSED):
            # Not applied: the jobs wait again; give the offer back and ask for offers again (a
            # refusal leaves the offer with us, and nothing else would come until it expired).
            log.warning("offers %s: launch refused: %s", named, exc)
            self._unpack(tasks)
            self._give_back(driver, offers)
            self._revive(driver)
        elif isinstance(exc, TesseraError):
            # Timed out or failed otherwise: the master may have applied it. Settle by reconciling.
            log.warning("offers %s: launch outcome unknown (%s); reconciling", named, exc)
            self._unsettled.update(t.task_id for t in tasks if t.task_id in self._running)
            if self._settle(driver):
                # Not applied after all: the offers are still ours; give them back, then revive.
                self._give_back(driver, offers)
                self._revive(driver)
        elif exc is not None:
            log.error("offers %s: launch failed: %r", named, exc)
            self.failure = f"launch failed: {exc!r}"
            self.done.set()
            return
        self._want_offers(driver)

    def update(self, driver: SchedulerDriver, status: TaskStatus) -> None:
        log.info("task %s %s%s", status.task_id, status.state.name,
                 f" (exit {status.exit_code})" if status.exit_code is not None else "")
        self._unsettled.discard(status.task_id)
        self._handle(driver, status)
        if self._settle(driver):
            self._revive(driver)
        self._want_offers(driver)

    def error(self, driver: SchedulerDriver, message: str) -> None:
        log.error("%s", message)
        self.failure = message
        self.done.set()

    # ---- bookkeeping ----------------------------------------------------------------------------------
    def _pack(self, offers: list[Offer]) -> list[TaskInfo]:
        """Waiting jobs that fit in these offers of one agent together, in line order."""
        left = offers[0].resources
        for offer in offers[1:]:
            left = left + offer.resources
        tasks: list[TaskInfo] = []
        while self._waiting and left.contains(self.resources):
            job = self._waiting.popleft()
            job.attempts += 1
            job.task_id = job.next_task_id(f"{self.name}-{self.run_id}")
            self._running[job.task_id] = job
            left = left - self.resources
            tasks.append(TaskInfo(
                task_id=job.task_id, name=f"{self.name} job {job.index}", resources=self.resources,
                command=job.command, env={**self.env, "BATCH_JOB_INDEX": str(job.index),
                                          "BATCH_ATTEMPT": str(job.attempts)}, user=self.user,
            ))
        return tasks

    def _settle(self, driver: SchedulerDriver) -> int:
        """Ask the master about launches of unknown outcome: a task it knows was launched (its updates
        follow); one it does not know (TASK_LOST, REASON_RECONCILIATION) was not, and its job waits again.
        Returns how many jobs wait again."""
        if not self._unsettled:
            return 0
        try:
            statuses = driver.reconcile(sorted(self._unsettled))
        except TesseraError as exc:
            log.warning("reconciling %d launches failed (%s); trying again later", len(self._unsettled), exc)
            return 0
        requeued = 0
        for status in statuses:
            if status.task_id not in self._unsettled:
                continue
            self._unsettled.discard(status.task_id)
            job = self._running.get(status.task_id)
            if job is None:
                continue
            if status.state is TaskState.TASK_LOST and status.reason == "REASON_RECONCILIATION":
                log.info("task %s was not launched; job %d waits again", status.task_id, job.index)
                del self._running[status.task_id]
                job.attempts -= 1  # not an attempt; but the id is spent: the next launch gets a fresh one
                job.relaunches += 1
                self._waiting.appendleft(job)
                requeued += 1
            else:
                self._handle(driver, status)
        return requeued

    def _call(self, method: Any, *args: Any) -> None:
        try:
            method(*args)
        except TesseraError as exc:
            log.warning("%s failed: %s", getattr(method, "__name__", "call"), exc)

    def _unpack(self, tasks: list[TaskInfo]) -> None:
        """The launch did not happen: those jobs wait again, attempt not counted (a task already settled
        otherwise — its job handled by an update — is left alone)."""
        for task in reversed(tasks):
            job = self._running.pop(task.task_id, None)
            if job is None:
                continue
            job.attempts -= 1
            self._waiting.appendleft(job)

    def _handle(self, driver: SchedulerDriver, status: TaskStatus) -> None:
        job = self._running.get(status.task_id)
        if job is None or not status.is_terminal:
            return  # an older attempt, or a status we already handled
        del self._running[status.task_id]
        job.state, job.exit_code, job.message = status.state, status.exit_code, status.message
        job.exit_codes.append(status.exit_code)
        if status.state is not TaskState.TASK_FINISHED and job.attempts <= self.max_retries:
            log.info("job %d failed (%s); retrying", job.index, status.state.name)
            self._waiting.append(job)
        if self._waiting and self._filtered:
            self._revive(driver)  # the freed resources may be on an agent our refuse filters hide
        elif self._waiting:
            # The ended task's resources come back in the master's next allocation pass without asking;
            # ask only when offers are suppressed (a revive per update was one commit per task).
            self._want_offers(driver)
        elif not self._running and not self._finished:
            self._finished = True
            log.info("all jobs done")
            try:
                driver.teardown()
            except TesseraError as exc:
                log.warning("teardown failed: %s", exc)
                driver.stop()
            self.done.set()

    def _want_offers(self, driver: SchedulerDriver) -> None:
        if self._finished:
            return
        if self._waiting:
            if self._suppressed is not False:
                self._revive(driver)
        elif self._suppressed is not True:
            try:
                driver.suppress()
                self._suppressed = True
            except TesseraError as exc:
                log.warning("suppress failed: %s", exc)

    def _revive(self, driver: SchedulerDriver) -> None:
        try:
            driver.revive()
            self._suppressed = False
            self._filtered = False
        except TesseraError as exc:
            log.warning("revive failed: %s", exc)

    def summary(self) -> BatchSummary:
        return BatchSummary(
            tuple(JobResult(j.index, j.command, j.attempts, j.state, j.exit_code, j.message, tuple(j.exit_codes))
                  for j in self.jobs),
            self.failure,
        )


def min_offer_for(resources: Resources) -> Resources:
    """The smallest offer a framework whose tasks each need `resources` can use: their scalar quantities
    by kind (reservation roles dropped, ranges such as ports left out: an offer's ranges are not sized)."""
    return Resources.from_items((name, "", scalar, ()) for name, _, scalar, ranges in resources.items() if not ranges)


def offers_by_agent(offers: Sequence[Offer]) -> list[list[Offer]]:
    """The offers grouped as one Accept may name them: same agent, same role; groups in the order of their
    first offer, offers in the order given."""
    groups: dict[tuple[str, str], list[Offer]] = {}
    for offer in offers:
        groups.setdefault((offer.agent_id, offer.role), []).append(offer)
    return list(groups.values())


def run_batch(runner: BatchRunner, framework: FrameworkInfo, masters: Sequence[str] | str | None,
              **driver_options: Any) -> BatchSummary:
    """Run `runner` to the end with a blocking driver and return its summary (`framework` as
    `runner.framework_info` completes it: the smallest offer it can use)."""
    driver = SchedulerDriver(runner, runner.framework_info(framework), masters, **driver_options)
    driver.run()
    return runner.summary()


def _env_pairs(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"batch: --env: expected KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tessera.sdk.examples.batch", description=__doc__.split("\n")[0])
    parser.add_argument("--masters", default=None,
                        help="HOST:PORT,... of the masters (default: as every tessera client finds them: "
                             "$TESSERA_MASTERS, else ./.tessera/cluster.json from `tessera up`, else 127.0.0.1:5050)")
    parser.add_argument("--command", action="append", required=True,
                        help="a shell command to run (repeat for several)")
    parser.add_argument("--count", type=int, default=1, help="run each command this many times")
    parser.add_argument("--cpus", type=float, default=0.1)
    parser.add_argument("--mem", type=float, default=32.0, help="MiB")
    parser.add_argument("--max-retries", type=int, default=2)
    parser.add_argument("--name", default="batch")
    parser.add_argument("--role", default="default")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for every task")
    parser.add_argument("--user", default="", help="Unix user of every task (default: the agent's own)")
    parser.add_argument("--give-up-after", type=float, default=30.0,
                        help="seconds without any master before giving up")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    for flag, value in (("--count", args.count), ("--cpus", args.cpus), ("--mem", args.mem)):
        if not value > 0:
            parser.error(f"{flag} must be positive")
    if args.max_retries < 0:
        parser.error("--max-retries must be >= 0")
    commands: list[Command] = [c for c in args.command for _ in range(args.count)]
    runner = BatchRunner(commands, Resources.of(cpus=args.cpus, mem=args.mem), max_retries=args.max_retries,
                         name=args.name, env=_env_pairs(args.env), user=args.user)
    summary = run_batch(runner, FrameworkInfo(name=args.name, roles=(args.role,), failover_timeout=60.0),
                        args.masters, give_up_after=args.give_up_after)
    print(summary.render())
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
