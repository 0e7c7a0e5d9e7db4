"""Resource arithmetic: the value every allocation decision is made of.

A `Resources` is an immutable bag keyed by (name, reservation role). Scalars (cpus, mem, disk, gpus or any
custom name) are kept in fixed point with three decimals, as Mesos does, so that adding and subtracting
never drifts and two masters always compute the same numbers. Ranges (ports) are kept as sorted, merged,
inclusive intervals.

Rules:
- A Resources value never holds a zero or negative quantity; `validate_request` rejects negative, NaN and
  infinite input with `InvalidRequest` before anything else sees it.
- `a - b` is only defined when `a.contains(b)`; otherwise it raises `InvalidRequest` (callers check first).
- An empty role means unreserved.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from tessera.control_plane.core.errors import InvalidRequest

SCALE = 1000  # fixed point: thousandths
MAX_SCALAR = 10**12  # any quantity above this is a mistake, not a machine
MAX_PORT = 65535
RANGE_KINDS = frozenset({"ports"})
NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,31}\Z")
ROLE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,63})*\Z")

Interval = tuple[int, int]
Key = tuple[str, str]  # (name, reservation role)


# Names already found valid (a pure check remembered: a cluster has few roles, and every write that
# names one checks it on every master). Bounded, so made-up names cannot grow it without limit.
_VALID_ROLES: set[str] = set()
_VALID_ROLES_LIMIT = 4096


def validate_role(role: str) -> str:
    if role in _VALID_ROLES:
        return role
    if not ROLE_RE.match(role) or role in {".", ".."}:
        raise InvalidRequest(f"invalid role name {role!r}: use letters, digits, '_', '-', '.', '/'")
    if len(_VALID_ROLES) < _VALID_ROLES_LIMIT:
        _VALID_ROLES.add(role)
    return role


def _to_fixed(name: str, value: float) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"resource {name}: quantity must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidRequest(f"resource {name}: quantity must be finite, got {value!r}")
    if value < 0:
        raise InvalidRequest(f"resource {name}: quantity must not be negative, got {value!r}")
    if value > MAX_SCALAR:
        raise InvalidRequest(f"resource {name}: quantity {value!r} is too large")
    return round(value * SCALE)


def _merge(intervals: Iterable[Interval]) -> tuple[Interval, ...]:
    out: list[list[int]] = []
    for begin, end in sorted(intervals):
        if out and begin <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([begin, end])
    return tuple((b, e) for b, e in out)


def _subtract_intervals(have: tuple[Interval, ...], take: tuple[Interval, ...]) -> tuple[Interval, ...]:
    out: list[Interval] = []
    for begin, end in have:
        pieces = [(begin, end)]
        for tb, te in take:
            nxt: list[Interval] = []
            for pb, pe in pieces:
                if te < pb or tb > pe:
                    nxt.append((pb, pe))
                    continue
                if tb > pb:
                    nxt.append((pb, tb - 1))
                if te < pe:
                    nxt.append((te + 1, pe))
            pieces = nxt
        out.extend(pieces)
    return _merge(out)


def _covers(have: tuple[Interval, ...], want: tuple[Interval, ...]) -> bool:
    for wb, we in want:
        if not any(hb <= wb and we <= he for hb, he in have):
            return False
    return True


def _interval_size(intervals: tuple[Interval, ...]) -> int:
    return sum(e - b + 1 for b, e in intervals)


@dataclass(frozen=True, slots=True)
class Resources:
    """Immutable resource bag. Build with `Resources.of`, `Resources.parse` or `Resources.from_items`."""

    scalars: tuple[tuple[Key, int], ...] = ()
    ranges: tuple[tuple[Key, tuple[Interval, ...]], ...] = ()

    # ---- construction -------------------------------------------------------------------------
    @staticmethod
    def _build(scalars: Mapping[Key, int], ranges: Mapping[Key, tuple[Interval, ...]]) -> Resources:
        return Resources(
            scalars=tuple(sorted((k, v) for k, v in scalars.items() if v > 0)),
            ranges=tuple(sorted((k, v) for k, v in ranges.items() if v)),
        )

    @staticmethod
    def of(role: str = "", ports: Iterable[Interval] = (), **scalars: float) -> Resources:
        """`Resources.of(cpus=1, mem=128, ports=[(31000, 31010)])`."""
        items: list[tuple[str, str, float, tuple[Interval, ...]]] = [
            (name, role, value, ()) for name, value in scalars.items()
        ]
        ports = tuple(ports)
        if ports:
            items.append(("ports", role, 0.0, ports))
        return Resources.from_items(items)

    @staticmethod
    def from_items(items: Iterable[tuple[str, str, float, Iterable[Interval]]]) -> Resources:
        """From (name, role, scalar, ranges) tuples, validating every one. Repeated keys add up."""
        scalars: dict[Key, int] = {}
        ranges: dict[Key, tuple[Interval, ...]] = {}
        for name, role, scalar, rngs in items:
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise InvalidRequest(f"invalid resource name {name!r}")
            if role:
                validate_role(role)
            key = (name, role)
            rngs = tuple(rngs)
            if name in RANGE_KINDS or rngs:
                if scalar:
                    raise InvalidRequest(f"resource {name} is a range resource; give ranges, not a scalar")
                checked: list[Interval] = []
                for pair in rngs:
                    begin, end = int(pair[0]), int(pair[1])
                    if begin < 0 or end < begin or end > MAX_PORT:
                        raise InvalidRequest(f"resource {name}: invalid range [{begin}-{end}]")
                    checked.append((begin, end))
                ranges[key] = _merge([*ranges.get(key, ()), *checked])
            else:
                scalars[key] = scalars.get(key, 0) + _to_fixed(name, scalar)
        return Resources._build(scalars, ranges)

    @staticmethod
    def parse(text: str, role: str = "") -> Resources:
        """Parse the Mesos flag form: 'cpus:4;mem:8192;ports:[31000-32000,33000-33010]'."""
        items: list[tuple[str, str, float, tuple[Interval, ...]]] = []
        for part in (p.strip() for p in text.split(";")):
            if not part:
                continue
            name, sep, value = part.partition(":")
            name, value = name.strip(), value.strip()
            if not sep or not name or not value:
                raise InvalidRequest(f"cannot parse resource {part!r}: expected NAME:VALUE")
            if value.startswith("["):
                if not value.endswith("]"):
                    raise InvalidRequest(f"cannot parse resource {part!r}: unclosed range list")
                intervals: list[Interval] = []
                for r in value[1:-1].split(","):
                    b, dash, e = r.strip().partition("-")
                    try:
                        intervals.append((int(b), int(e if dash else b)))
                    except ValueError as exc:
                        raise InvalidRequest(f"cannot parse range {r!r} of resource {name}") from exc
                items.append((name, role, 0.0, tuple(intervals)))
            else:
                try:
                    number = float(value)
                except ValueError as exc:
                    raise InvalidRequest(f"cannot parse quantity {value!r} of resource {name}") from exc
                items.append((name, role, number, ()))
        return Resources.from_items(items)

    # ---- queries ------------------------------------------------------------------------------
    def items(self) -> Iterator[tuple[str, str, float, tuple[Interval, ...]]]:
        """(name, role, scalar, ranges) in a stable order; the inverse of `from_items`."""
        for (name, role), milli in self.scalars:
            yield name, role, milli / SCALE, ()
        for (name, role), intervals in self.ranges:
            yield name, role, 0.0, intervals

    def is_empty(self) -> bool:
        return not self.scalars and not self.ranges

    def __bool__(self) -> bool:
        return not self.is_empty()

    def scalar(self, name: str, role: str | None = None) -> float:
        """Quantity of `name`; role None sums every reservation (and unreserved)."""
        return self.milli(name, role) / SCALE

    def milli(self, name: str, role: str | None = None) -> int:
        return sum(v for (n, r), v in self.scalars if n == name and (role is None or r == role))

    def range_count(self, name: str = "ports", role: str | None = None) -> int:
        return sum(_interval_size(v) for (n, r), v in self.ranges if n == name and (role is None or r == role))

    def names(self) -> set[str]:
        return {n for (n, _), _ in self.scalars} | {n for (n, _), _ in self.ranges}

    def roles(self) -> set[str]:
        return {r for (_, r), _ in self.scalars} | {r for (_, r), _ in self.ranges}

    def filter_role(self, role: str) -> Resources:
        """Only the resources reserved to `role` ('' = only unreserved)."""
        return Resources(
            scalars=tuple(kv for kv in self.scalars if kv[0][1] == role),
            ranges=tuple(kv for kv in self.ranges if kv[0][1] == role),
        )

    def allocatable_to(self, role: str) -> Resources:
        """What a framework in `role` may be offered from this bag: unreserved plus reserved to `role`."""
        return Resources(
            scalars=tuple(kv for kv in self.scalars if kv[0][1] in ("", role)),
            ranges=tuple(kv for kv in self.ranges if kv[0][1] in ("", role)),
        )

    def with_role(self, role: str) -> Resources:
        """The same quantities, all reserved to `role` ('' = unreserve)."""
        return Resources.from_items((n, role, s, r) for n, _, s, r in self.items())

    def flatten(self) -> Resources:
        """Quantities with reservation roles dropped (for quota and accounting by kind)."""
        return self.with_role("")

    def contains(self, other: Resources) -> bool:
        mine = dict(self.scalars)
        for key, value in other.scalars:
            if mine.get(key, 0) < value:
                return False
        my_ranges = dict(self.ranges)
        for key, intervals in other.ranges:
            if not _covers(my_ranges.get(key, ()), intervals):
                return False
        return True

    # ---- arithmetic ---------------------------------------------------------------------------
    def __add__(self, other: Resources) -> Resources:
        scalars = dict(self.scalars)
        for key, value in other.scalars:
            scalars[key] = scalars.get(key, 0) + value
        ranges = dict(self.ranges)
        for key, intervals in other.ranges:
            ranges[key] = _merge([*ranges.get(key, ()), *intervals])
        return Resources._build(scalars, ranges)

    def __sub__(self, other: Resources) -> Resources:
        if not self.contains(other):
            raise InvalidRequest(f"cannot subtract {other} from {self}")
        scalars = dict(self.scalars)
        for key, value in other.scalars:
            scalars[key] = scalars[key] - value
        ranges = dict(self.ranges)
        for key, intervals in other.ranges:
            ranges[key] = _subtract_intervals(ranges[key], intervals)
        return Resources._build(scalars, ranges)

    def intersects(self, other: Resources) -> bool:
        """True when the two bags share any range value (ports cannot be given twice)."""
        mine = dict(self.ranges)
        for key, intervals in other.ranges:
            for b, e in intervals:
                if any(not (e < hb or b > he) for hb, he in mine.get(key, ())):
                    return True
        return False

    def __str__(self) -> str:
        parts: list[str] = []
        for name, role, scalar, rngs in self.items():
            label = f"{name}({role})" if role else name
            if rngs:
                parts.append(f"{label}:[" + ",".join(f"{b}-{e}" for b, e in rngs) + "]")
            else:
                parts.append(f"{label}:{scalar:g}")
        return ";".join(parts) or "(none)"


EMPTY = Resources()
