"""The agent process surface: run_agent's exit codes and one-line errors, the data dir lock, the click
command, the emulated mode, the public names of the package, and the supervisor staying light."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

import tessera.agent as agent
from tessera.agent.config import AgentConfig
from tessera.agent.main import run_agent
from tests.unit.agent.fake_master import FakeMaster


def test_public_names() -> None:
    assert sorted(agent.__all__) == sorted(["AgentConfig", "ConfigError", "EmulatedAgents", "EmulatedConfig",
                                           "agent_main", "detect_resources", "run_agent", "run_emulated"])
    for name in agent.__all__:
        assert getattr(agent, name) is not None
    with pytest.raises(AttributeError):
        agent.nothing_here  # noqa: B018


def test_supervisor_imports_neither_grpc_nor_the_runtime() -> None:
    code = ("import sys, tessera.agent.executor.supervisor; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('grpc', 'sqlite_utils', 'click') "
            "or m.startswith('tessera.agent.runtime')]; print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("overrides, flag", [
    ({"resources": "mem:-5"}, "--resources"),
    ({"masters": ("nope",)}, "--masters"),
    ({"isolation": "jail"}, "--isolation"),
    ({"attributes": "rack"}, "--attributes"),
])
def test_configuration_error_prints_one_line_and_returns_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          overrides: dict[str, object], flag: str) -> None:
    settings: dict[str, object] = {"masters": ("127.0.0.1:1",), "data_dir": tmp_path / "d"}
    settings.update(overrides)
    assert run_agent(AgentConfig(**settings)) == 2  # type: ignore[arg-type]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tessera agent: ") and flag in err[0]


def test_unwritable_data_dir_returns_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    assert run_agent(AgentConfig(masters=("127.0.0.1:1",), data_dir=tmp_path / "file" / "d")) == 2
    assert "--data-dir" in capsys.readouterr().err


def test_second_agent_on_the_same_data_dir_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    master = FakeMaster()
    master.start()
    stop = threading.Event()
    config = AgentConfig(masters=(master.address,), data_dir=tmp_path / "d", isolation="rlimits",
                         heartbeat_interval=0.2, resources="cpus:1;mem:256;disk:256")
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(run_agent(config, stop=stop)), daemon=True)
    thread.start()
    try:
        master.wait_for(lambda: master.heartbeats > 0, what="the first agent")
        assert run_agent(config) == 2
        assert "in use by another agent" in capsys.readouterr().err
    finally:
        stop.set()
        thread.join(20)
        master.stop()
    assert result == [0]


def test_run_agent_serves_until_stopped_and_keeps_the_identity(tmp_path: Path) -> None:
    master = FakeMaster()
    master.start()
    try:
        for round_ in range(2):
            stop = threading.Event()
            config = AgentConfig(masters=(master.address,), data_dir=tmp_path / "d", isolation="rlimits",
                                 heartbeat_interval=0.2)
            result: list[int] = []
            thread = threading.Thread(target=lambda c=config, s=stop, r=result: r.append(run_agent(c, stop=s)),
                                      daemon=True)
            thread.start()
            master.wait_for(lambda n=round_: len(master.registers) > n and master.heartbeats > 0,
                            what="registration")
            stop.set()
            thread.join(20)
            assert result == [0]
        assert [r.agent_id for r in master.registers] == ["", "agent-1"]
    finally:
        master.stop()


def test_emulated_mode_of_run_agent_registers_without_a_data_dir_checkpoint(tmp_path: Path) -> None:
    master = FakeMaster()
    master.start()
    stop = threading.Event()
    config = AgentConfig(masters=(master.address,), data_dir=tmp_path / "unused", emulated=True,
                         hostname="emu", heartbeat_interval=0.2)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(run_agent(config, stop=stop)), daemon=True)
    thread.start()
    try:
        master.wait_for(lambda: master.registers and master.heartbeats > 0, what="the emulated registration")
        assert master.registers[0].info.isolator == "emulated"
        assert master.registers[0].info.hostname == "emu-1"
    finally:
        stop.set()
        thread.join(20)
        master.stop()
    assert result == [0] and not (tmp_path / "unused" / "agent.db").exists()


def test_click_command_help_and_bad_flags() -> None:
    from tessera.agent.cli import agent_main

    runner = CliRunner()
    out = runner.invoke(agent_main, ["--help"])
    assert out.exit_code == 0
    for flag in ("--masters", "--data-dir", "--resources", "--attributes", "--hostname", "--heartbeat-interval",
                 "--isolation", "--supervisor-start", "--work-dir"):
        assert flag in out.output
    assert runner.invoke(agent_main, ["--data-dir", "/tmp/x", "--isolation", "jail"]).exit_code == 2
    assert runner.invoke(agent_main, ["--data-dir", "/tmp/x", "--supervisor-start", "exec"]).exit_code == 2
    assert runner.invoke(agent_main, []).exit_code == 2  # --data-dir is required


def test_click_command_reports_a_bad_resource_flag_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "tessera.agent.cli", "--masters", "127.0.0.1:1", "--data-dir",
                           str(tmp_path / "d"), "--resources", "cpus:many"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["tessera agent: --resources: cannot parse quantity 'many' of resource cpus"]
