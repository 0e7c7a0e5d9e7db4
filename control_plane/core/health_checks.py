"""What the master checks of a task's health check before it records the launch (docs/health-checks.md).

Pure: the task in, `InvalidRequest` (INVALID_ARGUMENT) naming the field out. Nothing is recorded for a
refused launch, and the agent never sees it; the agent checks a task from elsewhere again with the same
function (`agent.core.tasks.validate_task`).

Rules (Mesos' HealthCheck, with the timing rule Mesos lacks):
- `type` is COMMAND, HTTP or TCP, and exactly the matching one of `command`, `http`, `tcp` is set.
- Times are finite seconds: `delay_seconds` and `grace_period_seconds` >= 0, `interval_seconds` and
  `timeout_seconds` > 0, each at most `MAX_CHECK_SECONDS`, and `interval_seconds` >= `timeout_seconds`:
  checks start an interval apart, so one check is over (passed, failed or timed out) before the next.
  `consecutive_failures` is 1..`MAX_CONSECUTIVE_FAILURES`.
- COMMAND: a command like a task's (a shell string or argv, environment, a working directory inside the
  sandbox); it runs as the task's user, so a `user` other than the task's is refused.
- HTTP: `path` starts with "/" (empty means "/") and holds no whitespace or control characters;
  `scheme` is http; `statuses`, when given, are HTTP status codes (100..599), at most `MAX_STATUSES`.
- HTTP and TCP `port` is 1..65535 and one the task can be reached on from its agent: for a command task
  (and a container on the host network) one of the task's `ports` resources, the checked process must be
  listening on it on 127.0.0.1; for a container on the bridge network a container port it maps when it
  maps any (the check goes to the container's own address), any port when it maps none; a container on
  the none network has only its loopback, so only a COMMAND check (run inside it) can reach it.
"""

from __future__ import annotations

from tessera.control_plane.core.containers import network_of
from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.state import check_command_info, check_number, check_working_dir
from tessera.control_plane.core.values import HealthCheck, HealthCheckType, HttpCheck, TaskInfo, TcpCheck

__all__ = [
    "MAX_CHECK_SECONDS",
    "MAX_CONSECUTIVE_FAILURES",
    "MAX_PATH_LENGTH",
    "MAX_STATUSES",
    "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED",
    "REASON_TASK_UNHEALTHY",
    "check_health_check",
    "check_health_check_form",
    "healthy_status_code",
    "http_path",
]

# The reasons of the statuses health checks cause (TaskStatus.reason, Mesos' vocabulary). Mesos sets no
# reason on the end of a task its executor killed for failing its check (only `healthy: false`); Tessera
# says so with REASON_TASK_UNHEALTHY.
REASON_TASK_HEALTH_CHECK_STATUS_UPDATED = "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED"
REASON_TASK_UNHEALTHY = "REASON_TASK_UNHEALTHY"

MAX_CHECK_SECONDS = 86_400.0  # one day, for every time of a check
MAX_CONSECUTIVE_FAILURES = 1_000
MAX_PATH_LENGTH = 1_024
MAX_STATUSES = 64

_FIELD_OF_TYPE = {HealthCheckType.COMMAND: "command", HealthCheckType.HTTP: "http", HealthCheckType.TCP: "tcp"}


def http_path(check: HttpCheck) -> str:
    """The path an HTTP check asks for: an empty one (the wire's default) is "/"."""
    return check.path or "/"


def healthy_status_code(check: HttpCheck, code: int) -> bool:
    """Whether an HTTP check's answer `code` counts as healthy: one of its `statuses`, else 200..399."""
    return code in check.statuses if check.statuses else 200 <= code <= 399


