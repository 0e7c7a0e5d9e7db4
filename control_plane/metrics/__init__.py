"""Prometheus metrics shared by masters and agents: the metric names, one HTTP server per process, the
base collector. Imports nothing from `tessera.control_plane.runtime` or `agent`.

- `specs`: the `MASTER_METRICS` / `AGENT_METRICS` tables, the single list of what is exported
  (`ops/prometheus/alerts.yml` is checked against them), and the helpers that build families from them.
- `server`: `MetricsEndpoint`, one process's registry (its collector, `process_*`, `python_info`) and
  `MetricsServer`, bound to its own HOST:PORT, 127.0.0.1 by default, serving `/metrics`. The master's
  and the agent's metrics are both endpoints.
- `collector`: `SectionCollector`, which runs named sections at scrape time, skipping, logging and
  counting (`tessera_metrics_collect_errors_total{section}`) the ones that fail: a scrape never fails as
  a whole.

The collectors themselves live with what they read: the master's in `tessera.control_plane.runtime.metrics`
(`MasterMetrics`), the agent's in `tessera.agent.metrics` (`AgentMetrics`).

Names follow `tessera_<subsystem>_<name>_<unit>`: base units (seconds, bytes; `mem` and `disk` are MiB in
resources and exported as bytes = MiB x 2^20), `_total` on counters, dimensions as labels, and no
unbounded labels (no task, offer or framework ids). State labels are the enum names without their prefix,
in lower case (`TASK_RUNNING` -> `running`).
"""
