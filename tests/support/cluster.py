"""Real master processes on 127.0.0.1 for integration tests and benchmarks.

Every process is started with its own free ports and data dir, waited on with a timeout, and killed by
PID (SIGKILL for crash tests, SIGTERM for clean stops). `LocalCluster` is a context manager: leaving it
kills whatever is still running, so no test depends on another's leftovers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from tessera.control_plane.api.client import MasterClient
from tessera.control_plane.cli.up import free_port, free_ports  # noqa: F401 - one definition, shared with `tessera up` (re-exported)
from tessera.v1 import operator_pb2, operator_pb2_grpc

T = TypeVar("T")


_LAUNCHER = str(Path(__file__).with_name("die_with_parent.py"))


def spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `cmd` in its own session (signals to the test do not reach it), output appended to
    `log_path`, and dying with the test process even when the runner is killed hard (see
    die_with_parent.py: set in a fresh process, never in a preexec_fn of this threaded one)."""
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-I", "-S", _LAUNCHER, str(os.getpid()), *cmd], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.05, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
            last_exc = None  # reached, not yet true: an earlier error would mislead
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


@dataclass
class MasterProc:
    name: str
    raft: str
    grpc: str
    data_dir: Path
    log_path: Path
    peers: list[str] = field(default_factory=list)
    extra_flags: list[str] = field(default_factory=list)  # this master's own flags (e.g. --raft-bind)
    proc: subprocess.Popen[bytes] | None = None
    stopped_by_test: bool = False  # its last exit was LocalCluster.kill's doing, not its own

    @property
    def crashed(self) -> bool:
        """Started, then exited on its own (not through LocalCluster.kill)."""
        return self.proc is not None and not self.stopped_by_test and self.proc.poll() is not None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stub(self) -> operator_pb2_grpc.OperatorStub:
        channel = grpc.insecure_channel(self.grpc)
        return operator_pb2_grpc.OperatorStub(channel)

    def quorum(self, timeout: float = 1.0) -> operator_pb2.GetQuorumResponse:
        with grpc.insecure_channel(self.grpc) as ch:
            return operator_pb2_grpc.OperatorStub(ch).GetQuorum(
                operator_pb2.GetQuorumRequest(local_only=True), timeout=timeout)

    def list_events(self, from_index: int = 1, limit: int = 10_000) -> list[operator_pb2.EventRecord]:
        out: list[operator_pb2.EventRecord] = []
        with grpc.insecure_channel(self.grpc) as ch:
            stub = operator_pb2_grpc.OperatorStub(ch)
            cursor = from_index
            while True:
                resp = stub.ListEvents(operator_pb2.ListEventsRequest(from_index=cursor, limit=limit), timeout=10)
                out.extend(resp.events)
                if len(resp.events) < limit:
                    return out
                cursor = resp.events[-1].index + 1


