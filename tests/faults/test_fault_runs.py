"""Small seeded fault-injection runs on real processes (the CI part of the suite; long runs are
`python -m tests.faults.run`, see docs/reliability.md). Each run starts a quorum behind Raft proxies,
real agents and two recording frameworks, injects a dozen seeded faults and checks the whole history.
A failure message holds the seed and the command that replays the same fault schedule."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.run import RunConfig, run

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("masters", "faults", "seed"), [(3, 12, 7), (5, 10, 11)])
def test_history_holds_every_property_under_seeded_faults(tmp_path: Path, masters: int, faults: int,
                                                          seed: int) -> None:
    result = run(RunConfig(masters=masters, agents=3, frameworks=2, faults=faults, seed=seed,
                           root=tmp_path / "run", verbose=False))
    print(result.summary())
    assert len(result.faults) == faults, result.summary()
    assert result.report.stats["tasks_launched"] > 0, result.summary()
    assert result.ok, result.summary()
