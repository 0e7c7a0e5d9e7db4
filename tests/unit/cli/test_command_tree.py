"""The whole `tessera` command tree keeps the shared rules: every command and option has help, the
shared flags are accepted before or after every command, enumerated options are choices, usage errors are
one line, `--version` answers."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from tessera.control_plane.cli.main import cli
from tessera.control_plane.cli.shared import SHARED_FLAGS, install_shared_options, walk

pytestmark = pytest.mark.timeout(120)

install_shared_options(cli)
COMMANDS = [(path, command) for path, command in walk(cli) if path]
LEAVES = [(path, command) for path, command in COMMANDS if not isinstance(command, click.Group)]
VALUES = {"--masters": "127.0.0.1:1", "--timeout": "3", "--tls-dir": "/nonexistent", "--token-file": "/nonexistent"}
# options a command keeps for a purpose of its own, in place of the shared one
OWN = {("up", "--masters"), ("master", "--tls-dir"), ("agent", "--masters"), ("agent", "--tls-dir")}


def invoke(*args: str) -> click.testing.Result:
    return CliRunner().invoke(cli, list(args), env={"TESSERA_MASTERS": None}, catch_exceptions=False)


def test_the_tree_holds_the_operator_commands() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"task kill", "framework teardown", "agent drain", "agent undrain", "tasks", "state"} <= names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_and_option_has_help(path: tuple[str, ...], command: click.Command) -> None:
    assert (command.help or "").strip(), f"tessera {' '.join(path)} has no help"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert (param.help or "").strip(), f"tessera {' '.join(path)} {param.opts[0]} has no help"


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_every_shared_flag_is_accepted_after_every_command(path: tuple[str, ...], command: click.Command) -> None:
    for flag in SHARED_FLAGS:
        words = [flag.opt] + ([VALUES[flag.opt]] if flag.opt in VALUES else [])
        own = (path[0], flag.opt) in OWN
        if own:  # the command's own option of that name: documented, and not the shared one
            assert any(flag.opt in p.opts for p in command.params)
            continue
        result = invoke(*path, *words, "--help")
        assert result.exit_code == 0, (path, flag.opt, result.output)
        before = invoke(*words, *path, "--help")
        assert before.exit_code == 0, (path, flag.opt, before.output)
    refused = CliRunner().invoke(cli, [*path, "--token", "secret"])
    assert refused.exit_code == 2 and "--token is not accepted" in refused.output, (path, refused.output)


def test_a_shared_flag_after_the_command_wins_over_one_before() -> None:
    from tessera.control_plane.cli.shared import Ctx

    seen: list[Ctx] = []

    @cli.command("probe-shared-flags", hidden=True)
    @click.pass_obj
    def probe(obj: Ctx) -> None:
        """Record the context (this test only)."""
        seen.append(obj)

    try:
        install_shared_options(cli)
        result = invoke("--masters", "127.0.0.1:1", "--timeout", "5", "probe-shared-flags", "--masters", "127.0.0.1:2",
                        "--json", "--tls-dir", "/d", "--token-file", "/t")
        assert result.exit_code == 0, result.output
    finally:
        cli.commands.pop("probe-shared-flags")
    (obj,) = seen
    assert (obj.masters_flag, obj.timeout, obj.as_json, obj.tls_dir, obj.token_file) == (
        "127.0.0.1:2", 5.0, True, "/d", "/t")
    assert obj.found.addresses == ("127.0.0.1:2",) and obj.found.source == "--masters"


def test_enumerated_options_are_choices() -> None:
    by_path = dict(COMMANDS)
    for path, option in [(("tasks",), "--state"), (("run",), "--network"), (("master",), "--log-level"),
                         (("timeline",), "--kind"), (("up",), "--masters"), (("events", "list"), "--type")]:
        param = next(p for p in by_path[path].params if option in p.opts)
        assert isinstance(param.type, click.Choice), (path, option)


def test_a_task_state_is_accepted_with_or_without_its_prefix_in_any_case() -> None:
    state = next(p for p in dict(COMMANDS)[("tasks",)].params if "--state" in p.opts)
    assert state.type.convert("task_running", state, None) == "RUNNING"
    assert state.type.convert("Failed", state, None) == "FAILED"


def test_usage_errors_are_one_line_naming_the_help() -> None:
    for args, needle in [(["tasks", "--state", "SLEEPING"], "'SLEEPING' is not one of"),
                         (["agent", "drain"], "Missing argument 'AGENT_ID'"),
                         (["tasks", "--no-such-flag"], "No such option '--no-such-flag'"),
                         (["task", "kill", "t1", "--grace", "soon"], "expected a duration")]:
        result = CliRunner().invoke(cli, args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, (args, result.output)
        assert lines[0].startswith("tessera: ") and needle in lines[0] and "--help)" in lines[0], lines[0]


def test_version() -> None:
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"tessera {version('tessera-kernel')}"
