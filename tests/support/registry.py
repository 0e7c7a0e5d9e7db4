"""A real OCI distribution registry on 127.0.0.1 for tests, and test images built offline.

`Registry` runs Debian's `docker-registry` (distribution 2.8) with a generated configuration: filesystem
storage in a temporary directory, plain HTTP on 127.0.0.1:<free port>, access log on (written to the
process's output, which goes to a log file). It waits, bounded, until `GET /v2/` answers, and kills the
registry by PID when the block ends. `request_count` counts the requests of the access log, so a test
can show that a second pull did not reach the registry.

`push_busybox` builds a test image without the network: a root filesystem made of the statically linked
`/bin/busybox` of Debian's `busybox-static` with one symlink per applet in `/bin` (sh, ls, ps,
hostname, httpd, cat, sleep, echo, id, wget...), the usual empty mount points and a minimal
`/etc/passwd`, as one layer made with `umoci new/insert/config` in an OCI layout, then copies it into
the registry with `skopeo copy ... --dest-tls-verify=false`. The layout is built once per test process
(it is cached, with every variant of it), so the busybox layer has one digest in a session: two images
made with `extra_files` share it, as two real images share a base layer. `push_broken_layer` pushes an
image whose layer blob has the right digest but is not a gzip'ed tar (for the unpack failure), and
`corrupt_layer` overwrites a layer blob in the registry's storage, keeping its size, so that a pull sees
a digest mismatch. A registry stores each blob once for all its repositories: corrupt a layer that only
the repository under test has (an `extra_files` layer), or use a registry of its own.

A missing tool is a failure naming its Debian package (.ci/run installs them), never a skip.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path

from tests.support.cluster import free_port, spawn, wait_for

REGISTRY_BINARY = "/usr/bin/docker-registry"
BUSYBOX_BINARY = "/bin/busybox"
TOOL_PACKAGES = {"docker-registry": "docker-registry", "skopeo": "skopeo", "umoci": "umoci",
                 "busybox": "busybox-static", "runc": "runc"}
START_TIMEOUT = 20.0
TOOL_TIMEOUT = 120.0
# Signatures are not the point of these images: accept anything, from this file rather than the machine's
# /etc/containers/policy.json, so the tests do not depend on how that is set up.
POLICY = {"default": [{"type": "insecureAcceptAnything"}]}
_ACCESS_LINE = re.compile(r'^\S+ - \S+ \[[^\]]+\] "(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) ')


class MissingTool(AssertionError):
    """A tool the container tests need is not installed: an AssertionError so the test fails, naming the
    Debian package."""


def require_tool(name: str, path: str | None = None) -> str:
    """The path of tool `name` (or of `path`); fails naming its Debian package when it is missing."""
    found = path if path and os.access(path, os.X_OK) else shutil.which(name)
    if not found:
        package = TOOL_PACKAGES.get(name, name)
        raise MissingTool(f"{path or name} is missing: install the Debian package {package} "
                          f"(.ci/run installs it)")
    return found


def _run(cmd: list[str], what: str, timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({' '.join(cmd)}): exit {done.returncode}: "
                           f"{done.stderr.strip() or done.stdout.strip()}")
    return done


# ---- the registry ----------------------------------------------------------------------------------------
class Registry:
    """`with Registry() as registry:` a docker-registry serving http://127.0.0.1:<port> until the end."""

    def __init__(self, directory: Path | None = None, binary: str = REGISTRY_BINARY) -> None:
        self._own_dir = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="tessera-registry-")) if directory is None else directory
        self.binary = binary
        self.port = 0
        self.storage = self.directory / "storage"
        self.config_path = self.directory / "config.yml"
        self.log_path = self.directory / "registry.log"
        self.policy_path = self.directory / "policy.json"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """`127.0.0.1:<port>`, the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def __enter__(self) -> Registry:
        require_tool("docker-registry", self.binary)
        self.storage.mkdir(parents=True, exist_ok=True)
        self.policy_path.write_text(json.dumps(POLICY))
        self.port = free_port()
        # JSON is YAML: no YAML library needed to write the configuration
        self.config_path.write_text(json.dumps({
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True}},
            "http": {"addr": self.host},
        }))
        self._proc = spawn([self.binary, "serve", str(self.config_path)], self.log_path)
        try:
            wait_for(self._answers, START_TIMEOUT, what=f"docker-registry on {self.host} (log: {self.log_path})")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def stop(self) -> None:
        """Kill the registry by its PID (SIGTERM, then SIGKILL after 5 s); idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def _answers(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {self._proc.returncode}: "
                               f"{self.log_path.read_text(errors='replace')[-2000:]}")
        with urllib.request.urlopen(f"{self.url}/v2/", timeout=2) as answer:
            return bool(answer.status == 200)

    # ---- the access log ----------------------------------------------------------------------------------
    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request served so far, in the order logged. A marker request
        is made and waited for first, so requests answered before this call are all in the log."""
        marker = f"/v2/?tessera-sync={uuid.uuid4().hex}"
        try:
            urllib.request.urlopen(self.url + marker, timeout=5).close()
        except urllib.error.URLError as exc:
            raise RuntimeError(f"registry {self.host} does not answer: {exc}") from exc
        return wait_for(lambda: (lambda seen: seen if any(p == marker for _, p, _ in seen) else None)(
            self._logged()), 5.0, what="the registry's access log line of a marker request")

    def _logged(self) -> list[tuple[str, str, int]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = _ACCESS_LINE.match(line)
            if match:
                out.append((match["method"], match["path"], int(match["status"])))
        return out

    def request_count(self, path_substring: str, method: str | None = None) -> int:
        """How many requests had `path_substring` in their path (and were `method`, when given)."""
        return sum(1 for m, p, _ in self.requests()
                   if path_substring in p and (method is None or m == method) and "tessera-sync=" not in p)

    # ---- storage -----------------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexpart = digest.partition(":")
        return self.storage / "docker/registry/v2/blobs" / algorithm / hexpart[:2] / hexpart / "data"

    def digest(self, repository: str, tag: str) -> str:
        """The manifest digest a tag names, read from the registry's storage (no request)."""
        link = (self.storage / "docker/registry/v2/repositories" / repository / "_manifests/tags" / tag
                / "current/link")
        if not link.exists():
            raise KeyError(f"{repository}:{tag} is not in registry {self.host}")
        return link.read_text().strip()

    def manifest(self, repository: str, tag: str) -> dict[str, object]:
        """The manifest a tag names, read from the registry's storage (no request)."""
        loaded: dict[str, object] = json.loads(self.blob_path(self.digest(repository, tag)).read_bytes())
        return loaded

    def copy_in(self, source: str, reference: str) -> str:
        """`skopeo copy SOURCE docker://127.0.0.1:PORT/REFERENCE` over plain HTTP; the manifest digest."""
        skopeo = require_tool("skopeo")
        digest_file = self.directory / f"digest-{uuid.uuid4().hex}"
        _run([skopeo, "--policy", str(self.policy_path), "copy", "--quiet", "--dest-tls-verify=false",
              "--digestfile", str(digest_file), source, f"docker://{self.host}/{reference}"],
             f"pushing {reference} to the test registry")
        digest = digest_file.read_text().strip()
        digest_file.unlink()
        return digest