def _port(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidRequest(f"{what}: must be a port number from 1 to 65535, got {value!r}")
    return value


def check_health_check_form(check: object, what: str) -> HealthCheck:
    """The checks of a health check on its own (type, times, command, path, port numbers); `what` names
    it (e.g. "task web-1.health_check"). Raises InvalidRequest."""
    if not isinstance(check, HealthCheck):
        raise InvalidRequest(f"{what}: must be a HealthCheck")
    if not isinstance(check.type, HealthCheckType) or check.type is HealthCheckType.TYPE_UNKNOWN:
        raise InvalidRequest(f"{what}.type: must be COMMAND, HTTP or TCP, got {check.type!r}")
    wanted = _FIELD_OF_TYPE[check.type]
    for name in _FIELD_OF_TYPE.values():
        given = getattr(check, name) is not None
        if name == wanted and not given:
            raise InvalidRequest(f"{what}.{name}: a {check.type.name} check needs it")
        if name != wanted and given:
            raise InvalidRequest(f"{what}.{name}: a {check.type.name} check has no {name} (one type per check)")
    check_number(check.delay_seconds, f"{what}.delay_seconds", maximum=MAX_CHECK_SECONDS)
    check_number(check.grace_period_seconds, f"{what}.grace_period_seconds", maximum=MAX_CHECK_SECONDS)
    interval = check_number(check.interval_seconds, f"{what}.interval_seconds", positive=True,
                            maximum=MAX_CHECK_SECONDS)
    timeout = check_number(check.timeout_seconds, f"{what}.timeout_seconds", positive=True, maximum=MAX_CHECK_SECONDS)
    if interval < timeout:
        raise InvalidRequest(f"{what}.interval_seconds: {interval:g} is below timeout_seconds {timeout:g}; checks "
                             "start an interval apart, so a check may last at most the interval")
    failures = check.consecutive_failures
    if isinstance(failures, bool) or not isinstance(failures, int) or not 1 <= failures <= MAX_CONSECUTIVE_FAILURES:
        raise InvalidRequest(f"{what}.consecutive_failures: must be from 1 to {MAX_CONSECUTIVE_FAILURES}, "
                             f"got {failures!r}")
    if check.command is not None:
        _check_command(check.command, f"{what}.command")
    if check.http is not None:
        _check_http(check.http, f"{what}.http")
    if check.tcp is not None:
        if not isinstance(check.tcp, TcpCheck):
            raise InvalidRequest(f"{what}.tcp: must be a TcpCheck")
        _port(check.tcp.port, f"{what}.tcp.port")
    return check


def _check_command(command: object, what: str) -> None:
    command = check_command_info(command, what)
    check_working_dir(command.working_dir, f"{what}.working_dir")


def _check_http(http: object, what: str) -> None:
    if not isinstance(http, HttpCheck):
        raise InvalidRequest(f"{what}: must be an HttpCheck")
    _port(http.port, f"{what}.port")
    path = http.path
    if not isinstance(path, str) or len(path) > MAX_PATH_LENGTH:
        raise InvalidRequest(f"{what}.path: must be a string of at most {MAX_PATH_LENGTH} characters")
    if path and (not path.startswith("/") or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in path)):
        raise InvalidRequest(f"{what}.path: must start with '/' and hold no spaces or control characters, "
                             f"got {path!r}")
    if http.scheme not in ("", "http"):
        raise InvalidRequest(f"{what}.scheme: only http is supported, got {http.scheme!r}")
    statuses = http.statuses
    if not isinstance(statuses, tuple) or len(statuses) > MAX_STATUSES:
        raise InvalidRequest(f"{what}.statuses: at most {MAX_STATUSES} status codes")
    for code in statuses:
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
            raise InvalidRequest(f"{what}.statuses: {code!r} is not an HTTP status code (100-599)")


def check_health_check(task: TaskInfo, what: str) -> None:
    """Refuse (InvalidRequest) a health check the agent could not run against `task` as asked; a task
    without one passes. `what` names the task (e.g. "task web-1")."""
    check = task.health_check
    if check is None:
        return
    where = f"{what}.health_check"
    check = check_health_check_form(check, where)
    if check.command is not None and check.command.user not in ("", task.command.user):
        raise InvalidRequest(f"{where}.command.user: a check runs as the task's user "
                             f"({task.command.user or 'the agent default'}), not {check.command.user!r}")
    if check.http is not None:
        _check_port_reachable(task, check.http.port, f"{where}.http.port")
    if check.tcp is not None:
        _check_port_reachable(task, check.tcp.port, f"{where}.tcp.port")


def _check_port_reachable(task: TaskInfo, port: int, what: str) -> None:
    container = task.container
    network = network_of(container) if container is not None else "host"
    if network == "none":
        raise InvalidRequest(f"{what}: a container on the none network has only its own loopback; "
                             "check it with a COMMAND check")
    if network == "bridge":
        assert container is not None
        mapped = sorted({m.container_port for m in container.port_mappings if (m.protocol or "tcp") == "tcp"})
        if container.port_mappings and port not in mapped:
            raise InvalidRequest(f"{what}: {port} is not a container port this task maps over tcp "
                                 f"({', '.join(map(str, mapped)) or 'none'}); the check goes to the container's "
                                 "address and that port")
        return
    ports = [interval for (name, _role), intervals in task.resources.ranges if name == "ports"
             for interval in intervals]
    if not any(b <= port <= e for b, e in ports):
        held = ", ".join(f"{b}-{e}" if b != e else str(b) for b, e in ports) or "none"
        raise InvalidRequest(f"{what}: {port} is not one of the task's ports resources ({held}); the check goes to "
                             "127.0.0.1 on the agent, where the task must listen on a port it holds")
