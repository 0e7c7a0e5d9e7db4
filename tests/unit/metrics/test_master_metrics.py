"""Master metrics scraped over real HTTP from an in-process master (in-memory twins, real gRPC): what the
state, Raft and the event log say shows up under the documented names, and the server leaves nothing
behind when stopped."""

from __future__ import annotations

import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tessera.control_plane.metrics.server import MetricsServer, parse_address
from tessera.control_plane.metrics.specs import MASTER_METRICS, MIB, sample_names
from tessera.control_plane.runtime.metrics import MasterMetrics
from tessera.v1 import common_pb2, operator_pb2
from tests.support.inprocess import InProcessMaster
from tests.support.scripted import ScriptedAgent, ScriptedFramework
from tests.unit.metrics.scraping import scrape, scrape_until, value

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def node() -> Iterator[tuple[InProcessMaster, MasterMetrics]]:
    with InProcessMaster() as m:
        metrics = MasterMetrics(m.master, m.duties)
        metrics.start()
        try:
            yield m, metrics
        finally:
            metrics.stop()


def _metrics_threads() -> list[threading.Thread]:
    """The server, the poller and any request thread of the metrics server still alive."""
    return [t for t in threading.enumerate()
            if t.name.startswith("metrics-") or "process_request_thread" in t.name]


def test_registered_agent_resources_appear_in_bytes_and_cpus(node: tuple[InProcessMaster, MasterMetrics]) -> None:
    m, metrics = node
    agent = ScriptedAgent(m.channel, resources="cpus:4;mem:4096;disk:10240;gpus:1").start()
    try:
        assert agent.registered.wait(10)
        samples = scrape_until(metrics.url, lambda s: value(s, "tessera_master_agents", state="active") == 1)
        assert value(samples, "tessera_master_capacity_cpus") == 4
        assert value(samples, "tessera_master_capacity_mem_bytes") == 4096 * MIB
        assert value(samples, "tessera_master_capacity_disk_bytes") == 10240 * MIB
        assert value(samples, "tessera_master_capacity_gpus") == 1
        assert value(samples, "tessera_master_agents", state="unreachable") == 0
        assert value(samples, "tessera_master_events_total", type="AgentRegistered") == 1
        assert value(samples, "tessera_master_info", name="m1", raft_address="local:0",
                     grpc_address=m.grpc_address) == 1
    finally:
        agent.close()


def test_leader_flag_term_and_indexes_match_the_master(node: tuple[InProcessMaster, MasterMetrics]) -> None:
    m, metrics = node
    m.operator().SetWeight(operator_pb2.SetWeightRequest(role="analytics", weight=3.0), timeout=5)
    samples, _ = scrape(metrics.url)
    status = m.replicator.status()
    assert value(samples, "tessera_master_is_leader") == 1
    assert value(samples, "tessera_raft_is_leader") == 1
    assert value(samples, "tessera_raft_has_quorum") == 1
    assert value(samples, "tessera_raft_term") == m.replicator.term() >= 1
    assert value(samples, "tessera_raft_applied_index") <= status.last_applied
    assert value(samples, "tessera_raft_commit_index") >= value(samples, "tessera_raft_applied_index")
    assert value(samples, "tessera_master_event_index") == m.master.read_state(lambda s: s.seq)
    assert value(samples, "tessera_master_role_weight", role="analytics") == 3.0
    assert value(samples, "tessera_master_events_total", type="RoleWeightSet") == 1
    assert value(samples, "tessera_master_events_total", type="LeaderElected") == 1


def test_leader_flag_is_zero_until_the_master_serves() -> None:
    m = InProcessMaster()
    metrics = MasterMetrics(m.master, m.duties)
    metrics.start()
    try:
        before, _ = scrape(metrics.url)
        assert value(before, "tessera_master_is_leader") == 0
        assert value(before, "tessera_raft_has_quorum") == 0
        with m:
            after, _ = scrape(metrics.url)
            assert value(after, "tessera_master_is_leader") == 1
    finally:
        metrics.stop()


