"""`FakeMaster`: the layers of the fake (state, offers, tasks, faults, protocol) and what a test reads."""

from __future__ import annotations

from tessera.control_plane.core.lifecycle import is_terminal
from tessera.control_plane.core.resources import EMPTY
from tessera.sdk.testing.protocol import _Protocol
from tessera.sdk.testing.state import T, _Agent, _Task
from tessera.sdk.testing.transport import FakeTransport
from tessera.sdk.testing.values import AgentView, FrameworkView, TaskView
from tessera.sdk.types import KvEntry, Offer, TaskState

__all__ = ["FakeMaster"]


class FakeMaster(_Protocol):
    """An in-process Tessera master for unit tests of a framework: no cluster, no processes, no network.

        fake = FakeMaster(behaviour=runs_and_finishes)   # every task runs, then finishes
        fake.add_agent("cpus:2;mem:1024")
        driver = SchedulerDriver(MyScheduler(), FrameworkInfo(name="mine"), fake.addresses,
                                 transport=fake.transport())

    It plays the masters a driver talks to: it hands out offers, answers every Scheduler call, sends
    status updates of the tasks it "runs", and lets the test break things. `transport()` is the
    in-memory transport for either driver; `FakeGrpcServer(fake)` serves the same fake over gRPC.

    What it checks, as the master's `decide` does and with the same error classes: the framework is
    known, not removed and calls on its current stream; offers are outstanding, its own, named once,
    on one agent and for one role; launched tasks carry unused ids (per framework), the offers' agent
    and resources that fit what the offers hold; reservations name the offers' role and resources the
    offers have; an accept applies whole or not at all; a resubscription keeps its principal; a
    request id seen before gets its first answer again. One contract suite,
    `tests/unit/sdk/test_master_contract.py`, runs against the fake and against the real master (in
    process, its gRPC service, a scripted agent): a reused or doubled task id, a task that does not fit,
    an unknown or used offer, another agent's task and killing an unknown task are refused with the same
    error class by both, and both answer TASK_LOST for reconciling an unknown task;
    `tests/unit/sdk/test_against_master.py` runs the SDK's drivers and examples on the real master.

    What it does not do: no replication, log or persistence (`failover()` only moves the lead, the
    state stays); no authentication or ACLs; no DRF, quotas, weights, `max_tasks_in_flight` or `min_offer` (each
    agent's free resources go, whole, to the first eligible framework); offers never expire (only
    `rescind()` takes one back); no agents or processes: tasks go through the states their `behaviour`
    scripts or the test sends with `update()`, a kill ends in TASK_KILLED at once (no grace period),
    agents never time out (`remove_agent()`); `message` is recorded, where the master answers
    UNIMPLEMENTED. A framework that passes here can still meet those on a cluster.

    - `addresses`: the masters it pretends to be (the first leads; `failover()` moves the lead).
    - `auto_offer` (True): offer free resources as soon as they are free; False: `send_offers()`.
    - `behaviour(task)`: the states each launched task goes through; None leaves tasks STAGING until
      `update(task_id, state)`.
    - `auto_kill` (True): `kill` answers TASK_KILLED at once; False only records it.
    - `heartbeat_interval` (0: none): what the fake tells the driver; heartbeats go out on `heartbeat()`.
    - `start_time`: its manual clock (`advance(seconds)`); `batched_acknowledgements`: offer the capability.
    - `takeover_delay` (1.0): fake seconds a framework stays disconnected before a waiting standby takes
      its lease (the fake's clock moves only with `advance`, so a test decides when that happens).

    Faults: `fail_next(CallType, error, after_apply=)`, `drop_stream()`, `failover()`, `set_down()`,
    `remove_framework()`, `remove_agent()`, `rescind()`. Observing: `calls`, `calls_of(CallType)`,
    `acknowledged`, `tasks()`, `task(id)`, `tasks_in(*states)`, `framework()` (with its lease term and
    waiting standbys), `kv()`, `offers()`, `wait_for()`.
    Thread-safe: drivers call it from their threads while the test drives it from its own. The module
    docstring (`help(tessera.sdk.testing)`) has all of it.
    """

    # ---- plumbing -----------------------------------------------------------------------------------------
    def transport(self) -> FakeTransport:
        return FakeTransport(self)

    # ---- views ---------------------------------------------------------------------------------------------
    def agents(self) -> list[AgentView]:
        with self._cond:
            return [self._agent_view(a) for a in self._agents.values()]

    def _agent_view(self, a: _Agent) -> AgentView:
        offered = EMPTY
        for o in self._offers.values():
            if o.agent_id == a.agent_id:
                offered = offered + o.resources
        return AgentView(a.agent_id, a.hostname, a.total, dict(a.attributes), a.used, offered, a.removed)

    def tasks(self, framework_id: str | None = None) -> dict[str, TaskView]:
        """Tasks by task id: of one framework, or of every framework (`ValueError` when two share an id)."""
        with self._cond:
            out: dict[str, TaskView] = {}
            for (fid, tid), t in self._tasks.items():
                if framework_id is not None and fid != framework_id:
                    continue
                if tid in out:
                    raise ValueError(f"task id {tid} is used by frameworks {out[tid].framework_id}, {fid}: "
                                     "pass framework_id")
                out[tid] = self._task_view(t)
            return out

    def task(self, task_id: str, framework_id: str | None = None) -> TaskView:
        with self._cond:
            task = self._find(task_id, framework_id)
            if task is None:
                raise KeyError(task_id)
            return self._task_view(task)

    def tasks_in(self, *states: TaskState) -> list[TaskView]:
        """Tasks whose current state is one of `states`."""
        with self._cond:
            return [self._task_view(t) for t in self._tasks.values() if t.state in states]

    def live_tasks(self) -> list[TaskView]:
        with self._cond:
            return [self._task_view(t) for t in self._tasks.values() if not is_terminal(t.state)]

    @staticmethod
    def _task_view(t: _Task) -> TaskView:
        return TaskView(t.info, t.framework_id, t.info.agent_id, t.state, tuple(t.statuses), t.kill_requested)

    def framework(self, framework_id: str | None = None) -> FrameworkView:
        """A framework's view (the only one when `framework_id` is None)."""
        with self._cond:
            if framework_id is None:
                if len(self._frameworks) != 1:
                    raise LookupError(f"{len(self._frameworks)} frameworks; name one")
                fw = next(iter(self._frameworks.values()))
            else:
                fw = self._frameworks[framework_id]
            return FrameworkView(fw.framework_id, fw.info, fw.stream is not None, fw.stream_id,
                                 frozenset(fw.suppressed), dict(fw.refused), fw.removed,
                                 tuple(fw.unacked.values()), fw.subscriptions, fw.lease_term,
                                 sum(1 for w in self._standbys if w.stream.framework_id == fw.framework_id))

    def kv(self, framework_id: str | None = None) -> dict[str, KvEntry]:
        """A framework's key/value state (the only framework's when `framework_id` is None), by key."""
        with self._cond:
            fid = self.framework(framework_id).framework_id
            return {k: KvEntry(k, value, version) for k, (version, value) in sorted(self._frameworks[fid].kv.items())}

    def frameworks(self) -> list[str]:
        with self._cond:
            return list(self._frameworks)

    def offers(self) -> list[Offer]:
        """Outstanding offers."""
        with self._cond:
            return list(self._offers.values())

    def calls_of(self, kind: type[T]) -> list[T]:
        """Every call attempt of one type (`AcceptCall`, `DeclineCall`...), retries included."""
        with self._cond:
            return [c for _, _, c in self.calls if isinstance(c, kind)]
