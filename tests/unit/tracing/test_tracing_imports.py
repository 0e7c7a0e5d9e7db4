"""The import circle operator -> master -> tracing -> operator is gone: tracing (and the master's write
path that imports it) loads nothing of `tessera.control_plane.api`; the converters live in `codec`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tessera.control_plane as control_plane

ROOT = Path(control_plane.__file__).parent


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_tracing_names_no_api_module_even_inside_functions() -> None:
    assert not {m for m in _imported(ROOT / "tracing.py") if m.startswith("tessera.control_plane.api")}


def test_loading_tracing_and_the_master_loads_no_api_module() -> None:
    code = ("import sys, tessera.control_plane.tracing, tessera.control_plane.runtime.master; "
            "print(sorted(m for m in sys.modules if m.startswith('tessera.control_plane.api')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_runtime_and_codec_modules_of_the_edges_import_no_api_and_no_grpc() -> None:
    for name in ("agent_intake", "registrations", "subscriptions", "reconcile", "quorum", "state_view"):
        imported = _imported(ROOT / "runtime" / f"{name}.py")
        assert not {m for m in imported if m.startswith(("tessera.control_plane.api", "grpc"))}, name
    imported = _imported(ROOT / "codec" / "operator_api.py")
    assert not {m for m in imported if m.startswith(("tessera.control_plane.api", "tessera.control_plane.runtime", "grpc"))}
