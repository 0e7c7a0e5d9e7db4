"""`core.service_rows`: the one row-building of `tessera service list` and `GET /api/v1/services`."""

from __future__ import annotations

from tessera.control_plane.core.service_rows import service_rows


def test_one_row_per_defined_service_sorted_with_its_status() -> None:
    apps = {"web": {"id": "web", "instances": 3}, "api": {"id": "api"}}
    status = {"web": {"running": 2, "healthy": 1, "version": "v2", "unplaced": "no agent has 8 cpus",
                      "deployment": {"state": "deploying", "reason": "waiting for health"}},
              "gone": {"running": 1}}  # a status without a definition (being removed) is no row
    assert service_rows(apps, status) == [
        {"id": "api", "wanted": 1, "running": 0, "healthy": 0, "version": "", "deployment": "pending",
         "reason": "", "unplaced": ""},
        {"id": "web", "wanted": 3, "running": 2, "healthy": 1, "version": "v2", "deployment": "deploying",
         "reason": "waiting for health", "unplaced": "no agent has 8 cpus"}]


def test_documents_that_are_not_objects_count_as_empty() -> None:
    rows = service_rows({"web": None, "db": ["x"]}, {"web": "garbage", "db": {"deployment": 7}})
    assert [(r["id"], r["wanted"], r["running"], r["deployment"]) for r in rows] == [
        ("db", 1, 0, "pending"), ("web", 1, 0, "pending")]
