"""`tessera services` (the service framework's process) and `tessera service ...` (its operators' commands).

The framework (`tessera.sdk.services.controller`) runs as a standby-capable SDK framework named
`tessera-services`; operators hand it app definitions by writing its key/value state through the Operator
API (`WriteFrameworkState`, ACL action `configure`): `apps/<id>` holds the canonical definition, and the
framework's `status/<id>` is what `list` and `show` print.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

from tessera.control_plane.cli.definitions import FORMATS, DefinitionError, load_definition
from tessera.control_plane.cli.shared import fail
from tessera.control_plane.logsetup import log_options, setup_logging

PAGE = 1000


@click.command("services")
@click.option("--masters", default=None, metavar="HOST:PORT,...", help="masters to subscribe with")
@click.option("--poll", type=click.FloatRange(min=0.05, max=60), default=0.5, show_default=True,
              help="seconds between reconciliation rounds")
@click.option("--role", default="default", show_default=True, help="the role the framework subscribes with")
@click.option("--failover-timeout", type=click.FloatRange(min=1, max=604800), default=3600.0, show_default=True,
              help="seconds the master keeps the framework and its tasks when no instance is connected")
@click.option("--teardown-on-exit", is_flag=True,
              help="when stopped (SIGTERM, Ctrl-C) while active, end the framework: its tasks are killed and its "
                   "apps forgotten (`tessera up --demo` runs it so, to leave no task behind)")
@log_options("the service framework")
def services_command(masters: str | None, poll: float, role: str, failover_timeout: float,
                     teardown_on_exit: bool, log_level: str, log_format: str) -> None:
    """Run the service framework (several may run: one is active, the others stand by)."""
    from tessera.control_plane.cli.run import _root_masters, _security
    from tessera.sdk import FrameworkInfo, SchedulerDriver, TesseraError
    from tessera.sdk.grpc_transport import GrpcTransport
    from tessera.sdk.services.controller import FRAMEWORK_NAME, ServiceController

    setup_logging(log_level, log_format, "tessera-services")
    security = _security()
    chosen = masters or _root_masters()
    controller = ServiceController(poll_seconds=poll)
    transport = GrpcTransport(credentials=security.credentials, token=security.token)
    driver = SchedulerDriver(controller, FrameworkInfo(name=FRAMEWORK_NAME, roles=(role,),
                                                       failover_timeout=failover_timeout),
                             chosen.split(",") if chosen else None, transport=transport, standby=True)
    done = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    controller.start_polling()
    driver.start()
    while not done.wait(0.2) and not driver.join(0):
        pass
    controller.stop_polling()
    if done.is_set() and teardown_on_exit and driver.framework_id and not driver.is_standby:
        try:
            driver.teardown()
            click.echo("tessera services: stopped; the framework is torn down (its tasks are killed)")
        except TesseraError as exc:
            click.echo(f"tessera services: teardown failed: {exc}", err=True)
    driver.stop()
    driver.join(10)


# ---- operators' commands ---------------------------------------------------------------------------------
@click.group("service")
def service() -> None:
    """Services kept by `tessera services`: apply, list, show, scale, restart, remove."""


def _framework_id(c: Any) -> str:
    from tessera.sdk.services.controller import FRAMEWORK_NAME
    from tessera.v1 import common_pb2, operator_pb2

    resp = c.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True))
    for fw in resp.frameworks:
        if fw.info.name == FRAMEWORK_NAME and fw.state != common_pb2.FRAMEWORK_REMOVED:
            return str(fw.framework_id)
    fail(f"no {FRAMEWORK_NAME} framework is registered: start `tessera services` first", 1)


def _read(c: Any, fid: str, prefix: str) -> dict[str, tuple[str, int]]:
    from tessera.v1 import operator_pb2

    out: dict[str, tuple[str, int]] = {}
    start_after = ""
    while True:
        resp = c.call(lambda s: s.GetFrameworkState, operator_pb2.GetFrameworkStateRequest(
            framework_id=fid, prefix=prefix, start_after=start_after, limit=PAGE, consistent=True))
        for e in resp.entries:
            out[e.key] = (e.value, e.version)
        if not resp.more or not resp.entries:
            return out
        start_after = resp.entries[-1].key


def _write(c: Any, fid: str, key: str, value: str | None, version: int) -> int:
    from tessera.v1 import operator_pb2

    write = operator_pb2.FrameworkStateWrite(key=key, value=value or "", delete=value is None,
                                             expected_version=version)
    resp = c.call(lambda s: s.WriteFrameworkState,
                  operator_pb2.WriteFrameworkStateRequest(framework_id=fid, writes=[write]))
    return int(resp.versions[0])


def _parse(doc: Any, where: Callable[[str], str] = lambda path: "") -> Any:
    """The app in `doc`, or exit 2 with the field's path (and, from a YAML file, where it was written)."""
    from tessera.sdk.services.app import AppError, parse_app

    try:
        return parse_app(doc)
    except AppError as exc:
        found = where(str(exc).split(": ", 1)[0])
        fail(f"refused: {exc}" + (f" ({found})" if found else ""), 2)


def _current(c: Any, fid: str, app_id: str) -> tuple[dict[str, Any], int]:
    found = _read(c, fid, f"apps/{app_id}")
    if f"apps/{app_id}" not in found:
        fail(f"no service {app_id!r}", 1)
    value, version = found[f"apps/{app_id}"]
    return json.loads(value), version


