"""Issue 14, item 9: unbounded requests. Before the fix a task with thousands of arguments (0.8 MB) was
replicated to every master, 1.2 MB surfaced as INTERNAL (EntryTooLargeError), and one principal could
create any number of frameworks with failover timeouts of 31 years.

Now (through the in-process master and its real gRPC servicers): an oversized TaskInfo is
INVALID_ARGUMENT naming the field and nothing is committed; an entry too large for the replicated log is
INVALID_ARGUMENT, never INTERNAL; a failover timeout above a week is INVALID_ARGUMENT; frameworks and
tasks beyond a principal's limit, and calls faster than its rate, are RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tessera.control_plane.api.auth import Guard
from tessera.control_plane.certs import init_dev_pki
from tessera.control_plane.codec import resources_to_proto
from tessera.control_plane.core.acl import parse_acl, token_digest
from tessera.control_plane.core.limits import MasterLimits
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.replication import GroupCommitConfig
from tessera.control_plane.tls import ClientSecurity, load_tls_dir, server_credentials
from tessera.v1 import common_pb2, operator_pb2, operator_pb2_grpc, scheduler_pb2
from tests.support.inprocess import InProcessMaster
from tests.support.scripted import ScriptedAgent, ScriptedFramework

pytestmark = pytest.mark.timeout(120)

WEEK = 7 * 24 * 3600.0
THIRTY_ONE_YEARS = 31 * 365 * 24 * 3600.0


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def code_and_details(fn: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        fn()
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def task(task_id: str, agent_id: str, *, resources: str = "cpus:0.1;mem:16", arguments: int = 0,
         argument_length: int = 1, environment: int = 0, labels: int = 0, label_length: int = 1,
         extra_resources: int = 0, command: str = "true") -> common_pb2.TaskInfo:
    info = common_pb2.TaskInfo(task_id=task_id, name=task_id, agent_id=agent_id, command=common_pb2.CommandInfo(
        shell=False, value=command, arguments=["a" * argument_length] * arguments,
        environment=[common_pb2.Label(key=f"V{n}", value="x") for n in range(environment)]),
        labels=[common_pb2.Label(key=f"k{n}", value="v" * label_length) for n in range(labels)])
    resources_to_proto(Resources.parse(resources), info.resources)
    info.resources.extend(common_pb2.Resource(name=f"r{n}", scalar=0.001) for n in range(extra_resources))
    return info


@pytest.fixture
def launchpad() -> Iterator[tuple[InProcessMaster, ScriptedFramework, ScriptedAgent]]:
    with InProcessMaster(limits=MasterLimits(tasks_per_principal=4)) as node:
        assert node.channel is not None
        agent = ScriptedAgent(node.channel, resources="cpus:8;mem:8192").start()
        assert agent.registered.wait(5)
        fw = ScriptedFramework(node.channel).start()
        assert fw.subscribed.wait(5)
        wait_for(lambda: fw.offers, what="an offer")
        yield node, fw, agent
        fw.close()
        agent.close()


def accept(fw: ScriptedFramework, tasks: list[common_pb2.TaskInfo]) -> tuple[grpc.StatusCode, str]:
    offer = next(iter(fw.offers.values()))
    return code_and_details(lambda: fw.stub.Accept(scheduler_pb2.AcceptRequest(
        header=fw.header(), offer_ids=[offer.offer_id],
        operations=[scheduler_pb2.Operation(type=scheduler_pb2.Operation.LAUNCH, tasks=tasks)]), timeout=10))


def launched(node: InProcessMaster) -> set[str]:
    return set(node.master.read_state(lambda s: {key.task_id for key in (*s.tasks, *s.completed_tasks)}))


OVERSIZED: dict[str, tuple[Callable[[str], list[common_pb2.TaskInfo]], str]] = {
    "thousands of arguments": (lambda aid: [task("t", aid, arguments=5000)], "tasks[0].command.arguments"),
    "0.8 MB of arguments": (lambda aid: [task("t", aid, arguments=200, argument_length=4000)],
                            "tasks[0].command.arguments"),
    "1.2 MB of arguments": (lambda aid: [task("t", aid, arguments=300, argument_length=4000)],
                            "tasks[0].command.arguments"),
    "a thousand environment variables": (lambda aid: [task("t", aid, environment=1000)],
                                         "tasks[0].command.environment"),
    "five hundred labels": (lambda aid: [task("t", aid, labels=500)], "tasks[0].labels"),
    "a hundred resources": (lambda aid: [task("t", aid, extra_resources=100)], "tasks[0].resources"),
    "a megabyte command": (lambda aid: [task("t", aid, command="x" * 1_000_000)], "tasks[0].command.value"),
    "tasks of one accept over 512 KiB": (
        lambda aid: [task(f"t{n}", aid, arguments=14, argument_length=4000) for n in range(10)], "operations"),
}


@pytest.mark.parametrize("case", sorted(OVERSIZED))
def test_an_oversized_task_is_invalid_argument_naming_the_field_and_nothing_is_launched(
        launchpad: tuple[InProcessMaster, ScriptedFramework, ScriptedAgent], case: str) -> None:
    node, fw, agent = launchpad
    build, field = OVERSIZED[case]
    offers_before = set(node.master.read_state(lambda s: set(s.offers)))
    code, details = accept(fw, build(agent.agent_id))
    assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details[:300])
    assert field in details, details[:300]
    assert not launched(node)
    # the offer was not used: it is still live
    assert offers_before <= set(node.master.read_state(lambda s: set(s.offers)))
    # and a task of a sane size still launches on the same offer
    assert accept(fw, [task("sane", agent.agent_id, arguments=10, environment=10, labels=10)])[0] is grpc.StatusCode.OK
    assert launched(node) == {"sane"}


def test_tasks_beyond_the_principals_limit_are_resource_exhausted(
        launchpad: tuple[InProcessMaster, ScriptedFramework, ScriptedAgent]) -> None:
    node, fw, agent = launchpad  # tasks_per_principal=4
    code, details = accept(fw, [task(f"t{n}", agent.agent_id) for n in range(5)])
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
    assert "at most" in details or "exceed 4" in details
    assert not launched(node)
    assert accept(fw, [task(f"t{n}", agent.agent_id) for n in range(4)])[0] is grpc.StatusCode.OK
    assert len(launched(node)) == 4


def test_an_entry_too_large_for_the_log_is_invalid_argument_not_internal() -> None:
    # a log that takes entries of at most 6 KiB: a task well within the task caps makes a larger entry
    with InProcessMaster(group_commit=GroupCommitConfig(max_entry_bytes=6 * 1024)) as node:
        assert node.channel is not None
        agent = ScriptedAgent(node.channel).start()
        assert agent.registered.wait(5)
        fw = ScriptedFramework(node.channel).start()
        assert fw.subscribed.wait(5)
        wait_for(lambda: fw.offers, what="an offer")
        offers_before = set(node.master.read_state(lambda s: set(s.offers)))
        code, details = accept(fw, [task("big", agent.agent_id, arguments=3, argument_length=3000)])
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert "too large" in details
        assert not launched(node)
        assert offers_before <= set(node.master.read_state(lambda s: set(s.offers)))  # the offer was not used
        fw.close()
        agent.close()


def subscribe(node: InProcessMaster, name: str, principal: str = "", failover: float = 60.0
              ) -> tuple[grpc.StatusCode, str, grpc.Future | None]:
    call = node.scheduler().Subscribe(scheduler_pb2.SubscribeRequest(info=common_pb2.FrameworkInfo(
        name=name, principal=principal, roles=["default"], failover_timeout_seconds=failover)), timeout=30)
    try:
        first = next(call)
    except grpc.RpcError as err:
        return err.code(), err.details() or "", None
    assert first.WhichOneof("kind") == "subscribed"
    return grpc.StatusCode.OK, first.subscribed.framework_id, call


def framework_count(node: InProcessMaster) -> int:
    return int(node.master.read_state(lambda s: len(s.frameworks)))


def test_a_failover_timeout_above_a_week_is_invalid_argument() -> None:
    with InProcessMaster(allocation=False) as node:
        code, details, _ = subscribe(node, "forever", failover=THIRTY_ONE_YEARS)
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert "failover_timeout_seconds" in details
        assert framework_count(node) == 0
        code, _, call = subscribe(node, "a-week", failover=WEEK)
        assert code is grpc.StatusCode.OK and call is not None
        call.cancel()


def test_frameworks_beyond_the_principals_limit_are_resource_exhausted() -> None:
    with InProcessMaster(allocation=False, limits=MasterLimits(frameworks_per_principal=3)) as node:
        calls = []
        for n in range(3):
            code, fid, call = subscribe(node, f"alice-{n}", principal="alice")
            assert code is grpc.StatusCode.OK
            calls.append((fid, call))
        code, details, _ = subscribe(node, "alice-3", principal="alice")
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        assert "alice" in details and framework_count(node) == 3
        # another principal is not affected
        code, _, other = subscribe(node, "bob-0", principal="bob")
        assert code is grpc.StatusCode.OK and other is not None
        # a framework torn down frees its place
        fid, call = calls[0]
        node.scheduler().Teardown(scheduler_pb2.TeardownRequest(header=scheduler_pb2.CallHeader(
            framework_id=fid)), timeout=10)
        wait_for(lambda: node.master.read_state(lambda s: s.frameworks[fid].state.name) == "FRAMEWORK_REMOVED")
        code, _, again = subscribe(node, "alice-4", principal="alice")
        assert code is grpc.StatusCode.OK and again is not None
        for _, c in calls:
            c.cancel()
        other.cancel()
        again.cancel()


TOKENS = {"alice": "tok-alice-limits", "ops": "tok-ops-limits"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("limits") / "pki"
    init_dev_pki(root)
    return root


def test_calls_faster_than_the_principals_rate_are_resource_exhausted(pki: Path) -> None:
    acl = parse_acl({"principals": {name: {"token_sha256": token_digest(tok), "actions": ["read"]}
                                    for name, tok in TOKENS.items()}})
    limits = MasterLimits(requests_per_second=0.01, request_burst=5)
    with InProcessMaster(allocation=False, limits=limits, guard=Guard(acl, tls=True),
                         credentials=server_credentials(load_tls_dir(pki / "master"))) as node:
        def stub(principal: str) -> tuple[operator_pb2_grpc.OperatorStub, tuple[tuple[str, str], ...]]:
            sec = ClientSecurity.from_options(pki / "operator", TOKENS[principal])
            return operator_pb2_grpc.OperatorStub(sec.channel(node.grpc_address)), sec.metadata

        alice, alice_md = stub("alice")
        for _ in range(5):
            alice.GetState(operator_pb2.GetStateRequest(), metadata=alice_md, timeout=10)
        code, details = code_and_details(
            lambda: alice.GetState(operator_pb2.GetStateRequest(), metadata=alice_md, timeout=10))
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        assert "alice" in details
        # the limit is per principal: the operator is still answered
        ops, ops_md = stub("ops")
        ops.GetState(operator_pb2.GetStateRequest(), metadata=ops_md, timeout=10)
