"""mTLS for every gRPC link, and the bearer token a client sends.

A TLS directory holds three PEM files: `ca.pem` (the cluster's CA, which every peer must be signed by),
`cert.pem` and `key.pem` (this process's certificate and key). `tessera certs init` writes one such
directory per kind of peer.

Certificates say what they are:
- a master's carries the DNS name `master.tessera` (`MASTER_NAME`). Every client dials masters with
  `grpc.ssl_target_name_override = master.tessera`, so standard hostname verification refuses a server
  whose certificate lacks that name: an agent's or a framework's certificate cannot pass for a master's.
- every certificate carries the URI `urn:tessera:kind:<kind>` (master, agent, framework, operator),
  which the master reads from the peer's verified certificate to decide which services it may call
  (`tessera.control_plane.core.acl.KINDS_BY_METHOD`);
- an agent's also carries its own name as `urn:tessera:agent:<name>` (`tessera certs agent NAME`). The
  master records it when the agent registers and accepts that agent's re-registrations and status
  updates only from a certificate with the same name, so one agent's certificate cannot speak for
  another agent (`peer_agent_identity`).
- an agent's also names `agent.tessera` (`AGENT_SERVER_NAME`) and may serve: the agent's file service
  (docs/files.md) uses it as its server certificate, and clients dial agents with
  `grpc.ssl_target_name_override = agent.tessera` (`ClientSecurity.agent_channel`), so neither a master's
  nor a framework's certificate can pass for an agent's, nor an agent's for a master's.

`ClientSecurity` is what a client needs to reach masters (channel credentials + token); the CLI, the
agent, the SDK's `tessera run` and masters among themselves build it from `--tls-dir` and `--token`
(or TESSERA_TLS_DIR / TESSERA_TOKEN).

The cluster files `tessera up` writes (`.tessera/cluster.json`) are read here too: the operator's and the
frameworks' security it recorded (`cluster_security`) and the masters every client dials when none is
named (`find_masters`, the edge around `tessera.control_plane.wire.choose_masters`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from tessera.control_plane import wire
from tessera.control_plane.core.acl import PEER_KINDS, PeerKind

MASTER_NAME = "master.tessera"
AGENT_SERVER_NAME = "agent.tessera"
KIND_URI_PREFIX = "urn:tessera:kind:"
AGENT_URI_PREFIX = "urn:tessera:agent:"
AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # what `tessera certs agent NAME` accepts
TLS_FILES = ("ca.pem", "cert.pem", "key.pem")
TOKEN_METADATA_KEY = "authorization"


class TlsConfigError(Exception):
    """A TLS directory or token that cannot be used; the message names the file."""


@dataclass(frozen=True)
class TlsFiles:
    ca: bytes
    cert: bytes
    key: bytes


def load_tls_dir(tls_dir: Path | str) -> TlsFiles:
    d = Path(tls_dir)
    contents = []
    for name in TLS_FILES:
        try:
            contents.append((d / name).read_bytes())
        except OSError as exc:
            raise TlsConfigError(f"--tls-dir: cannot read {d / name} ({exc.strerror or exc})") from exc
        if b"-----BEGIN" not in contents[-1]:
            raise TlsConfigError(f"--tls-dir: {d / name} is not a PEM file")
    return TlsFiles(*contents)


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Server side of mTLS: a client certificate signed by the CA is required."""
    return grpc.ssl_server_credentials([(files.key, files.cert)], root_certificates=files.ca,
                                       require_client_auth=True)


def peer_kind(context: grpc.ServicerContext) -> PeerKind | None:
    """The kind named by the verified client certificate; None when it names none, or more than one."""
    named = set()
    for san in context.auth_context().get("x509_subject_alternative_name", ()):
        text = san.decode() if isinstance(san, bytes) else str(san)
        if text.startswith(KIND_URI_PREFIX):
            named.add(text[len(KIND_URI_PREFIX):])
    if len(named) != 1:
        return None
    (kind,) = named
    return next((known for known in PEER_KINDS if known == kind), None)


def peer_agent_identity(context: grpc.ServicerContext) -> str | None:
    """The agent name in the verified client certificate (`urn:tessera:agent:<name>`).

    "" on a plaintext connection (the insecure development mode: there is no certificate, every agent is
    the empty identity); None over TLS when the certificate names no agent, more than one, or a name
    `tessera certs` would not issue."""
    auth = context.auth_context()
    if b"ssl" not in auth.get("transport_security_type", ()):
        return ""
    named = set()
    for san in auth.get("x509_subject_alternative_name", ()):
        text = san.decode() if isinstance(san, bytes) else str(san)
        if text.startswith(AGENT_URI_PREFIX):
            named.add(text[len(AGENT_URI_PREFIX):])
    if len(named) != 1:
        return None
    (name,) = named
    return name if AGENT_NAME.fullmatch(name) else None


