"""Fault-injection run: a real quorum, real agents and recording frameworks under a seeded nemesis,
then the history checker.

    python -m tests.faults.run --masters 3 --agents 3 --faults 100 --seed 7
    python -m tests.faults.run --masters 5 --agents 3 --faults 300 --seed 11 --keep /tmp/run11
    python -m tests.faults.run --hosts netns --delay-ms 20 --jitter-ms 10 --loss 0.01 --slow-disk m3

`--hosts proxy` (the default): every process on 127.0.0.1, partitions through the Raft proxies below.
`--hosts netns`: every master and agent in its own network namespace with its own address on a bridge
(`tests/faults/netns.py`), partitions as iptables rules inside the namespaces (dropped, reset, or
one way: what one side sends is lost), and with `--delay-ms/--jitter-ms/--loss/--reorder` every host's
egress delayed, jittered, lost and reordered; `--slow-disk NAME` puts that master's data on a
throttled disk. Needs root.

What happens:
1. `--masters` master processes start, each behind a fault-injecting Raft proxy (`tests.faults.proxy`:
   the master binds a private port with `--raft-bind` and advertises the proxy's), then `--agents`
   real `tessera agent` processes and `--frameworks` framework processes (`tests.faults.workload`).
2. The nemesis draws `--faults` faults from `random.Random(seed)`, one after the other with a short
   gap: `kill -9` of the leader or of a follower (restarted after a while), `kill -9` of an agent
   (restarted), `SIGSTOP` of the leader or a follower for longer than the election timeout
   (`SIGCONT` after), and network partitions between masters through the proxies (one master
   isolated, or one pair cut; packets swallowed or connections reset), healed after a while. At most
   one master is down, paused or isolated at a time, so a majority is always there. With `--hosts netns`
   an agent is also cut off from every master now and then (`isolate_agent`), healed after a while.
3. After a leader kill it waits until every framework has re-subscribed and received an offer again:
   that time (from the kill) is the failover time, summarised as min/median/max at the end.
4. Everything is healed and restarted, the frameworks are told to stop (they wait for their tasks to
   end, record the final states and tear down), the masters converge and stop, and the checker
   (`tests.faults.checker`) reads every log and record. A failure prints the seed and the command that
   replays the same fault schedule. Exit status 0 only when every property holds.
"""

from __future__ import annotations

import os

# Before grpc is imported: its fork handlers make fork() wait for gRPC's threads, and a harness that
# polls masters over gRPC while it restarts them (fork + exec) deadlocked in fork(). Every fork here is
# followed by exec, which needs no fork support.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import json
import random
import re
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.checker import Report, check, load_history, read_framework_record
from tests.faults.nfq_delay import Shape
from tests.faults.proxy import BLACKHOLE, RESET, RaftProxies
from tests.support.cluster import (
    AgentProc,
    LocalCluster,
    MasterProc,
    kill_processes_under,
    spawn,
    wait_for,
)

FAULTS: tuple[tuple[str, float], ...] = (
    ("kill_leader", 3.0),
    ("kill_follower", 2.0),
    ("kill_agent", 2.0),
    ("pause_leader", 1.5),
    ("pause_follower", 1.0),
    ("isolate_leader", 1.5),
    ("isolate_follower", 1.0),
    ("cut_pair", 1.5),
)
# netns only (every agent is a host of its own there): an agent cut off from every master, healed after a while
NETNS_FAULTS: tuple[tuple[str, float], ...] = (("isolate_agent", 1.5),)
# After a leader's pause: how long a later term is waited for before a leader serving on in its own term is
# taken as having kept it (an election still under way when the pause ended is over well within this).
KEPT_TERM_WAIT_S = 5.0


