"""The image store against a real registry (Debian's docker-registry on 127.0.0.1), real skopeo and umoci,
and real overlay mounts.

Pinned here: pulls by tag and by digest; a second pull of a cached image (also after a restart) sends
the registry no request at all; a layer two images share is fetched and stored once; concurrent pulls of
one image run skopeo once and share its outcome, errors included; each failure (bad reference, missing
tag, unreachable registry, corrupt layer, unpack failure, no space) has its own kind and reason; a
task's overlay rootfs is writable and leaves the cache untouched, the copy fallback too; release works
from the disk alone; the GC removes unused images over the bound, keeps those in use and the layers
they share; leftovers of a crash are not taken for images; the twin keeps the same contract.

Needs root (mounts) and the Debian packages docker-registry, skopeo, umoci and busybox-static: a test
fails naming what is missing. Mounts made here live under directories named
`tessera-image-test-<pid>-*`; those of a test process that died are unmounted at the next run.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tessera.agent.executor.images import (
    FakeImageStore,
    Image,
    ImagePullError,
    Images,
    ImageStore,
    PullFailure,
    read_rootfs_record,
    release_rootfs,
)
from tessera.agent.executor.isolation import parse_mountinfo
from tests.support.cluster import free_port, wait_for
from tests.support.registry import (
    Registry,
    corrupt_layer,
    push_broken_layer,
    push_busybox,
    require_tool,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PREFIX = "tessera-image-test-"
BUSYBOX = "tools/busybox:1.35"
WEB = "tools/web:1"
WEB_PAGE = {"/var/www/index.html": "hello from tessera\n"}


def _mounts() -> list[tuple[str, str]]:
    return [(m.mountpoint, m.fstype) for m in parse_mountinfo(Path("/proc/self/mountinfo").read_text())]


def _clean_leftovers() -> None:
    """Unmount and remove what a killed run of this module left (its pid no longer runs)."""
    libc = ctypes.CDLL(None, use_errno=True)
    tmp = Path(tempfile.gettempdir())
    for mountpoint, _ in sorted(_mounts(), key=lambda m: -len(m[0])):
        name = Path(mountpoint).relative_to(tmp).parts[0] if mountpoint.startswith(f"{tmp}/{PREFIX}") else ""
        pid = name[len(PREFIX):].split("-")[0] if name else ""
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            libc.umount2(os.fsencode(mountpoint), 2)  # MNT_DETACH
    for leftover in tmp.glob(f"{PREFIX}*"):
        pid = leftover.name[len(PREFIX):].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(leftover, ignore_errors=True)


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    if os.geteuid() != 0:
        pytest.fail("the image store tests mount overlays and tmpfs: run them as root")
    for tool in ("skopeo", "umoci"):
        require_tool(tool)
    _clean_leftovers()
    with Registry() as reg:
        push_busybox(reg, BUSYBOX)
        push_busybox(reg, WEB, WEB_PAGE)
        yield reg


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
    yield path
    for task_dir in path.glob("**/container"):
        release_rootfs(task_dir.parent)
    for mountpoint, _ in _mounts():
        if mountpoint.startswith(f"{path}/"):
            subprocess.run(["umount", "-l", mountpoint], check=False)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def store(workdir: Path) -> ImageStore:
    return ImageStore(workdir / "store")


def _manifest_requests(registry: Registry, repository: str) -> int:
    return registry.request_count(f"/v2/{repository}/manifests/")


def _layers(registry: Registry, repository: str, tag: str) -> list[str]:
    layers = registry.manifest(repository, tag)["layers"]
    assert isinstance(layers, list)
    return [str(layer["digest"]) for layer in layers]


def _blob_files(store: ImageStore) -> set[str]:
    return {f"sha256:{p.name}" for p in (store.blobs_dir / "sha256").iterdir()}


# ---- pulls ----------------------------------------------------------------------------------------------------
def test_pull_by_tag_unpacks_the_rootfs_and_reads_the_image_config(registry: Registry, store: ImageStore) -> None:
    assert store.available() is None
    image = store.pull(f"{registry.host}/{BUSYBOX}")
    assert image.reference == f"{registry.host}/{BUSYBOX}"
    assert image.digest == registry.digest("tools/busybox", "1.35")
    assert (image.rootfs / "bin/busybox").is_file()
    assert os.readlink(image.rootfs / "bin/sh") == "busybox"
    assert (image.rootfs / "etc/passwd").read_text().startswith("root:x:0:0:")
    assert image.config.cmd == ("sh",) and image.config.env == ("PATH=/bin",)
    assert image.config.working_dir == "/" and image.config.entrypoint == () and image.config.user == ""
    assert image.size_bytes > 1_000_000
    assert store.images() == [image]


def test_pull_by_digest_and_by_tag_and_digest(registry: Registry, workdir: Path) -> None:
    digest = push_busybox(registry, "tools/bydigest:1")
    image = ImageStore(workdir / "a").pull(f"{registry.host}/tools/bydigest@{digest}")
    assert image.digest == digest and (image.rootfs / "bin/busybox").is_file()
    both = ImageStore(workdir / "b").pull(f"{registry.host}/tools/bydigest:nosuchtag@{digest}")
    assert both.digest == digest  # the digest decides, as for Docker


def test_a_cached_image_is_pulled_without_any_registry_request(registry: Registry, workdir: Path) -> None:
    reference = f"{registry.host}/{BUSYBOX}"
    first = ImageStore(workdir / "store")
    assert first.cached(reference) is None
    image = first.pull(reference)
    assert first.cached(reference) == image
    before = len(registry.requests())
    assert first.pull(reference) == image
    assert first.pull(f"{registry.host}/tools/busybox@{image.digest}").digest == image.digest
    restarted = ImageStore(workdir / "store")  # an agent restart
    assert restarted.pull(reference).digest == image.digest
    assert len(registry.requests()) - before == 1  # only requests() own marker request
    assert first.skopeo_runs == 1 and restarted.skopeo_runs == 0


def test_a_layer_two_images_share_is_fetched_and_stored_once(registry: Registry, store: ImageStore) -> None:
    base, top = _layers(registry, "tools/web", "1")
    assert _layers(registry, "tools/busybox", "1.35") == [base]
    before = registry.request_count(f"/blobs/{base}", "GET")
    busybox = store.pull(f"{registry.host}/{BUSYBOX}")
    web = store.pull(f"{registry.host}/{WEB}")
    assert registry.request_count(f"/blobs/{base}", "GET") - before == 1
    assert registry.request_count(f"/blobs/{top}", "GET") >= 1
    records = [json.loads(p.read_text()) for p in store.images_dir.glob("*.json")]
    named = {blob for record in records for blob in record["blobs"]}
    assert _blob_files(store) == named and base in named and top in named
    assert (web.rootfs / "var/www/index.html").read_text() == WEB_PAGE["/var/www/index.html"]
    assert (web.rootfs / "bin/busybox").is_file() and not (busybox.rootfs / "var/www/index.html").exists()


def _gated_skopeo(workdir: Path) -> tuple[str, Path]:
    """A skopeo that waits for `release` in its directory before it runs (so concurrent pulls overlap)."""
    gate = workdir / "gate"
    gate.mkdir()
    script = gate / "skopeo"
    script.write_text(f"#!/bin/sh\ntouch {gate}/started-$$\ni=0\n"
                      f"while [ ! -e {gate}/release ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n"
                      f"exec {require_tool('skopeo')} \"$@\"\n")
    script.chmod(0o755)
    return str(script), gate


def _pull_concurrently(store: ImageStore, reference: str, gate: Path, n: int = 8) -> list[Image | ImagePullError]:
    results: list[Image | ImagePullError] = []
    entered = threading.Semaphore(0)
    lock = threading.Lock()

    def one() -> None:
        entered.release()
        try:
            outcome: Image | ImagePullError = store.pull(reference)
        except ImagePullError as exc:
            outcome = exc
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for _ in threads:
        assert entered.acquire(timeout=30)
    wait_for(lambda: any(gate.glob("started-*")), 30, what="the first skopeo run")
    # the store holds the others now, or they have yet to reach it (then they find the pull under way)
    (gate / "release").touch()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == n
    return results


def test_concurrent_pulls_of_one_image_run_skopeo_once(registry: Registry, workdir: Path) -> None:
    skopeo, gate = _gated_skopeo(workdir)
    store = ImageStore(workdir / "store", skopeo=skopeo)
    results = _pull_concurrently(store, f"{registry.host}/{WEB}", gate)
    assert all(isinstance(r, Image) for r in results)
    assert len({r.digest for r in results if isinstance(r, Image)}) == 1
    assert store.skopeo_runs == 1 and len(list(gate.glob("started-*"))) == 1


def test_concurrent_pulls_share_the_error_of_the_one_skopeo_run(registry: Registry, workdir: Path) -> None:
    skopeo, gate = _gated_skopeo(workdir)
    store = ImageStore(workdir / "store", skopeo=skopeo)
    results = _pull_concurrently(store, f"{registry.host}/tools/busybox:no-such-tag", gate)
    assert all(isinstance(r, ImagePullError) and r.kind is PullFailure.NOT_FOUND for r in results)
    assert len({str(r) for r in results}) == 1
    assert store.skopeo_runs == 1


# ---- failures -------------------------------------------------------------------------------------------------
def _pull_error(store: ImageStore, reference: str) -> ImagePullError:
    with pytest.raises(ImagePullError) as caught:
        store.pull(reference)
    return caught.value


def _nothing_half_made(store: ImageStore) -> None:
    assert list(store.images_dir.iterdir()) == [] and list(store.rootfs_dir.iterdir()) == []
    assert list(store.tmp_dir.iterdir()) == []


def test_a_reference_that_does_not_parse(registry: Registry, store: ImageStore) -> None:
    error = _pull_error(store, f"{registry.host}/Tools/busybox:1.35")
    assert error.kind is PullFailure.INVALID_REFERENCE
    assert error.reason == (f"invalid image reference '{registry.host}/Tools/busybox:1.35': repository name "
                            f"'Tools/busybox' must be lower-case")
    assert store.skopeo_runs == 0


def test_a_missing_tag(registry: Registry, store: ImageStore) -> None:
    error = _pull_error(store, f"{registry.host}/tools/busybox:9.99")
    assert error.kind is PullFailure.NOT_FOUND
    assert error.reason.startswith(f"pulling image {registry.host}/tools/busybox:9.99 failed: manifest unknown")
    assert error.reason.endswith("manifest unknown: manifest unknown)")
    _nothing_half_made(store)


def test_an_unreachable_registry(store: ImageStore) -> None:
    port = free_port()  # nothing listens there
    error = _pull_error(store, f"127.0.0.1:{port}/{BUSYBOX}")
    assert error.kind is PullFailure.UNREACHABLE
    assert "registry unreachable" in error.reason and error.reason.endswith("connection refused)")
    _nothing_half_made(store)


def test_a_corrupt_layer(registry: Registry, store: ImageStore) -> None:
    push_busybox(registry, "tools/corrupt:1", {"/etc/motd": "this layer gets corrupted\n"})
    layer = corrupt_layer(registry, "tools/corrupt", "1")
    error = _pull_error(store, f"{registry.host}/tools/corrupt:1")
    assert error.kind is PullFailure.CORRUPT
    assert "corrupt layer" in error.reason and f"Digest did not match, expected {layer}" in error.reason
    assert layer not in _blob_files(store)
    _nothing_half_made(store)


def test_an_unpack_failure(registry: Registry, store: ImageStore) -> None:
    push_broken_layer(registry, "tools/broken:1")
    error = _pull_error(store, f"{registry.host}/tools/broken:1")
    assert error.kind is PullFailure.UNPACK
    assert "unpacking the image failed" in error.reason and "tar" in error.reason
    _nothing_half_made(store)


def test_no_space_left(registry: Registry, workdir: Path) -> None:
    tiny = workdir / "tiny"
    tiny.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tessera-test-tiny", str(tiny)], check=True)
    try:
        store = ImageStore(tiny / "store")
        error = _pull_error(store, f"{registry.host}/{BUSYBOX}")
        assert error.kind is PullFailure.NO_SPACE
        assert "no space left" in error.reason and error.reason.endswith("no space left on device)")
        _nothing_half_made(store)
    finally:
        subprocess.run(["umount", str(tiny)], check=True)


def test_missing_skopeo_is_a_reason_not_a_crash(registry: Registry, workdir: Path) -> None:
    store = ImageStore(workdir / "store", skopeo="tessera-no-such-skopeo")
    assert store.available() == "tessera-no-such-skopeo not found on PATH (install the package skopeo)"
    error = _pull_error(store, f"{registry.host}/{BUSYBOX}")
    assert error.kind is PullFailure.UNAVAILABLE and "tessera-no-such-skopeo not found" in error.reason


def test_leftovers_of_a_crash_are_not_taken_for_images(registry: Registry, workdir: Path) -> None:
    store = ImageStore(workdir / "store")
    image = store.pull(f"{registry.host}/{BUSYBOX}")
    half = "sha256:" + "0" * 64
    (store.tmp_dir / "pull-crashed/layout").mkdir(parents=True)
    (store.rootfs_dir / half[7:] / "bin").mkdir(parents=True)  # unpacked, never recorded
    (store.images_dir / f"{'1' * 64}.json").write_text("{not json")
    (store.images_dir / f"{image.digest[7:]}.json").rename(store.images_dir / "moved.tmp")  # record not renamed in
    reopened = ImageStore(workdir / "store")
    assert reopened.available() is None
    assert reopened.images() == []
    assert list(reopened.tmp_dir.iterdir()) == [] and list(reopened.rootfs_dir.iterdir()) == []
    assert reopened.pull(f"{registry.host}/{BUSYBOX}").digest == image.digest
    assert reopened.skopeo_runs == 1


# ---- per-task root filesystems --------------------------------------------------------------------------------
def _tree(path: Path) -> dict[str, str]:
    out = {}
    for p in sorted(path.rglob("*")):
        out[str(p.relative_to(path))] = os.readlink(p) if p.is_symlink() else (
            p.read_bytes().hex() if p.is_file() else "dir")
    return out


def test_an_overlay_rootfs_is_writable_and_leaves_the_cache_untouched(registry: Registry, store: ImageStore,
                                                                      workdir: Path) -> None:
    image = store.pull(f"{registry.host}/{BUSYBOX}")
    cache_before = _tree(image.rootfs)
    task = workdir / "task-1"
    root = store.prepare_rootfs(image, task)
    assert root == task / "container/rootfs"
    assert (str(root), "overlay") in _mounts()
    assert read_rootfs_record(task) == {"image": image.digest, "lower": str(image.rootfs), "mode": "overlay",
                                        "ready": True}
    assert store.prepare_rootfs(image, task) == root  # idempotent
    # the task writes, changes and deletes; chroot runs the image's own shell in it
    done = subprocess.run(["chroot", str(root), "/bin/sh", "-c",
                           "echo written > /tmp/new && echo extra >> /etc/passwd && rm /bin/ls && cat /tmp/new"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout == "written\n", done.stderr
    assert (root / "tmp/new").read_text() == "written\n" and not (root / "bin/ls").exists()
    assert _tree(image.rootfs) == cache_before
    other = store.prepare_rootfs(image, workdir / "task-2")
    assert _tree(other) == cache_before  # another task sees the image, not the first task's changes

    store.release_rootfs(task)
    assert str(root) not in [m for m, _ in _mounts()] and not (task / "container").exists()
    store.release_rootfs(task)  # idempotent
    release_rootfs(workdir / "task-2")  # from the disk alone, as after an agent restart
    assert not (workdir / "task-2/container").exists()
    assert _tree(image.rootfs) == cache_before


def test_the_copy_fallback_when_no_overlay_can_be_mounted(registry: Registry, store: ImageStore,
                                                         workdir: Path) -> None:
    image = store.pull(f"{registry.host}/{BUSYBOX}")
    cache_before = _tree(image.rootfs)
    task = workdir / "task,with,commas"  # overlayfs options cannot carry a ','
    root = store.prepare_rootfs(image, task)
    record = read_rootfs_record(task)
    assert record is not None and record["mode"] == "copy" and "','" in record["overlay_error"]
    assert str(root) not in [m for m, _ in _mounts()]
    assert _tree(root) == cache_before
    assert os.stat(root).st_mode == os.stat(image.rootfs).st_mode
    (root / "etc/passwd").write_text("changed\n")
    assert _tree(image.rootfs) == cache_before
    store.release_rootfs(task)
    assert not (task / "container").exists()


# ---- garbage collection ---------------------------------------------------------------------------------------
def test_gc_removes_unused_images_over_the_bound_and_keeps_what_is_in_use(registry: Registry,
                                                                           workdir: Path) -> None:
    store = ImageStore(workdir / "store", max_bytes=1)
    busybox = store.pull(f"{registry.host}/{BUSYBOX}")
    web = store.pull(f"{registry.host}/{WEB}")
    base, top = _layers(registry, "tools/web", "1")
    assert store.gc({busybox.digest, web.digest}) == []
    assert store.gc({web.digest}) == [busybox.digest]
    assert not busybox.rootfs.exists() and web.rootfs.is_dir()
    assert {base, top, web.digest} <= _blob_files(store) and busybox.digest not in _blob_files(store)
    assert store.images() == [web]

    layer_fetches = registry.request_count(f"/blobs/{base}", "GET")
    again = store.pull(f"{registry.host}/{BUSYBOX}")  # gone, so pulled again; its layer is still here
    assert store.skopeo_runs == 3 and again.digest == busybox.digest
    assert registry.request_count(f"/blobs/{base}", "GET") == layer_fetches
    assert store.gc(set()) == [web.digest, busybox.digest]  # least recently used first
    assert store.images() == [] and _blob_files(store) == set() and store.size_bytes() == 0


def test_gc_keeps_the_lower_layer_of_a_mounted_rootfs(registry: Registry, workdir: Path) -> None:
    store = ImageStore(workdir / "store", max_bytes=1)
    busybox = store.pull(f"{registry.host}/{BUSYBOX}")
    web = store.pull(f"{registry.host}/{WEB}")
    root = store.prepare_rootfs(busybox, workdir / "task")
    assert store.gc(set()) == [web.digest]  # the caller forgot the task: its overlay still says so
    assert (root / "bin/busybox").is_file()
    store.release_rootfs(workdir / "task")
    assert store.gc(set()) == [busybox.digest]


def test_gc_within_the_bound_removes_only_blobs_no_image_names(registry: Registry, workdir: Path) -> None:
    store = ImageStore(workdir / "store")
    image = store.pull(f"{registry.host}/{BUSYBOX}")
    push_broken_layer(registry, "tools/broken-gc:1")
    _pull_error(store, f"{registry.host}/tools/broken-gc:1")  # leaves its blobs, which no image names
    named = set(json.loads((store.images_dir / f"{image.digest[7:]}.json").read_text())["blobs"])
    assert _blob_files(store) > named
    assert store.gc(set()) == []
    assert _blob_files(store) == named and store.images() == [image]


# ---- the twin keeps the contract -----------------------------------------------------------------------------
@dataclass
class Backend:
    store: Images
    publish: Callable[[str], str]  # repository:tag -> the reference to pull
    pulls: Callable[[str], int]  # how often the registry was asked for that repository


@pytest.fixture(params=["real", "fake"])
def backend(request: pytest.FixtureRequest, registry: Registry, workdir: Path) -> Backend:
    if request.param == "real":
        def publish(name: str) -> str:
            push_busybox(registry, name)
            return f"{registry.host}/{name}"
        return Backend(ImageStore(workdir / "store"), publish,
                       lambda name: _manifest_requests(registry, name.split(":")[0]))
    fake = FakeImageStore()

    def fake_publish(name: str) -> str:
        fake.add(f"r.test/{name}")
        return f"r.test/{name}"
    return Backend(fake, fake_publish, lambda name: sum(n for k, n in fake.pulls.items() if name.split(":")[0] in k))


def test_contract_pull_once_then_from_the_store(backend: Backend, workdir: Path) -> None:
    reference = backend.publish("contract/once:1")
    assert backend.store.available() is None
    image = backend.store.pull(reference)
    asked = backend.pulls("contract/once:1")
    assert asked >= 1
    assert backend.store.pull(reference).digest == image.digest
    assert backend.pulls("contract/once:1") == asked
    root = backend.store.prepare_rootfs(image, workdir / "task")
    assert root == workdir / "task/container/rootfs" and root.is_dir()
    backend.store.release_rootfs(workdir / "task")
    backend.store.release_rootfs(workdir / "task")
    assert not root.exists()


def test_contract_errors(backend: Backend) -> None:
    reference = backend.publish("contract/errors:1")
    with pytest.raises(ImagePullError) as caught:
        backend.store.pull(reference.rpartition(":")[0] + ":2")
    assert caught.value.kind is PullFailure.NOT_FOUND and "manifest unknown" in caught.value.reason
    with pytest.raises(ImagePullError) as caught:
        backend.store.pull(reference.upper())
    assert caught.value.kind is PullFailure.INVALID_REFERENCE


def test_contract_gc_keeps_images_in_use(backend: Backend) -> None:
    if isinstance(backend.store, ImageStore):
        backend.store.max_bytes = 1
    else:
        assert isinstance(backend.store, FakeImageStore)
        backend.store.max_images = 0
    image = backend.store.pull(backend.publish("contract/gc:1"))
    assert backend.store.gc({image.digest}) == []
    assert backend.store.gc(set()) == [image.digest]
