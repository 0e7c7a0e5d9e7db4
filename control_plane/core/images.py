"""Container image references: parsing, normalisation and the registry's transport rules. Pure.

A reference names an image in an OCI/Docker distribution registry, as people write it on a `docker pull`
line: `busybox`, `busybox:1.35`, `127.0.0.1:5000/tools/busybox:1.35`, `repo@sha256:<64 hex>` or both
`repo:tag@sha256:<64 hex>`. The grammar is the distribution project's (`distribution/reference`):

    reference        := name [ ":" tag ] [ "@" digest ]
    name             := [ domain "/" ] path
    domain           := host [ ":" port ]
    host             := domain-name | IPv4address | "[" IPv6address "]"
    domain-name      := domain-component [ "." domain-component ]*
    domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
    path             := path-component [ "/" path-component ]*
    path-component   := [a-z0-9]+ [ separator [a-z0-9]+ ]*
    separator        := [_.] | "__" | "-"+
    tag              := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest           := "sha256:" [a-f0-9]{64}

with Docker's normalisation on top: the first `/`-separated component is the registry only when it
looks like a host (it has a `.` or a `:`, is `localhost`, or has an upper-case letter); otherwise the
registry is `docker.io` and a one-component path gets the `library/` prefix (`busybox` is
`docker.io/library/busybox`). `index.docker.io` is written `docker.io`. With neither tag nor digest the
tag is `latest`; a digest alone leaves the tag empty (None).

Stricter than the grammar, because such a reference can never be pulled: only `sha256` digests (what
registries and `skopeo` use), ports 1..65535, names of at most 255 characters, no 64-hex repository
name without a registry (Docker refuses it as ambiguous with an image id).

`parse_image_reference` raises `ValueError` whose message names what is wrong; the master's `decide`
turns it into INVALID_ARGUMENT, the agent's image store into a TASK_FAILED reason. Plain HTTP to a
registry is allowed only for a loopback one (`is_loopback_registry`, Docker's rule) or for those the
operator names as insecure; that choice is the agent's, from this value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_REGISTRY",
    "DEFAULT_TAG",
    "ImageReference",
    "parse_image_reference",
]

DEFAULT_REGISTRY = "docker.io"
LEGACY_DEFAULT_REGISTRY = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255
MAX_TAG_LENGTH = 128

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = re.compile(rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*")
_DOMAIN_COMPONENT = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_HEX64 = re.compile(r"[a-f0-9]{64}")
_IPV6_BODY = re.compile(r"[0-9A-Fa-f:.]+")


@dataclass(frozen=True)
class ImageReference:
    """A normalised image reference. `registry` is `host[:port]` (an IPv6 host keeps its brackets),
    `repository` the path inside it, `tag` the tag (None only when a digest alone was given), `digest`
    `sha256:<64 hex>` or None. `str()` gives the canonical text, which parses back to an equal value."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """`registry/repository`, the image's name without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def host(self) -> str:
        """The registry's host without its port (an IPv6 address without brackets)."""
        host, _ = _split_port(self.registry)
        return host[1:-1] if host.startswith("[") else host

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def transport_name(self) -> str:
        """The source `skopeo copy` takes: `docker://registry/repository` with `@digest` when there is a
        digest (the tag is then ignored, as Docker does: containers/image refuses both at once), else
        `:tag`."""
        suffix = f"@{self.digest}" if self.digest is not None else f":{self.tag or DEFAULT_TAG}"
        return f"docker://{self.name}{suffix}"

    @property
    def is_loopback_registry(self) -> bool:
        """The registry is this machine: `localhost`, 127.0.0.0/8 or ::1 (Docker allows plain HTTP to
        those without being told)."""
        return _is_loopback_host(self.host)


