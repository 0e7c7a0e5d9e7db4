"""App definitions of the service framework: Marathon's shape, checked field by field (pure).

    {"id": "web", "instances": 3, "cpus": 0.1, "mem": 64, "cmd": "python3 -m http.server $PORT0",
     "portDefinitions": [{"port": 0, "name": "http"}],
     "healthChecks": [{"protocol": "HTTP", "path": "/", "portIndex": 0}],
     "constraints": [["hostname", "UNIQUE"]], "shutdownDelaySeconds": 3,
     "upgradeStrategy": {"minimumHealthCapacity": 1, "maximumOverCapacity": 1}}

`parse_app(data)` turns a parsed JSON/YAML document (`tessera service apply` reads the file:
control_plane/cli/definitions.py) into an `App` or raises `AppError` naming the field's path
(`container.portMappings[1].containerPort: ...`). Unknown fields are refused (a typo must not be
silently ignored), as are negative counts, impossible constraints and colliding ports. `App.to_json()`
gives the canonical document back (what the framework stores; `version` is its digest).

`shutdownDelaySeconds` (Nomad's `shutdown_delay`; default 0) is how long an instance being stopped — replaced
by a deployment, scaled down, restarted — stays TASK_KILLING and out of DNS and the load balancer, still
serving what it has, before its SIGTERM (`TaskInfo.shutdown_delay`; docs/load-balancing.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tessera.control_plane.core.state import MAX_SHUTDOWN_DELAY

__all__ = ["App", "AppError", "Constraint", "HealthCheckSpec", "PortSpec", "UpgradeStrategy", "parse_app"]

_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
OPERATORS = ("UNIQUE", "GROUP_BY", "LIKE", "UNLIKE", "MAX_PER", "CLUSTER")
MAX_INSTANCES = 10_000


class AppError(ValueError):
    """An app definition that cannot be run as written; the message starts with the field's path."""


@dataclass(frozen=True)
class PortSpec:
    """A port of the app: a host port from the offer (`host_port` 0: any) for a command task, or a
    container port published on one (`container_port`)."""

    name: str = ""
    protocol: str = "tcp"
    host_port: int = 0  # 0: any port of the offer
    container_port: int = 0  # container apps only


@dataclass(frozen=True)
class HealthCheckSpec:
    protocol: str = "HTTP"  # HTTP, TCP or COMMAND
    path: str = "/"
    port_index: int = 0
    command: str = ""
    grace_period_seconds: float = 300.0
    interval_seconds: float = 60.0
    timeout_seconds: float = 20.0
    max_consecutive_failures: int = 3
    delay_seconds: float = 15.0


@dataclass(frozen=True)
class Constraint:
    attribute: str  # "hostname" or an agent attribute
    operator: str  # one of OPERATORS
    value: str = ""


@dataclass(frozen=True)
class UpgradeStrategy:
    minimum_health_capacity: float = 1.0  # share of `instances` that stays healthy during a deployment
    maximum_over_capacity: float = 1.0  # share of `instances` that may run beyond it meanwhile