def kept_term(kind: str, leader: str, term_before: int, serving: list[tuple[int, str]]) -> bool:
    """Did the leader of a `pause_leader` fault keep its term? Yes when it serves in `term_before` and no
    master serves in a later one (`serving`: (term, name) of every master that says it serves). Never for
    a kill or a partition: a killed leader restarts as a follower, a cut-off one steps down."""
    if kind != "pause_leader":
        return False
    return (term_before, leader) in serving and all(t <= term_before for t, _ in serving)


def _last_line(path: Path) -> str:
    """The last non-empty line of a log (what a process said before it exited)."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


@dataclass
class RunConfig:
    masters: int = 3
    agents: int = 3
    frameworks: int = 2
    faults: int = 20
    seed: int = 7
    root: Path | None = None  # None: a temporary directory, removed when the run passes
    master_flags: tuple[str, ...] = ()
    failover_wait: float = 20.0  # bound on waiting for frameworks to get offers after a leader kill
    verbose: bool = True
    hosts: str = "proxy"  # or "netns": every master and agent its own network namespace
    shape: Shape | None = None  # netns: delay, jitter, loss, reordering of every host's egress
    slow_disk: tuple[str, ...] = ()  # netns: masters whose data lives on a throttled disk
    spare: tuple[str, ...] = ()  # masters never killed (the soak watches them as one process for the whole run)

    def replay_command(self) -> str:
        args = ["python", "-m", "tests.faults.run", "--masters", str(self.masters), "--agents", str(self.agents),
                "--frameworks", str(self.frameworks), "--faults", str(self.faults), "--seed", str(self.seed)]
        if self.hosts != "proxy":
            args += ["--hosts", self.hosts]
        if self.shape is not None:
            args += ["--delay-ms", f"{self.shape.delay * 1000:g}", "--jitter-ms", f"{self.shape.jitter * 1000:g}",
                     "--loss", f"{self.shape.loss:g}", "--reorder", f"{self.shape.reorder:g}"]
        for name in self.slow_disk:
            args += ["--slow-disk", name]
        args += [f"--master-flag={flag}" for flag in self.master_flags]
        return " ".join(shlex.quote(a) for a in args)


@dataclass
class RunResult:
    config: RunConfig
    report: Report
    faults: list[dict[str, Any]] = field(default_factory=list)
    failovers: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # liveness trouble seen by the harness
    elapsed: float = 0.0
    root: Path | None = None
    network: str = ""  # what the network layer did (proxies' connections, or the netns hosts' packets)
    terms: tuple[int, int] = (0, 0)  # the leader's term once the cluster was up, the highest term at the end
    rejoins: list[float] = field(default_factory=list)  # a restarted master's start -> it rejoined, seconds

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.problems

    def summary(self) -> str:
        c = self.config
        kinds: dict[str, int] = {}
        for f in self.faults:
            kinds[f["fault"]] = kinds.get(f["fault"], 0) + 1
        lines = [f"fault run: {c.masters} masters, {c.agents} agents, {c.frameworks} frameworks, seed {c.seed}: "
                 f"{len(self.faults)} faults in {self.elapsed:.0f} s",
                 "  faults: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())),
                 "  history: " + ", ".join(f"{k} {v}" for k, v in sorted(self.report.stats.items())
                                           if not k.startswith("violations."))]
        lines.append(f"  {self.network}")
        leader_faults = sum(kinds.get(k, 0) for k in ("kill_leader", "pause_leader", "isolate_leader"))
        kept = sum(1 for f in self.faults if f.get("kept_term"))
        lines.append(f"  elections: term {self.terms[0]} -> {self.terms[1]} ({self.terms[1] - self.terms[0]} terms) "
                     f"for {leader_faults} leader faults; {self.report.stats.get('terms_with_leader', 0)} terms "
                     "had a leader" + (f"; {kept} paused leaders kept their term (no election during the pause)"
                                       if kept else ""))
        if self.failovers:
            fo = sorted(self.failovers)
            lines.append(f"  failover (leader kill -> every framework re-subscribed and offered again), "
                         f"{len(fo)} trials: min {fo[0]:.2f} s, median {statistics.median(fo):.2f} s, "
                         f"max {fo[-1]:.2f} s")
        if self.rejoins:
            rj = sorted(self.rejoins)
            lines.append(f"  rejoin (a restarted master started -> it knows a leader and applied what was committed), "
                         f"{len(rj)} restarts: min {rj[0]:.2f} s, median {statistics.median(rj):.2f} s, "
                         f"max {rj[-1]:.2f} s")
        if self.ok:
            lines.append("  all properties hold")
        else:
            lines.append(f"  FAILED: seed {c.seed}; replay with: {c.replay_command()}")
            lines += [f"  harness: {p}" for p in self.problems]
            lines += [f"  {v}" for v in self.report.violations]
            if self.root is not None:
                lines.append(f"  run directory kept: {self.root}")
        return "\n".join(lines)


class ProxyNetwork:
    """Every process on 127.0.0.1; each master's Raft port behind a fault-injecting proxy (proxy.py)."""

    modes = (BLACKHOLE, RESET)

    def __init__(self, cluster: LocalCluster, pids: Callable[[], dict[str, int]]) -> None:
        routes: dict[str, tuple[str, str]] = {}
        for m in cluster.masters:
            bind = f"127.0.0.1:{cluster.fresh_ports(1)[0]}"  # never one of the cluster's own ports
            m.extra_flags = ["--raft-bind", bind]
            routes[m.name] = (m.raft, bind)  # peers dial m.raft: the proxy, which forwards to bind
        self.proxies = RaftProxies(routes, pids)

    def start(self) -> None:
        self.proxies.start()

    def isolate(self, name: str, mode: str) -> None:
        self.proxies.isolate(name, mode)

    def cut(self, a: str, b: str, mode: str) -> None:
        self.proxies.cut(a, b, mode)

    def heal(self) -> None:
        self.proxies.heal()

    def close(self) -> None:
        self.proxies.close()

    def describe(self) -> str:
        return (f"raft proxies: {self.proxies.connections_seen} connections, "
                f"{self.proxies.unidentified} closed as unidentified")


