"""The metrics port also answers its owner's JSON probes (`MetricsEndpoint.add_probe`): the status code
and body the probe gives, 500 with the error when it raises, never a redirect; `/metrics` stays the
exposition and cannot be replaced."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tessera.control_plane.metrics.server import MetricsEndpoint

pytestmark = pytest.mark.timeout(60)


class _One(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("tessera_test_value", "A test value.", value=1)


def get(url: str) -> tuple[int, str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_probes_answer_with_their_status_and_json_beside_the_metrics() -> None:
    endpoint = MetricsEndpoint(_One())
    state = {"code": 503, "body": {"status": "starting"}}
    endpoint.add_probe("/health", lambda: (state["code"], state["body"]))

    def broken() -> tuple[int, dict[str, Any]]:
        raise RuntimeError("no view")

    endpoint.add_probe("/leader", broken)
    with pytest.raises(ValueError):
        endpoint.add_probe("/metrics", lambda: (200, {}))
    endpoint.start()
    base = endpoint.url.removesuffix("/metrics")
    try:
        code, ctype, text = get(base + "/health")
        assert (code, ctype, json.loads(text)) == (503, "application/json", {"status": "starting"})
        state.update(code=200, body={"status": "serving", "role": "leader"})
        code, _, text = get(base + "/health")
        assert (code, json.loads(text)) == (200, {"status": "serving", "role": "leader"})
        code, _, text = get(base + "/leader")
        assert code == 500 and json.loads(text) == {"status": "error", "error": "no view"}
        code, _, text = get(endpoint.url)
        assert code == 200 and "tessera_test_value 1.0" in text
        code, _, text = get(base + "/")
        assert code == 200 and "/health" in text and "/leader" in text
        assert get(base + "/nothing")[0] == 404
    finally:
        endpoint.stop()
