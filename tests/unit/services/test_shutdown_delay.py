"""`shutdownDelaySeconds` from the app definition to the wire: parsed and bounded, carried by every
instance's TaskInfo (the SDK's `shutdown_delay`, TaskInfo field 12), checked by the master."""

from __future__ import annotations

import pytest

from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.state import check_task_info
from tessera.control_plane.core.values import CommandInfo
from tessera.control_plane.core.values import TaskInfo as CoreTaskInfo
from tessera.sdk import Resources, TaskInfo
from tessera.sdk._convert import task_from_proto, task_to_proto
from tessera.sdk.services.app import AppError, parse_app
from tessera.sdk.services.controller import ServiceController
from tessera.sdk.types import Offer

APP = {"id": "web", "instances": 1, "cpus": 0.1, "mem": 32, "cmd": "serve", "portDefinitions": [{"port": 0}]}


def test_an_app_asks_for_a_shutdown_delay_and_every_instance_carries_it() -> None:
    assert parse_app(APP).shutdown_delay_seconds == 0.0
    app = parse_app({**APP, "shutdownDelaySeconds": 3})
    assert app.shutdown_delay_seconds == 3.0 and app.version != parse_app(APP).version  # a new version
    offer = Offer(offer_id="o1", agent_id="a1", resources=Resources.of(cpus=1, mem=128, ports=[(31000, 31010)]))
    info = ServiceController()._task_info(app, offer, [31000])
    assert info.shutdown_delay == 3.0
    wire = task_to_proto(info)
    assert wire.shutdown_delay_seconds == 3.0 and task_from_proto(wire).shutdown_delay == 3.0


@pytest.mark.parametrize("value", [-1, 3601, "3", True])
def test_a_bad_shutdown_delay_is_refused_naming_the_field(value: object) -> None:
    with pytest.raises(AppError, match=r"^shutdownDelaySeconds: "):
        parse_app({**APP, "shutdownDelaySeconds": value})


def test_the_sdk_and_the_master_refuse_a_negative_or_huge_delay() -> None:
    with pytest.raises(InvalidRequest, match="shutdown_delay"):
        TaskInfo(task_id="t", resources=Resources.of(cpus=1), command="x", shutdown_delay=-1)
    with pytest.raises(InvalidRequest, match="shutdown_delay"):
        TaskInfo(task_id="t", resources=Resources.of(cpus=1), command="x", shutdown_delay=float("inf"))
    task = CoreTaskInfo(task_id="t", resources=Resources.of(cpus=1), command=CommandInfo(value="x"),
                        shutdown_delay_seconds=-0.5)
    with pytest.raises(InvalidRequest, match=r"task\.shutdown_delay_seconds"):
        check_task_info(task)
    with pytest.raises(InvalidRequest, match=r"task\.shutdown_delay_seconds"):
        check_task_info(CoreTaskInfo(task_id="t", resources=Resources.of(cpus=1), command=CommandInfo(value="x"),
                                     shutdown_delay_seconds=7200))
    assert check_task_info(CoreTaskInfo(task_id="t", resources=Resources.of(cpus=1), command=CommandInfo(value="x"),
                                        shutdown_delay_seconds=30)).shutdown_delay_seconds == 30


def test_a_task_pickled_before_the_field_existed_loads_without_a_delay() -> None:
    task = CoreTaskInfo(task_id="t", resources=Resources.of(cpus=1), command=CommandInfo(value="x"))
    state = task.__getstate__()  # type: ignore[attr-defined]
    older = CoreTaskInfo.__new__(CoreTaskInfo)
    older.__setstate__(list(state)[:-1])  # type: ignore[attr-defined]  # as written before field 12
    assert older == task and older.shutdown_delay_seconds == 0.0
