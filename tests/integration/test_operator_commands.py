"""The operator's everyday commands against a real cluster: three `tessera master` processes, two
`tessera agent` processes, frameworks as real processes (`tessera run`, the service example), and the
`tessera` command itself as a process, as an operator types it.

Pinned here: `task kill` ends a running task and prints the committed index; `tasks --all` lists it once
it has ended (and after its framework is gone); `framework teardown` removes a framework and kills its
tasks; `agent drain` waits until the agent's task is gone and `agent undrain` offers the agent again;
list commands answer from the leader even when asked at a follower, and `--stale` says when a follower
answered. Every wait is bounded; every process is killed by PID at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import LocalCluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TESSERA = [sys.executable, "-m", "tessera.control_plane.cli.main"]
MASTER_FLAGS = ["--allocation-interval", "0.2", "--agent-heartbeat-interval", "0.5"]


class Operator:
    """The cluster, and the `tessera` command run against it as a process."""

    def __init__(self, cluster: LocalCluster, cwd: Path) -> None:
        self.cluster = cluster
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        self.env.update(PYTHONUNBUFFERED="1", TESSERA_MASTERS=",".join(cluster.grpc_addresses()))
        self.procs: list[subprocess.Popen[str]] = []

    def tessera(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*TESSERA, *args], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = self.tessera(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json").stdout)

    def background(self, *args: str) -> subprocess.Popen[str]:
        """A framework process (`tessera run ...`, an example), killed by PID at the end of the module."""
        proc = subprocess.Popen(list(args), cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.procs.append(proc)
        return proc

    def tasks(self, *extra: str) -> list[dict[str, Any]]:
        return self.json("tasks", *extra)  # type: ignore[no-any-return]

    def running(self, prefix: str, n: int = 1) -> list[dict[str, Any]]:
        """Wait until `n` tasks whose id starts with `prefix` run; those tasks."""

        def found() -> list[dict[str, Any]] | None:
            rows = [t for t in self.tasks() if t["task"]["task_id"].startswith(prefix) and t["state"] == "TASK_RUNNING"]
            return rows if len(rows) >= n else None

        return wait_for(found, 90, interval=0.3, what=f"{n} running task(s) named {prefix}*")


@pytest.fixture(scope="module")
def op(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    root = tmp_path_factory.mktemp("operate")
    with LocalCluster(root, n=3) as cluster:
        cluster.master_flags = MASTER_FLAGS
        cluster.start_all()
        cluster.leader(timeout=60)
        cluster.add_agent("cpus:2;mem:1024")
        cluster.add_agent("cpus:2;mem:1024")
        cluster.wait_agents(2, timeout=60)
        operator = Operator(cluster, root)
        try:
            yield operator
        finally:
            for proc in operator.procs:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def test_task_kill_ends_a_running_task_and_tasks_all_keeps_it(op: Operator) -> None:
    run = op.background(*TESSERA, "run", "--name", "killme", "--cpus", "0.1", "--mem", "16", "--", "sleep 300")
    (task,) = op.running("killme-")
    task_id, framework_id = task["task"]["task_id"], task["task"]["framework_id"]

    killed = op.json("task", "kill", task_id, "--grace", "1s")
    assert killed["kill_requested"] and killed["framework_id"] == framework_id and killed["index"] > 0
    assert run.wait(timeout=60) != 0  # the task ended KILLED: `tessera run` exits non-zero, tears down
    events = [json.loads(line) for line in op.ok("events", "--type", "TaskKillRequested", "--task", task_id,
                                                  "--json").stdout.splitlines()]
    assert [e["seq"] for e in events] == [killed["index"]]

    def finished() -> dict[str, Any] | None:
        rows = [t for t in op.tasks("--all") if t["task"]["task_id"] == task_id]
        return rows[0] if rows and rows[0]["state"] == "TASK_KILLED" else None

    row = wait_for(finished, 60, interval=0.3, what="the killed task in tasks --all")
    assert not row["live"] and row["ended_at"] and row["launched_at"] and row["task"]["framework_id"] == framework_id
    assert not [t for t in op.tasks() if t["task"]["task_id"] == task_id]  # the state forgot it with its framework
    table = op.ok("tasks", "--all", "--state", "killed").stdout
    assert task_id in table and "KILLED" in table

    again = op.json("task", "kill", f"{framework_id}/{task_id}")
    assert not again["kill_requested"] and again["state"] in ("TASK_KILLED", "TASK_STATE_UNKNOWN")
    unknown = op.tessera("task", "kill", "no-such-task")
    assert unknown.returncode == 1 and unknown.stderr.strip() == \
        "tessera: NOT_FOUND: no framework has a task no-such-task", unknown.stderr


def test_framework_teardown_removes_it_and_kills_its_tasks(op: Operator) -> None:
    op.background(sys.executable, "-m", "tessera.sdk.examples.service", "--name", "svc", "--command", "sleep 300",
                  "--instances", "2", "--cpus", "0.1", "--mem", "16")
    tasks = op.running("svc-", n=2)
    framework_id = tasks[0]["task"]["framework_id"]
    removed = op.json("framework", "teardown", framework_id)
    assert removed == {"framework_id": framework_id, "index": removed["index"], "removed": True, "tasks_killed": 2}
    frameworks = {f["framework_id"]: f for f in op.json("frameworks")}
    assert frameworks[framework_id]["state"] == "FRAMEWORK_REMOVED"
    wait_for(lambda: all(t["state"] == "TASK_KILLED" for t in op.tasks("--all", "--framework", framework_id)),
             60, interval=0.3, what="the framework's tasks to be killed")
    again = op.ok("framework", "teardown", framework_id).stdout
    assert again.startswith(f"framework {framework_id} was already removed; nothing changed")


def test_drain_waits_until_the_agents_tasks_are_gone_and_undrain_offers_it_again(op: Operator) -> None:
    op.background(*TESSERA, "run", "--name", "drainme", "--cpus", "0.1", "--mem", "16", "--", "sleep 300")
    (task,) = op.running("drainme-")
    agent_id = task["task"]["agent_id"]
    drained = op.tessera("agent", "drain", agent_id, "--wait-timeout", "60s")
    assert drained.returncode == 0, drained.stderr
    assert "1 live task(s)" in drained.stderr and task["task"]["task_id"] in drained.stderr
    assert drained.stdout.startswith(f"agent {agent_id} drained: no live task left")
    agents = {a["agent_id"]: a for a in op.json("agents")}
    assert agents[agent_id]["state"] == "AGENT_DRAINING"
    other = next(a for a in agents if a != agent_id)
    detached = op.json("agent", "drain", other, "--detach")
    assert detached["index"] > 0 and detached["drained"] is False

    for aid in (agent_id, other):
        undrained = op.json("agent", "undrain", aid)
        assert undrained["undrained"] and undrained["index"] > 0
    assert {a["state"] for a in op.json("agents")} == {"AGENT_ACTIVE"}
    assert op.ok("agent", "undrain", other).stdout.startswith(f"agent {other} was not draining; nothing changed")
    done = op.tessera("run", "--cpus", "0.1", "--mem", "16", "--offer-timeout", "60", "--", "true")
    assert done.returncode == 0, done.stderr  # offered again: a new task runs


def test_list_commands_read_from_the_leader_and_stale_reads_say_so(op: Operator) -> None:
    leader = op.cluster.leader()
    follower = next(m for m in op.cluster.masters if m is not leader)
    agents = op.json("--masters", follower.grpc, "agents")
    assert len(agents) == 2 and all(a.get("connected") for a in agents)  # the leader answered
    stale = op.tessera("--masters", follower.grpc, "agents", "--stale")
    assert stale.returncode == 0, stale.stderr
    assert "stale read: a follower answered" in stale.stderr
    assert " ? " in stale.stdout and " no " not in stale.stdout  # connected: unknown, not "no"
    fresh = op.tessera("--masters", follower.grpc, "frameworks")
    assert fresh.returncode == 0 and "stale" not in fresh.stderr
    state = op.tessera("--masters", follower.grpc, "state", "--stale")
    assert state.returncode == 0 and "stale read" in state.stderr
    assert state.stdout.startswith("state as a follower holds it: index ")


# ---- who may: a secured cluster ----------------------------------------------------------------------------
def test_kill_teardown_and_undrain_need_their_actions_on_a_secured_cluster(tmp_path: Path) -> None:
    from tessera.control_plane.core.acl import token_digest
    from tests.support.secure_cluster import AgentSpec, clean_env, launch, new_pki, secured_cluster, subscribe

    tokens = {"reader": "tok-reader-1", "killer": "tok-killer-2", "admin": "tok-admin-3", "tenant": "tok-tenant-4"}
    grants = {"reader": '["read"]', "killer": '["read", "kill"]', "admin": '["read", "kill", "teardown", "drain"]'}
    acl = "".join(f'[principals.{p}]\ntoken_sha256 = "{token_digest(tokens[p])}"\nactions = {a}\n\n'
                  for p, a in grants.items())
    acl += f'[principals.tenant]\ntoken_sha256 = "{token_digest(tokens["tenant"])}"\nroles = ["*"]\nusers = [""]\n'
    pki = new_pki(tmp_path / "pki", acl)
    for principal, token in tokens.items():
        (tmp_path / f"{principal}.token").write_text(token)
    with secured_cluster(tmp_path / "cluster", pki, tokens, agents=[AgentSpec("secured-op-agent")],
                         reader="admin") as c:
        def tessera(principal: str, *args: str) -> subprocess.CompletedProcess[str]:
            env = clean_env()
            env["TESSERA_MASTERS"] = c.grpc
            return subprocess.run([*TESSERA, "--tls-dir", str(pki / "operator"), *args, "--token-file",
                                   str(tmp_path / f"{principal}.token")], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=60)

        tenant = subscribe(c, "tenant", ["web"], "tenant-fw")
        launch(c, tenant, "t1", "sleep 300")
        before = c.state()
        agent_id = before.agents[0].agent_id
        refusals = [("reader", ["task", "kill", "t1"], "principal reader may not kill (Operator.KillTask)"),
                    ("killer", ["framework", "teardown", tenant.framework_id],
                     "principal killer may not teardown (Operator.TeardownFramework)"),
                    ("killer", ["agent", "undrain", agent_id], "principal killer may not drain (Operator.UndrainAgent)"),
                    ("reader", ["agent", "drain", agent_id, "--detach"], "may not drain (Operator.DrainAgent)")]
        for principal, args, needle in refusals:
            refused = tessera(principal, *args)
            assert refused.returncode == 1 and refused.stderr.startswith("tessera: PERMISSION_DENIED: "), refused
            assert needle in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert {"TaskKillRequested", "FrameworkRemoved", "AgentDrainStarted", "AgentUndrained"}.isdisjoint(
            c.event_types_since(before.index))

        killed = tessera("killer", "--json", "task", "kill", "t1")
        assert killed.returncode == 0 and json.loads(killed.stdout)["kill_requested"], killed.stderr
        drained = tessera("admin", "agent", "drain", agent_id, "--json")  # waits: t1 is being killed
        assert drained.returncode == 0 and json.loads(drained.stdout)["drained"], drained.stderr
        undrained = tessera("admin", "agent", "undrain", agent_id, "--json")
        assert undrained.returncode == 0 and json.loads(undrained.stdout)["undrained"], undrained.stderr
        removed = tessera("admin", "framework", "teardown", tenant.framework_id, "--json")
        assert removed.returncode == 0 and json.loads(removed.stdout)["removed"], removed.stderr
        assert {"TaskKillRequested", "FrameworkRemoved", "AgentDrainStarted", "AgentUndrained"} <= set(
            c.event_types_since(before.index))
