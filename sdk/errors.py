"""The errors a framework sees, and the one place where gRPC status codes become them.

The SDK shares Tessera's error tree (`control_plane.core.errors`), so the error a master raises in
`decide` is the very class a scheduler catches, and `Resources` arithmetic raises the same
`InvalidRequest`. Two classes are the SDK's own: `ServerError` (the master failed or does not
implement the call) and `DriverStopped` (a local error: the driver cannot make calls any more).

    TesseraError
    ├── InvalidRequest    INVALID_ARGUMENT, OUT_OF_RANGE: the request is malformed; do not retry it
    ├── NotFound          NOT_FOUND: an id names nothing (offer, task, framework, status uuid)
    ├── Conflict          FAILED_PRECONDITION, ALREADY_EXISTS, ABORTED: valid, but the state forbids it
    │                     now (offer gone, task id used, tasks do not fit, stream no longer current)
    ├── NotLeader         UNAVAILABLE with `tessera-leader` metadata; `leader_hint` names the leader
    ├── Unauthenticated   UNAUTHENTICATED
    ├── PermissionDenied  PERMISSION_DENIED
    ├── Unavailable       UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, CANCELLED: the outcome is
    │                     unknown; the driver retries with the same request id until its call deadline
    ├── ServerError       INTERNAL, UNKNOWN, UNIMPLEMENTED, DATA_LOSS: the master failed or cannot do it
    └── DriverStopped     local: the driver was stopped, or the master ended the framework for good

Callers match on classes, never on messages. `error_for_status` is the only code-to-class mapping.
"""

from __future__ import annotations

from control_plane.core.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    NotLeader,
    PermissionDenied,
    TesseraError,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "Conflict",
    "DriverStopped",
    "InvalidRequest",
    "NotFound",
    "NotLeader",
    "PermissionDenied",
    "RETRYABLE",
    "ServerError",
    "TesseraError",
    "Unauthenticated",
    "Unavailable",
    "error_for_status",
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


def error_for_status(status: str, details: str, leader_hint: str | None = None) -> TesseraError:
    """The SDK error for a gRPC status code name (`grpc.StatusCode.X.name`), its details and the
    `tessera-leader` trailing metadata if any."""
    message = details or status
    if status == "UNAVAILABLE" and leader_hint:
        return NotLeader(message, leader_hint)
    cls = _BY_STATUS.get(status)
    if cls is None:
        return ServerError(f"{status}: {message}" if details else status, status)
    return cls(message)
