"""The leader duties follow the serving *term*, not a yes/no: a master that loses and regains leadership
between two ticks (term 1, then term 4) must close the old term's streams and start the new term afresh."""

from __future__ import annotations

import pytest

from tessera.control_plane.runtime.leader import leadership_transition


@pytest.mark.parametrize(("served", "term", "expected"), [
    (0, 0, (False, False)),  # a follower stays a follower
    (0, 1, (False, True)),  # elected
    (1, 1, (False, False)),  # still serving in the same term
    (1, 0, (True, False)),  # deposed
    (1, 4, (True, True)),  # deposed and elected again between two ticks: a new term all the same
])
def test_duties_follow_the_serving_term(served: int, term: int, expected: tuple[bool, bool]) -> None:
    assert leadership_transition(served, term) == expected
