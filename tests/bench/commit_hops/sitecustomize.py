"""Measurement only (not part of Tessera): the hops of every replicated batch, timed in each master process.

Put this directory first on PYTHONPATH and set COMMIT_HOPS_DIR to a directory: every Python process started
so (the masters a benchmark starts inherit both) then writes, per group-commit batch it proposed, one line
to COMMIT_HOPS_DIR/<pid>.tsv when the batch's futures are resolved:

    B  entries  first_submit  proposed  appended  apply_start  apply_end  done  resolved  free_slots  by_batcher

times from `time.perf_counter` (CLOCK_MONOTONIC: comparable across processes), where
first_submit is the oldest entry's `GroupCommitter.submit`, proposed the call into pysyncobj
(`RaftReplicator._propose`, after the batcher or the tick thread's pump took it), appended pysyncobj's
`journal.add` of it on the tick thread, apply_start/apply_end the state machine's apply of it,
done pysyncobj's commit callback, resolved the completer thread resolving its futures; free_slots how many
in-flight slots were left after it was proposed. And one `W  resolved  returned` line per blocking
`Master.propose` (when its handler thread ran again). Summarize with ``report.py DIR``. With
COMMIT_HOPS_ENTRIES=1 every submitted entry's bytes also go to COMMIT_HOPS_DIR/<pid>.entries (4-byte
little-endian length, then the bytes), which ``apply_cost.py`` applies again in the same batches.

It wraps private functions by name when their modules are imported; it changes no behaviour. Applies on
pysyncobj's tick thread only (`ReplicationConfig.apply_thread` off, the default).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import threading
import time
from collections import deque
from types import ModuleType
from typing import Any

OUT = os.environ.get("COMMIT_HOPS_DIR", "")


def _install(out: str) -> None:
    pc = time.perf_counter
    lock = threading.Lock()
    rows: list[tuple[float, ...]] = []
    leader_rows: list[str] = []
    wakes: list[tuple[float, float]] = []
    props: dict[int, list[float]] = {}
    fifo: deque[int] = deque()
    last_apply = [0.0, 0.0]
    path = os.path.join(out, f"{os.getpid()}.tsv")
    entries_path = os.path.join(out, f"{os.getpid()}.entries") if os.environ.get("COMMIT_HOPS_ENTRIES") else ""

    def flush() -> None:
        with lock:
            taken, wake, led = rows[:], wakes[:], leader_rows[:]
            rows.clear()
            wakes.clear()
            leader_rows.clear()
        if not taken and not wake and not led:
            return
        with open(path, "a") as fh:
            for line in led:
                fh.write(line + "\n")
            for r in taken:
                fh.write("B\t" + "\t".join(f"{x:.6f}" for x in r) + "\n")
            for w in wake:
                fh.write(f"W\t{w[0]:.6f}\t{w[1]:.6f}\n")

    def flusher() -> None:
        while True:
            time.sleep(0.5)
            flush()

    threading.Thread(target=flusher, name="commit-hops", daemon=True).start()

    def group_commit(m: ModuleType) -> None:
        submit = m.GroupCommitter.submit
        resolve = m.Batch.resolve

        def timed_submit(self: Any, entry: bytes) -> Any:
            t = pc()
            fut = submit(self, entry)
            fut._hops_submit = t
            if entries_path:
                with lock, open(entries_path, "ab") as fh:
                    fh.write(len(entry).to_bytes(4, "little") + entry)
            return fut

        def timed_resolve(self: Any, payload: object) -> None:
            t = pc()
            p = props.pop(id(self), None)
            if p is not None:
                first = min((getattr(f, "_hops_submit", t) for f in self.futures), default=t)
                with lock:
                    rows.append((float(len(self.futures)), first, *p[:5], t, *p[5:]))
            for f in self.futures:
                f._hops_resolved = t
            resolve(self, payload)

        m.GroupCommitter.submit = timed_submit
        m.Batch.resolve = timed_resolve

    def node(m: ModuleType) -> None:
        guarded = m.guarded_apply

        def timed_apply(sm: Any, index: int, entries: list[bytes]) -> Any:
            t = pc()
            try:
                return guarded(sm, index, entries)
            finally:
                last_apply[:] = [t, pc()]

        m.guarded_apply = timed_apply

    def raft(m: ModuleType) -> None:
        propose = m.RaftReplicator._propose
        done = m.RaftReplicator._on_batch_done

        def timed_propose(self: Any, batch: Any) -> None:
            slots = float(self._committer._slots._value)
            by_batcher = float(threading.current_thread().name.endswith("batcher"))
            props[id(batch)] = [pc(), 0.0, 0.0, 0.0, 0.0, slots, by_batcher]
            fifo.append(id(batch))
            propose(self, batch)

        def timed_done(self: Any, batch: Any, result: object, err: int) -> None:
            p = props.get(id(batch))
            if p is not None:
                p[2], p[3] = last_apply
                p[4] = pc()
            done(self, batch, result, err)

        m.RaftReplicator._propose = timed_propose
        m.RaftReplicator._on_batch_done = timed_done

    def journal(m: ModuleType) -> None:
        for cls in (m.FileJournal, m.MemoryJournal):
            add = cls.add

            def timed_add(self: Any, command: Any, idx: int, term: int, _add: Any = add) -> Any:
                t = pc()
                while fifo:  # proposed batches are appended in the order proposed
                    p = props.get(fifo.popleft())
                    if p is not None:
                        p[1] = t
                        break
                return _add(self, command, idx, term)

            cls.add = timed_add

    def master(m: ModuleType) -> None:
        wait = m.Master._wait

        def timed_wait(self: Any, fut: Any, write: Any) -> Any:
            try:
                return wait(self, fut, write)
            finally:
                resolved = getattr(fut, "_hops_resolved", None)
                if resolved is not None:
                    with lock:
                        wakes.append((resolved, pc()))

        m.Master._wait = timed_wait

    def leader(m: ModuleType) -> None:
        """The allocation side of a slot's cycle on the leader: `L WANT t` when a reaction wants an
        allocation pass, `L ROUND start end` per allocation round, `L PROPOSED t` / `L SETTLED t` per offer
        entry proposed / settled, `L BLOCKED t` per tick that wanted a round but had one in flight."""
        cls = m.LeaderDuties
        want, round_, tick = cls.want_allocation, cls._allocation_round, cls._tick
        ledger = m.duties.Ledger
        record, done = ledger.record, ledger.done

        def note(*fields: object) -> None:
            with lock:
                leader_rows.append("L\t" + "\t".join(f"{x:.6f}" if isinstance(x, float) else str(x)
                                                      for x in fields))

        def timed_want(self: Any) -> None:
            note("WANT", pc())
            want(self)

        def timed_round(self: Any) -> None:
            t = pc()
            seen: dict[str, object] = {}
            original = self._allocator
            if original is not None:
                snapshot_fn, allocate_fn = original

                def snap(*a: Any, **kw: Any) -> Any:
                    snapshot = snapshot_fn(*a, **kw)
                    seen["cpu_agents"] = sum(1 for agent in snapshot.agents if sum(
                        milli for (name, _), milli in agent.free.scalars if name == "cpus") >= 1000)
                    seen["filters"] = len(snapshot.decline_filters)
                    seen["suppressed"] = sum(len(f.suppressed_roles) for f in snapshot.frameworks)
                    seen["frameworks"] = len(snapshot.frameworks)
                    return snapshot

                def alloc(snapshot: Any, now: float) -> Any:
                    offers = allocate_fn(snapshot, now)
                    seen["offers"] = len(offers)
                    return offers

                self._allocator = (snap, alloc)
            try:
                round_(self)
            finally:
                self._allocator = original
                note("ROUND", t, pc(), *(seen.get(k, -1) for k in
                                          ("cpu_agents", "offers", "filters", "suppressed", "frameworks")))

        def timed_tick(self: Any, now: float) -> None:
            wanted = self._ledger.allocation_wanted
            before = self._ledger.last_allocation
            tick(self, now)
            if wanted and self._ledger.last_allocation == before:
                note("BLOCKED", pc())

        def timed_record(self: Any, commands: Any, now: float) -> None:
            for c in commands:
                if isinstance(c, m.duties.Propose) and c.key[0] == "offers":
                    note("PROPOSED", pc(), c.key[1])
            record(self, commands, now)

        def timed_done(self: Any, key: tuple[str, str]) -> None:
            if key[0] == "offers":
                note("SETTLED", pc(), key[1])
            done(self, key)

        cls.want_allocation, cls._allocation_round, cls._tick = timed_want, timed_round, timed_tick
        ledger.record, ledger.done = timed_record, timed_done

    targets = {
        "tessera.control_plane.runtime.leader": leader,
        "tessera.control_plane.replication._group_commit": group_commit,
        "tessera.control_plane.replication.pysyncobj_node": node,
        "tessera.control_plane.replication.raft": raft,
        "pysyncobj.journal": journal,
        "tessera.control_plane.runtime.master": master,
    }

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
            patch = targets.get(name)
            if patch is None:
                return None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
            else:
                return None
            loader = spec.loader
            if loader is None:
                return spec

            class Patching(importlib.abc.Loader):
                def create_module(self, s: importlib.machinery.ModuleSpec) -> ModuleType | None:
                    return loader.create_module(s)

                def exec_module(self, module: ModuleType) -> None:
                    loader.exec_module(module)
                    patch(module)

            spec.loader = Patching()
            return spec

    sys.meta_path.insert(0, Finder())


if OUT:
    _install(OUT)
