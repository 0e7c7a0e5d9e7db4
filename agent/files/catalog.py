"""Which tasks this agent's file service can serve: `SandboxCatalog`, and the size samples behind `--since`.

The agent loop is the only writer of the catalog (a RunTask, a prepared sandbox, a terminal status, a
collected sandbox, recovery at start); the service's threads read it under its lock and never wait for
the loop. The file service starts before the agent has recovered its tasks from the checkpoint: until
recovery fills the catalog (`replace_all`), every lookup is UNAVAILABLE ("recovering"), never NOT_FOUND,
so a follow that re-dials a restarted agent early waits and re-dials instead of ending (an agent that
comes back on its old port, or a client told the new address early, would otherwise hear "no task"). Entries of tasks the agent keeps (live or done) stay; beyond `MAX_ENTRIES`, collected ones go
first, then the oldest ended ones, so an agent running tasks for months holds a bounded table (a task
forgotten that way is NOT_FOUND, like one this agent never ran).

`OutputSampler` is a daemon thread that, every `SAMPLE_INTERVAL` seconds, records the (inode, size) of
stdout and stderr of every live task with a sandbox into an `OutputTimeline` (pure, agent/core/files.py):
`--since` answers from it. It stats two files per live task per interval, through the same walk as
every read (no symlink followed).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from tessera.agent.core.files import OUTPUT_FILES, OutputTimeline, SandboxEntry, find_sandbox
from tessera.agent.executor import sandbox_files
from tessera.control_plane.core.errors import Unavailable
from tessera.control_plane.core.values import TaskKey

log = logging.getLogger("tessera.agent.files")

MAX_ENTRIES = 20_000
SAMPLE_INTERVAL = 1.0


class SandboxCatalog:
    """TaskKey -> SandboxEntry, safe to read from any thread (see the module docstring)."""

    def __init__(self, limit: int = MAX_ENTRIES) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._entries: dict[TaskKey, SandboxEntry] = {}
        self._recovered = False  # set by the first replace_all (recovery) or add (the loop runs)
        self.agent = ""  # how messages name this agent: its id once registered, else its hostname

    # ---- written by the agent loop --------------------------------------------------------------------
    def add(self, entry: SandboxEntry) -> None:
        with self._lock:
            self._entries.pop(entry.key, None)  # a re-added key goes to the end (newest)
            self._entries[entry.key] = entry
            self._recovered = True
            self._bound()

    def replace_all(self, entries: Iterable[SandboxEntry]) -> None:
        with self._lock:
            self._entries = {e.key: e for e in entries}
            self._recovered = True
            self._bound()

    def prepared(self, key: TaskKey, run_dir: str, sandbox: str) -> None:
        self._update(key, run_dir=run_dir, sandbox=sandbox)

    def ended(self, key: TaskKey, now: float) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.live:
                self._entries[key] = replace(entry, live=False, ended_at=now)

    def collected(self, run_dirs: Iterable[str]) -> None:
        gone = set(run_dirs)
        with self._lock:
            for key, entry in list(self._entries.items()):
                if entry.run_dir and entry.run_dir in gone:
                    self._entries[key] = replace(entry, collected=True)

    def _update(self, key: TaskKey, **changes: object) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries[key] = replace(entry, **changes)  # type: ignore[arg-type]

    def _bound(self) -> None:
        excess = len(self._entries) - self.limit
        if excess <= 0:
            return
        order = sorted((e for e in self._entries.values() if not e.live),
                       key=lambda e: (not e.collected, e.ended_at))
        for entry in order[:excess]:
            del self._entries[entry.key]

    # ---- read by the service --------------------------------------------------------------------------
    def find(self, key: TaskKey) -> SandboxEntry:
        """The task's entry, or the core's error saying why there is none (see `find_sandbox`);
        Unavailable until the agent has recovered its tasks (see the module docstring)."""
        with self._lock:
            if not self._recovered:
                raise Unavailable(f"agent {self.agent or '(this agent)'} is starting: it has not recovered its "
                                  "tasks from its checkpoint yet; retry in a moment")
            return find_sandbox(self._entries, key, self.agent or "(this agent)")

    def live(self, key: TaskKey) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry.live and not entry.collected

    def live_sandboxes(self) -> list[SandboxEntry]:
        with self._lock:
            return [e for e in self._entries.values() if e.live and e.sandbox]

    def keys(self) -> set[TaskKey]:
        with self._lock:
            return set(self._entries)


class OutputSampler:
    """Samples stdout and stderr of live tasks (see the module docstring); `timeline(key, name)`."""

    def __init__(self, catalog: SandboxCatalog, *, interval: float = SAMPLE_INTERVAL,
                 clock: Callable[[], float] = time.time) -> None:
        self.catalog = catalog
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._timelines: dict[tuple[TaskKey, str], OutputTimeline] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> OutputSampler:
        self._thread = threading.Thread(target=self._run, name="files-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - sampling never stops the file service
                log.exception("sampling stdout/stderr sizes failed")

    def sample(self) -> None:
        """One round: every live task's stdout and stderr; timelines of forgotten tasks are dropped."""
        now = self.clock()
        for entry in self.catalog.live_sandboxes():
            try:
                root = sandbox_files.open_sandbox(entry.sandbox)
            except Exception:  # noqa: BLE001 - gone meanwhile: nothing to sample
                continue
            try:
                for name in OUTPUT_FILES:
                    try:
                        info = os.stat(name, dir_fd=root, follow_symlinks=False)
                    except OSError:
                        continue
                    with self._lock:
                        line = self._timelines.setdefault((entry.key, name), OutputTimeline())
                        line.record(now, info.st_ino, info.st_size)
            finally:
                os.close(root)
        known = self.catalog.keys()
        with self._lock:
            for key in [k for k in self._timelines if k[0] not in known]:
                del self._timelines[key]

    def offset_since(self, key: TaskKey, name: str, since: float, inode: int, size: int, mtime: float) -> int:
        with self._lock:
            line = self._timelines.get((key, name))
            if line is None:
                line = OutputTimeline()  # never sampled (the agent started later): the file's mtime decides
            return line.offset_since(since, inode, size, mtime)
