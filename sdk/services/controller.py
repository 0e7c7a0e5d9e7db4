"""The service framework's controller (`tessera services`): keeps each app's instances running, healthy and
rolled out, written only against the public SDK (`tessera.sdk`) — the proof that the SDK is enough.

Desired state is the framework's own key/value state in the masters' replicated log: `apps/<id>` holds an
app's canonical definition (`App.to_json()`, written by operators through `tessera service apply`);
the controller writes `status/<id>` (wanted/running/healthy, the current version, the deployment and its
history, the instances and where they run) whenever it changes.

Several instances of the framework may run (`standby=True`); exactly one is active. `became_active` loads
the status records (where each instance runs, for constraints); `subscribed` reconciles every task with
the masters and adopts the live ones (a task id names its app and version: `<app>.<version>.<n>`);
`deposed` forgets everything. The active one polls `apps/` every `poll_seconds` and, per app, follows
`deploy.plan`: kills what the plan says (and kills again, every `KILL_RETRY_SECONDS`, what has not ended),
launches the missing instances on offers that fit (resources, ports, `constraints.admits`), after the app's
restart backoff (`App.launch_delay`), and stops a deployment whose new version failed `failure_limit`
times in a row (failures in a row end when an instance of the current version has been ready for
`READY_SECONDS`: one that runs and exits at once does not end them; without a health check, a new instance
counts as ready for the deployment only after `READY_SECONDS`). It suppresses offers when nothing is to be
launched and revives when something is.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tessera.control_plane.core.limits import MAX_STATE_VALUE_LENGTH
from tessera.sdk import (
    ContainerInfo,
    Filters,
    HealthCheck,
    HttpCheck,
    Offer,
    PortMapping,
    Resources,
    Scheduler,
    SchedulerDriver,
    TaskInfo,
    TaskStatus,
    TcpCheck,
    TesseraError,
)
from tessera.sdk.services.app import App, AppError, parse_app
from tessera.sdk.services.constraints import Placement, admits
from tessera.sdk.services.deploy import Instance, failure_limit, plan

__all__ = ["APPS", "FRAMEWORK_NAME", "READY_SECONDS", "STATUS", "ServiceController", "status_text", "task_id_of",
           "parse_task_id"]

log = logging.getLogger("tessera.services")

FRAMEWORK_NAME = "tessera-services"
APPS = "apps/"
STATUS = "status/"
HISTORY = 10  # deployments kept in a status record
# A kill is sent again while the task has not ended after this long (Marathon's --kill_retry_timeout): a
# KillTask reaches the agent once, so one sent while the agent's stream was down is lost (Mesos semantics:
# frameworks retry kills). Without this, a rolling update counted such instances as gone and they kept
# running (tests/bench/bench_services.py: 32 old instances on one agent that re-registered mid-update).
KILL_RETRY_SECONDS = 10.0
READY_SECONDS = 5.0  # an instance of the current version ready this long ends its failures in a row


def config_version(app: App) -> str:
    """The version of what an instance runs: the definition without `instances` (a scale is no new
    version and replaces nothing, as in Marathon)."""
    return App(id=app.id, source={k: v for k, v in app.source.items() if k != "instances"}).version


def status_text(status: dict[str, Any], limit: int = MAX_STATE_VALUE_LENGTH) -> str:
    """A status record as written to the framework's state: whole when it fits in `limit` bytes (a state
    value's limit); otherwise without the instances that do not fit (the first by task id are kept) and
    with `instances_omitted` saying how many. The counts stay exact and the record is never refused for its
    size: whole, one instance takes ~290 bytes, so an app of more than ~220 would exceed
    MAX_STATE_VALUE_LENGTH, its writes would be refused and `tessera service list` would show a stale
    record (found by tests/bench/bench_services.py at 500 instances)."""
    text = json.dumps(status, sort_keys=True)
    if len(text.encode()) <= limit:
        return text
    instances = list(status.get("instances", []))
    rest = {**status, "instances": [], "instances_omitted": len(instances)}
    budget = limit - len(json.dumps(rest, sort_keys=True).encode()) - 16  # the omitted count's digits may shrink
    kept: list[Any] = []
    for inst in instances:
        size = len(json.dumps(inst, sort_keys=True).encode()) + 2  # ", " between items
        if size > budget:
            break
        kept.append(inst)
        budget -= size
    return json.dumps({**rest, "instances": kept, "instances_omitted": len(instances) - len(kept)}, sort_keys=True)


def task_id_of(app: App, n: str) -> str:
    return f"{app.id}.{config_version(app)}.{n}"


def parse_task_id(task_id: str) -> tuple[str, str] | None:
    """(app id, version) of a task this framework launched; None for any other id."""
    parts = task_id.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1]


@dataclass
class Task:
    task_id: str
    app_id: str
    version: str
    agent_id: str = ""
    hostname: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    state: str = "TASK_STAGING"
    healthy: bool | None = None
    launched_at: float = 0.0
    killing: bool = False
    ever_ready: bool = False
    kill_sent_at: float = 0.0  # when a kill was last sent (0: never)
    ready_since: float = 0.0  # when a round first saw it ready (0: not ready)


@dataclass
class Deployment:
    version: str
    started: float
    state: str = "running"  # running, done, failed
    steps: int = 0
    reason: str = ""
    finished: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "state": self.state, "started": self.started, "steps": self.steps,
                "reason": self.reason, "finished": self.finished}


@dataclass
class AppRun:
    app: App
    deployment: Deployment
    history: list[dict[str, Any]] = field(default_factory=list)
    failures: int = 0  # consecutive failures of the current version
    last_failure: float = 0.0
    to_launch: int = 0
    unplaced: str = ""  # why instances wait (constraints, no offer)
    written: str = ""  # the status text last written


def _ready(app: App, task: Task) -> bool:
    if task.state != "TASK_RUNNING":
        return False
    return task.healthy is True if app.health_checks else True


class ServiceController(Scheduler):
    """The `Scheduler` of `tessera services`; `poll()` runs one reconciliation round (the thread started
    by `start_polling` calls it every `poll_seconds`)."""

    def __init__(self, *, poll_seconds: float = 0.5, clock: Callable[[], float] = time.time,
                 refuse_seconds: float = 5.0) -> None:
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.refuse_seconds = refuse_seconds
        self._lock = threading.RLock()
        self._driver: SchedulerDriver | None = None
        self._active = False
        self._apps: dict[str, AppRun] = {}
        self._tasks: dict[str, Task] = {}
        self._suppressed: bool | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []  # definitions in apps/ that do not parse (key: reason)
        # from the status records, after taking over: where each instance runs, each app's deployment
        self._where: dict[str, dict[str, Any]] = {}
        self._restored: dict[str, tuple[dict[str, Any], list[dict[str, Any]], int]] = {}

    # ---- lease ------------------------------------------------------------------------------------
    def became_active(self, driver: SchedulerDriver, lease_term: int) -> None:
        log.info("active at lease term %d", lease_term)
        with self._lock:
            self._driver = driver
            self._active = True
            self._load_status(driver)

    def standing_by(self, driver: SchedulerDriver, framework_id: str, lease_term: int) -> None:
        log.info("standing by (framework %s, lease term %d)", framework_id, lease_term)

    def deposed(self, driver: SchedulerDriver, lease_term: int) -> None:
        log.info("deposed at lease term %d: forgetting", lease_term)
        with self._lock:
            self._active = False
            self._apps.clear()
            self._tasks.clear()
            self._where.clear()
            self._restored.clear()
            self._suppressed = None

    def subscribed(self, driver: SchedulerDriver, framework_id: str) -> None:
        with self._lock:
            self._driver = driver
            self._active = True
            self._suppressed = None
        try:
            statuses = driver.reconcile()
        except TesseraError as exc:
            log.warning("reconciliation failed: %s", exc)
            return
        with self._lock:
            live = set()
            for status in statuses:
                if status.is_terminal:
                    self._tasks.pop(status.task_id, None)
                    continue
                live.add(status.task_id)
                self._record(status)
            for task_id in [t for t in self._tasks if t not in live]:
                self._tasks.pop(task_id)  # gone while nobody watched

    def disconnected(self, driver: SchedulerDriver) -> None:
        with self._lock:
            self._suppressed = None

    def _load_status(self, driver: SchedulerDriver) -> None:
        try:
            entries = driver.kv.list(STATUS)
        except TesseraError as exc:
            log.warning("reading status records failed: %s", exc)
            return
        for entry in entries:
            try:
                doc = json.loads(entry.value)
            except ValueError:
                continue
            for inst in doc.get("instances", []):
                self._where[str(inst.get("task_id", ""))] = inst
                task = self._tasks.get(str(inst.get("task_id", "")))
                if task is not None and not task.hostname:
                    task.hostname, task.attributes = inst.get("hostname", ""), dict(inst.get("attributes", {}))
            deployment = doc.get("deployment") or {}
            app_id = entry.key[len(STATUS):]
            self._restored[app_id] = (deployment, list(doc.get("history", [])), int(doc.get("failures", 0)))

    # ---- task updates ------------------------------------------------------------------------------
    def _record(self, status: TaskStatus) -> Task | None:
        parsed = parse_task_id(status.task_id)
        if parsed is None:
            return None
        task = self._tasks.get(status.task_id)
        if task is None:
            where = self._where.get(status.task_id, {})
            task = Task(status.task_id, parsed[0], parsed[1], agent_id=status.agent_id,
                        hostname=where.get("hostname", ""), attributes=dict(where.get("attributes", {})),
                        launched_at=float(where.get("launched_at", self.clock())))
            self._tasks[status.task_id] = task
        task.state = status.state.name
        if status.agent_id:
            task.agent_id = status.agent_id
        if status.healthy is not None:
            task.healthy = status.healthy
        run = self._apps.get(task.app_id)
        if run is not None and _ready(run.app, task):
            task.ever_ready = True
        return task

    def update(self, driver: SchedulerDriver, status: TaskStatus) -> None:
        with self._lock:
            task = self._record(status)
            if task is None or not status.is_terminal:
                return
            self._tasks.pop(task.task_id, None)
            run = self._apps.get(task.app_id)
            if run is None or task.killing:
                return
            log.info("instance %s ended: %s %s", task.task_id, status.state.name, status.message)
            if task.version == config_version(run.app):
                run.failures += 1
                run.last_failure = self.clock()

    # ---- offers --------------------------------------------------------------------------------------
    def offers(self, driver: SchedulerDriver, offers: list[Offer]) -> None:
        with self._lock:
            now = self.clock()
            plans: dict[str, list[TaskInfo]] = {}
            for offer in offers:
                plans[offer.offer_id] = self._place(offer, now)
        for offer in offers:
            tasks = plans[offer.offer_id]
            try:
                if tasks:
                    driver.launch(offer, tasks)
                else:
                    driver.decline(offer, Filters(1.0 if self._wants_offers() else self.refuse_seconds))
            except TesseraError as exc:
                log.warning("offer %s: %s", offer.offer_id, exc)
                with self._lock:
                    for t in tasks:
                        self._tasks.pop(t.task_id, None)

    def _wants_offers(self) -> bool:
        with self._lock:
            return any(run.to_launch > 0 for run in self._apps.values())

    def _place(self, offer: Offer, now: float) -> list[TaskInfo]:
        free_cpus, free_mem, free_disk = offer.cpus, offer.mem, offer.disk
        free_ports = [p for lo, hi in offer.ports for p in range(lo, hi + 1)][:4096]
        candidate = Placement(offer.hostname, dict(offer.attributes))
        tasks: list[TaskInfo] = []
        for run in sorted(self._apps.values(), key=lambda r: r.app.id):
            app = run.app
            if run.to_launch <= 0 or (run.failures and now < run.last_failure + app.launch_delay(run.failures)):
                continue
            while run.to_launch > 0:
                if app.cpus > free_cpus + 1e-9 or app.mem > free_mem + 1e-9 or app.disk > free_disk + 1e-9:
                    run.unplaced = "no offer with enough cpus/mem/disk"
                    break
                placed = [Placement(t.hostname, t.attributes) for t in self._tasks.values()
                          if t.app_id == app.id and not t.killing]
                if not admits(app.constraints, candidate, placed):
                    run.unplaced = "constraints " + ", ".join(
                        f"{c.attribute} {c.operator}{' ' + c.value if c.value else ''}" for c in app.constraints) \
                        + " admit no offered agent"
                    break
                ports: list[int] = []
                for spec in app.ports:
                    want = spec.host_port
                    if want:
                        if want not in free_ports:
                            break
                        ports.append(want)
                        free_ports.remove(want)
                    else:
                        if not free_ports:
                            break
                        ports.append(free_ports.pop(0))
                if len(ports) != len(app.ports):
                    free_ports.extend(ports)
                    free_ports.sort()
                    run.unplaced = "no offer with the ports the app needs"
                    break
                free_cpus, free_mem, free_disk = free_cpus - app.cpus, free_mem - app.mem, free_disk - app.disk
                info = self._task_info(app, offer, ports)
                tasks.append(info)
                self._tasks[info.task_id] = Task(info.task_id, app.id, config_version(app), agent_id=offer.agent_id,
                                                 hostname=offer.hostname, attributes=dict(offer.attributes),
                                                 launched_at=now)
                run.to_launch -= 1
                run.deployment.steps += 1
                run.unplaced = ""
        return tasks

    def _task_info(self, app: App, offer: Offer, ports: list[int]) -> TaskInfo:
        port_ranges = [(p, p) for p in ports]
        resources = (Resources.of(ports=port_ranges, cpus=app.cpus, mem=app.mem, disk=app.disk) if app.disk
                     else Resources.of(ports=port_ranges, cpus=app.cpus, mem=app.mem))
        env = dict(app.env)
        for n, port in enumerate(ports):
            env[f"PORT{n}"] = str(port)
            if app.ports[n].name:
                env[f"PORT_{app.ports[n].name.upper().replace('-', '_')}"] = str(port)
        if ports:
            env["PORT"] = str(ports[0])
            env["PORTS"] = ",".join(str(p) for p in ports)
        env["TESSERA_APP_ID"] = app.id
        env["TESSERA_APP_VERSION"] = app.version
        labels = dict(app.labels)
        labels["tessera.service"] = app.id
        labels["tessera.version"] = app.version
        container = None
        if app.image:
            container = ContainerInfo(image=app.image, network=app.network, port_mappings=tuple(
                PortMapping(container_port=s.container_port, host_port=p, protocol=s.protocol, name=s.name)
                for s, p in zip(app.ports, ports, strict=True)))
        command: str | tuple[str, ...] = app.cmd or app.args
        return TaskInfo(task_id=task_id_of(app, uuid.uuid4().hex[:8]), name=app.id, resources=resources,
                        command=command, env=env, labels=labels, container=container, user=app.user,
                        health_check=self._health_check(app, ports), shutdown_delay=app.shutdown_delay_seconds)

    @staticmethod
    def _health_check(app: App, ports: list[int]) -> HealthCheck | None:
        if not app.health_checks:
            return None
        spec = app.health_checks[0]
        times: dict[str, Any] = {"delay": spec.delay_seconds, "interval": spec.interval_seconds,
                                 "timeout": spec.timeout_seconds, "grace_period": spec.grace_period_seconds,
                                 "consecutive_failures": spec.max_consecutive_failures}
        if spec.protocol == "COMMAND":
            return HealthCheck(command=spec.command, **times)
        port_spec = app.ports[spec.port_index]
        port = port_spec.container_port if app.image and app.network == "bridge" else ports[spec.port_index]
        if spec.protocol == "TCP":
            return HealthCheck(tcp=TcpCheck(port=port), **times)
        return HealthCheck(http=HttpCheck(port=port, path=spec.path), **times)

    # ---- the reconciliation round ----------------------------------------------------------------------
    def start_polling(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tessera-services-poll", daemon=True)
        self._thread.start()

    def stop_polling(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except TesseraError as exc:
                log.warning("reconciliation round failed: %s", exc)
            except Exception:  # a bug must not end the framework silently
                log.exception("reconciliation round failed")

    def poll(self) -> None:
        with self._lock:
            driver, active = self._driver, self._active
        if driver is None or not active:
            return
        entries = driver.kv.list(APPS)
        apps: dict[str, App] = {}
        errors: list[str] = []
        for entry in entries:
            try:
                apps[entry.key[len(APPS):]] = parse_app(json.loads(entry.value))
            except (ValueError, AppError) as exc:
                errors.append(f"{entry.key}: {exc}")
        kills: list[str] = []
        writes: list[tuple[str, str | None]] = []
        with self._lock:
            if not self._active:
                return
            self.errors = errors
            now = self.clock()
            for app_id, app in apps.items():
                run = self._apps.get(app_id)
                if run is None:
                    run = self._adopt_run(app, now)
                    self._apps[app_id] = run
                elif config_version(run.app) != config_version(app):
                    self._new_deployment(run, app, now)
                run.app = app
                kills += self._step(run, now)
                text = status_text(self._status(run))
                if text != run.written:
                    writes.append((STATUS + app_id, text))
                    run.written = text
            for app_id in [a for a in self._apps if a not in apps]:  # removed: kill everything
                own = [t for t in self._tasks.values() if t.app_id == app_id]
                kills += [t.task_id for t in own if not t.killing]
                for t in own:
                    t.killing = True
                if not own:
                    del self._apps[app_id]
                    writes.append((STATUS + app_id, None))
            for app_id in {t.app_id for t in self._tasks.values()} - set(apps) - set(self._apps):
                kills += [t.task_id for t in self._tasks.values() if t.app_id == app_id and not t.killing]
                for t in self._tasks.values():
                    if t.app_id == app_id:
                        t.killing = True
            kills += [t.task_id for t in self._tasks.values()  # asked before and not ended: ask again
                      if t.killing and t.kill_sent_at and now - t.kill_sent_at >= KILL_RETRY_SECONDS]
            kills = list(dict.fromkeys(kills))
            for task_id in kills:
                if task_id in self._tasks:
                    self._tasks[task_id].kill_sent_at = now
            want = any(run.to_launch > 0 for run in self._apps.values())
            change = self._suppressed is None or self._suppressed == want
            self._suppressed = not want
        for task_id in kills:
            try:
                driver.kill(task_id)
            except TesseraError as exc:
                log.warning("kill %s: %s", task_id, exc)
        for key, value in writes:
            try:
                if value is None:
                    driver.kv.delete(key)
                else:
                    driver.kv.put(key, value)
            except TesseraError as exc:
                log.warning("writing %s: %s", key, exc)
        if change:
            (driver.revive if want else driver.suppress)()

    def _adopt_run(self, app: App, now: float) -> AppRun:
        restored = self._restored.pop(app.id, None)
        if restored is not None:
            deployment, history, failures = restored
            if deployment.get("version") == config_version(app):
                dep = Deployment(config_version(app), float(deployment.get("started", now)), deployment.get("state", "running"),
                                 int(deployment.get("steps", 0)), deployment.get("reason", ""),
                                 float(deployment.get("finished", 0.0)))
                return AppRun(app, dep, history, failures)
        return AppRun(app, Deployment(config_version(app), now))

    def _new_deployment(self, run: AppRun, app: App, now: float) -> None:
        if run.deployment.state == "running":
            run.deployment.state, run.deployment.reason = "superseded", f"version {app.version} was applied"
            run.deployment.finished = now
        run.history = ([run.deployment.to_json()] + run.history)[:HISTORY]
        run.deployment = Deployment(config_version(app), now)
        run.failures = 0

    def _step(self, run: AppRun, now: float) -> list[str]:
        app = run.app
        own = [t for t in self._tasks.values() if t.app_id == app.id]
        current = config_version(app)
        for t in own:  # a process that starts and exits at once is running for a moment: no end of a crash loop
            t.ready_since = (t.ready_since or now) if _ready(app, t) else 0.0
            if t.version == current and not t.killing and t.ready_since and now - t.ready_since >= READY_SECONDS:
                run.failures = 0
        # without a health check, a new instance counts as ready for the deployment once it has been running
        # for READY_SECONDS (Kubernetes' minReadySeconds): old instances are not stopped for a moment's run
        settled = {t.task_id for t in own if t.version != current or app.health_checks
                   or (t.ready_since and now - t.ready_since >= READY_SECONDS)}
        instances = [Instance(t.task_id, app.version if t.version == current else t.version,
                              _ready(app, t) and t.task_id in settled, t.launched_at, t.killing) for t in own]
        if run.deployment.state == "failed":
            run.to_launch = 0
            return []
        step = plan(app, instances, run.failures if run.failures >= failure_limit(app) else 0)
        if step.failed:
            run.deployment.state, run.deployment.reason, run.deployment.finished = "failed", step.failed, now
            run.to_launch = 0
            return []
        for task_id in step.kill:
            self._tasks[task_id].killing = True
        run.deployment.steps += len(step.kill)
        run.to_launch = step.launch
        if step.done and run.deployment.state == "running":
            run.deployment.state, run.deployment.finished = "done", now
        elif not step.done and run.deployment.state == "done":
            run.deployment.state = "running"  # an instance ended: the app is being restored
        if step.launch == 0:
            run.unplaced = ""
        return list(step.kill)

    def _status(self, run: AppRun) -> dict[str, Any]:
        app = run.app
        own = sorted((t for t in self._tasks.values() if t.app_id == app.id), key=lambda t: t.task_id)
        live = [t for t in own if not t.killing]
        return {
            "id": app.id, "version": config_version(app), "wanted": app.instances,
            "running": sum(1 for t in live if t.state == "TASK_RUNNING"),
            "healthy": sum(1 for t in live if _ready(app, t)),
            "waiting": run.to_launch, "unplaced": run.unplaced if run.to_launch else "",
            "failures": run.failures,
            "deployment": run.deployment.to_json(), "history": run.history,
            "instances": [{"task_id": t.task_id, "version": t.version, "agent_id": t.agent_id,
                           "hostname": t.hostname, "attributes": t.attributes, "state": t.state,
                           "healthy": t.healthy, "killing": t.killing, "launched_at": t.launched_at,
                           "ever_ready": t.ever_ready} for t in own],
        }

    def snapshot(self) -> Mapping[str, dict[str, Any]]:
        """Each app's status record as it would be written now (for tests and the log)."""
        with self._lock:
            return {app_id: self._status(run) for app_id, run in self._apps.items()}
