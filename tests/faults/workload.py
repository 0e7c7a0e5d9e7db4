"""A framework process for the fault-injection suite: launches, kills and finishes tasks, and records
everything it saw, so the checker can compare the clients' view with the masters' logs.

    python -m tests.faults.workload --masters H:P,H:P,H:P --record fw1.jsonl --name fw1 --seed 7 \\
        --stop-file STOP

It is an ordinary SDK framework (`sdk.SchedulerDriver`, explicit acknowledgements). While the stop
file does not exist it launches short tasks into its offers (a few concurrently: `sleep`s that
finish, some that fail, some it kills), declines the rest with a short filter so offers keep flowing,
and kills a running task now and then. Once the stop file appears it launches nothing more, waits
until every task it launched (or may have launched: a launch whose outcome it never learnt) is
terminal by reconciliation, records the final states and tears the framework down.

The record is one JSON object per line, flushed at once (`t` is unix time):
- `{"kind": "subscribed", "framework_id"}`, `{"kind": "disconnected"}`, `{"kind": "offers", "n"}`;
- `{"kind": "call", "call": "launch"|"kill"|"acknowledge"|"teardown", "request_id", "ok", "error",
  "task_ids", "uuid"}`: every call with the request id the driver used (retries reuse it);
- `{"kind": "update", "task_id", "state", "uuid", "agent_id"}`: every status update delivered;
- `{"kind": "final", "states": {task_id: state}}`: the reconciled end state of every launched task.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tessera.sdk import (
    Filters,
    FrameworkInfo,
    Offer,
    Resources,
    Scheduler,
    SchedulerDriver,
    TaskInfo,
    TaskStatus,
    TesseraError,
)

log = logging.getLogger("tessera.faults.workload")

TASK_RESOURCES = Resources.of(cpus=0.1, mem=16)


class Recorder:
    def __init__(self, path: Path) -> None:
        self._file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()

    def __call__(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"t": time.time(), "kind": kind, **fields}, sort_keys=True)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


class RecordingFramework(Scheduler):
    def __init__(self, name: str, rng: random.Random, record: Recorder, stop_file: Path,
                 max_running: int = 4) -> None:
        self.name = name
        self.rng = rng
        self.record = record
        self.stop_file = stop_file
        self.max_running = max_running
        self.lock = threading.Lock()
        self.running: set[str] = set()  # launched (acknowledged), not seen terminal
        self.launched: set[str] = set()  # every task id we tried to launch, acknowledged or not
        self.terminal: dict[str, str] = {}
        self.counter = 0
        self._local = threading.local()
        self.driver: SchedulerDriver | None = None

    # ---- request ids: the driver asks once per call; we remember it for the record -------------
    def new_request_id(self) -> str:
        rid = uuid.uuid4().hex
        self._local.rid = rid
        return rid

    def _call(self, call: str, fn: Callable[[], Any], **fields: Any) -> Any:
        self._local.rid = ""
        try:
            result = fn()
        except TesseraError as exc:
            self.record("call", call=call, request_id=self._local.rid, ok=False,
                        error=f"{type(exc).__name__}: {exc}", **fields)
            raise
        self.record("call", call=call, request_id=self._local.rid, ok=True, error="", **fields)
        return result

    @property
    def stopping(self) -> bool:
        return self.stop_file.exists()

    # ---- callbacks -----------------------------------------------------------------------------
    def subscribed(self, driver: SchedulerDriver, framework_id: str) -> None:
        self.record("subscribed", framework_id=framework_id)

    def disconnected(self, driver: SchedulerDriver) -> None:
        self.record("disconnected")

    def offers(self, driver: SchedulerDriver, offers: list[Offer]) -> None:
        self.record("offers", n=len(offers), offer_ids=[o.offer_id for o in offers])
        for offer in offers:
            tasks = self._tasks_for(offer)
            try:
                if tasks:
                    ids = [t.task_id for t in tasks]
                    self._call("launch", lambda o=offer, ts=tasks: driver.launch(o, ts, Filters(0.5)),
                               task_ids=ids, offer_id=offer.offer_id, agent_id=offer.agent_id)
                    with self.lock:
                        self.running.update(i for i in ids if i not in self.terminal)
                else:
                    driver.decline(offer, Filters(0.5))
            except TesseraError as exc:
                log.info("offer %s: %s", offer.offer_id, exc)

    def _tasks_for(self, offer: Offer) -> list[TaskInfo]:
        if self.stopping:
            return []
        with self.lock:
            room = self.max_running - len(self.running)
        left = offer.resources
        tasks = []
        for _ in range(min(room, self.rng.randint(0, 2))):
            if not left.contains(TASK_RESOURCES):
                break
            left = left - TASK_RESOURCES
            self.counter += 1
            roll = self.rng.random()
            if roll < 0.15:
                command = f"sleep {self.rng.uniform(0.1, 0.5):.2f}; exit 3"  # ends TASK_FAILED
            elif roll < 0.35:
                command = "sleep 30"  # runs until we kill it
            else:
                command = f"sleep {self.rng.uniform(0.2, 2.5):.2f}"
            task_id = f"{self.name}-{self.counter}"
            with self.lock:
                self.launched.add(task_id)
            tasks.append(TaskInfo(task_id=task_id, resources=TASK_RESOURCES, command=command,
                                  kill_grace_period=0.5))
        return tasks

    def update(self, driver: SchedulerDriver, status: TaskStatus) -> None:
        self.record("update", task_id=status.task_id, state=status.state.name, uuid=status.uuid,
                    agent_id=status.agent_id, message=status.message)
        if status.is_terminal:
            with self.lock:
                self.terminal[status.task_id] = status.state.name
                self.running.discard(status.task_id)
        if status.uuid:
            try:
                self._call("acknowledge", lambda: driver.acknowledge(status), task_ids=[status.task_id],
                           uuid=status.uuid)
            except TesseraError as exc:
                log.info("ack %s: %s", status.uuid, exc)  # re-sent after the next subscription

    def error(self, driver: SchedulerDriver, message: str) -> None:
        self.record("error", message=message)

    # ---- the killer and the end ---------------------------------------------------------------
    def kill_some(self, stop: threading.Event) -> None:
        assert self.driver is not None
        while not stop.wait(self.rng.uniform(0.5, 1.5)):
            if self.stopping:
                with self.lock:
                    victims = sorted(self.running)  # the long sleepers must end for the run to end
            else:
                with self.lock:
                    victims = [self.rng.choice(sorted(self.running))] if self.running and self.rng.random() < 0.5 else []
            for task_id in victims:
                try:
                    self._call("kill", lambda t=task_id: self.driver.kill(t), task_ids=[task_id])  # type: ignore[union-attr]
                except TesseraError as exc:
                    log.info("kill %s: %s", task_id, exc)

    def finish(self, driver: SchedulerDriver, timeout: float) -> bool:
        """Wait until every task we may have launched is terminal by reconciliation, record, tear down."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            with self.lock:
                ids = sorted(self.launched)
            try:
                answers = driver.reconcile(ids) if ids else []
            except TesseraError as exc:
                log.info("reconcile: %s", exc)
                time.sleep(0.5)
                continue
            states = {s.task_id: s.state.name for s in answers}
            open_ids = [t for t in ids if not _terminal(states.get(t, "TASK_LOST"))]
            with self.lock:
                unseen = [t for t in ids if t in states and _terminal(states[t])
                          and states[t] != "TASK_LOST" and t not in self.terminal]
            if not open_ids and not unseen:
                self.record("final", states=states)
                try:
                    self._call("teardown", driver.teardown)
                except TesseraError as exc:
                    log.warning("teardown: %s", exc)
                return True
            time.sleep(0.5)
        self.record("final", states=states, timed_out=True)
        return False


