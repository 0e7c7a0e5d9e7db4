"""The files in ops/ hold together: the systemd units verify (with systemd-analyze when present) and only
reference variables every env file defines and flags the commands accept; each example quorum's peer lists
name exactly the other masters; Prometheus scrapes what the env files serve; every alert rule uses metric
names and labels the metrics module exports. promtool checks and unit-tests the rules when it is installed
(Debian: `apt-get install prometheus`); the structural checks here run everywhere."""

from __future__ import annotations

import ipaddress
import re
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from tessera.control_plane.metrics.server import parse_address
from tessera.control_plane.metrics.specs import AGENT_METRICS, MASTER_METRICS, METRIC_NAMES

OPS = Path(__file__).resolve().parents[3] / "ops"
UNITS = OPS / "systemd"
CONFIG = OPS / "config"
PROMETHEUS = OPS / "prometheus"
INSTALLED_BINARY = "/opt/tessera/bin/tessera"
# Flags the units pass that the commands do not have yet (none: every flag now exists).
PENDING_FLAGS: set[tuple[str, str]] = set()
DOC_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]


# ---- helpers -------------------------------------------------------------------------------------------
def unit_sections(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit as {section: [(key, value)]}, continuation lines joined."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            assert current not in sections, f"{path.name}: section [{current}] twice"
            sections[current] = []
            continue
        key, sep, value = line.partition("=")
        assert sep and current, f"{path.name}: not KEY=VALUE inside a section: {line!r}"
        sections[current].append((key.strip(), value.strip()))
    assert not pending, f"{path.name}: ends in a continuation"
    return sections


def unit_value(sections: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    values = [v for k, v in sections.get(section, []) if k == key]
    assert len(values) == 1, f"[{section}] {key}: expected once, found {values}"
    return values[0]


def env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path}: not KEY=VALUE: {line!r}"
        assert key not in out, f"{path}: {key} twice"
        out[key] = value
    return out


def exec_start(unit: str) -> tuple[str, list[str], set[str]]:
    """(subcommand, flags, ${VARS}) of a unit's ExecStart."""
    argv = unit_value(unit_sections(UNITS / unit), "Service", "ExecStart").split()
    assert argv[0] == INSTALLED_BINARY
    return argv[1], [a for a in argv if a.startswith("--")], set(re.findall(r"\$\{(\w+)\}", " ".join(argv)))


def quorum_envs(size: int) -> dict[str, dict[str, str]]:
    files = sorted((CONFIG / f"{size}-masters").glob("*.env"))
    assert [f.stem for f in files] == [f"m{i}" for i in range(1, size + 1)]
    return {f.stem: env_file(f) for f in files}


def is_documentation_address(host: str) -> bool:
    return any(ipaddress.ip_address(host) in net for net in DOC_NETS)


def command_flags(name: str) -> set[str]:
    import click

    from tessera.control_plane.cli.main import cli

    command = cli.commands.get(name)
    if command is None and name == "agent":
        from tessera.agent.cli import agent_main

        command = agent_main
    assert isinstance(command, click.Command), f"no `tessera {name}` command"
    return {opt for p in command.params for opt in getattr(p, "opts", [])}


# ---- systemd -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("unit", ["tessera-master@.service", "tessera-agent.service"])
def test_unit_has_restart_limits_and_an_env_file_and_no_secret(unit: str) -> None:
    sections = unit_sections(UNITS / unit)
    assert set(sections) == {"Unit", "Service", "Install"}
    assert unit_value(sections, "Service", "Restart") == "on-failure"
    assert int(unit_value(sections, "Service", "LimitNOFILE")) >= 65536
    assert unit_value(sections, "Service", "RestartPreventExitStatus") == "2"  # config errors do not loop
    assert unit_value(sections, "Install", "WantedBy") == "multi-user.target"
    assert unit_value(sections, "Service", "EnvironmentFile").startswith("/etc/tessera/")
    text = (UNITS / unit).read_text()
    assert "--raft-password" not in text and not re.search(r"PASSWORD=\S", text)


@pytest.mark.parametrize("unit", ["tessera-master@.service", "tessera-agent.service"])
def test_units_wait_for_readiness_from_the_main_process(unit: str) -> None:
    # `systemctl start` returns once the process sent READY=1 (control_plane/systemd.py), not at exec
    sections = unit_sections(UNITS / unit)
    assert unit_value(sections, "Service", "Type") == "notify"
    assert unit_value(sections, "Service", "NotifyAccess") == "main"


def test_master_unit_runs_as_a_dedicated_user_reads_its_instance_env_and_refuses_an_empty_password() -> None:
    sections = unit_sections(UNITS / "tessera-master@.service")
    assert unit_value(sections, "Service", "User") == "tessera"
    assert unit_value(sections, "Service", "EnvironmentFile") == "/etc/tessera/%i.env"
    assert unit_value(sections, "Service", "NoNewPrivileges") == "yes"
    assert unit_value(sections, "Service", "ProtectSystem") == "strict"
    assert "TESSERA_RAFT_PASSWORD" in unit_value(sections, "Service", "ExecStartPre")


def test_agent_unit_keeps_tasks_alive_across_restarts() -> None:
    sections = unit_sections(UNITS / "tessera-agent.service")
    assert unit_value(sections, "Service", "KillMode") == "process"
    assert unit_value(sections, "Service", "Delegate") == "yes"


@pytest.mark.parametrize(("unit", "command"), [("tessera-master@.service", "master"),
                                                ("tessera-agent.service", "agent")])
def test_units_pass_only_flags_the_commands_accept(unit: str, command: str) -> None:
    subcommand, flags, _ = exec_start(unit)
    assert subcommand == command
    accepted = command_flags(command)
    unknown = {f for f in flags if f not in accepted and (command, f) not in PENDING_FLAGS}
    assert unknown == set()


def test_master_unit_shows_the_deployment_flags() -> None:
    _, flags, _ = exec_start("tessera-master@.service")
    # a production master: mTLS and an ACL (the Raft password comes from the env file), never --insecure-dev
    assert flags == ["--name", "--raft", "--grpc", "--peers", "--data-dir", "--tls-dir", "--acl", "--metrics"]


@pytest.mark.usefixtures("needs_systemd_analyze")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart's binary exists: point the copies at a stub, change nothing else
    stub = tmp_path / "bin" / "tessera"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copies = []
    for unit, name in (("tessera-master@.service", "tessera-master@m1.service"),
                       ("tessera-agent.service", "tessera-agent.service")):
        copy = tmp_path / name
        copy.write_text((UNITS / unit).read_text().replace(INSTALLED_BINARY, str(stub)))
        copies.append(str(copy))
    proc = subprocess.run(["systemd-analyze", "verify", *copies], capture_output=True, text=True, timeout=60)
    # warnings ("Unknown key ...", "ignoring") exit 0 too: any line that names our files is a failure
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if str(tmp_path) in line or "tessera" in line]
    assert proc.returncode == 0 and problems == [], proc.stdout + proc.stderr