# ---- test images -----------------------------------------------------------------------------------------
class _Layouts:
    """The OCI layout of test images, built once per process under a temporary directory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dir: Path | None = None
        self._tags: dict[tuple[tuple[str, str], ...], str] = {}

    def layout(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="tessera-test-images-"))
            atexit.register(shutil.rmtree, self._dir, True)
        return self._dir / "oci"

    def busybox(self, extra_files: Mapping[str, str]) -> tuple[Path, str]:
        """(layout, tag) of the busybox image, with one more layer holding `extra_files` when given."""
        key = tuple(sorted(extra_files.items()))
        with self._lock:
            if key not in self._tags:
                if () not in self._tags:
                    self._tags[()] = self._build_base()
                self._tags[key] = self._tags[()] if not key else self._build_variant(extra_files, len(self._tags))
            return self.layout(), self._tags[key]

    def _build_base(self) -> str:
        umoci = require_tool("umoci")
        busybox = require_tool("busybox", BUSYBOX_BINARY)
        layout = self.layout()
        root = layout.parent / "busybox-root"
        for sub in ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "home", "var/www", "run"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "tmp").chmod(0o1777)
        (root / "root").chmod(0o700)
        shutil.copy2(busybox, root / "bin/busybox")
        applets = _run([busybox, "--list"], "listing busybox applets").stdout.split()
        for applet in applets:
            if applet != "busybox" and "/" not in applet:
                (root / "bin" / applet).symlink_to("busybox")
        (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n")
        (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
        tag = "busybox"
        _run([umoci, "init", "--layout", str(layout)], "umoci init")
        _run([umoci, "new", "--image", f"{layout}:{tag}"], "umoci new")
        _run([umoci, "insert", "--image", f"{layout}:{tag}", str(root), "/"], "umoci insert")
        _run([umoci, "config", "--image", f"{layout}:{tag}", "--config.cmd", "sh",
              "--config.env", "PATH=/bin", "--config.workingdir", "/", "--author", "tessera tests"], "umoci config")
        _run([umoci, "gc", "--layout", str(layout)], "umoci gc")
        return tag

    def _build_variant(self, extra_files: Mapping[str, str], n: int) -> str:
        umoci = require_tool("umoci")
        layout = self.layout()
        root = layout.parent / f"extra-{n}"
        for path, content in extra_files.items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        tag = f"variant-{n}"
        _run([umoci, "tag", "--image", f"{layout}:busybox", tag], "umoci tag")
        _run([umoci, "insert", "--image", f"{layout}:{tag}", str(root), "/"], "umoci insert")
        return tag


_LAYOUTS = _Layouts()


def push_busybox(registry: Registry, reference: str, extra_files: Mapping[str, str] | None = None) -> str:
    """Push the busybox test image as `reference` (`repository:tag`, no host) to `registry`; with
    `extra_files` (path -> text) on a second layer above the shared busybox layer. Returns the pushed
    manifest's digest."""
    layout, tag = _LAYOUTS.busybox(extra_files or {})
    return registry.copy_in(f"oci:{layout}:{tag}", reference)


