"""Test harness for the replication contract: a tiny state machine and clusters of each kind.

Every wait is bounded (``wait_until`` raises AssertionError on timeout); Raft nodes bind 127.0.0.1
on free ports and are stopped (destroyed) by the harness, never left running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tessera.control_plane.cli.up import free_port, free_ports  # noqa: F401 - one definition, shared with `tessera up` (re-exported)
from tessera.control_plane.replication import (
    GroupCommitConfig,
    LocalReplicator,
    NotLeaderError,
    RaftReplicator,
    ReplicationConfig,
    Replicator,
)

KINDS = ("local", "raft1", "raft3", "raft3-apply-thread")  # the last: ReplicationConfig(apply_thread=True)


class ListStateMachine:
    """Appends entries to a list; the result of an entry is the list's length after it.

    Special entries exercise the replicator's guard: ``b"boom"`` makes apply_entries raise, and
    ``b"short"`` makes it return one result too few. Neither is appended (the batch is rejected
    whole, deterministically on every node)."""

    def __init__(self) -> None:
        self.entries: list[bytes] = []
        self.indices: list[int] = []
        self.restores = 0

    def apply_entries(self, raft_index: int, entries: list[bytes]) -> list[object]:
        if b"boom" in entries:
            raise RuntimeError("boom")
        out: list[object] = []
        for entry in entries:
            self.entries.append(entry)
            out.append(len(self.entries))
        self.indices.append(raft_index)
        if b"short" in entries:
            return out[:-1]
        return out

    def snapshot(self) -> object:
        return {"entries": self.entries, "indices": self.indices}

    def restore(self, snap: object) -> None:
        assert isinstance(snap, dict)
        self.entries = list(snap["entries"])
        self.indices = list(snap["indices"])
        self.restores += 1

    def copy(self) -> list[bytes]:
        return list(self.entries)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def raft_config(address: str, peers: list[str], data_dir: Path, **overrides: Any) -> ReplicationConfig:
    return ReplicationConfig(self_address=address, peers=tuple(p for p in peers if p != address),
                             data_dir=data_dir, **overrides)


class Cluster:
    """N replicators of one kind over fresh state machines, restartable from the same data dirs."""

    def __init__(self, kind: str, root: Path, *, group_commit: GroupCommitConfig | None = None,
                 **raft_overrides: Any) -> None:
        assert kind in KINDS
        self.kind = kind
        self.root = root
        self.size = 3 if kind.startswith("raft3") else 1
        self.group_commit = group_commit or GroupCommitConfig()
        self.raft_overrides = {**({"apply_thread": True} if kind == "raft3-apply-thread" else {}), **raft_overrides}
        if kind == "local":
            self.addresses = ["local:0"]
        else:
            self.addresses = [f"127.0.0.1:{p}" for p in free_ports(self.size)]
        self.data_dirs = [root / f"node{i}" for i in range(self.size)]
        self.nodes: list[Replicator] = []
        self.sms: list[ListStateMachine] = []
        self.events: list[list[tuple[bool, int]]] = []
        self.stopped: set[int] = set()

    # ------------------------------------------------------------------ lifecycle

    def build(self) -> None:
        self.nodes, self.sms, self.events, self.stopped = [], [], [], set()
        for i in range(self.size):
            sm = ListStateMachine()
            node: Replicator
            if self.kind == "local":
                node = LocalReplicator(sm, group_commit=self.group_commit, data_dir=self.data_dirs[i])
            else:
                cfg = raft_config(self.addresses[i], self.addresses, self.data_dirs[i],
                                  group_commit=self.group_commit, **self.raft_overrides)
                node = RaftReplicator(cfg, sm)
            log: list[tuple[bool, int]] = []
            node.on_leadership_change(lambda is_leader, term, log=log: log.append((is_leader, term)))
            self.nodes.append(node)
            self.sms.append(sm)
            self.events.append(log)

    def start(self) -> Replicator:
        self.build()
        for node in self.nodes:
            node.start()
        return self.wait_leader()

    def stop(self) -> None:
        for i, node in enumerate(self.nodes):
            node.stop()
            self.stopped.add(i)

    def stop_node(self, i: int) -> None:
        self.nodes[i].stop()
        self.stopped.add(i)

    def restart(self) -> Replicator:
        self.stop()
        return self.start()

    # ------------------------------------------------------------------ queries

    def alive(self) -> list[int]:
        return [i for i in range(len(self.nodes)) if i not in self.stopped]

    def wait_leader(self, timeout: float = 10.0) -> Replicator:
        def find() -> Replicator | None:
            leaders = [self.nodes[i] for i in self.alive() if self.nodes[i].is_leader()]
            return leaders[0] if len(leaders) == 1 else None
        leader: Replicator = wait_until(find, timeout, "a single leader")
        return leader

    def at_leader(self, call: Callable[[Replicator], Any], timeout: float = 10.0) -> Any:
        """Run ``call(leader)`` at whoever leads now and return its result. ``NotLeaderError`` means the
        request was definitely not appended, so it is offered again to the next leader: under load an
        election may move leadership between two requests, legitimately."""
        deadline = time.monotonic() + timeout
        while True:
            leader = self.wait_leader(max(0.1, deadline - time.monotonic()))
            try:
                return call(leader)
            except NotLeaderError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def submit_at_leader(self, entry: bytes, timeout: float = 10.0) -> object:
        """Submit ``entry`` at whoever leads now and wait for its result (see ``at_leader``)."""
        deadline = time.monotonic() + timeout
        return self.at_leader(
            lambda leader: leader.submit(entry).result(timeout=max(0.1, deadline - time.monotonic())), timeout)

    def leader_index(self, timeout: float = 10.0) -> int:
        leader = self.wait_leader(timeout)
        return self.nodes.index(leader)

    def followers(self) -> list[Replicator]:
        return [self.nodes[i] for i in self.alive() if not self.nodes[i].is_leader()]

    def wait_all_have(self, count: int, timeout: float = 10.0, nodes: list[int] | None = None) -> None:
        which = self.alive() if nodes is None else nodes
        wait_until(lambda: all(len(self.sms[i].entries) >= count for i in which), timeout,
                   f"{count} entries applied on nodes {which}")


def run_threads(n: int, target: Callable[[int], None], timeout: float) -> None:
    """Run ``target(i)`` on n threads; re-raise the first failure; bounded join."""
    errors: list[BaseException] = []

    def wrap(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "submitter threads did not finish in time"
    if errors:
        raise errors[0]
