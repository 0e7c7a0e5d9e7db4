"""Every client finds the masters the same way (`tls.find_masters` over `wire.choose_masters`): the CLI,
the SDK's drivers, `tessera run`; and when none answers, it says where the addresses came from, after a
second when nothing listens there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tessera.control_plane.cli.main import cli
from tessera.control_plane.tls import find_masters
from tests.support.cluster import free_port, wait_for
from tests.support.inprocess import InProcessMaster

pytestmark = pytest.mark.timeout(60)


def write_cluster_file(directory: Path, masters: list[str], status: str = "running") -> Path:
    path = directory / ".tessera" / "cluster.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"status": status, "masters": masters}))
    return path


def test_find_masters_reads_the_nearest_cluster_file_only_without_flag_and_variable(tmp_path: Path) -> None:
    path = write_cluster_file(tmp_path, ["127.0.0.1:7001"])
    below = tmp_path / "a" / "b"
    below.mkdir(parents=True)
    found = find_masters(None, environ={}, start=below)
    assert found.addresses == ("127.0.0.1:7001",) and found.source == str(path)
    assert find_masters(None, environ={"TESSERA_MASTERS": "h:2"}, start=below).source == "TESSERA_MASTERS"
    assert find_masters("h:3", environ={"TESSERA_MASTERS": "h:2"}, start=below).addresses == ("h:3",)
    path.write_text("garbage")  # never read when a flag or the variable names the masters
    assert find_masters(None, environ={"TESSERA_MASTERS": "h:2"}, start=below).addresses == ("h:2",)
    with pytest.raises(ValueError, match="cluster.json: not a JSON document"):
        find_masters(None, environ={}, start=below)


def tessera(*args: str, env: dict[str, str | None] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env={"TESSERA_MASTERS": None, **(env or {})})
    return result.exit_code, result.output


def test_the_cli_uses_the_cluster_file_and_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with InProcessMaster() as node:
        monkeypatch.chdir(tmp_path)
        write_cluster_file(tmp_path, [node.grpc_address])
        code, out = tessera("--json", "quorum", "status")
        assert code == 0 and json.loads(out)["leader_grpc"] == node.grpc_address, out
        code, out = tessera("quorum", "status")
        assert code == 0 and "ui m1: none (started without --http)" in out, out
        node.server.operator.quorum.ui_url = "http://127.0.0.1:8123/"
        code, out = tessera("quorum", "status")
        assert code == 0 and "ui m1: http://127.0.0.1:8123/" in out, out
        down = f"127.0.0.1:{free_port()}"
        code, out = tessera("quorum", "status", env={"TESSERA_MASTERS": down})
        assert code == 1 and f"no master answered at {down}" in out and "masters from TESSERA_MASTERS" in out


def test_nothing_listening_fails_at_once_with_where_the_masters_came_from(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .tessera here, nor (in a temporary directory) above
    import socket

    with socket.socket() as probe:  # the default address must be free for this test to mean anything
        assert probe.connect_ex(("127.0.0.1", 5050)) != 0, "something listens on 127.0.0.1:5050: stop it to run this"
    code, out = tessera("agents")
    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, out
    assert lines[0].startswith("tessera: no master answered at 127.0.0.1:5050 (connection refused")
    assert "masters from the default (no --masters, TESSERA_MASTERS or .tessera/cluster.json)" in lines[0]
    assert "is the cluster up?" in lines[0] and "--tls-dir" not in lines[0]  # nothing to do with TLS
    path = write_cluster_file(tmp_path, [f"127.0.0.1:{free_port()}"], status="stopped")
    code, out = tessera("--timeout", "30", "tasks")  # the refusal, not the 30 s, ends it
    assert code == 1 and f"masters from {path.resolve()} (a cluster stopped there)" in out, out


def test_a_malformed_source_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out = tessera("agents", env={"TESSERA_MASTERS": "nohost"})
    assert code == 2 and out.strip() == "tessera: TESSERA_MASTERS: expected HOST:PORT, got 'nohost'"
    code, out = tessera("agents", "--masters", "h:0")
    assert code == 2 and out.strip() == "tessera: --masters: expected HOST:PORT, got 'h:0'"


def test_the_sdk_driver_without_masters_finds_them_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tessera.sdk import FrameworkInfo, Scheduler, SchedulerDriver
    from tessera.sdk.testing import FakeMaster

    fake = FakeMaster(["127.0.0.1:7101"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TESSERA_MASTERS", raising=False)
    write_cluster_file(tmp_path, ["127.0.0.1:7101"])
    driver = SchedulerDriver(Scheduler(), FrameworkInfo(name="found"), transport=fake.transport(), give_up_after=5)
    driver.start()
    try:
        wait_for(lambda: driver.is_subscribed, 10, what="a subscription")
        assert [a for a, _ in fake.subscribe_requests][:1] == ["127.0.0.1:7101"]
    finally:
        driver.stop()
    fake.set_down("127.0.0.1:7101")
    monkeypatch.setenv("TESSERA_MASTERS", "127.0.0.1:7101")
    failing = SchedulerDriver(Scheduler(), FrameworkInfo(name="lost"), transport=fake.transport(), give_up_after=0.3)
    failing.start()
    assert failing.join(10)
    assert failing.failure is not None and failing.failure.endswith("(masters from TESSERA_MASTERS)"), failing.failure
