"""Type-check Tessera's strictly typed parts under their import names: `python ops/typecheck.py`.

The source folders keep the project's layout (control_plane/, agent/, sdk/, proto/tessera/) and become
`tessera.*` only when installed; an editable install maps them with an import hook that mypy cannot
follow. So this lays out `tessera/` as symlinks to the source folders in a temporary directory and runs
`mypy --strict` there on the packages `.ci/run` checks (or those named on the command line), with the
project's mypy configuration, and prints mypy's findings with the source paths.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = {"control_plane": ROOT / "control_plane", "agent": ROOT / "agent", "sdk": ROOT / "sdk",
          "v1": ROOT / "proto" / "tessera" / "v1"}
STRICT = ("tessera.control_plane.core", "tessera.control_plane.allocation", "tessera.sdk", "tessera.control_plane.wire",
          "tessera.control_plane.runtime.duties", "tessera.agent.core")


def main(argv: list[str]) -> int:
    packages = argv or list(STRICT)
    with tempfile.TemporaryDirectory(prefix="tessera-typecheck-") as tmp:
        pkg = Path(tmp) / "tessera"
        pkg.mkdir()
        for name in ("__init__.py", "py.typed"):
            (pkg / name).symlink_to(ROOT / "proto" / "tessera" / name)
        for name, target in LAYOUT.items():
            (pkg / name).symlink_to(target, target_is_directory=True)
        cmd = [sys.executable, "-m", "mypy", "--strict", "--config-file", str(ROOT / "pyproject.toml"),
               *[arg for p in packages for arg in ("-p", p)]]
        env = dict(os.environ, MYPYPATH=tmp)
        done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        out = done.stdout + done.stderr
        for name, target in LAYOUT.items():
            out = out.replace(f"tessera/{name}/", f"{target.relative_to(ROOT)}/")
        sys.stdout.write(out)
        return done.returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
