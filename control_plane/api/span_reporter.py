"""Spans of a process without an event store (an agent, `tessera run`), sent to the leader with
`Operator.ReportSpans` and stored there next to the event log.

Lives on the client side of the API (next to `api.client`) so that `tessera.control_plane.tracing`, which the
master's write path imports, never imports the API package.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tessera.control_plane.api.client import MasterClient
from tessera.control_plane.codec.operator_api import span_to_proto
from tessera.control_plane.eventlog.records import SpanRecord
from tessera.v1 import operator_pb2

log = logging.getLogger(__name__)


class OperatorSpanStore:
    """A span store (`tracing.SpanStore`) that reports to the leader.

    Called from the BatchSpanProcessor's thread, so it never blocks the caller's loop; best effort: a
    batch that does not get through within `timeout` is dropped (logged at debug level)."""

    def __init__(self, masters: Sequence[str], timeout: float = 2.0, security: Any = None) -> None:
        self.client = MasterClient(masters, timeout=timeout, rpc_timeout=timeout, security=security)
        self.timeout = timeout

    def append_spans(self, spans: Sequence[SpanRecord]) -> None:
        try:
            request = operator_pb2.ReportSpansRequest(spans=[span_to_proto(s) for s in spans])
            self.client.call(lambda stub: stub.ReportSpans, request, timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 - best effort
            log.debug("dropping %d spans: %s", len(spans), exc)

    def close(self) -> None:
        self.client.close()
