"""`tessera certs`: a local CA, certificates for every kind of peer, tokens, an ACL and a Raft password.

Layout written under DIR by `tessera certs init DIR` (private keys and secrets 0600, directories 0700):

    DIR/ca.pem, DIR/ca-key.pem          the CA (keep ca-key.pem away from the cluster)
    DIR/<kind>/ca.pem cert.pem key.pem  one TLS directory per kind: master, agent, framework, operator
                                        (DIR/agent is the certificate of one agent, named `default`)
    DIR/acl.toml                        principals `operator` (every action) and `framework` (role
                                        `default`, tasks as `nobody`, `read`): SHA-256 digests of tokens only
    DIR/tokens/<principal>.token        the tokens themselves, for TESSERA_TOKEN_FILE / --token-file
    DIR/raft-password                   a long random Raft password (pysyncobj derives its key with a
                                        fixed salt, so the password itself must be long and random)

`tessera certs agent NAME --pki DIR` issues one more agent certificate (DIR/agents/NAME by default):
every agent should have its own, since the master binds an agent id to the name in the certificate
that registered it.

A master's certificate names `master.tessera` (what clients verify), `localhost`, 127.0.0.1 and any
`--host` given; each certificate names its kind as `urn:tessera:kind:<kind>`, and an agent's also its
own name as `urn:tessera:agent:<name>` (see `tessera.control_plane.tls`) and `agent.tessera`, with the
server usage: an agent serves its sandboxes with it (docs/files.md; certificates issued before that have
no server usage, and their agents serve no files until given a new one). Keys are ECDSA P-256; certificates
last `days` days.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tessera.control_plane.core.acl import PEER_KINDS, PeerKind, token_digest
from tessera.control_plane.tls import (
    AGENT_NAME,
    AGENT_SERVER_NAME,
    AGENT_URI_PREFIX,
    KIND_URI_PREFIX,
    MASTER_NAME,
)

DEFAULT_AGENT = "default"  # the name of the agent certificate in DIR/agent
DEFAULT_FRAMEWORK_ROLE = "default"  # the SDK's default role (tessera.sdk.types.DEFAULT_ROLE)
DEFAULT_TASK_USER = "nobody"
RAFT_PASSWORD_FILE = "raft-password"
DEV_PRINCIPALS = {
    "operator": 'roles = []\nusers = []\n'
                'actions = ["read", "read_all", "drain", "quorum", "weights", "quota", "teardown", "kill", '
                '"configure", "logs"]',
    # never users = ["*"]: that would let the framework run tasks as root on every agent
    "framework": f'roles = ["{DEFAULT_FRAMEWORK_ROLE}"]\nusers = ["{DEFAULT_TASK_USER}"]\nactions = ["read"]',
}


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tessera"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(days: int = 365, common_name: str = "tessera dev CA") -> Issued:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(ca: Issued, kind: PeerKind, name: str, *, hosts: Sequence[str] = (), days: int = 365) -> Issued:
    """A certificate for one peer of `kind`, signed by `ca`. Masters also get server names; agents their
    own name (`urn:tessera:agent:<name>`), which must be unique in the cluster."""
    if kind not in PEER_KINDS:
        raise ValueError(f"kind: one of {', '.join(PEER_KINDS)}, got {kind!r}")
    if kind == "agent" and not AGENT_NAME.fullmatch(name):
        raise ValueError(f"agent name: 1-63 letters, digits, '.', '_' or '-' (not first), got {name!r}")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _key()
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"{KIND_URI_PREFIX}{kind}")]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if kind == "agent":
        # an agent serves its sandboxes (docs/files.md) with this certificate: clients verify `agent.tessera`
        sans.append(x509.UniformResourceIdentifier(f"{AGENT_URI_PREFIX}{name}"))
        sans.append(x509.DNSName(AGENT_SERVER_NAME))
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if kind == "master":
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        names = [MASTER_NAME, "localhost", "127.0.0.1", *hosts]
        for host in dict.fromkeys(names):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(f"{kind}:{name}")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def write_tls_dir(directory: Path, ca_pem: bytes, issued: Issued) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    _write(directory / "ca.pem", ca_pem, 0o644)
    _write(directory / "cert.pem", issued.cert_pem, 0o644)
    _write(directory / "key.pem", issued.key_pem, 0o600)


def init_dev_pki(root: Path, *, master_hosts: Sequence[str] = (), days: int = 365) -> dict[str, str]:
    """Write the layout of the module docstring; returns the tokens by principal. Refuses an existing CA."""
    if (root / "ca.pem").exists():
        raise FileExistsError(f"{root / 'ca.pem'} exists; remove {root} or pick another directory")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    ca = make_ca(days)
    _write(root / "ca.pem", ca.cert_pem, 0o644)
    _write(root / "ca-key.pem", ca.key_pem, 0o600)
    for kind in PEER_KINDS:
        name = DEFAULT_AGENT if kind == "agent" else f"dev-{kind}"
        write_tls_dir(root / kind, ca.cert_pem, issue(ca, kind, name, hosts=master_hosts, days=days))
    _write(root / RAFT_PASSWORD_FILE, (secrets.token_urlsafe(48) + "\n").encode(), 0o600)
    tokens = {principal: secrets.token_urlsafe(32) for principal in DEV_PRINCIPALS}
    (root / "tokens").mkdir(exist_ok=True)
    os.chmod(root / "tokens", 0o700)
    sections = ["# Tessera ACL: one table per principal; tokens are stored as SHA-256 digests only.\n"
                "# roles: roles it may subscribe under; users: users its tasks may run as (\"\" = the\n"
                "# agent's own user); actions: read, read_all, drain, quorum, weights, quota, teardown, kill,\n"
                "# configure, logs.\n"
                "# read shows other principals' tasks redacted; read_all in full; logs reads the sandbox\n"
                "# files of other principals' tasks (its own frameworks' need no action). \"*\" = any.\n"]
    for principal, rules in DEV_PRINCIPALS.items():
        _write(root / "tokens" / f"{principal}.token", (tokens[principal] + "\n").encode(), 0o600)
        sections.append(f'[principals.{principal}]\ntoken_sha256 = "{token_digest(tokens[principal])}"\n{rules}\n')
    _write(root / "acl.toml", "\n".join(sections).encode(), 0o644)
    return tokens


def load_ca(root: Path) -> Issued:
    """The CA `init_dev_pki` wrote under `root` (its certificate and key)."""
    try:
        return Issued((root / "ca.pem").read_bytes(), (root / "ca-key.pem").read_bytes())
    except OSError as exc:
        raise FileNotFoundError(f"{exc.filename}: cannot read the CA ({exc.strerror or exc}); "
                                "run `tessera certs init` first") from exc


def issue_agent(root: Path, name: str, out: Path | None = None, *, days: int = 365) -> Path:
    """A TLS directory for agent `name` (default `root/agents/name`), signed by the CA under `root`.
    Refuses to overwrite an existing certificate there."""
    directory = out if out is not None else root / "agents" / name
    if (directory / "cert.pem").exists():
        raise FileExistsError(f"{directory / 'cert.pem'} exists; pick another --out or remove it")
    ca = load_ca(root)
    issued = issue(ca, "agent", name, days=days)
    directory.parent.mkdir(parents=True, exist_ok=True)
    write_tls_dir(directory, ca.cert_pem, issued)
    return directory
