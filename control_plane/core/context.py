"""The decision context: the only way time, new ids and the leader's identity enter the core.

`decide` is pure except for what it reads from a `Context`: the leader's clock (`now`), its Raft `term`
and address (`leader`), and `new_id(prefix)`, which mints a fresh unique id. Whatever `decide` takes from
the context is written into the events it returns, so `apply` never needs a clock or a random source and
every master computes the same state from the same log.

The shell passes the id source `Master` was built with (its `new_id` constructor argument, like its clock):
by default `tessera.control_plane.runtime.master.new_id`, unique ids from a per-process random prefix and a
counter, except agent ids, which are 128 fresh random bits each (an agent id must not be guessable from
another); tests and simulations pass `sequential_ids()`, a counter that makes every run reproducible.

`limits` are the master's per-principal limits (`core.limits.MasterLimits`, its `--limit` flags): a
leader's configuration, not replicated state, read by `decide` only.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from tessera.control_plane.core.limits import MasterLimits


@dataclass(frozen=True)
class Context:
    """What the leader knows when it decides: its clock, its term, its address, an id source, its limits."""

    now: float
    term: int
    leader: str
    new_id: Callable[[str], str]
    limits: MasterLimits = field(default_factory=MasterLimits)


def sequential_ids(namespace: str = "") -> Callable[[str], str]:
    """A deterministic `new_id`: 'agent-1', 'offer-2', ... (one counter shared by every prefix).

    `namespace` is inserted after the prefix ('offer-b-3') so two id sources used in one test never
    collide.
    """
    counter = itertools.count(1)
    infix = f"{namespace}-" if namespace else ""

    def new_id(prefix: str) -> str:
        return f"{prefix}-{infix}{next(counter)}"

    return new_id
