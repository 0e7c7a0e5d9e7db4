"""Facts of the wire every client shares, once: the leader-hint metadata key, master address lists, and
the one retry backoff. Sans-IO: no gRPC import, no clock, no randomness of its own (a random number is
an argument), so the agent, the SDK, the operator client and the simulation use the same code.

- `LEADER_METADATA_KEY`: a follower answers UNAVAILABLE with the leader's address in this trailing
  metadata key; `leader_hint(trailers)` reads it back from a call's trailing metadata.
- `CONFLICT_METADATA_KEY`: a FAILED_PRECONDITION that is a framework-state version conflict or a deposed
  framework instance says which in this trailing metadata key (`VERSION_CONFLICT`, `DEPOSED`), with the
  number that goes with it (the key's current version, the lease's term) under `CONFLICT_NUMBER_KEY`:
  `conflict_trailers(kind, number)` writes them, `conflict_detail(trailers)` reads them back, so clients
  tell the two apart without reading messages.
- `parse_masters(value)`: 'a:5050,b:5050' (or a sequence) -> ('a:5050', 'b:5050'): HOST:PORT pairs,
  duplicates dropped, order kept; a `ValueError` whose message the caller prefixes with its flag name.
  `split_address(value)`: one HOST:PORT as (host, port), port 0 allowed (a listener's, e.g. an agent's
  `--files-address`).
- `Backoff`: exponential backoff with downward jitter. `delay(n, fraction)` is the wait before retry
  number `n` (0-based: `delay(0, ...)` is the first retry's wait) and lies in
  `[nominal(n) * (1 - jitter), nominal(n)]`, `nominal(n) = min(maximum, initial * multiplier**n)`, so
  `maximum` really is the longest wait. Callers count `n` in rounds over the masters (every master is
  tried once before the wait grows), see `rounds`.
- `BATCHED_MESSAGES`: the AgentLink capability an agent announces in `Register.capabilities` (it takes
  `run_tasks` and `acks`, several commands or acknowledgements in one message), read by the master.
- `DialPlan`: the one choice of the next master, for every client that follows the leader (the agent's
  link and the emulated agents, the SDK's session, the operator client, `tessera events --follow`):
  which master to dial after a dial ended, and how long to wait first. Its rules are in its docstring.
- `choose_masters(flag, env, cluster_file)`: the one order in which every client (the CLI, the SDK's
  drivers and `tessera run`, the examples) finds the masters: the flag (or the driver's argument), else
  `TESSERA_MASTERS`, else the `masters` of the nearest `.tessera/cluster.json` (written by `tessera up`),
  else `DEFAULT_MASTERS`; the answer says where the addresses came from (`FoundMasters.source`), so a
  client that cannot reach them can say it. The caller reads the environment and the file
  (`tessera.control_plane.tls.find_masters` does, for every client) and passes their text here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["BATCHED_MESSAGES", "CONFLICT_METADATA_KEY", "CONFLICT_NUMBER_KEY", "DEFAULT_MASTERS", "DEPOSED",
           "LEADER_METADATA_KEY", "MASTERS_ENV", "VERSION_CONFLICT", "Backoff", "Dial", "DialPlan", "FoundMasters",
           "choose_masters", "cluster_file_masters", "conflict_detail", "conflict_trailers", "leader_hint",
           "parse_masters", "rounds", "split_address"]

LEADER_METADATA_KEY = "tessera-leader"
MASTERS_ENV = "TESSERA_MASTERS"
DEFAULT_MASTERS = "127.0.0.1:5050"
CONFLICT_METADATA_KEY = "tessera-conflict"
CONFLICT_NUMBER_KEY = "tessera-conflict-number"
VERSION_CONFLICT = "version"  # a framework-state write expected another version; the number: the key's version now
DEPOSED = "deposed"  # a call from a stream that lost the framework's lease; the number: the lease's term now
BATCHED_MESSAGES = "BATCHED_MESSAGES"  # docs/protocol.md, AgentLink step 8

_ADDRESS_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})\Z")


def leader_hint(trailers: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The leader's address named by a call's trailing metadata, if any."""
    for key, value in trailers or ():
        if key == LEADER_METADATA_KEY and value:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def conflict_trailers(kind: str, number: int | None) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of a conflict of `kind` (`VERSION_CONFLICT`, `DEPOSED`) and its number."""
    trailers = ((CONFLICT_METADATA_KEY, kind),)
    return trailers if number is None else (*trailers, (CONFLICT_NUMBER_KEY, str(number)))


def conflict_detail(trailers: Iterable[tuple[str, str | bytes]] | None) -> tuple[str, int | None] | None:
    """(kind, number or None) of a conflict named by a call's trailing metadata; None when it names none."""
    kind: str | None = None
    number: int | None = None
    for key, value in trailers or ():
        text = value.decode() if isinstance(value, bytes) else str(value)
        if key == CONFLICT_METADATA_KEY:
            kind = text
        elif key == CONFLICT_NUMBER_KEY and text.isdigit():
            number = int(text)
    return None if kind is None else (kind, number)


