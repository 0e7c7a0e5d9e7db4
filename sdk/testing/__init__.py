"""Test a scheduler without a cluster: `FakeMaster`, an in-memory master that speaks the Scheduler protocol.

    from tessera.sdk import FrameworkInfo, Resources, SchedulerDriver, TaskState
    from tessera.sdk.testing import FakeMaster, runs_and_finishes

    def test_my_scheduler_runs_its_task():
        fake = FakeMaster(behaviour=runs_and_finishes)
        fake.add_agent("cpus:2;mem:1024", attributes={"rack": "r1"})
        driver = SchedulerDriver(MyScheduler(), FrameworkInfo(name="mine"), fake.addresses,
                                 transport=fake.transport())
        with driver:
            fake.wait_for(lambda: fake.tasks_in(TaskState.TASK_FINISHED), what="a finished task")
        assert fake.acknowledged          # updates were acknowledged

(`tests/unit/sdk/test_fake_master.py` runs a complete example of this kind.)

What it does, following docs/protocol.md and the master's validation rules (`tessera.control_plane.core.decide`;
`tests/unit/sdk/test_master_contract.py` runs the same refusal cases against the fake and a real master):

- Agents: `add_agent(resources, hostname=, attributes=)`, `remove_agent` (its tasks become TASK_LOST).
- Offers: with `auto_offer=True` (default) every change that frees resources or revives a framework
  immediately offers each agent's free resources, whole, to the first subscribed framework that is not
  suppressed for one of its roles and has not declined that agent within the refuse time; one offer per
  agent at a time. With `auto_offer=False`, offers go out when the test calls `send_offers()` (or
  `send_offers([agent_id])` for some agents only).
- Calls: accept (LAUNCH, RESERVE, UNRESERVE), decline with filters, revive, suppress, kill, acknowledge,
  reconcile (explicit and implicit; unknown tasks are TASK_LOST), teardown, message (recorded in
  `messages`; today's master answers UNIMPLEMENTED, command tasks having no executor), with the master's
  error classes (stale offer -> Conflict, unknown id -> NotFound, malformed -> InvalidRequest, stale
  stream id -> Conflict). A request id seen before returns the first answer without applying again.
- Tasks: launched tasks start in TASK_STAGING; `behaviour(task)` (if given) scripts the states each
  task goes through as soon as it is launched; `update(task_id, state, ...)` injects any status
  update later. Task ids are scoped per framework, as on the real master: two frameworks may each
  launch a `web-1`; `update`, `task` and `tasks` then take `framework_id=` (a bare id that several
  frameworks use is refused with `ValueError` naming them). Updates carry uuids and stay unacknowledged until the framework acknowledges them; they
  are sent again when it re-subscribes, as the real master does. `kill` answers TASK_KILLED at once
  (`auto_kill=False` to only record the request).
- The framework's key/value state (`driver.kv`): get, list, atomic writes with compare-and-set on
  versions, the master's limits (`core.limits`), `Deposed` for a stale stream; `kv(framework_id)` reads it.
- The framework lease: several drivers of one framework (`standby=True`) — one active, the others get
  `StandbyEvent` and wait; when the active one's stream ends, a standby takes over once `advance()` has
  moved the clock past `takeover_delay` (1 fake second by default); the lease term grows and the
  deposed stream gets an `ErrorEvent` carrying it.
- Faults: `drop_stream()` breaks a framework's connection (its offers are void; it keeps its tasks),
  `failover(new_leader)` moves leadership to another of `addresses` (streams end with NotLeader and the
  new leader's hint; calls to the old one are redirected), `set_down(address)` makes a master
  unreachable, `remove_framework` sends an Error event, `fail_next(CallType, error, after_apply=)`
  makes the next such call fail (before or after it took effect, to test idempotent retries).
- Time is a manual clock: `advance(seconds)` ages decline filters (and re-offers what expired).
  Heartbeats are sent only by `heartbeat()`; with `heartbeat_interval=0` (default) the driver does not
  watch for silence.
- Observing: `calls` (every call attempt with its header), `subscribe_requests`, `acknowledged`,
  `tasks()`, `task(id)`, `framework()`, `agents()`, `offers()`, and `wait_for(predicate)`, which waits
  (bounded) on the fake's own change notifications instead of sleeping.

`FakeGrpcServer(fake)` serves the same fake over real gRPC on 127.0.0.1 for tests of the gRPC transport
and the command line (one server per master address; the fake decides which one leads).

The fake is thread-safe: drivers call it from their threads while the test drives it from its own.

Inside (import from `tessera.sdk.testing`, not from these): `values` (what a test scripts and reads),
`state` (the records, the clock, the lock), then `FakeMaster`'s layers, each a class on the one below:
`offers` (the offer book), `tasks` (agents, tasks, status updates), `leases` (the framework lease and its
standbys), `faults` (streams, leadership, fault injection), `protocol` (subscriptions and calls, with the
master's refusals, and the key/value state), `master` (`FakeMaster`
itself and its views); `transport` (the in-memory transport) and `grpc_server` (`FakeGrpcServer`).
"""

from tessera.sdk.testing.grpc_server import FakeGrpcServer
from tessera.sdk.testing.master import FakeMaster
from tessera.sdk.testing.transport import FakeStream, FakeTransport
from tessera.sdk.testing.values import (
    AgentView,
    Behaviour,
    FrameworkView,
    StatusStep,
    TaskView,
    runs_and_finishes,
)

__all__ = [
    "AgentView",
    "Behaviour",
    "FakeGrpcServer",
    "FakeMaster",
    "FakeStream",
    "FakeTransport",
    "FrameworkView",
    "StatusStep",
    "TaskView",
    "runs_and_finishes",
]
