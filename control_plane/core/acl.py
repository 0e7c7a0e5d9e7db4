"""Who may do what: the access-control decision, as pure functions over an `Acl` and a `Caller`.

The API layer establishes two facts about every call and hands them here:

- the *kind* of peer, read from its client certificate (mTLS): `master`, `agent`, `framework` or
  `operator`; `None` when the master runs without TLS (insecure development mode);
- the *principal*, from the `authorization: Bearer <token>` metadata, looked up by the SHA-256 of the
  token (the ACL file stores digests, never tokens).

Rules (default deny; every refusal is `Unauthenticated` or `PermissionDenied`, raised before anything
is proposed, so a refused call changes nothing):

- Which kinds of peer may call which service is `KINDS_BY_METHOD` (an agent certificate can open the
  agent link and report spans, nothing else; only a master may announce itself to the quorum; a
  framework certificate makes Operator read calls only, so Operator writes need an operator
  certificate whatever the token grants).
- Scheduler calls and Operator calls (other than the master-to-master ones) need a valid token.
  A framework subscribes as its token's principal (an `info.principal` naming someone else is refused),
  under roles its grant lists; every later call names a framework that must belong to the caller's
  principal (a `teardown` grant may also tear down other principals' frameworks). Launched tasks run as
  users the grant lists.
- Operator actions: `read` (state, events, traces, quorum), `read_all` (with `read`: other principals'
  tasks in full, see `core.visibility`; without it their commands, environment values, labels and
  output are redacted), `drain` (drain and undrain agents), `quorum` (add, remove, transfer), `weights`,
  `quota`, `teardown` (remove any framework), `kill` (kill any task), `configure` (write any
  framework's key/value state: an operator handing a framework its desired state, e.g. the app
  definitions of `tessera services`). `kill` is its own action, as
  Mesos's `kill_tasks` is beside `teardown_frameworks`: ending one runaway task is a smaller power than
  removing a whole framework with all its tasks, and an on-call grant may want the one without the other.
  `logs` (the files of other principals' tasks).
- Sandbox files (`check_file_read`; the agents' `Files` service and the masters' proxy calls
  `Operator.ListFiles/StatFile/ReadFile/FollowFile`, docs/files.md): a principal reads the sandboxes of
  its own frameworks' tasks without any action; another principal's task, or one whose owner is not
  known, needs `logs` (as `read_all` is to the state). A master certificate's `Files` calls need no
  token: it is the proxy, which has made the same check against its own state before forwarding.
- Span reports are checked against the tasks they concern (`core.spans`).

`users` names Unix users a task's command may run as; the empty string stands for "no user given": the
task runs as the agent's own user, which a grant must allow explicitly (list `""`), since agents often
run as root. `"*"` in
`roles` or `users` allows any.

The ACL document (parsed from TOML by the shell, validated here):

    [principals.analytics]
    token_sha256 = "<64 hex digits>"
    roles = ["analytics"]
    users = ["nobody"]
    actions = ["read"]
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from tessera.control_plane.core.errors import InvalidRequest, PermissionDenied, Unauthenticated
from tessera.control_plane.core.resources import validate_role

PeerKind = Literal["master", "agent", "framework", "operator"]
PEER_KINDS: tuple[PeerKind, ...] = ("master", "agent", "framework", "operator")
LOGS = "logs"
ACTIONS = frozenset({"read", "read_all", "drain", "quorum", "weights", "quota", "teardown", "kill", "configure",
                     LOGS})
ANY = "*"

_PRINCIPAL_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,128}\Z")
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}\Z")
_GRANT_KEYS = frozenset({"token_sha256", "roles", "users", "actions"})

# What each kind of certificate may call: "Service/Method" or "Service/*". Masters call each other's
# Operator service (announce, quorum fan-out); frameworks may make the Operator *read* calls (with a
# token whose grant has `read`); every Operator write (weights, quota, drain, quorum changes) needs an
# operator certificate, whatever the token grants.
OPERATOR_READS = ("GetState", "ListEvents", "WatchEvents", "GetStateAt", "GetTrace", "GetFrameworkState")
# The masters' proxy calls for sandbox files: authorized per task (`check_file_read`), not by an action.
OPERATOR_FILE_CALLS = ("ListFiles", "StatFile", "ReadFile", "FollowFile")
KINDS_BY_METHOD: Mapping[str, frozenset[PeerKind]] = {
    "AgentLink/*": frozenset({"agent"}),
    "Files/*": frozenset({"master", "operator", "framework"}),
    **{f"Operator/{method}": frozenset({"operator", "framework"}) for method in OPERATOR_FILE_CALLS},
    "Scheduler/*": frozenset({"framework"}),
    "Operator/ReportSpans": frozenset({"master", "agent", "framework", "operator"}),
    "Operator/AnnounceMaster": frozenset({"master"}),
    "Operator/GetQuorum": frozenset({"master", "operator", "framework"}),
    **{f"Operator/{method}": frozenset({"operator", "framework"}) for method in OPERATOR_READS},
    "Operator/*": frozenset({"operator"}),
    "Health/*": frozenset({"master", "agent", "framework", "operator"}),
    "ServerReflection/*": frozenset({"operator"}),
}

# Operator methods and the action each needs; a method missing here is refused to every principal.
OPERATOR_ACTIONS: Mapping[str, str] = {
    "GetState": "read", "ListEvents": "read", "WatchEvents": "read", "GetStateAt": "read",
    "GetTrace": "read", "GetQuorum": "read", "GetFrameworkState": "read",
    "AddMaster": "quorum", "RemoveMaster": "quorum", "TransferLeadership": "quorum",
    "SetWeight": "weights", "SetQuota": "quota", "DrainAgent": "drain", "UndrainAgent": "drain",
    "KillTask": "kill", "TeardownFramework": "teardown", "WriteFrameworkState": "configure",
}
# Operator methods a peer's certificate alone authorizes (no token): master-to-master, and spans from
# agents (which hold no token). Frameworks and operators report spans with their token, so that the
# spans they may report can be checked against their principal (`core.spans`).
CERTIFICATE_ONLY: Mapping[str, frozenset[PeerKind]] = {
    "ReportSpans": frozenset({"master", "agent"}),
    "AnnounceMaster": frozenset({"master"}),
    "GetQuorum": frozenset({"master"}),
}


@dataclass(frozen=True, slots=True)
class Grant:
    """What one principal may do."""

    principal: str
    token_sha256: str
    roles: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    actions: frozenset[str] = frozenset()

    def may_use_role(self, role: str) -> bool:
        return ANY in self.roles or role in self.roles

    def may_run_as(self, user: str) -> bool:
        return ANY in self.users or user in self.users


@dataclass(frozen=True)
class Acl:
    grants: tuple[Grant, ...]
    by_digest: Mapping[str, Grant] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_digest: dict[str, Grant] = {}
        for g in self.grants:
            if g.token_sha256 in by_digest:
                raise InvalidRequest(f"principals.{g.principal}.token_sha256: the same token as "
                                     f"principal {by_digest[g.token_sha256].principal}")
            by_digest[g.token_sha256] = g
        object.__setattr__(self, "by_digest", by_digest)

    def grant_for_token(self, token: str) -> Grant | None:
        return self.by_digest.get(token_digest(token))

    def grant(self, principal: str) -> Grant | None:
        return next((g for g in self.grants if g.principal == principal), None)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: `kind` from the certificate (None without TLS), `grant` from the token (None
    when no token was needed or the master runs without an ACL)."""

    kind: PeerKind | None
    grant: Grant | None

    @property
    def principal(self) -> str | None:
        return self.grant.principal if self.grant is not None else None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_acl(doc: Mapping[str, object]) -> Acl:
    """The ACL from its parsed document; InvalidRequest names the offending key."""
    unknown = set(doc) - {"principals"}
    if unknown:
        raise InvalidRequest(f"unknown top-level keys {sorted(unknown)}; expected [principals.NAME] tables")
    principals = doc.get("principals", {})
    if not isinstance(principals, Mapping) or not principals:
        raise InvalidRequest("principals: at least one [principals.NAME] table is needed")
    grants = []
    for name, body in principals.items():
        where = f"principals.{name}"
        if not isinstance(name, str) or not _PRINCIPAL_RE.match(name):
            raise InvalidRequest(f"{where}: a principal is 1-128 of A-Z a-z 0-9 _ . @ -")
        if not isinstance(body, Mapping):
            raise InvalidRequest(f"{where}: expected a table")
        extra = set(body) - _GRANT_KEYS
        if extra:
            raise InvalidRequest(f"{where}: unknown keys {sorted(extra)}")
        digest = body.get("token_sha256")
        if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
            raise InvalidRequest(f"{where}.token_sha256: the SHA-256 of the token, 64 lower-case hex digits")
        actions = _strings(body.get("actions", ()), f"{where}.actions")
        bad = actions - ACTIONS
        if bad:
            raise InvalidRequest(f"{where}.actions: unknown {sorted(bad)}; known: {', '.join(sorted(ACTIONS))}")
        roles = _strings(body.get("roles", ()), f"{where}.roles")
        for role in roles - {ANY}:
            try:
                validate_role(role)
            except InvalidRequest as exc:
                raise InvalidRequest(f"{where}.roles: {exc.message}") from exc
        grants.append(Grant(principal=name, token_sha256=digest, roles=roles,
                            users=_strings(body.get("users", ()), f"{where}.users"), actions=actions))
    return Acl(tuple(grants))


