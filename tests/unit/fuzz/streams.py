"""Hostile input on the master's two streams, `AgentLink.Connect` and `Scheduler.Subscribe`, and the
checks each case must pass. Used by `test_fuzz_streams.py` (small) and `python -m tests.unit.fuzz.run`.

Three kinds of case:
- a Connect stream whose first message is hostile: a non-Register message, or a Register with bad
  info, bad resources, an unknown agent id or hostile task reports. Refused: a proper code and the state
  unchanged. Accepted: the stream answers `Registered` first.
- hostile messages on an agent stream that is already registered (the wrong order, other agents' ids,
  unknown tasks, oversized data, NaN times): the agent runs no task, so every status update must be
  refused and acknowledged (so a real agent would stop re-sending), the stream stays up and the state is
  unchanged.
- a Subscribe with hostile framework info (bad names, roles, timeouts, unknown or removed framework ids):
  refused with a proper code and the state unchanged, or answered with `Subscribed` first; an accepted
  framework is torn down again so nothing it started is left to change the state later.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from hypothesis import strategies as st

from tessera.v1 import agent_pb2, common_pb2, scheduler_pb2
from tests.support.scripted import ScriptedAgent
from tests.unit.fuzz.requests import ALLOWED, numbers, resources, texts

Fingerprint = Callable[[], str]

states = st.one_of(st.sampled_from(list(common_pb2.TaskState.values())), st.integers(-5, 2**31 - 1))
blobs = st.one_of(st.just(b""), st.binary(max_size=64), st.just(b"x" * 5000), st.just(b"y" * 200_000))


_SANE_RESOURCES = [
    [common_pb2.Resource(name="cpus", scalar=2.0), common_pb2.Resource(name="mem", scalar=1024.0)],
    [common_pb2.Resource(name="cpus", scalar=0.5), common_pb2.Resource(name="ports", ranges=[
        common_pb2.Range(begin=31000, end=31010)])],
    [common_pb2.Resource(name="cpus", scalar=1e12)],
    [common_pb2.Resource(name="cpus", scalar=1.0), common_pb2.Resource(name="cpus", scalar=1.0)],
    [],
]


def task_statuses(agent_ids: Sequence[str]) -> st.SearchStrategy[common_pb2.TaskStatus]:
    def build(task_id: str, state: int, agent_id: str, uuid: str, when: float, exit_code: int | None,
              framework_id: str, data: bytes, reason: str) -> common_pb2.TaskStatus:
        status = common_pb2.TaskStatus(task_id=task_id, state=state, agent_id=agent_id, uuid=uuid,
                                       timestamp=when, framework_id=framework_id, data=data, reason=reason,
                                       source=common_pb2.SOURCE_AGENT)
        if exit_code is not None:
            status.exit_code = exit_code
        return status

    return st.builds(build, texts, states, st.one_of(texts, st.sampled_from(list(agent_ids) or [""])), texts,
                     numbers, st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)), texts, blobs, texts)


def agent_infos() -> st.SearchStrategy[common_pb2.AgentInfo]:
    return st.builds(lambda host, res, attrs, iso: common_pb2.AgentInfo(
        hostname=host, resources=res, attributes=[common_pb2.Label(key=k, value=v) for k, v in attrs],
        isolator=iso), texts, resources, st.lists(st.tuples(texts, texts), max_size=3), texts)


def first_messages(agent_ids: Sequence[str]) -> st.SearchStrategy[agent_pb2.AgentMessage]:
    """The first message of a Connect stream; a fuzzed Register never names a live agent's id, so an
    accepted one adds an agent or re-registers one registered by an earlier case."""
    ids = st.one_of(st.just(""), texts, st.sampled_from(list(agent_ids) or [""]))
    return st.one_of(
        st.builds(lambda aid, info, tasks, rid: agent_pb2.AgentMessage(register=agent_pb2.Register(
            agent_id=aid, info=info, tasks=tasks, request_id=rid)),
            ids, agent_infos(), st.lists(task_statuses(agent_ids), max_size=3), texts),
        st.builds(lambda aid, t: agent_pb2.AgentMessage(heartbeat=agent_pb2.AgentHeartbeat(agent_id=aid, time=t)),
                  ids, numbers),
        st.builds(lambda s, tp: agent_pb2.AgentMessage(status_update=agent_pb2.StatusUpdate(status=s,
                                                                                          traceparent=tp)),
                  task_statuses(agent_ids), texts),
        st.builds(lambda aid: agent_pb2.AgentMessage(usage=agent_pb2.Usage(agent_id=aid)), ids),
        st.just(agent_pb2.AgentMessage()),
        st.builds(lambda host, res, rid: agent_pb2.AgentMessage(register=agent_pb2.Register(
            info=common_pb2.AgentInfo(hostname=host, resources=res), request_id=rid)),
            st.sampled_from(["h1", "x" * 300, ""]), st.sampled_from(_SANE_RESOURCES), texts),
    )


def follow_ups(agent_ids: Sequence[str]) -> st.SearchStrategy[agent_pb2.AgentMessage]:
    """Messages for an agent stream that is already registered and runs no task."""
    return st.one_of(
        st.builds(lambda s, tp: agent_pb2.AgentMessage(status_update=agent_pb2.StatusUpdate(status=s,
                                                                                          traceparent=tp)),
                  task_statuses(agent_ids), texts),
        st.builds(lambda aid, info: agent_pb2.AgentMessage(register=agent_pb2.Register(agent_id=aid, info=info)),
                  texts, agent_infos()),
        st.builds(lambda aid, t: agent_pb2.AgentMessage(heartbeat=agent_pb2.AgentHeartbeat(agent_id=aid, time=t)),
                  texts, numbers),
        st.builds(lambda aid, tid, cpu, rss: agent_pb2.AgentMessage(usage=agent_pb2.Usage(
            agent_id=aid, tasks=[agent_pb2.TaskUsage(task_id=tid, cpu_seconds=cpu, rss_bytes=rss)])),
            texts, texts, numbers, st.integers(0, 2**64 - 1)),
        st.just(agent_pb2.AgentMessage()),
    )


def framework_infos(framework_ids: Sequence[str]) -> st.SearchStrategy[common_pb2.FrameworkInfo]:
    def build(fid: str, name: str, principal: str, roles: list[str], timeout: float, aware: bool,
              user: str) -> common_pb2.FrameworkInfo:
        return common_pb2.FrameworkInfo(framework_id=fid, name=name, principal=principal, roles=roles,
                                        failover_timeout_seconds=timeout, partition_aware=aware, user=user)

    hostile = st.builds(build, st.one_of(st.just(""), texts, st.sampled_from(list(framework_ids) or [""])), texts,
                        texts, st.lists(st.one_of(texts, st.just("default"), st.just("*")), max_size=3), numbers,
                        st.booleans(), texts)
    # mostly sane but for one field, so that acceptance is reached as well as each refusal
    sane = st.builds(build, st.just(""), st.sampled_from(["fw", "batch", "x" * 300]), st.sampled_from(["", "ops"]),
                     st.sampled_from([["default"], ["web", "batch"], ["default", "default"], []]),
                     st.sampled_from([0.0, 60.0, 1e6, -1.0, float("nan")]), st.booleans(),
                     st.sampled_from(["", "nobody", "root"]))
    return st.one_of(hostile, sane)


def _refused(code: grpc.StatusCode, what: str, request: Any, fingerprint: Fingerprint, before: str) -> None:
    assert code in ALLOWED, f"{what} answered {code} to {request!r}"
    assert fingerprint() == before, f"{what} was refused ({code}) but changed the state"


def check_first_message(stub: Any, fingerprint: Fingerprint, message: agent_pb2.AgentMessage
                        ) -> tuple[grpc.StatusCode, str]:
    """Open a Connect stream with `message` alone. Returns the code and the agent id if registered."""
    before = fingerprint()
    call = stub.Connect(iter([message]), timeout=10)
    try:
        replies = list(call)
    except grpc.RpcError as err:
        _refused(err.code(), "AgentLink.Connect", message, fingerprint, before)
        return err.code(), ""
    # accepted: the stream must have said Registered first, and only a Register can be accepted
    assert replies and replies[0].WhichOneof("kind") == "registered", \
        f"AgentLink.Connect ended OK without Registered for {message!r}: {replies!r}"
    assert message.WhichOneof("kind") == "register"
    return grpc.StatusCode.OK, replies[0].registered.agent_id


def check_follow_up(agent: ScriptedAgent, fingerprint: Fingerprint, message: agent_pb2.AgentMessage,
                    counter: list[int], timeout: float = 10.0) -> str:
    """Send `message` on a registered agent's stream; every status update must be refused and
    acknowledged, the stream must stay up and the state must not change. Returns the message kind."""
    before = fingerprint()
    kind = message.WhichOneof("kind") or "empty"
    agent.outbox.put(message)
    # a marker after it: messages are handled in order, so its acknowledgement means the master is
    # done with the fuzzed one (a refused update is acknowledged at once, an accepted one after commit)
    counter[0] += 1
    marker = f"fuzz-marker-{counter[0]}"
    agent.outbox.put(agent_pb2.AgentMessage(status_update=agent_pb2.StatusUpdate(status=common_pb2.TaskStatus(
        task_id=f"no-such-task-{counter[0]}", state=common_pb2.TASK_RUNNING, uuid=marker,
        agent_id=agent.agent_id, source=common_pb2.SOURCE_AGENT))))
    wanted = [marker]
    if kind == "status_update" and message.status_update.status.uuid:
        wanted.append(message.status_update.status.uuid)
    deadline = time.monotonic() + timeout
    while not all(u in agent.acked for u in wanted):
        assert not agent.ended.is_set(), f"the agent stream ended after {message!r}: {agent.error!r}"
        assert time.monotonic() < deadline, f"no acknowledgement of {wanted} after {message!r}"
        time.sleep(0.002)
    assert fingerprint() == before, f"{kind} on a registered agent stream changed the state: {message!r}"
    return kind


def check_subscribe(stub: Any, fingerprint: Fingerprint, info: common_pb2.FrameworkInfo,
                    wait_removed: Callable[[str], bool]) -> grpc.StatusCode:
    """Subscribe with `info`. Refused: a proper code and no change. Accepted: `Subscribed` comes first,
    then the framework is torn down (and gone) so that it changes nothing later."""
    before = fingerprint()
    request = scheduler_pb2.SubscribeRequest(info=info)
    call = stub.Subscribe(request, timeout=10)
    try:
        first = next(call)
    except grpc.RpcError as err:
        _refused(err.code(), "Scheduler.Subscribe", request, fingerprint, before)
        return err.code()
    except StopIteration:
        raise AssertionError(f"Scheduler.Subscribe ended OK without Subscribed for {info!r}") from None
    assert first.WhichOneof("kind") == "subscribed", f"first event {first!r} for {info!r}"
    sub = first.subscribed
    stub.Teardown(scheduler_pb2.TeardownRequest(header=scheduler_pb2.CallHeader(
        framework_id=sub.framework_id, stream_id=sub.stream_id)), timeout=10)
    call.cancel()
    assert wait_removed(sub.framework_id), f"framework {sub.framework_id} still there after teardown"
    return grpc.StatusCode.OK


def removed_waiter(master: Any, timeout: float = 5.0) -> Callable[[str], bool]:
    """A function that waits until a framework is removed in `master`'s state."""
    def wait(framework_id: str) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fw = master.read_state(lambda s: s.frameworks.get(framework_id))
            if fw is None or fw.state.name == "FRAMEWORK_REMOVED":
                return True
            time.sleep(0.005)
        return False
    return wait


