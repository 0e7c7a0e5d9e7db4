"""The image store's pure parts (errors read from skopeo, the GC plan, image configs), its command line
(with a recording stand-in for skopeo), and its in-memory twin."""

from __future__ import annotations

import json
import shutil
import stat
import sys
import threading
from pathlib import Path

import pytest

from tessera.agent.executor.images import (
    FakeImageStore,
    ImageConfig,
    ImagePullError,
    ImageStore,
    PullFailure,
    StoredImage,
    classify_pull_error,
    last_error_line,
    plan_collection,
)
from tests.support.registry import MissingTool, require_tool

# What skopeo 1.9 prints (captured on this machine against docker-registry 2.8)
STDERR = {
    PullFailure.NOT_FOUND: 'time="2026-12-07T02:52:06Z" level=fatal msg="initializing source docker://127.0.0.1:5999/'
                           'tools/busybox:nope: reading manifest nope in 127.0.0.1:5999/tools/busybox: manifest '
                           'unknown: manifest unknown"',
    PullFailure.UNREACHABLE: 'time="2026-12-07T02:52:06Z" level=fatal msg="initializing source docker://127.0.0.1:5998/'
                             'tools/busybox:1.35: pinging container registry 127.0.0.1:5998: Get \\"http://127.0.0.1:'
                             '5998/v2/\\": dial tcp 127.0.0.1:5998: connect: connection refused"',
    PullFailure.TLS: 'time="2026-12-07T02:52:06Z" level=fatal msg="initializing source docker://127.0.0.1:5999/tools/'
                     'busybox:1.35: pinging container registry 127.0.0.1:5999: Get \\"https://127.0.0.1:5999/v2/\\": '
                     'http: server gave HTTP response to HTTPS client"',
    PullFailure.CORRUPT: 'time="2026-12-07T02:52:09Z" level=fatal msg="writing blob: happened during read: Digest did '
                         'not match, expected sha256:b6d1, got sha256:e417"',
    PullFailure.NO_SPACE: 'time="2026-12-07T02:52:11Z" level=fatal msg="writing blob: write tiny/tmp/c/oci-put-blob27'
                          '95929427: no space left on device"',
    PullFailure.UNAUTHORIZED: 'time="2026-12-07T02:52:11Z" level=fatal msg="initializing source docker://r.example/x:1:'
                              ' reading manifest 1 in r.example/x: unauthorized: authentication required"',
}
DNS = ('time="2026-12-07T02:52:06Z" level=fatal msg="initializing source docker://nonexistent.invalid/tools/busybox:1.35:'
       ' pinging container registry nonexistent.invalid: Get \\"https://nonexistent.invalid/v2/\\": dial tcp: lookup '
       'nonexistent.invalid on 10.255.255.53:53: no such host"')


@pytest.mark.parametrize("kind", list(STDERR))
def test_skopeo_errors_are_told_apart(kind: PullFailure) -> None:
    assert classify_pull_error(STDERR[kind])[0] is kind


def test_a_dns_failure_is_an_unreachable_registry() -> None:
    assert classify_pull_error(DNS)[0] is PullFailure.UNREACHABLE
    assert last_error_line(DNS).endswith("no such host")


def test_an_unknown_error_is_a_plain_failure() -> None:
    assert classify_pull_error("something else went wrong")[0] is PullFailure.FAILED


def test_the_last_error_line_drops_the_log_frame_and_unescapes_quotes() -> None:
    line = last_error_line("progress\n\n" + STDERR[PullFailure.UNREACHABLE] + "\n")
    assert line.startswith("initializing source docker://127.0.0.1:5998/")
    assert 'Get "http://127.0.0.1:5998/v2/"' in line
    assert last_error_line("") == ""
    assert len(last_error_line("x" * 5000)) < 500


# ---- the GC plan -------------------------------------------------------------------------------------------
def _img(digest: str, last_used: float, rootfs: int, *blobs: str) -> StoredImage:
    return StoredImage(digest=digest, last_used=last_used, rootfs_bytes=rootfs, blobs=blobs)


BLOBS = {"m1": 1, "c1": 1, "base": 100, "m2": 1, "c2": 1, "top": 10, "m3": 1, "c3": 1, "l3": 50}
IMAGES = [_img("one", 1.0, 200, "m1", "c1", "base"), _img("two", 2.0, 220, "m2", "c2", "base", "top"),
          _img("three", 3.0, 80, "m3", "c3", "l3")]


def test_nothing_is_removed_under_the_bound() -> None:
    plan = plan_collection(IMAGES, BLOBS, set(), max_bytes=10_000)
    assert plan.images == () and plan.blobs == ()
    assert plan.bytes_after == 166 + 500


def test_least_recently_used_unused_images_go_first_until_under_the_bound() -> None:
    plan = plan_collection(IMAGES, BLOBS, set(), max_bytes=500)
    assert plan.images == ("one",)
    assert set(plan.blobs) == {"m1", "c1"}  # the base layer is still the second image's
    assert plan.bytes_after == 666 - 202


