"""What the master checks of a task's URIs (the artifacts the agent fetches into its sandbox) before it
records the launch, and the facts about a URI that master and agent must agree on (docs/fetcher.md).

Pure: no I/O and no URL library (the core's import rule): URLs are split here with a small grammar that
covers what the fetcher accepts, nothing more. `InvalidRequest` (INVALID_ARGUMENT) names the field; a
refused launch records nothing and the agent never sees it. What only the agent can tell (the server
answers, the file exists and is readable by the task's user, the download fits the agent's limit, the
archive is safe) ends the task there, TASK_FAILED with REASON_FETCHER_FAILED.

Rules:
- At most `MAX_URIS` (64) URIs per task, each `value` at most `MAX_URI_LENGTH` (4096) characters of printable ASCII
  (percent-encode anything else).
- Schemes http, https (a host, an optional port 1..65535, no credentials: a task's URIs are stored in
  its record and the event log) and file (an absolute path; host empty or
  `localhost`; no query or fragment). No other scheme: the agent would not know how to fetch it.
- `output_file` is a plain name in the sandbox: no `/`, not `.` or `..`, no NUL, at most
  `MAX_OUTPUT_FILE` (255) bytes (the caps are in `core.limits`). Empty: the URL's last path component (percent-decoded), which must then be
  such a name itself.
- The name a URI gets (`file_name_of`) is never one of the task's output files (`stdout`, `stderr`,
  `stdout.N`, `stderr.N`: the log rotation owns them), and two kept URIs never get the same name.
- `extract` needs an archive the name tells (`archive_kind`: .tar, .tar.gz, .tgz, .tar.bz2, .tbz2,
  .tar.xz, .txz, .zip, any case); `executable` is for a file that is kept, so not with `extract`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.limits import MAX_OUTPUT_FILE, MAX_URI_LENGTH, MAX_URIS
from tessera.control_plane.core.values import CommandURI, TaskInfo

__all__ = ["ARCHIVE_SUFFIXES", "SCHEMES", "ParsedURL", "archive_kind", "check_uris", "file_name_of",
           "is_output_name", "parse_url"]

SCHEMES = ("http", "https", "file")
# name suffix -> archive kind (what the agent's extractor opens it as)
ARCHIVE_SUFFIXES = (
    (".tar.gz", "tar"), (".tgz", "tar"), (".tar.bz2", "tar"), (".tbz2", "tar"), (".tar.xz", "tar"),
    (".txz", "tar"), (".tar", "tar"), (".zip", "zip"),
)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)\Z", re.DOTALL)
_PRINTABLE = re.compile(r"^[\x21-\x7e]*\Z")
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
_PORT = re.compile(r"^[0-9]{1,5}\Z")
_OUTPUT_NAME = re.compile(r"^(stdout|stderr)(\.[0-9]+)?\Z")


@dataclass(frozen=True, slots=True)
class ParsedURL:
    """The parts of an accepted URL the fetcher uses. `path` is percent-decoded."""

    scheme: str  # lower case
    host: str  # "" for file URLs
    path: str
    name: str = ""  # the last component of the path as written, then decoded ("" when the path ends in '/')


def _unquote(text: str, what: str) -> str:
    raw = _PERCENT.sub(lambda m: bytes([int(m.group(1), 16)]), text.encode("ascii"))
    if b"\0" in raw:
        raise InvalidRequest(f"{what}: must not contain a NUL byte (%00)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{what}: its percent-encoded bytes are not UTF-8") from None


def parse_url(value: object, what: str) -> ParsedURL:
    """Split a URI's value into scheme, host and path; InvalidRequest naming `what` when it is not one
    the fetcher accepts (see the module doc)."""
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{what}: must be a URL (http://, https:// or file://)")
    if len(value) > MAX_URI_LENGTH:
        raise InvalidRequest(f"{what}: {len(value)} characters, at most {MAX_URI_LENGTH}")
    if not _PRINTABLE.match(value):
        raise InvalidRequest(f"{what}: must be printable ASCII without spaces (percent-encode the rest), "
                             f"got {value[:100]!r}")
    found = _SCHEME.match(value)
    if found is None:
        raise InvalidRequest(f"{what}: must be an absolute URL (http://, https:// or file://), got {value[:100]!r}")
    scheme, rest = found.group(1).lower(), found.group(2)
    if scheme not in SCHEMES:
        raise InvalidRequest(f"{what}: the scheme {scheme!r} is not supported (only {', '.join(SCHEMES)})")
    if scheme == "file":
        return _parse_file(rest, what)
    if not rest.startswith("//"):
        raise InvalidRequest(f"{what}: an {scheme} URL starts with {scheme}://HOST")
    rest = rest[2:]
    end = len(rest)
    for sep in "/?#":
        at = rest.find(sep)
        if at >= 0:
            end = min(end, at)
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        raise InvalidRequest(f"{what}: credentials in a URL are not supported (they would be kept in the task's "
                             "record and the event log for everyone who may read them)")
    hostport = authority
    if hostport.startswith("["):  # an IPv6 literal
        close = hostport.find("]")
        host, port = (hostport[: close + 1], hostport[close + 2:]) if close > 0 else ("", "")
        if close > 0 and hostport[close + 1: close + 2] not in ("", ":"):
            host = ""
    else:
        host, _, port = hostport.partition(":")
    if not host or host == "[]":
        raise InvalidRequest(f"{what}: names no host")
    if port and (not _PORT.match(port) or not 0 < int(port) < 65536):
        raise InvalidRequest(f"{what}: the port {port!r} is not a number from 1 to 65535")
    path = tail
    for sep in "?#":
        path = path.partition(sep)[0]
    return _parsed(scheme, host.lower(), path or "/", what)


def _parsed(scheme: str, host: str, path: str, what: str) -> ParsedURL:
    return ParsedURL(scheme, host, _unquote(path, what), _unquote(path.rpartition("/")[2], what))


def _parse_file(rest: str, what: str) -> ParsedURL:
    if "?" in rest or "#" in rest:
        raise InvalidRequest(f"{what}: a file URL has no query or fragment")
    if rest.startswith("//"):
        host, slash, path = rest[2:].partition("/")
        if host not in ("", "localhost"):
            raise InvalidRequest(f"{what}: a file URL names this agent's files (file:///PATH), not host {host!r}")
        path = slash + path
    else:
        path = rest
    if not path.startswith("/"):
        raise InvalidRequest(f"{what}: a file URL needs an absolute path (file:///PATH)")
    return _parsed("file", "", path, what)


def archive_kind(name: str) -> str:
    """"tar" or "zip" for a name with an archive suffix (any case), "" otherwise."""
    lower = name.lower()
    for suffix, kind in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return kind
    return ""


def is_output_name(name: str) -> bool:
    """True for the names of the task's output files (`stdout`, `stderr` and their rotations)."""
    return _OUTPUT_NAME.match(name) is not None