@dataclass
class AgentProc:
    name: str
    data_dir: Path
    log_path: Path
    resources: str
    attributes: str = ""
    proc: subprocess.Popen[bytes] | None = None
    flags: tuple[str, ...] = ()  # more `tessera agent` flags (e.g. the container network's)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalCluster:
    """N masters as child processes. `password` set means the Raft port is encrypted."""

    def __init__(self, root: Path, n: int = 3, password: str | None = "test-raft-secret") -> None:
        self.root = root
        self.password = password
        self.masters: list[MasterProc] = []
        self.agents: list[AgentProc] = []
        self.master_flags: list[str] = []
        # argv put before every process's command, by its name: e.g. `ip netns exec NS` (tests/faults/netns.py)
        self.wrap: Callable[[str], list[str]] = lambda name: []
        self._ports_used: set[int] = set()  # never hand out a port twice (masters are added one by one)
        for i in range(n):
            self.masters.append(self._new_master(f"m{i + 1}"))
        for m in self.masters:
            m.peers = [o.raft for o in self.masters if o is not m]

    def _new_master(self, name: str) -> MasterProc:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        raft, grpc_port = self.fresh_ports(2)
        return MasterProc(name=name, raft=f"127.0.0.1:{raft}", grpc=f"127.0.0.1:{grpc_port}",
                          data_dir=d, log_path=d / "master.log")

    def fresh_ports(self, n: int) -> list[int]:
        """`n` free ports this cluster has not handed out before (for its masters or a caller's own use)."""
        while True:
            ports = free_ports(n)
            if not self._ports_used.intersection(ports):
                self._ports_used.update(ports)
                return ports

    # ---- processes ---------------------------------------------------------------------------------
    def start(self, m: MasterProc) -> None:
        assert not m.alive, f"{m.name} is already running"
        env = dict(os.environ)
        env.pop("TESSERA_RAFT_PASSWORD", None)
        if self.password:
            env["TESSERA_RAFT_PASSWORD"] = self.password
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [*self.wrap(m.name), sys.executable, "-m", "tessera.control_plane.cli.main", "master", "--name", m.name, "--raft", m.raft,
               "--grpc", m.grpc, "--peers", ",".join(m.peers), "--data-dir", str(m.data_dir), "--insecure-dev",
               *self.master_flags, *m.extra_flags]
        m.stopped_by_test = False
        m.proc = spawn(cmd, m.log_path, env)

    def start_all(self) -> None:
        for m in self.masters:
            self.start(m)

    def kill(self, m: MasterProc | AgentProc, sig: int = signal.SIGKILL) -> None:
        if isinstance(m, MasterProc):
            m.stopped_by_test = True
        if m.proc is not None and m.proc.poll() is None:
            os.kill(m.proc.pid, sig)
            try:
                m.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(m.proc.pid, signal.SIGKILL)
                m.proc.wait(timeout=5)

    def stop_all(self, sig: int = signal.SIGTERM) -> None:
        for a in self.agents:
            self.kill(a, sig)
        for m in self.masters:
            self.kill(m, sig)

    # ---- agents --------------------------------------------------------------------------------
    def add_agent(self, resources: str = "cpus:4;mem:2048", attributes: str = "",
                  flags: tuple[str, ...] = ()) -> AgentProc:
        name = f"a{len(self.agents) + 1}"
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        a = AgentProc(name=name, data_dir=d, log_path=d / "agent.log", resources=resources, attributes=attributes,
                      flags=flags)
        self.agents.append(a)
        self.start_agent(a)
        return a

    def start_agent(self, a: AgentProc) -> None:
        assert not a.alive, f"{a.name} is already running"
        cmd = [*self.wrap(a.name), sys.executable, "-m", "tessera.control_plane.cli.main", "agent", "--masters", ",".join(self.grpc_addresses()),
               "--data-dir", str(a.data_dir), "--resources", a.resources, "--hostname", a.name]
        if a.attributes:
            cmd += ["--attributes", a.attributes]
        cmd += a.flags
        a.proc = spawn(cmd, a.log_path, {**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_agents(self, n: int, timeout: float = 30.0) -> None:
        client = self.client()
        try:
            wait_for(lambda: sum(1 for a in client.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True)).agents
                                 if a.state == 1 and a.connected) >= n, timeout, what=f"{n} agents registered")
        finally:
            client.close()

    def add_master(self) -> MasterProc:
        m = self._new_master(f"m{len(self.masters) + 1}")
        m.peers = [o.raft for o in self.masters]
        self.masters.append(m)
        return m

    # ---- queries -----------------------------------------------------------------------------------
    def grpc_addresses(self) -> list[str]:
        return [m.grpc for m in self.masters]

    def client(self, timeout: float = 20.0) -> MasterClient:
        return MasterClient(self.grpc_addresses(), timeout=timeout, rpc_timeout=3.0)

    def leader(self, timeout: float = 20.0) -> MasterProc:
        """The master that leads and serves (its LeaderElected barrier is applied). Fails at once, naming
        it, when a master the test did not stop has exited: no leader is worth waiting for then."""

        def find() -> MasterProc | None:
            for m in self.masters:
                if not m.alive:
                    continue
                try:
                    q = m.quorum(timeout=0.5)
                except grpc.RpcError:
                    continue
                if q.leader == m.raft and q.leader_grpc == m.grpc:
                    return m
            return None

        deadline = time.monotonic() + timeout
        while True:
            crashed = [m for m in self.masters if m.crashed]
            if crashed:
                raise AssertionError("master exited on its own: " + ", ".join(
                    f"{m.name} (exit code {m.proc.returncode if m.proc else '?'}, log {m.log_path})" for m in crashed))
            found = find()
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for a serving leader")
            time.sleep(0.05)

    def logs(self) -> str:
        out = []
        for m in [*self.masters, *self.agents]:
            if m.log_path.exists():
                status = "never started" if m.proc is None else (
                    "running" if m.proc.poll() is None else f"exited {m.proc.returncode}")
                out.append(f"==== {m.name} (pid {m.proc.pid if m.proc else '-'}, {status}) ====\n"
                           + m.log_path.read_text(errors="replace")[-4000:])
        return "\n".join(out)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: Any) -> None:
        if exc_type is not None:  # the test failed inside: its report shows what the processes said
            print(self.logs())
        self.stop_all(signal.SIGKILL)
        kill_processes_under(self.root)
        unmount_under(self.root)


@contextmanager
def one_agent_cluster(root: Path, resources: str, *, masters: int = 1,
                      agent_flags: tuple[str, ...] = ("--hostname", "127.0.0.1")) -> Iterator[LocalCluster]:
    """A running cluster with a fast allocation round and one registered agent; by default the agent's
    hostname is its address, which is where DNS and HAProxy reach its tasks' ports."""
    with LocalCluster(root, n=masters) as c:
        c.master_flags = ["--allocation-interval", "0.2"]
        c.start_all()
        c.leader()
        c.add_agent(resources, flags=agent_flags)
        c.wait_agents(1)
        yield c


def stop_process(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """End a process the test started: SIGTERM by its PID, SIGKILL if it has not ended after `grace`
    seconds, and reap it (every wait bounded)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def kill_processes_under(root: Path) -> int:
    """SIGKILL, by PID, every process whose working directory or command line is under `root`: task
    supervisors and tasks outlive their agents by design, so a test must end them itself."""
    import psutil

    prefix = str(root.resolve())
    victims = []
    for proc in psutil.process_iter(["pid", "cwd", "cmdline"]):
        try:
            cwd = proc.info["cwd"] or ""
            cmdline = " ".join(proc.info["cmdline"] or [])
            if proc.pid != os.getpid() and (cwd.startswith(prefix) or prefix in cmdline):
                victims.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in victims:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=5)
    return len(victims)


def unmount_under(root: Path) -> int:
    """Lazily unmount whatever is mounted under `root` (the overlay root filesystems of container tasks
    whose supervisors a test killed before they could tear them down), deepest first."""
    prefix = str(root.resolve()).rstrip("/") + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return 0
    points = [line.split()[4].replace("\\040", " ") for line in lines if len(line.split()) > 4]
    mine = sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)
    for point in mine:
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30, check=False)
    return len(mine)