def test_a_shared_layer_goes_with_the_last_image_that_names_it() -> None:
    plan = plan_collection(IMAGES, BLOBS, set(), max_bytes=200)
    assert plan.images == ("one", "two")
    assert set(plan.blobs) == {"m1", "c1", "m2", "c2", "base", "top"}
    assert plan.bytes_after == 132


def test_images_in_use_are_kept_even_over_the_bound() -> None:
    plan = plan_collection(IMAGES, BLOBS, {"one", "two", "three"}, max_bytes=0)
    assert plan.images == () and plan.blobs == ()
    plan = plan_collection(IMAGES, BLOBS, {"one"}, max_bytes=0)
    assert plan.images == ("two", "three")
    assert "base" not in plan.blobs and "top" in plan.blobs


def test_blobs_no_image_names_are_always_removed() -> None:
    plan = plan_collection(IMAGES, {**BLOBS, "orphan": 5}, set(), max_bytes=10_000)
    assert plan.images == () and plan.blobs == ("orphan",)
    assert plan.bytes_after == 666


def test_ties_in_use_time_are_broken_by_digest() -> None:
    images = [_img("b", 1.0, 10, "x"), _img("a", 1.0, 10, "y")]
    assert plan_collection(images, {"x": 1, "y": 1}, set(), max_bytes=11).images == ("a",)


# ---- image configs -----------------------------------------------------------------------------------------
def test_image_config_reads_the_oci_config_and_tolerates_nulls() -> None:
    config = ImageConfig.from_json({"Entrypoint": ["/bin/tini", "--"], "Cmd": ["httpd", "-f"], "Env": ["A=1"],
                                    "WorkingDir": "/srv", "User": "nobody", "Labels": {"x": "y"}})
    assert config == ImageConfig(("/bin/tini", "--"), ("httpd", "-f"), ("A=1",), "/srv", "nobody")
    assert ImageConfig.from_json({"Entrypoint": None, "Cmd": None}) == ImageConfig()
    assert ImageConfig.from_json(None) == ImageConfig()
    assert ImageConfig.from_json(config.to_json()) == config


def test_process_args_follow_dockers_rule() -> None:
    config = ImageConfig(entrypoint=("/bin/tini", "--"), cmd=("httpd", "-f"))
    assert config.process_args() == ("/bin/tini", "--", "httpd", "-f")
    assert config.process_args(["sh", "-c", "id"]) == ("/bin/tini", "--", "sh", "-c", "id")
    assert ImageConfig(cmd=("sh",)).process_args(["ls"]) == ("ls",)


