"""`tessera up`: a whole local cluster for development, in one command, and how other commands find it.

`tessera up [--masters 1|3|5] [--agents N] [--data-dir D] [--demo] [--duration S]` starts the masters
(and the agents, and with --demo the example frameworks, the service framework `tessera services` and,
when haproxy is on PATH, `tessera lb`) as child processes on 127.0.0.1 with free ports, waits until a
leader serves and the agents are registered (with --demo, applies the demo service `hello`:
control_plane/cli/demo.py), prints the addresses and what to try next, then streams every child's output
prefixed with its coloured name until Ctrl-C, SIGTERM or `--duration` seconds: then it stops every child
by PID (SIGTERM, then SIGKILL after a grace period).

It is a development tool and says so loudly: gRPC is plaintext on loopback (the masters run with
`--insecure-dev`), and the Raft port is encrypted with a password generated into `D/raft-password`
(0600; the masters get the file's path, never the password, in their command line or environment).
`--secure` runs the production checks instead: `tessera certs init D/pki` (once), masters with mTLS
and the ACL, each agent with a certificate of its own (`D/pki/agents/aN`, `tessera certs agent`), demo
frameworks with their certificate and token; `cluster.json` then names the operator's TLS directory and
token file, which other commands run from the same directory use when no `--tls-dir` / token is given.

State file: `D/cluster.json` holds the members (names, Raft and gRPC addresses, PIDs) and whether the
cluster is running. Every client finds the cluster through it without flags
(`tessera.control_plane.tls.find_masters`: `TESSERA_MASTERS`, else the `cluster.json` of the nearest
`.tessera/` directory (this directory or a parent), else 127.0.0.1:5050); `up` also prints the
`export TESSERA_MASTERS=...` line for shells elsewhere. Starting `up` again on the same data dir restarts
the same members on the same ports (Raft membership lives in the masters' data), so the history is kept.

Rules: every child runs in its own session (a Ctrl-C in the terminal reaches `up` only, which stops the
children in order: frameworks, agents, masters); nothing is killed by name; a failure to start ends
with one line and a non-zero exit after stopping whatever was started.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

import click

from tessera.control_plane.cli.demo import HELLO, apply_service, demo_lines, find_haproxy, hello_definition
from tessera.control_plane.tls import DEFAULT_DATA_DIR, STATE_FILE, ClientSecurity, read_cluster_file

STOP_GRACE_SECONDS = 10.0
READY_TIMEOUT_SECONDS = 60.0
COLOURS = ("cyan", "magenta", "blue", "green", "yellow", "bright_cyan", "bright_magenta", "bright_blue")

# Example frameworks run by --demo: (name, candidate modules (the first that exists runs), arguments
# after --masters). The keeper tears its tasks down when stopped, so `up` leaves no task behind.
DEMOS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("batch", ("tessera.sdk.examples.batch",), ("--name", "demo-batch", "--command", "sleep 2", "--count", "6")),
    ("keeper", ("tessera.sdk.examples.keeper", "tessera.sdk.examples.service"),
     ("--name", "demo-keeper", "--command", "sleep 3600", "--instances", "2", "--teardown-on-exit")),
)


# ---- children ---------------------------------------------------------------------------------------------
def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"tessera: {message}", err=True)
    sys.exit(code)


def free_port() -> int:
    return free_ports(1)[0]


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_LISTEN_PORT = 10_000


def listen_port_range(range_file: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int] | None:
    """Ports to listen on below the kernel's ephemeral range, or None where it cannot be read (or leaves
    fewer than 1,000 ports below it). The kernel never gives such a port to an outgoing connection as
    its source: a port chosen there is still free when a stopped master starts again on it, while one
    from the ephemeral range may meanwhile be the source port of any connection on the machine."""
    try:
        low = int(range_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    high = low - 1
    return (LOWEST_LISTEN_PORT, high) if high - LOWEST_LISTEN_PORT >= 1000 else None


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 now, below the ephemeral range when there is room (see
    `listen_port_range`), else any the kernel picks. The sockets stay bound until all are chosen: asked
    one at a time, the same port could come back twice."""
    span = listen_port_range()
    rng = random.SystemRandom()  # not seeded: parallel runs must not walk the same sequence
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        tries = 0
        while len(ports) < n:
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            tries += 1
            if span is None or tries > 50 * n:
                s.bind(("127.0.0.1", 0))  # no room below the range, or it is crowded: the kernel's choice
            else:
                try:
                    s.bind(("127.0.0.1", rng.randint(*span)))
                except OSError:
                    continue  # taken (or in TIME_WAIT): another
            ports.append(int(s.getsockname()[1]))
        return ports


