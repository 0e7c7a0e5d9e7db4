"""agent/core is pure, like control_plane/core: no I/O, clock, randomness, concurrency or wire library.
Scanned from the source, so a module added later is covered the day it is added."""

from __future__ import annotations

import ast
import pathlib

import tessera.agent.core as agent_core

CORE_DIR = pathlib.Path(agent_core.__file__).parent
ALLOWED = {"__future__", "collections", "dataclasses", "enum", "functools", "hashlib", "itertools", "math",
           "typing", "types", "control_plane", "agent"}
FORBIDDEN_CALLS = {"open", "print", "input", "exec", "eval", "__import__"}


def _modules() -> list[pathlib.Path]:
    files = sorted(CORE_DIR.glob("*.py"))
    assert len(files) >= 3, "the scan must see every agent core module"
    return files


def test_agent_core_imports_only_pure_modules() -> None:
    for path in _modules():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                parts = name.split(".")
                top = parts[1] if parts[0] == "tessera" and len(parts) > 1 else parts[0]
                assert top in ALLOWED, f"{path.name} imports {name}: agent/core does no I/O and reads no clock"
                if top == "agent":
                    assert name.startswith("tessera.agent.core"), f"{path.name} imports {name} from outside tessera.agent.core"
                if top == "control_plane":
                    # tessera.control_plane.wire is sans-IO too (tests/unit/test_wire.py checks it)
                    assert name.startswith(("tessera.control_plane.core", "tessera.control_plane.wire")), f"{path.name} imports {name}"


def test_agent_core_calls_no_io_builtins() -> None:
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in FORBIDDEN_CALLS, f"{path.name} calls {node.func.id}()"
