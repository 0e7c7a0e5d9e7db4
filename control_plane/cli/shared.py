"""What every `tessera` command shares: the context object, the shared flags, one-line errors, durations.

**The context object** (`Ctx`, the root group's `ctx.obj`): the masters, `--json`, `--timeout` and the
client's security, and one leader-following Operator client built from them. Every command reaches the
cluster through it (`Ctx.call`, or `Ctx.new_client` for long calls and streams).

**Finding the masters** is `tessera.control_plane.tls.find_masters`, the one order every client keeps
(the SDK's drivers, `tessera run` and the examples too): `--masters`, else `TESSERA_MASTERS`, else the
`.tessera/cluster.json` `tessera up` wrote here (or in a parent directory), else 127.0.0.1:5050. When no
master answers, the one line says where the addresses came from. When every address refuses the
connection (nothing listens: no cluster, or the wrong addresses) the command fails after `REFUSED_GRACE`
seconds rather than its whole `--timeout`, and only a failure that is not a refusal from a plaintext
client mentions `--tls-dir` (a secured cluster closes such connections; it does not refuse them).

**Shared flags** (`SHARED_FLAGS`: `--masters`, `--json`, `--timeout`, `--tls-dir`, `--token-file`, and
`--token`, which is refused like everywhere: a secret on the command line is readable by every local
user): options of the root group, and, installed on every command below it by
`install_shared_options` (run by `TesseraGroup` before it parses a command line, so commands registered
by any module get them), accepted after any subcommand too: `tessera --json tasks` and
`tessera tasks --json` are the same, and a value given after the subcommand wins. A command with an
option of the same name for a purpose of its own keeps it: `tessera up --masters 3` is a count,
`tessera master --tls-dir` and `tessera agent --tls-dir` name the process's own certificate, and the
history commands' own `--json` means the same as the shared one.

**Errors**: one line on stderr, `tessera: ...`, and a non-zero exit, never a traceback; click's own usage
errors (an unknown option, a value outside a choice, a missing argument) too, with exit code 2
(`TesseraGroup.main`).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

import click
import grpc
from click.core import ParameterSource

REFUSED_GRACE = 1.0  # seconds every master may refuse the connection before a command gives up
DEFAULT_TIMEOUT = 10.0


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"tessera: {message}", err=True)
    sys.exit(code)


def refuse_secret_flag(alternatives: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    """A callback for a removed flag that took a secret: one line naming where the secret goes now."""

    def refuse(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            fail(f"{param.opts[0]} is not accepted: a secret on the command line is readable by every local "
                 f"user (/proc/PID/cmdline); use {alternatives}", 2)

    return refuse


TOKEN_ALTERNATIVES = "--token-file FILE, TESSERA_TOKEN_FILE or TESSERA_TOKEN"


# ---- the context object ------------------------------------------------------------------------------
class Ctx:
    """The root group's object: what the shared flags said, and the client built from it."""

    def __init__(self, masters_flag: str | None = None, as_json: bool = False, timeout: float = DEFAULT_TIMEOUT,
                 tls_dir: str | None = None, token: str | None = None, token_file: str | None = None) -> None:
        self.masters_flag = masters_flag or None
        self.as_json = as_json
        self.timeout = timeout
        self.tls_dir, self.token, self.token_file = tls_dir, token, token_file
        self._found: Any = None
        self._client: Any = None
        self._security: Any = None

    @property
    def found(self) -> Any:
        """The masters (`wire.FoundMasters`: addresses and where they came from); one line and exit 2 when
        the flag, TESSERA_MASTERS or the cluster file is malformed."""
        if self._found is None:
            from tessera.control_plane.tls import find_masters

            try:
                self._found = find_masters(self.masters_flag)
            except ValueError as exc:
                fail(str(exc), 2)
        return self._found

    @property
    def masters_text(self) -> str:
        return str(self.found.text)

    @property
    def security(self) -> Any:
        """The ClientSecurity from --tls-dir and --token-file / TESSERA_TOKEN (one line and exit 2 if unusable)."""
        if self._security is None:
            from tessera.control_plane.tls import (
                ClientSecurity,
                TlsConfigError,
                cluster_security,
                read_token_file,
            )

            tls_dir, token_file = self.tls_dir, self.token_file
            if not (tls_dir or self.token or token_file):
                # a cluster started here with `tessera up --secure` names the operator's files
                tls_dir, token_file = cluster_security("operator") or (None, None)
            try:
                token = self.token or (read_token_file(token_file) if token_file else None)
                self._security = ClientSecurity.from_options(tls_dir, token)
            except TlsConfigError as exc:
                fail(str(exc), 2)
        return self._security

    def new_client(self, rpc_timeout: float = 5.0) -> Any:
        """A new leader-following Operator client (the caller closes it)."""
        from tessera.control_plane.api.client import MasterClient

        return MasterClient(list(self.found.addresses), timeout=self.timeout, rpc_timeout=rpc_timeout,
                            security=self.security, refused_grace=REFUSED_GRACE)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.new_client()
        return self._client

    def no_master(self, exc: Any) -> NoReturn:
        fail(no_master_message(exc, self.found.source, self.security.credentials is None))

    def call(self, method: Callable[[Any], Any], request: Any, **kw: Any) -> Any:
        """One Operator call through the shared client; every failure is one line and exit 1."""
        from tessera.control_plane.api.client import NoMasterAvailable

        try:
            return self.client.call(method, request, **kw)
        except NoMasterAvailable as exc:
            self.no_master(exc)
        except grpc.RpcError as err:
            fail(rpc_message(err))

    def emit(self, data: Any) -> None:
        click.echo(json.dumps(data, indent=2, sort_keys=True))


