"""The service framework's documents as the rows of a service list (pure).

The service framework (`tessera services`, `tessera.sdk.services`) keeps, in its key/value state, one
definition per service under `apps/<id>` and one status under `status/<id>` (JSON documents). One row per
defined service, sorted by id, is what `tessera service list --json` prints (`control_plane/cli/services.py`)
and what the web API's `GET /api/v1/services` answers (`control_plane/web/views.py`): both build it here.
A document that is not a JSON object (damaged, or not written yet) counts as empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["service_rows"]


def _object(doc: Any) -> Mapping[str, Any]:
    return doc if isinstance(doc, dict) else {}


def service_rows(apps: Mapping[str, Any], status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each defined service: instances wanted, running, healthy, version, its deployment's state and why."""
    rows = []
    for app_id, doc in sorted(apps.items()):
        st = _object(status.get(app_id))
        dep = _object(st.get("deployment"))
        rows.append({"id": app_id, "wanted": _object(doc).get("instances", 1),
                     "running": st.get("running", 0), "healthy": st.get("healthy", 0),
                     "version": st.get("version", ""), "deployment": dep.get("state", "pending"),
                     "reason": dep.get("reason", ""), "unplaced": st.get("unplaced", "")})
    return rows
