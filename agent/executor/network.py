"""Container networks with the standard CNI plugins: `bridge` + `host-local` IPAM + `portmap`, and `loopback`.

What this module owns: giving a container its own network namespace attached to the agent's bridge, with
an address from the agent's subnet and its published ports, and taking all of that away again — also
after an agent restart, from what is on disk. The plugins are the Debian package
`containernetworking-plugins` (`/usr/lib/cni`); this module is a CNI *runtime* (spec 1.0.0): it builds the
network configuration, executes the plugins with the CNI environment and reads their results. It runs no
plugin code of its own and never changes a namespace, bridge, address or iptables chain it did not create.

Theory of operation.
- One agent, one network: the bridge `NetworkConfig.bridge` (default `tessera0`) with the gateway (the
  subnet's first address), one /24 by default, the network name `tessera-<bridge>` (the plugins name
  their iptables chains and comments after it), the host-local IPAM data under the agent's own state dir
  (`<state_dir>/ipam`). Two agents on one host with different bridges and subnets share no state.
- A container's namespace is created with `ip netns add <bridge>-<container id>` (a file bind-mounted on
  nsfs in `/run/netns`, where `ip netns exec`, runc and operators find it). A bridge name holds no `-`
  (validated), so the prefix `<bridge>-` of one agent is never a prefix of another agent's.
- `attach` writes the container's record (`<state_dir>/attachments/<id>.json`: the network
  configuration it uses, its port mappings, the namespace) BEFORE it creates anything, then creates the
  namespace, runs `loopback` ADD (ifname `lo`) and the chain `bridge` → `portmap` ADD (ifname `eth0`, each
  plugin after the first gets the previous one's result as `prevResult`; `portmap` gets its
  `runtimeConfig.portMappings` because it declares that capability), and stores the final result in the
  record. A failed ADD is undone at once (DEL of the whole chain in reverse order, as the spec asks).
- `detach` runs DEL in reverse order with exactly the configuration and port mappings of the record (so
  a flag changed since is harmless; `portmap` deletes nothing without its port mappings) and the stored
  result as `prevResult`, then deletes the namespace, then the record. DEL comes before the namespace is
  deleted because `bridge` finds the addresses whose masquerade rules it removes on the container's
  interface. Every step tolerates what is already gone: `detach` is idempotent, and a crash at any point
  leaves a record or a namespace with this agent's prefix, which `cleanup_orphans` finds.
- Calls for one container must not overlap; calls for different containers may run concurrently (the
  plugins lock their own state: host-local a file lock, portmap/bridge `iptables --wait`).

What the plugins change on the host (the first attach): the bridge with the gateway address;
`net.ipv4.ip_forward=1` (bridge, isGateway); `net.ipv4.conf.<bridge>.route_localnet=1` (portmap, so that
connections to 127.0.0.1:<host port> can be DNATed onto the bridge); in the nat table the shared chains
`CNI-HOSTPORT-DNAT` (jumped to from PREROUTING and OUTPUT for local destinations), `CNI-HOSTPORT-SETMARK`,
`CNI-HOSTPORT-MASQ` (from POSTROUTING: masquerade what carries mark 0x2000); per container a
`CNI-DN-<hash>` chain (DNAT of its host ports, marking of connections from 127.0.0.1 and from the subnet
so that they are masqueraded) and a `CNI-<hash>` chain (masquerade of its traffic leaving the subnet).
DEL removes the per-container chains; the shared chains and the bridge stay, like docker0's. The agent
adds one rule of its own (`localnet_guard_rule`, at the head of the filter table's INPUT, once): with
route_localnet on the bridge, the host would otherwise accept packets from containers addressed to its
127.0.0.0/8 services.

Pure parts (no I/O): `NetworkConfig`, `network_config_list`, `loopback_config_list`, `plugin_config`,
`plugin_env`, `parse_add_result`, `plugin_failure`, `validate_port_mappings`, `check_container_id`,
`subnet_conflict`, `orphans`, `localnet_guard_rule`. The edges: `CniNetwork` (real plugins, root) and its
twin `FakeNetwork`.
Every failure is a `NetworkError` whose `reason` is written to be read as a TASK_FAILED message.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

CNI_VERSION = "1.0.0"
DEFAULT_BRIDGE = "tessera0"
# 10.213.64.0/24: private (RFC 1918) and outside the ranges other container and cluster software takes by
# default — Docker's pools (172.17-31.0.0/16, 192.168.0.0/16), podman's 10.88.0.0/16, Kubernetes'
# 10.96.0.0/12 services and flannel's 10.244.0.0/16, k3s's 10.42-43.0.0/16, CGNAT/Tailscale's 100.64.0.0/10
# — and away from the low /16s of 10/8 that home, office and cloud networks use first. `available` still
# refuses a subnet that overlaps a route of the host.
DEFAULT_SUBNET = "10.213.64.0/24"
DEFAULT_PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
CONTAINER_IFNAME = "eth0"
LOOPBACK_IFNAME = "lo"
NETNS_DIR = "/run/netns"  # where `ip netns add` puts its files (iproute2's NETNS_RUN_DIR)
PLUGIN_TIMEOUT = 30.0  # seconds one plugin execution may take
COMMAND_TIMEOUT = 10.0  # seconds for `ip netns ...` and `ip route`
REQUIRED_PLUGINS = ("loopback", "bridge", "host-local", "portmap")
RECORD_VERSION = 1
MAX_CONTAINER_ID = 200  # keeps `<bridge>-<id>.json` and the namespace file name under 255 bytes
_BRIDGE_RE = re.compile(r"^[A-Za-z0-9_]{1,15}\Z")  # IFNAMSIZ - 1; no "-" so that netns prefixes never nest
_CONTAINER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")  # the CNI spec's rule for CNI_CONTAINERID
_PROTOCOLS = ("tcp", "udp")
_STDERR_KEPT = 2000  # characters of a plugin's stderr carried into an error


class NetworkError(Exception):
    """A container network could not be set up or taken down; `reason` says why, for a TASK_FAILED."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---- values ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortMapping:
    """Connections to `host_port` on the host (any local address, 127.0.0.1 included) reach
    `container_port` in the container."""

    container_port: int
    host_port: int
    protocol: str = "tcp"

    def to_cni(self) -> dict[str, Any]:
        """The entry of the `portMappings` capability (CNI CONVENTIONS.md)."""
        return {"hostPort": self.host_port, "containerPort": self.container_port, "protocol": self.protocol}

    @staticmethod
    def from_cni(data: Mapping[str, Any]) -> PortMapping:
        return PortMapping(container_port=int(data["containerPort"]), host_port=int(data["hostPort"]),
                           protocol=str(data.get("protocol", "tcp")))


