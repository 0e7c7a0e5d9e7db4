"""Small seeded fault-injection runs on real processes (the CI part of the suite; long runs are
`python -m tests.faults.run`, see docs/reliability.md). Each run starts a quorum behind Raft proxies,
real agents and two recording frameworks, injects a dozen seeded faults and checks the whole history.

Each run is its own process (`python -m tests.faults.run`): the harness forks masters and agents while
polling them over gRPC, which needs gRPC's fork handlers off before grpc is first imported, and this
test process has imported it long before. A failure message is the run's summary: every violation,
the seed and the command that replays the same fault schedule.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.timeout(280)
@pytest.mark.parametrize(("masters", "faults", "seed"), [(3, 12, 7), (5, 10, 11)])
def test_history_holds_every_property_under_seeded_faults(tmp_path: Path, masters: int, faults: int,
                                                          seed: int) -> None:
    cmd = [sys.executable, "-m", "tests.faults.run", "--masters", str(masters), "--agents", "3",
           "--frameworks", "2", "--faults", str(faults), "--seed", str(seed), "--keep", str(tmp_path / "run"),
           "--quiet"]
    env = {**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "false", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=260, env=env,
                          cwd=Path(__file__).resolve().parents[2])
    summary = done.stdout + done.stderr[-4000:]
    print(summary)
    assert done.returncode == 0, summary
    assert f"seed {seed}: {faults} faults in" in done.stdout, summary
    assert "all properties hold" in done.stdout, summary
    launched = re.search(r"tasks_launched (\d+)", done.stdout)
    assert launched is not None and int(launched.group(1)) > 0, summary  # the workload really ran
