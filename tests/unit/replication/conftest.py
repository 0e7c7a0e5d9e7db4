"""The parametrized ``cluster`` fixture: the same contract runs against LocalReplicator, a one-node
Raft cluster and a three-node Raft cluster inside this process (free 127.0.0.1 ports), and the three-node
one again with the apply thread (``ReplicationConfig.apply_thread``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import KINDS, Cluster


@pytest.fixture(params=KINDS)
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(request.param, tmp_path)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def raft3(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster("raft3", tmp_path)
    try:
        yield c
    finally:
        c.stop()
