"""The errors a framework sees, and the one place where gRPC status codes become them.

The SDK shares Tessera's error tree (`tessera.control_plane.core.errors`), so the error a master raises in
`decide` is the very class a scheduler catches, and `Resources` arithmetic raises the same
`InvalidRequest`. Two classes are the SDK's own: `ServerError` (the master failed or does not
implement the call) and `DriverStopped` (a local error: the driver cannot make calls any more).

    TesseraError
    ├── InvalidRequest    INVALID_ARGUMENT, OUT_OF_RANGE: the request is malformed; do not retry it
    ├── NotFound          NOT_FOUND: an id names nothing (offer, task, framework, status uuid)
    ├── Conflict          FAILED_PRECONDITION, ALREADY_EXISTS, ABORTED: valid, but the state forbids it
    │                     now (offer gone, task id used, tasks do not fit, stream no longer current)
    │   ├── VersionConflict  a `driver.kv` write expected another version of its key; `key` and
    │   │                    `current_version` say which and what it is now (re-read and decide again)
    │   └── Deposed          this instance no longer holds the framework: another instance took its lease
    │                        (`lease_term`: the term now); its calls are refused from then on
    ├── NotLeader         UNAVAILABLE with `tessera-leader` metadata; `leader_hint` names the leader
    ├── Unauthenticated   UNAUTHENTICATED
    ├── PermissionDenied  PERMISSION_DENIED
    ├── Unavailable       UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, CANCELLED: the outcome is
    │                     unknown; the driver retries with the same request id until its call deadline
    ├── ServerError       INTERNAL, UNKNOWN, UNIMPLEMENTED, DATA_LOSS: the master failed or cannot do it
    └── DriverStopped     local: the driver was stopped, or the master ended the framework for good

Callers match on classes, never on messages. `error_for_status` is the only code-to-class mapping (a
FAILED_PRECONDITION is a VersionConflict or Deposed when the master's `tessera-conflict` trailing metadata
says so, `tessera.control_plane.wire.conflict_detail`); `status_for_error` and `conflict_for_error` are its
inverse (what a master answers for an error: `tessera.sdk.testing`'s gRPC fake uses them).
"""

from __future__ import annotations

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
from tessera.control_plane.wire import DEPOSED, VERSION_CONFLICT

__all__ = [
    "Conflict",
    "Deposed",
    "DriverStopped",
    "InvalidRequest",
    "NotFound",
    "NotLeader",
    "PermissionDenied",
    "REFUSED",
    "RETRYABLE",
    "ServerError",
    "TesseraError",
    "Unauthenticated",
    "Unavailable",
    "VersionConflict",
    "conflict_for_error",
    "error_for_status",
    "status_for_error",
]


class ServerError(TesseraError):
    """The master answered with a status that is not a domain error (a bug, or an unsupported call)."""

    code = "ServerError"

    def __init__(self, message: str, status: str = "INTERNAL") -> None:
        super().__init__(message)
        self.status = status


class DriverStopped(TesseraError):
    """A call on a driver that is stopped, or whose framework the master refused or removed for good."""

    code = "DriverStopped"


# Errors after which the same request (same request id) may be sent again: the master may or may not
# have applied it, and the log de-duplicates by request id.
RETRYABLE: tuple[type[TesseraError], ...] = (NotLeader, Unavailable)

# Definite refusals: the master decided against the call, so it was NOT applied. Any other failure (a call
# that ran out of `call_timeout`, a ServerError, the driver stopping) may have been applied: settle it by
# reconciling (`driver.reconcile(task_ids)`), never by assuming it failed.
REFUSED: tuple[type[TesseraError], ...] = (InvalidRequest, NotFound, Conflict, Unauthenticated, PermissionDenied)

_BY_STATUS: dict[str, type[TesseraError]] = {
    "INVALID_ARGUMENT": InvalidRequest,
    "OUT_OF_RANGE": InvalidRequest,
    "NOT_FOUND": NotFound,
    "FAILED_PRECONDITION": Conflict,
    "ALREADY_EXISTS": Conflict,
    "ABORTED": Conflict,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
    "UNAVAILABLE": Unavailable,
    "DEADLINE_EXCEEDED": Unavailable,
    "RESOURCE_EXHAUSTED": Unavailable,
    "CANCELLED": Unavailable,
}


def error_for_status(status: str, details: str, leader_hint: str | None = None,
                     conflict: tuple[str, int | None] | None = None) -> TesseraError:
    """The SDK error for a gRPC status code name (`grpc.StatusCode.X.name`), its details, the
    `tessera-leader` trailing metadata if any and the conflict the trailing metadata names if any
    (`tessera.control_plane.wire.conflict_detail`)."""
    message = details or status
    if status == "UNAVAILABLE" and leader_hint:
        return NotLeader(message, leader_hint)
    if status == "FAILED_PRECONDITION" and conflict is not None:
        kind, number = conflict
        if kind == VERSION_CONFLICT:
            return VersionConflict(message, current_version=number)
        if kind == DEPOSED:
            return Deposed(message, lease_term=number)
    cls = _BY_STATUS.get(status)
    if cls is None:
        return ServerError(f"{status}: {message}" if details else status, status)
    return cls(message)


# The status code a master answers with for each error class (most specific class first).
_STATUS_OF: tuple[tuple[type[TesseraError], str], ...] = (
    (InvalidRequest, "INVALID_ARGUMENT"),
    (NotFound, "NOT_FOUND"),
    (Conflict, "FAILED_PRECONDITION"),
    (NotLeader, "UNAVAILABLE"),
    (Unauthenticated, "UNAUTHENTICATED"),
    (PermissionDenied, "PERMISSION_DENIED"),
    (ResourceExhausted, "RESOURCE_EXHAUSTED"),
    (Unavailable, "UNAVAILABLE"),
)


def status_for_error(exc: BaseException) -> tuple[str, str, str | None]:
    """(status code name, details, leader hint) a master answers for `exc`; `error_for_status` maps it back
    to the same class."""
    if isinstance(exc, NotLeader):
        return "UNAVAILABLE", exc.message, exc.leader_hint or None
    if isinstance(exc, ServerError):
        return exc.status, exc.message, None
    if isinstance(exc, TesseraError):
        for cls, status in _STATUS_OF:
            if isinstance(exc, cls):
                return status, exc.message, None
    return "INTERNAL", f"internal error: {type(exc).__name__}", None


def conflict_for_error(exc: BaseException) -> tuple[str, int | None] | None:
    """The conflict a master names in its trailing metadata for `exc` (`wire.conflict_trailers`), if any."""
    if isinstance(exc, VersionConflict):
        return VERSION_CONFLICT, exc.current_version
    if isinstance(exc, Deposed):
        return DEPOSED, exc.lease_term
    return None
