"""The Scheduler protocol as a `FakeMaster` answers it (docs/protocol.md), following the master's rules
(`tessera.control_plane.core.decide`) with the master's error classes: a stale or foreign offer is a
Conflict, an unknown id NotFound, a malformed call InvalidRequest, a stale stream id Conflict; an accept
applies whole or not at all; a request id seen before gets the first answer without applying again;
calls to a master that does not lead are NotLeader with the leader's address, to one that is down
Unavailable. tests/unit/sdk/test_master_contract.py holds these answers to the real master's."""

from __future__ import annotations

from dataclasses import replace

from tessera.control_plane.core.lifecycle import is_terminal
from tessera.control_plane.core.resources import EMPTY
from tessera.sdk.errors import Conflict, InvalidRequest, NotFound, NotLeader, TesseraError, Unavailable
from tessera.sdk.protocol import (
    BATCHED_ACKNOWLEDGEMENTS,
    AcceptCall,
    AcknowledgeCall,
    AcknowledgeManyCall,
    Call,
    CallHeader,
    CallResult,
    DeclineCall,
    KillCall,
    MessageCall,
    ReconcileCall,
    ReviveCall,
    SubscribedEvent,
    SuppressCall,
    TeardownCall,
    UpdateEvent,
)
from tessera.sdk.testing.faults import _FaultControls
from tessera.sdk.testing.state import DEFAULT_REFUSE_SECONDS, _Framework, _Task
from tessera.sdk.testing.transport import FakeStream
from tessera.sdk.types import FrameworkInfo, Launch, Offer, Reserve, TaskInfo, TaskState, TaskStatus


