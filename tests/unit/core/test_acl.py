"""The access-control decision (`tessera.control_plane.core.acl`): parsing the ACL document and every rule."""

from __future__ import annotations

import pytest

from tessera.control_plane.core.acl import (
    Acl,
    Caller,
    authenticate,
    check_file_read,
    check_framework_call,
    check_launch,
    check_operator,
    check_peer,
    check_subscribe,
    parse_acl,
    token_digest,
)
from tessera.control_plane.core.errors import InvalidRequest, PermissionDenied, Unauthenticated

DOC = {"principals": {
    "analytics": {"token_sha256": token_digest("tok-analytics"), "roles": ["analytics"], "users": ["nobody"],
                  "actions": ["read"]},
    "ops": {"token_sha256": token_digest("tok-ops"), "actions": ["read", "drain", "quorum", "teardown"]},
    "auditor": {"token_sha256": token_digest("tok-auditor"), "actions": ["read", "logs"]},
    "anything": {"token_sha256": token_digest("tok-any"), "roles": ["*"], "users": ["*", ""]},
}}


@pytest.fixture
def acl() -> Acl:
    return parse_acl(DOC)


def caller(acl: Acl, kind: str, method: str, token: str | None) -> Caller:
    return authenticate(acl, kind, method, token)  # type: ignore[arg-type]


def test_token_names_its_principal_and_unknown_or_missing_tokens_are_unauthenticated(acl: Acl) -> None:
    assert caller(acl, "framework", "/tessera.v1.Scheduler/Subscribe", "tok-analytics").principal == "analytics"
    with pytest.raises(Unauthenticated):
        caller(acl, "framework", "/tessera.v1.Scheduler/Subscribe", None)
    with pytest.raises(Unauthenticated):
        caller(acl, "framework", "/tessera.v1.Scheduler/Subscribe", "tok-wrong")
    with pytest.raises(Unauthenticated):
        caller(acl, "operator", "/tessera.v1.Operator/GetState", "")


def test_certificate_kind_limits_the_services_a_peer_may_call(acl: Acl) -> None:
    check_peer("agent", "/tessera.v1.AgentLink/Connect")
    check_peer("agent", "/tessera.v1.Operator/ReportSpans")
    check_peer("master", "/tessera.v1.Operator/AnnounceMaster")
    for kind, method in [("agent", "/tessera.v1.Scheduler/Subscribe"), ("agent", "/tessera.v1.Operator/GetState"),
                         ("framework", "/tessera.v1.AgentLink/Connect"),
                         ("operator", "/tessera.v1.Operator/AnnounceMaster"),
                         ("framework", "/tessera.v1.Operator/AnnounceMaster"),
                         ("operator", "/tessera.v1.Scheduler/Accept"), ("master", "/tessera.v1.Scheduler/Accept")]:
        with pytest.raises(PermissionDenied):
            check_peer(kind, method)  # type: ignore[arg-type]
        with pytest.raises(PermissionDenied):  # a valid token does not change what the certificate allows
            caller(acl, kind, method, "tok-ops")


def test_unknown_services_are_refused_to_every_certificate() -> None:
    for kind in ("master", "agent", "framework", "operator"):
        with pytest.raises(PermissionDenied):
            check_peer(kind, "/other.v1.Service/Method")  # type: ignore[arg-type]


def test_agents_and_master_to_master_calls_need_no_token(acl: Acl) -> None:
    assert caller(acl, "agent", "/tessera.v1.AgentLink/Connect", None).grant is None
    assert caller(acl, "master", "/tessera.v1.Operator/AnnounceMaster", None).grant is None
    assert caller(acl, "master", "/tessera.v1.Operator/GetQuorum", None).grant is None
    assert caller(acl, "agent", "/tessera.v1.Operator/ReportSpans", None).grant is None
    with pytest.raises(Unauthenticated):  # an operator asking for the quorum is a principal like any other
        caller(acl, "operator", "/tessera.v1.Operator/GetQuorum", None)


