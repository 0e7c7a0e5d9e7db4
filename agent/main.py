"""`run_agent(config)`: start one agent process and serve until stopped.

Order of work: set the umask to 077 (the checkpoint, the lock, the supervisors' files and every run
directory are the agent's alone; tasks get 022 from their supervisor), check the configuration (a bad
flag prints one line naming it and returns 2), make the data dir and the work dir passable but not
listable by others (0711: a task's user must reach its own sandbox), take the data dir's lock (two agents on one data dir would fight over the same tasks), pick the isolator, open
the checkpoint, start the file service (docs/files.md; SIGHUP reloads its `--acl`), recover tasks, connect
to the masters. SIGTERM and SIGINT stop the agent but NOT its
tasks: they run on under their supervisors and the next agent started on this data dir finds them.

Under systemd (`Type=notify`, `NOTIFY_SOCKET`): `READY=1` once the tasks are recovered from the
checkpoint and the master link is started (not once registered: an agent whose masters are all down
still starts and keeps its tasks), then a `STATUS=` line whenever its registration changes, `STOPPING=1`
at a stop. With `--metrics`, the same port answers `GET /health` (`health_response`): 200 while the agent
serves, 503 while it starts or stops, with whether it is registered with a leader.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import threading
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from tessera.agent.config import AgentConfig, ConfigError, ResolvedConfig, resolve
from tessera.control_plane.core.resources import EMPTY, Resources
from tessera.control_plane.core.values import ContainerSupport
from tessera.control_plane.logsetup import setup_logging
from tessera.control_plane.systemd import Notifier

if TYPE_CHECKING:
    from tessera.agent.executor.containers import ContainerRuntime
    from tessera.agent.executor.images import ImageStore
    from tessera.agent.files.catalog import SandboxCatalog
    from tessera.agent.files.server import FileServer

log = logging.getLogger("tessera.agent")

LOCK_FILE = "agent.lock"
CHECKPOINT_FILE = "agent.db"


def _lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold an exclusive lock on the data dir for the life of the process."""
    handle = open(data_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ConfigError(f"--data-dir: {data_dir} is in use by another agent (pid {holder})") from exc
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _secure_dirs(data_dir: Path, work_dir: Path) -> None:
    """Files an older agent made with the default umask (its checkpoint, lock and launch files) become the
    agent's alone (0600); the work dir, and the data dir when the work dir is inside it, become 0711
    (passable, not listable)."""
    from tessera.agent.executor.sandbox import RUN_DIR_MODE, secure_work_dir

    try:
        for entry in data_dir.iterdir():
            if entry.is_file() and not entry.is_symlink() and (entry.name.startswith(CHECKPOINT_FILE)
                                                                or entry.name == LOCK_FILE):
                entry.chmod(0o600)
        secure_work_dir(work_dir)
        if data_dir in work_dir.parents:
            data_dir.chmod(RUN_DIR_MODE)
        for launch in work_dir.glob("*/*/launch.json"):  # written 0644 by an older agent: the task's secrets
            if not launch.is_symlink():
                launch.chmod(0o600)
    except OSError as exc:
        raise ConfigError(f"--data-dir: cannot set the modes of {data_dir} ({exc.strerror or exc})") from exc


def _file_service(config: AgentConfig, resolved: ResolvedConfig) -> tuple[SandboxCatalog, FileServer | None, str]:
    """The catalog the agent keeps for its file service, the service (None when off or unable) and the
    address its registration announces (docs/files.md). Raises ConfigError naming the flag."""
    from tessera.agent.files.catalog import SandboxCatalog
    from tessera.agent.files.server import FilesUnavailable, start_file_server
    from tessera.control_plane.api.auth import AclFileError, load_acl
    from tessera.control_plane.tls import TlsConfigError

    catalog = SandboxCatalog()
    catalog.agent = resolved.hostname
    try:
        acl = load_acl(config.acl_path) if config.acl_path is not None else None
        server, address = start_file_server(config.files_address, catalog, hostname=resolved.hostname,
                                            tls_dir=config.tls_dir, acl=acl)
    except (AclFileError, FilesUnavailable, TlsConfigError) as exc:
        raise ConfigError(str(exc)) from exc
    return catalog, server, address


def health_response(phase: str, registered: bool, hostname: str) -> tuple[int, dict[str, Any]]:
    """The agent's `GET /health` (pure): 200 while it serves (`phase` "serving"), 503 while it starts or
    stops. Registered or not does not change the code: an agent cut off from its masters still serves its
    tasks (and retries); the body says so."""
    return (200 if phase == "serving" else 503), {"status": phase, "hostname": hostname, "registered": registered}


def status_line(registered: bool) -> str:
    """systemd's STATUS= for the agent (pure). No agent id: `systemctl status` is readable by every local
    user, tasks' users included, and the id is what an agent presents to take its place back (the metrics
    leave it out for the same reason)."""
    return "registered with the leader" if registered else "not registered; connecting to the masters"


def _report_status(agent: Any, notifier: Notifier, stopped: threading.Event) -> None:
    """Every half second until `stopped`: the registration as systemd's status (sent only on a change)."""
    while not stopped.wait(0.5):
        notifier.status(status_line(agent.registered))


def _run_emulated(config: AgentConfig, stop: threading.Event | None) -> int:
    """One emulated agent (benchmarks): registers and heartbeats, reports tasks without running them."""
    import asyncio

    from tessera.agent.config import ConfigError as _ConfigError
    from tessera.agent.emulated import EmulatedConfig, run_emulated

    try:
        emulated = EmulatedConfig.from_agent_config(config)  # checks --masters; run_emulated the rest
    except _ConfigError as exc:
        print(f"tessera agent: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, done.set)
        if stop is not None:
            threading.Thread(target=lambda: (stop.wait(), loop.call_soon_threadsafe(done.set)),
                             daemon=True).start()
        await run_emulated(emulated, done)

    try:
        asyncio.run(main())
    except _ConfigError as exc:
        print(f"tessera agent: {exc}", file=sys.stderr)
        return 2
    return 0


def run_agent(config: AgentConfig, *, stop: threading.Event | None = None) -> int:
    """Run an agent until SIGTERM/SIGINT (or `stop` is set, or the master shuts it down).

    Returns the process exit code: 0 after a stop, 2 on a configuration error. Runs with umask 077 (the
    caller's is put back on return, for agents run inside another process)."""
    previous = os.umask(0o077)
    try:
        return _run_agent(config, stop)
    finally:
        os.umask(previous)


def _containers(config: AgentConfig, resolved: ResolvedConfig,
                isolator: str) -> tuple[ContainerSupport, ContainerRuntime | None, ImageStore | None]:
    """This agent's container support (docs/containers.md): the runtime and the image store, or why not.
    Logged either way; a machine that cannot run containers still runs command tasks."""
    from tessera.agent.executor import containers
    from tessera.agent.executor.images import ImageStore

    if config.containers == "off":
        support = ContainerSupport(unavailable="turned off (--containers off)")
        log.info("containers: %s", support.unavailable)
        return support, None, None
    store_dir = config.image_store_dir or resolved.data_dir / "images"
    try:
        store: ImageStore | None = ImageStore(store_dir, insecure_registries=config.insecure_registries,
                                              max_bytes=int(config.image_store_max_mib * 1024 * 1024))
        why = store.available()
    except OSError as exc:
        store, why = None, f"cannot open the image store {store_dir}: {exc.strerror or exc}"
    network = {"state_dir": str(resolved.data_dir / "cni"), "bridge": config.cni_bridge, "subnet": config.cni_subnet,
               "plugin_dirs": config.cni_plugin_dirs}
    found = containers.detect(resolved.data_dir, runc=config.runc, network=network,
                              volume_paths=config.allowed_volume_paths, isolation_kind=isolator)
    if isinstance(found, str) or why:
        support = ContainerSupport(unavailable=found if isinstance(found, str) else str(why))
        log.warning("containers: this agent runs none: %s (command tasks run as usual)", support.unavailable)
        return support, None, None
    support = found.support()
    if found.network_config is None:
        log.warning("containers: %s, host and none networks only: %s", found.version, found.network_unavailable)
    else:
        log.info("containers: %s, %s, images in %s", found.version, support.network, store_dir)
    return support, found, store


def _run_agent(config: AgentConfig, stop: threading.Event | None) -> int:
    if not logging.getLogger().handlers:
        setup_logging("INFO", "text", "agent")
    if config.emulated:
        return _run_emulated(config, stop)
    notifier = Notifier()  # out of the environment before the fork server and the tasks start
    from tessera.agent.checkpoint import Checkpoint
    from tessera.agent.executor.isolation import detect_isolator
    from tessera.agent.executor.launcher import ProcessLauncher
    from tessera.agent.runtime.agent import Agent
    from tessera.control_plane.api.span_reporter import OperatorSpanStore
    from tessera.control_plane.tracing import setup_tracing

    try:
        resolved = resolve(config)
        _secure_dirs(resolved.data_dir, resolved.work_dir)
        lock = _lock_data_dir(resolved.data_dir)
        isolator = detect_isolator(config.isolation, config.cgroups_root)
    except ConfigError as exc:
        print(f"tessera agent: {exc}", file=sys.stderr)
        return 2
    try:
        checkpoint = Checkpoint.open(resolved.data_dir / CHECKPOINT_FILE)
    except Exception as exc:  # noqa: BLE001 - a corrupt or unreadable checkpoint is a startup error
        print(f"tessera agent: --data-dir: cannot open {resolved.data_dir / CHECKPOINT_FILE}: {exc}",
              file=sys.stderr)
        lock.close()
        return 2
    log.info("agent on %s: resources %s, attributes %s, isolation %s, supervisors started by %s, masters %s",
             resolved.hostname, resolved.resources, dict(resolved.attributes), isolator.describe(),
             config.supervisor_start, ",".join(resolved.masters))
    try:
        catalog, files, files_address = _file_service(config, resolved)
    except ConfigError as exc:
        print(f"tessera agent: {exc}", file=sys.stderr)
        checkpoint.close()
        lock.close()
        return 2
    support, runtime, images = _containers(config, resolved, isolator.name)
    launcher = ProcessLauncher(resolved.work_dir, isolator, fork_server=config.supervisor_start == "fork-server",
                               containers=runtime, log_rotation=resolved.log_rotation, fetcher=resolved.fetcher)
    launcher.warm_up()  # the supervisor fork server, before the first task needs it
    # the agent's spans (agent.launch_task, task.run) go to the leader, stored next to its event log
    tracer_provider = setup_tracing("tessera-agent", span_store=OperatorSpanStore(resolved.masters, security=resolved.security),
                                    instance_id=resolved.hostname, set_global=False)
    agent = Agent(resolved, checkpoint, launcher, isolator_name=isolator.name, images=images, containers=support,
                  tracer_provider=tracer_provider, catalog=catalog, files_address=files_address)

    phase = "starting"
    status_stop = threading.Event()

    def on_ready() -> None:
        nonlocal phase
        phase = "serving"
        notifier.ready(status_line(agent.registered))
        if notifier.enabled:
            threading.Thread(target=_report_status, args=(agent, notifier, status_stop), name="agent-sd-status",
                             daemon=True).start()

    agent.on_ready = on_ready
    metrics = None
    if config.metrics_address:
        from tessera.agent.metrics import AgentMetrics

        def scalars(res: Resources) -> dict[str, float]:
            return {k: res.scalar(k) for k in ("cpus", "mem", "disk", "gpus")}

        def used() -> dict[str, float]:
            total = EMPTY
            for task in list(agent.tasks):
                if not task.terminal:
                    total = total + task.info.resources.flatten()
            return scalars(total)

        try:
            metrics = AgentMetrics(
                total=lambda: scalars(resolved.resources.flatten()), used=used,
                tasks_by_state=lambda: Counter(t.state for t in list(agent.tasks)),
                status_update_retries=lambda: agent.updates.retries, isolator=isolator.name,
                hostname=resolved.hostname,
                pending_status_updates=lambda: len(agent.updates), connected=lambda: agent.registered,
                address=config.metrics_address)
            metrics.add_probe("/health", lambda: health_response(
                phase, agent.registered, resolved.hostname))
            metrics.start()
        except (OSError, ValueError) as exc:
            print(f"tessera agent: --metrics: cannot serve on {config.metrics_address} ({exc})", file=sys.stderr)
            if files is not None:
                files.stop(0)
            checkpoint.close()
            lock.close()
            return 2

    previous: dict[signal.Signals, object] = {}
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum: int, frame: FrameType | None) -> None:
            agent.stop(f"signal {signal.Signals(signum).name}; tasks keep running")

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_signal)
        if files is not None and config.acl_path is not None:
            from tessera.control_plane.api.auth import reload_acl

            acl_path, guard = config.acl_path, files.guard

            def on_hup(signum: int, frame: FrameType | None) -> None:
                reload_acl(guard, acl_path)  # the file service's ACL

            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    watcher: threading.Thread | None = None
    if stop is not None:
        def watch() -> None:
            stop.wait()
            agent.stop("stop event set")

        watcher = threading.Thread(target=watch, name="agent-stop", daemon=True)
        watcher.start()
    try:
        return agent.run()
    finally:
        phase = "stopping"
        status_stop.set()
        notifier.stopping()
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        if files is not None:
            # first: a follow answered by a stopping agent would get heartbeats for a task it no longer
            # watches; ended now, the client re-dials the agent that comes back
            files.stop()
        try:
            tracer_provider.shutdown()  # sends the spans still batched (bounded by the store's timeout)
        except Exception as exc:  # noqa: BLE001 - tracing never fails the agent
            log.debug("tracing shutdown: %s", exc)
        if metrics is not None:
            metrics.stop()
        checkpoint.close()
        lock.close()
