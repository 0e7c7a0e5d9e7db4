"""`tessera service scale|restart|remove` against an in-memory Operator: each reads the app's stored
definition, changes only what it names, and writes it back with compare-and-set on the version it read."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner

from tessera.control_plane.cli.services import service
from tessera.sdk.services.app import parse_app
from tessera.v1 import common_pb2, operator_pb2

WEB = {"id": "web", "instances": 2, "cpus": 0.1, "mem": 32, "cmd": "python3 -m http.server $PORT0",
       "portDefinitions": [{"port": 0, "name": "http"}], "labels": {"team": "a"}}


class _Names:
    def __getattr__(self, name: str) -> str:
        return name


class FakeOperator:
    """The context object the commands get (`call`, `as_json`, `emit`), over one framework's state."""

    def __init__(self, state: dict[str, tuple[str, int]]) -> None:
        self.state = dict(state)
        self.writes: list[operator_pb2.FrameworkStateWrite] = []
        self.as_json = False

    def emit(self, data: Any) -> None:
        print(json.dumps(data))

    def call(self, method: Callable[[Any], Any], request: Any, **kw: Any) -> Any:
        name = method(_Names())
        if name == "GetState":
            return operator_pb2.GetStateResponse(frameworks=[operator_pb2.FrameworkView(
                framework_id="fw-1", info=common_pb2.FrameworkInfo(name="tessera-services"))])
        if name == "GetFrameworkState":
            entries = [operator_pb2.FrameworkStateEntry(key=k, value=v, version=n)
                       for k, (v, n) in sorted(self.state.items()) if k.startswith(request.prefix)]
            return operator_pb2.GetFrameworkStateResponse(entries=entries)
        assert name == "WriteFrameworkState" and request.framework_id == "fw-1"
        versions = []
        for w in request.writes:
            assert self.state[w.key][1] == w.expected_version, "compare-and-set on the version read"
            self.writes.append(w)
            if w.delete:
                del self.state[w.key]
                versions.append(0)
            else:
                self.state[w.key] = (w.value, w.expected_version + 1)
                versions.append(w.expected_version + 1)
        return operator_pb2.WriteFrameworkStateResponse(versions=versions)


def run(fake: FakeOperator, *args: str) -> str:
    result = CliRunner().invoke(service, list(args), obj=fake, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture()
def fake() -> FakeOperator:
    return FakeOperator({"apps/web": (json.dumps(WEB), 7)})


def stored(fake: FakeOperator) -> dict[str, Any]:
    return json.loads(fake.state["apps/web"][0])  # type: ignore[no-any-return]


def test_scale_changes_only_the_instances_and_keeps_the_version_of_the_app(fake: FakeOperator) -> None:
    before = parse_app(WEB).version
    assert run(fake, "scale", "web", "5") == "service web: 5 instance(s)\n"
    assert stored(fake) == {**WEB, "instances": 5}
    assert [(w.key, w.expected_version) for w in fake.writes] == [("apps/web", 7)]
    assert parse_app(stored(fake)).version != before  # the digest covers instances; deployments ignore it


def test_restart_adds_a_restart_label_so_every_instance_is_replaced(fake: FakeOperator) -> None:
    out = run(fake, "restart", "web")
    doc = stored(fake)
    assert doc["labels"]["team"] == "a" and float(doc["labels"]["tessera.restarted"]) > 0
    assert {k: v for k, v in doc.items() if k != "labels"} == {k: v for k, v in WEB.items() if k != "labels"}
    assert out == f"service web: restarting as version {parse_app(doc).version}\n"
    assert WEB["labels"] == {"team": "a"}  # the command did not change what it read in place
    run(fake, "restart", "web")
    assert [w.expected_version for w in fake.writes] == [7, 8]


def test_remove_deletes_the_app_at_the_version_read(fake: FakeOperator) -> None:
    assert run(fake, "remove", "web") == "service web: removed\n"
    assert "apps/web" not in fake.state and fake.writes[0].delete and fake.writes[0].expected_version == 7


def test_a_missing_app_is_named(fake: FakeOperator) -> None:
    result = CliRunner().invoke(service, ["scale", "api", "3"], obj=fake)
    assert result.exit_code == 1 and "no service 'api'" in result.output and not fake.writes