def split_address(address: str) -> tuple[str, int]:
    """'host:5050' -> ('host', 5050), '[::1]:0' -> ('[::1]', 0); ValueError unless HOST:PORT with a port up
    to 65535 (0 is a listener's "any free port"; a dialled address needs more)."""
    match = _ADDRESS_RE.match(address)
    if match is None or int(match.group(2)) > 65535:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return match.group(1), int(match.group(2))


def parse_masters(value: str | Sequence[str]) -> tuple[str, ...]:
    """'a:5050, b:5050' or ['a:5050', 'b:5050'] -> ('a:5050', 'b:5050'); ValueError names the bad one."""
    items = value.split(",") if isinstance(value, str) else list(value)
    addresses = tuple(dict.fromkeys(a.strip() for a in items if isinstance(a, str) and a.strip()))
    if not addresses:
        raise ValueError("give at least one HOST:PORT")
    for address in addresses:
        if split_address(address)[1] == 0:
            raise ValueError(f"expected HOST:PORT, got {address!r}")
    return addresses


@dataclass(frozen=True, slots=True)
class FoundMasters:
    """The masters a client dials and where it found them (`source`, for messages: "--masters",
    "TESSERA_MASTERS", "/path/.tessera/cluster.json (a stopped cluster)", "the default ...")."""

    addresses: tuple[str, ...]
    source: str

    @property
    def text(self) -> str:
        return ",".join(self.addresses)