class _Protocol(_FaultControls):
    """Subscriptions and calls (a layer of `FakeMaster`; the transports call `_subscribe` and `_handle`)."""

    # ---- the protocol: subscribe -------------------------------------------------------------------------
    def _check_address(self, address: str) -> TesseraError | None:
        if address in self._down or address not in self.addresses:
            return Unavailable(f"{address}: connection refused")
        if address != self.leader:
            return NotLeader(f"{address} is not the leader", self.leader)
        return None

    def _subscribe(self, address: str, info: FrameworkInfo) -> FakeStream:
        with self._cond:
            self.subscribe_requests.append((address, info))
            stream = FakeStream(self, address)
            try:
                error = self._check_address(address)
                if error is not None:
                    raise error
                fw = self._framework_to_subscribe(info)
            except TesseraError as exc:
                stream.end(exc)
                self._changed()
                return stream
            if fw.stream is not None:
                old, fw.stream = fw.stream, None
                old.end(None)  # a newer connection of the same framework takes over
            self._retire_offers_of(fw.framework_id, "framework resubscribed")
            fw.info = replace(info, framework_id=fw.framework_id)
            fw.stream_id = self._new_id("stream")
            fw.stream = stream
            fw.subscriptions += 1
            stream.framework_id = fw.framework_id
            stream.push(SubscribedEvent(fw.framework_id, fw.stream_id, self.heartbeat_interval, address,
                                        (BATCHED_ACKNOWLEDGEMENTS,) if self.batched_acknowledgements else ()))
            for status in fw.unacked.values():
                stream.push(UpdateEvent(status))
            self._allocate_if_auto()
            self._changed()
            return stream

    def _framework_to_subscribe(self, info: FrameworkInfo) -> _Framework:
        if not info.name or not info.roles:
            raise InvalidRequest("info: a framework needs a name and at least one role")
        if not info.framework_id:
            fw = _Framework(self._new_id("framework"), info)
            self._frameworks[fw.framework_id] = fw
            return fw
        fw_or_none = self._frameworks.get(info.framework_id)
        if fw_or_none is None:
            raise NotFound(f"framework {info.framework_id} is not known")
        if fw_or_none.removed is not None:
            raise Conflict(f"framework {info.framework_id} was removed ({fw_or_none.removed}); subscribe anew")
        if info.principal != fw_or_none.info.principal:
            raise Conflict(f"framework {info.framework_id} subscribed as principal {fw_or_none.info.principal!r}")
        return fw_or_none

    def _stream_closed_by_client(self, stream: FakeStream) -> None:
        with self._cond:
            if stream.framework_id is None:
                return
            fw = self._frameworks.get(stream.framework_id)
            if fw is not None and fw.stream is stream:
                fw.stream = None
                self._retire_offers_of(fw.framework_id, "framework disconnected")
            self._changed()

    # ---- the protocol: calls -------------------------------------------------------------------------------
    def _handle(self, address: str, header: CallHeader, call: Call) -> CallResult:
        with self._cond:
            self.calls.append((address, header, call))
            self._changed()
            error = self._check_address(address)
            if error is not None:
                raise error
            fault = next((f for f in self._faults if isinstance(call, f.kind)), None)
            if fault is not None:
                self._faults.remove(fault)
                if not fault.after_apply:
                    raise fault.error
            if header.request_id and header.request_id in self._requests:
                result = self._requests[header.request_id]  # a retry: answer, apply nothing
            else:
                result = self._apply(header, call)
                if header.request_id:
                    self._requests[header.request_id] = result
            self._changed()
            if fault is not None:
                raise fault.error
            return result

    def _framework_call(self, header: CallHeader) -> _Framework:
        fw = self._frameworks.get(header.framework_id)
        if fw is None:
            raise NotFound(f"framework {header.framework_id!r} is not known")
        if fw.removed is not None:
            raise Conflict(f"framework {fw.framework_id} was removed ({fw.removed})")
        if header.stream_id and header.stream_id != fw.stream_id:
            raise Conflict(f"stream {header.stream_id} is not the current stream of framework {fw.framework_id}")
        return fw

    def _roles(self, fw: _Framework, roles: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [r for r in roles if r not in fw.info.roles]
        if unknown:
            raise InvalidRequest(f"roles: framework {fw.framework_id} is not subscribed to {', '.join(unknown)}")
        return roles or fw.info.roles

    def _live_offer(self, fw: _Framework, offer_id: str) -> Offer:
        offer = self._offers.get(offer_id)
        if offer is None:
            if offer_id in self._retired:
                raise Conflict(f"offer {offer_id} is no longer valid: {self._retired[offer_id]}")
            raise NotFound(f"offer {offer_id} is not known")
        if offer.framework_id != fw.framework_id:
            raise Conflict(f"offer {offer_id} was made to another framework")
        return offer

    def _offers_of_call(self, fw: _Framework, offer_ids: tuple[str, ...]) -> list[Offer]:
        if not offer_ids:
            raise InvalidRequest("offer_ids: give at least one offer id")
        if len(set(offer_ids)) != len(offer_ids):
            raise InvalidRequest("offer_ids: an offer is named twice")
        return [self._live_offer(fw, oid) for oid in offer_ids]

    def _apply(self, header: CallHeader, call: Call) -> CallResult:
        fw = self._framework_call(header)
        if isinstance(call, AcceptCall):
            self._accept(fw, call)
        elif isinstance(call, DeclineCall):
            offers = self._offers_of_call(fw, call.offer_ids)
            seconds = call.filters.refuse_seconds if call.filters is not None else DEFAULT_REFUSE_SECONDS
            for offer in offers:
                self._retire(offer.offer_id, "declined")
                fw.refused[offer.agent_id] = self._now + seconds
            self._allocate_if_auto()
        elif isinstance(call, ReviveCall):
            fw.suppressed -= set(self._roles(fw, call.roles))
            fw.refused.clear()
            self._allocate_if_auto()
        elif isinstance(call, SuppressCall):
            fw.suppressed |= set(self._roles(fw, call.roles))
        elif isinstance(call, KillCall):
            self._kill(fw, call)
        elif isinstance(call, AcknowledgeCall):
            self._acknowledge(fw, call)
        elif isinstance(call, AcknowledgeManyCall):
            if not self.batched_acknowledgements:
                raise InvalidRequest("task_id: must not be empty")  # what a master without the capability says
            for ack in call.acks:
                try:
                    self._acknowledge(fw, ack)
                except NotFound:
                    pass  # refused alone, as the master does; the others still count
        elif isinstance(call, ReconcileCall):
            return self._reconcile(fw, call)
        elif isinstance(call, TeardownCall):
            self._remove(fw, "teardown requested by the framework")
            if fw.stream is not None:
                stream, fw.stream = fw.stream, None
                stream.end(None)
        elif isinstance(call, MessageCall):
            agent = self._agents.get(call.agent_id)
            if agent is None:
                raise NotFound(f"agent {call.agent_id} is not known")
            self.messages.append((fw.framework_id, call.agent_id, call.data))
        return ()

    def _accept(self, fw: _Framework, call: AcceptCall) -> None:
        if fw.stream is None:
            raise Conflict(f"framework {fw.framework_id} is not connected")
        offers = self._offers_of_call(fw, call.offer_ids)
        if len({o.agent_id for o in offers}) != 1:
            raise InvalidRequest("offer_ids: the offers of one accept must be on one agent")
        if len({o.role for o in offers}) != 1:
            raise InvalidRequest("offer_ids: the offers of one accept must be for one role")
        agent = self._agents[offers[0].agent_id]
        role = offers[0].role
        pool = EMPTY
        for offer in offers:
            pool = pool + offer.resources
        total = agent.total
        launched: list[TaskInfo] = []
        # Validate everything first: an accept applies whole or not at all.
        for n, op in enumerate(call.operations):
            if isinstance(op, Launch):
                for task in op.tasks:
                    tid = task.task_id
                    if task.agent_id not in ("", agent.agent_id):
                        raise InvalidRequest(f"task {tid}: agent_id {task.agent_id} is not the offers' agent")
                    task.check_health_check()  # a port it holds or maps, as the master checks
                    if (fw.framework_id, tid) in self._tasks or any(t.task_id == tid for t in launched):
                        raise Conflict(f"task id {tid} is already used by this framework")
                    if not pool.contains(task.resources):
                        raise Conflict(f"task {tid} needs {task.resources}; its offers have {pool} left")
                    pool = pool - task.resources
                    launched.append(task.on_agent(agent.agent_id))
            else:
                res = op.resources
                if res.roles() != {role}:
                    raise InvalidRequest(f"operations[{n}].resources: must all be reserved to the role {role}")
                flat = res.flatten()
                if isinstance(op, Reserve):
                    if not pool.contains(flat):
                        raise Conflict(f"operations[{n}]: {flat} is not unreserved in the offers")
                    pool, total = pool - flat + res, total - flat + res
                else:
                    if not pool.contains(res):
                        raise Conflict(f"operations[{n}]: {res} is not in the offers")
                    pool, total = pool - res + flat, total - res + flat
        for offer in offers:
            self._retire(offer.offer_id, "used")
        agent.total = total
        if call.filters is not None:
            fw.refused[agent.agent_id] = self._now + call.filters.refuse_seconds
        records = []
        for info in launched:
            record = _Task(info, fw.framework_id)
            record.statuses.append(TaskStatus(task_id=info.task_id, state=TaskState.TASK_STAGING,
                                              agent_id=agent.agent_id, framework_id=fw.framework_id,
                                              timestamp=self._now))
            self._tasks[(fw.framework_id, info.task_id)] = record
            agent.used = agent.used + info.resources
            records.append(record)
        for record in records:
            self._run_behaviour(record)
        self._allocate_if_auto()

    def _kill(self, fw: _Framework, call: KillCall) -> None:
        task = self._tasks.get((fw.framework_id, call.task_id))
        if task is None:
            raise NotFound(f"framework {fw.framework_id} has no task {call.task_id}")
        if is_terminal(task.state):
            return
        task.kill_requested = True
        if self.auto_kill:
            self._update(task, TaskState.TASK_KILLED, message="task killed (signal SIGTERM)", exit_code=143)

    def _acknowledge(self, fw: _Framework, call: AcknowledgeCall) -> None:
        task = self._tasks.get((fw.framework_id, call.task_id))
        if task is None:
            raise NotFound(f"framework {fw.framework_id} has no task {call.task_id}")
        if call.uuid in fw.unacked:
            del fw.unacked[call.uuid]
            self.acknowledged.append(call.uuid)
        elif call.uuid not in self.acknowledged:
            raise NotFound(f"task {call.task_id} has no status update {call.uuid}")

    def _reconcile(self, fw: _Framework, call: ReconcileCall) -> CallResult:
        ids = call.task_ids or tuple(tid for fid, tid in self._tasks if fid == fw.framework_id)
        out = []
        for tid in ids:
            task = self._tasks.get((fw.framework_id, tid))
            if task is None:
                out.append(TaskStatus(task_id=tid, state=TaskState.TASK_LOST, reason="REASON_RECONCILIATION",
                                      message="the master does not know this task",
                                      framework_id=fw.framework_id))
            else:
                out.append(task.statuses[-1])
        return tuple(out)
