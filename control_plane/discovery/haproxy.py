"""The HAProxy process `tessera lb` keeps loaded (docs/load-balancing.md).

HAProxy runs in master-worker mode (`-W`) in the foreground of its own session, started by `tessera lb`
and stopped with it. A new configuration is first checked with `haproxy -c` (a configuration HAProxy
refuses is never installed: the running one stays and the reason is returned), then written in place
(temp file + rename) and loaded with SIGUSR2 to the master: HAProxy's own reload, in which the new workers
take over the listening sockets and the old ones finish their connections (soft stop), so a reload drops
no connection. Nothing is reloaded when the text did not change.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger("tessera.lb")

CHECK_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class HaproxyError(Exception):
    """HAProxy cannot be found, started or refused a configuration; the message says why."""


class Haproxy:
    def __init__(self, directory: Path, binary: str = "haproxy") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.binary = binary
        self.config = self.directory / "haproxy.cfg"
        self.proc: subprocess.Popen[bytes] | None = None
        self.text = ""
        self.reloads = 0

    def check(self, text: str) -> str | None:
        """None when HAProxy accepts `text`, else its complaint."""
        fd, path = tempfile.mkstemp(prefix="check-", suffix=".cfg", dir=self.directory)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            try:
                done = subprocess.run([self.binary, "-c", "-q", "-f", path], capture_output=True, text=True,
                                      timeout=CHECK_TIMEOUT, stdin=subprocess.DEVNULL)
            except FileNotFoundError:
                raise HaproxyError(f"{self.binary} not found (install the haproxy package)") from None
            if done.returncode == 0:
                return None
            lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
            return "; ".join(lines[-5:]) or f"haproxy -c exited with {done.returncode}"
        finally:
            os.unlink(path)

    def apply(self, text: str | None) -> bool:
        """Install `text` if it differs from the running configuration (checked first); True when it
        started, reloaded or (None: no service to balance, which HAProxy cannot run with) stopped HAProxy.
        Raises HaproxyError when HAProxy refuses it or cannot start."""
        if text is None:
            was = self.running()
            self.stop()
            self.text = ""
            return was
        if text == self.text and self.running():
            return False
        problem = self.check(text)
        if problem is not None:
            raise HaproxyError(f"haproxy refused the new configuration (the running one stays): {problem}")
        tmp = self.config.with_suffix(".new")
        tmp.write_text(text)
        os.replace(tmp, self.config)
        self.text = text
        if not self.running():
            self._start()
        else:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGUSR2)  # master-worker reload: new workers, old ones finish
            self.reloads += 1
        return True

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _start(self) -> None:
        log_file = open(self.directory / "haproxy.log", "ab")  # noqa: SIM115 - the child holds it
        try:
            self.proc = subprocess.Popen([self.binary, "-W", "-db", "-f", str(self.config)], stdout=log_file,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        except FileNotFoundError:
            raise HaproxyError(f"{self.binary} not found (install the haproxy package)") from None
        finally:
            log_file.close()
        time.sleep(0.05)
        if self.proc.poll() is not None:
            tail = (self.directory / "haproxy.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise HaproxyError(f"haproxy exited at start ({self.proc.returncode}): {' '.join(tail)}")

    def stop(self) -> None:
        """Soft stop (SIGUSR1: the workers finish their connections), SIGKILL after STOP_TIMEOUT."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGUSR1)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
