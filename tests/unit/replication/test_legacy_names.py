"""A Raft dump or snapshot written before the `tessera.*` rename names the core's classes by their old
modules (the top-level package `control_plane`, its `core.state` for `ClusterState`); a master of this
release still loads it."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap


def test_a_state_pickled_under_the_old_module_names_loads_after_the_state_machine_starts() -> None:
    # Written in a separate interpreter: the old names must not leak into this one's modules.
    script = textwrap.dedent("""
        import pickle, sys
        import tessera.control_plane as cp, tessera.control_plane.core as core
        from tessera.control_plane.core import state, values, resources
        from tessera.control_plane.core.state import ClusterState
        for mod in (cp, core, state, values, resources):
            sys.modules[mod.__name__.removeprefix("tessera.")] = mod
        for mod in (state, values, resources):
            for obj in vars(mod).values():
                if isinstance(obj, type) and obj.__module__ == mod.__name__:
                    obj.__module__ = mod.__name__.removeprefix("tessera.")
        s = ClusterState()
        sys.stdout.buffer.write(pickle.dumps({"format": 1, "state": s}, protocol=pickle.HIGHEST_PROTOCOL))
    """)
    blob = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True).stdout
    old_name = ".".join(("control_plane", "core", "state")).encode()  # spelled so no rename rewrites it
    assert old_name in blob and b"tessera.control_plane" not in blob

    from tessera.control_plane.core.state import ClusterState
    from tessera.control_plane.eventlog import MemoryEventStore
    from tessera.control_plane.runtime.statemachine import MasterStateMachine

    MasterStateMachine(MemoryEventStore())  # what a master builds before its replicator loads a dump
    loaded = pickle.loads(blob)
    assert isinstance(loaded["state"], ClusterState)
    assert loaded["state"].fingerprint() == ClusterState().fingerprint()
