"""The services benchmark's smoke run (`tests/bench/bench_services.py --quick`): the whole path it measures
works end to end — 3 masters, emulated agents checking health, `tessera services`, `tessera dns` — and what
it reports that is not a time holds: one event-log entry per health change, and the rolling update never
below its minimum healthy capacity. No figure is asserted (the machine is shared)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_services.py"


def test_the_services_benchmark_runs_its_quick_mode_end_to_end() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=540,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    for stage in ("1+2. 20 instances", "3. rolling updates", "4. DNS update latency", "5. event log"):
        assert stage in out, out
    assert re.search(r"round 1: base all running [\d.]+ s; web all running [\d.]+ s, all healthy [\d.]+ s", out), out
    assert re.search(r"ratio healthy-with-checks / running-without \(medians\): [\d.]+", out), out
    assert re.search(r"fewest ready at any point \d+ \(minimum 10: kept\)", out), out
    # the most alive at once is printed, not asserted: kills go out one call at a time after the launches of
    # the same round are decided, so they can overtake them (docs/benchmarks.md)
    assert re.search(r"not asked to stop at once \d+ \(maximum 24: (kept|BROKEN)\)", out), out
    changes = re.search(r"(\d+) changes of health, (\d+) TaskStatusUpdated events carrying health: 1\.00 entries", out)
    assert changes and changes.group(1) == changes.group(2), out
    assert re.search(r"all 4 samples: median \d+ ms", out), out
    assert "web wanted 20 running 20 healthy 20 (done)" in out, out