def port_is_free(port: int) -> bool:
    """True when a server could listen on the port now (connections of a stopped one in TIME_WAIT do
    not count: the masters' servers set SO_REUSEADDR too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Child:
    name: str
    role: str  # master, agent, framework
    args: list[str]
    log_path: Path
    colour: str
    proc: subprocess.Popen[bytes] | None = None
    reader: threading.Thread | None = None
    tail: list[str] = field(default_factory=list)
    reported: bool = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Output:
    """Serialises the children's lines onto our stdout, each prefixed with its coloured name."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.lock = threading.Lock()
        self.width = 6

    def line(self, child: Child, text: str) -> None:
        if self.quiet:
            return
        with self.lock:
            click.echo(click.style(f"{child.name:>{self.width}} |", fg=child.colour) + " " + text)

    def say(self, text: str, err: bool = False, **style: Any) -> None:
        with self.lock:
            click.echo(click.style(text, **style) if style else text, err=err)


def _pump(child: Child, stream: IO[bytes], out: Output, log: IO[bytes]) -> None:
    for raw in iter(stream.readline, b""):
        log.write(raw)
        log.flush()
        text = raw.decode("utf-8", "replace").rstrip("\n")
        child.tail = (child.tail + [text])[-20:]
        out.line(child, text)
    stream.close()
    log.close()


def start_child(child: Child, env: dict[str, str], out: Output) -> None:
    child.log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(child.log_path, "ab")  # noqa: SIM115 - closed by the reader thread at EOF
    try:
        child.proc = subprocess.Popen(child.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    except OSError:
        log.close()
        raise
    assert child.proc.stdout is not None
    child.reader = threading.Thread(target=_pump, args=(child, child.proc.stdout, out, log),
                                    name=f"output-{child.name}", daemon=True)
    child.reader.start()


def stop_children(children: list[Child], grace: float = STOP_GRACE_SECONDS) -> list[str]:
    """SIGTERM every live child by PID, wait up to `grace` seconds, SIGKILL what is left; reap all.

    Returns the names of the children that had to be killed."""
    for c in children:
        if c.alive():
            assert c.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    killed: list[str] = []
    for c in children:
        if c.proc is None:
            continue
        try:
            c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.proc.pid, signal.SIGKILL)
            c.proc.wait(timeout=10)
            killed.append(c.name)
    for c in children:
        if c.reader is not None:
            c.reader.join(timeout=2)
    return killed


# ---- the cluster ---------------------------------------------------------------------------------------
@dataclass
class Member:
    name: str
    raft: str
    grpc: str


def plan_members(data_dir: Path, n: int) -> list[Member]:
    """The masters to run: those of a previous run in this data dir (same ports: Raft keeps its
    membership in the masters' data), else new ones on free ports."""
    previous = read_cluster_file(data_dir / STATE_FILE)
    members = previous.get("members") if previous else None
    if isinstance(members, list) and members:
        if len(members) != n:
            fail(f"{data_dir} holds a {len(members)}-master cluster: run `tessera up --masters {len(members)}` "
                 "or use another --data-dir", 2)
        planned = [Member(str(m["name"]), str(m["raft"]), str(m["grpc"])) for m in members]
        for m in planned:
            for address in (m.raft, m.grpc):
                if not port_is_free(int(address.rsplit(":", 1)[1])):
                    fail(f"port {address} of {m.name} is in use: is this cluster already running? "
                         f"(or remove {data_dir} to start a fresh one)")
        return planned
    ports = free_ports(2 * n)
    return [Member(f"m{i}", f"127.0.0.1:{ports[2 * i - 2]}", f"127.0.0.1:{ports[2 * i - 1]}") for i in range(1, n + 1)]


