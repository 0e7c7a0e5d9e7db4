"""One launched task is one connected trace: the framework's span (SDK transport) → the gRPC client span of
opentelemetry-instrumentation-grpc (standard `rpc.*` attributes) → the master's `master.propose` →
`raft.commit`, and the task's events in the event log carry that trace id."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tessera.agent.checkpoint import Checkpoint
from tessera.agent.config import AgentConfig, resolve
from tessera.agent.executor.isolation import RlimitIsolator
from tessera.agent.executor.launcher import ProcessLauncher
from tessera.agent.runtime.agent import Agent, run_in_thread
from tessera.control_plane.api.span_reporter import OperatorSpanStore
from tessera.control_plane.eventlog import EventFilter, MemoryEventStore
from tessera.control_plane.tracing import StoreSpanExporter, context_from, current_traceparent
from tessera.sdk import FrameworkInfo, Resources
from tessera.sdk.grpc_transport import GrpcTransport
from tessera.sdk.protocol import AcceptCall, CallHeader, OffersEvent, SubscribedEvent
from tessera.sdk.types import Launch, TaskInfo
from tests.support.inprocess import InProcessMaster
from tests.support.scripted import ScriptedAgent
from tests.unit.inspect.cli import ok, one_line_error, tessera

pytestmark = pytest.mark.timeout(60)


def _wait(what: str, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _provider(service: str, *processors: Any) -> TracerProvider:
    tp = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    for p in processors:
        tp.add_span_processor(p)
    return tp


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


def _launch(transport: GrpcTransport, address: str, task_id: str, command: str = "true") -> Any:
    """Subscribe, wait for an offer, launch `task_id` on it; returns the open event stream."""
    stream = transport.subscribe(address, FrameworkInfo(name="traced"))
    subscribed: SubscribedEvent | None = None
    offer = None
    deadline = time.monotonic() + 10
    while offer is None and time.monotonic() < deadline:
        event = stream.next(0.5)
        if isinstance(event, SubscribedEvent):
            subscribed = event
        elif isinstance(event, OffersEvent) and event.offers:
            offer = event.offers[0]
    assert subscribed is not None and offer is not None
    task = TaskInfo(task_id=task_id, resources=Resources.of(cpus=0.5, mem=64), command=command,
                    agent_id=offer.agent_id)
    header = CallHeader(framework_id=subscribed.framework_id, stream_id=subscribed.stream_id,
                        request_id=f"accept-{task_id}")
    transport.call(address, header, AcceptCall((offer.offer_id,), (Launch((task,)),)), 10.0)
    return stream


def _finished(events: Any, task_id: str) -> bool:
    flt = EventFilter(task_id=task_id, types=("TaskStatusUpdated",))
    return any("TASK_FINISHED" in e.payload for e in events.list(flt=flt, limit=100))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


def test_a_launched_task_is_one_connected_trace(spans: InMemorySpanExporter) -> None:
    events = MemoryEventStore()
    master_tp = _provider("tessera-master", SimpleSpanProcessor(spans), SimpleSpanProcessor(StoreSpanExporter(events)))
    fw_tp = _provider("my-framework", SimpleSpanProcessor(spans), SimpleSpanProcessor(StoreSpanExporter(events)))
    transport = GrpcTransport(tracer_provider=fw_tp)
    with InProcessMaster(events=events, tracer_provider=master_tp) as m:
        assert m.channel is not None
        agent = ScriptedAgent(m.channel, resources="cpus:2;mem:1024").start()
        try:
            assert agent.registered.wait(10)
            stream = _launch(transport, m.grpc_address, "t-traced")
            _wait("the task's terminal status in the event log", lambda: _finished(m.events, "t-traced"))
            stream.cancel()
        finally:
            agent.close()
            transport.close()

        finished = spans.get_finished_spans()
        accept = [s for s in finished if s.name == "framework.Accept"]
        assert len(accept) == 1
        trace_id = accept[0].context.trace_id
        trace_hex = f"{trace_id:032x}"
        in_trace = {s.context.span_id: s for s in finished if s.context.trace_id == trace_id}
        by_name = {s.name: s for s in in_trace.values()}
        propose = [s for s in in_trace.values() if s.name == "master.propose"
                   and "Accept" in _attrs(s).get("tessera.commands", ())]
        assert len(propose) == 1
        # the wire call: the instrumentation's CLIENT span, a child of framework.Accept (which keeps
        # Tessera's attributes), and the parent of the master's handling
        [rpc] = [s for s in in_trace.values() if s.name == "/tessera.v1.Scheduler/Accept"]
        assert rpc.kind.name == "CLIENT" and accept[0].kind.name == "INTERNAL"
        assert rpc.parent is not None and rpc.parent.span_id == accept[0].context.span_id
        assert {k: _attrs(rpc)[k] for k in ("rpc.system", "rpc.service", "rpc.method")} == {
            "rpc.system": "grpc", "rpc.service": "tessera.v1.Scheduler", "rpc.method": "Accept"}
        assert _attrs(rpc)["rpc.grpc.status_code"] == 0 and rpc.resource.attributes[SERVICE_NAME] == "my-framework"
        assert _attrs(accept[0])["tessera.task_id"] == "t-traced"
        assert propose[0].parent is not None and propose[0].parent.span_id == rpc.context.span_id
        assert _attrs(propose[0])["tessera.task_id"] == "t-traced"
        commit = [s for s in in_trace.values() if s.name == "raft.commit"
                  and s.parent is not None and s.parent.span_id == propose[0].context.span_id]
        assert len(commit) == 1
        assert _attrs(commit[0])["tessera.event_index"] > 0
        assert _attrs(commit[0])["raft.index"] > 0 and _attrs(commit[0])["tessera.batch_entries"] >= 1
        assert "framework.Accept" in by_name and by_name["framework.Accept"].resource.attributes[SERVICE_NAME] \
            == "my-framework"

        # the event log: TaskLaunched and every TaskStatusUpdated of the task carry that trace id
        task_events = m.events.list(flt=EventFilter(task_id="t-traced"), limit=100)
        launched = [e for e in task_events if e.type == "TaskLaunched"]
        updated = [e for e in task_events if e.type == "TaskStatusUpdated"]
        assert launched and updated
        assert {e.trace_id for e in launched + updated} == {trace_hex}
        # and the stored spans are found from the task
        assert trace_hex in m.events.traces_for_task("t-traced")
        _wait("the stored spans", lambda: {"framework.Accept", "master.propose", "raft.commit"}
              <= {s.name for s in m.events.spans_for_trace(trace_hex)})

        # `tessera trace TASK_ID` draws it: the span tree, then the trace's events
        result = ok("--masters", m.grpc_address, "trace", "t-traced")
        print(result.output)
        out = result.output
        assert f"trace {trace_hex} (task t-traced)" in out
        assert out.index("framework.Accept") < out.index("master.propose") < out.index("raft.commit")
        assert "TaskLaunched" in out and "TaskStatusUpdated" in out
        as_json = json.loads(ok("--masters", m.grpc_address, "trace", "t-traced", "--json").output)
        assert trace_hex in [t["trace_id"] for t in as_json["traces"]]
        one_line_error(tessera("--masters", m.grpc_address, "trace", "no-such-task"),
                       "no trace found for task no-such-task")


def test_traceparent_helpers_round_trip() -> None:
    tp = _provider("x")
    tracer = tp.get_tracer("t")
    assert current_traceparent() == ""
    assert context_from("") is None
    with tracer.start_as_current_span("outer") as outer:
        parent = current_traceparent()
        assert parent.startswith(f"00-{outer.get_span_context().trace_id:032x}-")
    with tracer.start_as_current_span("inner", context=context_from(parent)) as inner:
        assert inner.get_span_context().trace_id == outer.get_span_context().trace_id
        parent_ctx = getattr(inner, "parent", None)
        assert parent_ctx is not None and parent_ctx.span_id == outer.get_span_context().span_id
    assert context_from("garbage") is not None  # an invalid header yields a context without a parent


def test_the_agent_continues_the_trace_and_reports_its_spans_to_the_leader(
        spans: InMemorySpanExporter, tmp_path: Path) -> None:
    events = MemoryEventStore()
    master_tp = _provider("tessera-master", SimpleSpanProcessor(spans), SimpleSpanProcessor(StoreSpanExporter(events)))
    fw_tp = _provider("my-framework", SimpleSpanProcessor(spans), SimpleSpanProcessor(StoreSpanExporter(events)))
    transport = GrpcTransport(tracer_provider=fw_tp)
    with InProcessMaster(events=events, tracer_provider=master_tp) as m:
        reporter = OperatorSpanStore([m.grpc_address])
        agent_tp = _provider("tessera-agent", SimpleSpanProcessor(spans), BatchSpanProcessor(StoreSpanExporter(reporter)))
        config = resolve(AgentConfig(masters=(m.grpc_address,), data_dir=tmp_path / "agent", heartbeat_interval=0.2,
                                     usage_interval=0.5, status_retry_initial=0.2, status_retry_max=1.0,
                                     reconnect_backoff_max=0.5, resources="cpus:2;mem:1024;disk:1024",
                                     hostname="test-host"))
        checkpoint = Checkpoint.open(tmp_path / "agent" / "agent.db")
        iso = RlimitIsolator()
        agent = Agent(config, checkpoint, ProcessLauncher(config.work_dir, iso), isolator_name=iso.name,
                      tracer_provider=agent_tp)
        thread, _ = run_in_thread(agent)
        try:
            stream = _launch(transport, m.grpc_address, "t-agent", command="true")
            _wait("the task's terminal status in the event log", lambda: _finished(m.events, "t-agent"), 30)
            stream.cancel()
        finally:
            agent.stop("test")
            thread.join(10)
            checkpoint.close()
            transport.close()
        agent_tp.force_flush(5000)

        finished = spans.get_finished_spans()
        accept = [s for s in finished if s.name == "framework.Accept"]
        assert len(accept) == 1
        trace_id = accept[0].context.trace_id
        propose = [s for s in finished if s.name == "master.propose" and "Accept" in _attrs(s)["tessera.commands"]]
        assert len(propose) == 1 and propose[0].context.trace_id == trace_id
        for name in ("agent.launch_task", "task.run"):
            [span] = [s for s in finished if s.name == name]
            assert span.context.trace_id == trace_id, name
            assert span.parent is not None and span.parent.span_id == propose[0].context.span_id, name
            assert _attrs(span)["tessera.task_id"] == "t-agent"
        assert _attrs([s for s in finished if s.name == "task.run"][0])["tessera.task_state"] == "TASK_FINISHED"

        # the agent's spans reached the leader (Operator.ReportSpans) and `tessera trace` draws them
        trace_hex = f"{trace_id:032x}"
        _wait("the agent's spans stored by the leader", lambda: {"agent.launch_task", "task.run"}
              <= {s.name for s in m.events.spans_for_trace(trace_hex)})
        out = ok("--masters", m.grpc_address, "trace", "t-agent").output
        print(out)
        assert "agent.launch_task tessera-agent" in out and "task.run tessera-agent" in out


def test_without_a_recording_tracer_writes_keep_the_callers_trace_and_build_no_spans() -> None:
    from opentelemetry import trace

    from tessera.control_plane.core import commands as cmd
    from tessera.control_plane.tracing import RecordingCheck, tracer_records

    assert not tracer_records(trace.NoOpTracer())
    assert tracer_records(_provider("x").get_tracer("t"))
    assert not RecordingCheck(trace.NoOpTracer())() and RecordingCheck(_provider("x").get_tracer("t"))()
    parent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    with InProcessMaster(tracer_provider=trace.NoOpTracerProvider()) as m:
        result = m.master.propose_async([cmd.SetRoleWeight(role="traced", weight=2.0)],
                                        request_id="req-untraced", traceparent=parent).result(10)
        assert result.outcome == "applied"
        assert m.events.flush(5.0)
        (record,) = m.events.list(limit=10, flt=EventFilter(types=("RoleWeightSet",)))
        assert (record.trace_id, record.span_id) == ("ab" * 16, "cd" * 8)
        assert "req-untraced" not in m.sm.commit_info  # nothing kept for a commit span nobody records
