"""The agent's image store: OCI images pulled with skopeo, unpacked with umoci, shared by tasks.

Layout (under the agent's data dir; one process owns it):

    ROOT/
      blobs/sha256/<hex>      every blob (manifests, configs, layers) once, by digest, shared by all images
      images/<hex>.json       one record per manifest digest: its blobs, its config, the references it was
                              pulled as, its size and when it was last used. The record is the commit point:
                              an image is in the store exactly when its record is.
      rootfs/<hex>/           the image's root filesystem, unpacked once per manifest digest; never written
                              after it is renamed into place (tasks get an overlay or a copy of it)
      tmp/                    pulls in progress; emptied when the store opens
      policy.json             the signature policy handed to skopeo (accept anything; see below)

Pull (`ImageStore.pull`, blocking). The reference is parsed by the core (`parse_image_reference`). When
the store has it (a tag it was pulled as, or a digest), the registry is not contacted at all: a tag is
resolved once, when first pulled, as Docker's and Mesos' "pull if not present" does. Otherwise
`skopeo copy docker://REF oci:ROOT/tmp/pull-*/layout:image --dest-shared-blob-dir ROOT/blobs` fetches
the manifest and every blob the store does not have yet (skopeo reuses blobs already in the shared
directory, so a layer two images share is downloaded and stored once); skopeo checks every blob against
its digest. Then `umoci raw unpack` lays the rootfs out in the pull's temp directory, reading a private
blob directory there: the manifest as read and checked against its digest (skopeo writes a manifest in
place, not by a rename, so another pull of the same manifest could show a reader a short one) and hard
links to the other blobs. The rootfs is renamed to `rootfs/<hex>`, and the record is written (temp
file + rename). A crash at any point leaves either a whole image or only pieces that are
not taken as one: temp directories are removed when the store opens, a rootfs without a record is
removed then too, and blobs that no record names are the GC's. Concurrent pulls of one reference
coalesce: one skopeo run, the others wait for its outcome (its error too); two references of one
manifest unpack it once.

TLS. skopeo verifies TLS by default; `--src-tls-verify=false` (plain HTTP or an unverified certificate)
is passed only for a loopback registry (127.0.0.0/8, ::1, localhost: Docker's rule) and for the
registries in `insecure_registries` (`host:port`, or a host for any port). Signatures are not checked
(the policy accepts anything): an image is trusted by the registry it comes from, and pinned by digest
where that matters. Registry credentials are skopeo's own (its auth file); none are passed here.

Errors. Every failure is an `ImagePullError` whose `reason` reads as a TASK_FAILED message and whose
`kind` (`PullFailure`) tells them apart: the reference does not parse; the registry has no such
tag/digest/repository ("manifest unknown"); access denied; the registry is unreachable (connection
refused, DNS); TLS failed; a blob does not match its digest (corrupt layer); the unpack failed; no space
left; a timeout; the tools are missing. The reason keeps skopeo's (or umoci's) last error line.

Per-task root filesystem (`prepare_rootfs`): an **overlay** mount — the cached rootfs as the read-only
lower layer, an upper and a work directory in the task's directory — because it costs one mount(2)
(under a millisecond) whatever the image's size, shares the cached files' page cache between tasks, and
can never change the cache (overlayfs does not write to a lower layer). When the mount fails (no overlay
in the kernel, an upper directory on a file system overlayfs does not take, not root, a path overlayfs
options cannot carry), it falls back to a **copy** (`cp -a`, which keeps owners, modes, links, devices
and extended attributes; `--reflink=auto` makes it cheap where the file system can). Which one was used
is written to `TASK_DIR/container/rootfs.json` before anything is mounted, so `release_rootfs` works from
the disk alone after an agent restart: it unmounts whatever is mounted on the task's rootfs and removes
the directory, and is idempotent.

Garbage collection (`gc(in_use_digests)`): the caller says which images are in use (the digests of every
task being launched or running); `plan_collection` (pure) removes, least recently used first, unused
images until blobs plus unpacked rootfs are under `max_bytes`, with the blobs that no image still kept
names, and always the blobs that no image names. An image that is the lower layer of a mounted overlay
is in use whatever the caller says (it would pull the files from under a running task). Removing an image deletes its record first, so a crash
in the middle leaves only garbage. Blobs are removed only while no pull is under way (a pull may be
reusing one that no record names yet); new pulls wait for that part.

`FakeImageStore` is the in-memory twin for the agent's unit tests: same interface, configured images
and failures, pull counts.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from tessera.agent.executor.isolation import parse_mountinfo
from tessera.control_plane.core.images import ImageReference, parse_image_reference

log = logging.getLogger(__name__)

GIB = 1024 ** 3
DEFAULT_MAX_BYTES = 2 * GIB
DEFAULT_TIMEOUT = 600.0  # seconds for one skopeo or umoci run
CONTAINER_DIR = "container"  # in a task's directory: rootfs.json, rootfs/, upper/, work/
ROOTFS_RECORD = "rootfs.json"
OVERLAY = "overlay"
COPY = "copy"
POLICY = {"default": [{"type": "insecureAcceptAnything"}]}
_LAYOUT_TAG = "image"
_MNT_DETACH = 2
_BLOB_READ_ATTEMPTS = 50
_REASON_DETAIL_LIMIT = 400


# ---- values ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageConfig:
    """What the OCI image config says about running the image (`config` of the config blob)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""

    def process_args(self, command: Sequence[str] = ()) -> tuple[str, ...]:
        """The container's argv, as Docker builds it: the entrypoint followed by the task's command, or by
        the image's Cmd when the task gives none."""
        return self.entrypoint + (tuple(command) if command else self.cmd)

    def to_json(self) -> dict[str, Any]:
        return {"Entrypoint": list(self.entrypoint), "Cmd": list(self.cmd), "Env": list(self.env),
                "WorkingDir": self.working_dir, "User": self.user}

    @staticmethod
    def from_json(data: Mapping[str, Any] | None) -> ImageConfig:
        """From the `config` object of an OCI image config (any field may be missing or null)."""
        data = data or {}

        def strings(key: str) -> tuple[str, ...]:
            value = data.get(key) or ()
            return tuple(str(v) for v in value) if isinstance(value, list) else ()

        return ImageConfig(entrypoint=strings("Entrypoint"), cmd=strings("Cmd"), env=strings("Env"),
                           working_dir=str(data.get("WorkingDir") or ""), user=str(data.get("User") or ""))


