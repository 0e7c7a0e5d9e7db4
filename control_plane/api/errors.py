"""The one place where domain errors become gRPC status codes.

    InvalidRequest   -> INVALID_ARGUMENT
    NotFound         -> NOT_FOUND
    Conflict         -> FAILED_PRECONDITION (VersionConflict and Deposed with `tessera-conflict` trailing
                        metadata naming which, and the key's version or the lease's term: `wire.conflict_trailers`)
    NotLeader        -> UNAVAILABLE, with the leader's gRPC address in `tessera-leader` trailing metadata
    Unauthenticated  -> UNAUTHENTICATED
    PermissionDenied -> PERMISSION_DENIED
    ResourceExhausted -> RESOURCE_EXHAUSTED (a per-principal or per-peer limit, see core.limits)
    Unavailable      -> UNAVAILABLE
    HistoryPruned    -> OUT_OF_RANGE (a read from an index older than what the event log keeps)
    EventStoreClosed -> UNAVAILABLE (the master's event log is shutting down)
    HistoryError     -> FAILED_PRECONDITION (history that is not here, does not replay, a bad file);
                        PointOutOfRange and AmbiguousTask -> INVALID_ARGUMENT; HistoryUnavailable of
                        pruned history -> OUT_OF_RANGE, like HistoryPruned

Details are cut to `MAX_DETAILS` characters: a message that echoes a hostile request (thousands of role
names) would otherwise exceed the client's 8 KiB metadata limit and reach it as an unrelated
RESOURCE_EXHAUSTED ("received metadata size exceeds soft limit") instead of its own code.

Servicer methods are wrapped with `@grpc_errors`; anything else that escapes is INTERNAL with the
exception logged, so a bug never kills the server and never leaks a traceback to the caller.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from tessera.control_plane.core.errors import (
    Conflict,
    Deposed,
    InvalidRequest,
    NotFound,
    NotLeader,
    PermissionDenied,
    ResourceExhausted,
    TesseraError,
    Unauthenticated,
    Unavailable,
    VersionConflict,
)
from tessera.control_plane.eventlog.errors import (
    AmbiguousTask,
    EventStoreClosed,
    HistoryError,
    HistoryPruned,
    HistoryUnavailable,
    PointOutOfRange,
)
from tessera.control_plane.wire import DEPOSED, LEADER_METADATA_KEY, VERSION_CONFLICT, conflict_trailers

log = logging.getLogger(__name__)

MAX_DETAILS = 1024

_CODES: dict[type[TesseraError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    NotLeader: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}

# The event log's own tree (control_plane/eventlog/errors.py), most specific first; details are str(exc).
_EVENTLOG_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (HistoryPruned, grpc.StatusCode.OUT_OF_RANGE),
    (EventStoreClosed, grpc.StatusCode.UNAVAILABLE),
    (PointOutOfRange, grpc.StatusCode.INVALID_ARGUMENT),
    (AmbiguousTask, grpc.StatusCode.INVALID_ARGUMENT),
    (HistoryError, grpc.StatusCode.FAILED_PRECONDITION),
)

F = TypeVar("F", bound=Callable[..., Any])


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """(code, details, trailing metadata) for an exception raised while serving a call."""
    if isinstance(exc, HistoryUnavailable) and exc.pruned:
        return grpc.StatusCode.OUT_OF_RANGE, str(exc), ()
    for cls, code in _EVENTLOG_CODES:
        if isinstance(exc, cls):
            return code, str(exc), ()
    if isinstance(exc, NotLeader):
        trailers = ((LEADER_METADATA_KEY, exc.leader_hint),) if exc.leader_hint else ()
        return grpc.StatusCode.UNAVAILABLE, exc.message, trailers
    if isinstance(exc, VersionConflict):
        return grpc.StatusCode.FAILED_PRECONDITION, exc.message, conflict_trailers(VERSION_CONFLICT,
                                                                                   exc.current_version)
    if isinstance(exc, Deposed):
        return grpc.StatusCode.FAILED_PRECONDITION, exc.message, conflict_trailers(DEPOSED, exc.lease_term)
    if isinstance(exc, TesseraError):
        for cls in type(exc).__mro__:
            if cls in _CODES:
                return _CODES[cls], exc.message, ()
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}", ()


def abort_with(context: grpc.ServicerContext, exc: BaseException) -> None:
    """End the call with the status for `exc` (raises, as `context.abort` does)."""
    code, details, trailers = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("unexpected error while serving a call", exc_info=exc)
    if trailers:
        context.set_trailing_metadata(trailers)
    if len(details) > MAX_DETAILS:
        details = details[:MAX_DETAILS] + f"... ({len(details) - MAX_DETAILS} more characters)"
    context.abort(code, details)


def grpc_errors(fn: F) -> F:
    """Map domain errors of a servicer method (unary or server-streaming) to status codes."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                yield from fn(self, request, context)
            except Exception as exc:  # noqa: BLE001 - mapped to a status, never leaked
                if _is_abort(exc):
                    raise
                abort_with(context, exc)

        return stream  # type: ignore[return-value]

    @functools.wraps(fn)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Exception as exc:  # noqa: BLE001 - mapped to a status, never leaked
            if _is_abort(exc):
                raise
            abort_with(context, exc)

    return unary  # type: ignore[return-value]


def _is_abort(exc: BaseException) -> bool:
    # grpc's context.abort() raises a bare `Exception()` after recording the status; let it through.
    return type(exc) is Exception
