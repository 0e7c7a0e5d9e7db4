"""The fetcher's decisions (docs/fetcher.md): which archive members may be extracted, what the agent's
download cache is keyed by and what it evicts. Pure: no I/O, no clock (times are inputs); the fetcher
(`tessera.agent.executor.fetcher`) does the reading and writing.

Archives: an archive is checked whole, from its headers, before anything of it is written
(`check_archive`), and refused whole (`ArchiveRefused`, naming the member) when any member
- has an absolute name, a `..` component, a NUL, an empty name, a component over 255 bytes, or more
  than `MAX_DEPTH` components;
- is anything but a regular file, a directory, a symlink or a hard link (device files, FIFOs, sockets);
- is a symlink whose target is absolute, empty, not in normal form (`..` only leading, no `.` or empty
  components) or climbs above the archive's root from the link's own directory;
- is a hard link to anything but a regular file met earlier in the same archive;
- lies below a symlink of the archive (it would be written through the link), or gives one name two
  kinds (a file and a directory);
- takes the name of one of the task's output files at the archive's top (`stdout`, `stderr` and their
  rotations: the supervisor's, `core.uris.is_output_name`);
- makes the archive exceed `max_members` members or `max_bytes` bytes of files.
Why these rules keep every path inside: the extractor never writes through a symlink (every directory
on a member's path is opened without following links, and no member lies below a link of its own
archive), so each link sits where its name says; a link's leading `..`s then end at a real directory
inside the root, and whatever follows descends — possibly through other links, each of which obeys
the same rule. So no chain of links leaves the root, whatever order they are resolved in.

The cache: one entry per URL, named `cache_key(url)` (a SHA-256 of the URL as given, credentials and
query included, so two URLs never share an entry and an entry's name reveals nothing), evicted least
recently used first once the entries hold more than the cache's size (`plan_eviction`).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from tessera.control_plane.core.uris import is_output_name

MAX_DEPTH = 64  # components of a member's name
MAX_COMPONENT = 255  # bytes of one component
MAX_LINK_TARGET = 4096


class ArchiveRefused(Exception):
    """The archive is not extracted; the message names the member and the rule."""


class MemberKind(enum.Enum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    HARDLINK = "hard link"
    OTHER = "special file"  # device, FIFO, socket: never extracted


@dataclass(frozen=True)
class Member:
    """One archive member as its header describes it. `link` is a symlink's target or a hard link's
    member name; `what` is how to name the member's type in a refusal (e.g. "character device")."""

    name: str
    kind: MemberKind
    size: int = 0
    link: str = ""
    what: str = ""


def member_path(name: str) -> tuple[str, ...]:
    """The components of a member's name below the destination; () for the archive's root itself
    (`./`). Raises ArchiveRefused."""
    if "\0" in name:
        raise ArchiveRefused(f"member {name!r}: its name contains a NUL byte")
    if name.startswith("/"):
        raise ArchiveRefused(f"member {name!r}: an absolute name would be written outside the sandbox")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ArchiveRefused(f"member {name!r}: a '..' in its name would be written outside the sandbox")
    if len(parts) > MAX_DEPTH:
        raise ArchiveRefused(f"member {name[:200]!r}: more than {MAX_DEPTH} directories deep")
    for part in parts:
        if len(part.encode("utf-8", errors="surrogateescape")) > MAX_COMPONENT:
            raise ArchiveRefused(f"member {name[:200]!r}: a component longer than {MAX_COMPONENT} bytes")
    return parts


def check_symlink(parts: tuple[str, ...], target: str, name: str) -> None:
    """A symlink at `parts` pointing to `target` stays inside the root (see the module doc)."""
    if not target or "\0" in target or len(target) > MAX_LINK_TARGET:
        raise ArchiveRefused(f"member {name!r}: a symlink with an empty, overlong or NUL-holding target")
    if target.startswith("/"):
        raise ArchiveRefused(f"member {name!r}: a symlink to the absolute path {target[:200]!r} points out of the "
                             "sandbox")
    components = target.split("/")
    if target.endswith("/"):
        components = components[:-1]
    ups = 0
    while ups < len(components) and components[ups] == "..":
        ups += 1
    rest = components[ups:]
    if any(c in ("", ".", "..") for c in rest):
        raise ArchiveRefused(f"member {name!r}: a symlink target must be in normal form ('..' only at its start, "
                             f"no '.' or empty components), got {target[:200]!r}")
    if ups > len(parts) - 1:
        raise ArchiveRefused(f"member {name!r}: its symlink to {target[:200]!r} points out of the sandbox")


