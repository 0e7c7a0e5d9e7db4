"""The limits policy of `core.limits`: task size caps, the failover cap, `--limit` parsing, stream slots and
the per-principal rate limiter (pure objects: time is an input)."""

from __future__ import annotations

import pytest

from tessera.control_plane.core.errors import InvalidRequest, ResourceExhausted
from tessera.control_plane.core.limits import (
    MAX_ARGUMENTS,
    MAX_FAILOVER_TIMEOUT,
    MAX_LAUNCH_LENGTH,
    MAX_TASK_LENGTH,
    MasterLimits,
    RateLimiter,
    StreamCaps,
    StreamSlots,
    check_agent_size,
    check_framework_size,
    check_launch_size,
    check_task_size,
    parse_limits,
    stream_caps,
)
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import AgentInfo, CommandInfo, FrameworkInfo, TaskInfo


def _task(**command: object) -> TaskInfo:
    return TaskInfo(task_id="t", resources=Resources.parse("cpus:1;mem:64"),
                    command=CommandInfo(value="true", **command))  # type: ignore[arg-type]


def test_a_task_of_ordinary_size_passes_and_its_length_is_counted() -> None:
    task = _task(arguments=("-c", "echo hi"), environment=(("A", "1"),))
    assert 0 < check_task_size(task, "task") < 1000