@dataclass(frozen=True)
class Image:
    """An image in the store. `digest` is its manifest's digest; `reference` the canonical reference it
    was asked for; `rootfs` the cached, read-only root filesystem (give tasks `prepare_rootfs`)."""

    digest: str
    reference: str
    rootfs: Path
    config: ImageConfig
    size_bytes: int = 0


class PullFailure(StrEnum):
    INVALID_REFERENCE = "invalid-reference"
    NOT_FOUND = "not-found"
    UNAUTHORIZED = "unauthorized"
    UNREACHABLE = "unreachable"
    TLS = "tls"
    CORRUPT = "corrupt"
    UNPACK = "unpack"
    NO_SPACE = "no-space"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"
    FAILED = "failed"


class ImagePullError(Exception):
    """A pull (or a rootfs preparation) failed; `reason` is the TASK_FAILED message, `kind` which way."""

    def __init__(self, reason: str, kind: PullFailure = PullFailure.FAILED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


class Images(Protocol):
    """The port the agent uses; `ImageStore` and `FakeImageStore` implement it."""

    def available(self) -> str | None: ...
    def pull(self, reference: str) -> Image: ...
    def prepare_rootfs(self, image: Image, task_dir: Path) -> Path: ...
    def release_rootfs(self, task_dir: Path) -> None: ...
    def gc(self, in_use_digests: set[str]) -> list[str]: ...


# ---- skopeo's errors ---------------------------------------------------------------------------------------
_LOGRUS_MSG = re.compile(r'msg="((?:[^"\\]|\\.)*)"')
_CLASSES: tuple[tuple[PullFailure, str, tuple[str, ...]], ...] = (
    (PullFailure.NO_SPACE, "no space left on the agent's image store", ("no space left on device",)),
    (PullFailure.CORRUPT, "corrupt layer: its content does not match its digest",
     ("digest did not match", "digest mismatch", "size mismatch")),
    (PullFailure.TLS, "TLS with the registry failed (plain HTTP is allowed only to a registry on "
                      "127.0.0.0/8, ::1 or localhost, or one named with --insecure-registry)",
     ("server gave http response to https client", "x509:", "tls:", "certificate")),
    (PullFailure.NOT_FOUND, "manifest unknown: the registry has no such tag, digest or repository",
     ("manifest unknown", "name unknown", "repository name not known", "not found")),
    (PullFailure.UNAUTHORIZED, "the registry refused access (authentication required or denied)",
     ("unauthorized", "authentication required", "access to the resource is denied")),
    (PullFailure.UNREACHABLE, "registry unreachable",
     ("connection refused", "no such host", "i/o timeout", "network is unreachable", "no route to host",
      "connection reset", "server misbehaving", "dial tcp")),
)


def last_error_line(stderr: str) -> str:
    """The last non-empty line of a tool's stderr, without logrus' `time=... level=...` frame."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1]
    match = _LOGRUS_MSG.search(line)
    if match:
        line = match.group(1).replace('\\"', '"').replace("\\\\", "\\")
    return line if len(line) <= _REASON_DETAIL_LIMIT else line[:_REASON_DETAIL_LIMIT] + "…"


def classify_pull_error(stderr: str) -> tuple[PullFailure, str]:
    """(kind, explanation) of a failed `skopeo copy`, from its stderr."""
    text = stderr.lower()
    for kind, explanation, needles in _CLASSES:
        if any(needle in text for needle in needles):
            return kind, explanation
    return PullFailure.FAILED, "skopeo failed"


def parse_reference(reference: str) -> ImageReference:
    """`parse_image_reference`, its ValueError as the pull's error (kind INVALID_REFERENCE)."""
    try:
        return parse_image_reference(reference)
    except ValueError as exc:
        raise ImagePullError(f"invalid image reference {reference!r}: {exc}",
                             PullFailure.INVALID_REFERENCE) from exc


def _pull_error(reference: str, kind: PullFailure, explanation: str, detail: str = "") -> ImagePullError:
    reason = f"pulling image {reference} failed: {explanation}"
    return ImagePullError(reason + (f" ({detail})" if detail else ""), kind)


# ---- garbage collection (pure) -----------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredImage:
    digest: str
    last_used: float
    rootfs_bytes: int
    blobs: tuple[str, ...]


@dataclass(frozen=True)
class CollectionPlan:
    images: tuple[str, ...]  # manifest digests to remove, least recently used first
    blobs: tuple[str, ...]  # blob digests to remove (named by no image kept)
    bytes_after: int


def plan_collection(images: Iterable[StoredImage], blob_sizes: Mapping[str, int], in_use: set[str],
                    max_bytes: int) -> CollectionPlan:
    """Which unused images and blobs to remove to bring the store under `max_bytes`. The store's size
    is the blobs on disk plus the unpacked rootfs of every image. Blobs named by no image are always
    removed; then unused images go, least recently used first (ties by digest), each with the blobs no
    remaining image names, until the size is at most `max_bytes`. Images in use are never removed, even
    when that leaves the store over its bound."""
    kept = sorted(images, key=lambda image: (image.last_used, image.digest))
    refs: dict[str, int] = {}
    for image in kept:
        for blob in set(image.blobs):
            refs[blob] = refs.get(blob, 0) + 1
    removed_blobs = [blob for blob in sorted(blob_sizes) if blob not in refs]
    total = sum(image.rootfs_bytes for image in kept) + sum(
        size for blob, size in blob_sizes.items() if blob in refs)
    removed_images: list[str] = []
    for image in kept:
        if total <= max_bytes:
            break
        if image.digest in in_use:
            continue
        removed_images.append(image.digest)
        total -= image.rootfs_bytes
        for blob in set(image.blobs):
            refs[blob] -= 1
            if refs[blob] == 0:
                removed_blobs.append(blob)
                total -= blob_sizes.get(blob, 0)
    return CollectionPlan(images=tuple(removed_images), blobs=tuple(removed_blobs), bytes_after=total)


# ---- the store -----------------------------------------------------------------------------------------
@dataclass
class _Record:
    digest: str
    config_digest: str
    blobs: tuple[str, ...]
    config: ImageConfig
    rootfs_bytes: int
    references: list[str]
    last_used: float

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "config_digest": self.config_digest, "blobs": list(self.blobs),
                "config": self.config.to_json(), "rootfs_bytes": self.rootfs_bytes,
                "references": self.references, "last_used": self.last_used}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> _Record:
        return _Record(digest=str(data["digest"]), config_digest=str(data["config_digest"]),
                       blobs=tuple(str(b) for b in data["blobs"]), config=ImageConfig.from_json(data["config"]),
                       rootfs_bytes=int(data["rootfs_bytes"]), references=[str(r) for r in data["references"]],
                       last_used=float(data["last_used"]))