@dataclass(frozen=True)
class NetworkConfig:
    """One agent's container network. `state_dir` is the agent's own (under its work dir)."""

    state_dir: str
    bridge: str = DEFAULT_BRIDGE
    subnet: str = DEFAULT_SUBNET
    plugin_dirs: tuple[str, ...] = DEFAULT_PLUGIN_DIRS

    def __post_init__(self) -> None:
        if not _BRIDGE_RE.match(self.bridge):
            raise ValueError(f"bridge name {self.bridge!r}: 1 to 15 letters, digits or '_'")
        try:
            net = ipaddress.ip_network(self.subnet, strict=True)
        except ValueError as exc:
            raise ValueError(f"subnet {self.subnet!r} is not a network address with a prefix length ({exc})") from exc
        if not isinstance(net, ipaddress.IPv4Network):
            raise ValueError(f"subnet {self.subnet!r}: only IPv4 subnets are supported")
        if net.prefixlen > 29:
            raise ValueError(f"subnet {self.subnet!r} is too small: a /29 or larger is needed")
        if not self.plugin_dirs:
            raise ValueError("at least one CNI plugin directory is needed")
        if not self.state_dir or not os.path.isabs(self.state_dir):
            raise ValueError(f"state dir {self.state_dir!r} must be an absolute path")

    @property
    def network_name(self) -> str:
        """The CNI network name; the plugins name iptables chains and comments after it."""
        return f"tessera-{self.bridge}"

    @property
    def netns_prefix(self) -> str:
        return f"{self.bridge}-"

    @property
    def gateway(self) -> str:
        return str(next(ipaddress.ip_network(self.subnet).hosts()))

    @property
    def ipam_dir(self) -> str:
        return os.path.join(self.state_dir, "ipam")

    @property
    def records_dir(self) -> str:
        return os.path.join(self.state_dir, "attachments")

    def netns_name(self, container_id: str) -> str:
        return self.netns_prefix + container_id


@dataclass(frozen=True)
class Attachment:
    """A container's place on the network: the namespace runc joins, its addresses, its interface."""

    netns_path: str
    ip_addresses: tuple[str, ...]
    interface: str = CONTAINER_IFNAME
    port_mappings: tuple[PortMapping, ...] = ()


