"""The master's collector settings: startup objects frozen, young collections much rarer."""

from __future__ import annotations

import gc

from tessera.control_plane.runtime import gcpolicy


def test_tune_gc_freezes_startup_objects_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    try:
        previous = gcpolicy.tune_gc()
        assert previous == before
        assert gc.get_threshold() == (gcpolicy.YOUNG, gcpolicy.MIDDLE, gcpolicy.OLD)
        assert gc.get_freeze_count() > 1000  # modules, classes, functions of the running interpreter
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1  # cycles made afterwards are still collected
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
