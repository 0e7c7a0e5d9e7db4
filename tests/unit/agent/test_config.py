"""Agent flags: detected resources and their overrides, attributes, and errors that name the flag."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tessera.agent.config import (
    AgentConfig,
    ConfigError,
    detect_resources,
    parse_attributes,
    parse_masters,
    resolve,
)


def test_detected_resources_come_from_the_machine(tmp_path: Path) -> None:
    r = detect_resources("", tmp_path)
    assert r.scalar("cpus") == psutil.cpu_count(logical=True)
    total_mib = psutil.virtual_memory().total // (1024 * 1024)
    assert 0 < r.scalar("mem") < total_mib
    assert r.scalar("disk") > 0
    assert r.range_count("ports") == 1001 and dict(r.ranges)[("ports", "")] == ((31000, 32000),)


def test_flag_overrides_by_name_and_adds_new_resources(tmp_path: Path) -> None:
    r = detect_resources("cpus:16;mem:8192;ports:[40000-40010];gpus:2", tmp_path)
    assert r.scalar("cpus") == 16 and r.scalar("mem") == 8192 and r.scalar("gpus") == 2
    assert dict(r.ranges)[("ports", "")] == ((40000, 40010),)
    assert r.scalar("disk") > 0  # not overridden: still detected


@pytest.mark.parametrize("text, words", [
    ("cpus:abc", ["--resources", "abc"]),
    ("cpus:-1", ["--resources", "negative"]),
    ("mem:0", ["--resources", "zero"]),
    ("mem", ["--resources", "NAME:VALUE"]),
    ("ports:[31000-30000]", ["--resources", "range"]),
    ("ports:[1-2", ["--resources", "unclosed"]),
    ("cpus:1;cpus:2", ["--resources", "twice"]),
    ("cpus:nan", ["--resources", "finite"]),
])
def test_bad_resources_flag_is_a_config_error_naming_the_flag(tmp_path: Path, text: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        detect_resources(text, tmp_path)
    for word in words:
        assert word in str(err.value)


def test_attributes_parse_in_order() -> None:
    assert parse_attributes("rack:r1; zone:a") == (("rack", "r1"), ("zone", "a"))
    assert parse_attributes("") == ()


@pytest.mark.parametrize("text", ["rack", "rack:", ":r1", "rack:r1;rack:r2", "bad key:x"])
def test_bad_attributes_name_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match="--attributes"):
        parse_attributes(text)


def test_masters_are_host_port_pairs() -> None:
    assert parse_masters("127.0.0.1:5050, m2:5051,127.0.0.1:5050") == ("127.0.0.1:5050", "m2:5051")
    for bad in ("", "nohost", "h:99999", "h:p"):
        with pytest.raises(ConfigError, match="--masters"):
            parse_masters(bad)


def test_resolve_fills_defaults(tmp_path: Path) -> None:
    resolved = resolve(AgentConfig(masters=("127.0.0.1:5050",), data_dir=tmp_path / "d",
                                   attributes="rack:r1", resources="cpus:2"))
    assert resolved.work_dir == tmp_path / "d" / "sandboxes" and resolved.work_dir.is_dir()
    assert resolved.hostname and resolved.attributes == (("rack", "r1"),)
    assert resolved.resources.scalar("cpus") == 2


def test_output_and_fetcher_flags_become_the_supervisors_settings(tmp_path: Path) -> None:
    resolved = resolve(AgentConfig(masters=("127.0.0.1:5050",), data_dir=tmp_path / "d", log_max_mib=0.5,
                                   log_files=2, fetcher_max_mib=8, fetcher_timeout=30))
    assert (resolved.log_rotation.max_bytes, resolved.log_rotation.keep) == (512 * 1024, 2)
    fetcher = resolved.fetcher
    assert (fetcher.max_bytes, fetcher.timeout, fetcher.cache_max_bytes) == (8 << 20, 30.0, 2048 << 20)
    cache = tmp_path / "d" / "fetcher-cache"
    assert fetcher.cache_dir == str(cache) and cache.is_dir() and (cache.stat().st_mode & 0o777) == 0o700
    off = resolve(AgentConfig(masters=("127.0.0.1:5050",), data_dir=tmp_path / "e", fetcher_cache_max_mib=0))
    assert off.fetcher.cache_dir == "" and not (tmp_path / "e" / "fetcher-cache").exists()


def test_unwritable_data_dir_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="--data-dir"):
        resolve(AgentConfig(masters=("127.0.0.1:5050",), data_dir=blocker / "sub"))


def test_unwritable_work_dir_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="--work-dir"):
        resolve(AgentConfig(masters=("127.0.0.1:5050",), data_dir=tmp_path / "d", work_dir=blocker))


@pytest.mark.parametrize("field, value, flag", [
    ("heartbeat_interval", 0, "--heartbeat-interval"),
    ("heartbeat_interval", -1.0, "--heartbeat-interval"),
    ("isolation", "docker", "--isolation"),
    ("supervisor_start", "exec", "--supervisor-start"),
    ("hostname", "has space", "--hostname"),
    ("masters", (), "--masters"),
    ("log_max_mib", 0.001, "--log-max-mib"),
    ("log_max_mib", float("nan"), "--log-max-mib"),
    ("log_files", -1, "--log-files"),
    ("log_files", 1.5, "--log-files"),
    ("fetcher_max_mib", 0, "--fetcher-max-mib"),
    ("fetcher_timeout", -5, "--fetcher-timeout"),
    ("fetcher_cache_max_mib", -1, "--fetcher-cache-max-mib"),
])
def test_bad_flags_name_themselves(tmp_path: Path, field: str, value: object, flag: str) -> None:
    kwargs: dict[str, object] = {"masters": ("127.0.0.1:5050",), "data_dir": tmp_path}
    kwargs[field] = value
    with pytest.raises(ConfigError, match=flag):
        resolve(AgentConfig(**kwargs))  # type: ignore[arg-type]