@dataclass(frozen=True)
class AttachmentRecord:
    """What `detach` needs, on disk: written before anything is created, completed after ADD."""

    container_id: str
    netns_name: str
    netns_path: str
    network: dict[str, Any]  # the configuration list used for ADD, hence for DEL
    loopback: dict[str, Any]
    port_mappings: tuple[PortMapping, ...]
    result: dict[str, Any] | None = None  # the chain's ADD result; None: ADD did not finish

    def to_json(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, "container_id": self.container_id, "netns_name": self.netns_name,
                "netns_path": self.netns_path, "network": self.network, "loopback": self.loopback,
                "port_mappings": [p.to_cni() for p in self.port_mappings], "result": self.result}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> AttachmentRecord:
        return AttachmentRecord(
            container_id=str(data["container_id"]), netns_name=str(data["netns_name"]),
            netns_path=str(data["netns_path"]), network=dict(data["network"]), loopback=dict(data["loopback"]),
            port_mappings=tuple(PortMapping.from_cni(p) for p in data.get("port_mappings", ())),
            result=data.get("result"),
        )


class Network(Protocol):
    """The port the agent uses; `CniNetwork` and `FakeNetwork` implement it."""

    def available(self) -> str | None: ...

    def attach(self, container_id: str, port_mappings: Sequence[PortMapping] = ()) -> Attachment: ...

    def detach(self, container_id: str) -> None: ...

    def lookup(self, container_id: str) -> Attachment | None: ...

    def cleanup_orphans(self, live_container_ids: Iterable[str]) -> list[str]: ...


# ---- pure parts --------------------------------------------------------------------------------------------


def check_container_id(container_id: str) -> None:
    """CNI's rule for CNI_CONTAINERID (alphanumeric first, then alphanumerics, '_', '.', '-')."""
    if not _CONTAINER_ID_RE.match(container_id) or len(container_id) > MAX_CONTAINER_ID:
        raise NetworkError(f"container id {container_id!r} is not usable for CNI: up to {MAX_CONTAINER_ID} "
                           "letters, digits, '_', '.' or '-', starting with a letter or digit")


def container_id_for(framework_id: str, task_id: str) -> str:
    """A CNI container id for a task: stable, injective in (framework, task), valid for CNI and runc."""
    digest = hashlib.sha256(f"{framework_id}\0{task_id}".encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9_.\-]", "_", task_id)[:64]
    return f"t{digest}-{readable}" if readable else f"t{digest}"


def validate_port_mappings(port_mappings: Iterable[PortMapping]) -> tuple[PortMapping, ...]:
    """Ports 1..65535, protocol tcp or udp, no host port (per protocol) published twice."""
    seen: set[tuple[int, str]] = set()
    out: list[PortMapping] = []
    for pm in port_mappings:
        if pm.protocol not in _PROTOCOLS:
            raise NetworkError(f"port mapping {pm.host_port}->{pm.container_port}: protocol {pm.protocol!r} "
                               "is not tcp or udp")
        for what, port in (("host", pm.host_port), ("container", pm.container_port)):
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise NetworkError(f"port mapping {pm.host_port}->{pm.container_port}/{pm.protocol}: "
                                   f"{what} port {port!r} is not in 1..65535")
        if (pm.host_port, pm.protocol) in seen:
            raise NetworkError(f"host port {pm.host_port}/{pm.protocol} is mapped twice")
        seen.add((pm.host_port, pm.protocol))
        out.append(pm)
    return tuple(out)


def network_config_list(config: NetworkConfig, port_mappings: bool = True) -> dict[str, Any]:
    """The CNI configuration list of the container interface: bridge (gateway, host-local IPAM on the
    subnet, default route) then portmap (host ports, from the runtime's portMappings). A container that
    publishes no port gets no portmap: its DEL alone costs a dozen iptables runs (measured). The list an
    attachment used is in its record, so DEL undoes exactly that list."""
    plugins: dict[str, Any] = {
        "cniVersion": CNI_VERSION,
        "name": config.network_name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": config.bridge,
                "isGateway": True,  # the bridge holds the gateway address; the container's default route
                # Traffic leaving the subnet is masqueraded behind the host's address by ONE rule for the
                # whole subnet (`masquerade_rule`, set up with the agent), not a chain per container: the
                # plugin's ipMasq costs 9 iptables runs per attach and as many per detach (measured).
                "ipMasq": False,
                "hairpinMode": True,  # a container reaches itself through its own published port
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": config.subnet, "gateway": config.gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": config.ipam_dir,
                },
            },
            {
                "type": "portmap",
                "capabilities": {"portMappings": True},
                # snat (the default, said here so that it is not lost): connections from 127.0.0.1 and from
                # the subnet are masqueraded, and route_localnet is set on the bridge, so that
                # 127.0.0.1:<host port> on the host reaches the container.
                "snat": True,
            },
        ],
    }
    if not port_mappings:
        plugins["plugins"] = plugins["plugins"][:1]
    return plugins