def no_master_message(exc: Any, source: str, plaintext: bool) -> str:
    """The one line for `NoMasterAvailable`: the addresses, the last error, where the addresses came
    from, and what to check."""
    message = f"{exc}; masters from {source}"
    if getattr(exc, "refused", False):
        return f"{message}; is the cluster up? (tessera up, or --masters / TESSERA_MASTERS)"
    if plaintext:  # a secured master closes a plaintext connection (it does not refuse it)
        return f"{message}; a secured cluster needs --tls-dir (or TESSERA_TLS_DIR)"
    return message


def rpc_message(err: grpc.RpcError) -> str:
    code, details = err.code(), err.details() or ""
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return "this master does not serve that call (an older version of tessera?)"
    return f"{code.name}: {details}"


def stale_note(resp: Any) -> None:
    """Say on stderr that a `GetStateResponse` came from a follower (a `--stale` read)."""
    click.echo(f"tessera: stale read: a follower answered, at index {resp.index}; it does not know which agents "
               "are connected, nor the tasks' usage (leave out --stale to ask the leader)", err=True)


def ctx_of(obj: Any) -> Ctx:
    """The root's `Ctx` (a fresh one when a command runs outside the `tessera` group, in a test)."""
    return obj if isinstance(obj, Ctx) else Ctx()


# ---- shared flags ----------------------------------------------------------------------------------------
MASTERS_HELP = ("Comma-separated gRPC addresses of the masters (default: TESSERA_MASTERS, else "
                "./.tessera/cluster.json, else 127.0.0.1:5050).")


@dataclass(frozen=True)
class SharedFlag:
    """One shared flag: its option string, the `Ctx` attribute it sets, and its click settings."""

    opt: str
    attr: str
    settings: dict[str, Any] = field(default_factory=dict)