def cluster_file_masters(text: str) -> tuple[tuple[str, ...], str]:
    """(masters, status) of a `cluster.json` text as `tessera up` writes it; ValueError when it names no
    usable masters."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError("not a JSON document") from None
    masters = data.get("masters") if isinstance(data, dict) else None
    if not isinstance(masters, list) or not all(isinstance(m, str) for m in masters):
        raise ValueError("no \"masters\" list of HOST:PORT strings")
    status = data.get("status")
    return parse_masters(masters), status if isinstance(status, str) else ""


def choose_masters(flag: str | Sequence[str] | None, env: str | None,
                   cluster_file: tuple[str, str] | None = None, *, flag_name: str = "--masters") -> FoundMasters:
    """The masters to dial: `flag` (non-empty), else `env` (TESSERA_MASTERS, non-empty), else the
    `(path, text)` of the nearest cluster.json, else DEFAULT_MASTERS. ValueError naming the source of a
    malformed value (`flag_name`, TESSERA_MASTERS or the file's path)."""
    if flag is not None and (flag.strip() if isinstance(flag, str) else list(flag)):
        return FoundMasters(_parsed(flag, flag_name), flag_name)
    if env is not None and env.strip():
        return FoundMasters(_parsed(env, MASTERS_ENV), MASTERS_ENV)
    if cluster_file is not None:
        path, text = cluster_file
        try:
            addresses, status = cluster_file_masters(text)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        running = status in ("starting", "running")
        return FoundMasters(addresses, path if running or not status else f"{path} (a cluster {status} there)")
    return FoundMasters((DEFAULT_MASTERS,), f"the default (no {flag_name}, {MASTERS_ENV} or .tessera/cluster.json)")


def _parsed(value: str | Sequence[str], name: str) -> tuple[str, ...]:
    try:
        return parse_masters(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def rounds(failures: int, masters: int) -> int:
    """The 0-based backoff step after `failures` failed dials in a row over `masters` addresses: the wait
    grows once per round over the masters, not per refusal (during an election every master refuses in
    turn, and doubling at each refusal left clients waiting seconds after the new leader was serving)."""
    return max(0, failures - 1) // max(1, masters)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with downward jitter (see the module docstring)."""

    initial: float = 0.1
    maximum: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum and math.isfinite(self.maximum)):
            raise ValueError(f"Backoff: need 0 < initial <= maximum, got {self.initial}, {self.maximum}")
        if not (self.multiplier >= 1 and math.isfinite(self.multiplier)):
            raise ValueError(f"Backoff: multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"Backoff: jitter must be within [0, 1], got {self.jitter}")

    def nominal(self, attempt: int) -> float:
        """The wait before retry `attempt` (0-based) without jitter."""
        # Compare exponents rather than computing a huge power for a long outage.
        if attempt <= 0:
            return self.initial
        if self.multiplier == 1 or attempt * math.log(self.multiplier) >= math.log(self.maximum / self.initial):
            return self.maximum if self.multiplier > 1 else self.initial
        return min(self.maximum, self.initial * self.multiplier**attempt)

    def delay(self, attempt: int, fraction: float) -> float:
        """The wait before retry `attempt` (0-based), for a `fraction` drawn uniformly from [0, 1)."""
        return self.nominal(attempt) * (1.0 - self.jitter * min(max(fraction, 0.0), 1.0))


@dataclass(frozen=True, slots=True)
class Dial:
    """Dial `address` after waiting `delay` seconds; `reason` says why this master (for logs)."""

    address: str
    delay: float
    reason: str  # "first", "leader hint" or "next master"


class DialPlan:
    """Which master to dial next, and how long to wait first. Not thread-safe: one owner drives it.

    The owner dials `first()`, then, each time a dial ended (a stream closed, a call failed, a
    subscription was refused), asks `after(...)` where to go next. Rules:
    - The masters are walked in list order, from `start` (the first master when not given). The first
      dial waits nothing.
    - A leader hint (the address a follower names; one naming the master that gave it is ignored) is
      dialled next, at once; but a hint that comes right after such an immediate hop is dialled after
      the backoff wait, so two masters whose stale hints point at each other never make two dials in a
      row without a wait. A hint is a detour: the walk resumes where it left off, so every master in
      the list is still tried in turn while hints mislead. An address first named by a hint joins the
      list at the end (a master added to the quorum after the client started).
    - Otherwise the next master of the walk, after `backoff.delay(rounds(failures, len(masters)),
      fraction)`: every dial that ended without the master serving (answered with a hint or not) is a
      failure, and the wait grows once per round over the masters.
    - A dial that was `healthy` (the master served: the stream carried a message, the subscription was
      made, the call was answered) resets the failures. After a healthy stream ends without a hint the
      walk goes on to the next master after the initial wait rather than dialling the same one again: a
      master that died or froze costs nothing, one that lives names the leader, followed at once.
    `fraction` is a random number in [0, 1) the caller draws (the jitter); nothing in here is random.
    """

    def __init__(self, masters: Sequence[str], backoff: Backoff, *, start: str | None = None) -> None:
        addresses = list(dict.fromkeys(a for a in masters if a))
        if not addresses:
            raise ValueError("at least one master address is needed")
        self.addresses = addresses
        self.backoff = backoff
        self.failures = 0  # dials in a row that ended without the master serving
        self._walk = 0  # index (modulo the list) of the next master of the walk
        self._hopped = False  # the last dial was an immediate hop to a hinted leader
        if start:
            self.learn(start)
            self._walk = self.addresses.index(start)

    def learn(self, address: str) -> None:
        """A master not in the list (named by a leader hint) joins it at the end."""
        if address and address not in self.addresses:
            self.addresses.append(address)

    def first(self) -> Dial:
        """The first dial: the walk's first master, at once."""
        return Dial(self._next_of_walk(), 0.0, "first")

    def after(self, address: str, *, healthy: bool, leader_hint: str | None, fraction: float) -> Dial:
        """Where to go after the dial to `address` ended (or could not be made)."""
        if healthy:
            self.failures = 0
            self._hopped = False
        else:
            self.failures += 1
        if leader_hint and leader_hint != address:
            self.learn(leader_hint)
            if self._hopped:  # the hop before led to another refusal: wait this time
                self._hopped = False
                return Dial(leader_hint, self._wait(fraction), "leader hint")
            self._hopped = True
            return Dial(leader_hint, 0.0, "leader hint")
        self._hopped = False
        return Dial(self._next_of_walk(), self._wait(fraction), "next master")

    def _next_of_walk(self) -> str:
        index = self._walk % len(self.addresses)
        self._walk = index + 1
        return self.addresses[index]

    def _wait(self, fraction: float) -> float:
        return self.backoff.delay(rounds(self.failures, len(self.addresses)), fraction)
