"""A service keeper: keep K instances of a command running, spread across agents, scaled on request.

    python -m tessera.sdk.examples.service --instances 3 --spread-by rack \\
        --command 'python3 -m http.server 0'

    kill -USR1 <pid>              one more instance
    kill -USR2 <pid>              one fewer
    echo 5 > keeper.count         with --control-file keeper.count: the desired count, re-read every second

Rules it keeps:
- Every instance is a task with a fresh id. An instance that ends on its own (failed, lost, even
  finished) is replaced; one the keeper killed to scale down is not.
- Spreading: instances go to the agents whose `--spread-by` attribute value (default: the agent itself)
  has the fewest instances, among the offers at hand; ties go to the agent with fewer instances, then
  to the first offer. Offers arrive agent by agent, so a value may not get more than one instance
  ahead of the least loaded value that had room when it was last offered (its offer is likely on its
  way); after `SKEW_PATIENCE` offer rounds without it, availability wins over spread.
- Scaling down kills the newest instances of the most loaded value first, so the spread stays even.
- Offers it does not need are declined with a refuse filter (`refuse_seconds`, or one second while
  instances are still missing); once K instances are placed it suppresses offers, and it revives when
  it needs more (a replacement, a scale up).
- After a re-subscription it reconciles its instances, so one that ended while the keeper was away is
  replaced.

`scale(n)` may be called from any thread (the signal handlers and the control-file poller do).
Stopping the keeper (Ctrl-C, SIGTERM) leaves the framework and its tasks in place for failover
(`--teardown-on-exit` kills them instead).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

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

log = logging.getLogger("tessera.sdk.examples.service")

MAX_SKEW = 1  # most instances a spread value may have beyond the least loaded one with room
SKEW_PATIENCE = 3  # offer rounds to wait for an under-loaded value before placing anywhere
SHORT_REFUSE_SECONDS = 1.0  # decline filter while instances are still missing


@dataclass
class Instance:
    task_id: str
    agent_id: str
    spread_value: str
    seq: int  # launch order, for "newest first"
    state: TaskState = TaskState.TASK_STAGING
    killing: bool = False


class ServiceKeeper(Scheduler):
    def __init__(self, command: str | tuple[str, ...], resources: Resources, instances: int, *,
                 name: str = "service", spread_by: str | None = None, env: dict[str, str] | None = None,
                 refuse_seconds: float = 30.0, user: str = "") -> None:
        if instances < 0:
            raise ValueError("instances must be >= 0")
        self.command = command
        self.resources = resources
        self.name = name
        self.spread_by = spread_by
        self.env = dict(env or {})
        self.user = user  # the Unix user of every instance ("" = the agent's own); the ACL must grant it
        self.refuse_seconds = refuse_seconds
        self.run_id = uuid.uuid4().hex[:8]
        self.restarts = 0
        self.failure: str | None = None
        self._desired = instances
        self._instances: dict[str, Instance] = {}
        self._seq = 0
        self._suppressed: bool | None = None  # None: unknown (after a (re)subscription)
        self._revive_wanted = False  # more instances are needed now: clear our decline filters too
        self._room: dict[str, bool] = {}  # spread value -> its last offer could take an instance
        self._blocked_rounds = 0
        self._driver: SchedulerDriver | None = None
        self._lock = threading.Lock()  # scale() comes from other threads; callbacks come from one
        self._control = threading.Lock()  # serialises revive/suppress decisions with their calls

    # ---- what it looks like ---------------------------------------------------------------------------
    @property
    def desired(self) -> int:
        with self._lock:
            return self._desired

    def instances(self) -> list[Instance]:
        """Instances placed and not being killed."""
        with self._lock:
            return [i for i in self._instances.values() if not i.killing]

    def running(self) -> int:
        with self._lock:
            return sum(1 for i in self._instances.values() if i.state is TaskState.TASK_RUNNING and not i.killing)

    def spread(self) -> Counter[str]:
        """Instances per spread value."""
        with self._lock:
            return Counter(i.spread_value for i in self._instances.values() if not i.killing)

    # ---- scaling --------------------------------------------------------------------------------------
    def scale(self, instances: int) -> None:
        """Set the desired number of instances; kills the surplus or asks for offers as needed."""
        if instances < 0:
            raise ValueError("instances must be >= 0")
        with self._lock:
            if instances > self._desired:
                self._revive_wanted = True
            self._desired = instances
            victims = self._surplus()
            driver = self._driver
        log.info("scaling to %d instance(s)", instances)
        if driver is not None:
            for task_id in victims:
                self._kill(driver, task_id)
            self._want_offers(driver)

    def _surplus(self) -> list[str]:
        """Instances to kill to get down to the desired count (lock held): newest of the most loaded."""
        live = [i for i in self._instances.values() if not i.killing]
        victims: list[str] = []
        counts = Counter(i.spread_value for i in live)
        while len(live) > self._desired:
            top = max(counts.values())
            victim = max((i for i in live if counts[i.spread_value] == top), key=lambda i: i.seq)
            victim.killing = True
            live.remove(victim)
            counts[victim.spread_value] -= 1
            victims.append(victim.task_id)
        return victims

    def _kill(self, driver: SchedulerDriver, task_id: str) -> None:
        try:
            driver.kill(task_id)
        except TesseraError as exc:
            log.warning("kill %s: %s", task_id, exc)

    # ---- callbacks ------------------------------------------------------------------------------------
    def subscribed(self, driver: SchedulerDriver, framework_id: str) -> None:
        log.info("subscribed as %s", framework_id)
        with self._lock:
            self._driver = driver
            self._suppressed = None
            known = list(self._instances)
        try:
            if known:
                for status in driver.reconcile(known):
                    self._record(driver, status)
            else:
                # a new process failing over with the framework id of an earlier one: adopt the
                # instances that are still alive instead of starting the whole service again
                self._adopt(driver.reconcile())
        except TesseraError as exc:
            log.warning("reconciliation failed: %s", exc)
        self._want_offers(driver)

    def _adopt(self, statuses: list[TaskStatus]) -> None:
        with self._lock:
            for status in statuses:
                if status.is_terminal or status.task_id in self._instances:
                    continue
                self._seq += 1
                # the spread value is not in a status; it is learnt again from the next offers' agents
                self._instances[status.task_id] = Instance(status.task_id, status.agent_id or "", "",
                                                           self._seq, status.state)
                log.info("adopted running instance %s on agent %s", status.task_id, status.agent_id)
            surplus = self._surplus()
            driver = self._driver
        if driver is not None:
            for task_id in surplus:
                self._kill(driver, task_id)

    def offers(self, driver: SchedulerDriver, offers: list[Offer]) -> None:
        with self._lock:
            plan = self._place(offers)
            missing = self._desired - sum(1 for i in self._instances.values() if not i.killing)
        # While instances are missing, declined agents come back soon: they may be needed after all.
        refuse = Filters(SHORT_REFUSE_SECONDS if missing > 0 else self.refuse_seconds)
        for offer in offers:
            tasks = plan.get(offer.offer_id, [])
            try:
                if tasks:
                    driver.launch(offer, tasks)
                else:
                    driver.decline(offer, refuse)
            except TesseraError as exc:
                log.warning("offer %s: %s", offer.offer_id, exc)
                with self._lock:
                    for task in tasks:
                        self._instances.pop(task.task_id, None)
        self._want_offers(driver)

    def update(self, driver: SchedulerDriver, status: TaskStatus) -> None:
        log.info("instance %s %s", status.task_id, status.state.name)
        self._record(driver, status)
        self._want_offers(driver)

    def error(self, driver: SchedulerDriver, message: str) -> None:
        log.error("%s", message)
        self.failure = message

    # ---- bookkeeping ----------------------------------------------------------------------------------
    def _value(self, offer: Offer) -> str:
        if self.spread_by is None:
            return offer.agent_id
        return offer.attributes.get(self.spread_by, "")

    def _place(self, offers: list[Offer]) -> dict[str, list[TaskInfo]]:
        """Which new instances go on which offer (lock held)."""
        live = [i for i in self._instances.values() if not i.killing]
        need = self._desired - len(live)
        counts = Counter(i.spread_value for i in live)
        per_agent = Counter(i.agent_id for i in live)
        for offer in offers:
            self._room[self._value(offer)] = offer.fits(self.resources)
        left = {o.offer_id: o.resources for o in offers}
        plan: dict[str, list[TaskInfo]] = {}
        placed = 0
        while placed < need:
            fitting = [(n, o) for n, o in enumerate(offers) if left[o.offer_id].contains(self.resources)]
            if not fitting:
                break
            # Skew: an instance may not make its value more than MAX_SKEW ahead of the least loaded
            # value that had room when last offered; that value's offer is probably on its way.
            floor = min((counts[v] for v, room in self._room.items() if room), default=0)
            allowed = [(n, o) for n, o in fitting if counts[self._value(o)] + 1 - floor <= MAX_SKEW]
            if not allowed:
                self._blocked_rounds += 1
                if self._blocked_rounds < SKEW_PATIENCE:
                    break
                allowed = fitting  # waited long enough: availability beats spread
            self._blocked_rounds = 0
            _, offer = min(allowed, key=lambda no: (counts[self._value(no[1])], per_agent[no[1].agent_id], no[0]))
            value = self._value(offer)
            self._seq += 1
            task_id = f"{self.name}-{self.run_id}-{self._seq}"
            self._instances[task_id] = Instance(task_id, offer.agent_id, value, self._seq)
            counts[value] += 1
            per_agent[offer.agent_id] += 1
            placed += 1
            left[offer.offer_id] = left[offer.offer_id] - self.resources
            plan.setdefault(offer.offer_id, []).append(TaskInfo(
                task_id=task_id, name=f"{self.name} instance", resources=self.resources, command=self.command,
                env={**self.env, "SERVICE_INSTANCE": task_id}, user=self.user))
        return plan

    def _record(self, driver: SchedulerDriver, status: TaskStatus) -> None:
        with self._lock:
            instance = self._instances.get(status.task_id)
            if instance is None:
                return
            instance.state = status.state
            if not status.is_terminal:
                return
            del self._instances[status.task_id]
            if not instance.killing:
                self.restarts += 1
                self._revive_wanted = True
                log.warning("instance %s ended (%s %s); replacing it", status.task_id, status.state.name,
                            status.message)

    def _want_offers(self, driver: SchedulerDriver) -> None:
        # One decision at a time, made and sent under `_control`: a scale() racing a callback must not
        # send a stale suppress after a fresh revive.
        with self._control:
            with self._lock:
                need = self._desired - sum(1 for i in self._instances.values() if not i.killing)
                suppressed = self._suppressed
                revive = need > 0 and (suppressed is not False or self._revive_wanted)
                self._revive_wanted = False
            try:
                if revive:
                    driver.revive()
                    suppressed = False
                elif need <= 0 and suppressed is not True:
                    driver.suppress()
                    suppressed = True
            except TesseraError as exc:
                log.warning("revive/suppress failed: %s", exc)
                return
            with self._lock:
                self._suppressed = suppressed


def _read_count(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tessera.sdk.examples.service",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--masters", default=None,
                        help="HOST:PORT,... of the masters (default: as every tessera client finds them: "
                             "$TESSERA_MASTERS, else ./.tessera/cluster.json from `tessera up`, else 127.0.0.1:5050)")
    parser.add_argument("--command", required=True, help="the shell command of one instance")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--cpus", type=float, default=0.1)
    parser.add_argument("--mem", type=float, default=32.0, help="MiB")
    parser.add_argument("--spread-by", default=None, help="agent attribute to spread instances over")
    parser.add_argument("--name", default="service")
    parser.add_argument("--role", default="default")
    parser.add_argument("--framework-id", default="", help="fail over from a previous run")
    parser.add_argument("--failover-timeout", type=float, default=3600.0)
    parser.add_argument("--control-file", type=Path, help="a file holding the desired instance count")
    parser.add_argument("--teardown-on-exit", action="store_true")
    parser.add_argument("--user", default="", help="Unix user of every instance (default: the agent's own)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    if args.instances < 0:
        parser.error("--instances must be >= 0")
    for flag, value in (("--cpus", args.cpus), ("--mem", args.mem)):
        if not value > 0:
            parser.error(f"{flag} must be positive")

    keeper = ServiceKeeper(args.command, Resources.of(cpus=args.cpus, mem=args.mem), args.instances,
                           name=args.name, spread_by=args.spread_by, user=args.user)
    framework = FrameworkInfo(name=args.name, roles=(args.role,), failover_timeout=args.failover_timeout,
                              framework_id=args.framework_id)
    driver = SchedulerDriver(keeper, framework, args.masters)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGUSR1:
            threading.Thread(target=keeper.scale, args=(keeper.desired + 1,), daemon=True).start()
        elif signum == signal.SIGUSR2:
            threading.Thread(target=keeper.scale, args=(max(0, keeper.desired - 1),), daemon=True).start()
        else:
            stop.set()

    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    driver.start()
    last_count: int | None = None
    while not stop.is_set() and not driver.join(1.0):
        if args.control_file is not None:
            count = _read_count(args.control_file)
            if count is not None and count != last_count and count >= 0:
                last_count = count
                keeper.scale(count)
        if driver.framework_id:
            log.debug("framework %s: %d running of %d", driver.framework_id, keeper.running(), keeper.desired)
    if args.teardown_on_exit and keeper.failure is None:
        try:
            driver.teardown()
        except TesseraError as exc:
            print(f"service: teardown failed: {exc}", file=sys.stderr)
    driver.stop()
    driver.join(10.0)
    if keeper.failure:
        print(f"service: {keeper.failure}", file=sys.stderr)
        return 1
    print(f"service: stopped; framework {driver.framework_id} keeps its tasks for failover"
          if not args.teardown_on_exit else "service: torn down", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
