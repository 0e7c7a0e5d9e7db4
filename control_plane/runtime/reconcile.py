"""The answer to a framework's `Reconcile`: the latest status of its tasks, from replicated state.

`reconcile(state, framework_id, stream_id, task_ids)` is pure (no I/O, no clock): the edge runs it under
the master's apply lock (`Master.read_state`) and converts the statuses back. As in Mesos:

- the named tasks, or every task of the framework when none are named (sorted by id);
- a task the master does not know is `TASK_LOST` with reason `REASON_RECONCILIATION`;
- a known task answers with its last recorded status, or (none recorded yet: it was just launched) a
  status made from its current state, also with reason `REASON_RECONCILIATION`;
- an unknown framework is `NotFound`, a stream id other than the framework's current one `Conflict`.

Task ids are scoped per framework: a task is looked up under the calling framework only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tessera.control_plane.core.errors import Conflict, NotFound
from tessera.control_plane.core.values import TaskState, TaskStatus

REASON = "REASON_RECONCILIATION"


def reconcile(state: Any, framework_id: str, stream_id: str, task_ids: Sequence[str]) -> list[TaskStatus]:
    fw = state.frameworks.get(framework_id)
    if fw is None:
        raise NotFound(f"framework {framework_id} is not known")
    if stream_id and stream_id != fw.stream_id:
        raise Conflict("stream_id is not the framework's current stream")
    out = []
    for task_id in list(task_ids) or sorted(fw.task_ids):
        task = state.find_task(framework_id, task_id)
        if task is None:
            status = TaskStatus(task_id=task_id, state=TaskState.TASK_LOST, reason=REASON,
                                message="the master does not know this task", framework_id=framework_id)
        elif task.last_status is not None:
            status = task.last_status
        else:
            status = TaskStatus(task_id=task_id, state=task.state, reason=REASON, agent_id=task.agent_id,
                                framework_id=framework_id)
        out.append(status)
    return out
