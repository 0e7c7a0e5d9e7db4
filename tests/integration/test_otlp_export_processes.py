"""OTLP export as a trace backend sees it: three masters and an agent as real processes and two
`tessera run`s, all with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an OTLP/HTTP receiver in this test (a
small HTTP server decoding `ExportTraceServiceRequest` protobufs of opentelemetry-proto) and
`OTEL_SERVICE_NAME` set. Every run's task is one connected trace across the run, the leader and the agent;
every span carries the service name from the environment, the version of the package, and its own
process's `service.instance.id` (each master's name, the agent's hostname). Bounded waits, free ports,
processes killed by PID."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tessera import installed_version
from tests.support.cluster import LocalCluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SERVICE = "tessera-otlp-test"
SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind


@dataclass(frozen=True)
class Received:
    """One span as the receiver decoded it, with its resource's attributes."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


class OtlpReceiver:
    """An OTLP/HTTP endpoint on 127.0.0.1: POST /v1/traces with a protobuf body (gzip or not)."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.requests = 0
        self.bad: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    receiver.bad.append(f"{self.path} {self.headers.get('Content-Type')}")
                    self.send_response(404)
                    self.end_headers()
                    return
                receiver.add(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True)

    def add(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for rs in request.resource_spans:
            resource = _attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(Received(s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name, s.kind,
                                          _attributes(s.attributes), resource))
        with self._lock:
            self.requests += 1
            self.spans.extend(spans)

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.spans)

    def __enter__(self) -> OtlpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def _task_trace(spans: list[Received], task_id: str) -> list[Received]:
    """The spans of the trace the task's launch started (empty while the Accept is not exported)."""
    accepts = [s for s in spans if s.name == "framework.Accept" and s.attributes.get("tessera.task_id") == task_id]
    if not accepts:
        return []
    return [s for s in spans if s.trace_id == accepts[0].trace_id]


def test_masters_agents_and_runs_export_one_connected_trace_per_run_with_their_own_instance_ids(
        tmp_path: Path, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", SERVICE)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=otlp-test")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")  # the SDK's batch processor reads it: export soon
    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.start_all()
        leader = cluster.leader(timeout=60)
        cluster.add_agent(resources="cpus:2;mem:1024")
        cluster.wait_agents(1, timeout=60)
        masters = ",".join(cluster.grpc_addresses())

        runs = []
        for i in (1, 2):
            done = subprocess.run([sys.executable, "-m", "tessera.control_plane.cli.main", "run", "--masters", masters,
                                   "--name", f"otlp-run-{i}", "--cpus", "0.1", "--mem", "16", "--offer-timeout", "60",
                                   "--", "true"], capture_output=True, text=True, timeout=120, env={**os.environ})
            assert done.returncode == 0, done.stdout + done.stderr
            runs.append(done)

        def launched() -> list[str]:
            return sorted({str(s.attributes["tessera.task_id"]) for s in receiver.snapshot()
                           if s.name == "framework.Accept"})

        task_ids = wait_for(lambda: len(launched()) == 2 and launched(), 60, what="both runs' Accept spans exported")

        def complete(task_id: str) -> bool:
            names = {s.name for s in _task_trace(receiver.snapshot(), task_id)}
            return {"framework.Accept", "/tessera.v1.Scheduler/Accept", "master.propose", "raft.commit",
                    "agent.launch_task", "task.run"} <= names

        for task_id in task_ids:
            wait_for(lambda t=task_id: complete(t), 60, what=f"the whole trace of {task_id} exported")
        # every master exports: its server spans of the calls the test's leader search made to each
        wait_for(lambda: {"m1", "m2", "m3"} <= {s.resource.get("service.instance.id") for s in receiver.snapshot()},
                 60, what="spans of every master")

    spans = receiver.snapshot()
    assert receiver.bad == []
    traces = {s.trace_id for t in task_ids for s in _task_trace(spans, t)}
    assert len(traces) == 2, "one trace per run"
    for task_id in task_ids:
        trace = _task_trace(spans, task_id)
        ids = {s.span_id for s in trace}
        roots = [s for s in trace if not s.parent_span_id]
        # connected: one root (the run's own span), every other span's parent in the same trace
        assert len(roots) == 1, [(s.name, s.resource.get("service.instance.id")) for s in roots]
        assert all(s.parent_span_id in ids for s in trace if s.parent_span_id), \
            [(s.name, s.parent_span_id) for s in trace if s.parent_span_id and s.parent_span_id not in ids]
        # every span of the task carries its id in this trace only
        assert {s.trace_id for s in spans if s.attributes.get("tessera.task_id") == task_id} == {trace[0].trace_id}
        by_name: dict[str, list[Received]] = defaultdict(list)
        for s in trace:
            by_name[s.name].append(s)
        # the wire call: the run's CLIENT span and the leader's SERVER span, both with the standard rpc.*
        client, server = (sorted(by_name["/tessera.v1.Scheduler/Accept"], key=lambda s: s.kind != CLIENT))
        assert (client.kind, server.kind) == (CLIENT, SERVER)
        assert server.parent_span_id == client.span_id
        assert server.resource["service.instance.id"] == leader.name
        for rpc in (client, server):
            assert (rpc.attributes["rpc.system"], rpc.attributes["rpc.service"], rpc.attributes["rpc.method"]) == (
                "grpc", "tessera.v1.Scheduler", "Accept")
        # the master's handling and the Raft commit: the leader's, under its own name
        for name in ("master.propose", "raft.commit"):
            assert {s.resource["service.instance.id"] for s in by_name[name]} == {leader.name}, name
        for name in ("agent.launch_task", "task.run"):
            assert {s.resource["service.instance.id"] for s in by_name[name]} == {"a1"}, name
    for s in spans:
        assert s.resource["service.name"] == SERVICE, s
        assert s.resource["service.version"] == installed_version(), s
        assert s.resource["deployment.environment"] == "otlp-test", s
    instances = {s.resource.get("service.instance.id") for s in spans}
    assert {"m1", "m2", "m3", "a1"} <= instances
