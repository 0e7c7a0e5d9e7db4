"""The same commands against a running master (in-process, real gRPC): `GetStateAt`, timelines and
event listings over the Operator API, following, and the errors a cluster answers with."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.json_format import MessageToDict

from tessera.control_plane.codec.operator_api import state_at_to_proto
from tessera.control_plane.core import commands as c
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.values import AgentInfo, FrameworkInfo
from tessera.control_plane.eventlog.replay import rebuild
from tessera.control_plane.eventlog.timepoints import format_time
from tessera.v1 import operator_pb2
from tests.support.cluster import free_port
from tests.support.inprocess import InProcessMaster

from .cli import ok, one_line_error, tessera

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def node() -> Iterator[InProcessMaster]:
    with InProcessMaster(allocation=False) as m:
        m.master.propose([c.SetRoleWeight("web", 2.0)])
        m.master.propose([c.RegisterAgent(AgentInfo(hostname="h1", resources=Resources.parse("cpus:4;mem:1024")))])
        m.master.propose([c.SubscribeFramework(FrameworkInfo(name="web", principal="p", roles=("web",)))])
        m.master.propose([c.SetQuota("web", guarantee=Resources.parse("cpus:1"))])
        time.sleep(0.01)
        m.master.propose([c.SetRoleWeight("batch", 0.5)])
        assert m.events.flush()
        yield m


def rebuilt_json(node: InProcessMaster, index: int) -> dict:  # type: ignore[type-arg]
    at = rebuild(node.events, index)
    return MessageToDict(state_at_to_proto(at).state, preserving_proto_field_name=True)


def test_state_at_over_grpc_is_the_rebuilt_state(node: InProcessMaster) -> None:
    last = node.events.last_seq()
    for index in range(0, last + 1):
        data = json.loads(ok("--masters", node.grpc_address, "state", "--at", str(index), "--json").stdout)
        assert data.get("state", {}) == rebuilt_json(node, index), index
        assert int(data["last_index"]) == last


def test_state_at_a_time_and_a_diff_over_grpc(node: InProcessMaster) -> None:
    records = node.events.list(limit=100)
    weight = next(r for r in records if r.type == "RoleWeightSet" and '"batch"' in r.payload)
    out = ok("--masters", node.grpc_address, "state", "--at", f"@{weight.time}", "--diff", "1").stdout
    first_entry_end = rebuild(node.events, 1).index  # index 1 is inside the leader's first entry
    assert out.startswith(f"changes from index {first_entry_end} ") and f"to index {weight.seq} " in out
    assert "+ role      batch" in out and "+ agent" in out and "+ framework" in out
    human = ok("--masters", node.grpc_address, "state", "--at", str(weight.seq)).stdout
    assert human.startswith(f"state at index {weight.seq},") and "h1" in human and "batch" in human


def test_state_now_is_the_leaders_state(node: InProcessMaster) -> None:
    out = ok("--masters", node.grpc_address, "state").stdout
    assert out.startswith(f"state now: index {node.events.last_seq()}")


def test_timeline_and_events_over_grpc(node: InProcessMaster) -> None:
    fid = next(iter(node.state().frameworks))
    out = ok("--masters", node.grpc_address, "timeline", fid).stdout.splitlines()
    assert out[0] == f"framework {fid}" and "FrameworkSubscribed" in out[1]
    rows = [json.loads(line) for line in ok("--masters", node.grpc_address, "events", "--type", "RoleWeightSet",
                                            "--json").stdout.splitlines()]
    assert [r["payload"]["role"] for r in rows] == ["web", "batch"]
    since = rows[1]["time"]
    later = [json.loads(line) for line in ok("--masters", node.grpc_address, "events", "--since",
                                             format_time(since), "--json").stdout.splitlines()]
    assert later and later[0]["seq"] == rows[1]["seq"]
    one_line_error(tessera("--masters", node.grpc_address, "timeline", "nobody"), "no event names 'nobody'")
    tail = [json.loads(line) for line in ok("--masters", node.grpc_address, "events", "--last", "2",
                                            "--json").stdout.splitlines()]
    assert [r["seq"] for r in tail] == [node.events.last_seq() - 1, node.events.last_seq()]


def test_follow_streams_new_events_as_ndjson(node: InProcessMaster) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TESSERA_MASTERS"}
    proc = subprocess.Popen([sys.executable, "-m", "tessera.control_plane.cli.main", "--masters", node.grpc_address,
                             "events", "--follow", "--type", "RoleWeightSet", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline and not line:
            node.master.propose([c.SetRoleWeight("late", 3.0)])
            import select

            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line, "no event streamed"
        event = json.loads(line)
        assert event["type"] == "RoleWeightSet" and event["payload"]["role"] == "late"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def test_a_follow_that_falls_behind_says_so_and_exits_non_zero(node: InProcessMaster) -> None:
    node.events.prune(4)
    line = one_line_error(tessera("--masters", node.grpc_address, "events", "--follow", "--since", "2"),
                          "fell behind", "pruned")
    assert "4" in line
    one_line_error(tessera("--masters", node.grpc_address, "events", "--since", "2"), "pruned")


def test_cluster_errors_are_one_line(node: InProcessMaster) -> None:
    last = node.events.last_seq()
    one_line_error(tessera("--masters", node.grpc_address, "state", "--at", str(last + 5)),
                   f"index {last + 5} is beyond the last event")
    one_line_error(tessera("--masters", node.grpc_address, "state", "--at", "2999-01-01"), "in the future")
    one_line_error(tessera("--masters", node.grpc_address, "events", "--since", str(last + 5)), "beyond")
    node.events.prune(last)
    one_line_error(tessera("--masters", node.grpc_address, "state", "--at", "1"), "history not kept", "pruned")


def test_a_cluster_that_is_down_is_one_line() -> None:
    down = f"127.0.0.1:{free_port()}"
    for args in (("state", "--at", "1"), ("state",), ("timeline", "x"), ("events",), ("events", "--follow"),
                 ("events", "export", "/tmp/never-written.db")):
        one_line_error(tessera("--masters", down, "--timeout", "0.5", *args), "no master answered")
    assert not os.path.exists("/tmp/never-written.db")


def test_get_state_at_refuses_malformed_points(node: InProcessMaster) -> None:
    op = node.operator()
    for req in (operator_pb2.GetStateAtRequest(),
                operator_pb2.GetStateAtRequest(at=operator_pb2.HistoryPoint(time=float("nan"))),
                operator_pb2.GetStateAtRequest(at=operator_pb2.HistoryPoint(index=1),
                                               diff_from=operator_pb2.HistoryPoint())):
        with pytest.raises(grpc.RpcError) as info:
            op.GetStateAt(req, timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_export_from_the_cluster(node: InProcessMaster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sqlite_utils

    dest = tmp_path / "cluster.db"
    ok("--masters", node.grpc_address, "events", "export", str(dest))
    rows = list(sqlite_utils.Database(dest)["events"].rows)
    assert [r["seq"] for r in rows] == list(range(1, node.events.last_seq() + 1))
    assert [r["payload"] for r in rows] == [r.payload for r in node.events.list(limit=1000)]
