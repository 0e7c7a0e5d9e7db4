"""Helpers for the metrics tests: scrape over real HTTP and look samples up by name and labels."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> tuple[Samples, dict[str, str]]:
    """(samples, family name -> type) of one GET of `url`."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        body = resp.read().decode()
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(body):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def scrape_until(url: str, ok: Callable[[Samples], bool], timeout: float = 10.0) -> Samples:
    """Scrape until `ok(samples)` (the cluster converges in the background); the last scrape otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        samples, _ = scrape(url)
        if ok(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)
