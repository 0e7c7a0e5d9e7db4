"""Recovery: at start, the agent rebuilds its tasks and their update streams from the checkpoint.

Rules it keeps:
- Every task of the checkpoint is back in the task table with its latest status and trace context; the
  unacknowledged updates are queued again, to be re-sent once registered.
- A live task is found again through its supervisor (which outlived the previous agent: stopping the
  agent never stops its tasks); a task whose kill was recorded is asked to die again (harmless: a
  supervisor starts a kill only once).
- A terminal task whose last update was acknowledged is done; a task still STAGING without a
  supervisor was never launched: TASK_DROPPED (the agent restarted before it launched the task).
- The file service's catalog is rebuilt from every task the checkpoint keeps, done ones included (their
  sandboxes stay readable until collected; one already gone from the disk is known as collected).
- Then every live task is observed at once, and what earlier runs left is removed: containers of tasks
  that are not live (runc state, CNI namespaces and rules), and the sandboxes that are due.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterable
from pathlib import Path

from tessera.agent.checkpoint import TaskRecord
from tessera.agent.core.files import SandboxEntry
from tessera.agent.core.status_updates import PendingUpdate
from tessera.agent.core.tasks import REASON_AGENT_RESTARTED, AgentTask, Outcome
from tessera.agent.executor.sandbox import SANDBOX_SUBDIR
from tessera.agent.runtime.launches import TaskRunner
from tessera.control_plane.core.lifecycle import is_terminal
from tessera.control_plane.core.values import StatusSource, TaskState

log = logging.getLogger("tessera.agent")


class Recovery(TaskRunner):
    """The agent's start from its checkpoint (see the module docstring)."""

    def recover(self) -> None:
        """Rebuild the task table and the update streams from the checkpoint; find running tasks."""
        now = self.monotonic()
        records = self.checkpoint.tasks()
        for rec in records:
            task = AgentTask(info=rec.info, state=rec.state, latest=rec.latest,
                             kill_requested=rec.kill_requested, kill_grace=rec.kill_grace)
            self.tasks.restore(task)
            self.traceparents[rec.key] = rec.traceparent
            if task.terminal:
                continue
            if rec.sandbox:
                handle = self.launcher.handle_from_checkpoint(
                    rec.task_id, rec.info.framework_id, rec.sandbox, rec.supervisor_pid, rec.supervisor_start,
                    rec.isolation, rec.kill_requested)
                self.handles[rec.key] = handle
        self.updates.recover((PendingUpdate(u.status, u.traceparent) for u in self.checkpoint.unacknowledged()), now)
        for task in list(self.tasks):
            found = self.handles.get(task.key)
            if task.kill_requested and found is not None:
                # The previous agent may have died between recording the kill and signalling the
                # supervisor; asking again is harmless (the supervisor starts a kill only once).
                if task.state is not TaskState.TASK_KILLING and self.tasks.can_record(task.key,
                                                                                       TaskState.TASK_KILLING):
                    self.emit(task, Outcome(TaskState.TASK_KILLING, "", "killing (again, after an agent restart)"))
                self.launcher.kill(found, task.kill_grace, task.info.shutdown_delay_seconds)
            if task.terminal and not self.updates.has_pending(task.key):
                self._mark_done(task)
            elif task.state is TaskState.TASK_STAGING and task.key not in self.handles:
                self.emit(task, Outcome(TaskState.TASK_DROPPED, REASON_AGENT_RESTARTED,
                                        "the agent restarted before it launched the task"),
                          source=StatusSource.SOURCE_AGENT)
        if records:
            log.info("recovered %d task(s), %d live, %d unacknowledged update(s)", len(records),
                     len(self.handles), len(self.updates))
        self.catalog.replace_all(catalog_entries(self.checkpoint.tasks(include_done=True)))
        self.observe_tasks()
        try:
            cleaned = self.launcher.cleanup_containers(list(self.handles.values()))
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("cannot clean up containers earlier runs left: %s", exc)
        else:
            if cleaned:
                log.info("removed %d container(s) an earlier run left behind", len(cleaned))
        self.collect_sandboxes()  # what earlier runs of the agent left


def catalog_entries(records: Iterable[TaskRecord]) -> list[SandboxEntry]:
    """The file service's view of the checkpoint's tasks: a sandbox in the launcher's layout (the run
    directory's `sandbox/`; an older agent's layout, whose sandbox held the control files, is not served)
    and whether it is still on the disk."""
    out = []
    for rec in records:
        run_dir = rec.sandbox
        sandbox = str(Path(run_dir) / SANDBOX_SUBDIR) if run_dir else ""
        collected = bool(run_dir) and not Path(run_dir).is_dir()
        if sandbox and not collected and not Path(sandbox).is_dir():
            sandbox = ""  # an older agent's layout, or never created
        out.append(SandboxEntry(rec.info.framework_id, rec.info.task_id, principal=rec.principal, run_dir=run_dir,
                                sandbox=sandbox, live=not is_terminal(rec.state), collected=collected))
    return out
