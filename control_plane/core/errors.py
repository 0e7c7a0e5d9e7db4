"""The one error tree of Tessera.

Every failure a caller can act on is one of these, raised by `decide` (local validation) or reported by
`apply` (a decision that became stale while in flight). They are mapped to gRPC status codes in exactly
one place (`tessera.control_plane.api.errors`); nothing else matches on messages.

    TesseraError
    ├── InvalidRequest    bad input: malformed, negative or non-finite resources, unknown role names...
    ├── NotFound          an id that names nothing (agent, framework, task, offer)
    ├── Conflict          the request is valid but the state forbids it now (stale offer, duplicate id,
    │                     task does not fit, stream id not current)
    │   ├── VersionConflict  a framework-state write whose expected version is not the key's current one
    │   │                    (`key`, `current_version` when known)
    │   └── Deposed          a call from a stream that no longer holds the framework: another instance took
    │                        its lease, or this one reconnected on a newer stream (`lease_term`: the lease's
    │                        term now, when known)
    ├── NotLeader         this master cannot write; `leader_hint` names who can (may be None)
    ├── Unauthenticated
    ├── PermissionDenied
    ├── ResourceExhausted a limit of the caller's principal or peer is reached (frameworks, tasks, calls
    │                     per second, open streams; see `core.limits`); retry later or free something
    └── Unavailable       the quorum cannot answer now (no leader, outcome unknown); retry with the same id
"""

from __future__ import annotations


class TesseraError(Exception):
    """Base of every domain error. `code` is the stable name carried in Rejected events."""

    code = "TesseraError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(TesseraError):
    code = "InvalidRequest"


class NotFound(TesseraError):
    code = "NotFound"


class Conflict(TesseraError):
    code = "Conflict"


class VersionConflict(Conflict):
    """A compare-and-set on a framework-state key failed: its version is not the expected one."""

    code = "VersionConflict"

    def __init__(self, message: str, key: str | None = None, current_version: int | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.current_version = current_version


class Deposed(Conflict):
    """A framework call from a stream that no longer holds the framework's lease."""

    code = "Deposed"

    def __init__(self, message: str, lease_term: int | None = None) -> None:
        super().__init__(message)
        self.lease_term = lease_term


class NotLeader(TesseraError):
    code = "NotLeader"

    def __init__(self, message: str, leader_hint: str | None = None) -> None:
        super().__init__(message)
        self.leader_hint = leader_hint


class Unauthenticated(TesseraError):
    code = "Unauthenticated"


class PermissionDenied(TesseraError):
    code = "PermissionDenied"


class ResourceExhausted(TesseraError):
    code = "ResourceExhausted"


class Unavailable(TesseraError):
    code = "Unavailable"


ERRORS_BY_CODE: dict[str, type[TesseraError]] = {
    cls.code: cls
    for cls in (InvalidRequest, NotFound, Conflict, VersionConflict, Deposed, NotLeader, Unauthenticated,
                PermissionDenied, ResourceExhausted, Unavailable)
}


def error_from_code(code: str, message: str) -> TesseraError:
    """Rebuild the domain error recorded in a Rejected event (unknown codes become Conflict)."""
    return ERRORS_BY_CODE.get(code, Conflict)(message)
