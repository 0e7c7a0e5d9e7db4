"""tessera.control_plane.wire: the wire facts the agent, the SDK and the operator client share."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tessera.control_plane import wire
from tessera.control_plane.wire import LEADER_METADATA_KEY, Backoff, leader_hint, parse_masters, rounds

ROOT = Path(__file__).resolve().parents[2]


def test_leader_hint_reads_the_trailing_metadata_key_as_text_or_bytes() -> None:
    assert LEADER_METADATA_KEY == "tessera-leader"
    assert leader_hint((("other", "x"), ("tessera-leader", "m2:5050"))) == "m2:5050"
    assert leader_hint((("tessera-leader", b"m3:5050"),)) == "m3:5050"
    assert leader_hint((("tessera-leader", ""),)) is None
    assert leader_hint(None) is None and leader_hint(()) is None


def test_parse_masters_keeps_order_drops_duplicates_and_names_the_bad_address() -> None:
    assert parse_masters("127.0.0.1:5050, m2:5051,127.0.0.1:5050") == ("127.0.0.1:5050", "m2:5051")
    assert parse_masters(["[::1]:5050", " m_2.x-y:1 "]) == ("[::1]:5050", "m_2.x-y:1")
    with pytest.raises(ValueError, match="at least one"):
        parse_masters(" , ")
    for bad in ("nohost", "h:99999", "h:0", "h:p", "a b:5050"):
        with pytest.raises(ValueError, match=f"got {bad!r}"):
            parse_masters(bad)


def test_backoff_grows_caps_and_jitters_downwards_only() -> None:
    b = Backoff(initial=0.1, maximum=0.5, multiplier=2.0, jitter=0.5)
    assert [b.delay(n, 0.0) for n in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert b.delay(3, 0.999) == pytest.approx(0.25, abs=1e-3)  # never below nominal * (1 - jitter)
    assert all(b.delay(n, f) <= b.maximum for n in range(100) for f in (0.0, 0.5, 0.999))
    assert b.delay(10**6, 0.0) == 0.5  # a long outage does not overflow


@pytest.mark.parametrize("kw", [dict(initial=0), dict(initial=2, maximum=1), dict(multiplier=0.5),
                                dict(jitter=1.5), dict(maximum=float("inf"))])
def test_nonsense_backoff_is_a_value_error(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kw)


def test_rounds_grow_once_per_round_over_the_masters() -> None:
    assert [rounds(f, 3) for f in range(1, 10)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert rounds(0, 3) == 0 and rounds(5, 0) == 4


def test_wire_is_sans_io() -> None:
    tree = ast.parse(Path(wire.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"grpc", "time", "random", "threading", "asyncio", "socket", "control_plane", "sdk",
                           "agent"}


def test_every_user_of_a_wire_fact_takes_it_from_wire() -> None:
    """The key, the address rule and the backoff are written once: no other module spells them."""
    offenders = []
    for folder in ("control_plane", "agent", "sdk"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "wire.py" and path.parent.name == "control_plane":
                continue
            text = path.read_text()
            if any(fact in text for fact in ('"tessera-leader"', "class Backoff:", "_ADDRESS_RE = ", "factor**")):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