@dataclass(frozen=True)
class App:
    id: str
    instances: int = 1
    cpus: float = 1.0
    mem: float = 128.0
    disk: float = 0.0
    cmd: str = ""
    args: tuple[str, ...] = ()
    image: str = ""  # container apps: the OCI image
    network: str = "bridge"
    ports: tuple[PortSpec, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    health_checks: tuple[HealthCheckSpec, ...] = ()
    constraints: tuple[Constraint, ...] = ()
    upgrade: UpgradeStrategy = field(default_factory=UpgradeStrategy)
    backoff_seconds: float = 1.0
    backoff_factor: float = 1.15
    max_launch_delay_seconds: float = 300.0
    user: str = ""
    shutdown_delay_seconds: float = 0.0  # between an instance's TASK_KILLING and its SIGTERM
    source: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)  # canonical document

    @property
    def version(self) -> str:
        """A digest of the canonical definition: two deployments of one text are one version."""
        text = json.dumps(self.source, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return dict(self.source)

    def launch_delay(self, failures: int) -> float:
        """Seconds to wait before launching again after `failures` consecutive failures (0: none)."""
        if failures <= 0:
            return 0.0
        delay = self.backoff_seconds * self.backoff_factor ** (failures - 1)
        return min(delay, self.max_launch_delay_seconds)


# ---- parsing -----------------------------------------------------------------------------------------------
_APP_FIELDS = {"id", "instances", "cpus", "mem", "disk", "cmd", "args", "container", "portDefinitions", "env",
               "labels", "healthChecks", "constraints", "upgradeStrategy", "backoffSeconds", "backoffFactor",
               "maxLaunchDelaySeconds", "user", "shutdownDelaySeconds"}


def _fail(path: str, message: str) -> AppError:
    return AppError(f"{path}: {message}" if path else message)


def _string_keys(value: Mapping[Any, Any], path: str) -> None:
    """A mapping read from YAML may have keys of other types (`1:`, `null:`); JSON's never do."""
    for key in value:
        if not isinstance(key, str):
            raise _fail(path, f"keys must be strings, got {key!r} (quote it in YAML)")


def _object(value: Any, path: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, "must be an object")
    _string_keys(value, path)
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise _fail(where, f"unknown field (known: {', '.join(sorted(allowed))})")
    return value


def _number(value: Any, path: str, *, minimum: float = 0.0, maximum: float = 1e9, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(path, f"must be a number, got {value!r}")
    if integer and value != int(value):
        raise _fail(path, f"must be a whole number, got {value!r}")
    if not minimum <= value <= maximum:
        raise _fail(path, f"must be between {minimum:g} and {maximum:g}, got {value!r}")
    return float(value)


def _text(value: Any, path: str, *, limit: int = 4096) -> str:
    if not isinstance(value, str):
        raise _fail(path, f"must be a string, got {value!r}")
    if len(value) > limit or "\0" in value:
        raise _fail(path, f"at most {limit} characters, no NUL")
    return value


def _list(value: Any, path: str, limit: int = 64) -> Sequence[Any]:
    if not isinstance(value, list):
        raise _fail(path, "must be a list")
    if len(value) > limit:
        raise _fail(path, f"at most {limit} entries")
    return value


def _pairs(value: Any, path: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise _fail(path, "must be an object of strings")
    _string_keys(value, path)
    return tuple((_text(k, f"{path}.{k}", limit=255), _text(v, f"{path}.{k}")) for k, v in sorted(value.items()))


def _port(value: Any, path: str, container: bool) -> PortSpec:
    allowed = {"containerPort", "hostPort", "name", "protocol"} if container else {"port", "name", "protocol"}
    data = _object(value, path, allowed)
    name = _text(data.get("name", ""), f"{path}.name", limit=63)
    if name and not _NAME.match(name):
        raise _fail(f"{path}.name", f"not a DNS label: {name!r}")
    protocol = data.get("protocol", "tcp")
    if protocol not in ("tcp", "udp"):
        raise _fail(f"{path}.protocol", f"must be tcp or udp, got {protocol!r}")
    if container:
        if "containerPort" not in data:
            raise _fail(f"{path}.containerPort", "required")
        container_port = int(_number(data["containerPort"], f"{path}.containerPort", minimum=1, maximum=65535,
                                     integer=True))
        host = int(_number(data.get("hostPort", 0), f"{path}.hostPort", maximum=65535, integer=True))
        return PortSpec(name=name, protocol=protocol, host_port=host, container_port=container_port)
    host = int(_number(data.get("port", 0), f"{path}.port", maximum=65535, integer=True))
    return PortSpec(name=name, protocol=protocol, host_port=host)


def _health_check(value: Any, path: str, ports: int) -> HealthCheckSpec:
    data = _object(value, path, {"protocol", "path", "portIndex", "command", "gracePeriodSeconds",
                                 "intervalSeconds", "timeoutSeconds", "maxConsecutiveFailures", "delaySeconds"})
    protocol = data.get("protocol", "HTTP")
    if protocol not in ("HTTP", "TCP", "COMMAND"):
        raise _fail(f"{path}.protocol", f"must be HTTP, TCP or COMMAND, got {protocol!r}")
    spec = HealthCheckSpec(
        protocol=protocol, path=_text(data.get("path", "/"), f"{path}.path", limit=1024),
        port_index=int(_number(data.get("portIndex", 0), f"{path}.portIndex", maximum=63, integer=True)),
        command=_text(data.get("command", ""), f"{path}.command"),
        grace_period_seconds=_number(data.get("gracePeriodSeconds", 300), f"{path}.gracePeriodSeconds",
                                     maximum=86400),
        interval_seconds=_number(data.get("intervalSeconds", 60), f"{path}.intervalSeconds", minimum=0.1,
                                 maximum=86400),
        timeout_seconds=_number(data.get("timeoutSeconds", 20), f"{path}.timeoutSeconds", minimum=0.1,
                                maximum=86400),
        max_consecutive_failures=int(_number(data.get("maxConsecutiveFailures", 3),
                                             f"{path}.maxConsecutiveFailures", minimum=1, maximum=1000,
                                             integer=True)),
        delay_seconds=_number(data.get("delaySeconds", 15), f"{path}.delaySeconds", maximum=86400))
    if spec.interval_seconds < spec.timeout_seconds:
        raise _fail(f"{path}.intervalSeconds", f"must not be below timeoutSeconds ({spec.timeout_seconds:g})")
    if spec.protocol == "COMMAND" and not spec.command:
        raise _fail(f"{path}.command", "a COMMAND health check needs a command")
    if spec.protocol != "COMMAND" and spec.port_index >= ports:
        raise _fail(f"{path}.portIndex", f"the app has {ports} port(s); index {spec.port_index} is not one")
    return spec


def _constraint(value: Any, path: str) -> Constraint:
    if not isinstance(value, list) or not 2 <= len(value) <= 3 or not all(isinstance(v, str) for v in value):
        raise _fail(path, f"must be [attribute, operator] or [attribute, operator, value], got {value!r}")
    attribute, operator = value[0], value[1]
    argument = value[2] if len(value) == 3 else ""
    if operator not in OPERATORS:
        raise _fail(f"{path}[1]", f"unknown operator {operator!r} (known: {', '.join(OPERATORS)})")
    if not attribute:
        raise _fail(f"{path}[0]", "an attribute is needed")
    if operator in ("LIKE", "UNLIKE", "MAX_PER", "CLUSTER") and not argument:
        raise _fail(f"{path}[2]", f"{operator} needs a value")
    if operator in ("LIKE", "UNLIKE"):
        try:
            re.compile(argument)
        except re.error as exc:
            raise _fail(f"{path}[2]", f"not a regular expression: {exc}") from None
    if operator == "MAX_PER" and (not argument.isdigit() or int(argument) < 1):
        raise _fail(f"{path}[2]", f"MAX_PER needs a whole number of at least 1, got {argument!r}")
    if operator == "GROUP_BY" and argument and (not argument.isdigit() or int(argument) < 1):
        raise _fail(f"{path}[2]", f"GROUP_BY's value is the number of groups, got {argument!r}")
    return Constraint(attribute, operator, argument)


def parse_app(data: Any) -> App:
    """An `App` from a parsed document; AppError naming the field when it is not one."""
    doc = _object(data, "", _APP_FIELDS)
    if "id" not in doc:
        raise _fail("id", "required")
    app_id = _text(doc["id"], "id", limit=63).strip("/")
    if not _ID.match(app_id):
        raise _fail("id", f"lower-case letters, digits and '-' (a DNS label), got {doc['id']!r}")
    instances = int(_number(doc.get("instances", 1), "instances", maximum=MAX_INSTANCES, integer=True))
    cpus = _number(doc.get("cpus", 1.0), "cpus", minimum=0.001, maximum=1024)
    mem = _number(doc.get("mem", 128.0), "mem", minimum=1, maximum=1 << 24)
    disk = _number(doc.get("disk", 0.0), "disk", maximum=1 << 30)
    cmd = _text(doc.get("cmd", ""), "cmd")
    args = tuple(_text(a, f"args[{i}]") for i, a in enumerate(_list(doc.get("args", []), "args", 256)))
    if cmd and args:
        raise _fail("args", "give cmd (a shell command) or args (an argv), not both")
    image, network, ports = "", "bridge", []
    if "container" in doc:
        container = _object(doc["container"], "container", {"image", "network", "portMappings"})
        if "image" not in container:
            raise _fail("container.image", "required")
        image = _text(container["image"], "container.image", limit=1024)
        network = container.get("network", "bridge")
        if network not in ("bridge", "host", "none"):
            raise _fail("container.network", f"must be bridge, host or none, got {network!r}")
        ports = [_port(p, f"container.portMappings[{i}]", True)
                 for i, p in enumerate(_list(container.get("portMappings", []), "container.portMappings"))]
        if ports and network != "bridge":
            raise _fail("container.portMappings", f"only the bridge network publishes ports (network is {network})")
        if "portDefinitions" in doc:
            raise _fail("portDefinitions", "a container app publishes its ports with container.portMappings")
    else:
        if not cmd and not args:
            raise _fail("cmd", "an app without a container needs cmd or args")
        ports = [_port(p, f"portDefinitions[{i}]", False)
                 for i, p in enumerate(_list(doc.get("portDefinitions", []), "portDefinitions"))]
    fixed = [(p.host_port, p.protocol) for p in ports if p.host_port]
    for i, p in enumerate(ports):
        if p.host_port and fixed.count((p.host_port, p.protocol)) > 1:
            where = "container.portMappings" if image else "portDefinitions"
            raise _fail(f"{where}[{i}]", f"host port {p.host_port}/{p.protocol} is used twice")
        if p.name and [q.name for q in ports].count(p.name) > 1:
            where = "container.portMappings" if image else "portDefinitions"
            raise _fail(f"{where}[{i}].name", f"port name {p.name!r} is used twice")
    constraints = tuple(_constraint(c, f"constraints[{i}]")
                        for i, c in enumerate(_list(doc.get("constraints", []), "constraints", 16)))
    if fixed and instances > 1 and not any(c.attribute == "hostname" and c.operator == "UNIQUE"
                                            for c in constraints):
        raise _fail("instances", "fixed host ports allow one instance per agent: add the constraint "
                                 '["hostname", "UNIQUE"] or use hostPort 0')
    checks = tuple(_health_check(h, f"healthChecks[{i}]", len(ports))
                   for i, h in enumerate(_list(doc.get("healthChecks", []), "healthChecks", 1)))
    upgrade_doc = _object(doc.get("upgradeStrategy", {}), "upgradeStrategy",
                          {"minimumHealthCapacity", "maximumOverCapacity"})
    upgrade = UpgradeStrategy(
        minimum_health_capacity=_number(upgrade_doc.get("minimumHealthCapacity", 1.0),
                                        "upgradeStrategy.minimumHealthCapacity", maximum=1.0),
        maximum_over_capacity=_number(upgrade_doc.get("maximumOverCapacity", 1.0),
                                      "upgradeStrategy.maximumOverCapacity", maximum=1.0))
    if upgrade.minimum_health_capacity == 1.0 and upgrade.maximum_over_capacity == 0.0 and instances > 0:
        raise _fail("upgradeStrategy", "minimumHealthCapacity 1 with maximumOverCapacity 0 leaves no room to "
                                       "replace any instance")
    backoff = _number(doc.get("backoffSeconds", 1.0), "backoffSeconds", maximum=3600)
    factor = _number(doc.get("backoffFactor", 1.15), "backoffFactor", minimum=1.0, maximum=100)
    max_delay = _number(doc.get("maxLaunchDelaySeconds", 300.0), "maxLaunchDelaySeconds", maximum=86400)
    shutdown_delay = _number(doc.get("shutdownDelaySeconds", 0.0), "shutdownDelaySeconds", maximum=MAX_SHUTDOWN_DELAY)
    return App(
        id=app_id, instances=instances, cpus=cpus, mem=mem, disk=disk, cmd=cmd, args=args, image=image,
        network=network, ports=tuple(ports), env=_pairs(doc.get("env", {}), "env"),
        labels=_pairs(doc.get("labels", {}), "labels"), health_checks=checks, constraints=constraints,
        upgrade=upgrade, backoff_seconds=backoff, backoff_factor=factor, max_launch_delay_seconds=max_delay,
        user=_text(doc.get("user", ""), "user", limit=255), shutdown_delay_seconds=shutdown_delay, source=json.loads(json.dumps(doc)))
