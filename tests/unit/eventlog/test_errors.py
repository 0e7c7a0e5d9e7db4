"""The event log's one error tree and its one translation to status codes (control_plane/api/errors.py)."""

from __future__ import annotations

import grpc
import pytest

from tessera.control_plane.api.errors import status_for
from tessera.control_plane.eventlog.errors import (
    AmbiguousTask,
    EventFileError,
    EventLogError,
    EventStoreClosed,
    HistoryError,
    HistoryPruned,
    HistoryUnavailable,
    PointOutOfRange,
    ReplayError,
)

CASES = [
    (HistoryPruned(42), grpc.StatusCode.OUT_OF_RANGE),
    (HistoryUnavailable("history before index 7 was pruned", 6, pruned=True), grpc.StatusCode.OUT_OF_RANGE),
    (HistoryUnavailable("events 3..5 are missing from this log"), grpc.StatusCode.FAILED_PRECONDITION),
    (PointOutOfRange("index 9 is beyond the last event of this log (3)"), grpc.StatusCode.INVALID_ARGUMENT),
    (AmbiguousTask("web-1", ["fw-a", "fw-b"]), grpc.StatusCode.INVALID_ARGUMENT),
    (ReplayError("event 4 has type 'Future', unknown to this version"), grpc.StatusCode.FAILED_PRECONDITION),
    (EventFileError("x.db: not a file"), grpc.StatusCode.FAILED_PRECONDITION),
    (EventStoreClosed(), grpc.StatusCode.UNAVAILABLE),
]


@pytest.mark.parametrize(("error", "code"), CASES, ids=[f"{type(e).__name__}-{c.name}" for e, c in CASES])
def test_each_event_log_error_has_one_status_code_with_its_own_sentence(error: Exception,
                                                                         code: grpc.StatusCode) -> None:
    assert isinstance(error, EventLogError)
    got, details, trailers = status_for(error)
    assert (got, details, trailers) == (code, str(error), ())


def test_the_history_errors_are_one_tree_under_the_event_log_error() -> None:
    for cls in (PointOutOfRange, HistoryUnavailable, AmbiguousTask, ReplayError, EventFileError):
        assert issubclass(cls, HistoryError) and issubclass(cls, EventLogError)
    assert issubclass(HistoryPruned, EventLogError) and not issubclass(HistoryPruned, HistoryError)