def _store(c: Any, fid: str, doc: dict[str, Any], version: int) -> dict[str, Any]:
    app = _parse(doc)
    _write(c, fid, f"apps/{app.id}", json.dumps(app.to_json(), sort_keys=True), version)
    return {"id": app.id, "version": app.version, "instances": app.instances}


def _update(c: Any, app_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """APP_ID's stored definition, changed by `change`, checked and stored again (compare-and-set on the
    version read: a concurrent change makes this one fail rather than be lost)."""
    fid = _framework_id(c)
    doc, version = _current(c, fid, app_id)
    return _store(c, fid, change(doc), version)


def _done(c: Any, result: dict[str, Any], text: str) -> None:
    if c.as_json:
        c.emit(result)
    else:
        click.echo(text)


@service.command("apply")
@click.argument("file", type=click.File("r"))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="the file's format [default: by its extension (.json, .yaml, .yml), else JSON when it starts "
                   "with '{', else YAML]")
@click.pass_obj
def apply(c: Any, file: Any, fmt: str | None) -> None:
    """Create or update a service from an app definition (JSON or YAML; `-` reads stdin)."""
    name = "stdin" if file.name == "<stdin>" else file.name
    try:
        definition = load_definition(file.read(), name, fmt)
    except DefinitionError as exc:
        fail(f"refused: {name}: {exc}", 2)
    except UnicodeDecodeError as exc:
        fail(f"refused: {name}: not UTF-8 text: {exc.reason} at byte {exc.start}", 2)
    doc = definition.data
    app = _parse(doc, lambda path: f"{name}, {definition.where(path)}" if definition.where(path) else "")
    fid = _framework_id(c)
    result = _store(c, fid, doc, -1)
    _done(c, result, f"service {app.id}: version {app.version}, {app.instances} instance(s)")


@service.command("scale")
@click.argument("app_id")
@click.argument("instances", type=click.IntRange(min=0))
@click.pass_obj
def scale(c: Any, app_id: str, instances: int) -> None:
    """Set the number of instances of APP_ID."""
    result = _update(c, app_id, lambda doc: {**doc, "instances": instances})
    _done(c, result, f"service {app_id}: {instances} instance(s)")


@service.command("restart")
@click.argument("app_id")
@click.pass_obj
def restart(c: Any, app_id: str) -> None:
    """Replace every instance of APP_ID (a rolling deployment of a new version: label tessera.restarted)."""
    import time

    restarted = f"{time.time():.3f}"
    result = _update(c, app_id, lambda doc: {**doc, "labels": {**doc.get("labels", {}), "tessera.restarted": restarted}})
    _done(c, result, f"service {app_id}: restarting as version {result['version']}")


@service.command("remove")
@click.argument("app_id")
@click.pass_obj
def remove(c: Any, app_id: str) -> None:
    """Remove APP_ID: its instances are killed."""
    fid = _framework_id(c)
    _, version = _current(c, fid, app_id)
    _write(c, fid, f"apps/{app_id}", None, version)
    _done(c, {"id": app_id, "removed": True}, f"service {app_id}: removed")


def _statuses(c: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    fid = _framework_id(c)
    apps = {k[len("apps/"):]: json.loads(v) for k, (v, _) in _read(c, fid, "apps/").items()}
    status = {k[len("status/"):]: json.loads(v) for k, (v, _) in _read(c, fid, "status/").items()}
    return apps, status


@service.command("list")
@click.pass_obj
def list_services(c: Any) -> None:
    """Each service: instances wanted, running, healthy, and its deployment."""
    from tessera.control_plane.core.service_rows import service_rows

    rows = service_rows(*_statuses(c))
    if c.as_json:
        c.emit({"services": rows})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "wanted", "running", "healthy", "version", "deployment")
    for r in rows:
        note = r["reason"] or r["unplaced"]
        table.add_row(r["id"], str(r["wanted"]), str(r["running"]), str(r["healthy"]), r["version"],
                      r["deployment"] + (f" ({note})" if note else ""))
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@service.command("show")
@click.argument("app_id")
@click.pass_obj
def show(c: Any, app_id: str) -> None:
    """APP_ID's definition, tasks (where, state, health) and deployment history."""
    apps, status = _statuses(c)
    if app_id not in apps and app_id not in status:
        fail(f"no service {app_id!r}", 1)
    st = status.get(app_id, {})
    result = {"id": app_id, "definition": apps.get(app_id), "status": st}
    if c.as_json:
        c.emit(result)
        return
    click.echo(f"service {app_id}: wanted {st.get('wanted', '?')}, running {st.get('running', 0)}, "
               f"healthy {st.get('healthy', 0)}, version {st.get('version', '?')}")
    if st.get("unplaced"):
        click.echo(f"  waiting: {st.get('waiting', 0)} instance(s): {st['unplaced']}")
    for inst in st.get("instances", []):
        health = {True: "healthy", False: "unhealthy", None: "-"}[inst.get("healthy")]
        click.echo(f"  {inst['task_id']}  {inst.get('hostname') or inst.get('agent_id')}  {inst['state']}  "
                   f"{health}{'  (killing)' if inst.get('killing') else ''}")
    if st.get("instances_omitted"):
        click.echo(f"  ... and {st['instances_omitted']} more instance(s), not recorded: the status record keeps "
                   "what fits in one framework-state value")
    for dep in [st.get("deployment")] + list(st.get("history", [])):
        if dep:
            click.echo(f"  deployment {dep['version']}: {dep['state']}, {dep['steps']} step(s)"
                       f"{': ' + dep['reason'] if dep.get('reason') else ''}")