ONE_WAY = "one-way"  # netns only: what the first side sends is lost, what it receives arrives


class NetnsNetwork:
    """Every master and agent its own host (netns.py); partitions are iptables rules between masters, or
    between one agent and every master."""

    modes = (BLACKHOLE, RESET, ONE_WAY)

    def __init__(self, cluster: LocalCluster, root: Path, config: RunConfig) -> None:
        from tests.faults.netns import NetnsHosts

        self.cluster = cluster
        self.root = root
        self.config = config
        self.hosts = NetnsHosts(work_dir=root)
        self.hosts.place(cluster, slow_disk=config.slow_disk)
        for i in range(config.agents):
            self.hosts.add(f"a{i + 1}")  # the names LocalCluster.add_agent gives
        self.masters = [m.name for m in cluster.masters]
        self.counts: dict[str, int] | None = None  # the delay processes' counters when the hosts were removed

    def start(self) -> None:
        if self.config.shape is not None:
            for i, name in enumerate(self.hosts.hosts):
                self.hosts.shape(name, self.config.shape, seed=self.config.seed * 1000 + i)

    def isolate(self, name: str, mode: str) -> None:
        if mode == ONE_WAY:
            self.hosts.isolate(name, self.masters, BLACKHOLE, one_way=True)
        else:
            self.hosts.isolate(name, self.masters, mode)

    def cut(self, a: str, b: str, mode: str) -> None:
        if mode == ONE_WAY:
            self.hosts.block(a, b)
        else:
            self.hosts.cut(a, b, mode)

    def heal(self) -> None:
        self.hosts.heal()

    def close(self) -> None:
        """After the processes stopped: the event logs of masters on a slow disk go next to the others
        (the checker reads ROOT/m*/events.db), then every namespace, link, mount and cgroup goes."""
        import shutil

        for m in self.cluster.masters:
            if not m.data_dir.is_relative_to(self.root):
                for db in m.data_dir.glob("events.db*"):
                    shutil.copy2(db, self.root / m.name / db.name)
        self.counts = self.hosts.shaped()
        self.hosts.close()

    def describe(self) -> str:
        shape = self.config.shape
        text = f"netns hosts: {len(self.hosts.hosts)} namespaces on 10.213.240.0/24"
        if shape is not None:
            counts = self.counts if self.counts is not None else self.hosts.shaped()
            text += (f"; egress delay {shape.delay * 1000:g} ms +- {shape.jitter * 1000:g} ms, loss {shape.loss:.1%}, "
                     f"reorder {shape.reorder:.1%}: {counts['packets']} packets, {counts['dropped']} dropped")
        if self.config.slow_disk:
            text += f"; slow disk: {', '.join(self.config.slow_disk)}"
        return text


