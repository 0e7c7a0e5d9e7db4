"""The host side of tests and benchmarks that use real CNI networks: what they need installed, and the
removal of everything they created — namespaces, links, nat rules and chains — found by a name prefix
and the test subnets, so that leftovers of a crashed run go too.

The portmap chains shared by every CNI user on the host (CNI-HOSTPORT-*) and net.ipv4.ip_forward are put
back as they were (`HostState`) only when no rule of anyone is left in the chains."""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tessera.agent.executor.network import NETNS_DIR, REQUIRED_PLUGINS

SHARED_CHAINS = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
TIMEOUT = 10.0


def missing_requirements(plugin_dir: str = "/usr/lib/cni", tools: Iterable[tuple[str, str]] = ()) -> list[str]:
    """What is missing to run real CNI networks here, each named with its Debian package."""
    problems = []
    if os.geteuid() != 0:
        problems.append("root (network namespaces, bridges and iptables need it)")
    gone = [p for p in REQUIRED_PLUGINS if not os.access(os.path.join(plugin_dir, p), os.X_OK)]
    if gone:
        problems.append(f"CNI plugins {', '.join(gone)} in {plugin_dir} (Debian package containernetworking-plugins)")
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables"), ("iptables-save", "iptables"), *tools):
        if shutil.which(tool) is None:
            problems.append(f"{tool} (Debian package {package})")
    return problems


def run(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{shlex.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def nat_rules(table: str = "nat") -> list[str]:
    return [line for line in run("iptables-save", "-t", table).splitlines() if line.startswith("-A ")]


def nat_chains() -> set[str]:
    return {line[1:].split()[0] for line in run("iptables-save", "-t", "nat").splitlines() if line.startswith(":")}


def namespaces(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def _target(words: list[str]) -> str:
    return words[words.index("-j") + 1] if "-j" in words and words.index("-j") + 1 < len(words) else ""


def _mentions(words: list[str], subnets: list[ipaddress.IPv4Network]) -> bool:
    for word in words:
        text = word.split("/")[0].rsplit(":", 1)[0] if word.count(":") <= 1 else word
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if any(address in subnet for subnet in subnets):
            return True
    return False


def clean_leftovers(prefix: str, subnets: Iterable[str]) -> None:
    """Remove the namespaces and links named `prefix*` (killing what runs in those namespaces), the nat
    rules that carry a CNI network name `tessera-<prefix>...` or an address of `subnets` with the
    per-container chains they belong to or jump to, and the filter rules that carry such a name."""
    nets = [ipaddress.IPv4Network(s) for s in subnets]
    for name in namespaces(prefix):
        for pid in run("ip", "netns", "pids", name, check=False).split():
            try:
                os.kill(int(pid), signal.SIGKILL)  # a process a crashed test started in its namespace
            except ProcessLookupError:
                pass
        run("ip", "netns", "delete", name, check=False)
    for rule in nat_rules("filter"):  # the agent's guard rule (localnet_guard_rule)
        if f'"tessera-{prefix}' in rule:
            run("iptables", "-t", "filter", "-D", *shlex.split(rule)[1:], check=False)
    chains: set[str] = set()
    for rule in nat_rules():
        words = shlex.split(rule)
        if f'"tessera-{prefix}' not in rule and not _mentions(words, nets):
            continue
        for chain in (words[1], _target(words)):
            if chain.startswith("CNI-") and chain not in SHARED_CHAINS:
                chains.add(chain)
        run("iptables", "-t", "nat", "-D", *words[1:], check=False)
    for rule in nat_rules():  # jumps into those chains that carry neither the name nor an address
        words = shlex.split(rule)
        if _target(words) in chains:
            run("iptables", "-t", "nat", "-D", *words[1:], check=False)
    for chain in chains:
        run("iptables", "-t", "nat", "-F", chain, check=False)
        run("iptables", "-t", "nat", "-X", chain, check=False)
    for link in json.loads(run("ip", "-j", "link", "show") or "[]"):
        if str(link.get("ifname", "")).startswith(prefix):
            run("ip", "link", "delete", link["ifname"], check=False)


@dataclass(frozen=True)
class HostState:
    """What the plugins change on the host beyond the test's own names."""

    shared_chains: bool
    ip_forward: str

    @staticmethod
    def capture() -> HostState:
        return HostState(shared_chains=bool(nat_chains() & set(SHARED_CHAINS)),
                         ip_forward=IP_FORWARD.read_text().strip())

    def restore(self) -> None:
        if not self.shared_chains:
            _remove_shared_chains_if_unused()
        IP_FORWARD.write_text(self.ip_forward)


def _remove_shared_chains_if_unused() -> None:
    if "CNI-HOSTPORT-DNAT" not in nat_chains():
        return
    if any(rule.split()[1] == "CNI-HOSTPORT-DNAT" for rule in nat_rules()):
        return  # another CNI user publishes ports
    for rule in nat_rules():
        words = shlex.split(rule)
        if _target(words) in SHARED_CHAINS and words[1] not in SHARED_CHAINS:
            run("iptables", "-t", "nat", "-D", *words[1:], check=False)
    for chain in SHARED_CHAINS:
        run("iptables", "-t", "nat", "-F", chain, check=False)
    for chain in SHARED_CHAINS:
        run("iptables", "-t", "nat", "-X", chain, check=False)


def require_container_host() -> None:
    """Fail (never skip) unless this machine can run container tasks: root, runc, the image tools, the
    registry, busybox-static, the CNI plugins, ip and iptables (.ci/run installs the packages)."""
    from tests.support.registry import require_tool

    for tool in ("runc", "skopeo", "umoci", "docker-registry", "busybox"):
        require_tool(tool)
    problems = missing_requirements()
    assert not problems, "container tests need: " + "; ".join(problems)
    assert os.geteuid() == 0, "container tests need root (runc, mounts, CNI)"