def test_operator_actions_follow_the_grant(acl: Acl) -> None:
    ops = caller(acl, "operator", "/tessera.v1.Operator/DrainAgent", "tok-ops")
    for method in ("GetState", "WatchEvents", "DrainAgent", "AddMaster", "RemoveMaster", "TransferLeadership"):
        check_operator(ops, method)
    for method in ("SetWeight", "SetQuota"):
        with pytest.raises(PermissionDenied):
            check_operator(ops, method)
    reader = caller(acl, "operator", "/tessera.v1.Operator/GetState", "tok-analytics")
    check_operator(reader, "GetState")
    for method in ("DrainAgent", "AddMaster", "RemoveMaster", "TransferLeadership", "SetWeight", "SetQuota"):
        with pytest.raises(PermissionDenied):
            check_operator(reader, method)
    with pytest.raises(PermissionDenied):  # a method the table does not know is closed
        check_operator(reader, "SomethingNew")


def test_operator_kill_teardown_and_undrain_need_their_own_actions() -> None:
    acl = parse_acl({"principals": {
        "killer": {"token_sha256": token_digest("tok-kill"), "actions": ["kill"]},
        "remover": {"token_sha256": token_digest("tok-teardown"), "actions": ["teardown", "drain"]},
    }})
    killer = caller(acl, "operator", "/tessera.v1.Operator/KillTask", "tok-kill")
    check_operator(killer, "KillTask")
    for method in ("TeardownFramework", "UndrainAgent", "DrainAgent"):
        with pytest.raises(PermissionDenied, match=f"Operator.{method}"):
            check_operator(killer, method)
    remover = caller(acl, "operator", "/tessera.v1.Operator/TeardownFramework", "tok-teardown")
    for method in ("TeardownFramework", "UndrainAgent", "DrainAgent"):
        check_operator(remover, method)
    with pytest.raises(PermissionDenied, match="may not kill"):  # a teardown grant does not kill single tasks
        check_operator(remover, "KillTask")
    for method in ("KillTask", "TeardownFramework", "UndrainAgent"):  # operator writes: operator certificates
        with pytest.raises(PermissionDenied):
            check_peer("framework", f"/tessera.v1.Operator/{method}")


def test_subscribe_is_refused_outside_the_principals_roles_or_name(acl: Acl) -> None:
    c = caller(acl, "framework", "/tessera.v1.Scheduler/Subscribe", "tok-analytics")
    assert check_subscribe(c, "", ["analytics"]) == "analytics"  # the token's principal is recorded
    assert check_subscribe(c, "analytics", ["analytics"]) == "analytics"
    with pytest.raises(PermissionDenied, match="roles web"):
        check_subscribe(c, "", ["analytics", "web"])
    with pytest.raises(PermissionDenied, match="as principal ops"):
        check_subscribe(c, "ops", ["analytics"])
    wildcard = caller(acl, "framework", "/tessera.v1.Scheduler/Subscribe", "tok-any")
    assert check_subscribe(wildcard, "", ["x", "y"]) == "anything"


def test_calls_on_another_principals_framework_are_refused_except_teardown_with_the_grant(acl: Acl) -> None:
    analytics = caller(acl, "framework", "/tessera.v1.Scheduler/Kill", "tok-analytics")
    check_framework_call(analytics, "analytics", "Kill")
    check_framework_call(analytics, None, "Kill")  # unknown framework: decide answers NotFound
    for call in ("Kill", "Accept", "Teardown", "Acknowledge", "Reconcile", "Subscribe"):
        with pytest.raises(PermissionDenied):
            check_framework_call(analytics, "anything", call)
    ops = caller(acl, "framework", "/tessera.v1.Scheduler/Teardown", "tok-ops")
    check_framework_call(ops, "analytics", "Teardown")
    with pytest.raises(PermissionDenied):
        check_framework_call(ops, "analytics", "Kill")


def test_launched_tasks_run_only_as_allowed_users(acl: Acl) -> None:
    c = caller(acl, "framework", "/tessera.v1.Scheduler/Accept", "tok-analytics")
    check_launch(c, ["nobody", "nobody"])
    with pytest.raises(PermissionDenied, match="user root"):
        check_launch(c, ["nobody", "root"])
    with pytest.raises(PermissionDenied, match="agent default"):  # no user: the agent's own, not listed
        check_launch(c, [""])
    check_launch(caller(acl, "framework", "/tessera.v1.Scheduler/Accept", "tok-any"), ["", "root"])


def test_without_an_acl_every_decision_is_open() -> None:
    c = authenticate(None, None, "/tessera.v1.Scheduler/Subscribe", None)
    assert c.grant is None
    assert check_subscribe(c, "whoever", ["any"]) == "whoever"
    check_launch(c, ["root", ""])
    check_framework_call(c, "someone-else", "Kill")
    check_operator(c, "SetQuota")


