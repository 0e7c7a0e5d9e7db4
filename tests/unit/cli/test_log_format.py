"""`--log-format text|json` and `--log-level` on the process commands (master, agent, services, dns, lb):
JSON lines for Loki/ELK (time, level, logger, message, extra fields), UTC ISO 8601 times with the zone in
both formats, a typo in the level refused naming the option (`control_plane/logsetup.py`). The last test
reads a real master's log lines."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from tessera.control_plane.cli.main import cli
from tessera.control_plane.logsetup import JsonFormatter, TextFormatter, formatter, utc_timestamp
from tests.support.cluster import LocalCluster, wait_for

pytestmark = pytest.mark.timeout(120)

PROCESS_COMMANDS = (("master",), ("agent",), ("services",), ("dns",), ("lb",))
WHEN = 1796641200.25  # 2026-12-07T11:00:00.250Z


def _record(msg: str = "leader since term %d", args: tuple[object, ...] = (3,), **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("tessera.control_plane.runtime.master", logging.WARNING, __file__, 10, msg, args, None)
    record.created = WHEN
    record.__dict__.update(extra)
    return record


def test_times_are_utc_iso_8601_with_the_zone_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    import time

    time.tzset()
    try:
        assert utc_timestamp(WHEN) == "2026-12-07T11:00:00.250Z"
        parsed = datetime.fromisoformat(utc_timestamp(WHEN))
        assert parsed.utcoffset() == timedelta(0)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_text_line_is_utc_time_process_level_logger_message() -> None:
    assert TextFormatter("m1").format(_record()) == \
        "2026-12-07T11:00:00.250Z m1 WARNING tessera.control_plane.runtime.master: leader since term 3"


def test_a_json_line_has_time_level_logger_message_process_and_the_extra_fields() -> None:
    line = JsonFormatter("m1").format(_record(agent_id="a-1", term=3))
    assert "\n" not in line
    assert json.loads(line) == {"time": "2026-12-07T11:00:00.250Z", "level": "WARNING",
                                "logger": "tessera.control_plane.runtime.master", "message": "leader since term 3",
                                "process": "m1", "agent_id": "a-1", "term": 3}


def test_a_json_line_carries_the_traceback_in_one_field() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = _record("failed", (), exc_info=sys.exc_info())
    record.exc_info = record.__dict__.pop("exc_info")
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "failed" and "RuntimeError: boom" in doc["exception"] and "process" not in doc


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        formatter("xml")


@pytest.mark.parametrize("path", PROCESS_COMMANDS, ids=[p[0] for p in PROCESS_COMMANDS])
def test_every_process_command_offers_both_options_as_choices(path: tuple[str, ...]) -> None:
    out = CliRunner().invoke(cli, [*path, "--help"], terminal_width=1000).output
    assert "--log-format [text|json]" in out and "--log-level [debug|info|warning|error]" in out.lower()
    for bad, option in (("INFOO", "--log-level"), ("yaml", "--log-format")):
        result = CliRunner().invoke(cli, [*path, option, bad])
        assert result.exit_code == 2, result.output
        assert f"Invalid value for '{option}'" in result.output and repr(bad) in result.output


@pytest.mark.integration
def test_a_master_started_with_log_format_json_writes_json_lines_with_utc_times(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, n=1) as cluster:
        cluster.master_flags = ["--log-format", "json"]
        cluster.start_all()
        cluster.leader(timeout=60)
        [m] = cluster.masters
        wait_for(lambda: m.log_path.read_text().count("\n") >= 3, 30, what="a few log lines")
        cluster.stop_all()
        lines = [line for line in m.log_path.read_text().splitlines() if line.strip()]
    docs = [json.loads(line) for line in lines]  # every line: the master's, its libraries' (pysyncobj, grpc)
    assert len(docs) >= 3, lines
    for doc in docs:
        assert {"time", "level", "logger", "message"} <= set(doc) and doc["process"] == "m1"
        assert doc["time"].endswith("Z") and datetime.fromisoformat(doc["time"]).utcoffset() == timedelta(0)
    assert any(doc["logger"].startswith("tessera.") for doc in docs)
