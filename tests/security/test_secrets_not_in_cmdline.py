"""Issue 14, item 12: no secret on a command line.

Every local user can read every process's ``/proc/PID/cmdline``; only the owner (and root) can read its
``/proc/PID/environ`` or a 0600 file. So the Raft password and bearer tokens are taken from files or the
environment only: ``--raft-password-file`` / ``TESSERA_RAFT_PASSWORD_FILE`` / ``TESSERA_RAFT_PASSWORD`` for a
master, ``--token-file`` / ``TESSERA_TOKEN_FILE`` / ``TESSERA_TOKEN`` for the CLI. The old flags are refused
with one line naming those (exit 2), and `tessera up` hands its masters a file, not the password.

Real processes on 127.0.0.1; each test reads the running process's ``/proc/PID/cmdline``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from tessera.v1 import operator_pb2, operator_pb2_grpc
from tests.support.cluster import free_port, spawn, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TESSERA = [sys.executable, "-m", "tessera.control_plane.cli.main"]
PASSWORD = "cmdline-test-raft-password-Zq8Lw2Vd9Rk4"
TOKEN = "cmdline-test-token-Hf3Np7Xc1Tb6"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def _secret_file(path: Path, secret: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _serving(grpc_address: str) -> bool:
    with grpc.insecure_channel(grpc_address) as ch:
        q = operator_pb2_grpc.OperatorStub(ch).GetQuorum(operator_pb2.GetQuorumRequest(local_only=True), timeout=1)
    return bool(q.leader)


def _master_cmd(tmp_path: Path, *flags: str) -> tuple[list[str], str]:
    grpc_address = f"127.0.0.1:{free_port()}"
    return [*TESSERA, "master", "--name", "m1", "--raft", f"127.0.0.1:{free_port()}", "--grpc", grpc_address,
            "--data-dir", str(tmp_path / "m1"), "--insecure-dev", *flags], grpc_address


@pytest.mark.parametrize("how", ["flag", "file-env", "env"])
def test_a_master_takes_its_raft_password_from_a_file_or_the_environment_never_its_command_line(
        tmp_path: Path, how: str) -> None:
    secret_file = _secret_file(tmp_path / "raft-password", PASSWORD)
    flags, env = {
        "flag": (["--raft-password-file", str(secret_file)], _env()),
        "file-env": ([], _env(TESSERA_RAFT_PASSWORD_FILE=str(secret_file))),
        "env": ([], _env(TESSERA_RAFT_PASSWORD=PASSWORD)),
    }[how]
    cmd, grpc_address = _master_cmd(tmp_path, *flags)
    log = tmp_path / "master.log"
    proc = spawn(cmd, log, env)
    try:
        wait_for(lambda: proc.poll() is not None or _serving(grpc_address), 60, what="the master to serve")
        assert proc.poll() is None, log.read_text()
        assert PASSWORD not in _cmdline(proc.pid)
        # it runs with the password: no warning about an unencrypted Raft port
        assert "has no password" not in log.read_text()
    finally:
        _stop(proc)


def test_the_old_raft_password_flag_is_refused_with_one_line(tmp_path: Path) -> None:
    cmd, _ = _master_cmd(tmp_path, "--raft-password", PASSWORD)
    proc = spawn(cmd, tmp_path / "master.log", _env())
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        code = None  # it started, with the password in its command line
    finally:
        _stop(proc)
    lines = (tmp_path / "master.log").read_text().strip().splitlines()
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert "--raft-password-file" in lines[0] and "TESSERA_RAFT_PASSWORD" in lines[0]
    assert PASSWORD not in lines[0]


def test_a_password_file_that_cannot_be_used_is_one_line_and_exit_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path, expected in ((tmp_path / "missing", "cannot read"), (empty, "is empty")):
        cmd, _ = _master_cmd(tmp_path, "--raft-password-file", str(path))
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=_env())
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert expected in lines[0] and str(path) in lines[0]


def test_the_old_token_flag_is_refused_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run([*TESSERA, "--masters", f"127.0.0.1:{free_port()}", "--timeout", "1", "--token", TOKEN,
                           "agents"], capture_output=True, text=True, timeout=60, env=_env())
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, lines
    assert "--token-file" in lines[0] and "TESSERA_TOKEN_FILE" in lines[0] and "TESSERA_TOKEN" in lines[0]
    assert TOKEN not in lines[0]


@pytest.mark.parametrize("how", ["flag", "file-env", "env"])
def test_the_cli_takes_its_token_from_a_file_or_the_environment_never_its_command_line(
        tmp_path: Path, how: str) -> None:
    token_file = _secret_file(tmp_path / "operator.token", TOKEN)
    flags, env = {
        "flag": (["--token-file", str(token_file)], _env()),
        "file-env": ([], _env(TESSERA_TOKEN_FILE=str(token_file))),
        "env": ([], _env(TESSERA_TOKEN=TOKEN)),
    }[how]
    master_cmd, grpc_address = _master_cmd(tmp_path, "--raft-password-file", str(_secret_file(tmp_path / "pw", PASSWORD)))
    master = spawn(master_cmd, tmp_path / "master.log", _env())
    follower = None
    try:
        wait_for(lambda: _serving(grpc_address), 60, what="the master to serve")
        # a long-lived CLI process: following the event log
        follower = spawn([*TESSERA, "--masters", grpc_address, *flags, "events", "--follow"], tmp_path / "cli.log", env)

        def printed_a_new_event() -> bool:
            if follower.poll() is not None:
                return True
            with grpc.insecure_channel(grpc_address) as ch:  # an event for it to print
                operator_pb2_grpc.OperatorStub(ch).SetWeight(operator_pb2.SetWeightRequest(role="r", weight=2.0),
                                                             timeout=5)
            return "RoleWeightSet" in (tmp_path / "cli.log").read_text()

        wait_for(printed_a_new_event, 60, interval=0.5, what="the CLI to print events")
        assert follower.poll() is None, (tmp_path / "cli.log").read_text()
        assert TOKEN not in _cmdline(follower.pid)
    finally:
        if follower is not None:
            _stop(follower)
        _stop(master)


def test_up_gives_its_masters_the_raft_password_in_a_file_not_on_the_command_line_or_in_the_environment(
        tmp_path: Path) -> None:
    from tests.integration.test_up import Up, child_pids, kill_all

    up = Up(tmp_path, "--masters", "1", "--agents", "0", "--duration", "120")
    pids: list[int] = []
    try:
        up.wait_ready()
        pids = child_pids(tmp_path / ".tessera" / "cluster.json")
        password = (tmp_path / ".tessera" / "raft-password").read_text().strip()
        assert len(password) >= 32
        master = pids[0]
        assert password not in _cmdline(master)
        assert password.encode() not in Path(f"/proc/{master}/environ").read_bytes()
        assert "has no password" not in up.output()
    finally:
        kill_all(up, pids)
