"""Every TESSERA_* environment variable Tessera obeys is documented in some command's `--help`: the ones the
source reads by name (`os.environ.get("TESSERA_...")`, `envvar="TESSERA_..."`, a module constant holding
the name), and the `TESSERA_<COMMAND>_<OPTION>` ones click reads for every option of the `tessera` group
(`auto_envvar_prefix`), which `--help` names next to their option (`cli.shared.show_environment`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tessera.control_plane.cli.main import cli
from tessera.control_plane.cli.shared import install_shared_options, reads_environment, walk

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[3]
SOURCES = [ROOT / "control_plane", ROOT / "agent", ROOT / "sdk"]
NAME = re.compile(r"^TESSERA_[A-Z0-9_]+$")

install_shared_options(cli)
COMMANDS = [(path, command) for path, command in walk(cli)]


def _help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=1000, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


HELP = {path: _help(path) for path, _ in COMMANDS}
ALL_HELP = "\n".join(HELP.values())


def _constants(trees: list[ast.Module]) -> dict[str, str]:
    """Module-level `NAME = "TESSERA_..."` assignments of every scanned module."""
    found: dict[str, str] = {}
    for tree in trees:
        for node in tree.body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, str) and NAME.match(node.value.value)):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        found[target.id] = node.value.value
    return found


def _name(node: ast.AST, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and NAME.match(node.value):
        return node.value
    key = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    return constants.get(key) if key else None


def _is_environ(node: ast.AST) -> bool:
    """`os.environ`, `environ`, or a name holding an environment mapping (`env`, `environ`)."""
    if isinstance(node, ast.Attribute):
        return node.attr == "environ"
    if isinstance(node, ast.Name):
        return node.id in ("environ", "env")
    if isinstance(node, ast.BoolOp):  # (os.environ if environ is None else environ).get(...)
        return any(_is_environ(v) for v in node.values)
    if isinstance(node, ast.IfExp):
        return _is_environ(node.body) or _is_environ(node.orelse)
    return False


def environment_reads() -> dict[str, list[str]]:
    """Each TESSERA_* variable the source reads -> where (file:line)."""
    files = [p for folder in SOURCES for p in sorted(folder.rglob("*.py")) if not p.name.endswith(("_pb2.py", "_pb2_grpc.py"))]
    trees = {p: ast.parse(p.read_text(), str(p)) for p in files}
    constants = _constants(list(trees.values()))
    reads: dict[str, list[str]] = {}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            names: list[str | None] = []
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr in ("get", "getenv") and node.args and (
                        func.attr == "getenv" or _is_environ(func.value)):
                    names.append(_name(node.args[0], constants))
                names += [_name(k.value, constants) for k in node.keywords if k.arg == "envvar"]
            elif isinstance(node, ast.Subscript) and _is_environ(node.value) and isinstance(node.ctx, ast.Load):
                names.append(_name(node.slice, constants))
            for name in names:
                if name:
                    reads.setdefault(name, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return reads


def test_the_scan_finds_the_reads_it_must() -> None:
    reads = environment_reads()
    # by literal (tls.token_from_env), by envvar= (the agent's options), by a constant (wire.MASTERS_ENV)
    assert {"TESSERA_TOKEN", "TESSERA_TOKEN_FILE", "TESSERA_TLS_DIR", "TESSERA_RAFT_PASSWORD", "TESSERA_MASTERS",
            "TESSERA_SANDBOX_GC_DELAY", "TESSERA_FILES_ADDRESS"} <= set(reads)
    # variables Tessera only sets for tasks are not reads
    assert "TESSERA_TASK_ID" not in reads and "TESSERA_SANDBOX" not in reads


def test_every_tessera_variable_the_source_reads_is_named_in_some_commands_help() -> None:
    undocumented = {name: where for name, where in environment_reads().items() if name not in ALL_HELP}
    assert undocumented == {}, "document these in an option's help (envvar=, show_envvar) or stop reading them"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "tessera" for p, _ in COMMANDS])
def test_every_option_read_from_the_environment_names_its_variable_in_help(
        path: tuple[str, ...], command: click.Command) -> None:
    with click.Context(cli, info_name="tessera", auto_envvar_prefix="TESSERA") as ctx:
        for name in path:
            group = ctx.command
            assert isinstance(group, click.Group)
            sub = group.get_command(ctx, name)
            assert sub is not None
            ctx = click.Context(sub, info_name=name, parent=ctx)
        for param in command.params:
            if not reads_environment(param):
                continue
            assert isinstance(param, click.Option)
            variable = param.envvar or f"{ctx.auto_envvar_prefix}_{(param.name or '').upper()}"
            for var in ([variable] if isinstance(variable, str) else variable):
                assert var in HELP[path], f"tessera {' '.join(path)} {param.opts[0]}: {var} not in its help"


def test_an_option_is_really_read_from_the_variable_its_help_names() -> None:
    # TESSERA_MASTER_AGENT_TIMEOUT, the variable the issue found obeyed and undocumented
    assert "TESSERA_MASTER_AGENT_TIMEOUT" in HELP[("master",)]
    result = CliRunner().invoke(cli, ["master", "--name", "m1", "--raft", "127.0.0.1:1", "--grpc", "127.0.0.1:2",
                                      "--data-dir", "/nonexistent"], env={"TESSERA_MASTER_AGENT_TIMEOUT": "-1"})
    assert result.exit_code == 2 and "--agent-timeout: must be a positive number of seconds, got -1" in result.output