def localnet_guard_rule(config: NetworkConfig) -> list[str]:
    """The filter-table INPUT rule that keeps containers away from the host's 127.0.0.0/8 services.

    portmap sets route_localnet=1 on the bridge so that the host's own connections to 127.0.0.1:<host port>
    can be DNATed onto it; but that also makes the host accept packets *from* the bridge addressed to
    127.0.0.0/8, so a container able to send such packets (CAP_NET_RAW suffices) reaches services that
    listen on the host's loopback only (the exposure of CVE-2020-8558 in kube-proxy). Only new connections
    are dropped: the replies of DNATed connections are ESTABLISHED (or DNAT) and pass. (No apostrophe in
    the comment: iptables-save escapes it in a way shell-like parsers of its output do not undo.)"""
    return ["-i", config.bridge, "-d", "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate",
            "RELATED,ESTABLISHED,DNAT", "-m", "comment", "--comment",
            f"{config.network_name}: no new connections from containers to 127.0.0.0/8 of the host", "-j", "DROP"]


def masquerade_rule(config: NetworkConfig) -> list[str]:
    """The nat-table POSTROUTING rule that masquerades what leaves the subnet, for every container of this
    agent's network at once (in place of the bridge plugin's per-container `ipMasq` chains)."""
    return ["-s", config.subnet, "!", "-d", config.subnet, "-m", "comment", "--comment",
            f"{config.network_name}: masquerade what leaves the container subnet", "-j", "MASQUERADE"]


def loopback_config_list(config: NetworkConfig) -> dict[str, Any]:
    """The configuration list that brings `lo` up in the container's namespace (ifname `lo`)."""
    return {"cniVersion": CNI_VERSION, "name": f"{config.network_name}-lo", "plugins": [{"type": "loopback"}]}


