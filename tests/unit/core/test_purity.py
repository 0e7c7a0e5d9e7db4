"""The core is pure: it imports no I/O, clock, randomness, concurrency or wire library, and calls no
I/O builtin. Scanned from the source of every module in control_plane/core, so a new module is covered
the day it is added."""

from __future__ import annotations

import ast
import pathlib
import sys

import tessera.control_plane.core as core_package
from tessera.control_plane.core import apply as apply_module
from tessera.control_plane.core import decide as decide_module
from tessera.control_plane.core import invariants as invariants_module

CORE_DIR = pathlib.Path(core_package.__file__).parent

# What the core may import: pure standard-library modules and itself. Anything else must be argued for.
ALLOWED = {
    "__future__", "collections", "dataclasses", "enum", "functools", "hashlib", "itertools", "math",
    "operator", "re", "types", "typing", "control_plane",
}
# Named explicitly so the failure message says why, and so the allowlist cannot silently grow to them.
FORBIDDEN = {
    "grpc", "google", "protobuf", "pysyncobj", "opentelemetry", "asyncio", "threading", "subprocess",
    "time", "random", "uuid", "os", "io", "socket", "sqlite3", "pathlib", "logging", "datetime",
    "multiprocessing", "concurrent", "signal", "shutil", "tempfile", "secrets", "sqlite_utils", "psutil",
}
FORBIDDEN_CALLS = {"open", "print", "input", "exec", "eval", "compile", "__import__", "breakpoint"}


def _modules() -> list[pathlib.Path]:
    files = sorted(CORE_DIR.rglob("*.py"))
    assert len(files) >= 29, "the scan must see every core module"
    return files


def _top(name: str) -> str:
    """The library a module belongs to; for Tessera's own, its part (`tessera.control_plane.x` -> control_plane)."""
    parts = name.split(".")
    return parts[1] if parts[0] == "tessera" and len(parts) > 1 else parts[0]


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_top(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "use absolute imports in the core"
            found.add(_top(node.module or ""))
    return found


def test_core_modules_import_only_pure_modules() -> None:
    for path in _modules():
        imported = _imports(ast.parse(path.read_text(), str(path)))
        bad = imported & FORBIDDEN
        assert not bad, f"{path.name} imports {sorted(bad)}: the core does no I/O and reads no clock"
        unknown = imported - ALLOWED
        assert not unknown, f"{path.name} imports {sorted(unknown)}, which is not on the core's allowlist"


def test_core_modules_call_no_io_builtins() -> None:
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in FORBIDDEN_CALLS, f"{path.name}:{node.lineno} calls {node.func.id}()"


def test_the_scan_catches_a_forbidden_import() -> None:
    tree = ast.parse("import time\nfrom grpc import aio\nimport os.path\n")
    assert _imports(tree) & FORBIDDEN == {"time", "grpc", "os"}


def test_the_scan_sees_every_module_apply_and_decide_dispatch_to() -> None:
    scanned = {path.resolve() for path in _modules()}
    for table in (apply_module._HANDLERS, decide_module._DECIDERS):
        for function in table.values():
            source = pathlib.Path(sys.modules[function.__module__].__file__ or "").resolve()
            assert source in scanned, f"{function.__module__} is not scanned for purity"


def test_public_surface_is_small() -> None:
    assert decide_module.__all__ == ["Follow", "decide", "decide_each"]
    assert apply_module.__all__ == ["ApplyResult", "apply", "replay"]
    assert invariants_module.__all__ == ["check_invariants"]