def test_successful_writes_are_timed_and_refused_ones_counted_by_error(
        node: tuple[InProcessMaster, MasterMetrics]) -> None:
    m, metrics = node
    before, _ = scrape(metrics.url)
    op = m.operator()
    for i in range(3):
        op.SetWeight(operator_pb2.SetWeightRequest(role=f"r{i}", weight=2.0), timeout=5)
    with pytest.raises(Exception):  # noqa: B017 - the gRPC error itself is not what this test pins
        op.SetWeight(operator_pb2.SetWeightRequest(role="bad", weight=-1.0), timeout=5)
    after, _ = scrape(metrics.url)
    count = "tessera_master_commit_duration_seconds_count"
    # other proposals (offers, expiry) run concurrently from the leader's ticker: at least our three
    assert value(after, count) - value(before, count) >= 3
    assert value(after, "tessera_master_commit_duration_seconds_sum") > 0
    assert value(after, "tessera_master_propose_errors_total", error="InvalidRequest") == 1


def test_launched_task_counts_in_used_resources_tasks_and_its_role(
        node: tuple[InProcessMaster, MasterMetrics]) -> None:
    m, metrics = node
    agent = ScriptedAgent(m.channel, resources="cpus:4;mem:4096", auto_run=False).start()
    launched = threading.Event()

    def on_offers(fw: ScriptedFramework, offers: list[common_pb2.Offer]) -> None:
        if not launched.is_set():
            launched.set()
            fw.launch(offers[0], "t1", "cpus:1;mem:256")

    framework = ScriptedFramework(m.channel, roles=("web",), on_offers=on_offers).start()
    try:
        assert agent.registered.wait(10) and launched.wait(10)
        scrape_until(metrics.url, lambda s: value(s, "tessera_master_tasks", state="staging") == 1)
        agent.send_status("t1", common_pb2.TASK_RUNNING)
        samples = scrape_until(metrics.url, lambda s: value(s, "tessera_master_tasks", state="running") == 1
                               and value(s, "tessera_master_unacknowledged_status_updates") == 0)
        assert value(samples, "tessera_master_tasks", state="running") == 1
        assert value(samples, "tessera_master_allocated_cpus") == 1
        assert value(samples, "tessera_master_allocated_mem_bytes") == 256 * MIB
        assert value(samples, "tessera_master_role_allocated_cpus", role="web") == 1
        assert value(samples, "tessera_master_role_allocated_mem_bytes", role="web") == 256 * MIB
        assert value(samples, "tessera_master_frameworks", state="connected") == 1
        assert value(samples, "tessera_master_connected_agents") == 1
        assert value(samples, "tessera_master_connected_frameworks") == 1
        # one consistent read of the state: the pool adds up whatever the allocator is doing meanwhile
        for kind in ("cpus", "mem_bytes"):
            parts = sum(value(samples, f"tessera_master_{measure}_{kind}") for measure in ("allocated", "offered", "free"))
            assert parts == value(samples, f"tessera_master_capacity_{kind}")
        role_offered = value(samples, "tessera_master_role_offered_cpus", role="web")
        assert role_offered == value(samples, "tessera_master_offered_cpus")
    finally:
        framework.close()
        agent.close()


def test_allocation_rounds_are_counted_and_timed(node: tuple[InProcessMaster, MasterMetrics]) -> None:
    m, metrics = node
    samples = scrape_until(metrics.url,
                           lambda s: (value(s, "tessera_allocator_round_duration_seconds_count") or 0) >= 2)
    observed = value(samples, "tessera_allocator_round_duration_seconds_count")
    assert observed >= 2
    assert value(samples, "tessera_allocator_rounds_total") >= 1
    assert observed <= m.duties.allocation_rounds  # the poller only observes rounds that happened


