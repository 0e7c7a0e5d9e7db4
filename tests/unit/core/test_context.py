from __future__ import annotations

import dataclasses

import pytest

from tessera.control_plane.core.context import Context, sequential_ids


def test_sequential_ids_are_reproducible_and_unique_across_prefixes() -> None:
    first, second = sequential_ids(), sequential_ids()
    made = [first("agent"), first("offer"), first("agent")]
    assert made == ["agent-1", "offer-2", "agent-3"]
    assert [second("agent"), second("offer"), second("agent")] == made


def test_namespaced_id_sources_never_collide() -> None:
    a, b = sequential_ids("a"), sequential_ids("b")
    assert {a("offer"), a("offer")}.isdisjoint({b("offer"), b("offer")})


def test_context_is_frozen() -> None:
    ctx = Context(now=1.0, term=1, leader="m1", new_id=sequential_ids())
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.now = 2.0  # type: ignore[misc]
