"""`tessera completion bash|zsh|fish`: the shell completion script, Click's own.

The script calls `tessera` back with `_TESSERA_COMPLETE=<shell>_complete` in its environment; Click answers
with the commands, options and choices of the live command tree, so completion never falls behind the
commands. Install it once per user:

    bash (>= 4.4)  echo 'eval "$(tessera completion bash)"' >> ~/.bashrc
    zsh            echo 'eval "$(tessera completion zsh)"' >> ~/.zshrc
    fish           tessera completion fish > ~/.config/fish/completions/tessera.fish
"""

from __future__ import annotations

import click

PROG_NAME = "tessera"
COMPLETE_VAR = "_TESSERA_COMPLETE"  # Click's name for it: _<PROG_NAME>_COMPLETE
SHELLS = ("bash", "zsh", "fish")


def completion_script(root: click.Command, shell: str) -> str:
    """The completion script of `root` (the `tessera` group) for `shell`."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - SHELLS are Click's own
        raise ValueError(f"no completion for {shell}")
    return cls(root, {}, PROG_NAME, COMPLETE_VAR).source()


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    \b
    bash (>= 4.4):  eval "$(tessera completion bash)"   in ~/.bashrc
    zsh:            eval "$(tessera completion zsh)"    in ~/.zshrc
    fish:           tessera completion fish > ~/.config/fish/completions/tessera.fish

    The script asks `tessera` itself (with _TESSERA_COMPLETE set) for the commands, options and choices."""
    click.echo(completion_script(ctx.find_root().command, shell))