def _secure_setup(pki: Path, env: dict[str, str], agent_names: list[str]
                  ) -> tuple[ClientSecurity, list[str], dict[str, list[str]]]:
    """`--secure`: the dev PKI (created once), the flags of masters and of each agent (a certificate of
    its own, `pki/agents/<name>`, so the master binds its id to it), and the frameworks' env."""
    from tessera.control_plane.certs import init_dev_pki, issue_agent
    from tessera.control_plane.tls import TlsConfigError, read_token_file

    if not (pki / "ca.pem").exists():
        init_dev_pki(pki)
    for name in agent_names:
        if not (pki / "agents" / name / "cert.pem").exists():
            issue_agent(pki, name)
    env.update(TESSERA_TLS_DIR=str(pki / "framework"), TESSERA_TOKEN_FILE=str(pki / "tokens" / "framework.token"))
    try:
        security = ClientSecurity.from_options(pki / "operator", read_token_file(pki / "tokens" / "operator.token"))
    except TlsConfigError as exc:
        fail(f"--secure: {exc}", 2)
    return (security, ["--tls-dir", str(pki / "master"), "--acl", str(pki / "acl.toml")],
            {name: ["--tls-dir", str(pki / "agents" / name), "--acl", str(pki / "acl.toml")] for name in agent_names})


def raft_password_file(data_dir: Path) -> Path:
    """`D/raft-password`, written (0600, 32 random bytes) when missing; the masters read it themselves
    (TESSERA_RAFT_PASSWORD_FILE): a password in argv or the environment of children is exposed to more."""
    path = data_dir / "raft-password"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path


