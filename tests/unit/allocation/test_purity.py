"""The allocator is pure: no I/O, clock, randomness, concurrency or wire library, no I/O builtin, and a small
public surface. Scanned from the source of every module in control_plane/allocation, so a new module is
covered the day it is added."""

from __future__ import annotations

import ast
import pathlib

import tessera.control_plane.allocation as allocation_package

PACKAGE_DIR = pathlib.Path(allocation_package.__file__).parent

ALLOWED = {
    "__future__", "collections", "dataclasses", "enum", "functools", "heapq", "itertools", "math",
    "operator", "types", "typing", "control_plane",
}
FORBIDDEN = {
    "grpc", "google", "protobuf", "pysyncobj", "opentelemetry", "asyncio", "threading", "subprocess",
    "time", "random", "uuid", "os", "io", "socket", "sqlite3", "pathlib", "logging", "datetime",
    "multiprocessing", "concurrent", "signal", "shutil", "tempfile", "secrets", "sqlite_utils", "psutil",
}
FORBIDDEN_CALLS = {"open", "print", "input", "exec", "eval", "compile", "__import__", "breakpoint", "hash",
                   "id"}
# Inside control_plane, only the pure core and this package itself.
ALLOWED_INTERNAL = ("tessera.control_plane.core", "tessera.control_plane.allocation")


def _modules() -> list[pathlib.Path]:
    files = sorted(PACKAGE_DIR.glob("*.py"))
    assert len(files) >= 4, "the scan must see every allocation module"
    return files


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "use absolute imports"
            found.add(node.module or "")
    return found


def _top(name: str) -> str:
    """The library a module belongs to; for Tessera's own, its part (`tessera.control_plane.x` -> control_plane)."""
    parts = name.split(".")
    return parts[1] if parts[0] == "tessera" and len(parts) > 1 else parts[0]


def test_allocation_modules_import_only_pure_modules() -> None:
    for path in _modules():
        imported = _imports(ast.parse(path.read_text(), str(path)))
        tops = {_top(name) for name in imported}
        bad = tops & FORBIDDEN
        assert not bad, f"{path.name} imports {sorted(bad)}: the allocator does no I/O and reads no clock"
        unknown = tops - ALLOWED
        assert not unknown, f"{path.name} imports {sorted(unknown)}, which is not on the allowlist"
        internal = [n for n in imported if n.startswith("tessera.")]
        assert all(n.startswith(ALLOWED_INTERNAL) for n in internal), f"{path.name} imports {internal}"


def test_allocation_modules_call_no_io_or_salted_builtins() -> None:
    # hash() of a str is salted per process and id() is an address: neither may order anything
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in FORBIDDEN_CALLS, f"{path.name}:{node.lineno} calls {node.func.id}()"


def test_the_scan_catches_a_forbidden_import() -> None:
    tree = ast.parse("import time\nfrom grpc import aio\nimport random\nfrom tessera.control_plane.api import x\n")
    assert {n.split(".")[0] for n in _imports(tree)} & FORBIDDEN == {"time", "grpc", "random"}
    assert "tessera.control_plane.api" in _imports(tree)


def test_public_surface_is_small() -> None:
    assert set(allocation_package.__all__) == {
        "MIN_ALLOCATABLE_CPUS", "MIN_ALLOCATABLE_MEM", "AgentSnapshot", "AllocationSnapshot", "Allocator",
        "DRFSorter", "FrameworkSnapshot", "RoleSnapshot", "allocate", "dominant_share", "dominant_shares",
        "is_allocatable", "snapshot_from_state",
    }
    for name in allocation_package.__all__:
        assert hasattr(allocation_package, name)


def test_every_module_starts_with_its_docstring() -> None:
    for path in _modules():
        tree = ast.parse(path.read_text(), str(path))
        assert ast.get_docstring(tree), f"{path.name} has no module docstring"
