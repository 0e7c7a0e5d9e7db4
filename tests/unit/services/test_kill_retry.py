"""The service controller asks again for a kill that did not end the task (a KillTask reaches the agent
once: one sent while the agent's stream was down is lost), every KILL_RETRY_SECONDS, until it ends."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from tessera.sdk import TaskState, TaskStatus
from tessera.sdk.services.app import parse_app
from tessera.sdk.services.controller import APPS, KILL_RETRY_SECONDS, ServiceController, task_id_of


class Kv:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def list(self, prefix: str = "") -> list[Any]:
        return [SimpleNamespace(key=k, value=v) for k, v in sorted(self.values.items()) if k.startswith(prefix)]

    def put(self, key: str, value: str) -> int:
        self.values[key] = value
        return 1

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


class Driver:
    def __init__(self) -> None:
        self.kv = Kv()
        self.killed: list[str] = []

    def kill(self, task_id: str) -> None:
        self.killed.append(task_id)

    def revive(self) -> None:
        pass

    def suppress(self) -> None:
        pass


def test_a_kill_that_did_not_end_the_task_is_sent_again_until_the_task_ends() -> None:
    now = [1000.0]
    driver = Driver()
    controller = ServiceController(clock=lambda: now[0])
    controller.became_active(driver, 1)  # type: ignore[arg-type]
    doc = {"id": "web", "instances": 1, "cpus": 0.1, "mem": 32, "cmd": "sleep 100"}
    driver.kv.put(APPS + "web", json.dumps(doc))
    controller.poll()
    task_id = task_id_of(parse_app(doc), "a")
    controller.update(driver, TaskStatus(task_id=task_id, state=TaskState.TASK_RUNNING))  # type: ignore[arg-type]
    controller.poll()
    assert driver.killed == []

    driver.kv.put(APPS + "web", json.dumps({**doc, "instances": 0}))
    controller.poll()
    assert driver.killed == [task_id]
    now[0] += KILL_RETRY_SECONDS / 2
    controller.poll()
    assert driver.killed == [task_id]  # not yet: the kill may be under way
    now[0] += KILL_RETRY_SECONDS / 2
    controller.poll()
    assert driver.killed == [task_id, task_id]  # the task still runs: asked again
    controller.update(driver, TaskStatus(task_id=task_id, state=TaskState.TASK_KILLED))  # type: ignore[arg-type]
    now[0] += KILL_RETRY_SECONDS
    controller.poll()
    assert driver.killed == [task_id, task_id]  # it ended: nothing more
