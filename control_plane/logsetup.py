"""How Tessera's long-running processes log: `tessera master`, `tessera agent`, `tessera services`,
`tessera dns` and `tessera lb`, one record per line on stderr.

- `--log-format text` (the default), for people:
  `2026-12-07T11:00:00.123Z m1 INFO tessera.control_plane.runtime.master: leader since term 3`;
- `--log-format json`, one JSON object per line for Loki, Elasticsearch/Logstash, Vector or journald's
  JSON export: `time`, `level`, `logger`, `message`, `process` (m1, agent, ...), every field a caller passed
  with `extra=`, and `exception`/`stack` when the record has them;
- time in both is UTC, ISO 8601 with the zone (`Z`), milliseconds: the same clock as the CLI's output,
  whatever the machine's time zone;
- `--log-level` is a choice (DEBUG, INFO, WARNING, ERROR; any case): a typo is refused naming the option,
  never silently INFO.

`log_options` gives a click command both options (with their `TESSERA_<COMMAND>_LOG_*` environment variables,
the `tessera` group's prefix); `setup_logging` installs the handler once per process (a root logger that
already has handlers, as under pytest, is left alone, like `logging.basicConfig`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")

# the attributes every LogRecord has: what is left in a record's __dict__ came from `extra=`
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def utc_timestamp(created: float) -> str:
    """`created` (seconds since the epoch) as UTC ISO 8601 with the zone: 2026-12-07T11:00:00.123Z."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """`<UTC time> <process> <LEVEL> <logger>: <message>` (then the traceback, if any)."""

    def __init__(self, process: str = "") -> None:
        super().__init__(f"%(asctime)s {process + ' ' if process else ''}%(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        return utc_timestamp(record.created)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, process, the `extra=` fields."""

    def __init__(self, process: str = "") -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"time": utc_timestamp(record.created), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage()}
        if self.process:
            doc["process"] = self.process
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                doc.setdefault(key, value)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def formatter(log_format: str, process: str = "") -> logging.Formatter:
    """The formatter `--log-format` names (ValueError for another name)."""
    if log_format == "text":
        return TextFormatter(process)
    if log_format == "json":
        return JsonFormatter(process)
    raise ValueError(f"unknown log format {log_format!r} (one of {', '.join(LOG_FORMATS)})")


def setup_logging(level: str = "INFO", log_format: str = "text", process: str = "") -> None:
    """Log records of `level` and above to stderr in `log_format`, unless the root logger already has a
    handler (then nothing changes: whoever installed it decides)."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format, process))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


F = TypeVar("F", bound=Callable[..., Any])


def log_options(what: str) -> Callable[[F], F]:
    """`--log-level` and `--log-format` for a process command (`what`: "the master", "the agent", ...)."""

    def decorate(f: F) -> F:
        f = click.option("--log-format", type=click.Choice(LOG_FORMATS), default="text", show_default=True,
                         help=f"How {what} writes its log lines on stderr: text, or json (one object per line: "
                              "time, level, logger, message and extra fields; for Loki or ELK). Times are UTC, "
                              "ISO 8601 with the zone.")(f)
        f = click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="INFO",
                         show_default=True, help=f"How much {what} logs.")(f)
        return f

    return decorate