# ---- oversized and many-argument stream openings ------------------------------------------------------
_TOO_BIG = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED})
OversizedOpening = tuple[Any, frozenset[grpc.StatusCode], str]  # (message, codes it may get, field named)


def oversized_registers() -> st.SearchStrategy[OversizedOpening]:
    """A Register of a new agent with thousands of attributes or resource entries, or megabyte strings:
    refused before anything is recorded (INVALID_ARGUMENT naming the field; over 4 MiB, gRPC's
    RESOURCE_EXHAUSTED)."""
    def register(info: common_pb2.AgentInfo) -> agent_pb2.AgentMessage:
        return agent_pb2.AgentMessage(register=agent_pb2.Register(info=info))

    cpus = [common_pb2.Resource(name="cpus", scalar=2.0)]
    attributes = st.builds(lambda n: (register(common_pb2.AgentInfo(hostname="h", resources=cpus, attributes=[
        common_pb2.Label(key=f"a{i}", value="") for i in range(n)])), _TOO_BIG, "info.attributes"),
        st.integers(129, 20_000))
    resources = st.builds(lambda n: (register(common_pb2.AgentInfo(hostname="h", resources=[
        common_pb2.Resource(name=f"r{i}", scalar=1.0) for i in range(n)])), _TOO_BIG, "info.resources"),
        st.integers(1025, 20_000))
    ports = st.builds(lambda n: (register(common_pb2.AgentInfo(hostname="h", resources=[common_pb2.Resource(
        name="ports", ranges=[common_pb2.Range(begin=p, end=p) for p in range(1, 2 * n, 2)])])),
        _TOO_BIG, "info.resources"), st.integers(1025, 30_000))
    strings = st.builds(lambda field, size: (register(common_pb2.AgentInfo(
        resources=cpus, **{"hostname": "h", **{field: "x" * size}})), _TOO_BIG, "" if size > 4 << 20 else field),
        st.sampled_from(["hostname", "isolator", "version"]), st.sampled_from([300, 1_000_000, 5 << 20]))
    return st.one_of(attributes, resources, ports, strings)


