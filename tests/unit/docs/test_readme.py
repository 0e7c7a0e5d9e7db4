"""The README's framework example runs as written (it finds the master through TESSERA_MASTERS) against a
real master over gRPC with an agent that runs its task, and the quick-start commands exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tessera.control_plane.cli.main import cli
from tests.support.inprocess import InProcessMaster
from tests.support.scripted import ScriptedAgent

ROOT = Path(__file__).resolve().parents[3]
README = (ROOT / "README.md").read_text()

pytestmark = pytest.mark.timeout(120)


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_the_readme_framework_runs_a_task_to_the_end(tmp_path: Path) -> None:
    (snippet,) = [b for b in code_blocks("python") if "SchedulerDriver" in b]
    with InProcessMaster() as node:
        agent = ScriptedAgent(node.channel).start()
        assert agent.registered.wait(5)
        script = tmp_path / "hello.py"
        script.write_text(snippet)  # as written: the driver finds the master through TESSERA_MASTERS
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path, env={**env, "TESSERA_MASTERS": node.grpc_address})
        agent.close()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["hello", "TASK_STARTING", "hello", "TASK_RUNNING", "hello", "TASK_FINISHED"]


def test_every_tessera_command_in_the_readme_exists() -> None:
    runner = CliRunner()
    commands = set()
    for block in code_blocks("bash"):
        for line in block.splitlines():
            for part in line.split(";"):
                words = part.split("#")[0].split()
                if len(words) >= 2 and words[0] == "tessera" and not words[1].startswith("-"):
                    commands.add(tuple(w for w in words[1:3] if re.fullmatch(r"[a-z]+", w)))
                elif len(words) >= 2 and words[0] == "tessera":  # an option of the group: `tessera --version`
                    assert runner.invoke(cli, words[1:2]).exit_code == 0, line
    assert ("up",) in commands or any(c[:1] == ("up",) for c in commands)
    import click

    for words in sorted(commands):
        command = cli.commands.get(words[0])
        assert command is not None, f"`tessera {words[0]}` is in the README but not in the CLI"
        if isinstance(command, click.Group) and len(words) > 1 and words[1] in command.commands:
            continue  # a known subcommand
        if isinstance(command, click.Group) and len(words) > 1 and not command.invoke_without_command:
            raise AssertionError(f"`tessera {' '.join(words)}`: {words[1]} is not a subcommand")
        assert runner.invoke(cli, [words[0], "--help"]).exit_code == 0
