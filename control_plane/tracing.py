"""OpenTelemetry for Tessera processes: a TracerProvider whose finished spans land next to the event log
(so `tessera trace TASK_ID` needs no collector), optional OTLP export, and W3C traceparent helpers.

The standard `OTEL_*` variables are the SDK's own to read, never overridden here:
- the resource (`tracing_resource`): `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` win; Tessera only
  fills in what they leave out: `service.name` (tessera-master, tessera-agent, tessera-run),
  `service.instance.id` (the master's `--name`, the agent's hostname) and `service.version` (the installed
  tessera-kernel), so m1, m2 and m3 stay apart in a trace backend;
- the sampler (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`) and the batch processor (`OTEL_BSP_*`) are
  read by the SDK's `TracerProvider` and `BatchSpanProcessor`;
- the exporter (`otlp_export_wanted`): OTLP when `OTEL_TRACES_EXPORTER` names `otlp`, or, when it is unset,
  when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; `none` (or
  `OTEL_SDK_DISABLED=true`) turns the export off. The exporter reads every other `OTEL_EXPORTER_OTLP_*`
  variable itself (headers, timeout, compression, certificates); `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`
  chooses http/protobuf (the `[otlp]` extra) or grpc (when opentelemetry-exporter-otlp-proto-grpc is
  installed). The spans stored next to the event log do not depend on any of these.

A process without an event store reports its spans to the leader with `api.span_reporter.OperatorSpanStore`;
this module imports nothing of `tessera.control_plane.api` (the master's write path imports it).

Tracing never fails the caller: every helper here swallows its own errors (logged at debug level).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import (
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    SERVICE_VERSION,
    OTELResourceDetector,
    Resource,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import StatusCode

from tessera import installed_version
from tessera.control_plane.core.spans import SpanBudget, SpanLimits, take_budget
from tessera.control_plane.eventlog.records import SpanRecord

log = logging.getLogger(__name__)

TASK_ID_ATTRIBUTE = "tessera.task_id"


class SpanStore(Protocol):
    def append_spans(self, spans: Sequence[SpanRecord]) -> None: ...


def _attr_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def span_to_record(span: ReadableSpan) -> SpanRecord:
    """The stored form of a finished span."""
    ctx = span.get_span_context()
    parent = span.parent
    attributes = {k: _attr_value(v) for k, v in (span.attributes or {}).items()}
    resource_attrs = span.resource.attributes if span.resource is not None else {}
    status = span.status.status_code if span.status is not None else StatusCode.UNSET
    return SpanRecord(
        trace_id=f"{ctx.trace_id:032x}" if ctx is not None else "",
        span_id=f"{ctx.span_id:016x}" if ctx is not None else "",
        parent_span_id=f"{parent.span_id:016x}" if parent is not None else "",
        name=span.name,
        service=str(resource_attrs.get(SERVICE_NAME, "")),
        kind=span.kind.name.lower(),
        start_time=(span.start_time or 0) / 1e9,
        end_time=(span.end_time or span.start_time or 0) / 1e9,
        status=status.name,
        attributes=json.dumps(attributes, sort_keys=True, default=str),
        task_id=str(attributes.get(TASK_ID_ATTRIBUTE, "")),
    )


class SpanReporters:
    """The span-report budget of each reporter (a principal, or an agent's host), kept by the serving
    master in memory (soft state: a new leader starts everyone with full buckets). The decision is
    `core.spans.take_budget`; this holds the buckets and the clock. At most `max_reporters` are
    remembered, least recently seen forgotten first (reporters are principals and hosts, so few)."""

    def __init__(self, limits: SpanLimits, clock: Callable[[], float] = time.monotonic,
                 max_reporters: int = 4096) -> None:
        self.limits = limits
        self._clock = clock
        self._max = max_reporters
        self._budgets: OrderedDict[str, SpanBudget] = OrderedDict()
        self._lock = threading.Lock()

    def charge(self, reporter: str, spans: int, nbytes: int) -> None:
        """Take `spans` spans and `nbytes` bytes from the reporter's budget; ResourceExhausted when over."""
        with self._lock:
            budget = take_budget(self._budgets.get(reporter), self.limits, self._clock(), spans, nbytes)
            self._budgets[reporter] = budget
            self._budgets.move_to_end(reporter)
            while len(self._budgets) > self._max:
                self._budgets.popitem(last=False)


class StoreSpanExporter(SpanExporter):
    """Finished spans → `SpanRecord`s → `span_store.append_spans` (which only enqueues)."""

    def __init__(self, span_store: SpanStore) -> None:
        self.span_store = span_store

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            records = [span_to_record(s) for s in spans]
            if records:
                self.span_store.append_spans(records)
            return SpanExportResult.SUCCESS
        except Exception as exc:  # noqa: BLE001 - tracing must never hurt the process
            log.debug("storing %d spans failed: %s", len(spans), exc)
            return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        pass


class CallbackSpanStore:
    """A span store that hands records to a function (e.g. an RPC to the leader); failures are dropped."""

    def __init__(self, send: Callable[[Sequence[SpanRecord]], None]) -> None:
        self._send = send

    def append_spans(self, spans: Sequence[SpanRecord]) -> None:
        try:
            self._send(spans)
        except Exception as exc:  # noqa: BLE001 - best effort
            log.debug("dropping %d spans: %s", len(spans), exc)


def otlp_export_wanted(environ: Mapping[str, str]) -> bool:
    """Whether spans go to an OTLP endpoint, by the standard variables: `OTEL_SDK_DISABLED=true` and
    `OTEL_TRACES_EXPORTER=none` say no; `OTEL_TRACES_EXPORTER=otlp` says yes (the exporter's default
    endpoint is http://localhost:4318); unset, an OTLP endpoint variable says yes. Pure."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip().lower() for e in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()}
    if exporters:
        return "otlp" in exporters
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def otlp_protocol(environ: Mapping[str, str]) -> str:
    """The OTLP protocol asked for (`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`,
    else http/protobuf, the specification's default). Pure."""
    return (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf").strip().lower()


def _otlp_exporter() -> SpanExporter | None:
    if not otlp_export_wanted(os.environ):
        return None
    protocol = otlp_protocol(os.environ)
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        elif protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
        else:
            log.warning("OTLP protocol %r is not supported (http/protobuf or grpc); spans are only stored "
                        "locally", protocol)
            return None
    except ImportError:
        package = "opentelemetry-exporter-otlp-proto-" + ("grpc" if protocol == "grpc" else "http")
        log.warning("OTLP export is configured but %s is not installed (pip install 'tessera-kernel[otlp]'); "
                    "spans are only stored locally", package)
        return None
    try:
        return OTLPSpanExporter()  # every other OTEL_EXPORTER_OTLP_* variable is the exporter's to read
    except Exception as exc:  # noqa: BLE001
        log.warning("OTLP exporter not configured: %s", exc)
        return None


def tracing_resource(service_name: str, instance_id: str | None = None) -> Resource:
    """The resource of this process's spans: what `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` say
    (read by the SDK's own detector), with Tessera's `service.name`, `service.instance.id` and
    `service.version` only for the keys they leave out."""
    ours: dict[str, str] = {SERVICE_NAME: service_name, SERVICE_VERSION: installed_version() or "unknown"}
    if instance_id:
        ours[SERVICE_INSTANCE_ID] = instance_id
    try:
        from_env = OTELResourceDetector().detect().attributes
    except Exception as exc:  # noqa: BLE001 - a malformed OTEL_RESOURCE_ATTRIBUTES must not stop the process
        log.warning("OTEL_RESOURCE_ATTRIBUTES not read: %s", exc)
        from_env = {}
    return Resource.create({k: v for k, v in ours.items() if k not in from_env})


def setup_tracing(service_name: str, span_store: SpanStore | None = None, *, instance_id: str | None = None,
                  set_global: bool = True) -> TracerProvider:
    """A TracerProvider for this process (installed as the global one unless `set_global` is False):
    `tracing_resource(service_name, instance_id)`, the sampler the environment names, the span store and
    OTLP export when the environment asks for it."""
    provider = TracerProvider(resource=tracing_resource(service_name, instance_id))
    if span_store is not None:
        provider.add_span_processor(BatchSpanProcessor(StoreSpanExporter(span_store)))
    otlp = _otlp_exporter()
    if otlp is not None:
        provider.add_span_processor(BatchSpanProcessor(otlp))
    if set_global:
        try:
            trace.set_tracer_provider(provider)
        except Exception as exc:  # noqa: BLE001
            log.debug("global tracer provider not set: %s", exc)
    return provider


def current_traceparent() -> str:
    """The W3C traceparent of the current span ("" when there is none)."""
    try:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier.get("traceparent", "")
    except Exception as exc:  # noqa: BLE001
        log.debug("traceparent not injected: %s", exc)
        return ""


def request_traceparent(context: Any) -> str:
    """The trace a gRPC servicer continues: its server span when the gRPC instrumentation made one,
    else the caller's `traceparent` metadata ("" when neither)."""
    current = current_traceparent()
    if current:
        return current
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent":
            return str(value)
    return ""


def context_from(traceparent: str) -> otel_context.Context | None:
    """The context whose current span is the remote parent named by `traceparent` (None when absent)."""
    if not traceparent:
        return None
    try:
        return propagate.extract({"traceparent": traceparent})
    except Exception as exc:  # noqa: BLE001
        log.debug("bad traceparent %r: %s", traceparent, exc)
        return None


def tracer_records(tracer: trace.Tracer) -> bool:
    """Whether spans of `tracer` can be recorded: False for a no-op tracer, or a proxy while no provider
    is installed. The write path skips building spans (their attributes, contexts and callbacks cost
    about a tenth of a leader's CPU per write) when nothing would record them."""
    if isinstance(tracer, trace.NoOpTracer):
        return False
    if isinstance(tracer, trace.ProxyTracer):
        return not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
    return True


class RecordingCheck:
    """`tracer_records(tracer)`, cheap enough to ask on every write: a proxy tracer's answer can only change
    from no to yes (a global provider is installed once), and asking costs an environment lookup, so a
    "no" is re-checked at most every `interval` seconds; any other tracer's answer never changes."""

    def __init__(self, tracer: trace.Tracer, interval: float = 1.0) -> None:
        self._tracer = tracer
        self._interval = interval
        self._records = tracer_records(tracer)
        self._recheck = isinstance(tracer, trace.ProxyTracer) and not self._records
        self._next = time.monotonic() + interval

    def __call__(self) -> bool:
        if self._recheck and time.monotonic() >= self._next:
            self._records = tracer_records(self._tracer)
            self._recheck = not self._records
            self._next = time.monotonic() + self._interval
        return self._records


def get_tracer(name: str, tracer_provider: trace.TracerProvider | None = None) -> trace.Tracer:
    """A tracer from `tracer_provider`, or from the global provider when None."""
    if tracer_provider is not None:
        return tracer_provider.get_tracer(name)
    return trace.get_tracer(name)