def check_oversized_register(stub: Any, fingerprint: Fingerprint, case: OversizedOpening) -> grpc.StatusCode:
    message, codes, text = case
    before = fingerprint()
    call = stub.Connect(iter([message]), timeout=30)
    try:
        replies = list(call)
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""
        assert code in codes, f"AgentLink.Connect answered {code} ({details[:200]}) to an oversized Register"
        if code is grpc.StatusCode.INVALID_ARGUMENT and text:
            assert text in details, f"{details[:200]!r} does not name {text}"
        assert fingerprint() == before, "an oversized Register was refused but changed the state"
        return code
    raise AssertionError(f"an oversized Register was accepted: {replies[:1]!r}")


def oversized_framework_infos() -> st.SearchStrategy[OversizedOpening]:
    """A Subscribe with thousands of roles, a failover timeout of decades, megabyte strings: refused."""
    def info(**fields: Any) -> common_pb2.FrameworkInfo:
        return common_pb2.FrameworkInfo(**{"name": "big", "roles": ["default"], **fields})

    roles = st.builds(lambda n: (info(roles=[f"role-{i}" for i in range(n)]), _TOO_BIG, "info.roles"),
                      st.integers(129, 50_000))
    failover = st.builds(lambda years: (info(failover_timeout_seconds=years * 365 * 86400.0), _TOO_BIG,
                                        "info.failover_timeout_seconds"), st.integers(1, 31))
    strings = st.builds(lambda field, size: (info(**{field: "x" * size}), _TOO_BIG, "" if size > 4 << 20 else field),
                        st.sampled_from(["name", "principal", "user", "hostname"]),
                        st.sampled_from([300, 1_000_000, 5 << 20]))
    return st.one_of(roles, failover, strings)


def check_oversized_subscribe(stub: Any, fingerprint: Fingerprint, case: OversizedOpening) -> grpc.StatusCode:
    info, codes, text = case
    before = fingerprint()
    call = stub.Subscribe(scheduler_pb2.SubscribeRequest(info=info), timeout=30)
    try:
        first = next(call)
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""
        assert code in codes, f"Scheduler.Subscribe answered {code} ({details[:200]}) to an oversized info"
        if code is grpc.StatusCode.INVALID_ARGUMENT and text:
            assert text in details, f"{details[:200]!r} does not name {text}"
        assert fingerprint() == before, "an oversized Subscribe was refused but changed the state"
        return code
    call.cancel()
    raise AssertionError(f"an oversized Subscribe was accepted: {first!r}")
