"""Agents and tasks of a `FakeMaster`: agents come and go (a removed agent's live tasks become
TASK_LOST); a launched task starts in TASK_STAGING and goes through its `behaviour`; `update()` injects
a status update as an agent would. Every update gets a uuid, is pushed to a connected framework and stays
unacknowledged until the framework acknowledges it; a terminal update frees the task's resources."""

from __future__ import annotations

from collections.abc import Mapping

from tessera.control_plane.core.lifecycle import is_terminal
from tessera.sdk.errors import Conflict, NotFound
from tessera.sdk.protocol import UpdateEvent
from tessera.sdk.testing.offers import _OfferBook
from tessera.sdk.testing.state import _Agent, _Task
from tessera.sdk.testing.values import StatusStep
from tessera.sdk.types import Resources, TaskState, TaskStatus


class _TaskBook(_OfferBook):
    """Agents, tasks and their status updates (a layer of `FakeMaster`)."""

    # ---- agents -------------------------------------------------------------------------------------------
    def add_agent(self, resources: Resources | str, *, hostname: str | None = None,
                  attributes: Mapping[str, str] | None = None) -> str:
        """Register an agent; returns its id. `resources` as `Resources` or 'cpus:4;mem:4096'."""
        total = Resources.parse(resources) if isinstance(resources, str) else resources
        with self._cond:
            agent_id = self._new_id("agent")
            self._agents[agent_id] = _Agent(agent_id, hostname or f"host-{agent_id}", total,
                                            dict(attributes or {}))
            self._allocate_if_auto()
            self._changed()
            return agent_id

    def remove_agent(self, agent_id: str) -> None:
        """The agent is gone: its offers are rescinded and its live tasks become TASK_LOST."""
        with self._cond:
            agent = self._agents[agent_id]
            agent.removed = True
            for offer in [o for o in self._offers.values() if o.agent_id == agent_id]:
                self._rescind(offer.offer_id, "agent removed")
            for task in self._tasks.values():
                if task.info.agent_id == agent_id and not is_terminal(task.state):
                    self._update(task, TaskState.TASK_LOST, reason="REASON_AGENT_REMOVED",
                                 message=f"agent {agent_id} was removed")
            self._changed()
    # ---- tasks -----------------------------------------------------------------------------------------------
    def _find(self, task_id: str, framework_id: str | None) -> _Task | None:
        """The task `task_id` of `framework_id`, or of the only framework with such a task when None."""
        if framework_id is not None:
            return self._tasks.get((framework_id, task_id))
        found = [t for (_, tid), t in sorted(self._tasks.items()) if tid == task_id]
        if len(found) > 1:
            raise ValueError(f"task id {task_id} is used by frameworks "
                             f"{', '.join(t.framework_id for t in found)}: pass framework_id")
        return found[0] if found else None

    def update(self, task_id: str, state: TaskState, *, message: str = "", reason: str = "",
               exit_code: int | None = None, framework_id: str | None = None,
               healthy: bool | None = None) -> TaskStatus:
        """Report a status update of a task, as its agent would (`healthy`: a health-check update, e.g.
        TASK_RUNNING with reason REASON_TASK_HEALTH_CHECK_STATUS_UPDATED)."""
        with self._cond:
            task = self._find(task_id, framework_id)
            if task is None:
                raise NotFound(f"task {task_id} is not known")
            if is_terminal(task.state):
                raise Conflict(f"task {task_id} is already {task.state.name}")
            status = self._update(task, state, message=message, reason=reason, exit_code=exit_code,
                                  healthy=healthy)
            self._changed()
            return status

    def _update(self, task: _Task, state: TaskState, *, message: str = "", reason: str = "",
                exit_code: int | None = None, healthy: bool | None = None) -> TaskStatus:
        status = TaskStatus(task_id=task.info.task_id, state=state, message=message, reason=reason,
                            exit_code=exit_code, agent_id=task.info.agent_id, uuid=self._new_id("uuid"),
                            timestamp=self._now, framework_id=task.framework_id, healthy=healthy)
        was_live = not is_terminal(task.state)
        task.state = state
        task.statuses.append(status)
        if was_live and is_terminal(state):
            agent = self._agents.get(task.info.agent_id)
            if agent is not None and not agent.removed:
                agent.used = agent.used - task.info.resources
        fw = self._frameworks[task.framework_id]
        if fw.removed is None:
            fw.unacked[status.uuid] = status
            if fw.stream is not None:
                fw.stream.push(UpdateEvent(status))
        if is_terminal(state):
            self._allocate_if_auto()
        return status

    def _run_behaviour(self, task: _Task) -> None:
        if self.behaviour is None:
            return
        for step in self.behaviour(task.info):
            if is_terminal(task.state):
                break
            s = step if isinstance(step, StatusStep) else StatusStep(step)
            self._update(task, s.state, message=s.message, reason=s.reason, exit_code=s.exit_code, healthy=s.healthy)