SHARED_FLAGS: tuple[SharedFlag, ...] = (
    SharedFlag("--masters", "masters_flag", {"metavar": "HOST:PORT,...", "help": MASTERS_HELP}),
    SharedFlag("--json", "as_json", {"is_flag": True, "help": "Print JSON instead of tables."}),
    SharedFlag("--timeout", "timeout", {"type": click.FloatRange(min=0, min_open=True), "metavar": "SECONDS",
                                        "help": f"Seconds to wait for the cluster  [default: {DEFAULT_TIMEOUT:g}]"}),
    SharedFlag("--tls-dir", "tls_dir", {"metavar": "DIR", "help": "mTLS: DIR holds ca.pem, cert.pem and key.pem "
                                        "(or TESSERA_TLS_DIR). Plaintext without it."}),
    SharedFlag("--token-file", "token_file", {"metavar": "FILE", "help": "Read the bearer token of your principal "
                                              "from FILE (or TESSERA_TOKEN_FILE; or the token itself in "
                                              "TESSERA_TOKEN). Never on the command line."}),
)
SHARED_OPTS = tuple(f.opt for f in SHARED_FLAGS) + ("--token",)


def _store(attr: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def store(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if param.name is not None and ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
            obj = ctx.find_object(Ctx)
            if obj is not None:
                setattr(obj, attr, value)
        return value

    return store


def walk(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command under `command` (itself first) with its path of names."""
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from walk(sub, (*path, name))


def reads_environment(param: click.Parameter) -> bool:
    """Whether an option's value may come from an environment variable: its own `envvar`, or the group's
    `TESSERA_<COMMAND>_<OPTION>` (click's auto_envvar_prefix). Help, version and refused secrets do not."""
    if not isinstance(param, click.Option) or param.hidden or (param.is_eager and not param.expose_value):
        return False
    return bool(param.envvar) or param.allow_from_autoenv


def show_environment(command: click.Command) -> None:
    """Name in `--help` the environment variable each option reads (`[env var: TESSERA_MASTER_AGENT_TIMEOUT]`):
    every TESSERA_* variable Tessera obeys is documented where its option is."""
    for param in command.params:
        if isinstance(param, click.Option) and reads_environment(param):
            param.show_envvar = True


def install_shared_options(root: click.Group) -> None:
    """Give every command under `root` the shared flags it does not define itself, and name every option's
    environment variable in its help (`show_environment`) (idempotent)."""
    for path, command in walk(root):
        show_environment(command)
        if not path or getattr(command, "_tessera_shared_flags", False):
            continue
        taken = {opt for p in command.params for opt in (*p.opts, *getattr(p, "secondary_opts", ()))}
        for flag in SHARED_FLAGS:
            if flag.opt not in taken:
                name = "shared_" + flag.opt.lstrip("-").replace("-", "_")
                command.params.append(click.Option([flag.opt, name], expose_value=False, allow_from_autoenv=False,
                                                   callback=_store(flag.attr), **flag.settings))
        if "--token" not in taken:
            command.params.append(click.Option(["--token", "shared_token"], hidden=True, expose_value=False,
                                               is_eager=True, allow_from_autoenv=False,
                                               callback=refuse_secret_flag(TOKEN_ALTERNATIVES)))
        command._tessera_shared_flags = True  # type: ignore[attr-defined]


class OneLineErrors:
    """A click command whose usage errors are one line (`<error_prefix>: ...`, exit 2) like every other
    failure, naming the help to read, instead of click's usage block."""

    error_prefix = "tessera"

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        main = super().main  # type: ignore[misc]
        if not standalone_mode:
            return main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            hint = ""
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                hint = f" (see {exc.ctx.command_path} --help)"
            click.echo(f"{self.error_prefix}: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo(f"{self.error_prefix}: aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


class OneLineCommand(OneLineErrors, click.Command):
    """A command run on its own (not under `tessera`) with one-line usage errors."""


class TesseraGroup(OneLineErrors, click.Group):
    """The root group: installs the shared flags before parsing (`install_shared_options`), and prints
    click's usage errors as one line (`OneLineErrors`)."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        if parent is None:
            install_shared_options(self)
        return super().make_context(info_name, args, parent=parent, **extra)


# ---- values ------------------------------------------------------------------------------------------------
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """'10s', '500ms', '2m', '1h', '1d' or a bare number of seconds -> seconds; ValueError otherwise."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"expected a duration like 10s, 500ms, 2m or a number of seconds, got {text!r}")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration, got {text!r}")
    return seconds


class Duration(click.ParamType):
    """A duration option (`parse_duration`), in seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
