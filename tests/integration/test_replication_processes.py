"""RaftReplicator in real processes on 127.0.0.1: kill -9 of the leader, then kill -9 of every node
and a restart from the same data directories (journal + dump, with log compaction during the run).

Each node process runs a tiny list state machine and, while it leads and ``load.on`` exists, writes
unique entries and records every acknowledged one in its own ack file. It publishes its applied
entries every 50 ms in ``state-<i>.json``. Every acknowledged entry must end up, exactly once, in
every node's state, across both faults. Processes are killed by PID only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.replication.harness import free_ports, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

NODE_PROGRAM = r'''
import json, os, sys, threading, time
from pathlib import Path
from tessera.control_plane.replication import RaftReplicator, ReplicationConfig

root, index, addresses = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
me = addresses[index]


class ListSM:
    def __init__(self):
        self.entries = []

    def apply_entries(self, raft_index, entries):
        self.entries.extend(entries)
        return [len(self.entries)] * len(entries)

    def snapshot(self):
        return self.entries

    def restore(self, snap):
        self.entries = list(snap)


sm = ListSM()
cfg = ReplicationConfig(self_address=me, peers=tuple(a for a in addresses if a != me),
                        data_dir=root / f"node{index}", log_compaction_min_entries=20)
node = RaftReplicator(cfg, sm)
node.start()
acks = open(root / f"acked-{index}-{os.getpid()}.txt", "a")
lock = threading.Lock()


busy = [0]  # loaders between their check of load.on and the ack file written (published as "busy")


def load(t):
    seq = 0
    while True:
        with lock:
            busy[0] += 1  # before the check: a state published with busy 0 after load.on is gone is final
        active = False
        try:
            active = node.is_leader() and (root / "load.on").exists()
            if not active:
                continue  # (the finally clause runs first; the pause comes after it)
            batch = [f"{index}-{os.getpid()}-{t}-{seq + k}".encode() for k in range(10)]
            seq += 10
            futures = [node.submit(e) for e in batch]
            done = []
            for e, f in zip(batch, futures):
                try:
                    f.result(timeout=10)
                    done.append(e.decode())
                except Exception:  # not acknowledged: never counted
                    pass
            if done:
                with lock:
                    acks.write("".join(x + "\n" for x in done))
                    acks.flush()
        finally:
            with lock:
                busy[0] -= 1
            if not active:
                time.sleep(0.01)


for t in range(4):
    threading.Thread(target=load, args=(t,), daemon=True).start()

state = root / f"state-{index}.json"
while True:
    with lock:
        loading = busy[0]
    snap = {"leader": node.is_leader(), "term": node.term(), "entries": [e.decode() for e in list(sm.entries)],
            "busy": loading, "at": time.time()}
    tmp = state.with_suffix(".tmp")
    tmp.write_text(json.dumps(snap))
    tmp.replace(state)
    time.sleep(0.05)
'''


class Node:
    def __init__(self, root: Path, index: int, addresses: list[str]) -> None:
        self.root, self.index, self.addresses = root, index, addresses
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.root / f"node{self.index}.log", "ab")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", NODE_PROGRAM, str(self.root), str(self.index), ",".join(self.addresses)],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        (self.root / f"state-{self.index}.json").unlink(missing_ok=True)

    def state(self) -> dict[str, object]:
        try:
            return dict(json.loads((self.root / f"state-{self.index}.json").read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def entries(self) -> list[str]:
        return list(self.state().get("entries", []))  # type: ignore[call-overload]


def acked(root: Path) -> set[str]:
    out: set[str] = set()
    for f in root.glob("acked-*.txt"):
        out.update(f.read_text().split("\n")[:-1])  # whole lines only: a writer may be mid-line
    return out


def idle(node: Node, since: float) -> bool:
    """True once `node` published, after `since`, that none of its loaders is mid-batch."""
    st = node.state()
    return float(st.get("at", 0.0)) > since and st.get("busy") == 0  # type: ignore[arg-type]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Node]]:
    addresses = [f"127.0.0.1:{p}" for p in free_ports(3)]
    started = [Node(tmp_path, i, addresses) for i in range(3)]
    try:
        yield started
    finally:
        for n in started:
            n.kill()


def wait_all_hold(nodes: list[Node], expected: set[str], timeout: float) -> None:
    def ok() -> bool:
        for n in nodes:
            entries = n.entries()
            if not expected <= set(entries):
                return False
        return True
    wait_until(ok, timeout, f"{len(expected)} acknowledged entries on nodes {[n.index for n in nodes]}", 0.1)
    for n in nodes:
        entries = n.entries()
        assert len(entries) == len(set(entries)), f"node {n.index} applied an entry twice"


def test_kill_the_leader_then_every_node_and_lose_no_acknowledged_entry(nodes: list[Node], tmp_path: Path) -> None:
    for n in nodes:
        n.start()
    leader = wait_until(lambda: next((n for n in nodes if n.state().get("leader")), None), 20, "a leader")
    (tmp_path / "load.on").touch()
    wait_until(lambda: len(acked(tmp_path)) >= 2000, 20, "writes acknowledged before the kill", 0.05)

    leader.kill()  # kill -9 the leader
    before_kill = acked(tmp_path)  # final for the killed leader's file
    survivors = [n for n in nodes if n is not leader]
    wait_until(lambda: next((n for n in survivors if n.state().get("leader")), None), 20, "a new leader")
    # acknowledged after the kill, by whichever survivor leads (leadership may move again under load)
    wait_until(lambda: len(acked(tmp_path) - before_kill) >= 500, 20, "writes acknowledged after the kill", 0.05)
    stopped_at = time.time()
    (tmp_path / "load.on").unlink()
    wait_until(lambda: all(idle(n, stopped_at) for n in survivors), 20, "in-flight writes recorded", 0.05)
    before_restart = acked(tmp_path)
    wait_all_hold(survivors, before_restart, 20)

    # kill -9 everything, restart every node (the first one too) from its data directory.
    for n in nodes:
        n.kill()
    for n in nodes:
        n.start()
    wait_until(lambda: any(n.state().get("leader") for n in nodes), 20, "a leader after the restart")
    wait_all_hold(nodes, before_restart, 30)
    for d in ("node0", "node1", "node2"):
        assert (tmp_path / d / "raft.journal").exists()
    assert any((tmp_path / d / "raft.dump").exists() for d in ("node0", "node1", "node2")), \
        "log compaction never ran: the dump path was not exercised"
