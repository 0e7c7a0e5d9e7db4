"""The install is reproducible: what writes into committed files, or decides whether CI passes, is pinned
exactly in the ``dev`` extra, and pysyncobj is held to the release whose internals the Raft guards patch.
A fresh ``pip install -e '.[dev]'`` must then regenerate byte-identical protobuf code
(``python ops/gen_protos.py --check``, run by ``.ci/run``)."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from tessera.control_plane.replication.pysyncobj_release import PATCHED_PYSYNCOBJ

ROOT = Path(__file__).resolve().parents[3]
PINNED_EXACTLY = ("grpcio-tools", "mypy-protobuf", "ruff", "mypy")


def _requirements(group: str | None = None) -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] if group is None else project["optional-dependencies"][group]
    return {Requirement(s).name.lower(): Requirement(s) for s in specs}


def test_generators_and_checkers_are_pinned_exactly_and_installed_at_the_pin() -> None:
    dev = _requirements("dev")
    for name in PINNED_EXACTLY:
        spec = list(dev[name].specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"{name} must be pinned with == in the dev extra"
        installed = importlib.metadata.version(name)
        assert installed == spec[0].version, (
            f"{name} {installed} is installed but the dev extra pins {spec[0].version}: "
            "reinstall with pip install -e '.[dev]'")


def test_the_grpc_runtime_range_admits_the_version_the_committed_code_was_generated_with() -> None:
    generated = (ROOT / "proto/tessera/v1/scheduler_pb2_grpc.py").read_text()
    line = next(ln for ln in generated.splitlines() if ln.startswith("GRPC_GENERATED_VERSION"))
    version = line.split("=")[1].strip().strip("'\"")
    tools = list(_requirements("dev")["grpcio-tools"].specifier)[0].version
    assert version == tools, "regenerate with the pinned grpcio-tools: python ops/gen_protos.py"
    runtime = _requirements()["grpcio"].specifier
    assert Version(version) in runtime, f"grpcio {runtime} must admit the generated code's {version}"


def test_pysyncobj_range_is_the_patched_release_only() -> None:
    spec = _requirements("server")["pysyncobj"].specifier
    assert Version(PATCHED_PYSYNCOBJ) in spec
    assert not spec.contains("0.3.18")
    assert not spec.contains("0.3.16")


def test_the_wheel_lists_every_package_of_the_source_folders() -> None:
    """setuptools installs only the packages pyproject.toml names: a new subpackage left out would be
    missing from every install but this editable one."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"tessera", "tessera.v1"} | {
        "tessera." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("control_plane", "agent", "sdk") for init in (ROOT / top).rglob("__init__.py")}
    assert listed == found, f"add to [tool.setuptools] packages: {sorted(found - listed)}; remove: {sorted(listed - found)}"


def test_the_version_is_read_under_the_distribution_name_pyproject_gives() -> None:
    import tessera

    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    assert tessera.DISTRIBUTION == name
    assert tessera.installed_version() is not None, "the test environment installs the project"