# ---- env files ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [3, 5])
def test_each_master_names_every_other_master_as_peer(size: int) -> None:
    envs = quorum_envs(size)
    _, _, unit_vars = exec_start("tessera-master@.service")
    raft = {name: env["TESSERA_MASTER_RAFT"] for name, env in envs.items()}
    assert len(set(raft.values())) == size
    for name, env in envs.items():
        assert set(env) == unit_vars | {"TESSERA_RAFT_PASSWORD"}, name
        assert env["TESSERA_MASTER_NAME"] == name
        assert env["TESSERA_RAFT_PASSWORD"] == ""  # examples never carry a secret; the unit refuses empty
        peers = env["TESSERA_MASTER_PEERS"].split(",")
        assert sorted(peers) == sorted(a for n, a in raft.items() if n != name), name
        assert env["TESSERA_MASTER_DATA_DIR"] == f"/var/lib/tessera/{name}"
        hosts = set()
        for key in ("TESSERA_MASTER_RAFT", "TESSERA_MASTER_GRPC", "TESSERA_MASTER_METRICS"):
            host, port = parse_address(env[key])
            assert port > 0 and is_documentation_address(host), (name, key)
            hosts.add(host)
        assert len(hosts) == 1, f"{name}: one host per master"


def test_agent_env_lists_every_master_of_the_three_master_example() -> None:
    env = env_file(CONFIG / "agent.env")
    _, _, unit_vars = exec_start("tessera-agent.service")
    assert set(env) == unit_vars
    grpc = [e["TESSERA_MASTER_GRPC"] for e in quorum_envs(3).values()]
    assert env["TESSERA_MASTERS"].split(",") == grpc
    host, port = parse_address(env["TESSERA_AGENT_METRICS"])
    assert port > 0 and is_documentation_address(host)


