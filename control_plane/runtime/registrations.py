"""Agent registration as the AgentLink's `Register` uses it: commit the (re)registration, name the agent.

`register` commits `RegisterAgent` and returns the new agent id. A retried registration (the agent lost
the reply and sent the same request id again) is answered from the recorded result, which names no
agent id: the id comes from `RegisteredAgents`, a bounded memory of request id -> agent id that every
master fills from the applied log (so a new leader knows the registrations its predecessor committed),
and, for a registration applied before this process started, from the event log as far as its writer
has got. Nothing waits for the event log's writer: when neither knows the id yet, the call fails with
`Unavailable` and the agent retries with the same request id. The id is answered only to the
certificate that registered the agent (`core.decide_agents.check_agent_identity`).

`reregister` commits `ReregisterAgent` for a known, not removed agent (a removed or unknown one must
register anew: `NotFound`), decided again when an offer or a launch committed in flight made it stale.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from tessera.control_plane.core import commands as cmd
from tessera.control_plane.core import events as ev
from tessera.control_plane.core.decide_agents import check_agent_identity
from tessera.control_plane.core.errors import InvalidRequest, NotFound, Unavailable
from tessera.control_plane.core.values import AgentInfo, AgentState, TaskStatus

log = logging.getLogger(__name__)

REMEMBERED = 10_000  # registrations whose agent id a retry can still learn from memory


class RegisteredAgents:
    """request id -> agent id of the most recent `REMEMBERED` registrations this master applied (soft:
    rebuilt from whatever the Raft log replays into this process)."""

    def __init__(self, limit: int = REMEMBERED) -> None:
        self.limit = limit
        self._ids: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def on_applied(self, batch: Sequence[Any]) -> None:
        """A `MasterStateMachine` listener: runs on the apply thread, so it only looks at each entry's
        first event."""
        for applied in batch:
            events = applied.entry.events
            if events and type(events[0]) is ev.AgentRegistered and applied.entry.request_id \
                    and applied.result.outcome == "applied":
                self.remember(applied.entry.request_id, events[0].agent_id)

    def remember(self, request_id: str, agent_id: str) -> None:
        with self._lock:
            self._ids[request_id] = agent_id
            while len(self._ids) > self.limit:
                self._ids.popitem(last=False)

    def get(self, request_id: str) -> str | None:
        with self._lock:
            return self._ids.get(request_id)


class Registrations:
    def __init__(self, master: Any, registered: RegisteredAgents | None = None) -> None:
        self.master = master
        if registered is None:
            registered = RegisteredAgents()
            master.sm.add_listener(registered.on_applied)
        self.registered = registered

    def register(self, info: AgentInfo, identity: str, *, request_id: str = "", traceparent: str = "") -> str:
        result = self.master.propose([cmd.RegisterAgent(info=info, identity=identity)], request_id=request_id,
                                     traceparent=traceparent)
        for _, event in result.events:
            if isinstance(event, ev.AgentRegistered):
                log.info("agent %s registered (%s, identity %r)", event.agent_id, event.info.hostname, identity)
                return event.agent_id
        if result.outcome == "duplicate" and result.ok:
            agent_id = self.registered.get(result.request_id or request_id) or self._recorded(result.first_seq)
            if agent_id is None:
                raise Unavailable("this registration is recorded but its agent id is not readable yet; "
                                  "send it again")
            known = self.master.read_state(lambda s: s.agents.get(agent_id))
            if known is None:
                raise NotFound(f"agent {agent_id} is not known; register anew")
            check_agent_identity(known, identity, "registration")
            return agent_id
        raise InvalidRequest("registration produced no agent id")

    def reregister(self, agent_id: str, info: AgentInfo, tasks: tuple[TaskStatus, ...], identity: str, *,
                   request_id: str = "", traceparent: str = "") -> None:
        known = self.master.read_state(lambda s: s.agents.get(agent_id))
        if known is None or known.state is AgentState.AGENT_REMOVED:
            # docs/protocol.md: the agent must then kill its old tasks and register anew
            raise NotFound(f"agent {agent_id} is {'removed' if known else 'not known'}; register anew")
        # decide checks it too; checked here as well because a retried request id is answered from the
        # recorded result without deciding again
        check_agent_identity(known, identity, "reregistration")
        # an offer issued or a task launched on the agent while this was in flight rejects the entry
        self.master.propose_redeciding([cmd.ReregisterAgent(agent_id=agent_id, info=info, tasks=tasks,
                                                            identity=identity)],
                                       request_id=request_id, traceparent=traceparent)
        log.info("agent %s reregistered with %d tasks", agent_id, len(tasks))

    def _recorded(self, seq: int) -> str | None:
        """The agent id the event log recorded at `seq`, if its writer has written it (never waited for)."""
        try:
            record = self.master.events.get(seq)
        except Exception as exc:  # noqa: BLE001 - the log is a fallback; its errors mean "not known yet"
            log.debug("event %d not readable: %s", seq, exc)
            return None
        if record is not None and record.type == "AgentRegistered" and record.agent_id:
            return str(record.agent_id)
        return None
