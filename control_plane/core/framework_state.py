"""A framework's key/value state: the rules decide and apply share, and the reads (pure).

Frameworks keep their own records here instead of in ZooKeeper: a small key/value store per framework,
written through the replicated log like every other fact (`FrameworkStatePut`, `FrameworkStateDeleted`;
deciders in `decide_state`, handlers in `apply_state`) and kept in `ClusterState.framework_state`
(framework id -> `StateTable`). It goes when the framework is removed.

Rules
-----
- Keys are non-empty text without control characters; values are text (UTF-8); both are capped, and so
  are a framework's keys and bytes in all (`core.limits`: MAX_STATE_*).
- A key's version is the seq of the event that last put it: unique, increasing, never reused, so a key
  deleted and created again never repeats a version a client may still hold.
- Compare-and-set: a write names the version it expects — `ANY_VERSION` (-1) whatever it is,
  `ABSENT` (0) the key must not exist (put-if-absent), N its current version. A mismatch is
  `VersionConflict` naming the key and its current version; nothing is written. `decide` checks it, and
  `apply` checks it again against the state the log reached (a competing write may have committed in
  between).
- Fencing: a write carries the lease term of the framework when it was decided, and `apply` refuses it
  (`Deposed`) when the lease moved since (`core.leases`): a deposed instance's writes never land.
- Reads (`get`, `listing`) are pure functions of the state; the Scheduler API answers them from the
  leader's applied state, so a framework reads its own writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.control_plane.core.errors import InvalidRequest, VersionConflict
from tessera.control_plane.core.state import ClusterState, StateEntry, StateTable

__all__ = ["ABSENT", "ANY_VERSION", "DEFAULT_PAGE", "MAX_PAGE", "MAX_PAGE_BYTES", "Page", "check_expected",
           "check_expected_version", "get", "listing", "table_of", "version_of"]

ANY_VERSION = -1
ABSENT = 0
DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_PAGE_BYTES = 1024 * 1024  # a page stops once its values pass this (always at least one entry)

_EMPTY_TABLE = StateTable()


@dataclass(frozen=True, slots=True)
class Page:
    """Entries of one listing, in key order; `more`: keys with the prefix follow the last one."""

    entries: tuple[tuple[str, StateEntry], ...]
    more: bool


def table_of(state: ClusterState, framework_id: str) -> StateTable:
    """The framework's state (an empty table when it has none; never stored by a read)."""
    return state.framework_state.get(framework_id, _EMPTY_TABLE)


def version_of(table: StateTable, key: str) -> int:
    entry = table.entries.get(key)
    return ABSENT if entry is None else entry.version


def check_expected_version(value: object, what: str = "expected_version") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < ANY_VERSION:
        raise InvalidRequest(f"{what}: -1 (any), 0 (absent) or a version, got {value!r}")
    return value


def check_expected(table: StateTable, key: str, expected: int) -> None:
    """The compare of compare-and-set: VersionConflict when `key` is not at `expected`."""
    if expected == ANY_VERSION:
        return
    current = version_of(table, key)
    if current != expected:
        now = "absent" if current == ABSENT else f"at version {current}"
        wanted = "absent" if expected == ABSENT else f"version {expected}"
        raise VersionConflict(f"key {key!r} is {now}, not {wanted} as the write expected", key=key,
                              current_version=current)


def get(state: ClusterState, framework_id: str, key: str) -> StateEntry | None:
    return table_of(state, framework_id).entries.get(key)


def listing(state: ClusterState, framework_id: str, prefix: str = "", start_after: str = "",
            limit: int = DEFAULT_PAGE) -> Page:
    """Keys starting with `prefix` and after `start_after`, in key (code point) order: at most `limit`
    entries and about MAX_PAGE_BYTES of values (at least one)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0 or limit > MAX_PAGE:
        raise InvalidRequest(f"limit: 0 (= {DEFAULT_PAGE}) to {MAX_PAGE}, got {limit!r}")
    limit = limit or DEFAULT_PAGE
    entries = table_of(state, framework_id).entries
    keys = sorted(k for k in entries if k.startswith(prefix) and k > start_after)
    page: list[tuple[str, StateEntry]] = []
    size = 0
    for key in keys:
        if len(page) >= limit or (page and size >= MAX_PAGE_BYTES):
            return Page(tuple(page), more=True)
        entry = entries[key]
        page.append((key, entry))
        size += entry.size
    return Page(tuple(page), more=False)
