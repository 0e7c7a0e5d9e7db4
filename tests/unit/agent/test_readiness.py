"""The agent's `/health` and systemd status line (pure): 200 only while it serves, registered or not."""

from __future__ import annotations

from tessera.agent.main import health_response, status_line


def test_health_is_200_while_serving_even_when_not_registered() -> None:
    assert health_response("serving", False, "a1") == (200, {"status": "serving", "hostname": "a1",
                                                             "registered": False})
    assert health_response("serving", True, "a1")[0] == 200


def test_health_is_503_while_starting_or_stopping() -> None:
    assert health_response("starting", False, "a1")[0] == 503
    assert health_response("stopping", True, "a1") == (503, {"status": "stopping", "hostname": "a1",
                                                             "registered": True})


def test_status_line_says_whether_registered() -> None:
    assert status_line(True) == "registered with the leader"
    assert status_line(False) == "not registered; connecting to the masters"
