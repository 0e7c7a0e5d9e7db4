"""The SDK's import direction: it uses the pure core, tls and wire of control_plane, never its CLI or its
gRPC servicers (a framework author's process must not need the master's server code)."""

from __future__ import annotations

import ast
from pathlib import Path

import tessera.sdk as sdk

SDK_DIR = Path(sdk.__file__).parent
ALLOWED = ("tessera.control_plane.core", "tessera.control_plane.tls", "tessera.control_plane.wire", "tessera.control_plane.tracing")


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            module = node.module or ""
            names += [f"{module}.{a.name}" for a in node.names] if module == "tessera.control_plane" else [module]
    return names


def test_the_sdk_imports_only_core_tls_and_wire_from_control_plane() -> None:
    files = sorted(SDK_DIR.rglob("*.py"))
    assert len(files) >= 10
    bad = [f"{path.relative_to(SDK_DIR)}: {name}" for path in files for name in _imports(path)
           if name.startswith("tessera.control_plane") and not name.startswith(ALLOWED)]
    assert bad == []