def _strings(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{where}: expected a list of strings")
    return frozenset(value)


# ---- decisions ---------------------------------------------------------------------------------------
def method_key(full_method: str) -> tuple[str, str]:
    """("Operator", "GetState") from "/tessera.v1.Operator/GetState"."""
    service, _, method = full_method.lstrip("/").partition("/")
    return service.rsplit(".", 1)[-1], method


def check_peer(kind: PeerKind | None, full_method: str) -> None:
    """The certificate's kind may call this method at all (skipped without TLS: kind None)."""
    if kind is None:
        return
    service, method = method_key(full_method)
    allowed = KINDS_BY_METHOD.get(f"{service}/{method}")
    if allowed is None:
        allowed = KINDS_BY_METHOD.get(f"{service}/*", frozenset())
    if kind not in allowed:
        raise PermissionDenied(f"a {kind} certificate may not call {service}.{method}")


def authenticate(acl: Acl | None, kind: PeerKind | None, full_method: str, token: str | None) -> Caller:
    """The caller of `full_method`; Unauthenticated when a token is needed and missing or unknown."""
    check_peer(kind, full_method)
    if acl is None:
        return Caller(kind, None)
    service, method = method_key(full_method)
    if service in ("Health", "ServerReflection"):
        return Caller(kind, None)
    if service == "AgentLink" and kind == "agent":
        return Caller(kind, None)  # agents are authenticated by their certificate
    if service == "Files" and kind == "master":
        return Caller(kind, None)  # the masters' proxy: it checked the caller before forwarding
    if service == "Operator" and kind is not None and kind in CERTIFICATE_ONLY.get(method, frozenset()):
        return Caller(kind, None)
    if not token:
        raise Unauthenticated(f"{service}.{method} needs a bearer token (authorization: Bearer ...)")
    grant = acl.grant_for_token(token)
    if grant is None:
        raise Unauthenticated("the bearer token names no principal")
    return Caller(kind, grant)


def check_operator(caller: Caller, method: str) -> None:
    """An Operator method: the grant must list the action the method needs."""
    grant = caller.grant  # None: open (no ACL, or a certificate-only call)
    if grant is None:
        return
    action = OPERATOR_ACTIONS.get(method)
    if action is None:
        raise PermissionDenied(f"Operator.{method} is not open to principals")
    if action not in grant.actions:
        raise PermissionDenied(f"principal {grant.principal} may not {action} (Operator.{method})")


def check_subscribe(caller: Caller, principal: str, roles: Iterable[str]) -> str:
    """A framework subscribing; returns the principal to record (the token's)."""
    grant = caller.grant  # None: open (no ACL, or a certificate-only call)
    if grant is None:
        return principal
    if principal and principal != grant.principal:
        raise PermissionDenied(f"principal {grant.principal} may not subscribe as principal {principal}")
    denied = sorted(r for r in roles if not grant.may_use_role(r))
    if denied:
        raise PermissionDenied(f"principal {grant.principal} may not use roles {', '.join(denied)}")
    return grant.principal


def check_framework_call(caller: Caller, owner: str | None, call: str) -> None:
    """A scheduler call naming a framework whose recorded principal is `owner` (None: no such framework,
    left to `decide`, which answers NotFound)."""
    grant = caller.grant  # None: open (no ACL, or a certificate-only call)
    if grant is None or owner is None or owner == grant.principal:
        return
    if call == "Teardown" and "teardown" in grant.actions:
        return
    raise PermissionDenied(f"principal {grant.principal} may not {call} a framework of another principal")


def check_launch(caller: Caller, task_users: Iterable[str]) -> None:
    """Tasks launched by the caller's framework run as their command's user; an empty one runs as the
    agent's own user (the framework's `user` is not used to run anything, so it is not what is checked)."""
    grant = caller.grant  # None: open (no ACL, or a certificate-only call)
    if grant is None:
        return
    for user in task_users:
        if not grant.may_run_as(user):
            raise PermissionDenied(
                f"principal {grant.principal} may not run tasks as user {user or '(the agent default)'}")


def check_file_read(caller: Caller, owner: str | None) -> None:
    """Reading the sandbox of a task whose framework was recorded under principal `owner` (None or "":
    not known, e.g. a task launched before agents were told). Own tasks need no action; others need
    `logs`. No grant (no ACL in force, or the masters' proxy with a master certificate): allowed."""
    grant = caller.grant
    if grant is None:
        return
    if owner and owner == grant.principal:
        return
    if LOGS in grant.actions:
        return
    whose = f"principal {owner}'s task" if owner else "a task whose principal this agent does not know"
    raise PermissionDenied(f"principal {grant.principal} may not read the sandbox of {whose} "
                           f"(its own frameworks' tasks only, or the `{LOGS}` action)")
