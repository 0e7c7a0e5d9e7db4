"""The metrics split keeps the layers apart: the agent imports nothing from `tessera.control_plane.runtime`, and the
shared `tessera.control_plane.metrics` package imports neither the runtime nor the agent."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _offending(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{path.relative_to(ROOT)}: {name}" for path in (ROOT / package).rglob("*.py")
                  for name in _imports(path) if name.startswith(forbidden))


def test_the_agent_imports_nothing_from_the_master_runtime() -> None:
    assert _offending("agent", ("tessera.control_plane.runtime",)) == []


def test_the_shared_metrics_package_imports_neither_the_runtime_nor_the_agent() -> None:
    assert _offending("control_plane/metrics", ("tessera.control_plane.runtime", "tessera.agent")) == []


def test_loading_the_agent_metrics_loads_no_runtime_module() -> None:
    code = ("import sys, tessera.agent.metrics; "
            "print(sorted(m for m in sys.modules if m.startswith('tessera.control_plane.runtime')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
