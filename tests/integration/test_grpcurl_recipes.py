"""The calls docs/grpcurl.md documents, made as grpcurl makes them: grpcurl is not packaged in this
machine's Debian archive (`apt-cache policy grpcurl` finds nothing), so this test does what grpcurl does
with a real master's server reflection and no .proto file: list the services, resolve a method's messages
from the reflected descriptors (`ProtoReflectionDescriptorDatabase`), turn the documented JSON into the
request and the answer back into JSON. Plaintext against an `--insecure-dev` master; mTLS with the
operator certificate and a bearer token against a secured one (and the token left out is refused)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tessera.control_plane.certs import init_dev_pki
from tessera.control_plane.tls import MASTER_NAME
from tests.support.cluster import LocalCluster, wait_for
from tests.support.secure_cluster import secured_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DOC = Path(__file__).resolve().parents[2] / "docs" / "grpcurl.md"
SERVICES = {"tessera.v1.Operator", "tessera.v1.Scheduler", "tessera.v1.AgentLink", "grpc.health.v1.Health"}


class Grpcurl:
    """grpcurl's `list`, `describe` and `-d JSON SERVICE/METHOD` over one channel, by reflection only."""

    def __init__(self, channel: grpc.Channel, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self.channel = channel
        self.pool = pool or descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))

    def list(self) -> set[str]:
        stub = reflection_pb2_grpc.ServerReflectionStub(self.channel)
        [answer] = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                   timeout=10))
        return {s.name for s in answer.list_services_response.service}

    def describe(self, service: str) -> set[str]:
        return {m.name for m in self.pool.FindServiceByName(service).methods}

    def call(self, method: str, body: str) -> dict[str, Any]:
        service_name, method_name = method.split("/")
        descriptor = self.pool.FindServiceByName(service_name).methods_by_name[method_name]
        request_class = message_factory.GetMessageClass(descriptor.input_type)
        response_class = message_factory.GetMessageClass(descriptor.output_type)
        request = json_format.Parse(body, request_class())
        invoke = self.channel.unary_unary(f"/{service_name}/{method_name}",
                                          request_serializer=lambda m: m.SerializeToString(),
                                          response_deserializer=response_class.FromString)
        response = invoke(request, timeout=10)
        return json.loads(json_format.MessageToJson(response))


def _documented(fragment: str) -> None:
    assert fragment in DOC.read_text(), f"docs/grpcurl.md no longer shows {fragment!r}"


@pytest.fixture
def plaintext_masters(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(the leader's address, a follower's)."""
    with LocalCluster(tmp_path, n=3) as cluster:
        cluster.start_all()
        leader = cluster.leader(timeout=60)
        follower = next(m for m in cluster.masters if m is not leader)
        wait_for(lambda: follower.quorum(timeout=0.5).leader_grpc == leader.grpc, 60, what="a follower serving")
        yield leader.grpc, follower.grpc


def test_the_plaintext_recipes_against_insecure_dev_masters(plaintext_masters: tuple[str, str]) -> None:
    plaintext_master, follower = plaintext_masters
    channel = grpc.insecure_channel(plaintext_master)
    try:
        grpcurl = Grpcurl(channel)
        _documented("grpcurl -plaintext 127.0.0.1:5050 list")
        assert SERVICES <= grpcurl.list()
        _documented("grpcurl -plaintext 127.0.0.1:5050 describe tessera.v1.Operator")
        assert {"GetQuorum", "GetState", "ListEvents", "KillTask"} <= grpcurl.describe("tessera.v1.Operator")
        _documented("grpcurl -plaintext 127.0.0.1:5050 describe tessera.v1.GetStateRequest")
        assert "consistent" in grpcurl.pool.FindMessageTypeByName("tessera.v1.GetStateRequest").fields_by_name
        _documented("grpcurl -plaintext -d '{}' 127.0.0.1:5050 tessera.v1.Operator/GetQuorum")
        quorum = grpcurl.call("tessera.v1.Operator/GetQuorum", "{}")
        assert quorum["leaderGrpc"] == plaintext_master and quorum["hasQuorum"] is True
        _documented("""grpcurl -plaintext -d '{"consistent": true}' 127.0.0.1:5050 tessera.v1.Operator/GetState""")
        state = grpcurl.call("tessera.v1.Operator/GetState", '{"consistent": true}')
        assert int(state["index"]) > 0
        _documented("""grpcurl -plaintext -d '{"limit": 5}' 127.0.0.1:5050 tessera.v1.Operator/ListEvents""")
        events = grpcurl.call("tessera.v1.Operator/ListEvents", '{"limit": 5}')
        assert events["events"] and events["events"][0]["type"]
        _documented("grpcurl -plaintext 127.0.0.1:5050 grpc.health.v1.Health/Check")
        assert grpcurl.call("grpc.health.v1.Health/Check", "{}") == {"status": "SERVING"}
        # a follower: GetQuorum names the leader; a consistent read is UNAVAILABLE with `tessera-leader`
        at_follower = Grpcurl(grpc.insecure_channel(follower), grpcurl.pool)
        try:
            assert at_follower.call("tessera.v1.Operator/GetQuorum", "{}")["leaderGrpc"] == plaintext_master
            _documented("trailing metadata `tessera-leader`")
            with pytest.raises(grpc.RpcError) as redirected:
                at_follower.call("tessera.v1.Operator/GetState", '{"consistent": true}')
            assert redirected.value.code() == grpc.StatusCode.UNAVAILABLE
            assert ("tessera-leader", plaintext_master) in tuple(redirected.value.trailing_metadata() or ())
        finally:
            at_follower.channel.close()
    finally:
        channel.close()


def test_the_mtls_recipes_with_the_operator_certificate_and_a_bearer_token(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_dev_pki(pki)  # what `tessera certs init pki` writes: certificates, tokens, the ACL granting them
    token = (pki / "tokens" / "operator.token").read_text().strip()
    with secured_cluster(tmp_path / "cluster", pki, {"operator": token}, reader="operator") as cluster:
        address = cluster.grpc_addresses[0]
        operator = pki / "operator"
        tls = grpc.ssl_channel_credentials((operator / "ca.pem").read_bytes(), (operator / "key.pem").read_bytes(),
                                           (operator / "cert.pem").read_bytes())
        options = [("grpc.ssl_target_name_override", MASTER_NAME)]  # grpcurl -servername master.tessera
        _documented("-cacert pki/operator/ca.pem -cert pki/operator/cert.pem -key pki/operator/key.pem")
        _documented("-servername master.tessera")
        _documented("-expand-headers -H 'authorization: Bearer ${TESSERA_TOKEN}'")
        with_token = grpc.secure_channel(address, grpc.composite_channel_credentials(
            tls, grpc.access_token_call_credentials(token)), options=options)
        without_token = grpc.secure_channel(address, tls, options=options)
        try:
            grpcurl = Grpcurl(with_token)
            assert SERVICES <= grpcurl.list()
            quorum = grpcurl.call("tessera.v1.Operator/GetQuorum", "{}")
            assert quorum["leaderGrpc"] == address
            assert int(grpcurl.call("tessera.v1.Operator/GetState", '{"consistent": true}')["index"]) > 0
            # the same call without the token: refused, as the page says
            _documented("UNAUTHENTICATED")
            with pytest.raises(grpc.RpcError) as refused:
                Grpcurl(without_token, grpcurl.pool).call("tessera.v1.Operator/GetQuorum", "{}")
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            with_token.close()
            without_token.close()
