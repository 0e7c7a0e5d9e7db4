"""`FileServer`: the gRPC server of an agent's file service, and `start_file_server`, the agent's way to it.

- Address: `--files-address HOST:PORT`, by default 127.0.0.1:0, a free port on loopback: a laptop's
  `tessera up` needs no configuration and nothing is exposed to the network by default. An agent whose
  clients are on other machines binds a reachable address (0.0.0.0:PORT is announced as
  HOSTNAME:PORT, the agent's --hostname). `off`: no file service (the registration announces none).
- Security: the masters' rules. With the agent's `--tls-dir`, mTLS with the agent's own certificate as
  the server's (it names `agent.tessera` with the server usage; a certificate issued before that cannot
  serve, so the agent logs why and serves no files); with `--acl` (the masters' file; SIGHUP reloads it),
  tokens name principals and `core.acl.check_file_read` decides. Without an ACL every certificate of the
  cluster's CA may read every sandbox here (as on masters without one), said at start.
- Bounds: `THREADS` gRPC threads; follows are capped per client certificate, per principal and in total
  below the pool (`core.limits.stream_caps`, the masters' caps, counted here even without TLS), so
  follows never take the threads reads need; every follow ends when its caller goes away.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from tessera.agent.files.catalog import OutputSampler, SandboxCatalog
from tessera.agent.files.service import FileService
from tessera.control_plane.api.auth import Guard
from tessera.control_plane.core.acl import Acl
from tessera.control_plane.core.limits import MasterLimits
from tessera.control_plane.tls import AGENT_SERVER_NAME, load_tls_dir, server_credentials
from tessera.v1 import files_pb2_grpc

log = logging.getLogger("tessera.agent.files")

THREADS = 32
OFF = "off"
DEFAULT_ADDRESS = "127.0.0.1:0"


class FilesUnavailable(Exception):
    """The file service cannot start as configured; the message names the flag."""


def certificate_can_serve(cert_pem: bytes) -> str:
    """Why this agent certificate cannot be a server certificate ("" when it can)."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.SERVER_AUTH not in usages:
            return "the agent certificate has no server usage"
    except x509.ExtensionNotFound:
        pass
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return f"the agent certificate does not name {AGENT_SERVER_NAME}"
    if AGENT_SERVER_NAME not in names.get_values_for_type(x509.DNSName):
        return f"the agent certificate does not name {AGENT_SERVER_NAME}"
    return ""


def advertised(bound: str, port: int, hostname: str) -> str:
    """What the registration announces for a server bound to `bound` on `port`: a wildcard host becomes
    the agent's hostname."""
    host = bound.rsplit(":", 1)[0]
    if host in ("0.0.0.0", "[::]", "::", ""):
        host = hostname
    return f"{host}:{port}"


class FileServer:
    def __init__(self, catalog: SandboxCatalog, guard: Guard, *, threads: int = THREADS,
                 sampler: OutputSampler | None = None) -> None:
        self.catalog = catalog
        self.guard = guard
        self.sampler = sampler or OutputSampler(catalog)
        self.service = FileService(catalog, guard, self.sampler)
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="files"),
            interceptors=[guard.interceptor(pool_threads=threads, limits=MasterLimits(), count_streams=True)],
            options=[("grpc.so_reuseport", 0)], maximum_concurrent_rpcs=threads * 4)
        files_pb2_grpc.add_FilesServicer_to_server(self.service, self.server)
        self.port = 0

    def bind(self, address: str, credentials: grpc.ServerCredentials | None) -> int:
        try:
            port = (self.server.add_secure_port(address, credentials) if credentials is not None
                    else self.server.add_insecure_port(address))
        except RuntimeError as exc:
            raise FilesUnavailable(f"--files-address: cannot serve on {address} ({exc})") from exc
        if port == 0:
            raise FilesUnavailable(f"--files-address: cannot serve on {address} (in use, or not an address "
                                   "of this machine)")
        self.port = port
        return port

    def start(self) -> None:
        self.server.start()
        self.sampler.start()

    def stop(self, grace: float = 1.0) -> None:
        self.sampler.stop()
        self.server.stop(grace).wait(grace + 1.0)


def start_file_server(address: str, catalog: SandboxCatalog, *, hostname: str, tls_dir: Path | None,
                      acl: Acl | None) -> tuple[FileServer | None, str]:
    """Start the file service on `address` (see the module docstring): (server, announced address), or
    (None, "") when it is off or the certificate cannot serve. Raises FilesUnavailable for a bad address."""
    if address == OFF:
        log.info("files: no file service (--files-address off)")
        return None, ""
    credentials = None
    if tls_dir is not None:
        files = load_tls_dir(tls_dir)
        why = certificate_can_serve(files.cert)
        if why:
            log.warning("files: this agent serves no sandbox files: %s (issue it a new one: tessera certs agent "
                        "NAME; see docs/files.md)", why)
            return None, ""
        credentials = server_credentials(files)
    guard = Guard(acl, tls=tls_dir is not None)
    server = FileServer(catalog, guard)
    port = server.bind(address, credentials)
    server.start()
    announced = advertised(address, port, hostname)
    if tls_dir is None:
        log.warning("files: serving sandboxes on %s WITHOUT TLS or tokens: anyone who reaches it reads them "
                    "(development only)", announced)
    elif acl is None:
        log.warning("files: no --acl: every certificate of the cluster's CA may read every sandbox on %s; give "
                    "the agent the masters' --acl", announced)
    else:
        log.info("files: serving sandboxes on %s (mTLS, %d principal(s))", announced, len(acl.grants))
    return server, announced
