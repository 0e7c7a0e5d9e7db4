"""The Scheduler protocol as a `FakeMaster` answers it (docs/protocol.md), following the master's rules
(`tessera.control_plane.core.decide`) with the master's error classes: a stale or foreign offer is a
Conflict, an unknown id NotFound, a malformed call InvalidRequest, a stale stream id Conflict; an accept
applies whole or not at all; a request id seen before gets the first answer without applying again;
calls to a master that does not lead are NotLeader with the leader's address, to one that is down
Unavailable. The framework lease follows the master's table (`core.leases.OUTCOMES`: standbys wait,
take over after `takeover_delay` fake seconds of disconnection, holders resume, deposed ones are refused
with `Deposed`), and the key/value state the master's rules and limits (`core.limits`: VersionConflict,
InvalidRequest naming the limit). tests/unit/sdk/test_master_contract.py holds these answers to the real
master's."""

from __future__ import annotations

from tessera.control_plane.core.framework_state import DEFAULT_PAGE, MAX_PAGE, MAX_PAGE_BYTES
from tessera.control_plane.core.lifecycle import is_terminal
from tessera.control_plane.core.limits import (
    MAX_STATE_WRITES,
    check_state_key,
    check_state_totals,
    check_state_value,
    check_state_write_size,
    utf8_length,
)
from tessera.control_plane.core.resources import EMPTY
from tessera.sdk.errors import (
    Conflict,
    Deposed,
    InvalidRequest,
    NotFound,
    NotLeader,
    TesseraError,
    Unavailable,
    VersionConflict,
)
from tessera.sdk.protocol import (
    NO_CLAIM,
    AcceptCall,
    AcknowledgeCall,
    AcknowledgeManyCall,
    Call,
    CallHeader,
    CallResult,
    DeclineCall,
    GetValueCall,
    KillCall,
    KvPage,
    LeaseClaim,
    ListValuesCall,
    MessageCall,
    ReconcileCall,
    ReviveCall,
    StandbyEvent,
    SuppressCall,
    TeardownCall,
    WriteValuesCall,
)
from tessera.sdk.testing.faults import _FaultControls
from tessera.sdk.testing.leases import _Wait
from tessera.sdk.testing.state import DEFAULT_REFUSE_SECONDS, _Framework, _Standby, _Task
from tessera.sdk.testing.transport import FakeStream
from tessera.sdk.types import (
    FrameworkInfo,
    KvDelete,
    KvEntry,
    Launch,
    Offer,
    Reserve,
    TaskInfo,
    TaskState,
    TaskStatus,
)