def parse_image_reference(text: str) -> ImageReference:
    """Parse and normalise an image reference; raise ValueError naming what is wrong."""
    if not text:
        raise ValueError("image reference is empty")
    if text != text.strip() or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise ValueError(f"image reference {text!r} contains whitespace or control characters")
    if not text.isascii():
        raise ValueError(f"image reference {text!r} contains non-ASCII characters")

    rest, at, digest_text = text.partition("@")
    digest: str | None = None
    if at:
        if "@" in digest_text:
            raise ValueError(f"image reference {text!r} has more than one '@'")
        digest = _parse_digest(digest_text)

    tag: str | None = None
    colon = rest.rfind(":")
    if colon != -1 and "/" not in rest[colon + 1:]:
        rest, tag = rest[:colon], _parse_tag(rest[colon + 1:])
    if not rest:
        raise ValueError(f"image reference {text!r} has no repository name")
    if len(rest) > MAX_NAME_LENGTH:
        raise ValueError(f"image name is {len(rest)} characters long, more than {MAX_NAME_LENGTH}")

    registry, repository = _split_registry(rest)
    _check_repository(repository)
    if registry == DEFAULT_REGISTRY and _HEX64.fullmatch(rest):
        raise ValueError(f"repository name {rest!r} is 64 hex digits, which reads as an image id: "
                         f"give a registry or another name")
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = OFFICIAL_PREFIX + repository
    if len(f"{registry}/{repository}") > MAX_NAME_LENGTH:
        raise ValueError(f"image name {registry}/{repository} is longer than {MAX_NAME_LENGTH} characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return ImageReference(registry=registry, repository=repository, tag=tag, digest=digest)


# ---- the parts -------------------------------------------------------------------------------------------
def _parse_digest(text: str) -> str:
    if not text:
        raise ValueError("digest after '@' is empty")
    algorithm, colon, hexpart = text.partition(":")
    if not colon:
        raise ValueError(f"digest {text!r} has no algorithm: write sha256:<64 hex digits>")
    if algorithm != "sha256":
        raise ValueError(f"digest algorithm {algorithm!r} is not supported: only sha256")
    if not _DIGEST.fullmatch(text):
        raise ValueError(f"digest {text!r} is not sha256: followed by 64 lower-case hex digits "
                         f"(got {len(hexpart)} characters)")
    return text


def _parse_tag(tag: str) -> str:
    if not tag:
        raise ValueError("tag after ':' is empty")
    if len(tag) > MAX_TAG_LENGTH:
        raise ValueError(f"tag is {len(tag)} characters long, more than {MAX_TAG_LENGTH}")
    if not _TAG.fullmatch(tag):
        raise ValueError(f"tag {tag!r} has characters other than letters, digits, '_', '.' and '-', "
                         f"or starts with '.' or '-'")
    return tag


def _split_registry(name: str) -> tuple[str, str]:
    """Docker's rule for whether the first component is a registry host."""
    first, slash, remainder = name.partition("/")
    looks_like_host = ("." in first or ":" in first or first == "localhost" or first.lower() != first)
    if not slash or not looks_like_host:
        return DEFAULT_REGISTRY, name
    registry = _check_registry(first)
    if registry == LEGACY_DEFAULT_REGISTRY:
        registry = DEFAULT_REGISTRY
    return registry, remainder


def _split_port(domain: str) -> tuple[str, str | None]:
    if domain.startswith("["):
        end = domain.find("]")
        if end == -1:
            return domain, None
        host, after = domain[:end + 1], domain[end + 1:]
        return (host, after[1:]) if after.startswith(":") else (host, None if not after else after)
    host, colon, port = domain.partition(":")
    return host, (port if colon else None)


def _check_registry(domain: str) -> str:
    host, port = _split_port(domain)
    if port is not None:
        if not port.isdigit():
            raise ValueError(f"registry {domain!r} has a port that is not a number: {port!r}")
        if not 1 <= int(port) <= 65535:
            raise ValueError(f"registry {domain!r} has port {port}, outside 1..65535")
    if host.startswith("["):
        if not (host.endswith("]") and _IPV6_BODY.fullmatch(host[1:-1]) and _parse_ipv6(host[1:-1])):
            raise ValueError(f"registry {domain!r} is not a valid bracketed IPv6 address")
        return domain
    if not host:
        raise ValueError(f"registry {domain!r} has no host name")
    for component in host.split("."):
        if not _DOMAIN_COMPONENT.fullmatch(component):
            raise ValueError(f"registry host {host!r} is not a valid host name: component {component!r} "
                             f"must be letters, digits and inner '-'")
    return domain


def _check_repository(path: str) -> None:
    if not path:
        raise ValueError("repository name is empty")
    if path.lower() != path:
        raise ValueError(f"repository name {path!r} must be lower-case")
    for component in path.split("/"):
        if not component:
            raise ValueError(f"repository name {path!r} has an empty path component (a leading, trailing "
                             f"or doubled '/')")
        if not _PATH_COMPONENT.fullmatch(component):
            raise ValueError(f"repository path component {component!r} is not valid: lower-case letters "
                             f"and digits, with single '.', '_', '__' or runs of '-' between them")


# ---- loopback --------------------------------------------------------------------------------------------
def _parse_ipv4(text: str) -> tuple[int, int, int, int] | None:
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
        return None
    values = [int(p) for p in parts]
    if any(v > 255 for v in values):
        return None
    return values[0], values[1], values[2], values[3]


def _parse_ipv6(text: str) -> tuple[int, ...] | None:
    """The eight 16-bit groups of an IPv6 address (a trailing dotted IPv4 counts as two), or None."""
    head, double, tail = text.partition("::")
    if "::" in tail:
        return None

    def groups(part: str, allow_v4: bool) -> list[int] | None:
        if not part:
            return []
        out: list[int] = []
        items = part.split(":")
        for i, item in enumerate(items):
            if "." in item and allow_v4 and i == len(items) - 1:
                v4 = _parse_ipv4(item)
                if v4 is None:
                    return None
                out += [v4[0] << 8 | v4[1], v4[2] << 8 | v4[3]]
            elif 1 <= len(item) <= 4 and all(c in "0123456789abcdefABCDEF" for c in item):
                out.append(int(item, 16))
            else:
                return None
        return out

    first = groups(head, allow_v4=not double)
    last = groups(tail, allow_v4=True)
    if first is None or last is None:
        return None
    if double:
        missing = 8 - len(first) - len(last)
        if missing < 1:
            return None
        return tuple(first + [0] * missing + last)
    return tuple(first) if len(first) == 8 else None


def _is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    v4 = _parse_ipv4(host)
    if v4 is not None:
        return v4[0] == 127
    v6 = _parse_ipv6(host)
    if v6 is None:
        return False
    if v6 == (0, 0, 0, 0, 0, 0, 0, 1):
        return True
    # an IPv4-mapped loopback address (::ffff:127.x.y.z) is loopback too, as Go's net.IP says
    return v6[:6] == (0, 0, 0, 0, 0, 0xFFFF) and v6[6] >> 8 == 127