def _check_name(name: str, what: str) -> None:
    if not name or name in (".", ".."):
        raise InvalidRequest(f"{what}: must be a file name, got {name!r}")
    if "/" in name or "\0" in name:
        raise InvalidRequest(f"{what}: must be a plain file name in the sandbox (no '/' or NUL), got {name[:100]!r}")
    if len(name.encode("utf-8", errors="surrogatepass")) > MAX_OUTPUT_FILE:
        raise InvalidRequest(f"{what}: at most {MAX_OUTPUT_FILE} bytes")
    if is_output_name(name):
        raise InvalidRequest(f"{what}: {name!r} is one of the task's output files (stdout, stderr and their "
                             "rotations); choose another name")


def file_name_of(uri: CommandURI, what: str = "uri") -> str:
    """The name `uri` gets in the sandbox (an archive's name, which tells its kind, when extracted):
    `output_file`, else the last component of the URL's path. InvalidRequest naming `what` when neither
    is a usable name."""
    if uri.output_file:
        _check_name(uri.output_file, f"{what}.output_file")
        return uri.output_file
    name = parse_url(uri.value, f"{what}.value").name
    if not name or name in (".", ".."):
        raise InvalidRequest(f"{what}.output_file: the URL's path names no file; give output_file")
    try:
        _check_name(name, f"{what}.value")
    except InvalidRequest as exc:
        raise InvalidRequest(f"{exc.message} (the URL's file name; give output_file)") from None
    return name


def check_uris(task: TaskInfo, what: str) -> None:
    """Refuse (InvalidRequest) URIs the agent would not fetch as asked (see the module doc)."""
    uris = task.uris
    if not isinstance(uris, tuple):
        raise InvalidRequest(f"{what}.uris: must be a tuple of CommandURI")
    if len(uris) > MAX_URIS:
        raise InvalidRequest(f"{what}.uris: {len(uris)} URIs, at most {MAX_URIS}")
    kept: dict[str, int] = {}
    for i, uri in enumerate(uris):
        where = f"{what}.uris[{i}]"
        if not isinstance(uri, CommandURI):
            raise InvalidRequest(f"{where}: must be a CommandURI")
        for flag in ("extract", "executable", "no_cache"):
            if not isinstance(getattr(uri, flag), bool):
                raise InvalidRequest(f"{where}.{flag}: must be a bool")
        if not isinstance(uri.output_file, str):
            raise InvalidRequest(f"{where}.output_file: must be a string")
        parse_url(uri.value, f"{where}.value")
        name = file_name_of(uri, where)
        if uri.extract:
            if uri.executable:
                raise InvalidRequest(f"{where}.executable: applies to a file that is kept, not to an archive "
                                     "that is extracted")
            if not archive_kind(name):
                suffixes = ", ".join(s for s, _ in ARCHIVE_SUFFIXES)
                raise InvalidRequest(f"{where}.extract: cannot tell the archive type of {name!r} from its name "
                                     f"({suffixes}); name it with output_file")
            continue
        if name in kept:
            raise InvalidRequest(f"{where}: its file {name!r} is also where uris[{kept[name]}] goes")
        kept[name] = i