def _terminal(state: str) -> bool:
    return state in {"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_LOST", "TASK_ERROR", "TASK_DROPPED",
                     "TASK_GONE"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.workload")
    parser.add_argument("--masters", required=True)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-file", type=Path, required=True)
    parser.add_argument("--drain-timeout", type=float, default=90.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.name} %(levelname)s %(name)s: %(message)s")
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the fault runner asks a hung workload where it is
    record = Recorder(args.record)
    fw = RecordingFramework(args.name, random.Random(args.seed), record, args.stop_file)
    driver = SchedulerDriver(fw, FrameworkInfo(name=args.name, roles=("default",), failover_timeout=300.0),
                             args.masters.split(","), implicit_acknowledgements=False,
                             request_ids=fw.new_request_id, call_timeout=20.0, rpc_timeout=3.0)
    fw.driver = driver
    driver.start()
    stop = threading.Event()
    killer = threading.Thread(target=fw.kill_some, args=(stop,), daemon=True)
    killer.start()
    while not args.stop_file.exists():
        time.sleep(0.2)
    ok = fw.finish(driver, args.drain_timeout)
    stop.set()
    driver.stop()
    if not driver.join(10.0):  # as the SDK's examples do: its streams and channels are closed before exit
        log.warning("the driver did not stop within 10 s")
    record.close()
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
