"""The base collector of masters and agents: sections read at scrape time, a failing one left out."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tessera.control_plane.metrics.specs import SPECS, family

log = logging.getLogger(__name__)

__all__ = ["SectionCollector"]


class SectionCollector(Collector):
    """Base: runs sections, skipping and counting the ones that raise."""

    def __init__(self, version: str) -> None:
        self.version = version
        self._errors: dict[str, int] = {}
        self._errors_lock = threading.Lock()

    def _sections(self) -> Iterator[tuple[str, Callable[[], list[Metric]]]]:
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        build = GaugeMetricFamily("tessera_build_info", SPECS["tessera_build_info"].help, labels=["version"])
        build.add_metric([self.version], 1)
        yield build
        for section, fn in self._sections():
            try:
                families = fn()
            except Exception:  # noqa: BLE001 - one broken section must not fail the scrape
                log.warning("metrics section %s failed", section, exc_info=True)
                with self._errors_lock:
                    self._errors[section] = self._errors.get(section, 0) + 1
                continue
            yield from families
        errors = family("tessera_metrics_collect_errors_total")
        with self._errors_lock:
            for section, count in sorted(self._errors.items()):
                errors.add_metric([section], count)
        yield errors
