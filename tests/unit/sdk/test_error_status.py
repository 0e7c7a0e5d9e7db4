"""tessera.sdk.errors.status_for_error answers what a master answers (tessera.control_plane.api.errors.status_for), and
error_for_status maps it back to the class raised."""

from __future__ import annotations

import pytest

from tessera.control_plane.api.errors import status_for
from tessera.control_plane.core.errors import ResourceExhausted
from tessera.sdk.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    NotLeader,
    PermissionDenied,
    ServerError,
    TesseraError,
    Unauthenticated,
    Unavailable,
    error_for_status,
    status_for_error,
)


@pytest.mark.parametrize("exc", [InvalidRequest("bad"), NotFound("gone"), Conflict("used"),
                                 NotLeader("follower", "m2:5050"), NotLeader("follower", None),
                                 Unauthenticated("who"), PermissionDenied("no"), Unavailable("later"),
                                 ResourceExhausted("full"), ValueError("bug")])
def test_the_sdk_answers_the_masters_status(exc: Exception) -> None:
    code, details, trailers = status_for(exc)
    assert status_for_error(exc) == (code.name, details, dict(trailers).get("tessera-leader"))


@pytest.mark.parametrize("exc", [InvalidRequest("bad"), NotFound("gone"), Conflict("used"),
                                 NotLeader("follower", "m2:5050"), Unauthenticated("who"), PermissionDenied("no"),
                                 Unavailable("later"), ServerError("boom", "UNIMPLEMENTED")])
def test_a_status_maps_back_to_the_class_raised(exc: TesseraError) -> None:
    back = error_for_status(*status_for_error(exc))
    assert type(back) is type(exc) and exc.message in back.message
    if isinstance(exc, ServerError):
        assert isinstance(back, ServerError) and back.status == exc.status