def push_broken_layer(registry: Registry, reference: str) -> str:
    """Push an image whose only layer says it is a gzip'ed tar but is not: every digest matches, so the
    pull succeeds and the unpack fails. Returns the manifest digest."""
    layout = registry.directory / f"broken-{uuid.uuid4().hex}"
    blobs = layout / "blobs/sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}", len(data)

    layer = put(b"this is not a gzip'ed tar archive\n" * 64)
    config = put(json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                             "rootfs": {"type": "layers", "diff_ids": [layer[0]]}}).encode())
    manifest = put(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config[0], "size": config[1]},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer[0],
                    "size": layer[1]}],
    }).encode())
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest[0], "size": manifest[1],
        "annotations": {"org.opencontainers.image.ref.name": "broken"}}]}))
    try:
        return registry.copy_in(f"oci:{layout}:broken", reference)
    finally:
        shutil.rmtree(layout, ignore_errors=True)


def corrupt_layer(registry: Registry, repository: str, tag: str) -> str:
    """Overwrite the top layer blob of `repository:tag` in the registry's storage with other bytes of the
    same size (the registry serves it as it is; a client sees the digest mismatch). Returns its digest."""
    layers = registry.manifest(repository, tag)["layers"]
    assert isinstance(layers, list) and layers, f"{repository}:{tag} has no layers"
    digest = str(layers[-1]["digest"])
    path = registry.blob_path(digest)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    path.write_bytes(bytes(data))
    return digest

