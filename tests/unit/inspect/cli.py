"""Running `tessera` in-process (click's CliRunner) and checking the one-line error rule."""

from __future__ import annotations

from click.testing import CliRunner, Result

from tessera.control_plane.cli.main import cli


def tessera(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"TESSERA_MASTERS": None}, catch_exceptions=True)


def ok(*args: str) -> Result:
    result = tessera(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def one_line_error(result: Result, *needles: str) -> str:
    """Non-zero exit, no traceback, exactly one `tessera: ...` line on stderr holding every needle."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tessera: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
