"""Bad input to the `tessera` command gets one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cluster import free_port

pytestmark = pytest.mark.timeout(60)


def tessera(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.pop("TESSERA_MASTERS", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "tessera.control_plane.cli.main", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def master_args(tmp_path: Path, **over: str) -> list[str]:
    opts = {"--name": "m1", "--raft": f"127.0.0.1:{free_port()}", "--grpc": f"127.0.0.1:{free_port()}",
            "--peers": "", "--data-dir": str(tmp_path / "m1")}
    opts.update(over)
    out = ["master"]
    for k, v in opts.items():
        out += [k, v]
    return out


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("tessera")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_master_with_its_own_address_among_peers_exits_with_one_line(tmp_path: Path) -> None:
    raft = f"127.0.0.1:{free_port()}"
    result = tessera(*master_args(tmp_path, **{"--raft": raft, "--peers": f"{raft},127.0.0.1:{free_port()}"}))
    assert_one_line_error(result, "--peers", "own")


def test_master_with_a_repeated_peer_exits_with_one_line(tmp_path: Path) -> None:
    peer = f"127.0.0.1:{free_port()}"
    result = tessera(*master_args(tmp_path, **{"--peers": f"{peer},{peer}"}))
    assert_one_line_error(result, "--peers", "twice")


def test_master_with_a_malformed_peer_exits_with_one_line(tmp_path: Path) -> None:
    result = tessera(*master_args(tmp_path, **{"--peers": "not-an-address"}))
    assert_one_line_error(result, "--peers")


def test_master_with_a_malformed_raft_bind_exits_with_one_line(tmp_path: Path) -> None:
    result = tessera(*master_args(tmp_path, **{"--raft-bind": "nowhere"}))
    assert_one_line_error(result, "--raft-bind")


def test_master_with_an_unwritable_data_dir_exits_with_one_line(tmp_path: Path) -> None:
    # /proc refuses new directories even to root, so this holds for every user CI may run as.
    result = tessera(*master_args(tmp_path, **{"--data-dir": "/proc/tessera-test/m1"}))
    assert_one_line_error(result, "--data-dir", "not writable")


def test_master_with_a_file_as_data_dir_exits_with_one_line(tmp_path: Path) -> None:
    f = tmp_path / "a-file"
    f.write_text("not a directory")
    result = tessera(*master_args(tmp_path, **{"--data-dir": str(f / "sub")}))
    assert_one_line_error(result, "--data-dir", "not writable")


def test_commands_say_in_one_line_when_no_master_answers() -> None:
    result = tessera("--masters", f"127.0.0.1:{free_port()}", "--timeout", "1", "quorum", "status")
    assert_one_line_error(result, "no master answered")


def test_bad_masters_flag_is_named() -> None:
    result = tessera("--masters", "nonsense", "state")
    assert_one_line_error(result, "--masters")


def test_bad_quota_resources_name_the_flag() -> None:
    result = tessera("--masters", f"127.0.0.1:{free_port()}", "quota", "set", "web", "--guarantee", "cpus:-1")
    assert_one_line_error(result, "--guarantee", "negative")
