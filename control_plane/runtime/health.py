"""What a master says about its health — per-service gRPC health, HTTP `/health` and `/leader`, the line
systemd shows — decided by pure functions over a `HealthView`, published by `MasterHealth`.

The decisions (pure: no I/O, no clock, no threads):

- `service_statuses(view)`: the standard gRPC health (`grpc.health.v1.Health`) per service. The overall
  status `""` and `tessera.v1.Operator` are SERVING while the process serves (every master answers
  operator reads); `tessera.v1.Scheduler` and `tessera.v1.AgentLink` are SERVING only on the serving
  leader (its `LeaderElected` barrier applied), NOT_SERVING on followers and on a leader whose barrier is
  not applied yet — exactly where `Master.submit` would answer `UNAVAILABLE` with the leader hint. So
  `grpc_health_probe -service tessera.v1.Scheduler` or a load balancer's health check finds the leader.
  Once the process stops, the gRPC server's graceful shutdown sets every service NOT_SERVING.
- `health_response(view)`: `GET /health` on the metrics port: 200 while the master serves (gRPC bound and
  started, state restored), 503 while it starts or stops; JSON with its name, role, term, Raft indexes and
  the leader it knows.
- `leader_response(view)`: `GET /leader`: 200 on the serving leader, 503 on every other master, with the
  same JSON body naming the leader (name, gRPC and Raft address) when this master knows it. No redirect:
  a health checker must see which master answered, and the leader's gRPC address is what clients dial.
- `status_line(view)`: the `STATUS=` line for systemd (`systemctl status`).

The shell, `MasterHealth`, reads a view from the master and pushes what changed to the gRPC health
servicer (a setter the master process gives it) and to systemd. The master tells it of every leadership
change (`Master.add_leadership_observer`: raft gained or lost, barrier applied); the process's main loop
also calls `refresh` every half second, because the leader a follower knows can change without any
change of this master's own leadership.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tessera.v1 import agent_pb2, operator_pb2, scheduler_pb2

if TYPE_CHECKING:
    from tessera.control_plane.runtime.master import Master

log = logging.getLogger(__name__)

__all__ = [
    "AGENT_LINK",
    "LEADER_ONLY_SERVICES",
    "OPERATOR",
    "SCHEDULER",
    "HealthView",
    "LeaderRef",
    "MasterHealth",
    "health_response",
    "leader_response",
    "service_statuses",
    "status_line",
]

OPERATOR = operator_pb2.DESCRIPTOR.services_by_name["Operator"].full_name
SCHEDULER = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name
AGENT_LINK = agent_pb2.DESCRIPTOR.services_by_name["AgentLink"].full_name
LEADER_ONLY_SERVICES = (SCHEDULER, AGENT_LINK)

Phase = Literal["starting", "serving", "stopping"]


@dataclass(frozen=True)
class LeaderRef:
    """The leader as a master knows it. `name` and `grpc_address` are empty until it announced them."""

    raft_address: str
    name: str = ""
    grpc_address: str = ""

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "grpc_address": self.grpc_address, "raft_address": self.raft_address}


@dataclass(frozen=True)
class HealthView:
    """One master at one moment, as the health decisions need it."""

    name: str
    raft_address: str
    phase: Phase
    is_leader: bool  # the serving leader: Raft leader with its LeaderElected barrier applied
    term: int
    commit_index: int
    applied_index: int
    leader: LeaderRef | None  # None while no leader is known


def role(view: HealthView) -> str:
    """`leader` (serving), `elected` (Raft leader, its LeaderElected barrier not applied yet: it does not
    serve frameworks and agents yet) or `follower`."""
    if view.is_leader:
        return "leader"
    if view.leader is not None and view.leader.raft_address == view.raft_address:
        return "elected"
    return "follower"


def service_statuses(view: HealthView) -> dict[str, bool]:
    """Service name ("" for the server as a whole) -> SERVING (True) or NOT_SERVING (False)."""
    serving = view.phase == "serving"
    leads = serving and view.is_leader
    return {"": serving, OPERATOR: serving, **{service: leads for service in LEADER_ONLY_SERVICES}}


def _body(view: HealthView) -> dict[str, Any]:
    return {
        "status": view.phase,
        "name": view.name,
        "role": role(view),
        "is_leader": view.is_leader,
        "term": view.term,
        "commit_index": view.commit_index,
        "applied_index": view.applied_index,
        "leader": view.leader.as_json() if view.leader is not None else None,
    }


def health_response(view: HealthView) -> tuple[int, dict[str, Any]]:
    """`GET /health`: 200 while the master serves, 503 while it starts or stops."""
    return (200 if view.phase == "serving" else 503), _body(view)


def leader_response(view: HealthView) -> tuple[int, dict[str, Any]]:
    """`GET /leader`: 200 on the serving leader, 503 elsewhere; the body names the leader either way."""
    return (200 if view.phase == "serving" and view.is_leader else 503), _body(view)


def status_line(view: HealthView) -> str:
    """systemd's STATUS=: what `systemctl status tessera-master@m1` shows. It changes with the role and
    the leader only (not with every applied index), so it is sent only when something happened."""
    if view.phase != "serving":
        return view.phase
    if view.is_leader:
        return f"leader in term {view.term}"
    if role(view) == "elected":
        return f"elected in term {view.term}, applying the leader barrier"
    if view.leader is None:
        return f"follower, no leader known (term {view.term})"
    who = view.leader.name or view.leader.raft_address
    where = f" at {view.leader.grpc_address}" if view.leader.grpc_address else ""
    return f"follower of {who}{where} (term {view.term})"


class MasterHealth:
    """Reads one master's `HealthView` and publishes what changed (see the module docstring).

    `set_service(name, serving)` sets one service's gRPC health; `status(line)` reports systemd's status
    line (both may be no-ops). `mark_serving()` once the gRPC server is started, `mark_stopping()` when a
    stop begins."""

    def __init__(self, master: Master, *, set_service: Callable[[str, bool], None],
                 status: Callable[[str], object] | None = None) -> None:
        self.master = master
        self._set_service = set_service
        self._status = status
        self._phase: Phase = "starting"
        self._published: dict[str, bool] = {}
        self._lock = threading.Lock()  # refreshes come from the leadership notifier and the main loop

    @property
    def phase(self) -> Phase:
        return self._phase

    def view(self) -> HealthView:
        master = self.master
        if self._phase == "starting":  # Raft may not run yet: nothing to read
            return HealthView(name=master.identity.name, raft_address=master.identity.raft_address, phase="starting", is_leader=False, term=0,
                              commit_index=0, applied_index=0, leader=None)
        is_leader = master.is_serving()
        status = master.replicator.status()
        return HealthView(name=master.identity.name, raft_address=master.identity.raft_address, phase=self._phase, is_leader=is_leader,
                          term=master.replicator.term(), commit_index=status.commit_index,
                          applied_index=status.last_applied, leader=self._leader(is_leader))

    def _leader(self, is_leader: bool) -> LeaderRef | None:
        ident = self.master.identity
        if is_leader:
            return LeaderRef(ident.raft_address, ident.name, ident.grpc_address)
        raft = self.master.replicator.leader()
        if raft is None:
            return None
        if raft == ident.raft_address:  # elected, barrier not applied yet
            return LeaderRef(raft, ident.name, ident.grpc_address)
        known = self.master.read_state(lambda s: s.masters.get(raft))
        if known is not None:
            return LeaderRef(raft, str(known[0]), str(known[1]))
        return LeaderRef(raft, grpc_address=self.master.leader_grpc_hint() or "")

    def refresh(self, *, report_status: bool = True) -> None:
        """Publish the current view: the gRPC statuses that changed, systemd's status line."""
        with self._lock:
            view = self.view()
            for service, serving in service_statuses(view).items():
                if self._published.get(service) != serving:
                    self._set_service(service, serving)
                    self._published[service] = serving
                    log.info("gRPC health of %s: %s", service or "the server",
                             "SERVING" if serving else "NOT_SERVING")
            if report_status and self._status is not None and view.phase == "serving":
                self._status(status_line(view))

    def on_leadership_change(self) -> None:
        """The master's leadership observer: never raises into the master."""
        try:
            self.refresh()
        except Exception:  # noqa: BLE001 - the main loop's next refresh tries again
            log.warning("publishing health after a leadership change failed", exc_info=True)

    def mark_serving(self) -> HealthView:
        """The gRPC server is started and the state restored: publish, and return the view published."""
        with self._lock:
            self._phase = "serving"
        self.refresh(report_status=False)  # the caller reports READY=1 with the status line
        return self.view()

    def mark_stopping(self) -> None:
        with self._lock:
            self._phase = "stopping"
        self.refresh()

    def health(self) -> tuple[int, dict[str, Any]]:
        return health_response(self.view())

    def leader(self) -> tuple[int, dict[str, Any]]:
        return leader_response(self.view())
