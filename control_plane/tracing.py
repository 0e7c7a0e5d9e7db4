"""OpenTelemetry for Tessera processes: a TracerProvider whose finished spans land next to the event log
(so `tessera trace TASK_ID` needs no collector), optional OTLP export, and W3C traceparent helpers.

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
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import StatusCode

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


def _otlp_exporter() -> SpanExporter | None:
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but opentelemetry-exporter-otlp-proto-http is not "
                    "installed; spans are only stored locally")
        return None
    try:
        return OTLPSpanExporter()  # type: ignore[no-any-return]
    except Exception as exc:  # noqa: BLE001
        log.warning("OTLP exporter not configured: %s", exc)
        return None


def setup_tracing(service_name: str, span_store: SpanStore | None = None, *,
                  set_global: bool = True) -> TracerProvider:
    """A TracerProvider for this process (installed as the global one unless `set_global` is False)."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
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
