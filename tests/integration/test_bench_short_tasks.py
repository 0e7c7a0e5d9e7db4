"""The short-tasks benchmark's smoke run (`tests/bench/bench_short_tasks.py --quick`): 3 masters, 4 emulated
agents of 8 cpus, the SDK's batch framework running 4 x 32 tasks of 0.5 s. What is checked is correctness,
not speed (the machine is shared): every task finished, and U is the figure the real times give."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_short_tasks.py"


def test_the_short_tasks_benchmark_runs_every_task_and_computes_u_from_its_times() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=360,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    line = re.search(r"emulated t=0\.5 s: (\d+)/(\d+) tasks on (\d+) slots in ([\d.]+) s \(ideal ([\d.]+) s\): "
                     r"U = ([\d.]+) %, (\d+) tasks/s end to end", out)
    assert line, out
    finished, tasks, slots, wall, ideal, u, rate = line.groups()
    assert int(slots) == 32 and int(tasks) == 4 * 32 and int(finished) == int(tasks), out
    assert float(ideal) == pytest.approx(4 * 0.5)
    # U = N t / (P wall), from the wall the run measured (printed to 0.1 s, U to 0.1 %)
    assert float(u) == pytest.approx(100 * int(tasks) * 0.5 / (int(slots) * float(wall)), rel=0.05, abs=0.2)
    assert 0 < float(u) <= 100
    assert int(rate) == pytest.approx(int(tasks) / float(wall), rel=0.05, abs=1)
    assert re.search(r"calls .*\bAccept \d+ x", out), out  # the per-call breakdown (sorted by time spent)
    assert "128 succeeded, 0 failed" in out, out
    assert re.search(r"\| emulated \| 0\.5 s \| 32 \| 128 \| [\d.]+ s \| 2\.0 s \| [\d.]+ % \| \d+ \(64\) \|", out), out
    assert re.search(r"task ended -> next offers callback \d+ ms", out), out  # the piece-by-piece view
    assert "Reuther et al. 2017" in out, out
