"""The import direction written in docs/architecture.md holds: every module of control_plane/, agent/ and
sdk/ imports, of Tessera's own parts, only itself and the parts its row of the layer table names.

The table is read from the page, so the page and the code cannot drift apart silently: a new import
against the direction fails here, and so does a row that names a part the code does not have."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "architecture.md"
SOURCES = {"control_plane": ROOT / "control_plane", "agent": ROOT / "agent", "sdk": ROOT / "sdk"}
# The exceptions the page states, by file: the master process builds the gRPC servers and the web UI's
# server; the agent's entry point reports its spans with the operator client.
EXCEPTIONS = {("control_plane/runtime/process.py", "tessera.control_plane.api"),
              ("control_plane/runtime/process.py", "tessera.control_plane.web"),
              ("agent/main.py", "tessera.control_plane.api")}
ROW = re.compile(r"^\| `([a-z_.0-9]+)` \| .* \| (.*) \|$")


def layer_table() -> dict[str, set[str] | None]:
    """part -> the parts it may import (None: anything)."""
    rules: dict[str, set[str] | None] = {}
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            allowed = m.group(2).strip()
            rules[m.group(1)] = None if allowed == "anything" else set(re.findall(r"`([a-z_.0-9]+)`", allowed))
    return rules


RULES = layer_table()


def part_of(module: str) -> str:
    """The table's part a module belongs to: the longest row that prefixes its dotted name."""
    best = ""
    for part in RULES:
        if (module == part or module.startswith(part + ".")) and len(part) > len(best):
            best = part
    return best


def module_name(path: Path) -> str:
    top = next(name for name, folder in SOURCES.items() if folder in path.parents)
    rel = path.relative_to(SOURCES[top]).with_suffix("")
    parts = [top, *rel.parts]
    return "tessera." + ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> list[str]:
    """Tessera modules `path` imports, at any depth of the file."""
    names: list[str] = []
    here = module_name(path).split(".")[1:]
    package = here if path.name == "__init__.py" else here[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(["tessera", *package[:len(package) - node.level + 1]])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            # `from tessera.control_plane import wire` imports the module tessera.control_plane.wire
            names += [f"{module}.{a.name}" for a in node.names] if module == "tessera.control_plane" else [module]
    return [n for n in names if n.startswith("tessera.")]


def test_the_layer_table_names_every_part_once_and_only_parts_that_exist() -> None:
    assert {"tessera.v1", "tessera.control_plane.core", "tessera.control_plane.runtime", "tessera.control_plane.api",
            "tessera.sdk", "tessera.agent", "tessera.agent.core"} <= set(RULES)
    for part, allowed in RULES.items():
        for name in (part, *(allowed or ())):
            top, *rest = name.removeprefix("tessera.").split(".")
            folder = ROOT / "proto" / "tessera" / "v1" if top == "v1" else SOURCES[top].joinpath(*rest)
            assert folder.is_dir() or folder.with_suffix(".py").is_file(), f"{name} (row {part}) is not a part"


def test_every_module_imports_along_the_layer_direction() -> None:
    against: list[str] = []
    files = [p for folder in SOURCES.values() for p in sorted(folder.rglob("*.py"))]
    assert len(files) > 100, "the scan must see every module"
    for path in files:
        if path == SOURCES["control_plane"] / "__init__.py":  # the namespace of the parts, no code of its own
            assert imported(path) == [], "control_plane/__init__.py imports nothing of Tessera's"
            continue
        source = part_of(module_name(path))
        assert source, f"{path.relative_to(ROOT)} belongs to no row of the layer table"
        allowed = RULES[source]
        rel = str(path.relative_to(ROOT))
        for name in imported(path):
            if name == "tessera.control_plane":  # the package namespace itself: no code to depend on
                continue
            target = part_of(name) or name
            if allowed is None or target == source or target in allowed or (rel, target) in EXCEPTIONS:
                continue
            against.append(f"{rel} ({source}) imports {name} ({target})")
    assert against == [], "imports against docs/architecture.md's layer table:\n" + "\n".join(against)


def test_the_table_catches_an_import_against_the_direction(tmp_path: Path) -> None:
    # the pure core importing the runtime would be refused
    assert "tessera.control_plane.runtime" not in (RULES["tessera.control_plane.core"] or set())
    assert part_of("tessera.control_plane.runtime.master") == "tessera.control_plane.runtime"
    assert part_of("tessera.agent.core.tasks") == "tessera.agent.core"
    assert part_of("tessera.agent.executor.launcher") == "tessera.agent"