class _Protocol(_FaultControls):
    """Subscriptions and calls (a layer of `FakeMaster`; the transports call `_subscribe` and `_handle`)."""

    # ---- the protocol: subscribe -------------------------------------------------------------------------
    def _check_address(self, address: str) -> TesseraError | None:
        if address in self._down or address not in self.addresses:
            return Unavailable(f"{address}: connection refused")
        if address != self.leader:
            return NotLeader(f"{address} is not the leader", self.leader)
        return None

    def _subscribe(self, address: str, info: FrameworkInfo, lease: LeaseClaim = NO_CLAIM) -> FakeStream:
        with self._cond:
            self.subscribe_requests.append((address, info))
            stream = FakeStream(self, address)
            try:
                error = self._check_address(address)
                if error is not None:
                    raise error
                if not info.name or not info.roles:
                    raise InvalidRequest("info: a framework needs a name and at least one role")
                granted = self._claim(info, lease.standby, lease.term)
            except TesseraError as exc:
                stream.end(exc)
                self._changed()
                return stream
            if isinstance(granted, _Wait):
                stream.framework_id = granted.framework.framework_id
                self._standbys.append(_Standby(stream, info, address, granted.framework.lease_term))
                stream.push(StandbyEvent(granted.framework.framework_id, granted.framework.lease_term,
                                         self.heartbeat_interval, address))
            else:
                self._activate(granted, info, stream, address)
            self._changed()
            return stream

    def _stream_closed_by_client(self, stream: FakeStream) -> None:
        with self._cond:
            if stream.framework_id is None:
                return
            self._standbys = [w for w in self._standbys if w.stream is not stream]
            fw = self._frameworks.get(stream.framework_id)
            if fw is not None and fw.stream is stream:
                fw.stream = None
                self._disconnected(fw)
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
            raise Deposed(f"stream {header.stream_id} is not the current stream of framework {fw.framework_id}: it "
                          f"no longer holds the framework, whose lease is at term {fw.lease_term}",
                          lease_term=fw.lease_term)
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
            self._promote_standbys()
        elif isinstance(call, GetValueCall):
            held = fw.kv.get(call.key)
            return () if held is None else (KvEntry(call.key, held[1], held[0]),)
        elif isinstance(call, ListValuesCall):
            return self._list_values(fw, call)
        elif isinstance(call, WriteValuesCall):
            return self._write_values(fw, header, call)
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

    # ---- the framework's key/value state (core.framework_state, core.limits) --------------------------------
    def _list_values(self, fw: _Framework, call: ListValuesCall) -> KvPage:
        if not 0 <= call.limit <= MAX_PAGE:
            raise InvalidRequest(f"limit: 0 (= {DEFAULT_PAGE}) to {MAX_PAGE}, got {call.limit!r}")
        limit = call.limit or DEFAULT_PAGE
        keys = sorted(k for k in fw.kv if k.startswith(call.prefix) and k > call.start_after)
        page: list[KvEntry] = []
        size = 0
        for key in keys:
            if len(page) >= limit or (page and size >= MAX_PAGE_BYTES):
                return KvPage(tuple(page), more=True)
            version, value = fw.kv[key]
            page.append(KvEntry(key, "" if call.keys_only else value, version))
            size += utf8_length(key) + utf8_length(value)
        return KvPage(tuple(page), more=False)

    def _write_values(self, fw: _Framework, header: CallHeader, call: WriteValuesCall) -> tuple[int, ...]:
        if not header.stream_id:
            raise InvalidRequest("stream_id: a framework's state is written by the instance holding its lease; "
                                 "give that instance's stream id")
        if not call.writes:
            raise InvalidRequest("writes: give at least one write")
        if len(call.writes) > MAX_STATE_WRITES:
            check_state_write_size(len(call.writes), 0)
        keys = len(fw.kv)
        size = sum(utf8_length(k) + utf8_length(v) for k, (_, v) in fw.kv.items())
        length = 0
        seen: set[str] = set()
        for n, write in enumerate(call.writes):
            key = check_state_key(write.key, f"writes[{n}].key")
            if key in seen:
                raise InvalidRequest(f"writes[{n}].key: {key!r} is written twice in one call")
            seen.add(key)
            held = fw.kv.get(key)
            old_size = 0 if held is None else utf8_length(key) + utf8_length(held[1])
            entry_size = utf8_length(key) + (0 if isinstance(write, KvDelete)
                                             else check_state_value(write.value, f"writes[{n}].value"))
            current = 0 if held is None else held[0]
            if write.version is not None and write.version != current:
                now = "absent" if current == 0 else f"at version {current}"
                wanted = "absent" if write.version == 0 else f"version {write.version}"
                raise VersionConflict(f"key {key!r} is {now}, not {wanted} as the write expected", key=key,
                                      current_version=current)
            length += entry_size
            if isinstance(write, KvDelete):
                keys, size = keys - (held is not None), size - old_size
            else:
                keys, size = keys + (held is None), size + entry_size - old_size
        check_state_write_size(len(call.writes), length)
        check_state_totals(fw.framework_id, keys, size)
        versions: list[int] = []
        for write in call.writes:
            version = next(self._versions)
            if isinstance(write, KvDelete):
                fw.kv.pop(write.key, None)
                versions.append(0)
            else:
                fw.kv[write.key] = (version, write.value)
                versions.append(version)
        return tuple(versions)