class FaultRun:
    def __init__(self, config: RunConfig, root: Path) -> None:
        self.config = config
        self.root = root
        self.rng = random.Random(config.seed)
        self.cluster = LocalCluster(root, n=config.masters)
        self.cluster.master_flags = list(config.master_flags)
        self.net: ProxyNetwork | NetnsNetwork
        if config.hosts == "netns":
            self.net = NetnsNetwork(self.cluster, root, config)
        else:
            self.net = ProxyNetwork(self.cluster, self._master_pids)
        self.frameworks: dict[str, subprocess.Popen[bytes]] = {}
        self.fw_dir = root / "frameworks"
        self.fw_dir.mkdir(parents=True, exist_ok=True)
        self.stop_file = root / "STOP"
        self.faults: list[dict[str, Any]] = []
        self.failovers: list[float] = []
        self.rejoins: list[float] = []
        self.problems: list[str] = []
        self.paused: MasterProc | None = None
        self.terms = (0, 0)

    def log(self, message: str) -> None:
        if self.config.verbose:
            print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def _master_pids(self) -> dict[str, int]:
        return {m.name: m.proc.pid for m in self.cluster.masters if m.alive and m.proc is not None}

    # ---- setup ------------------------------------------------------------------------------------
    def start(self) -> None:
        self.net.start()
        self.cluster.start_all()
        self.terms = (self._term(self.cluster.leader(timeout=60)), 0)
        for i in range(self.config.agents):
            self.cluster.add_agent(resources=f"cpus:4;mem:2048;ports:[{31000 + 100 * i}-{31099 + 100 * i}]")
        self.cluster.wait_agents(self.config.agents, timeout=60)
        masters = ",".join(self.cluster.grpc_addresses())
        for i in range(self.config.frameworks):
            name = f"fw{i + 1}"
            cmd = [sys.executable, "-m", "tests.faults.workload", "--masters", masters,
                   "--record", str(self.fw_dir / f"{name}.jsonl"), "--name", name,
                   "--seed", str(self.config.seed * 100 + i), "--stop-file", str(self.stop_file)]
            self.frameworks[name] = spawn(cmd, self.fw_dir / f"{name}.log", {**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_for(lambda: all(self._offers_after(name, 0.0) for name in self.frameworks), 60,
                 what="every framework subscribed and offered")
        self.log(f"cluster up: {self.config.masters} masters, {self.config.agents} agents, "
                 f"{self.config.frameworks} frameworks")

    # ---- framework records ------------------------------------------------------------------------
    def _records(self, name: str) -> list[dict[str, Any]]:
        path = self.fw_dir / f"{name}.jsonl"
        return read_framework_record(path) if path.exists() else []

    def _offers_after(self, name: str, t0: float) -> float | None:
        """When framework `name` first received offers on a subscription made after `t0`."""
        subscribed = None
        for r in self._records(name):
            if r["kind"] == "subscribed" and r["t"] > t0 and subscribed is None:
                subscribed = r["t"]
            elif r["kind"] == "offers" and subscribed is not None and r["t"] >= subscribed:
                return float(r["t"])
        return None

    # ---- the nemesis ------------------------------------------------------------------------------
    def _serving(self) -> list[tuple[int, MasterProc]]:
        """(term, master) of every master that says it serves as leader. A deposed leader cut off from
        the others says so until its leader_fallback_timeout runs out, next to the real one."""
        out = []
        for m in self.cluster.masters:
            if not m.alive or m is self.paused:
                continue
            try:
                q = m.quorum(timeout=0.5)
            except Exception:  # noqa: BLE001 - a master starting, stopping or electing
                continue
            if q.leader == m.raft and q.leader_grpc == m.grpc:
                out.append((int(q.term), m))
        return out

    def _leader(self, newer_than: int = -1, timeout: float = 20.0, report: bool = True) -> MasterProc | None:
        """The serving leader of the highest term (above `newer_than`); None after `timeout` s without one
        (a problem of the run, with `report`, saying who served meanwhile)."""
        def find() -> tuple[int, MasterProc] | None:
            serving = [(t, m) for t, m in self._serving() if t > newer_than]
            return max(serving, key=lambda tm: tm[0]) if serving else None

        try:
            return wait_for(find, timeout, interval=0.05, what="a serving leader")[1]
        except TimeoutError:
            if report:
                serving = ", ".join(f"{m.name} in term {t}" for t, m in sorted(self._serving(), key=lambda tm: tm[0]))
                self.problems.append(f"no serving leader{f' after term {newer_than}' if newer_than >= 0 else ''} "
                                     f"within {timeout:g} s (fault {len(self.faults) + 1}; serving meanwhile: "
                                     f"{serving or 'none'})")
            return None

    def _successor_term(self, kind: str, leader: MasterProc, term_before: int) -> tuple[int, bool]:
        """After a leader fault: the term of the leader now serving, and whether it is the faulted leader
        still in its own term (`kept_term`). A paused leader may legitimately keep its term: when no
        follower won an election before the pause ended (random timeouts, split pre-votes), it resumes and
        its heartbeats end the followers' campaigns. A leader killed or cut off cannot (check-quorum
        deposes it), so for those a later term must serve, as before."""
        if kind == "pause_leader":
            after = self._leader(newer_than=term_before, timeout=KEPT_TERM_WAIT_S, report=False)
            if after is None and kept_term(kind, leader.name, term_before,
                                           [(t, m.name) for t, m in self._serving()]):
                return term_before, True
            if after is not None:
                return self._term(after), False
        return self._term(self._leader(newer_than=term_before)), False

    @staticmethod
    def _term(m: MasterProc | None) -> int:
        if m is None:
            return 0
        try:
            return int(m.quorum(timeout=2.0).term)
        except Exception:  # noqa: BLE001 - a master that just lost leadership
            return 0

    def _follower(self, leader: MasterProc | None, kill: bool = False) -> MasterProc:
        """A master other than `leader`; one the run may kill when `kill` (never a spared one)."""
        return self.rng.choice([m for m in self.cluster.masters
                                if m is not leader and not (kill and m.name in self.config.spare)])

    def _restart_master(self, m: MasterProc, wait: bool = True) -> None:
        """Start `m` again and (with `wait`) wait until it has rejoined: it knows a leader and has applied
        what was committed when it came back. Until then it is not part of a working majority, and
        the next fault would take down two masters at once (a restart replays the whole journal)."""
        if m.alive:
            return
        others = sum(1 for o in self.cluster.masters if o is not m and o.alive)
        if 2 * others > len(self.cluster.masters):
            leader = self._leader()
        else:  # no majority without it (another master is down too): no leader to wait for, start it now
            leader = max(self._serving(), key=lambda tm: tm[0], default=(0, None))[1]
        target = 0
        if leader is not None:
            try:
                target = int(leader.quorum(timeout=2.0).commit_index)
            except Exception:  # noqa: BLE001 - leadership moved: wait for any leader below
                target = 0
        self.cluster.start(m)
        if not wait:
            return
        started = time.monotonic()

        seen: list[str] = []

        def rejoined() -> bool:
            if m.crashed:
                return True  # no use waiting: said below
            q = m.quorum(timeout=0.5)
            seen[:] = [f"it knows leader {q.leader or '-'}, applied {q.applied_index} of {target}"]
            return bool(q.leader) and q.applied_index >= target

        try:
            wait_for(rejoined, 60, interval=0.1, what=f"{m.name} to rejoin")
            if not m.crashed:
                self.rejoins.append(time.monotonic() - started)
        except TimeoutError as exc:
            self.problems.append(f"{exc}{'; ' + seen[0] if seen else ''} (fault {len(self.faults) + 1})")
        if m.crashed:
            code = m.proc.returncode if m.proc is not None else "?"
            self.problems.append(f"{m.name} exited with code {code} after its restart: {_last_line(m.log_path)} "
                                 f"(fault {len(self.faults) + 1})")

    def inject(self, index: int) -> None:
        table = FAULTS + (NETNS_FAULTS if self.config.hosts == "netns" else ())
        kind = self.rng.choices([n for n, _ in table], weights=[w for _, w in table])[0]
        hold = self.rng.uniform(1.0, 2.5)
        fault: dict[str, Any] = {"n": index, "fault": kind, "hold": round(hold, 2), "t": time.time()}
        needs_leader = kind in ("kill_leader", "pause_leader", "isolate_leader")
        leader = self._leader() if needs_leader or kind in ("kill_follower", "pause_follower",
                                                            "isolate_follower", "cut_pair") else None
        if needs_leader and leader is None:
            return
        if kind == "kill_leader" and leader is not None and leader.name in self.config.spare:
            kind = "pause_leader"  # a spared master is never restarted: it loses its leadership another way
            fault["fault"] = kind
        term_before = self._term(leader) if needs_leader else None
        if kind in ("kill_leader", "kill_follower"):
            victim = leader if kind == "kill_leader" else self._follower(leader, kill=True)
            assert victim is not None
            fault["target"] = victim.name
            t_kill = time.time()
            self.cluster.kill(victim)
            time.sleep(hold)
            self._restart_master(victim)
            if kind == "kill_leader":
                self._measure_failover(t_kill, fault)
        elif kind == "kill_agent":
            agent: AgentProc = self.rng.choice(self.cluster.agents)
            fault["target"] = agent.name
            self.cluster.kill(agent)
            time.sleep(hold)
            self.cluster.start_agent(agent)
        elif kind in ("pause_leader", "pause_follower"):
            victim = leader if kind == "pause_leader" else self._follower(leader)
            assert victim is not None and victim.proc is not None
            fault["target"] = victim.name
            os.kill(victim.proc.pid, signal.SIGSTOP)
            self.paused = victim
            time.sleep(hold)
            os.kill(victim.proc.pid, signal.SIGCONT)
            self.paused = None
        elif kind in ("isolate_leader", "isolate_follower"):
            victim = leader if kind == "isolate_leader" else self._follower(leader)
            assert victim is not None
            mode = self.rng.choice(self.net.modes)
            fault.update(target=victim.name, mode=mode)
            self.net.isolate(victim.name, mode)
            time.sleep(hold)
            self.net.heal()
        elif kind == "isolate_agent":
            agent = self.rng.choice(self.cluster.agents)
            mode = self.rng.choice(self.net.modes)
            fault.update(target=agent.name, mode=mode)
            self.net.isolate(agent.name, mode)
            time.sleep(hold)
            self.net.heal()
        elif kind == "cut_pair":
            a, b = self.rng.sample([m.name for m in self.cluster.masters], 2)
            mode = self.rng.choice(self.net.modes)
            fault.update(target=f"{a}|{b}", mode=mode)
            self.net.cut(a, b, mode)
            time.sleep(hold)
            self.net.heal()
        if term_before and leader is not None:
            # The nemesis checks its own faults: losing the leader for longer than the election timeout
            # (killed or cut off) must end its term: a leader of a later term must serve. If none does,
            # the fault did not happen (e.g. the proxy failed to cut) or the cluster is stuck. A paused
            # leader may instead serve on in its term (`_successor_term`): counted, not a problem.
            term_after, kept = self._successor_term(kind, leader, term_before)
            fault["terms"] = [term_before, term_after]
            if kept:
                fault["kept_term"] = True
        self.faults.append(fault)
        self.log(f"fault {index + 1}{f'/{self.config.faults}' if self.config.faults else ''}: {kind} {fault.get('target', '')} "
                 f"{fault.get('mode', '')} for {hold:.2f} s"
                 + (f"; term {fault['terms'][0]} -> {fault['terms'][1]}" if "terms" in fault else "")
                 + ("; it kept its term: no election during the pause" if fault.get("kept_term") else "")
                 + (f"; failover {fault['failover']:.2f} s" if "failover" in fault else ""))
        with open(self.root / "nemesis.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(fault) + "\n")
        time.sleep(self.rng.uniform(0.3, 1.0))

    def _measure_failover(self, t_kill: float, fault: dict[str, Any]) -> None:
        try:
            times = wait_for(lambda: [self._offers_after(n, t_kill) for n in self.frameworks]
                             if all(self._offers_after(n, t_kill) for n in self.frameworks) else None,
                             self.config.failover_wait, interval=0.1, what="offers after a leader kill")
        except TimeoutError:
            self.problems.append(f"frameworks got no offers within {self.config.failover_wait} s of the leader "
                                 f"kill in fault {fault['n'] + 1}")
            return
        fault["failover"] = max(times) - t_kill
        self.failovers.append(fault["failover"])

    # ---- the end ----------------------------------------------------------------------------------
    def settle(self) -> None:
        """Heal everything, bring every process back, stop the frameworks, let the masters converge."""
        self.net.heal()
        if self.paused is not None and self.paused.proc is not None:
            os.kill(self.paused.proc.pid, signal.SIGCONT)
        for m in self.cluster.masters:
            self._restart_master(m, wait=False)
        for a in self.cluster.agents:
            if not a.alive:
                self.cluster.start_agent(a)
        self.stop_file.touch()
        for name, proc in self.frameworks.items():
            try:
                code = proc.wait(timeout=150)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGUSR1)  # the workload prints every thread's stack to its log
                time.sleep(1.0)
                proc.kill()
                proc.wait(timeout=5)
                code = None
            if code != 0:
                self.problems.append(f"framework {name} did not end cleanly (exit {code}"
                                     f"{', hung: its threads are at the end of its log' if code is None else ''}); "
                                     f"see {self.fw_dir / (name + '.log')}")
        # agents deliver their last updates and acks; then every master must hold the same history
        try:
            wait_for(self._converged, 60, interval=0.25, what="every master's events.db at the same seq")
        except TimeoutError as exc:
            crashed = [f"{m.name} exited with code {m.proc.returncode if m.proc else '?'}: {_last_line(m.log_path)}"
                       for m in self.cluster.masters if m.crashed]
            self.problems.append(str(exc) + f" (last seqs {self._last_seqs()})"
                                 + "".join(f"; {c}" for c in crashed))
        self.terms = (self.terms[0], max(self._term(m) for m in self.cluster.masters if m.alive))

    def _last_seqs(self) -> dict[str, int]:
        out = {}
        for m in self.cluster.masters:
            db = m.data_dir / "events.db"
            try:
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
                try:
                    out[m.name] = int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
                finally:
                    conn.close()
            except sqlite3.Error:
                out[m.name] = -1
        return out

    def _converged(self) -> bool:
        seqs = self._last_seqs()
        if len(set(seqs.values())) != 1:
            return False
        time.sleep(1.0)  # and stays so: nothing was still in flight
        return self._last_seqs() == seqs

    def stop(self) -> None:
        for a in self.cluster.agents:
            self.cluster.kill(a, signal.SIGTERM)
        for m in self.cluster.masters:
            self.cluster.kill(m, signal.SIGTERM)
        self.net.close()
        for proc in self.frameworks.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
        self.cluster.stop_all(signal.SIGKILL)
        kill_processes_under(self.root)


def run(config: RunConfig, on_start: Callable[[FaultRun], None] | None = None,
        more: Callable[[int], bool] | None = None) -> RunResult:
    """One whole run; the run directory is removed when every property holds and `config.root` is None.
    `more(i)` says whether to inject fault `i` (default: `config.faults` faults; the soak: until its time
    is up)."""
    keep = config.root is not None
    root = config.root or Path(tempfile.mkdtemp(prefix=f"tessera-faults-{config.seed}-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    fr = FaultRun(config, root)
    try:
        fr.start()
        if on_start is not None:
            on_start(fr)
        i = 0
        while more(i) if more is not None else i < config.faults:
            fr.inject(i)
            i += 1
        fr.settle()
    except Exception as exc:  # noqa: BLE001 - the history is still checked and the directory kept
        fr.problems.append(f"harness error: {exc!r}")
    finally:
        fr.stop()
    report = check(load_history(root))
    result = RunResult(config, report, fr.faults, fr.failovers, fr.problems, time.monotonic() - started, root,
                       fr.net.describe(), fr.terms, fr.rejoins)
    if result.ok and not keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        result.root = None
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.run", description=__doc__.split("\n")[0])
    parser.add_argument("--masters", type=int, default=3, choices=(3, 5))
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--frameworks", type=int, default=2)
    parser.add_argument("--faults", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", type=Path, default=None, help="run directory to keep (default: a temporary "
                                                                 "one, removed when the run passes)")
    parser.add_argument("--hosts", choices=("proxy", "netns"), default="proxy",
                        help="proxy: all on 127.0.0.1 behind Raft proxies; netns: every master and agent its own "
                             "network namespace and address (root; tests/faults/netns.py)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="netns: delay of every host's packets")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="netns: +- uniform jitter on the delay")
    parser.add_argument("--loss", type=float, default=0.0, help="netns: probability a packet is lost (0.01: 1 %%)")
    parser.add_argument("--reorder", type=float, default=0.0, help="netns: probability a packet skips the delay")
    parser.add_argument("--slow-disk", action="append", default=[], metavar="MASTER",
                        help="netns: this master's data on a throttled (50 write IOPS), synchronously mounted disk")
    parser.add_argument("--master-flag", action="append", default=[], metavar="FLAG",
                        help="an extra flag for every master (repeat), e.g. --master-flag=--no-pre-vote")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    shaped = args.delay_ms or args.jitter_ms or args.loss or args.reorder
    if args.hosts == "proxy" and (shaped or args.slow_disk):
        parser.error("--delay-ms, --jitter-ms, --loss, --reorder and --slow-disk need --hosts netns")
    if any(not re.fullmatch(r"m[1-9]", n) or int(n[1:]) > args.masters for n in args.slow_disk):
        parser.error(f"--slow-disk: a master name m1..m{args.masters}")
    shape = Shape(args.delay_ms / 1000, args.jitter_ms / 1000, args.loss, args.reorder) if shaped else None
    config = RunConfig(masters=args.masters, agents=args.agents, frameworks=args.frameworks, faults=args.faults,
                       seed=args.seed, root=args.keep, verbose=not args.quiet, hosts=args.hosts, shape=shape,
                       slow_disk=tuple(args.slow_disk), master_flags=tuple(args.master_flag))
    result = run(config)
    print(result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