# ---- the command line, with a stand-in for skopeo -----------------------------------------------------------
def _recording_skopeo(tmp_path: Path, stderr: str) -> tuple[str, Path]:
    """A 'skopeo' that records its arguments and fails with `stderr`."""
    record = tmp_path / "argv.json"
    script = tmp_path / "skopeo"
    script.write_text(f"#!{sys.executable}\nimport json, sys\n"
                      f"open({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
                      f"sys.stderr.write({stderr!r} + '\\n')\nsys.exit(1)\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), record


@pytest.mark.parametrize(("reference", "insecure", "verify"), [
    ("registry.test:5000/tools/x:1", (), "true"),
    ("registry.test:5000/tools/x:1", ("registry.test:5000",), "false"),
    ("registry.test:5000/tools/x:1", ("registry.test",), "false"),  # a host alone: any port
    ("registry.test:5000/tools/x:1", ("registry.test:5001",), "true"),
    ("other.test/tools/x:1", ("registry.test",), "true"),
    ("127.0.0.1:5000/tools/x:1", (), "false"),
    ("127.9.9.9/tools/x:1", (), "false"),
    ("localhost:5000/tools/x:1", (), "false"),
    ("[::1]:5000/tools/x:1", (), "false"),
    ("busybox", (), "true"),
])
def test_tls_is_verified_except_for_loopback_and_insecure_registries(
        tmp_path: Path, reference: str, insecure: tuple[str, ...], verify: str) -> None:
    skopeo, record = _recording_skopeo(tmp_path, STDERR[PullFailure.NOT_FOUND])
    store = ImageStore(tmp_path / "store", skopeo=skopeo, umoci=sys.executable, insecure_registries=insecure)
    with pytest.raises(ImagePullError) as caught:
        store.pull(reference)
    assert caught.value.kind is PullFailure.NOT_FOUND
    argv = json.loads(record.read_text())
    assert f"--src-tls-verify={verify}" in argv
    assert argv[argv.index("--dest-shared-blob-dir") + 1] == str(tmp_path / "store" / "blobs")
    assert any(a.startswith("docker://") for a in argv)


def test_a_pull_error_keeps_the_reference_the_explanation_and_skopeos_last_line(tmp_path: Path) -> None:
    skopeo, _ = _recording_skopeo(tmp_path, "some progress\n" + STDERR[PullFailure.UNREACHABLE])
    store = ImageStore(tmp_path / "store", skopeo=skopeo, umoci=sys.executable)
    with pytest.raises(ImagePullError) as caught:
        store.pull("127.0.0.1:5998/tools/busybox:1.35")
    reason = caught.value.reason
    assert reason.startswith("pulling image 127.0.0.1:5998/tools/busybox:1.35 failed: registry unreachable (")
    assert reason.endswith("connect: connection refused)")
    assert caught.value.kind is PullFailure.UNREACHABLE


def test_a_reference_that_does_not_parse_runs_nothing(tmp_path: Path) -> None:
    skopeo, record = _recording_skopeo(tmp_path, "")
    store = ImageStore(tmp_path / "store", skopeo=skopeo, umoci=sys.executable)
    with pytest.raises(ImagePullError) as caught:
        store.pull("Tools/BusyBox:1.35!")
    assert caught.value.kind is PullFailure.INVALID_REFERENCE
    assert caught.value.reason.startswith("invalid image reference 'Tools/BusyBox:1.35!': ")
    assert not record.exists() and store.skopeo_runs == 0


def test_missing_tools_are_named(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store", skopeo="tessera-no-such-skopeo")
    assert store.available() == "tessera-no-such-skopeo not found on PATH (install the package skopeo)"
    store = ImageStore(tmp_path / "store", skopeo=sys.executable, umoci=str(tmp_path / "no-umoci"))
    assert store.available() == f"{tmp_path / 'no-umoci'} is not an executable (install the package umoci)"
    with pytest.raises(ImagePullError) as caught:
        store.pull("127.0.0.1:5000/x:1")
    assert caught.value.kind is PullFailure.UNAVAILABLE and "no-umoci" in caught.value.reason


# ---- the twin -------------------------------------------------------------------------------------------------
def test_fake_store_pulls_once_and_serves_digests_from_its_cache(tmp_path: Path) -> None:
    fake = FakeImageStore()
    digest = fake.add("127.0.0.1:5000/tools/busybox:1.35", ImageConfig(cmd=("sh",)))
    image = fake.pull("127.0.0.1:5000/tools/busybox:1.35")
    assert image.digest == digest and image.config.cmd == ("sh",)
    assert fake.pull("127.0.0.1:5000/tools/busybox:1.35") == image
    assert fake.pull(f"127.0.0.1:5000/tools/busybox@{digest}").digest == digest
    assert fake.pulls == {"127.0.0.1:5000/tools/busybox:1.35": 1}
    root = fake.prepare_rootfs(image, tmp_path / "task")
    assert root.is_dir() and fake.prepared == {tmp_path / "task": digest}
    fake.release_rootfs(tmp_path / "task")
    fake.release_rootfs(tmp_path / "task")
    assert not root.exists() and fake.prepared == {}


def test_fake_store_fails_as_configured() -> None:
    fake = FakeImageStore()
    fake.fail("127.0.0.1:5000/tools/corrupt:1", PullFailure.CORRUPT, "corrupt layer")
    with pytest.raises(ImagePullError) as caught:
        fake.pull("127.0.0.1:5000/tools/corrupt:1")
    assert caught.value.kind is PullFailure.CORRUPT and "corrupt layer" in caught.value.reason
    with pytest.raises(ImagePullError) as caught:
        fake.pull("127.0.0.1:5000/tools/missing:1")
    assert caught.value.kind is PullFailure.NOT_FOUND and "manifest unknown" in caught.value.reason
    with pytest.raises(ImagePullError) as caught:
        fake.pull("")
    assert caught.value.kind is PullFailure.INVALID_REFERENCE
    fake.unavailable = "skopeo not found on PATH"
    assert fake.available() == "skopeo not found on PATH"
    with pytest.raises(ImagePullError) as caught:
        fake.pull("127.0.0.1:5000/tools/corrupt:1")
    assert caught.value.kind is PullFailure.UNAVAILABLE


def test_fake_store_gc_keeps_images_in_use() -> None:
    fake = FakeImageStore(max_images=1)
    a, b = fake.add("r.test/a:1"), fake.add("r.test/b:1")
    fake.pull("r.test/a:1")
    fake.pull("r.test/b:1")
    assert fake.gc({a}) == [b]
    assert fake.gc(set()) == []
    fake.pull("r.test/b:1")
    assert fake.pulls["r.test/b:1"] == 2  # removed, so pulled again


def test_fake_store_is_thread_safe() -> None:
    fake = FakeImageStore()
    fake.add("r.test/a:1")
    threads = [threading.Thread(target=fake.pull, args=("r.test/a:1",)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake.pulls == {"r.test/a:1": 1}


def test_a_missing_test_tool_fails_naming_its_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    sh = shutil.which("sh")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MissingTool, match="install the Debian package docker-registry"):
        require_tool("docker-registry", "/nonexistent/docker-registry")
    with pytest.raises(MissingTool, match="busybox-static"):
        require_tool("busybox", "/nonexistent/busybox")
    assert sh is not None and require_tool("sh", sh) == sh
