"""tessera.control_plane.wire: the wire facts the agent, the SDK and the operator client share."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tessera.control_plane import wire
from tessera.control_plane.wire import (
    LEADER_METADATA_KEY,
    Backoff,
    DialPlan,
    leader_hint,
    parse_masters,
    rounds,
)

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
    """The key, the address rule, the backoff and the agents' capability name are written once: no other
    module spells them."""
    offenders = []
    for folder in ("control_plane", "agent", "sdk"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "wire.py" and path.parent.name == "control_plane":
                continue
            text = path.read_text()
            if any(fact in text for fact in ('"tessera-leader"', "class Backoff:", "_ADDRESS_RE = ", "factor**",
                                             '"BATCHED_MESSAGES"')):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


# ---- DialPlan: the one choice of the next master -------------------------------------------------------
# The agent's link, the SDK's session, the operator client and `tessera events --follow` each chose the
# next master their own way; where they differed, the rule kept is pinned here by a test that fails on
# the other (see DialPlan's docstring for why each was kept).

B = Backoff(initial=0.1, multiplier=2, maximum=0.4, jitter=0.5)


def dials(plan: DialPlan, address: str, answers: list[str | None], *, fraction: float = 0.0) -> list[tuple[str, float]]:
    """Dial on from `address`, each dial refused with the next of `answers` (a leader hint or None)."""
    out = []
    for hint in answers:
        d = plan.after(address, healthy=False, leader_hint=hint, fraction=fraction)
        out.append((d.address, round(d.delay, 3)))
        address = d.address
    return out


def test_the_walk_goes_in_list_order_each_master_once_at_each_wait_before_it_doubles() -> None:
    plan = DialPlan(["m1", "m2", "m3"], B)
    assert plan.first() == wire.Dial("m1", 0.0, "first")
    # After the first (free) dial every master is tried once at the initial wait, then once at each
    # doubled wait (the SDK's session used to double after two: m1 at 0.2 in the third place).
    assert dials(plan, "m1", [None] * 10) == [("m2", 0.1), ("m3", 0.1), ("m1", 0.1), ("m2", 0.2), ("m3", 0.2),
                                             ("m1", 0.2), ("m2", 0.4), ("m3", 0.4), ("m1", 0.4), ("m2", 0.4)]
    # jitter only shortens the wait, so `maximum` is the cap
    assert plan.after("m2", healthy=False, leader_hint=None, fraction=0.999).delay == pytest.approx(0.2, abs=1e-3)


def test_a_hint_is_followed_at_once_but_one_right_after_such_a_hop_waits() -> None:
    plan = DialPlan(["m1", "m2"], B)
    plan.first()
    # Two masters whose stale hints point at each other: every other dial waits, and the waits grow
    # because a refusal with a hint is a failure too. (The agent's plan used to make len(masters) + 1
    # immediate hops in a row; the operator client hopped at once without end.)
    pingpong = dials(plan, "m1", ["m2", "m1", "m2", "m1", "m2", "m1", "m2", "m1"])
    assert pingpong == [("m2", 0.0), ("m1", 0.1), ("m2", 0.0), ("m1", 0.2), ("m2", 0.0), ("m1", 0.4),
                        ("m2", 0.0), ("m1", 0.4)]


def test_a_hint_is_a_detour_after_which_the_walk_resumes_where_it_left_off() -> None:
    plan = DialPlan(["m1", "m2", "m3"], B)
    plan.first()  # m1
    # m1 names m3; m3 refuses without a hint: the walk goes on to m2, which it has not tried (the agent's
    # plan and the operator client used to go to the master after m3, m1, that had just misled them).
    assert dials(plan, "m1", ["m3", None, None]) == [("m3", 0.0), ("m2", 0.1), ("m3", 0.1)]


def test_after_a_healthy_stream_the_next_master_is_tried_after_the_initial_wait() -> None:
    plan = DialPlan(["m1", "m2", "m3"], Backoff(initial=0.1, multiplier=2, maximum=5, jitter=0))
    plan.first()
    dials(plan, "m1", [None] * 6)  # the wait has grown
    assert plan.failures == 6
    # The stream to m1 served, then ended: the failures start again, and the walk goes on to m2 (the
    # agent's plan used to dial m1 again; a dead or frozen m1 then cost a dial or a silence timeout).
    d = plan.after("m1", healthy=True, leader_hint=None, fraction=0.5)
    assert (d.address, d.delay, plan.failures) == ("m2", 0.1, 0)
    # A hint at that moment (the master stepped down) is followed at once.
    d = plan.after("m2", healthy=True, leader_hint="m3", fraction=0.5)
    assert (d.address, d.delay, d.reason) == ("m3", 0.0, "leader hint")


def test_an_address_named_by_a_hint_joins_the_walk_and_a_master_naming_itself_is_no_hint() -> None:
    plan = DialPlan(["m1", "m2"], B)
    plan.first()
    assert dials(plan, "m1", ["m9", None, None, None]) == [("m9", 0.0), ("m2", 0.1), ("m9", 0.1), ("m1", 0.2)]
    assert plan.addresses == ["m1", "m2", "m9"]
    assert plan.after("m1", healthy=False, leader_hint="m1", fraction=0.0).reason == "next master"


def test_a_walk_can_start_at_a_given_master() -> None:
    plan = DialPlan(["m1", "m2", "m3"], B, start="m2")
    assert plan.first().address == "m2"
    assert [a for a, _ in dials(plan, "m2", [None, None])] == ["m3", "m1"]
    unknown = DialPlan(["m1", "m2"], B, start="m4")
    assert unknown.first().address == "m4" and unknown.addresses == ["m1", "m2", "m4"]
    assert unknown.after("m4", healthy=False, leader_hint=None, fraction=0.0).address == "m1"


def test_a_dial_plan_needs_an_address() -> None:
    with pytest.raises(ValueError):
        DialPlan([], B)
    with pytest.raises(ValueError):
        DialPlan(["", ""], B)


def test_every_client_of_the_masters_chooses_the_next_one_with_the_dial_plan() -> None:
    """The agent's link and emulated agents, the SDK's session, the operator client and `tessera events
    --follow` take the next master from `DialPlan`; none counts rounds itself."""
    callers = ["agent/runtime/link.py", "agent/emulated.py", "sdk/session.py", "control_plane/api/client.py",
               "control_plane/cli/events.py"]
    assert [c for c in callers if "DialPlan(" not in (ROOT / c).read_text()] == []
    counting = [str(p.relative_to(ROOT)) for folder in ("control_plane", "agent", "sdk")
                for p in (ROOT / folder).rglob("*.py")
                if p != Path(wire.__file__).resolve() and "rounds(" in p.read_text()]
    assert counting == []


# ---- finding the masters: one order for every client -----------------------------------------------------


def test_masters_come_from_the_flag_then_the_environment_then_the_cluster_file_then_the_default() -> None:
    cluster = ("/w/.tessera/cluster.json", '{"status": "running", "masters": ["127.0.0.1:7001", "127.0.0.1:7002"]}')
    assert wire.choose_masters("a:1,b:2", "c:3", cluster) == wire.FoundMasters(("a:1", "b:2"), "--masters")
    assert wire.choose_masters(["a:1"], None, None, flag_name="masters").source == "masters"
    assert wire.choose_masters("", "c:3", cluster) == wire.FoundMasters(("c:3",), "TESSERA_MASTERS")
    assert wire.choose_masters(None, "  ", cluster) == wire.FoundMasters(
        ("127.0.0.1:7001", "127.0.0.1:7002"), "/w/.tessera/cluster.json")
    default = wire.choose_masters(None, None, None)
    assert default.addresses == (wire.DEFAULT_MASTERS,) == ("127.0.0.1:5050",)
    assert default.source == "the default (no --masters, TESSERA_MASTERS or .tessera/cluster.json)"


def test_a_stopped_cluster_file_still_names_its_masters_and_says_it_stopped() -> None:
    found = wire.choose_masters(None, None, ("/w/c.json", '{"status": "stopped", "masters": ["h:1"]}'))
    assert found.addresses == ("h:1",) and found.source == "/w/c.json (a cluster stopped there)"


@pytest.mark.parametrize(("flag", "env", "text", "named"), [
    ("nohost", None, None, "--masters: expected HOST:PORT"),
    (None, "h:0", None, "TESSERA_MASTERS: expected HOST:PORT"),
    (None, None, "{not json", "/c.json: not a JSON document"),
    (None, None, '{"masters": "h:1"}', "/c.json: no \"masters\" list"),
    (None, None, '{"masters": []}', "/c.json: give at least one HOST:PORT"),
])
def test_a_malformed_source_is_named(flag: str | None, env: str | None, text: str | None, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace('"', '.')):
        wire.choose_masters(flag, env, ("/c.json", text) if text is not None else None)
