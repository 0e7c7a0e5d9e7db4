"""`tessera agent`: the click command that runs one agent (registered by control_plane/cli/main.py).

Flags mirror `AgentConfig`; a bad one ends with one line on stderr and exit code 2 (from `run_agent`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tessera.agent.config import CONTAINER_CHOICES, ISOLATION_CHOICES, SUPERVISOR_START_CHOICES, AgentConfig
from tessera.control_plane.logsetup import log_options, setup_logging


@click.command("agent")
@click.option("--masters", envvar="TESSERA_MASTERS", default="127.0.0.1:5050", show_default=True,
              help="Comma-separated gRPC addresses of the masters.")
@click.option("--data-dir", type=click.Path(path_type=Path), required=True,
              help="Where agent.db (the checkpoint) and, by default, the sandboxes live.")
@click.option("--resources", default="", help="Override detected resources: 'cpus:4;mem:8192;ports:[31000-32000]'.")
@click.option("--attributes", default="", help="Attributes offered with the resources: 'rack:r1;zone:a'.")
@click.option("--hostname", default="", help="Hostname reported to the master (default: this machine's).")
@click.option("--heartbeat-interval", type=float, default=1.0, show_default=True,
              help="Seconds between heartbeats until the master sets its own interval.")
@click.option("--isolation", type=click.Choice(ISOLATION_CHOICES), default="auto", show_default=True,
              help="How tasks are isolated: cgroups v2, v1, or rlimits with a memory watchdog.")
@click.option("--supervisor-start", type=click.Choice(SUPERVISOR_START_CHOICES), default="fork-server",
              show_default=True,
              help="How each task's supervisor starts: forked by a long-lived fork server, or as a fresh interpreter.")
@click.option("--batch-messages/--no-batch-messages", default=True, show_default=True,
              help="Send the status updates of one loop turn in one message and take batched commands "
                   "(BATCHED_MESSAGES); turn off only for a master without the capability.")
@click.option("--work-dir", type=click.Path(path_type=Path), default=None,
              help="Directory of task sandboxes (default: DATA_DIR/sandboxes).")
@click.option("--sandbox-gc-delay", envvar="TESSERA_SANDBOX_GC_DELAY", type=click.FloatRange(min=0), default=3600.0,
              show_default=True, help="Seconds after a task ended before its sandbox is removed (0: at once).")
@click.option("--sandbox-gc-max-mib", envvar="TESSERA_SANDBOX_GC_MAX_MIB", type=click.FloatRange(min=0),
              default=10240.0, show_default=True,
              help="Remove finished sandboxes sooner, oldest first, while together they hold more (0: no cap).")
@click.option("--metrics", "metrics_address", default=None,
              help="HOST:PORT to serve Prometheus /metrics on (off when not given).")
@click.option("--tls-dir", "agent_tls_dir", envvar="TESSERA_AGENT_TLS_DIR", default=None,
              type=click.Path(path_type=Path), metavar="DIR",
              help="mTLS: DIR holds ca.pem, cert.pem, key.pem of an agent certificate (or TESSERA_AGENT_TLS_DIR).")
@click.option("--containers", type=click.Choice(CONTAINER_CHOICES), default="auto", show_default=True,
              help="Run container tasks (runc, images, CNI) when this machine can; 'off' never.")
@click.option("--runc", default="runc", show_default=True, help="The OCI runtime binary.")
@click.option("--image-store", "image_store_dir", type=click.Path(path_type=Path), default=None,
              help="Where pulled images are kept (default: DATA_DIR/images).")
@click.option("--image-store-max-mib", type=float, default=2048.0, show_default=True,
              help="Remove unused images, least recently used first, while the store holds more.")
@click.option("--insecure-registry", "insecure_registries", multiple=True, metavar="HOST[:PORT]",
              help="A registry reached over plain HTTP (loopback registries always are). Repeat.")
@click.option("--cni-bridge", default="tessera0", show_default=True, help="The bridge of container networks.")
@click.option("--cni-subnet", default="10.213.64.0/24", show_default=True,
              help="The subnet containers on the bridge take addresses from.")
@click.option("--cni-plugin-dir", "cni_plugin_dirs", multiple=True, metavar="DIR",
              help="Where the CNI plugins are (default: /usr/lib/cni, /opt/cni/bin). Repeat.")
@click.option("--allowed-volume-paths", default="", metavar="DIR,...",
              help="Host directories container volumes may mount (none by default).")
@click.option("--log-max-mib", type=float, default=10.0, show_default=True,
              help="Rotate each task's stdout and stderr at this size (MiB; at least 4 KiB).")
@click.option("--log-files", type=click.IntRange(0, 1000), default=5, show_default=True,
              help="Rotated files kept per stream (stdout.1 ... stdout.N); a task keeps at most (N + 1) x "
                   "--log-max-mib of each.")
@click.option("--fetcher-max-mib", type=float, default=1024.0, show_default=True,
              help="The most one of a task's URIs may bring into its sandbox (download, or extracted files).")
@click.option("--fetcher-timeout", type=float, default=300.0, show_default=True,
              help="Seconds within which a task's URIs must be fetched (else TASK_FAILED).")
@click.option("--fetcher-cache-dir", type=click.Path(path_type=Path), default=None,
              help="Where downloads are cached by URL (default: DATA_DIR/fetcher-cache).")
@click.option("--fetcher-cache-max-mib", type=float, default=2048.0, show_default=True,
              help="Remove cached downloads, least recently used first, while the cache holds more (0: no cache).")
@click.option("--files-address", envvar="TESSERA_FILES_ADDRESS", default="127.0.0.1:0", show_default=True,
              metavar="HOST:PORT|off",
              help="Serve the sandboxes of this agent's tasks here (tessera logs, tessera sandbox; docs/files.md). "
                   "Port 0: a free one; loopback by default, so nothing is exposed unless asked; off: no file service.")
@click.option("--acl", "acl_path", envvar="TESSERA_AGENT_ACL", default=None, type=click.Path(path_type=Path),
              help="The masters' ACL file: which principal may read which task's sandbox (needs --tls-dir; "
                   "SIGHUP reloads it).")
@log_options("the agent")
def agent_main(masters: str, data_dir: Path, resources: str, attributes: str, hostname: str,
               heartbeat_interval: float, isolation: str, supervisor_start: str, batch_messages: bool,
               work_dir: Path | None, sandbox_gc_delay: float, sandbox_gc_max_mib: float,
               metrics_address: str | None, agent_tls_dir: Path | None, containers: str, runc: str,
               image_store_dir: Path | None, image_store_max_mib: float, insecure_registries: tuple[str, ...],
               cni_bridge: str, cni_subnet: str, cni_plugin_dirs: tuple[str, ...], allowed_volume_paths: str,
               log_max_mib: float, log_files: int, fetcher_max_mib: float, fetcher_timeout: float,
               fetcher_cache_dir: Path | None, fetcher_cache_max_mib: float, files_address: str, acl_path: Path | None,
               log_level: str, log_format: str) -> None:
    """Run a Tessera agent: report this machine's resources and run tasks for the masters."""
    from tessera.agent.main import run_agent

    setup_logging(log_level, log_format, "agent")
    config = AgentConfig(
        masters=tuple(a.strip() for a in masters.split(",") if a.strip()), data_dir=data_dir,
        resources=resources, attributes=attributes, hostname=hostname, heartbeat_interval=heartbeat_interval,
        work_dir=work_dir, isolation=isolation, supervisor_start=supervisor_start, metrics_address=metrics_address,
        tls_dir=agent_tls_dir, batch_messages=batch_messages, sandbox_gc_delay=sandbox_gc_delay,
        sandbox_gc_max_mib=sandbox_gc_max_mib, containers=containers, runc=runc, image_store_dir=image_store_dir,
        image_store_max_mib=image_store_max_mib, insecure_registries=insecure_registries, cni_bridge=cni_bridge,
        cni_subnet=cni_subnet, cni_plugin_dirs=cni_plugin_dirs or AgentConfig.cni_plugin_dirs,
        allowed_volume_paths=tuple(p.strip() for p in allowed_volume_paths.split(",") if p.strip()),
        log_max_mib=log_max_mib, log_files=log_files, fetcher_max_mib=fetcher_max_mib,
        fetcher_timeout=fetcher_timeout, fetcher_cache_dir=fetcher_cache_dir,
        fetcher_cache_max_mib=fetcher_cache_max_mib,
        files_address=files_address.strip(), acl_path=acl_path,
    )
    sys.exit(run_agent(config))


if __name__ == "__main__":
    agent_main()
