"""`make`: both drivers (blocking and asyncio) behind one face, for the tests that run every case on each."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tessera.sdk import FrameworkInfo
from tessera.sdk.testing import FakeMaster
from tests.unit.sdk.harness import AsyncHarness, Harness, SyncHarness


@pytest.fixture(params=["sync", "async"])
def make(request: pytest.FixtureRequest) -> Iterator[Any]:
    """`make(fake, info=None, **driver_options)`: a harness (not started) of the parameter's driver; every
    one made is stopped after the test."""
    made: list[Harness] = []

    def factory(fake: FakeMaster | None, info: FrameworkInfo | None = None, **options: Any) -> Harness:
        cls = SyncHarness if request.param == "sync" else AsyncHarness
        h = cls(fake, info, **options)
        made.append(h)
        return h

    yield factory
    for h in made:
        try:
            h.stop()
        finally:
            if isinstance(h, AsyncHarness):
                h.close()