# ---- Prometheus ---------------------------------------------------------------------------------------
def scrape_targets(text: str) -> dict[str, list[str]]:
    """job name -> its static targets, from the simple layout of our prometheus.yml."""
    jobs: dict[str, list[str]] = {}
    job = ""
    for line in text.splitlines():
        m = re.match(r"\s*- job_name:\s*(\S+)", line)
        if m:
            job = m.group(1)
            jobs[job] = []
            continue
        m = re.match(r"\s*- (\S+:\d+)\s*$", line)
        if m and job:
            jobs[job].append(m.group(1))
    return jobs


def test_prometheus_scrapes_every_master_and_agent_of_the_examples() -> None:
    text = (PROMETHEUS / "prometheus.yml").read_text()
    assert "\t" not in text
    assert re.search(r"^rule_files:\n\s+- alerts\.yml$", text, re.M)
    jobs = scrape_targets(text)
    assert set(jobs) == {"tessera-master", "tessera-agent"}
    assert jobs["tessera-master"] == [e["TESSERA_MASTER_METRICS"] for e in quorum_envs(3).values()]
    assert env_file(CONFIG / "agent.env")["TESSERA_AGENT_METRICS"] in jobs["tessera-agent"]


def alert_rules() -> list[dict[str, str]]:
    """Each rule of alerts.yml as {alert, expr, for, severity, summary, description} (one-line values)."""
    rules: list[dict[str, str]] = []
    for line in (PROMETHEUS / "alerts.yml").read_text().splitlines():
        m = re.match(r"\s*- alert: (\w+)$", line)
        if m:
            rules.append({"alert": m.group(1)})
            continue
        m = re.match(r"\s*(expr|for|severity|summary|description): (.+)$", line)
        if m and rules:
            assert m.group(1) not in rules[-1], f"{rules[-1]['alert']}: {m.group(1)} twice"
            rules[-1][m.group(1)] = m.group(2)
    return rules


def process_metric_names() -> set[str]:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return {s.name for family in registry.collect() for s in family.samples}