@pytest.mark.parametrize("doc, where", [
    ({}, "principals"),
    ({"principals": {}}, "principals"),
    ({"principal": {"a": {}}}, "top-level"),
    ({"principals": {"a b": {"token_sha256": "0" * 64}}}, "principals.a b"),
    ({"principals": {"a": {"token_sha256": "short"}}}, "token_sha256"),
    ({"principals": {"a": {"token_sha256": "A" * 64}}}, "token_sha256"),
    ({"principals": {"a": {"token_sha256": "0" * 64, "actions": ["rule"]}}}, "actions"),
    ({"principals": {"a": {"token_sha256": "0" * 64, "roles": "web"}}}, "roles"),
    ({"principals": {"a": {"token_sha256": "0" * 64, "users": [1]}}}, "users"),
    ({"principals": {"a": {"token_sha256": "0" * 64, "role": ["web"]}}}, "unknown keys"),
    ({"principals": {"a": {"token_sha256": "0" * 64}, "b": {"token_sha256": "0" * 64}}}, "same token"),
])
def test_malformed_acl_documents_are_refused_naming_the_key(doc: dict[str, object], where: str) -> None:
    with pytest.raises(InvalidRequest, match=where):
        parse_acl(doc)


def test_a_grant_naming_an_invalid_role_is_refused_with_its_key() -> None:
    grant = {"token_sha256": "a" * 64, "roles": ["analytics", "bad role"]}
    with pytest.raises(InvalidRequest, match=r"principals\.bob\.roles: invalid role name 'bad role'"):
        parse_acl({"principals": {"bob": grant}})
    assert parse_acl({"principals": {"bob": {**grant, "roles": ["analytics", "*"]}}}).grants[0].roles == {
        "analytics", "*"}


# ---- sandbox files (docs/files.md) -----------------------------------------------------------------------------
def test_a_principal_reads_its_own_tasks_sandboxes_and_others_need_the_logs_action(acl: Acl) -> None:
    analytics = caller(acl, "framework", "/tessera.v1.Files/Read", "tok-analytics")
    check_file_read(analytics, "analytics")
    with pytest.raises(PermissionDenied, match="principal analytics may not read the sandbox of principal ops's task"):
        check_file_read(analytics, "ops")
    with pytest.raises(PermissionDenied, match="does not know"):
        check_file_read(analytics, None)  # a task whose owner was never told: only `logs` reads it
    with pytest.raises(PermissionDenied):
        check_file_read(analytics, "")
    ops = caller(acl, "operator", "/tessera.v1.Files/Follow", "tok-ops")
    with pytest.raises(PermissionDenied, match="the `logs` action"):
        check_file_read(ops, "analytics")  # read_all-free `read` is not enough either
    auditor = caller(acl, "operator", "/tessera.v1.Operator/ReadFile", "tok-auditor")
    for owner in ("analytics", "ops", None):
        check_file_read(auditor, owner)


def test_file_calls_need_a_token_except_the_masters_proxy_and_agents_may_not_make_them(acl: Acl) -> None:
    with pytest.raises(Unauthenticated):
        caller(acl, "framework", "/tessera.v1.Files/List", None)
    with pytest.raises(Unauthenticated):
        caller(acl, "operator", "/tessera.v1.Operator/FollowFile", None)
    proxy = caller(acl, "master", "/tessera.v1.Files/Follow", None)
    assert proxy.grant is None
    check_file_read(proxy, "anyone")  # the master checked the caller before forwarding
    with pytest.raises(PermissionDenied, match="a agent certificate may not call Files.Read"):
        check_peer("agent", "/tessera.v1.Files/Read")
    with pytest.raises(PermissionDenied):
        check_peer("master", "/tessera.v1.Operator/ReadFile")  # masters forward to agents, not to masters
    for method in ("ListFiles", "StatFile", "ReadFile", "FollowFile"):
        check_peer("framework", f"/tessera.v1.Operator/{method}")
        check_peer("operator", f"/tessera.v1.Operator/{method}")


def test_without_an_acl_anyone_reads_every_sandbox() -> None:
    check_file_read(authenticate(None, None, "/tessera.v1.Files/Read", None), "whoever")
