"""docs/cli.md is the command tree's own help (`ops/gen_cli_docs.py`), kept current like the generated
protobuf code: a command or option changed without regenerating fails here. `tessera completion SHELL`
prints Click's completion script for the whole tree, and bash really completes with it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner

from tessera.control_plane.cli.main import cli

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[3]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "ops" / "gen_cli_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_cli_md_is_what_the_command_tree_renders() -> None:
    assert (ROOT / "docs" / "cli.md").read_text() == _generator().render(), \
        "docs/cli.md is stale: run python ops/gen_cli_docs.py"


def test_the_reference_covers_every_command_and_names_the_environment_variables() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    for heading in ("## tessera master", "## tessera agent drain", "## tessera completion", "## tessera run"):
        assert f"\n{heading}\n" in text
    assert "TESSERA_MASTER_AGENT_TIMEOUT" in text and "--log-format [text|json]" in text


def test_the_check_mode_fails_on_a_stale_page_and_ignores_the_terminal_and_the_environment(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "40", "TESSERA_MASTERS": "192.0.2.1:5050", "TESSERA_MASTER_AGENT_TIMEOUT": "3"}
    check = [sys.executable, str(ROOT / "ops" / "gen_cli_docs.py"), "--check"]
    assert subprocess.run(check, env=env, capture_output=True, timeout=60).returncode == 0
    # the same script against a copy of the tree whose page lost a line
    copy = tmp_path / "tree"
    (copy / "ops").mkdir(parents=True)
    (copy / "docs").mkdir()
    shutil.copy(ROOT / "ops" / "gen_cli_docs.py", copy / "ops")
    stale = (ROOT / "docs" / "cli.md").read_text().replace("TESSERA_MASTER_AGENT_TIMEOUT", "TESSERA_X", 1)
    (copy / "docs" / "cli.md").write_text(stale)
    done = subprocess.run([sys.executable, str(copy / "ops" / "gen_cli_docs.py"), "--check"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "docs/cli.md is stale" in done.stderr


@pytest.mark.parametrize(("shell", "marker"), [("bash", "complete -o nosort -F _tessera_completion tessera"),
                                               ("zsh", "#compdef tessera"),
                                               ("fish", "complete --no-files --command tessera")])
def test_completion_prints_clicks_script_for_each_shell(shell: str, marker: str) -> None:
    result = CliRunner().invoke(cli, ["completion", shell])
    assert result.exit_code == 0, result.output
    assert marker in result.output and "_TESSERA_COMPLETE" in result.output


def test_completion_refuses_another_shell_naming_the_choices() -> None:
    result = CliRunner().invoke(cli, ["completion", "tcsh"])
    assert result.exit_code == 2 and "'tcsh' is not one of 'bash', 'zsh', 'fish'" in result.output


def test_bash_completes_commands_and_choices_with_the_script() -> None:
    bash = shutil.which("bash")
    assert bash is not None, "bash (Debian package bash) is needed to run the completion script"
    tessera = Path(sys.executable).with_name("tessera")
    assert tessera.exists(), f"{tessera}: the editable install's entry point (pip install -e '.[dev]')"
    script = """
source <(tessera completion bash)
COMP_WORDS=(tessera mas); COMP_CWORD=1; COMPREPLY=(); _tessera_completion tessera; echo "${COMPREPLY[*]}"
COMP_WORDS=(tessera master --log-format ''); COMP_CWORD=3; COMPREPLY=(); _tessera_completion tessera
echo "${COMPREPLY[*]}"
"""
    env = {**os.environ, "PATH": f"{tessera.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([bash, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["master", "text json"], done.stdout + done.stderr
