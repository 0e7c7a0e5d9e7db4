"""Regenerate (or check) the committed protobuf code under proto/tessera/v1/.

Usage:
    python ops/gen_protos.py          # regenerate *_pb2.py, *_pb2.pyi, *_pb2_grpc.py, *_pb2_grpc.pyi in place
    python ops/gen_protos.py --check  # regenerate into a temporary directory and compare; exit 1 when stale

The generated files are committed so that a plain install needs no code generator; CI runs --check so
that a .proto edited without regenerating fails the build. Generation uses grpcio-tools (bundled protoc)
and mypy-protobuf for typed stubs, both pinned exactly in the `dev` extra: their versions are written into
the generated files, so another release makes --check fail (as it should: bump the pin and regenerate in
one commit).
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = PROTO_ROOT / "tessera" / "v1"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _generate(out_dir: Path) -> list[Path]:
    protos = sorted(PACKAGE_DIR.glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PACKAGE_DIR}")
    # The plugins are scripts installed beside this interpreter: found there even when its virtual
    # environment is not activated, then on PATH.
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    plugin = shutil.which("protoc-gen-mypy", path=search)
    plugin_grpc = shutil.which("protoc-gen-mypy_grpc", path=search)
    if plugin is None or plugin_grpc is None:
        raise SystemExit("protoc-gen-mypy not found: install the dev extra (pip install -e '.[dev]')")
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_grpc}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    subprocess.run(cmd, check=True, cwd=PROTO_ROOT)
    return protos


def _generators() -> str:
    found = []
    for name in ("grpcio-tools", "mypy-protobuf"):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def _generated_names(protos: list[Path]) -> list[str]:
    return [p.stem + suffix for p in protos for suffix in SUFFIXES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the committed code is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        protos = _generate(out)
        names = _generated_names(protos)
        generated_dir = out / "tessera" / "v1"
        if args.check:
            stale = [
                n for n in names
                if not (PACKAGE_DIR / n).exists() or not filecmp.cmp(generated_dir / n, PACKAGE_DIR / n, shallow=False)
            ]
            if stale:
                print("generated protobuf code is stale; run `python ops/gen_protos.py`:", ", ".join(stale))
                print(f"(generated here with {_generators()}; the dev extra in pyproject.toml pins the "
                      "versions the committed files were made with)")
                return 1
            print(f"generated protobuf code is up to date ({len(names)} files)")
            return 0
        for n in names:
            shutil.copyfile(generated_dir / n, PACKAGE_DIR / n)
        print(f"wrote {len(names)} files to {PACKAGE_DIR.relative_to(ROOT)}")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
