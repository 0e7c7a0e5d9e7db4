"""`tessera certs init` output, the TLS helpers, and the guard on an in-process server over real mTLS."""

from __future__ import annotations

import stat
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tessera.control_plane.api.auth import AclFileError, Guard, load_acl
from tessera.control_plane.certs import init_dev_pki, issue_agent
from tessera.control_plane.cli.main import cli
from tessera.control_plane.core.acl import PEER_KINDS, Acl, parse_acl, token_digest
from tessera.control_plane.tls import (
    AGENT_SERVER_NAME,
    MASTER_NAME,
    ClientSecurity,
    TlsConfigError,
    channel_options,
    load_tls_dir,
    peer_agent_identity,
    server_credentials,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tls") / "pki"
    init_dev_pki(root, master_hosts=("10.1.2.3", "masters.example"))
    return root


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_kind_gets_a_tls_directory_signed_by_the_ca_naming_its_kind(pki: Path) -> None:
    ca = cert(pki / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for kind in PEER_KINDS:
        files = load_tls_dir(pki / kind)
        assert files.ca == (pki / "ca.pem").read_bytes()
        c = cert(pki / kind / "cert.pem")
        c.verify_directly_issued_by(ca)
        sans = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        expected = [f"urn:tessera:kind:{kind}"] + (["urn:tessera:agent:default"] if kind == "agent" else [])
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == expected
        usages = c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
        # masters serve gRPC, agents their sandboxes (docs/files.md); each under its own name only
        assert (ExtendedKeyUsageOID.SERVER_AUTH in usages) == (kind in ("master", "agent"))
        assert (MASTER_NAME in sans.get_values_for_type(x509.DNSName)) == (kind == "master")
        assert (AGENT_SERVER_NAME in sans.get_values_for_type(x509.DNSName)) == (kind == "agent")
        assert not c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert stat.S_IMODE((pki / kind / "key.pem").stat().st_mode) == 0o600


def test_the_master_certificate_names_extra_hosts(pki: Path) -> None:
    sans = cert(pki / "master" / "cert.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {MASTER_NAME, "localhost", "masters.example"}
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.1.2.3"}


def test_the_acl_holds_digests_of_the_written_tokens_only(pki: Path) -> None:
    acl = load_acl(pki / "acl.toml")
    text = (pki / "acl.toml").read_text()
    for grant in acl.grants:
        token = (pki / "tokens" / f"{grant.principal}.token").read_text().strip()
        assert token not in text
        assert grant.token_sha256 == token_digest(token)
        assert acl.grant_for_token(token) == grant
        assert stat.S_IMODE((pki / "tokens" / f"{grant.principal}.token").stat().st_mode) == 0o600
    assert stat.S_IMODE((pki / "ca-key.pem").stat().st_mode) == 0o600
    assert isinstance(tomllib.loads(text), dict)


def test_init_refuses_an_existing_ca_and_the_cli_says_so_in_one_line(pki: Path) -> None:
    with pytest.raises(FileExistsError):
        init_dev_pki(pki)
    result = CliRunner().invoke(cli, ["certs", "init", str(pki)])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "exists" in result.output


def test_unusable_tls_dirs_and_acl_files_name_the_file(tmp_path: Path, pki: Path) -> None:
    with pytest.raises(TlsConfigError, match="cert.pem"):
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "ca.pem").write_bytes((pki / "ca.pem").read_bytes())
        load_tls_dir(tmp_path / "d")
    (tmp_path / "d" / "cert.pem").write_text("not pem")
    (tmp_path / "d" / "key.pem").write_text("not pem")
    with pytest.raises(TlsConfigError, match="not a PEM"):
        load_tls_dir(tmp_path / "d")
    (tmp_path / "acl.toml").write_text("principals = [")
    with pytest.raises(AclFileError, match="not valid TOML"):
        load_acl(tmp_path / "acl.toml")
    with pytest.raises(AclFileError, match="cannot read"):
        load_acl(tmp_path / "missing.toml")


def test_secure_channels_always_verify_the_master_name() -> None:
    opts = channel_options([("grpc.ssl_target_name_override", "agent"), ("x", 1)])
    assert ("grpc.ssl_target_name_override", MASTER_NAME) in opts and ("x", 1) in opts
    assert len([o for o in opts if o[0] == "grpc.ssl_target_name_override"]) == 1
    assert ClientSecurity(None, "t").metadata == (("authorization", "Bearer t"),)
    assert ClientSecurity.from_options(None, "  ").metadata == ()


def test_certs_agent_issues_each_agent_a_certificate_naming_it(pki: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["certs", "agent", "node-7", "--pki", str(pki)])
    assert result.exit_code == 0, result.output
    directory = pki / "agents" / "node-7"
    assert str(directory) in result.output
    c = cert(directory / "cert.pem")
    c.verify_directly_issued_by(cert(pki / "ca.pem"))
    sans = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:tessera:kind:agent",
                                                                         "urn:tessera:agent:node-7"]
    assert stat.S_IMODE((directory / "key.pem").stat().st_mode) == 0o600
    assert load_tls_dir(directory).ca == (pki / "ca.pem").read_bytes()
    # never overwrites a deployed key; names outside the alphabet and a missing CA are one-line errors
    again = CliRunner().invoke(cli, ["certs", "agent", "node-7", "--pki", str(pki)])
    assert again.exit_code == 2 and "exists" in again.output
    for bad in ("", "-x", "a/b", "a:b", "x" * 64):
        with pytest.raises(ValueError, match="agent name"):
            issue_agent(pki, bad, tmp_path / "bad")
    nothing = CliRunner().invoke(cli, ["certs", "agent", "n1", "--pki", str(tmp_path / "no-pki")])
    assert nothing.exit_code == 2 and "ca" in nothing.output
    assert issue_agent(pki, "n2", tmp_path / "elsewhere") == tmp_path / "elsewhere"


def test_init_writes_a_long_random_raft_password_only_its_owner_reads(pki: Path, tmp_path: Path) -> None:
    password = (pki / "raft-password").read_text().strip()
    assert len(password) >= 64 and stat.S_IMODE((pki / "raft-password").stat().st_mode) == 0o600
    other = tmp_path / "other"
    result = CliRunner().invoke(cli, ["certs", "init", str(other)])
    assert result.exit_code == 0, result.output
    assert (other / "raft-password").read_text().strip() != password
    assert f"TESSERA_RAFT_PASSWORD_FILE={other / 'raft-password'}" in result.output


def test_keys_are_ecdsa_p256(pki: Path) -> None:
    key = cert(pki / "agent" / "cert.pem").public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"


# ---- the guard on a real in-process mTLS server -----------------------------------------------------------
@pytest.fixture
def guarded_health(pki: Path) -> Iterator[str]:
    """A health service behind the Guard (TLS, no ACL): only kinds allowed to call Health get through."""
    guard = Guard(None, tls=True)
    server = grpc.server(ThreadPoolExecutor(max_workers=2), interceptors=[guard.interceptor()])
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(load_tls_dir(pki / "master")))
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def test_the_guard_reads_the_kind_from_the_verified_certificate(pki: Path, guarded_health: str) -> None:
    for kind in PEER_KINDS:
        with ClientSecurity.from_options(pki / kind).channel(guarded_health) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_client_without_a_certificate_never_reaches_the_service(pki: Path, guarded_health: str) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
    with grpc.secure_channel(guarded_health, creds, options=channel_options()) as ch:
        with pytest.raises(grpc.RpcError) as caught:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def _client_cert_with_uris(pki: Path, tmp_path: Path, uris: list[str]) -> Path:
    """A client certificate the CA signed, naming `uris` (not how `tessera certs init` makes them)."""
    import datetime as dt

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    ca_key = serialization.load_pem_private_key((pki / "ca-key.pem").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd")]))
               .issuer_name(cert(pki / "ca.pem").subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if uris:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
    d = tmp_path / "odd"
    d.mkdir()
    (d / "ca.pem").write_bytes((pki / "ca.pem").read_bytes())
    (d / "cert.pem").write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return d


@pytest.mark.parametrize("uris", [[], ["urn:tessera:kind:nobody"],
                                  ["urn:tessera:kind:agent", "urn:tessera:kind:master"]])
def test_a_ca_signed_certificate_naming_no_single_kind_is_unauthenticated(
        pki: Path, guarded_health: str, tmp_path: Path, uris: list[str]) -> None:
    odd = _client_cert_with_uris(pki, tmp_path, uris)
    with ClientSecurity.from_options(odd).channel(guarded_health) as ch:
        with pytest.raises(grpc.RpcError) as caught:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no single tessera kind" in (caught.value.details() or "")


def test_certs_token_prints_a_token_and_the_acl_table_holding_its_digest() -> None:
    result = CliRunner().invoke(cli, ["certs", "token", "analytics", "--roles", "analytics,batch",
                                      "--users", "nobody,", "--actions", "read,drain"])
    assert result.exit_code == 0, result.output
    first, _, table = result.output.partition("\n")
    token = first.rsplit(" ", 1)[1]
    acl = tomllib.loads(table)
    grant = load_acl_text(table).grant_for_token(token)
    assert grant is not None and grant.principal == "analytics"
    assert grant.roles == {"analytics", "batch"} and grant.users == {"nobody", ""}
    assert grant.actions == {"read", "drain"}
    assert token not in table and acl["principals"]["analytics"]["token_sha256"] == token_digest(token)
    bad = CliRunner().invoke(cli, ["certs", "token", "x", "--actions", "rule"])
    assert bad.exit_code == 2 and "unknown" in bad.output


def load_acl_text(text: str) -> Acl:
    return parse_acl(tomllib.loads(text))


class _IdentityEcho(health.HealthServicer):  # type: ignore[misc]
    """Answers SERVING and remembers the agent identity read from each caller's certificate."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str | None] = []

    def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
              ) -> health_pb2.HealthCheckResponse:
        self.seen.append(peer_agent_identity(context))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def test_the_agent_identity_is_read_from_the_verified_certificate(pki: Path, tmp_path: Path) -> None:
    echo = _IdentityEcho()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(echo, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(load_tls_dir(pki / "master")))
    plain_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        issue_agent(pki, "echo-b", tmp_path / "b")
        for tls_dir in (pki / "agent", tmp_path / "b", pki / "framework"):
            with ClientSecurity.from_options(tls_dir).channel(f"127.0.0.1:{port}") as ch:
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        with grpc.insecure_channel(f"127.0.0.1:{plain_port}") as ch:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        server.stop(0)
    # each agent its own name; a certificate naming no agent: None; plaintext (dev mode): the empty identity
    assert echo.seen == ["default", "echo-b", None, ""]