@pytest.mark.parametrize(("task", "field"), [
    (_task(arguments=("a",) * (MAX_ARGUMENTS + 1)), "task.command.arguments"),
    (_task(arguments=("a" * 4097,)), "task.command.arguments[0]"),
    (_task(arguments=("a" * 4000,) * 9), "task.command.arguments"),
    (_task(environment=tuple((f"V{n}", "") for n in range(257))), "task.command.environment"),
    (_task(environment=tuple((f"V{n}", "x" * 4000) for n in range(9))), "task.command.environment"),
    (TaskInfo(task_id="t", command=CommandInfo(value="x" * 4097)), "task.command.value"),
    (TaskInfo(task_id="t", command=CommandInfo(value="true"), labels=tuple((f"k{n}", "") for n in range(65))),
     "task.labels"),
    (TaskInfo(task_id="t", command=CommandInfo(value="true"),
              resources=Resources.parse(";".join(f"r{n}:1" for n in range(65)))), "task.resources"),
])
def test_each_cap_names_the_field_it_refuses(task: TaskInfo, field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_task_size(task, "task")
    assert caught.value.message.startswith(field + ":"), caught.value.message


def test_the_whole_task_is_capped_even_when_each_part_fits() -> None:
    task = TaskInfo(task_id="t", command=CommandInfo(value="true", arguments=("a" * 4000,) * 8,
                                                     environment=tuple((f"V{n}", "x" * 4000) for n in range(8))),
                    labels=tuple((f"k{n}", "y" * 4000) for n in range(4)))
    with pytest.raises(InvalidRequest, match=f"at most {MAX_TASK_LENGTH}"):
        check_task_size(task, "task")


def test_the_tasks_of_one_accept_are_capped_together() -> None:
    big = _task(arguments=("a" * 4000,) * 8)  # ~32 KB each
    check_launch_size([(f"t{n}", big) for n in range(MAX_LAUNCH_LENGTH // 40_000)], "operations")
    with pytest.raises(InvalidRequest, match="operations: the tasks of one accept"):
        check_launch_size([(f"t{n}", big) for n in range(20)], "operations")


def test_the_failover_timeout_is_at_most_a_week_and_roles_are_counted() -> None:
    check_framework_size(FrameworkInfo(name="f", roles=("a",), failover_timeout_seconds=MAX_FAILOVER_TIMEOUT))
    with pytest.raises(InvalidRequest, match="info.failover_timeout_seconds"):
        check_framework_size(FrameworkInfo(name="f", roles=("a",), failover_timeout_seconds=31 * 365 * 86400.0))
    with pytest.raises(InvalidRequest, match="info.roles"):
        check_framework_size(FrameworkInfo(name="f", roles=tuple(f"r{n}" for n in range(129))))


def test_an_agent_is_capped_in_attributes_and_resource_entries() -> None:
    check_agent_size(AgentInfo(hostname="h", attributes=(("rack", "r1"),), resources=Resources.parse("cpus:1")))
    with pytest.raises(InvalidRequest, match="info.attributes"):
        check_agent_size(AgentInfo(hostname="h", attributes=tuple((f"a{n}", "") for n in range(129))))
    ports = Resources.parse("ports:[" + ",".join(f"{p}-{p}" for p in range(10000, 12050, 2)) + "]")
    with pytest.raises(InvalidRequest, match="info.resources"):
        check_agent_size(AgentInfo(hostname="h", resources=ports))


def test_limits_parse_from_name_value_items_and_refuse_nonsense() -> None:
    limits = parse_limits(["frameworks_per_principal=3", "requests-per-second=2.5", "agent_register_timeout=1"])
    assert limits == MasterLimits(frameworks_per_principal=3, requests_per_second=2.5, agent_register_timeout=1.0)
    assert parse_limits([]) == MasterLimits()
    for bad in ("nope=1", "frameworks_per_principal", "frameworks_per_principal=0", "request_burst=1.5",
                "requests_per_second=-1", "agent_register_timeout=nan", "tasks_per_principal=x"):
        with pytest.raises(InvalidRequest, match="--limit"):
            parse_limits([bad])


def test_stream_caps_keep_threads_for_unary_calls_and_give_one_peer_at_most_half() -> None:
    assert stream_caps(256, MasterLimits()) == StreamCaps(total=224, per_peer=112, per_principal=112)
    assert stream_caps(16, MasterLimits()) == StreamCaps(total=12, per_peer=6, per_principal=6)
    assert stream_caps(16, MasterLimits(streams_per_peer=2)).per_peer == 2
    with pytest.raises(InvalidRequest, match="streams_per_principal=13"):
        stream_caps(16, MasterLimits(streams_per_principal=13))


def test_stream_slots_refuse_beyond_each_cap_and_free_on_release() -> None:
    slots = StreamSlots(StreamCaps(total=5, per_peer=2, per_principal=3))
    slots.acquire("agent-cert", None)
    slots.acquire("agent-cert", None)
    with pytest.raises(ResourceExhausted, match="client certificate"):
        slots.acquire("agent-cert", None)
    slots.acquire("fw-1", "alice")
    slots.acquire("fw-2", "alice")
    slots.acquire("fw-3", "alice")
    with pytest.raises(ResourceExhausted, match="principal alice"):
        slots.acquire("fw-4", "alice")
    with pytest.raises(ResourceExhausted, match="this master serves 5 streams"):
        slots.acquire("ops", "ops")
    slots.release("agent-cert", None)
    slots.acquire("ops", "ops")  # the released slot is free again
    for peer, principal in (("agent-cert", None), ("fw-1", "alice"), ("fw-2", "alice"), ("fw-3", "alice"),
                            ("ops", "ops")):
        slots.release(peer, principal)
    assert slots.counts() == {"total": 0, "peers": 0, "principals": 0}


def test_the_rate_limiter_allows_a_burst_then_the_sustained_rate_per_key() -> None:
    rates = RateLimiter(rate=2.0, burst=3)
    for _ in range(3):
        rates.take("alice", now=100.0)
    with pytest.raises(ResourceExhausted, match="principal alice"):
        rates.take("alice", now=100.0)
    rates.take("bob", now=100.0)  # per key
    rates.take("alice", now=100.5)  # 0.5 s at 2/s refills one call
    with pytest.raises(ResourceExhausted):
        rates.take("alice", now=100.5)
    for _ in range(3):
        rates.take("alice", now=200.0)  # refilled up to the burst, not beyond
    with pytest.raises(ResourceExhausted):
        rates.take("alice", now=200.0)
