"""Fixtures of the metrics tests: the Debian tools some of them run. A missing tool fails the test with
the package to install (.ci/run installs them); it is never a skip."""

from __future__ import annotations

import shutil

import pytest


def _need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"`{tool}` is not installed: apt-get install -y {package}")


@pytest.fixture
def needs_promtool() -> None:
    _need("promtool", "prometheus")


@pytest.fixture
def needs_systemd_analyze() -> None:
    _need("systemd-analyze", "systemd")