def plugin_config(config_list: Mapping[str, Any], index: int, *, port_mappings: Sequence[PortMapping] = (),
                  prev_result: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What plugin `index` of a configuration list reads on stdin (CNI spec 1.0, "Network configuration
    lists"): its own configuration with the list's `name` and `cniVersion`, `runtimeConfig` holding the
    capabilities it declares and the runtime has, and `prevResult` when given."""
    plugin = copy.deepcopy(dict(config_list["plugins"][index]))
    plugin["name"] = config_list["name"]
    plugin["cniVersion"] = config_list["cniVersion"]
    runtime: dict[str, Any] = {}
    capabilities = plugin.get("capabilities", {})
    if capabilities.get("portMappings") and port_mappings:
        runtime["portMappings"] = [pm.to_cni() for pm in port_mappings]
    if runtime:
        plugin["runtimeConfig"] = runtime
    if prev_result is not None:
        plugin["prevResult"] = copy.deepcopy(dict(prev_result))
    return plugin


def plugin_env(base: Mapping[str, str], *, command: str, container_id: str, netns_path: str, ifname: str,
               plugin_dirs: Sequence[str]) -> dict[str, str]:
    """The environment of a plugin execution: the CNI_* variables, plus PATH (the plugins run iptables)."""
    env = {"PATH": base.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    env.update({"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns_path,
                "CNI_IFNAME": ifname, "CNI_PATH": ":".join(plugin_dirs)})
    return env


def parse_add_result(result: Mapping[str, Any], ifname: str = CONTAINER_IFNAME) -> tuple[str, ...]:
    """The container's addresses in a CNI ADD result: the `ips` on the sandbox interface named `ifname`
    (or with no interface index), as plain addresses without prefix length."""
    interfaces = result.get("interfaces") or []
    addresses: list[str] = []
    for entry in result.get("ips") or []:
        index = entry.get("interface")
        if index is not None:
            if not isinstance(index, int) or not 0 <= index < len(interfaces):
                continue
            interface = interfaces[index]
            if interface.get("name") != ifname or not interface.get("sandbox"):
                continue
        try:
            addresses.append(str(ipaddress.ip_interface(str(entry["address"])).ip))
        except (KeyError, ValueError):
            continue
    return tuple(addresses)


def plugin_failure(plugin: str, command: str, returncode: int, stdout: bytes, stderr: bytes) -> str:
    """A reason for a failed plugin execution: the CNI error's message and details (from stdout), the
    plugin's stderr, or its exit status."""
    parts: list[str] = []
    try:
        error = json.loads(stdout.decode("utf-8", "replace") or "null")
    except ValueError:
        error = None
    if isinstance(error, dict) and (error.get("msg") or error.get("details")):
        message = str(error.get("msg") or "")
        details = str(error.get("details") or "")
        text = f"{message}: {details}" if message and details and details not in message else (message or details)
        code = error.get("code")
        parts.append(f"{text} (CNI error code {code})" if code is not None else text)
    elif stdout.strip():
        parts.append(stdout.decode("utf-8", "replace").strip()[:_STDERR_KEPT])
    err = stderr.decode("utf-8", "replace").strip()
    if err:
        parts.append(f"stderr: {err[-_STDERR_KEPT:]}")
    if not parts:
        parts.append(f"exit status {returncode}")
    return f"CNI plugin {plugin} {command} failed: " + "; ".join(parts)


def subnet_conflict(subnet: str, routes: Sequence[Mapping[str, Any]], bridge: str) -> str | None:
    """A route of the host (as `ip -j route show` prints them) whose destination overlaps the subnet on
    another device than the agent's bridge; None when there is none."""
    net = ipaddress.ip_network(subnet)
    for route in routes:
        dst = str(route.get("dst", ""))
        dev = str(route.get("dev", ""))
        if dst in ("", "default") or dev == bridge:
            continue
        try:
            other = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if other.version == net.version and other.overlaps(net):
            return f"subnet {subnet} overlaps the route to {dst} on {dev or 'another device'}"
    return None


def orphans(prefix: str, netns_names: Iterable[str], recorded_ids: Iterable[str],
            live_container_ids: Iterable[str]) -> list[str]:
    """The container ids with a namespace (named with this agent's prefix) or a record that are not live
    (a name whose rest is no valid container id, like the probe's, is not a container's)."""
    found = {name[len(prefix):] for name in netns_names
             if name.startswith(prefix) and _CONTAINER_ID_RE.match(name[len(prefix):])}
    found.update(recorded_ids)
    return sorted(found - set(live_container_ids))


def _attachment(record: AttachmentRecord) -> Attachment:
    return Attachment(netns_path=record.netns_path,
                      ip_addresses=parse_add_result(record.result or {}, CONTAINER_IFNAME),
                      interface=CONTAINER_IFNAME, port_mappings=record.port_mappings)


# ---- the real network --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PluginTiming:
    """How long one plugin execution took (seconds), for `CniNetwork.timings`."""

    plugin: str
    command: str
    seconds: float


class CniNetwork:
    """Container networks with the CNI plugins found in `config.plugin_dirs` (needs root)."""

    def __init__(self, config: NetworkConfig, *, environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] | None = None, host_rules: bool = True) -> None:
        self.config = config
        self._environ = dict(os.environ if environ is None else environ)
        self._clock: Callable[[], float] = clock or time.monotonic
        self.timings: list[PluginTiming] = []  # the latest executions, newest last (bounded)
        self._timings_lock = threading.Lock()
        self._guard_lock = threading.Lock()
        self._guarded = not host_rules  # False: `attach` makes sure of them first (see `prepare_host`)

    # -- can it work here --

    def available(self) -> str | None:
        reasons: list[str] = []
        if os.geteuid() != 0:
            reasons.append("not running as root (container networks need root)")
        missing = [p for p in REQUIRED_PLUGINS if self._find_plugin(p) is None]
        if missing:
            reasons.append(f"CNI plugin{'s' if len(missing) > 1 else ''} {', '.join(missing)} not found in "
                           f"{', '.join(self.config.plugin_dirs)} (Debian package containernetworking-plugins)")
        path = self._environ.get("PATH")
        for tool, package in (("ip", "iproute2"), ("iptables", "iptables")):
            if shutil.which(tool, path=path) is None:
                reasons.append(f"{tool} not found on PATH (Debian package {package})")
        if not reasons:
            conflict = self._subnet_conflict() or self._probe_netns()
            if conflict:
                reasons.append(conflict)
        return "; ".join(reasons) or None

    def _probe_netns(self) -> str | None:
        """Create and delete a namespace: root without CAP_SYS_ADMIN (in a container) cannot. The probe's
        name (`<bridge>--probe`) is no container's: a container id starts with a letter or digit."""
        name = self.config.netns_prefix + "-probe"
        try:
            if os.path.exists(os.path.join(NETNS_DIR, name)):
                self._delete_netns(name)
            self._create_netns(name)
            self._delete_netns(name)
        except NetworkError as exc:
            return exc.reason
        return None

    def _subnet_conflict(self) -> str | None:
        try:
            out = self._run(["ip", "-j", "-4", "route", "show", "table", "all"], what="ip route")
            routes = json.loads(out or "[]")
        except (NetworkError, ValueError) as exc:
            return f"cannot read the host's routes: {exc}"
        return subnet_conflict(self.config.subnet, routes, self.config.bridge)

    # -- attach / detach --

    def attach(self, container_id: str, port_mappings: Sequence[PortMapping] = ()) -> Attachment:
        check_container_id(container_id)
        mappings = validate_port_mappings(port_mappings)
        self._plugin_paths(REQUIRED_PLUGINS)  # a missing plugin fails here, before anything is created
        existing = self._read_record(container_id)
        if existing is not None:
            if (existing.result is not None and existing.port_mappings == mappings
                    and os.path.exists(existing.netns_path)):
                return _attachment(existing)  # attached already (a repeated call)
            self.detach(container_id)  # a half-done or different attachment: start from nothing
        name = self.config.netns_name(container_id)
        record = AttachmentRecord(container_id=container_id, netns_name=name,
                                  netns_path=os.path.join(NETNS_DIR, name),
                                  network=network_config_list(self.config, port_mappings=bool(mappings)),
                                  loopback=loopback_config_list(self.config), port_mappings=mappings)
        self.prepare_host()
        self._write_record(record)
        try:
            self._create_netns(name)
            self._add_list(record.loopback, container_id, record.netns_path, LOOPBACK_IFNAME, ())
            result = self._add_list(record.network, container_id, record.netns_path, CONTAINER_IFNAME, mappings)
        except NetworkError as exc:
            try:
                self.detach(container_id)
            except NetworkError as undo:
                log.warning("undoing the failed network attach of %s: %s", container_id, undo.reason)
            raise NetworkError(f"container network: {exc.reason}") from exc
        done = replace(record, result=result)
        self._write_record(done)
        attachment = _attachment(done)
        if not attachment.ip_addresses:
            self.detach(container_id)
            raise NetworkError("container network: the CNI bridge plugin returned no address for "
                               f"{CONTAINER_IFNAME} ({json.dumps(result)[:500]})")
        return attachment

    def detach(self, container_id: str) -> None:
        check_container_id(container_id)
        try:
            record = self._read_record(container_id)
        except NetworkError as exc:  # torn by a power loss: undo what can be undone without it
            log.warning("%s; detaching %s with the current configuration", exc.reason, container_id)
            record = None
        name = self.config.netns_name(container_id)
        netns_path = os.path.join(NETNS_DIR, name)
        if record is None:
            if not os.path.exists(netns_path) and not self._record_path(container_id).exists():
                return
            # a namespace of ours without a (readable) record: undo what the current configuration adds;
            # portmap's rules cannot be found without the port mappings (they were in the record)
            record = AttachmentRecord(container_id=container_id, netns_name=name, netns_path=netns_path,
                                      network=network_config_list(self.config),
                                      loopback=loopback_config_list(self.config), port_mappings=())
        present = os.path.exists(record.netns_path)
        ns_arg = record.netns_path if present else ""
        try:
            self._del_list(record.network, container_id, ns_arg, CONTAINER_IFNAME, record.port_mappings,
                           record.result)
            self._del_list(record.loopback, container_id, ns_arg, LOOPBACK_IFNAME, (), None)
            if present:
                self._delete_netns(record.netns_name)
        except NetworkError as exc:
            raise NetworkError(f"container network: {exc.reason}") from exc
        self._remove_record(container_id)

    def lookup(self, container_id: str) -> Attachment | None:
        """The attachment of a container, from disk (also after an agent restart); None when not attached."""
        check_container_id(container_id)
        record = self._read_record(container_id)
        if record is None or record.result is None:
            return None
        return _attachment(record)

    def cleanup_orphans(self, live_container_ids: Iterable[str]) -> list[str]:
        """Detach every container of this agent (by namespace prefix or record) that is not live; returns
        the ids detached. A failure is logged and left for the next call (its record stays). An attach
        under way counts as live: call this before launching, or name those containers in the live set."""
        try:
            names = os.listdir(NETNS_DIR)
        except FileNotFoundError:
            names = []
        cleaned: list[str] = []
        for container_id in orphans(self.config.netns_prefix, names, self._recorded_ids(), live_container_ids):
            try:
                self.detach(container_id)
            except NetworkError as exc:
                log.warning("orphaned container network %s: %s", container_id, exc.reason)
                continue
            cleaned.append(container_id)
        return cleaned

    # -- plugin execution (CNI spec 1.0, "Execution protocol" and "Network configuration lists") --

    def _find_plugin(self, plugin: str) -> str | None:
        for directory in self.config.plugin_dirs:
            path = os.path.join(directory, plugin)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        return None

    def _plugin_paths(self, plugins: Iterable[str]) -> dict[str, str]:
        paths: dict[str, str] = {}
        for plugin in plugins:
            path = self._find_plugin(plugin)
            if path is None:
                raise NetworkError(f"container network: CNI plugin {plugin} not found in "
                                   f"{', '.join(self.config.plugin_dirs)} (Debian package "
                                   "containernetworking-plugins)")
            paths[plugin] = path
        return paths

    def _exec(self, config_list: Mapping[str, Any], index: int, command: str, container_id: str,
              netns_path: str, ifname: str, mappings: Sequence[PortMapping],
              prev_result: Mapping[str, Any] | None) -> dict[str, Any] | None:
        plugin = str(config_list["plugins"][index]["type"])
        path = self._find_plugin(plugin)
        if path is None:
            raise NetworkError(f"CNI plugin {plugin} not found in {', '.join(self.config.plugin_dirs)}")
        stdin = json.dumps(plugin_config(config_list, index, port_mappings=mappings,
                                         prev_result=prev_result)).encode()
        env = plugin_env(self._environ, command=command, container_id=container_id, netns_path=netns_path,
                         ifname=ifname, plugin_dirs=self.config.plugin_dirs)
        started = self._clock()
        try:
            done = subprocess.run([path], input=stdin, env=env, capture_output=True, timeout=PLUGIN_TIMEOUT,
                                  check=False, cwd="/")
        except subprocess.TimeoutExpired as exc:
            raise NetworkError(f"CNI plugin {plugin} {command} did not finish within {PLUGIN_TIMEOUT:g} s") from exc
        except OSError as exc:
            raise NetworkError(f"CNI plugin {plugin} {command} could not be executed: {exc}") from exc
        finally:
            self._note(PluginTiming(plugin, command, self._clock() - started))
        if done.returncode != 0:
            raise NetworkError(plugin_failure(plugin, command, done.returncode, done.stdout, done.stderr))
        if command != "ADD":
            return None
        try:
            result = json.loads(done.stdout.decode("utf-8", "replace"))
        except ValueError as exc:
            raise NetworkError(f"CNI plugin {plugin} ADD printed no JSON result: {done.stdout[:300]!r}") from exc
        if not isinstance(result, dict):
            raise NetworkError(f"CNI plugin {plugin} ADD printed no JSON result: {done.stdout[:300]!r}")
        return result

    def _add_list(self, config_list: Mapping[str, Any], container_id: str, netns_path: str, ifname: str,
                  mappings: Sequence[PortMapping]) -> dict[str, Any]:
        result: dict[str, Any] | None = None
        for index in range(len(config_list["plugins"])):
            result = self._exec(config_list, index, "ADD", container_id, netns_path, ifname, mappings, result)
        assert result is not None
        return result

    def _del_list(self, config_list: Mapping[str, Any], container_id: str, netns_path: str, ifname: str,
                  mappings: Sequence[PortMapping], result: Mapping[str, Any] | None) -> None:
        for index in reversed(range(len(config_list["plugins"]))):
            self._exec(config_list, index, "DEL", container_id, netns_path, ifname, mappings, result)

    def _note(self, timing: PluginTiming) -> None:
        with self._timings_lock:
            self.timings.append(timing)
            del self.timings[:-1000]

    # -- the host --

    def prepare_host(self) -> None:
        """Install the network's two host rules once (they stay, like the bridge): `localnet_guard_rule` at
        the head of the filter table's INPUT and `masquerade_rule` in the nat table's POSTROUTING. The
        agent calls it at start; `attach` makes sure of it once per instance unless told the agent did
        (`host_rules=False`, the task supervisors: each attaches one container)."""
        with self._guard_lock:
            if self._guarded:
                return
            started = self._clock()
            try:
                for table, chain, insert, rule, what in (
                        ("filter", "INPUT", ["-I", "INPUT", "1"], localnet_guard_rule(self.config),
                         "adding the rule that keeps containers off the host's 127.0.0.0/8"),
                        ("nat", "POSTROUTING", ["-A", "POSTROUTING"], masquerade_rule(self.config),
                         "adding the masquerade rule of the container subnet")):
                    try:
                        self._run(["iptables", "-w", "-t", table, "-C", chain, *rule], what="iptables -C")
                    except NetworkError:
                        self._run(["iptables", "-w", "-t", table, *insert, *rule], what=what)
            except NetworkError as exc:
                raise NetworkError(f"container network: {exc.reason}") from exc
            finally:
                self._note(PluginTiming("iptables host rules", "ensure", self._clock() - started))
            self._guarded = True

    # -- namespaces --

    def _run(self, argv: list[str], *, what: str) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, timeout=COMMAND_TIMEOUT, check=False,
                                  env={"PATH": self._environ.get("PATH") or "/usr/sbin:/usr/bin:/sbin:/bin"})
        except subprocess.TimeoutExpired as exc:
            raise NetworkError(f"{what} did not finish within {COMMAND_TIMEOUT:g} s") from exc
        except OSError as exc:
            raise NetworkError(f"{what} could not be executed: {exc}") from exc
        if done.returncode != 0:
            err = done.stderr.decode("utf-8", "replace").strip() or f"exit status {done.returncode}"
            raise NetworkError(f"{what} failed: {err}")
        return done.stdout.decode("utf-8", "replace")

    def _create_netns(self, name: str) -> None:
        if os.path.exists(os.path.join(NETNS_DIR, name)):
            self._delete_netns(name)  # a leftover without a record; it holds nothing of a live container
        started = self._clock()
        try:
            self._run(["ip", "netns", "add", name], what=f"creating the network namespace {name}")
        finally:
            self._note(PluginTiming("ip netns", "add", self._clock() - started))

    def _delete_netns(self, name: str) -> None:
        started = self._clock()
        try:
            self._run(["ip", "netns", "delete", name], what=f"deleting the network namespace {name}")
        finally:
            self._note(PluginTiming("ip netns", "delete", self._clock() - started))

    # -- records --

    def _record_path(self, container_id: str) -> Path:
        return Path(self.config.records_dir, f"{container_id}.json")

    def _read_record(self, container_id: str) -> AttachmentRecord | None:
        path = self._record_path(container_id)
        try:
            data = json.loads(path.read_text())
            return AttachmentRecord.from_json(data)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise NetworkError(f"container network: the record {path} is unreadable ({exc})") from exc

    def _write_record(self, record: AttachmentRecord) -> None:
        directory = Path(self.config.records_dir)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._record_path(record.container_id)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record.to_json(), sort_keys=True))
        os.replace(tmp, path)

    def _remove_record(self, container_id: str) -> None:
        try:
            self._record_path(container_id).unlink()
        except FileNotFoundError:
            pass

    def _recorded_ids(self) -> list[str]:
        try:
            names = os.listdir(self.config.records_dir)
        except FileNotFoundError:
            return []
        return [n[:-len(".json")] for n in names if n.endswith(".json") and not n.startswith(".")]


