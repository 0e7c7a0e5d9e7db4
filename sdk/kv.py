"""The framework's key/value state: `driver.kv` (`KeyValueState`; `AsyncKeyValueState` for the asyncio
driver), a small store per framework kept in the masters' replicated log — where a Marathon keeps its
app definitions in ZooKeeper, a Tessera framework keeps them here.

    entry = driver.kv.get("apps/web")                    # KvEntry(key, value, version) or None
    version = driver.kv.put("apps/web", text, version=ABSENT)      # create only (put-if-absent)
    version = driver.kv.put("apps/web", text, version=entry.version)  # compare-and-set
    driver.kv.delete("apps/web", version=version)
    driver.kv.list("apps/")                              # every key with the prefix, in key order
    driver.kv.write([KvPut("apps/web", text), KvDelete("deployments/7")])  # together or not at all

Rules (docs/protocol.md has them all):
- Keys and values are text. Sizes are capped (a key 512 bytes, a value 64 KiB, a framework 10,000 keys
  and 4 MiB in all, a call 128 writes and 512 KiB); over a cap is `InvalidRequest` naming the limit.
- A write names the version it expects (`version`): None whatever the key's version is, `ABSENT` (0)
  the key must not exist, N its current version. A mismatch is `VersionConflict` (`key`,
  `current_version`): nothing was written; read again and decide again.
- Writes go through the log: they return once committed, with the key's new version (the index of the
  event that wrote it). Reads answer from the leader's applied state, so an instance reads its own writes.
- Only the active instance writes: a write from an instance that lost the framework's lease is refused
  with `Deposed`. Calls wait for the driver to be subscribed (up to `call_timeout`), and are retried
  like every call (after a leader change, with the same request id: a write is applied once).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import cast

from tessera.sdk.errors import InvalidRequest
from tessera.sdk.protocol import Call, CallResult, GetValueCall, KvPage, ListValuesCall, WriteValuesCall
from tessera.sdk.types import KvDelete, KvEntry, KvPut, KvWrite

__all__ = ["AsyncKeyValueState", "KeyValueState"]

PAGE = 1000  # keys asked for per ListValues call


def _writes(writes: Iterable[KvWrite]) -> WriteValuesCall:
    items = tuple(writes)
    for item in items:
        if not isinstance(item, (KvPut, KvDelete)):
            raise InvalidRequest(f"writes: expected KvPut or KvDelete, got {item!r}")
    if not items:
        raise InvalidRequest("writes: give at least one write")
    return WriteValuesCall(items)


def _entry(result: CallResult) -> KvEntry | None:
    entries = cast(tuple[KvEntry, ...], result)
    return entries[0] if entries else None


def _versions(result: CallResult) -> list[int]:
    return list(cast(tuple[int, ...], result))


class KeyValueState:
    """`driver.kv` of a `SchedulerDriver` (see the module docstring); every method blocks until answered."""

    def __init__(self, call: Callable[[Call], CallResult]) -> None:
        self._call = call

    def get(self, key: str) -> KvEntry | None:
        """The key's value and version, or None when it does not exist."""
        return _entry(self._call(GetValueCall(key)))

    def put(self, key: str, value: str, *, version: int | None = None) -> int:
        """Put `value` at `key` if it is at `version` (None: any; `ABSENT`: it must not exist); returns the
        key's new version."""
        return self.write([KvPut(key, value, version)])[0]

    def delete(self, key: str, *, version: int | None = None) -> None:
        """Delete `key` if it is at `version` (None: any; an absent key is then no error)."""
        self.write([KvDelete(key, version)])

    def write(self, writes: Iterable[KvWrite]) -> list[int]:
        """Apply these writes together or not at all (each names another key); returns each one's new
        version (0 for a delete)."""
        return _versions(self._call(_writes(writes)))

    def list(self, prefix: str = "", *, keys_only: bool = False) -> list[KvEntry]:
        """Every key starting with `prefix`, in key order (values left empty with `keys_only`)."""
        entries: list[KvEntry] = []
        after = ""
        while True:
            page = cast(KvPage, self._call(ListValuesCall(prefix, after, PAGE, keys_only)))
            entries.extend(page.entries)
            if not page.more or not page.entries:
                return entries
            after = page.entries[-1].key


class AsyncKeyValueState:
    """`driver.kv` of an `AsyncSchedulerDriver`: the methods of `KeyValueState`, as coroutines."""

    def __init__(self, call: Callable[[Call], Awaitable[CallResult]]) -> None:
        self._call = call

    async def get(self, key: str) -> KvEntry | None:
        return _entry(await self._call(GetValueCall(key)))

    async def put(self, key: str, value: str, *, version: int | None = None) -> int:
        return (await self.write([KvPut(key, value, version)]))[0]

    async def delete(self, key: str, *, version: int | None = None) -> None:
        await self.write([KvDelete(key, version)])

    async def write(self, writes: Iterable[KvWrite]) -> list[int]:
        return _versions(await self._call(_writes(writes)))

    async def list(self, prefix: str = "", *, keys_only: bool = False) -> list[KvEntry]:
        entries: list[KvEntry] = []
        after = ""
        while True:
            page = cast(KvPage, await self._call(ListValuesCall(prefix, after, PAGE, keys_only)))
            entries.extend(page.entries)
            if not page.more or not page.entries:
                return entries
            after = page.entries[-1].key
