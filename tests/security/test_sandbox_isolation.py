"""Issue 14 item 3: one tenant's task cannot read another tenant's secrets from its sandbox.

Real processes on 127.0.0.1: a master and an agent run as root (as here). Tenant A runs a task as root
with a secret in its environment; it writes the secret into a file of its sandbox and waits. Tenant B
runs a task as `nobody` that tries to read A's launch file and A's sandbox files by absolute path, by a
relative path from its own sandbox (`../..`), and by listing the directories above it. Every attempt
must fail. Once A ends, the agent's sandbox GC (a short delay here) removes A's sandbox, launch file
included. A separate test runs `tessera up` and checks that the data files it makes (the event log, the
Raft journal, the agent's checkpoint) are not readable by other users.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.sdk.types import Resources, TaskInfo
from tests.security.sandbox_support import cluster
from tests.support.cluster import kill_processes_under, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SECRET = f"s3cr3t-{uuid.uuid4().hex}"
GC_DELAY = 1.0

# B's probes: each line says which path it tried and whether the read worked. `realpath -s -m` is purely
# lexical, so the relative paths are computed without reading anything.
PROBE = r"""
try() { if out=$(cat "$1" 2>&1); then echo "READ $2: $out"; else echo "DENIED $2: $out"; fi; }
try_ls() { if out=$(ls -a "$1" 2>&1); then echo "LISTED $2: $out"; else echo "DENIED $2: $out"; fi; }
rel() { realpath -s -m --relative-to="$PWD" "$1"; }
try "$A_LAUNCH" launch-absolute
try "$(rel "$A_LAUNCH")" launch-relative
try "$A_SECRET" secret-absolute
try "$(rel "$A_SECRET")" secret-relative
try "$A_STDOUT" stdout-absolute
try_ls "$A_RUN" run-dir-listing
try_ls ../.. parent-listing
( cd ../.. && for f in */*/launch.json */*/*/launch.json */*/sandbox/secret.txt; do try "$f" "glob-$f"; done )
exit 0
"""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A directory every user may pass through (pytest's own temporary directories are 0700, which would
    hide the agent's data dir from `nobody` whatever the agent does)."""
    root = Path(tempfile.mkdtemp(prefix="tessera-sandbox-isolation-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        kill_processes_under(root)
        shutil.rmtree(root, ignore_errors=True)


def test_a_nobody_task_cannot_read_another_tenants_secrets_and_finished_sandboxes_are_collected(
        open_root: Path) -> None:
    with cluster(open_root, gc_delay=GC_DELAY) as c:
        a, b = c.tenant("tenant-a"), c.tenant("tenant-b")
        a_id = "a-holds-secret"
        a.run(TaskInfo(task_id=a_id, resources=Resources.of(cpus=0.1, mem=32), env={"DB_PASSWORD": SECRET},
                       command='echo "$DB_PASSWORD" > secret.txt; echo "$DB_PASSWORD";'
                               ' while [ ! -f release ]; do sleep 0.1; done'))
        a.scheduler.wait_state(a_id, "TASK_RUNNING")
        # Where A's files are (the test runs as root and may look).
        a_secret = wait_for(lambda: next(iter(c.work_dir.glob("**/secret.txt")), None), 30, what="A's secret file")
        a_launch = next(p for p in c.work_dir.glob("**/launch.json") if a_id in p.read_text())
        a_run = a_launch.parent
        a_sandbox = a_secret.parent
        wait_for(lambda: SECRET in (a_sandbox / "stdout").read_text(), 30, what="A's stdout")

        b_id = "b-snoops"
        b.run(TaskInfo(task_id=b_id, resources=Resources.of(cpus=0.1, mem=32), user="nobody", command=PROBE,
                       env={"A_LAUNCH": str(a_launch), "A_SECRET": str(a_secret), "A_RUN": str(a_run),
                            "A_STDOUT": str(a_sandbox / "stdout")}))
        final = b.scheduler.wait_final(b_id)
        output = final.data.decode(errors="replace")
        assert final.state.name == "TASK_FINISHED", (final.message, output)
        assert SECRET not in output and SECRET not in final.message, output
        lines = [line for line in output.splitlines() if line.strip()]
        assert any(line.startswith("DENIED launch-relative") for line in lines), output
        for probe in ("launch-absolute", "launch-relative", "secret-absolute", "secret-relative",
                      "stdout-absolute", "run-dir-listing", "parent-listing"):
            [line] = [line for line in lines if line.split(" ", 2)[1].rstrip(":") == probe]
            assert line.startswith("DENIED"), output
            assert "Permission denied" in line or "No such file" in line, output
        assert not any(line.startswith(("READ", "LISTED")) for line in lines), output

        # What a tenant's sandbox looks like from the outside.
        assert mode(a_launch) == 0o600 and a_launch.stat().st_uid == 0
        assert mode(a_sandbox) == 0o700 and a_sandbox.stat().st_uid == 0  # root-run task: root's sandbox
        # B's own sandbox belongs to nobody, and nobody else may enter it.
        b_sandbox = next(p for p in c.work_dir.glob("**/stdout") if "DENIED" in p.read_text()).parent
        assert b_sandbox.stat().st_uid == pwd_uid("nobody") and mode(b_sandbox) == 0o700

        # A ends; after the GC delay its sandbox and launch file are gone.
        (a_sandbox / "release").write_text("go")
        assert a.scheduler.wait_final(a_id).state.name == "TASK_FINISHED"
        wait_for(lambda: not a_run.exists(), 30, interval=0.2, what="A's sandbox removed by the GC")
        assert not a_launch.exists() and not a_secret.exists()


def pwd_uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def test_data_files_of_tessera_up_are_not_readable_by_other_users(tmp_path: Path) -> None:
    data_dir = tmp_path / "cluster"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env["PYTHONUNBUFFERED"] = "1"
    previous = os.umask(0o022)  # an ordinary login's umask: the cluster must not depend on its caller's
    try:
        proc = subprocess.Popen([sys.executable, "-m", "tessera.control_plane.cli.main", "up", "--masters", "1", "--agents",
                                 "1", "--data-dir", str(data_dir), "--quiet"], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    finally:
        os.umask(previous)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "cluster ready" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while not ready.wait(0.2):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines[-60:])
        expected = {
            "events.db": lambda p: p.name == "events.db",
            "the Raft journal": lambda p: "journal" in p.name,
            "agent.db": lambda p: p.name == "agent.db",
        }

        def files() -> list[Path]:
            return [p for p in data_dir.rglob("*") if p.is_file() and not p.is_symlink()]

        def all_there() -> bool:
            return all(any(match(p) for p in files()) for match in expected.values())

        wait_for(all_there, 60, interval=0.2, what="events.db, the journal and agent.db")
        data_files = [p for p in files()
                      if p.name.startswith(("events.db", "agent.db")) or "journal" in p.name or "dump" in p.name]
        assert data_files
        readable = {str(p.relative_to(data_dir)): oct(mode(p)) for p in data_files if mode(p) & 0o077}
        assert not readable, f"data files readable by group or others: {readable}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        kill_processes_under(tmp_path)