def bearer_token(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == TOKEN_METADATA_KEY:
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


@dataclass(frozen=True)
class ClientSecurity:
    """How a client reaches masters: mTLS credentials (None: plaintext, development only) and a token."""

    credentials: grpc.ChannelCredentials | None = None
    token: str | None = None

    @staticmethod
    def insecure() -> ClientSecurity:
        return ClientSecurity()

    @staticmethod
    def from_options(tls_dir: Path | str | None, token: str | None = None) -> ClientSecurity:
        """From `--tls-dir` / `--token` values (either may be empty)."""
        credentials = None
        if tls_dir:
            files = load_tls_dir(tls_dir)
            credentials = grpc.ssl_channel_credentials(root_certificates=files.ca, private_key=files.key,
                                                       certificate_chain=files.cert)
        return ClientSecurity(credentials, token.strip() if token and token.strip() else None)

    @staticmethod
    def from_env() -> ClientSecurity:
        """TESSERA_TLS_DIR and TESSERA_TOKEN (or TESSERA_TOKEN_FILE)."""
        return ClientSecurity.from_options(os.environ.get("TESSERA_TLS_DIR") or None, token_from_env())

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((TOKEN_METADATA_KEY, f"Bearer {self.token}"),) if self.token else ()

    def channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(address, options=list(options))
        return grpc.secure_channel(address, self.credentials, options=channel_options(options))

    def agent_channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A channel to an agent's file service: the server must be an agent (`agent.tessera`)."""
        if self.credentials is None:
            return grpc.insecure_channel(address, options=list(options))
        return grpc.secure_channel(address, self.credentials,
                                   options=channel_options(options, server_name=AGENT_SERVER_NAME))


def channel_options(options: Sequence[tuple[str, Any]] = (), *,
                    server_name: str = MASTER_NAME) -> list[tuple[str, Any]]:
    """Options for a secure channel to a master (or, with `server_name`, an agent): verify the server
    under that name."""
    merged = [o for o in options if o[0] != "grpc.ssl_target_name_override"]
    return [*merged, ("grpc.ssl_target_name_override", server_name)]


def token_from_env() -> str | None:
    token = os.environ.get("TESSERA_TOKEN")
    if token:
        return token.strip()
    path = os.environ.get("TESSERA_TOKEN_FILE")
    return read_token_file(path) if path else None


def read_token_file(path: Path | str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise TlsConfigError(f"--token-file: cannot read {path} ({exc.strerror or exc})") from exc
    if not token:
        raise TlsConfigError(f"--token-file: {path} is empty")
    return token


# ---- the security `tessera up --secure` recorded --------------------------------------------------------
DEFAULT_DATA_DIR = Path(".tessera")  # `tessera up`'s data directory, relative to where it ran
STATE_FILE = "cluster.json"


def find_cluster_file(start: Path | None = None) -> Path | None:
    """The `.tessera/cluster.json` of `start` (the current directory) or its nearest parent."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / DEFAULT_DATA_DIR / STATE_FILE
        if candidate.is_file():
            return candidate
    return None


def read_cluster_file(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_masters(flag: str | Sequence[str] | None = None, *, flag_name: str = "--masters",
                 environ: Mapping[str, str] | None = None, start: Path | None = None) -> wire.FoundMasters:
    """The masters a client dials (`wire.choose_masters`): `flag`, else TESSERA_MASTERS, else the nearest
    `.tessera/cluster.json` (from `start`, the current directory), else 127.0.0.1:5050. The file is read
    only when neither is given. ValueError names the flag, variable or file that is malformed."""
    env = (os.environ if environ is None else environ).get(wire.MASTERS_ENV)
    cluster_file = None
    if not (flag.strip() if isinstance(flag, str) else flag) and not (env and env.strip()):
        found = find_cluster_file(start)
        if found is not None:
            try:
                cluster_file = (str(found), found.read_text())
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"{found}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    return wire.choose_masters(flag, env, cluster_file, flag_name=flag_name)


def cluster_security(kind: str) -> tuple[str, str] | None:
    """(TLS directory, token file) of `kind` (operator, framework) recorded by `tessera up --secure` in the
    nearest cluster.json; None when there is none (an insecure cluster, or none at all)."""
    found = find_cluster_file()
    data = read_cluster_file(found) if found is not None else None
    security = data.get("security") if data else None
    entry = security.get(kind) if isinstance(security, dict) else None
    if isinstance(entry, dict) and isinstance(entry.get("tls_dir"), str) and isinstance(entry.get("token_file"), str):
        return entry["tls_dir"], entry["token_file"]
    return None