# ---- the twin ----------------------------------------------------------------------------------------------


@dataclass
class FakeNetwork:
    """In-memory twin of `CniNetwork` for the agent's unit tests: same interface, same validation, addresses
    from the subnet (lowest free first, the gateway excluded), no I/O. Set `unavailable`, `fail_attach` or
    `fail_detach` to a reason to make the corresponding call fail with it; `calls` records every call."""

    config: NetworkConfig = field(default_factory=lambda: NetworkConfig(state_dir="/nonexistent/fake-network"))
    unavailable: str | None = None
    fail_attach: str | None = None
    fail_detach: str | None = None
    calls: list[tuple[str, str]] = field(default_factory=list)
    attached: dict[str, Attachment] = field(default_factory=dict)

    def available(self) -> str | None:
        return self.unavailable

    def attach(self, container_id: str, port_mappings: Sequence[PortMapping] = ()) -> Attachment:
        self.calls.append(("attach", container_id))
        check_container_id(container_id)
        mappings = validate_port_mappings(port_mappings)
        if self.fail_attach is not None:
            raise NetworkError(f"container network: {self.fail_attach}")
        existing = self.attached.get(container_id)
        if existing is not None:
            if existing.port_mappings == mappings:
                return existing
            del self.attached[container_id]
        taken = {a for att in self.attached.values() for a in att.ip_addresses}
        gateway = self.config.gateway
        for host in ipaddress.ip_network(self.config.subnet).hosts():
            address = str(host)
            if address != gateway and address not in taken:
                break
        else:
            raise NetworkError(f"container network: no free address in {self.config.subnet}")
        attachment = Attachment(netns_path=os.path.join(NETNS_DIR, self.config.netns_name(container_id)),
                                ip_addresses=(address,), interface=CONTAINER_IFNAME, port_mappings=mappings)
        self.attached[container_id] = attachment
        return attachment

    def detach(self, container_id: str) -> None:
        self.calls.append(("detach", container_id))
        check_container_id(container_id)
        if self.fail_detach is not None:
            raise NetworkError(f"container network: {self.fail_detach}")
        self.attached.pop(container_id, None)

    def lookup(self, container_id: str) -> Attachment | None:
        check_container_id(container_id)
        return self.attached.get(container_id)

    def cleanup_orphans(self, live_container_ids: Iterable[str]) -> list[str]:
        live = sorted(live_container_ids)
        self.calls.append(("cleanup_orphans", ",".join(live)))
        cleaned: list[str] = []
        for container_id in orphans(self.config.netns_prefix, (), list(self.attached), live):
            try:
                self.detach(container_id)
            except NetworkError:
                continue
            cleaned.append(container_id)
        return cleaned


__all__ = [
    "CNI_VERSION", "CONTAINER_IFNAME", "DEFAULT_BRIDGE", "DEFAULT_PLUGIN_DIRS", "DEFAULT_SUBNET", "Attachment",
    "AttachmentRecord", "CniNetwork", "FakeNetwork", "Network", "NetworkConfig", "NetworkError", "PluginTiming",
    "PortMapping", "check_container_id", "container_id_for", "localnet_guard_rule", "loopback_config_list",
    "network_config_list", "orphans", "parse_add_result", "plugin_config", "plugin_env", "plugin_failure",
    "subnet_conflict", "validate_port_mappings",
]