def test_a_failing_section_is_left_out_and_counted(node: tuple[InProcessMaster, MasterMetrics],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    m, metrics = node

    def broken() -> None:
        raise RuntimeError("status unavailable")

    monkeypatch.setattr(m.replicator, "status", broken)
    samples, types = scrape(metrics.url)
    assert "tessera_raft_term" not in types
    assert value(samples, "tessera_master_is_leader") == 1  # the other sections are still there
    assert value(samples, "tessera_metrics_collect_errors_total", section="raft") == 1


def test_every_exported_family_is_in_the_names_table_and_back(node: tuple[InProcessMaster, MasterMetrics]) -> None:
    m, metrics = node
    op = m.operator()
    op.SetWeight(operator_pb2.SetWeightRequest(role="analytics", weight=2.0), timeout=5)
    limit = [common_pb2.Resource(name=kind, scalar=2) for kind in ("cpus", "mem", "disk", "gpus")]
    op.SetQuota(operator_pb2.SetQuotaRequest(role="analytics", limit=limit), timeout=5)
    with pytest.raises(Exception):  # noqa: B017 - a refused write, so the error counter has a sample
        op.SetWeight(operator_pb2.SetWeightRequest(role="analytics", weight=-2.0), timeout=5)
    samples, _ = scrape(metrics.url)
    assert not [name for name, _ in samples if name.endswith("_created")]  # no `_created` series
    exported = {name for name, _ in samples if name.startswith("tessera_")}
    assert exported - sample_names(MASTER_METRICS) == set()
    # every documented name is served by a master with leader duties, a role and some history
    missing = sample_names(MASTER_METRICS) - exported - {"tessera_metrics_collect_errors_total"}
    assert missing == set()


def test_names_follow_the_conventions() -> None:
    for spec in MASTER_METRICS:
        assert spec.name.startswith("tessera_"), spec.name
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        if spec.kind == "histogram":
            assert spec.name.endswith("_seconds"), spec.name
        if {"mem", "disk"} & set(spec.name.split("_")):
            assert spec.name.endswith("_bytes"), spec.name
        assert "task_id" not in spec.labels and "framework_id" not in spec.labels


def test_only_metrics_is_served(node: tuple[InProcessMaster, MasterMetrics]) -> None:
    _, metrics = node
    base = f"http://{metrics.server.address}"
    with urllib.request.urlopen(base + "/", timeout=5) as resp:
        assert b"/metrics" in resp.read()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(base + "/nope", timeout=5)
    assert info.value.code == 404


def test_stop_joins_every_thread_frees_the_port_and_stops_observing_writes() -> None:
    from tessera.control_plane.core import commands as cmd

    def written(metrics: MasterMetrics) -> float:
        samples = text_string_to_metric_families(metrics.text())
        return next(s.value for f in samples for s in f.samples
                    if s.name == "tessera_master_commit_duration_seconds_count")

    with InProcessMaster(allocation=False) as m:
        metrics = MasterMetrics(m.master, m.duties)
        assert "propose" not in m.master.__dict__  # observed through the write pipeline, not wrapped
        metrics.start()
        port = metrics.port
        assert port > 0 and _metrics_threads()
        scrape(metrics.url)
        m.master.propose([cmd.SetRoleWeight(role="observed", weight=2.0)])
        assert written(metrics) >= 1
        metrics.stop()
        assert _metrics_threads() == []
        seen = written(metrics)
        m.master.propose([cmd.SetRoleWeight(role="unobserved", weight=2.0)])
        assert written(metrics) == seen  # the observer is gone
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        metrics.stop()  # idempotent


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("[::1]:9100", ("::1", 9100)),
    ("metrics.example:9100", ("metrics.example", 9100)),
])
def test_addresses_parse(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "9100", ":9100", "host:", "host:port", "host:70000", "host:-1"])
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_a_taken_port_fails_at_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = MetricsServer(CollectorRegistry(), f"127.0.0.1:{taken.getsockname()[1]}")
        with pytest.raises(OSError):
            server.start()
        server.stop()  # nothing was started: a no-op


@pytest.mark.usefixtures("needs_promtool")
def test_promtool_finds_nothing_to_lint_in_the_exposition(node: tuple[InProcessMaster, MasterMetrics]) -> None:
    m, metrics = node
    m.operator().SetWeight(operator_pb2.SetWeightRequest(role="analytics", weight=2.0), timeout=5)
    proc = subprocess.run(["promtool", "check", "metrics"], input=metrics.text(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr
