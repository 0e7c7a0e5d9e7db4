"""Module names that pickles written before the `tessera.*` rename still carry.

The replicated state is pickled into Raft dumps and snapshots (pysyncobj's own format, loaded by
pysyncobj on its tick thread) and into the local replicator's snapshot file. A master of an earlier
release wrote them naming the core's classes by their old modules (under the top-level package
`control_plane`: its `core.state`, `core.values`, ...).
`install()` registers those names as aliases of the same modules under `tessera.control_plane.core`,
so such files load after an upgrade and during a rolling one (a snapshot sent by a master not yet
upgraded). Only the pure core's modules are aliased: nothing pickled names any other. New pickles name
the new modules. Remove this when no supported release writes the old names.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import tessera.control_plane as _control_plane
import tessera.control_plane.core as _core

OLD_PREFIX = "control_plane"
NEW_PREFIX = "tessera.control_plane"


def install() -> None:
    """Make the old `<OLD_PREFIX>.core.<module>` names resolve to `tessera.control_plane.core.<module>`."""
    sys.modules.setdefault(OLD_PREFIX, _control_plane)
    sys.modules.setdefault(f"{OLD_PREFIX}.core", _core)
    for info in pkgutil.iter_modules(_core.__path__):
        module = importlib.import_module(f"{NEW_PREFIX}.core.{info.name}")
        sys.modules.setdefault(f"{OLD_PREFIX}.core.{info.name}", module)


def current_name(module: str) -> str:
    """The module a pickled global names today (for unpicklers that check names themselves)."""
    if module == OLD_PREFIX or module.startswith(OLD_PREFIX + "."):
        return "tessera." + module
    return module
