"""The status-update pump: every status of a task is recorded, sent, re-sent and acknowledged here.

Rules it keeps (docs/protocol.md):
- A status is written to the checkpoint before it is sent (`emit`); only the head of each task's stream
  is in flight; it is re-sent with backoff until acknowledged, and all are re-sent on every new
  registration (the loop calls `flush_updates` after each turn's commit, and on the timers).
- With BATCHED_MESSAGES (announced at every registration unless `batch_messages` is off) the heads due
  in one turn leave as one `StatusUpdates` message (at most MAX_UPDATES_PER_MESSAGE each, a task's
  updates never split); a lone update still goes as `status_update`, and the master may answer with
  `acks`. When the master's `Registered` says `ordered_streams`, a due task's whole pending stream goes
  (oldest first), which the master records in one entry.
- A task is done (`_mark_done`, kept in the checkpoint) when it is terminal and its last update was
  acknowledged. The statuses of a task the master forgot (`orphaned`) are kept, never sent.
- The task's `task.run` span ends with its terminal status.
The decisions (which update is due, what an acknowledgement removes) are the pure
`tessera.agent.core.status_updates.StatusUpdateManager`'s; this layer does the checkpoint and the sends.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from opentelemetry import trace

from tessera.agent.core.status_updates import AckOutcome, PendingUpdate
from tessera.agent.core.tasks import AgentTask, Outcome, make_status
from tessera.agent.runtime.state import AgentState
from tessera.control_plane.codec import to_proto
from tessera.control_plane.core.lifecycle import is_terminal
from tessera.control_plane.core.values import StatusSource, TaskKey, TaskState
from tessera.v1 import agent_pb2, common_pb2

log = logging.getLogger("tessera.agent")

MAX_UPDATES_PER_MESSAGE = 500  # a turn with more due updates sends several StatusUpdates messages


def update_messages(updates: list[agent_pb2.StatusUpdate], *, batched: bool,
                    per_message: int = MAX_UPDATES_PER_MESSAGE) -> list[agent_pb2.AgentMessage]:
    """The messages that carry `updates`: with BATCHED_MESSAGES one `status_updates` per `per_message` of
    them (a lone update still goes as `status_update`), else one `status_update` each. The real and the
    emulated agents send their updates this way."""
    if not batched:
        return [agent_pb2.AgentMessage(status_update=update) for update in updates]
    chunks: list[list[agent_pb2.StatusUpdate]] = []
    for update in updates:
        # a task's updates stay in one message (a whole stream is recorded in one entry), past `per_message`
        # when needed: a stream is at most a few updates
        if not chunks or (len(chunks[-1]) >= per_message and not _same_task(chunks[-1][-1], update)):
            chunks.append([])
        chunks[-1].append(update)
    return [agent_pb2.AgentMessage(status_update=chunk[0]) if len(chunk) == 1 else
            agent_pb2.AgentMessage(status_updates=agent_pb2.StatusUpdates(updates=chunk)) for chunk in chunks]


def _same_task(a: agent_pb2.StatusUpdate, b: agent_pb2.StatusUpdate) -> bool:
    return a.status.task_id == b.status.task_id and a.status.framework_id == b.status.framework_id


class UpdatePump(AgentState):
    """The agent's status updates (see the module docstring)."""

    def emit(self, task: AgentTask, outcome: Outcome, source: StatusSource = StatusSource.SOURCE_EXECUTOR) -> bool:
        """Record a new status of `task` (checkpoint first), queue it and send what is due."""
        if not self.tasks.can_record(task.key, outcome.state):
            log.warning("task %s: %s -> %s is not a legal transition; not reported", task.task_id,
                        task.state.name, outcome.state.name)
            return False
        status = make_status(task, outcome, uuid=self.new_uuid(), now=self.wall(), agent_id=self.agent_id,
                             source=source)
        traceparent = self.traceparents.get(task.key, "")
        self.checkpoint.record_update(status, traceparent)
        self.tasks.record(status)
        if is_terminal(outcome.state):
            self._end_run_span(task.key, outcome)
            self.catalog.ended(task.key, self.wall())  # a follow of its output ends once drained
        if task.key in self.orphaned:
            # The master does not know this task any more: keep the history, send nothing.
            self.checkpoint.acknowledge([status.uuid])
            if task.terminal:
                self.orphaned.discard(task.key)
                self._mark_done(task)
            return True
        self.updates.add(PendingUpdate(status, traceparent), self.monotonic())
        self.flush_updates()
        return True

    def _end_run_span(self, key: TaskKey, outcome: Outcome) -> None:
        span = self.run_spans.pop(key, None)
        if span is None:
            return
        try:
            span.set_attribute("tessera.task_state", outcome.state.name)
            if outcome.state is not TaskState.TASK_FINISHED:
                span.set_status(trace.StatusCode.ERROR, outcome.message or outcome.state.name)
            span.end()
        except Exception as exc:  # noqa: BLE001 - tracing never fails the agent
            log.debug("task.run span of %s: %s", key, exc)

    def flush_updates(self) -> None:
        """Send the heads that are due: one `status_updates` message for all of them when the agent
        announced BATCHED_MESSAGES (a lone update still goes as `status_update`), else one message each."""
        if not self.registered or self.stream is None or self.checkpoint.in_batch:
            return  # in a batch: sent after the turn's commit
        batched = self.config.config.batch_messages
        due = [self._update_message(u) for u in self.updates.due(self.monotonic(),
                                                                  whole_streams=batched and self.ordered_streams)]
        for message in update_messages(due, batched=batched):
            self.send(message)

    def _update_message(self, update: PendingUpdate) -> agent_pb2.StatusUpdate:
        status = replace(update.status, agent_id=update.status.agent_id or self.agent_id)
        return agent_pb2.StatusUpdate(status=to_proto(status, common_pb2.TaskStatus), traceparent=update.traceparent)

    def on_ack(self, ack: agent_pb2.StatusUpdateAck) -> None:
        uuid = ack.uuid
        key: TaskKey | None = TaskKey(ack.framework_id, ack.task_id)
        if not ack.framework_id:  # a master of an earlier version: the uuid names the task's stream
            key = self.updates.find(uuid)
        result = self.updates.acknowledge(key, uuid, self.monotonic()) if key is not None else None
        if result is not None and key is not None and result.outcome is AckOutcome.ACKED:
            self.checkpoint.acknowledge(result.removed)
            task = self.tasks.get(key)
            if task is not None and task.terminal and not self.updates.has_pending(key):
                self._mark_done(task)
            self.flush_updates()
        elif result is None or result.outcome is AckOutcome.UNKNOWN:
            log.debug("acknowledgement of unknown update %s of task %s", uuid, ack.task_id)

    def _mark_done(self, task: AgentTask) -> None:
        task.done = True
        self.checkpoint.mark_done(task.key)