@dataclass(frozen=True)
class ArchiveSummary:
    members: int
    files: int
    bytes: int


def check_archive(members: Iterable[Member], max_members: int, max_bytes: int) -> ArchiveSummary:
    """Check every member of an archive (in order) by the module's rules; raises ArchiveRefused naming
    the first member that breaks one."""
    kinds: dict[tuple[str, ...], MemberKind] = {}
    links: set[tuple[str, ...]] = set()
    count = files = total = 0
    for member in members:
        count += 1
        if count > max_members:
            raise ArchiveRefused(f"more than {max_members} members")
        parts = member_path(member.name)
        if not parts:
            if member.kind is MemberKind.DIRECTORY:
                continue  # the root itself ("./")
            raise ArchiveRefused(f"member {member.name!r}: a {member.kind.value} cannot be the sandbox itself")
        for depth in range(1, len(parts)):
            if parts[:depth] in links:
                raise ArchiveRefused(f"member {member.name!r}: lies below the archive's symlink "
                                     f"{'/'.join(parts[:depth])!r} (it would be written through the link)")
            if kinds.setdefault(parts[:depth], MemberKind.DIRECTORY) is not MemberKind.DIRECTORY:
                raise ArchiveRefused(f"member {member.name!r}: {'/'.join(parts[:depth])!r} is a file in this "
                                     "archive, not a directory")
        if len(parts) == 1 and is_output_name(parts[0]):
            raise ArchiveRefused(f"member {member.name!r}: the name of one of the task's output files")
        kind = member.kind
        if kind is MemberKind.OTHER:
            raise ArchiveRefused(f"member {member.name!r}: a {member.what or kind.value}; archives with device "
                                 "files, FIFOs or sockets are not extracted")
        if kind is MemberKind.SYMLINK:
            check_symlink(parts, member.link, member.name)
        if kind is MemberKind.HARDLINK:
            target = member_path(member.link)
            if kinds.get(target) is not MemberKind.FILE:
                raise ArchiveRefused(f"member {member.name!r}: a hard link to {member.link[:200]!r}, which is not a "
                                     "regular file earlier in the archive")
        before = kinds.get(parts)
        settled = MemberKind.FILE if kind is MemberKind.HARDLINK else kind
        if before is not None and (before is MemberKind.DIRECTORY) != (settled is MemberKind.DIRECTORY):
            raise ArchiveRefused(f"member {member.name!r}: the archive gives this name as a {before.value} too")
        if kind is MemberKind.SYMLINK:
            links.add(parts)
        else:
            links.discard(parts)
        kinds[parts] = settled
        if kind is MemberKind.FILE:
            if member.size < 0:
                raise ArchiveRefused(f"member {member.name!r}: a negative size")
            files += 1
            total += member.size
            if total > max_bytes:
                raise ArchiveRefused(f"its files hold more than {max_bytes} bytes, the agent's limit "
                                     "(--fetcher-max-mib)")
    return ArchiveSummary(count, files, total)


# ---- the cache ----------------------------------------------------------------------------------------
def cache_key(url: str) -> str:
    """The name of a URL's entry in the agent's cache."""
    return hashlib.sha256(url.encode("utf-8", errors="surrogateescape")).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    name: str
    size: int
    last_used: float  # seconds (a file's mtime: touched at every hit)


def plan_eviction(entries: Iterable[CacheEntry], max_bytes: int, keep: frozenset[str] = frozenset()) -> list[str]:
    """The entries to remove, least recently used first, until the rest hold at most `max_bytes`;
    `keep` (the entry just fetched) is never chosen."""
    ordered = sorted(entries, key=lambda e: (e.last_used, e.name))
    total = sum(e.size for e in ordered)
    out: list[str] = []
    for entry in ordered:
        if total <= max_bytes:
            break
        if entry.name in keep:
            continue
        out.append(entry.name)
        total -= entry.size
    return out