def _hex(digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    if algorithm != "sha256" or not re.fullmatch(r"[a-f0-9]{64}", hexpart):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hexpart


def _write_json_atomically(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


def disk_usage(path: Path) -> int:
    """Bytes `path` holds on disk (allocated blocks; a hard-linked file counted once); no symlink is
    followed."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            st = current.lstat()
        except FileNotFoundError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(current) as entries:
                stack.extend(Path(entry.path) for entry in entries)
    return total


class ImageStore:
    """The image store under `root` (see the module docstring). Thread-safe; one process per root."""

    def __init__(self, root: Path, *, insecure_registries: Sequence[str] = (),
                 max_bytes: int = DEFAULT_MAX_BYTES, skopeo: str = "skopeo", umoci: str = "umoci",
                 timeout: float = DEFAULT_TIMEOUT, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.insecure_registries = tuple(insecure_registries)
        self.max_bytes = max_bytes
        self.skopeo = skopeo
        self.umoci = umoci
        self.timeout = timeout
        self._clock = clock
        self.blobs_dir = self.root / "blobs"
        self.images_dir = self.root / "images"
        self.rootfs_dir = self.root / "rootfs"
        self.tmp_dir = self.root / "tmp"
        self.policy_path = self.root / "policy.json"
        self._cond = threading.Condition()
        self._records: dict[str, _Record] = {}  # manifest digest -> record
        self._by_reference: dict[str, str] = {}  # canonical reference -> manifest digest
        self._inflight: dict[str, Future[Image]] = {}  # canonical reference -> the pull under way
        self._unpacking: dict[str, threading.Lock] = {}  # manifest digest -> held while unpacking it (kept)
        self._active_pulls = 0
        self._removing_blobs = False
        self._opened = False
        self.skopeo_runs = 0  # how many times skopeo was started (for tests and metrics)

    # ---- opening -----------------------------------------------------------------------------------------
    def _open(self) -> None:
        """Create the layout, drop what a crash left half-made, load the records (once)."""
        with self._cond:
            if self._opened:
                return
            for directory in (self.root, self.blobs_dir / "sha256", self.images_dir, self.rootfs_dir, self.tmp_dir):
                directory.mkdir(parents=True, exist_ok=True)
            self.root.chmod(0o700)
            for leftover in self.tmp_dir.iterdir():
                _remove_tree(leftover)
            _write_json_atomically(self.policy_path, POLICY)
            for path in self.images_dir.glob("*.json"):
                try:
                    record = _Record.from_json(json.loads(path.read_text()))
                    if path.stem != _hex(record.digest) or not (self.rootfs_dir / path.stem).is_dir():
                        raise ValueError("its rootfs is missing")
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    log.warning("image store: dropping unreadable image record %s: %s", path, exc)
                    path.unlink(missing_ok=True)
                    continue
                self._records[record.digest] = record
                for reference in record.references:
                    self._by_reference[reference] = record.digest
            for rootfs in self.rootfs_dir.iterdir():
                if f"sha256:{rootfs.name}" not in self._records:  # unpacked, but its record never written
                    _remove_tree(rootfs)
            self._opened = True

    def available(self) -> str | None:
        """None when the store can pull and unpack, else why not (for the agent's start-up message and
        `tessera agents`)."""
        for tool, package in ((self.skopeo, "skopeo"), (self.umoci, "umoci")):
            if os.sep in tool:
                if not os.access(tool, os.X_OK):
                    return f"{tool} is not an executable (install the package {package})"
            elif shutil.which(tool) is None:
                return f"{tool} not found on PATH (install the package {package})"
        try:
            self._open()
        except OSError as exc:
            return f"image store {self.root} is not usable: {exc.strerror or exc}"
        return None

    # ---- queries -----------------------------------------------------------------------------------------
    def _image(self, record: _Record, reference: str) -> Image:
        size = record.rootfs_bytes + sum(self._blob_size(blob) for blob in record.blobs)
        return Image(digest=record.digest, reference=reference, rootfs=self.rootfs_dir / _hex(record.digest),
                     config=record.config, size_bytes=size)

    def _blob_size(self, digest: str) -> int:
        try:
            return (self.blobs_dir / "sha256" / _hex(digest)).stat().st_size
        except (OSError, ValueError):
            return 0

    def _lookup(self, ref: ImageReference) -> _Record | None:
        digest = self._by_reference.get(str(ref))
        if digest is None and ref.digest is not None:
            digest = ref.digest
        return self._records.get(digest) if digest else None

    def cached(self, reference: str) -> Image | None:
        """The image `reference` names if the store has it (no registry contact, no use recorded).
        Raises ImagePullError for a reference that does not parse."""
        ref = parse_reference(reference)
        self._open()
        with self._cond:
            record = self._lookup(ref)
            return self._image(record, str(ref)) if record else None

    def images(self) -> list[Image]:
        """Every image in the store (under the first reference it was pulled as)."""
        self._open()
        with self._cond:
            return [self._image(r, r.references[0] if r.references else r.digest) for r in self._records.values()]

    def size_bytes(self) -> int:
        """Blobs plus unpacked root filesystems, as the garbage collector counts them."""
        self._open()
        with self._cond:
            rootfs = sum(r.rootfs_bytes for r in self._records.values())
        return rootfs + sum(self._blob_sizes().values())

    def _blob_sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        with os.scandir(self.blobs_dir / "sha256") as entries:
            for entry in entries:
                if re.fullmatch(r"[a-f0-9]{64}", entry.name):
                    with contextlib.suppress(FileNotFoundError):
                        sizes[f"sha256:{entry.name}"] = entry.stat(follow_symlinks=False).st_size
        return sizes

    # ---- pull --------------------------------------------------------------------------------------------
    def pull(self, reference: str) -> Image:
        """The image `reference` names, from the store or else from its registry (blocking). Raises
        ImagePullError."""
        ref = parse_reference(reference)
        key = str(ref)
        try:
            self._open()
        except OSError as exc:
            raise _pull_error(key, PullFailure.NO_SPACE if exc.errno == errno.ENOSPC else PullFailure.UNAVAILABLE,
                              f"the image store {self.root} is not usable", exc.strerror or str(exc)) from exc
        with self._cond:
            record = self._lookup(ref)
            if record is not None:
                self._touch(record, key)
                return self._image(record, key)
            future = self._inflight.get(key)
            owner = future is None
            if future is None:
                future = self._inflight[key] = Future()
        if not owner:
            return future.result()
        try:
            image = self._pull_new(ref)
        except ImagePullError as exc:
            future.set_exception(exc)
            raise
        except Exception as exc:  # a malformed manifest or config, say: still a reason, never a crash
            error = _pull_error(key, PullFailure.FAILED, "unexpected error", f"{type(exc).__name__}: {exc}")
            future.set_exception(error)
            raise error from exc
        except BaseException:  # interrupted: the waiters must not wait forever
            future.set_exception(_pull_error(key, PullFailure.FAILED, "the pull was interrupted"))
            raise
        else:
            future.set_result(image)
            return image
        finally:
            with self._cond:
                del self._inflight[key]

    def _touch(self, record: _Record, reference: str) -> None:
        """Record a use (under the lock): the LRU time and, for a new reference, its name."""
        record.last_used = self._clock()
        if reference not in record.references:
            record.references.append(reference)
            self._by_reference[reference] = record.digest
        with contextlib.suppress(OSError):  # a lost use time only makes the GC a little less fair
            _write_json_atomically(self.images_dir / f"{_hex(record.digest)}.json", record.to_json())

    def _insecure(self, ref: ImageReference) -> bool:
        if ref.is_loopback_registry:
            return True
        return any(entry in (ref.registry, ref.host) for entry in self.insecure_registries)

    def _pull_new(self, ref: ImageReference) -> Image:
        key = str(ref)
        missing = self.available()
        if missing is not None:
            raise _pull_error(key, PullFailure.UNAVAILABLE, "the agent cannot pull images", missing)
        with self._cond:
            self._cond.wait_for(lambda: not self._removing_blobs)
            self._active_pulls += 1
        try:
            work = Path(tempfile.mkdtemp(prefix="pull-", dir=self.tmp_dir))
            try:
                return self._fetch_and_unpack(ref, work)
            finally:
                _remove_tree(work)
        except OSError as exc:  # our own writes (temp dirs, records, renames)
            kind = PullFailure.NO_SPACE if exc.errno == errno.ENOSPC else PullFailure.FAILED
            explanation = "no space left on the agent's image store" if kind is PullFailure.NO_SPACE \
                else "the image store could not write"
            raise _pull_error(key, kind, explanation, exc.strerror or str(exc)) from exc
        finally:
            with self._cond:
                self._active_pulls -= 1
                self._cond.notify_all()

    def _run(self, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=self.timeout, check=False, start_new_session=True)

    def _fetch_and_unpack(self, ref: ImageReference, work: Path) -> Image:
        key = str(ref)
        layout = work / "layout"
        cmd = [self.skopeo, "--policy", str(self.policy_path), "--tmpdir", str(work), "copy", "--quiet",
               f"--src-tls-verify={'false' if self._insecure(ref) else 'true'}",
               "--dest-shared-blob-dir", str(self.blobs_dir), ref.transport_name(), f"oci:{layout}:{_LAYOUT_TAG}"]
        with self._cond:
            self.skopeo_runs += 1
        log.info("pulling image %s", key)
        try:
            done = self._run(cmd)
        except subprocess.TimeoutExpired as exc:
            raise _pull_error(key, PullFailure.TIMEOUT, f"skopeo did not finish within {self.timeout:g}s") from exc
        if done.returncode != 0:
            kind, explanation = classify_pull_error(done.stderr)
            raise _pull_error(key, kind, explanation, last_error_line(done.stderr) or f"exit {done.returncode}")

        index = json.loads((layout / "index.json").read_text())
        digest = str(index["manifests"][0]["digest"])
        manifest_bytes = self._read_blob(key, digest)
        manifest = json.loads(manifest_bytes)
        config_digest = str(manifest["config"]["digest"])
        layers = tuple(str(layer["digest"]) for layer in manifest.get("layers") or ())
        config = ImageConfig.from_json(json.loads(self._read_blob(key, config_digest)).get("config"))

        with self._cond:
            lock = self._unpacking.setdefault(digest, threading.Lock())
        with lock:  # two references of one manifest: one unpack
            with self._cond:
                record = self._records.get(digest)
                if record is not None:
                    self._touch(record, key)
                    return self._image(record, key)
            rootfs = self._unpack(key, layout, work, manifest_bytes, (config_digest, *layers))
            final = self.rootfs_dir / _hex(digest)
            if final.exists():  # unpacked before a crash, never recorded
                _remove_tree(final)
            os.rename(rootfs, final)
            record = _Record(digest=digest, config_digest=config_digest, blobs=(digest, config_digest, *layers),
                             config=config, rootfs_bytes=disk_usage(final), references=[key],
                             last_used=self._clock())
            _write_json_atomically(self.images_dir / f"{_hex(digest)}.json", record.to_json())
            with self._cond:
                self._records[digest] = record
                self._by_reference[key] = digest
        log.info("pulled image %s (%s)", key, digest)
        return self._image(record, key)

    def _read_blob(self, key: str, digest: str) -> bytes:
        """A blob of the shared directory, checked against its digest. skopeo writes a manifest in place
        (not through a rename), so while another pull of the same manifest rewrites it, a read can see
        it short: read again, a bounded number of times."""
        path = self.blobs_dir / "sha256" / _hex(digest)
        for _ in range(_BLOB_READ_ATTEMPTS):
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == _hex(digest):
                return data
            time.sleep(0.02)
        raise _pull_error(key, PullFailure.CORRUPT, "corrupt blob in the image store",
                          f"{digest} does not match its digest")

    def _unpack(self, key: str, layout: Path, work: Path, manifest: bytes, blobs: Sequence[str]) -> Path:
        """`umoci raw unpack` from a private blob directory: the manifest as read and checked, the other
        blobs hard links into the shared directory (each was renamed into place whole, so a link always
        sees a whole file)."""
        private = layout / "blobs" / "sha256"
        private.mkdir(parents=True, exist_ok=True)
        (private / hashlib.sha256(manifest).hexdigest()).write_bytes(manifest)
        for blob in blobs:
            source, target = self.blobs_dir / "sha256" / _hex(blob), private / _hex(blob)
            if not target.exists():
                try:
                    os.link(source, target)
                except OSError:  # a file system without hard links: a symlink reads the same file
                    target.symlink_to(source)
        rootfs = work / "rootfs"
        cmd = [self.umoci, "raw", "unpack", *(["--rootless"] if os.geteuid() != 0 else []),
               "--image", f"{layout}:{_LAYOUT_TAG}", str(rootfs)]
        try:
            done = self._run(cmd)
        except subprocess.TimeoutExpired as exc:
            raise _pull_error(key, PullFailure.TIMEOUT, f"umoci did not unpack within {self.timeout:g}s") from exc
        if done.returncode != 0:
            detail = last_error_line(done.stderr) or f"exit {done.returncode}"
            if "no space left on device" in done.stderr.lower():
                raise _pull_error(key, PullFailure.NO_SPACE, "no space left on the agent's image store", detail)
            raise _pull_error(key, PullFailure.UNPACK, "unpacking the image failed", detail)
        return rootfs

    # ---- per-task root filesystems ---------------------------------------------------------------------------
    def prepare_rootfs(self, image: Image, task_dir: Path) -> Path:
        """`prepare_rootfs` (module level), marking the image used now for the GC."""
        target = prepare_rootfs(image, task_dir, timeout=self.timeout)
        with self._cond:
            known = self._records.get(image.digest)
            if known is not None:
                known.last_used = self._clock()
        return target

    def release_rootfs(self, task_dir: Path) -> None:
        """Unmount and remove a task's root filesystem; idempotent, and works from the disk alone."""
        release_rootfs(task_dir)

    # ---- garbage collection ----------------------------------------------------------------------------------
    def gc(self, in_use_digests: set[str]) -> list[str]:
        """Remove unused images, least recently used first, until the store is under `max_bytes`, and
        blobs no image names. Returns the manifest digests of the images removed. In use: the digests
        given (every task being launched or running) and, whatever the caller says, every image that
        is the lower layer of a mounted overlay (a task's rootfs)."""
        self._open()
        mounted = _overlay_lowers()
        with self._cond:
            in_use = set(in_use_digests) | {d for d in self._records if str(self.rootfs_dir / _hex(d)) in mounted}
            stored = [StoredImage(r.digest, r.last_used, r.rootfs_bytes, r.blobs) for r in self._records.values()]
            plan = plan_collection(stored, self._blob_sizes(), in_use, self.max_bytes)
            for digest in plan.images:
                record = self._records.pop(digest)
                for reference in record.references:
                    if self._by_reference.get(reference) == digest:
                        del self._by_reference[reference]
                (self.images_dir / f"{_hex(digest)}.json").unlink(missing_ok=True)  # the commit point
            remove_blobs = self._active_pulls == 0 and bool(plan.blobs)
            if remove_blobs:
                self._removing_blobs = True
            keep = {blob for r in self._records.values() for blob in r.blobs}
        try:
            for digest in plan.images:
                _remove_tree(self.rootfs_dir / _hex(digest), via=self.tmp_dir)
                log.info("image store: removed image %s", digest)
            if remove_blobs:
                for blob in plan.blobs:
                    if blob not in keep:
                        (self.blobs_dir / "sha256" / _hex(blob)).unlink(missing_ok=True)
        finally:
            if remove_blobs:
                with self._cond:
                    self._removing_blobs = False
                    self._cond.notify_all()
        return list(plan.images)


# ---- overlay, copies and their removal -------------------------------------------------------------------------
_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> str | None:
    """Mount the overlay; None on success, else why not."""
    paths = (lower, upper, work)
    if any(ch in str(p) for p in paths for ch in ",:\\"):
        return "a path has a character overlayfs options cannot carry (',', ':' or '\\')"
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    if _c().mount(b"overlay", os.fsencode(target), b"overlay", 0, options.encode()) != 0:
        code = ctypes.get_errno()
        return f"mount -t overlay: {os.strerror(code)}"
    return None


def _mountpoints() -> list[str]:
    try:
        return [m.mountpoint for m in parse_mountinfo(Path("/proc/self/mountinfo").read_text())]
    except OSError:
        return []


def _overlay_lowers() -> set[str]:
    """The lower directories of every overlay mounted (from /proc/self/mountinfo)."""
    lowers: set[str] = set()
    try:
        mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return lowers
    for mount in mounts:
        if mount.fstype == "overlay":
            for option in mount.options:
                if option.startswith("lowerdir="):
                    lowers.update(option[len("lowerdir="):].split(":"))
    return lowers


def _is_mounted(path: Path) -> bool:
    return os.path.abspath(path) in _mountpoints()


def read_rootfs_record(task_dir: Path) -> dict[str, Any] | None:
    """What `prepare_rootfs` wrote for a task (mode "overlay" or "copy", the image digest), or None."""
    try:
        data = json.loads((Path(task_dir) / CONTAINER_DIR / ROOTFS_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def prepare_rootfs(image: Image, task_dir: Path, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """A writable root filesystem for one task, `TASK_DIR/container/rootfs`: an overlay over the cached
    rootfs, or a copy of it when the overlay cannot be mounted (see the module docstring). Idempotent
    for one image. Raises ImagePullError when neither works. Needs no store: the task's supervisor calls it
    with the image the agent pulled."""
    container = Path(task_dir) / CONTAINER_DIR
    target = container / "rootfs"
    existing = read_rootfs_record(task_dir)
    if existing is not None and existing.get("image") == image.digest and existing.get("ready"):
        if existing.get("mode") == COPY or _is_mounted(target):
            return target
    if existing is not None:
        release_rootfs(task_dir)
    lower = image.rootfs
    if not lower.is_dir():
        raise ImagePullError(f"image {image.reference} ({image.digest}) is no longer in the store",
                             PullFailure.FAILED)
    container.mkdir(parents=True, exist_ok=True)
    os.chmod(container, 0o711)
    upper, work = container / "upper", container / "work"
    record: dict[str, Any] = {"image": image.digest, "lower": str(lower), "mode": OVERLAY, "ready": False}
    _write_json_atomically(container / ROOTFS_RECORD, record)  # before mounting: release finds it
    for directory in (upper, work, target):
        directory.mkdir(exist_ok=True)
    lower_st = lower.stat()  # the container's "/" takes the upper directory's owner and mode
    os.chown(upper, lower_st.st_uid, lower_st.st_gid)
    os.chmod(upper, stat.S_IMODE(lower_st.st_mode))
    problem = _mount_overlay(lower, upper, work, target)
    if problem is None:
        record["ready"] = True
    else:
        log.warning("overlay rootfs for %s not possible (%s): copying the image instead", task_dir, problem)
        shutil.rmtree(upper, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        record.update(mode=COPY, overlay_error=problem)
        _write_json_atomically(container / ROOTFS_RECORD, record)
        done = subprocess.run(["cp", "-a", "--reflink=auto", f"{lower}/.", str(target)],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if done.returncode != 0:
            raise ImagePullError(f"preparing the root filesystem of image {image.reference} failed: overlay: "
                                 f"{problem}; copy: {last_error_line(done.stderr)}",
                                 PullFailure.NO_SPACE if "No space" in done.stderr else PullFailure.FAILED)
        record["ready"] = True
    _write_json_atomically(container / ROOTFS_RECORD, record)
    return target


def release_rootfs(task_dir: Path) -> None:
    """Unmount whatever is mounted on `TASK_DIR/container/rootfs` (lazily when it is busy) and remove
    `TASK_DIR/container`; idempotent."""
    container = Path(task_dir) / CONTAINER_DIR
    target = os.path.abspath(container / "rootfs")
    for _ in range(16):  # a mount stacked on another: unmount each
        if target not in _mountpoints():
            break
        if _c().umount2(os.fsencode(target), 0) != 0:
            code = ctypes.get_errno()
            if code == errno.EINVAL:  # not a mount point any more
                break
            if _c().umount2(os.fsencode(target), _MNT_DETACH) != 0:
                code = ctypes.get_errno()
                raise OSError(code, f"cannot unmount {target}: {os.strerror(code)}")
    if container.exists():
        _remove_tree(container)


def _remove_tree(path: Path, via: Path | None = None) -> None:
    """Remove a file or directory tree; with `via`, rename it there first, so that a crash half-way
    leaves the remains in a directory that is emptied at start rather than in a place that is read."""
    if via is not None and path.exists():
        moved = via / f"removing-{path.name}-{os.getpid()}-{threading.get_ident()}"
        try:
            os.rename(path, moved)
            path = moved
        except OSError:
            pass
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# ---- the twin ----------------------------------------------------------------------------------------------
@dataclass
class FakeImageStore:
    """In-memory twin of `ImageStore` for the agent's unit tests. `add(reference, config)` makes an
    image pullable; `fail(reference, kind, reason)` makes its pulls fail; `unavailable` is what
    `available()` says; `pulls` counts registry pulls per canonical reference (a cached image is not
    pulled again, as in the real store). `prepare_rootfs` creates `TASK_DIR/container/rootfs` (an empty
    directory) and records it; `release_rootfs` removes it."""

    unavailable: str | None = None
    max_images: int | None = None
    pulls: dict[str, int] = field(default_factory=dict)
    prepared: dict[Path, str] = field(default_factory=dict)
    _published: dict[str, tuple[str, ImageConfig]] = field(default_factory=dict)
    _failures: dict[str, ImagePullError] = field(default_factory=dict)
    _cached: dict[str, Image] = field(default_factory=dict)
    _used: dict[str, int] = field(default_factory=dict)
    _tick: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, reference: str, config: ImageConfig | None = None, digest: str | None = None) -> str:
        """Publish an image as `reference`; returns its digest (derived from the reference if not given)."""
        key = str(parse_image_reference(reference))
        digest = digest or "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        self._published[key] = (digest, config or ImageConfig(cmd=("sh",), env=("PATH=/bin",)))
        return digest

    def fail(self, reference: str, kind: PullFailure, reason: str = "") -> None:
        key = str(parse_image_reference(reference))
        self._failures[key] = _pull_error(key, kind, reason or kind.value)

    def available(self) -> str | None:
        return self.unavailable

    def pull(self, reference: str) -> Image:
        ref = parse_reference(reference)
        key = str(ref)
        with self._lock:
            self._tick += 1
            cached = self._cached.get(key) or next(
                (i for i in self._cached.values() if ref.digest is not None and i.digest == ref.digest), None)
            if cached is not None:
                self._used[cached.digest] = self._tick
                return cached
            if self.unavailable is not None:
                raise _pull_error(key, PullFailure.UNAVAILABLE, "the agent cannot pull images", self.unavailable)
            self.pulls[key] = self.pulls.get(key, 0) + 1
            if key in self._failures:
                raise self._failures[key]
            published = self._published.get(key) or next(
                (p for p in self._published.values() if ref.digest is not None and p[0] == ref.digest), None)
            if published is None:
                raise _pull_error(key, PullFailure.NOT_FOUND, "manifest unknown: the registry has no such tag, "
                                  "digest or repository")
            digest, config = published
            image = Image(digest=digest, reference=key, rootfs=Path("/nonexistent/fake-images") / _hex(digest),
                          config=config)
            self._cached[key] = image
            self._used[digest] = self._tick
            return image

    def prepare_rootfs(self, image: Image, task_dir: Path) -> Path:
        target = Path(task_dir) / CONTAINER_DIR / "rootfs"
        target.mkdir(parents=True, exist_ok=True)
        self.prepared[Path(task_dir)] = image.digest
        return target

    def release_rootfs(self, task_dir: Path) -> None:
        self.prepared.pop(Path(task_dir), None)
        shutil.rmtree(Path(task_dir) / CONTAINER_DIR, ignore_errors=True)

    def gc(self, in_use_digests: set[str]) -> list[str]:
        """Keeps at most `max_images` images (None: all), removing the least recently used unused ones."""
        with self._lock:
            digests = sorted({i.digest for i in self._cached.values()}, key=lambda d: self._used.get(d, 0))
            if self.max_images is None:
                return []
            removed: list[str] = []
            for digest in digests:
                if len(digests) - len(removed) <= self.max_images:
                    break
                if digest in in_use_digests:
                    continue
                removed.append(digest)
                self._cached = {k: v for k, v in self._cached.items() if v.digest != digest}
            return removed
