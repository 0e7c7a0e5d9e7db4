"""Issue 14, item 7: Operator writes need an operator certificate, whatever the token grants.

Real processes: a secured master and an agent. The `ops` token grants every operator action; presented
with a framework certificate (a framework process that got hold of an operator token) every write is
PERMISSION_DENIED and nothing is written; the framework certificate keeps its read calls, and the same
token with an operator certificate still writes.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from tessera.control_plane.codec import resources_to_proto
from tessera.control_plane.core.acl import token_digest
from tessera.control_plane.core.resources import Resources
from tessera.v1 import common_pb2, operator_pb2
from tests.security.tenant_cluster import tenant_cluster
from tests.support.secure_cluster import SecureCluster, code_of

TOKENS = {"ops": "tok-ops-all-actions-1"}
ACL = f"""
[principals.ops]
token_sha256 = "{token_digest(TOKENS['ops'])}"
roles = ["*"]
users = [""]
actions = ["read", "drain", "quorum", "weights", "quota", "teardown"]
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    yield from tenant_cluster(tmp_path_factory.mktemp("opwrites"), ACL, TOKENS)


def test_a_framework_certificate_with_an_operator_token_cannot_write(cluster: SecureCluster) -> None:
    before = cluster.state()
    agent_id = before.agents[0].agent_id
    quota = operator_pb2.SetQuotaRequest(role="analytics")
    resources_to_proto(Resources.parse("cpus:1"), quota.limit)
    writes = (
        ("SetWeight", lambda s: s.SetWeight, operator_pb2.SetWeightRequest(role="analytics", weight=5)),
        ("SetQuota", lambda s: s.SetQuota, quota),
        ("DrainAgent", lambda s: s.DrainAgent, operator_pb2.DrainAgentRequest(agent_id=agent_id)),
        ("AddMaster", lambda s: s.AddMaster, operator_pb2.AddMasterRequest(raft_address="127.0.0.1:9")),
        ("RemoveMaster", lambda s: s.RemoveMaster, operator_pb2.RemoveMasterRequest(raft_address=cluster.raft)),
        ("TransferLeadership", lambda s: s.TransferLeadership, operator_pb2.TransferLeadershipRequest()),
    )
    framework = cluster.client("framework", "ops")
    try:
        for name, method, request in writes:
            code = code_of(framework.call, method, request)
            assert code == grpc.StatusCode.PERMISSION_DENIED, f"{name}: {code}"
        # the read calls stay open to frameworks
        framework.call(lambda s: s.GetState, operator_pb2.GetStateRequest())
        framework.call(lambda s: s.ListEvents, operator_pb2.ListEventsRequest(limit=1))
        framework.call(lambda s: s.GetQuorum, operator_pb2.GetQuorumRequest(local_only=True))
    finally:
        framework.close()
    after = cluster.state()
    assert {"RoleWeightSet", "QuotaSet", "AgentDrainStarted", "MasterAdded", "MasterRemoved"}.isdisjoint(
        cluster.event_types_since(before.index))
    assert all(a.state == common_pb2.AGENT_ACTIVE for a in after.agents)
    assert [r for r in after.roles if r.role == "analytics" and r.weight == 5] == []

    operator = cluster.client("operator", "ops")  # the same token with an operator certificate: allowed
    try:
        operator.call(lambda s: s.SetWeight, operator_pb2.SetWeightRequest(role="analytics", weight=5))
    finally:
        operator.close()
    assert "RoleWeightSet" in cluster.event_types_since(after.index)


def test_the_certificate_table_gives_frameworks_operator_reads_only() -> None:
    from tessera.control_plane.core.acl import OPERATOR_ACTIONS, check_peer
    from tessera.control_plane.core.errors import PermissionDenied

    for method, action in OPERATOR_ACTIONS.items():
        check_peer("operator", f"/tessera.v1.Operator/{method}")
        if action == "read":
            check_peer("framework", f"/tessera.v1.Operator/{method}")
        else:
            with pytest.raises(PermissionDenied):
                check_peer("framework", f"/tessera.v1.Operator/{method}")
