"""The tenant tests' cluster: a secured master and one agent (`tests.support.secure_cluster`), with the
ACL of two tenants — the shared setup of the tests of who may read, report spans for and change what.

Each test module builds its own cluster from its own ACL text (`tenant_cluster`), so a module that pins
a refusal does not depend on another module's grants. Processes are killed by PID when the module ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tessera.control_plane.core.acl import token_digest
from tests.support.secure_cluster import AgentSpec, SecureCluster, new_pki, secured_cluster


def tenants_acl(tokens: dict[str, str], ops_actions: tuple[str, ...]) -> str:
    """The ACL of the tenant tests: an operator `ops` with `ops_actions`, and two readers, alice (role
    analytics) and bob (role web), whose tasks run as the agent's own user."""
    actions = ", ".join(f'"{a}"' for a in ops_actions)
    grants = [f'[principals.ops]\ntoken_sha256 = "{token_digest(tokens["ops"])}"\nactions = [{actions}]']
    for principal, role in (("alice", "analytics"), ("bob", "web")):
        grants.append(f'[principals.{principal}]\ntoken_sha256 = "{token_digest(tokens[principal])}"\n'
                      f'roles = ["{role}"]\nusers = [""]\nactions = ["read"]')
    return "\n\n".join(grants) + "\n"


def tenant_cluster(root: Path, acl: str, tokens: dict[str, str]) -> Iterator[SecureCluster]:
    """A module fixture's body: the master (with `acl`) and the agent `tenant-agent`, yielded once both
    serve; killed by PID afterwards."""
    with secured_cluster(root, new_pki(root / "pki", acl), tokens, agents=[AgentSpec("tenant-agent")]) as c:
        yield c