def check_not_running(data_dir: Path) -> None:
    data = read_cluster_file(data_dir / STATE_FILE)
    if not data or data.get("status") not in ("starting", "running"):
        return
    pid = data.get("pid")
    if isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid):
        fail(f"a cluster is already running from {data_dir} (tessera up, pid {pid}); stop it first "
             f"(Ctrl-C there, or kill {pid})")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_state(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def agent_resources(i: int, n: int) -> str:
    """A slice of this machine per agent (they share it), with a port range of its own."""
    import psutil

    cpus = max(1.0, round((os.cpu_count() or 1) / max(n, 1), 1))
    mem = max(512, int(psutil.virtual_memory().total / 2**20 * 0.5 / max(n, 1)))
    base = 31000 + 1000 * (i - 1)
    return f"cpus:{cpus:g};mem:{mem};disk:4096;ports:[{base}-{base + 999}]"


def agent_network(i: int) -> list[str]:
    """A container bridge and subnet per agent: they share this machine, and two agents on one bridge
    would hand out the same addresses."""
    return ["--cni-bridge", f"tessera{i}", "--cni-subnet", f"10.213.{64 + i}.0/24"]


def _quorum(address: str, security: ClientSecurity, timeout: float = 1.0) -> Any:
    from tessera.v1 import operator_pb2, operator_pb2_grpc

    with security.channel(address) as ch:
        return operator_pb2_grpc.OperatorStub(ch).GetQuorum(operator_pb2.GetQuorumRequest(local_only=True),
                                                            timeout=timeout, metadata=security.metadata)


def _serving_leader(members: list[Member], security: ClientSecurity) -> Member | None:
    import grpc

    for m in members:
        try:
            q = _quorum(m.grpc, security)
        except grpc.RpcError:
            continue
        if q.leader == m.raft and q.leader_grpc == m.grpc:
            return m
    return None


def _active_agents(address: str, hostnames: set[str], security: ClientSecurity) -> int:
    import grpc

    from tessera.v1 import common_pb2, operator_pb2, operator_pb2_grpc

    try:
        with security.channel(address) as ch:
            state = operator_pb2_grpc.OperatorStub(ch).GetState(operator_pb2.GetStateRequest(), timeout=2.0,
                                                                metadata=security.metadata)
    except grpc.RpcError:
        return 0
    return sum(1 for a in state.agents if a.state == common_pb2.AGENT_ACTIVE and a.info.hostname in hostnames)


def _wait(what: str, predicate: Callable[[], Any], stop: threading.Event, children: list[Child],
          timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop.is_set():
            return None
        value = predicate()
        if value:
            return value
        dead = [c for c in children if c.proc is not None and c.proc.poll() is not None]
        if dead:
            c = dead[0]
            assert c.proc is not None
            last = next((line for line in reversed(c.tail) if line.strip()), "no output")
            raise StartError(f"{c.name} exited with code {c.proc.returncode} while waiting for {what}: {last}")
        stop.wait(0.2)
    raise StartError(f"timed out after {timeout:g}s waiting for {what} (logs: {children[0].log_path.parent.parent})")


class StartError(Exception):
    pass


def agent_command_available() -> bool:
    """True when this tessera has the `agent` command (it is being written by another change)."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root().command if ctx is not None else None
    return isinstance(root, click.Group) and "agent" in root.commands


def demo_available(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# ---- the command ---------------------------------------------------------------------------------------
@click.command("up")
@click.option("--masters", "n_masters", type=click.Choice(["1", "3", "5"]), default="3", show_default=True,
              help="How many masters (a Raft quorum of 3 survives one loss, of 5 two).")
@click.option("--agents", "n_agents", type=click.IntRange(0, 32), default=1, show_default=True,
              help="How many agents, each with a slice of this machine and its own port range.")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_DATA_DIR,
              show_default=True, help="Where the members keep their data, logs and the state file.")
@click.option("--demo", is_flag=True,
              help="Also run the example frameworks (a batch runner and a service keeper) and the service framework "
                   "with a demo service, hello (behind `tessera lb` when haproxy is installed).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop everything after this many seconds of running (default: until Ctrl-C).")
@click.option("--quiet", is_flag=True, help="Do not stream the children's output (it is still in their logs).")
@click.option("--secure", is_flag=True,
              help="mTLS and bearer tokens with a dev CA in DATA_DIR/pki (tessera certs init), no --insecure-dev.")
def up(n_masters: str, n_agents: int, data_dir: Path, demo: bool, duration: float | None, quiet: bool,
       secure: bool) -> None:
    """Start a local development cluster (masters, agents) on 127.0.0.1 and stream its output.

    Insecure by default: plaintext gRPC on loopback, a Raft password generated into DATA_DIR; --secure
    runs it with mTLS, tokens and an ACL instead. Other tessera commands run from this directory find the
    cluster (and, with --secure, the operator's certificate and token) through DATA_DIR/cluster.json.
    """
    out = Output(quiet)
    os.umask(0o077)  # the members' data, logs, tokens and state file: this user's only (children inherit it)
    data_dir = data_dir.resolve() if data_dir.is_absolute() else (Path.cwd() / data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        fail(f"--data-dir: {data_dir} is not writable ({exc.strerror or exc})", 2)
    check_not_running(data_dir)
    members = plan_members(data_dir, int(n_masters))
    password_file = raft_password_file(data_dir)
    with_agents = n_agents > 0 and agent_command_available()
    addresses = ",".join(m.grpc for m in members)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env.update(PYTHONUNBUFFERED="1", TESSERA_RAFT_PASSWORD_FILE=str(password_file), TESSERA_MASTERS=addresses)
    tessera = [sys.executable, "-m", "tessera.control_plane.cli.main"]
    pki = data_dir / "pki"
    agent_names = [f"a{i}" for i in range(1, n_agents + 1)] if with_agents else []
    if secure:
        security, master_flags, agent_flags = _secure_setup(pki, env, agent_names)
    else:
        security, master_flags, agent_flags = ClientSecurity.insecure(), ["--insecure-dev"], {}

    metrics = {name: f"127.0.0.1:{free_port()}" for name in [m.name for m in members]
               + [f"a{i}" for i in range(1, n_agents + 1)]}
    http = {m.name: free_port() for m in members}  # each master's web UI (docs/http-api.md)
    masters = [Child(m.name, "master", [*tessera, "master", "--name", m.name, "--raft", m.raft, "--grpc", m.grpc,
                                        "--peers", ",".join(o.raft for o in members if o is not m),
                                        "--data-dir", str(data_dir / m.name), "--metrics", metrics[m.name],
                                        "--http", f"127.0.0.1:{http[m.name]}", *master_flags],
                     data_dir / m.name / "master.log", COLOURS[i % len(COLOURS)]) for i, m in enumerate(members)]
    hostnames = [f"agent{i}.local" for i in range(1, n_agents + 1)]
    agents = [Child(f"a{i}", "agent", [*tessera, "agent", "--masters", addresses,
                                       "--data-dir", str(data_dir / f"a{i}"), "--hostname", hostnames[i - 1],
                                       "--resources", agent_resources(i, n_agents),
                                       "--attributes", f"node:a{i}", "--metrics", metrics[f"a{i}"],
                                       *agent_network(i), *agent_flags.get(f"a{i}", [])],
                    data_dir / f"a{i}" / "agent.log", COLOURS[(len(members) + i - 1) % len(COLOURS)])
              for i in range(1, n_agents + 1)] if with_agents else []
    frameworks: list[Child] = []
    missing_demos: list[str] = []
    lb: Child | None = None
    lb_port: int | None = None
    operator_flags = (["--tls-dir", str(pki / "operator"), "--token-file", str(pki / "tokens" / "operator.token")]
                      if secure else [])
    if demo:
        # the service framework with one demo service (control_plane/cli/demo.py), behind HAProxy when there is one
        frameworks.append(Child("services", "framework", [*tessera, "services", "--masters", addresses,
                                                          "--teardown-on-exit"],
                                data_dir / "frameworks" / "services.log", "white"))
        if find_haproxy(env.get("PATH")):
            lb_port = free_port()
            lb = Child("lb", "lb", [*tessera, "--masters", addresses, *operator_flags, "lb", "--dir",
                                    str(data_dir / "lb")], data_dir / "lb" / "lb.log", "white")
        for short, modules, args in DEMOS:
            module = next((m for m in modules if demo_available(m)), None)
            if module is None:
                missing_demos.append(" or ".join(modules))
                continue
            # --secure: the generated framework grant runs tasks as `nobody` only
            user = ["--user", "nobody"] if secure else []
            frameworks.append(Child(short, "framework", [sys.executable, "-m", module, "--masters", addresses,
                                                         *args, *user],
                                    data_dir / "frameworks" / f"{short}.log", "white"))
    # service discovery over DNS from the replicated state (tessera dns), on a port chosen now
    dns_address = f"127.0.0.1:{free_port()}"
    dns = Child("dns", "dns", [*tessera, "--masters", addresses, *operator_flags, "dns", "--listen", dns_address],
                data_dir / "dns" / "dns.log", "white")
    frameworks.insert(0, dns)  # started with the frameworks, once a leader serves; stopped first
    if lb is not None:
        frameworks.insert(1, lb)
    everyone = [*masters, *agents, *frameworks]
    out.width = max(len(c.name) for c in everyone)

    stop = threading.Event()
    previous_handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    state_path = data_dir / STATE_FILE
    started_at = time.time()

    def record(status: str) -> None:
        running = status in ("starting", "running")
        write_state(state_path, {
            "version": 1, "status": status, "pid": os.getpid() if running else None, "data_dir": str(data_dir),
            "started_at": started_at, "insecure_dev_mode": not secure, "masters": [m.grpc for m in members],
            **({"security": {kind: {"tls_dir": str(pki / kind), "token_file": str(pki / "tokens" / f"{kind}.token")}
                             for kind in ("operator", "framework")}} if secure else {}),
            "members": [{"name": m.name, "raft": m.raft, "grpc": m.grpc, "data_dir": str(data_dir / m.name),
                         "pid": c.pid if running else None, "log": str(c.log_path)}
                        for m, c in zip(members, masters, strict=True)],
            "agents": [{"name": c.name, "pid": c.pid if running else None, "log": str(c.log_path)} for c in agents],
            "frameworks": [{"name": c.name, "pid": c.pid if running else None, "log": str(c.log_path)}
                           for c in frameworks if c is not dns and c is not lb],
            **({"lb": {"url": f"http://127.0.0.1:{lb_port}/", "pid": lb.pid if running else None,
                       "log": str(lb.log_path)}} if lb is not None else {}),
            "dns": {"address": dns_address, "domain": "tessera", "pid": dns.pid if running else None,
                    "log": str(dns.log_path)},
        })

    code = 0
    try:
        if secure:
            out.say(f"SECURE DEV MODE: mTLS and bearer tokens; dev CA, certificates, tokens and ACL in {pki} "
                    f"(the CA key too: a development CA); Raft password in {data_dir / 'raft-password'}.",
                    fg="green", bold=True)
        else:
            out.say("INSECURE DEV MODE: plaintext, unauthenticated gRPC on 127.0.0.1 (no mTLS, no tokens: any "
                    f"local process may run tasks); Raft password in {data_dir / 'raft-password'}. "
                    "Not for production.", fg="yellow", bold=True)
        for c in masters:
            start_child(c, env, out)
        record("starting")
        leader = _wait("a leader to be elected", lambda: _serving_leader(members, security), stop, masters,
                       READY_TIMEOUT_SECONDS)
        if leader is not None and agents:
            for c in agents:
                start_child(c, env, out)
            record("starting")
            _wait(f"{len(agents)} agent(s) to register",
                  lambda: _active_agents(leader.grpc, set(hostnames), security) >= len(agents), stop, [*masters, *agents],
                  READY_TIMEOUT_SECONDS)
        if leader is not None and not stop.is_set():
            for c in frameworks:
                start_child(c, env, out)
            record("running")
            service_lines: tuple[list[str], list[str]] = ([], [])
            if demo:
                definition = data_dir / "demo" / f"{HELLO}.yaml"
                definition.parent.mkdir(parents=True, exist_ok=True)
                definition.write_text(hello_definition(lb_port, "nobody" if secure else ""))
                services = next(c for c in frameworks if c.name == "services")
                problem = apply_service([*tessera, "--masters", addresses, *operator_flags], definition, env, stop,
                                        services.alive, READY_TIMEOUT_SECONDS)
                service_lines = demo_lines(dns_address, lb_port, problem, definition)
            out.say(f"ui: {'https' if secure else 'http'}://127.0.0.1:{http[leader.name]}/", bold=True)
            _print_ready(out, members, leader, data_dir, agents, n_agents, with_agents, demo,
                         [c for c in frameworks if c is not dns and c is not lb], metrics, missing_demos, dns_address,
                         service_lines)
            code = _supervise(out, everyone, stop, duration)
    except StartError as exc:
        out.say(f"tessera: {exc}", fg="red", err=True)
        code = 1
    except OSError as exc:
        out.say(f"tessera: cannot start the cluster: {exc}", fg="red", err=True)
        code = 1
    finally:
        out.say("stopping: " + ", ".join(c.name for c in reversed(everyone) if c.alive()), fg="yellow")
        # frameworks first, then agents, then masters: nothing is left talking to a stopped master
        killed = stop_children(frameworks) + stop_children(agents) + stop_children(masters)
        record("stopped")
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        out.say("stopped" + (f" (killed after {STOP_GRACE_SECONDS:g}s: {', '.join(killed)})" if killed else ""))
    sys.exit(code)


def _print_ready(out: Output, members: list[Member], leader: Member, data_dir: Path, agents: list[Child],
                 n_agents: int, with_agents: bool, demo: bool, frameworks: list[Child], metrics: dict[str, str],
                 missing: list[str], dns_address: str, service_lines: tuple[list[str], list[str]] = ([], [])
                 ) -> None:
    from tessera.control_plane.eventlog import DATASETTE_METADATA

    addresses = ",".join(m.grpc for m in members)
    out.say(f"masters: {addresses}", bold=True)
    out.say(f"leader: {leader.name} ({leader.grpc})")
    if agents:
        out.say(f"agents: {', '.join(c.name for c in agents)} registered")
    elif n_agents and not with_agents:
        out.say("agents: none started, this tessera has no `agent` command yet", fg="yellow")
    if demo:
        if frameworks:
            out.say(f"demo frameworks: {', '.join(c.name for c in frameworks)}")
        if missing:
            out.say(f"demo: not found, not started: {', '.join(missing)}", fg="yellow")
        for line in service_lines[0]:
            out.say(line, **({"fg": "yellow"} if "NOT applied" in line or "not started" in line else {}))
    out.say(f"dns: {dns_address} (zone tessera.: <task name>.tessera A, _<task name>._tcp.tessera SRV)")
    shown = [m.name for m in members] + [c.name for c in agents]
    out.say("metrics: " + "  ".join(f"{name} http://{metrics[name]}/metrics" for name in shown if name in metrics))
    rel = os.path.relpath(data_dir)
    here = data_dir == (Path.cwd() / DEFAULT_DATA_DIR)
    out.say(f"state file: {data_dir / STATE_FILE}" + ("  (commands run from this directory find the cluster "
                                                         "through it)" if here else ""))
    out.say(f"export TESSERA_MASTERS={addresses}    # for shells in other directories, and programs", bold=True)
    out.say("try, from this directory:", bold=True)
    for line in ("tessera quorum status", "tessera agents", "tessera events --follow",
                 "python -m tessera.sdk.examples.batch --command 'sleep 1' --count 5",
                 "tessera state --at 10 --diff 1    (what changed from event 1 to event 10)",
                 "tessera timeline <task, framework or agent id>",
                 f"dig @{dns_address.split(':')[0]} -p {dns_address.split(':')[1]} +short <task name>.tessera",
                 f"datasette {rel}/{leader.name}/events.db --metadata {DATASETTE_METADATA}", *service_lines[1]):
        out.say(f"  {line}")
    out.say("cluster ready; Ctrl-C stops it", fg="green", bold=True)


def _supervise(out: Output, children: list[Child], stop: threading.Event, duration: float | None) -> int:
    """Report children that end; stop on a signal, after `duration`, or when no master is left."""
    deadline = None if duration is None else time.monotonic() + duration
    while not stop.wait(0.25):
        for c in children:
            if c.proc is not None and not c.reported and c.proc.poll() is not None:
                c.reported = True
                if c.reader is not None:
                    c.reader.join(timeout=1)
                colour = "white" if c.role == "framework" and c.proc.returncode == 0 else "red"
                out.say(f"{c.name} exited with code {c.proc.returncode}", fg=colour)
        if not any(c.alive() for c in children if c.role == "master"):
            out.say("tessera: every master has exited", fg="red", err=True)
            return 1
        if deadline is not None and time.monotonic() >= deadline:
            break
    return 0