def test_alert_rules_are_complete_and_use_exported_names_and_labels() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)) >= 8
    known = set(METRIC_NAMES) | process_metric_names() | {"up"}
    labels = {spec.name: set(spec.labels) for spec in (*MASTER_METRICS, *AGENT_METRICS)}
    for rule in rules:
        assert {"expr", "severity", "summary", "description"} <= set(rule), rule["alert"]
        assert rule["severity"] in {"critical", "warning"}, rule["alert"]
        expr = rule["expr"]
        used = set(re.findall(r"\b(?:tessera|process)_[a-z0-9_]+\b", expr)) | set(re.findall(r"\bup(?=\{)", expr))
        assert used, f"{rule['alert']}: no metric found in {expr!r}"
        assert used <= known, f"{rule['alert']}: unknown metrics {used - known}"
        for name, selector in re.findall(r"\b(tessera_[a-z0-9_]+)\{([^}]*)\}", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            given = set(re.findall(r"(\w+)\s*=~?", selector))
            allowed = labels.get(base, set()) | {"job", "instance"} | ({"le"} if name.endswith("_bucket") else set())
            assert given <= allowed, f"{rule['alert']}: {name} has no labels {given - allowed}"
    assert {"TesseraNoLeader", "TesseraApplyLagGrowing", "TesseraAgentsUnreachable",
            "TesseraEventLogDroppingRecords"} <= set(names)


@pytest.mark.usefixtures("needs_promtool")
def test_promtool_accepts_the_config_and_rules_and_the_rule_tests_pass() -> None:
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                 ["test", "rules", "alerts_test.yml"]):
        proc = subprocess.run(["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}{proc.stderr}"


# ---- docs/operations.md ----------------------------------------------------------------------------
DOC = OPS.parent / "docs" / "operations.md"


def doc_commands() -> list[list[str]]:
    """Every `tessera ...` invocation in the doc's code spans and blocks, as argv after `tessera`."""
    import shlex

    text = DOC.read_text()
    spans = re.findall(r"```(?:bash)?\n(.*?)```", text, re.S) + re.findall(r"`([^`\n]+)`", text)
    out = []
    for span in spans:
        for part in re.split(r"&&|\|\||;|\n", span.replace("\\\n", " ")):
            try:
                argv = shlex.split(part)
            except ValueError:
                continue
            if argv and argv[0] == "tessera" and len(argv) > 1:
                out.append(argv[1:])
    return out


def resolve(argv: list[str]) -> None:
    """Walk argv through the click tree: every subcommand and flag must exist (pending flags aside)."""
    import click

    from tessera.control_plane.cli.main import cli

    command: click.Command = cli
    path = ["tessera"]
    descend = True
    i = 0
    while i < len(argv):
        token = argv[i]
        params = list(command.params)
        if isinstance(command, click.Group) and "list" in command.commands and command.name == "events":
            params += command.commands["list"].params  # `tessera events [list options]`
        if token.startswith("--"):
            name = token.split("=", 1)[0]
            option = next((p for p in params if isinstance(p, click.Option) and name in p.opts), None)
            if option is None:
                assert (path[-1], name) in PENDING_FLAGS, f"`{' '.join(path)}` has no option {name}"
                i += 2
                continue
            i += 1 if option.is_flag or "=" in token else 2
            continue
        if descend and isinstance(command, click.Group):
            sub = command.commands.get(token)
            if sub is not None:
                command, path = sub, [*path, token]
                i += 1
                continue
            assert command.name in {"events", "agent"}, f"`{' '.join(path)}` has no subcommand {token}"
        descend = False  # a positional argument: what follows are its values and the command's options
        i += 1


def test_every_command_in_the_operations_doc_exists() -> None:
    commands = doc_commands()
    assert len(commands) >= 30
    for argv in commands:
        resolve(argv)
    assert ["quorum", "add", "192.0.2.14:7001"] in commands


def test_the_operations_doc_lists_every_metric_and_alert() -> None:
    text = DOC.read_text()
    documented = set(re.findall(r"tessera_[a-z0-9_]+", text))
    # the table abbreviates families as `tessera_master_capacity_cpus`, `_mem_bytes`, ...
    for prefix, suffixes in re.findall(r"`(tessera_[a-z0-9_]+?)_cpus`((?:, `_[a-z_]+`)+)", text):
        documented |= {prefix + s.strip(" ,`") for s in suffixes.split(",")}
    missing = {spec.name for spec in (*MASTER_METRICS, *AGENT_METRICS)} - documented
    assert missing == set()
    assert {r["alert"] for r in alert_rules()} <= set(re.findall(r"`(Tessera\w+)`", text))
