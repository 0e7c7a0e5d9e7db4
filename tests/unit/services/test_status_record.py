"""The service framework's status record always fits in one framework-state value: an app with more
instances than fit keeps exact counts and as many instances as fit, and says how many it left out."""

from __future__ import annotations

import json
from typing import Any

from tessera.control_plane.core.limits import MAX_STATE_VALUE_LENGTH
from tessera.sdk.services.controller import status_text


def status(instances: int) -> dict[str, Any]:
    return {"id": "web", "version": "v1", "wanted": instances, "running": instances, "healthy": instances,
            "deployment": {"version": "v1", "state": "done"}, "history": [],
            "instances": [{"task_id": f"web.v1.{i:08x}", "version": "v1", "agent_id": f"agent-{i % 50:032x}",
                           "hostname": f"127.100.0.{i % 50}", "attributes": {}, "state": "TASK_RUNNING",
                           "healthy": True, "killing": False, "launched_at": 1.5e9 + i, "ever_ready": True}
                          for i in range(instances)]}


def test_a_small_record_is_written_whole() -> None:
    record = status(10)
    assert json.loads(status_text(record)) == record


def test_a_record_of_500_instances_keeps_its_counts_and_the_instances_that_fit() -> None:
    record = status(500)
    assert len(json.dumps(record).encode()) > MAX_STATE_VALUE_LENGTH  # whole, it would be refused
    text = status_text(record)
    assert len(text.encode()) <= MAX_STATE_VALUE_LENGTH
    written = json.loads(text)
    kept = written["instances"]
    assert (written["wanted"], written["running"], written["healthy"]) == (500, 500, 500)
    assert 0 < len(kept) < 500 and written["instances_omitted"] == 500 - len(kept)
    assert kept == record["instances"][: len(kept)]  # the first by task id, unchanged


def test_the_limit_is_honoured_exactly_at_any_size() -> None:
    for instances in (1, 7, 40, 41, 200):
        for limit in (2_000, 5_000, 9_999):
            text = status_text(status(instances), limit=limit)
            assert len(text.encode()) <= limit, (instances, limit)
            written = json.loads(text)
            assert len(written["instances"]) + written.get("instances_omitted", 0) == instances
