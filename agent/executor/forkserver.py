"""The supervisor fork server ("zygote"): `python -m tessera.agent.executor.forkserver`.

Starting a task's supervisor as a fresh interpreter costs about a tenth of a second of CPU (interpreter
start, `site`, imports) and dominates a short task's launch. The fork server is one long-lived process,
started by the launcher, that has imported the supervisor once and forks a supervisor per task.

Theory of operation. The launcher writes one JSON line per request on the server's stdin
(`{"id": 7, "sandbox": "/…/fw/task"}`, several at once for the tasks of one offer); the server hands the
sandbox to a child it forked ahead of need (a small pool, filled again after each batch) or forks a new
one, and the child becomes the task's supervisor:
it calls `setsid()` (a session of its own, so it dies neither with the server nor with the agent, and
no terminal signal reaches it), points stdin at /dev/null and stdout/stderr at `supervisor.out` in the
sandbox, closes every other descriptor it inherited, and runs `tessera.agent.executor.supervisor.main` exactly
as `python -m tessera.agent.executor.supervisor --sandbox DIR` would. The server answers on its stdout
(`{"id": 7, "pid": 1234, "create_time": …}`, or `{"id": 7, "error": "…"}` when fork failed; a batch is
answered in one write, and no child of a batch starts working before that) and later,
when that supervisor exits, reports it (`{"exited": 1234}`) so the agent can look at the task at once
instead of at its next poll. It reaps its children through pidfds (or by polling where pidfds are
missing).

Rules it keeps:
- The server never runs a thread (fork copies only the calling thread; a lock held by another thread
  would stay locked in the child forever) and writes to its stdout with `os.write` only (a buffered
  writer's pending bytes would be written again by every child).
- End of file on stdin means the agent is gone: the server exits; the supervisors it forked run on,
  and the pooled children, which keep none of the server's pipes but their own, read end of file and
  exit.
- The server learns nothing about tasks and keeps no state that matters: killing it (`kill -9`) loses
  only the "exited" notices of supervisors still running, which the agent's periodic observation
  covers; `ForkServer` starts a new server as soon as it sees the old one's end (and at the next
  launch if that failed).
- `ForkServer` (the launcher's side) serializes requests, reads answers on one daemon thread, and raises
  `ForkServerLost` when the server died with a request in flight (the launcher then looks in the sandbox
  for a supervisor that did start before it gives up on the launch).
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

POOL_SIZE = 24  # children forked ahead of need (see _Server): more than a typical offer's tasks
SPAWN_TIMEOUT = 10.0  # seconds to wait for the server's answer to one request
START_TIMEOUT = 30.0


class ForkServerLost(Exception):
    """The fork server died (or stopped answering) while a request was in flight."""


# ---- the server process ------------------------------------------------------------------------------


def _become_supervisor(sandbox: str) -> None:
    """In the forked child: detach, redirect, and run the supervisor. Never returns."""
    code = 1
    try:
        os.setsid()
        for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        out = os.open(os.path.join(sandbox, "supervisor.out"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        _only_fds(set())  # the server's pipes and pidfds
        os.chdir(sandbox)
        from tessera.agent.executor.supervisor import main

        code = main(["--sandbox", sandbox])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        if not isinstance(exc.code, int) and exc.code is not None:
            os.write(2, f"{exc.code}\n".encode(errors="replace"))
    except BaseException:  # noqa: BLE001 - the child must end here whatever happened
        try:
            os.write(2, traceback.format_exc().encode(errors="replace"))
        except OSError:
            pass
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def _send(message: dict[str, Any]) -> None:
    _send_many([message])


def _send_many(messages: list[dict[str, Any]]) -> None:
    data = "".join(json.dumps(m) + "\n" for m in messages).encode()
    while data:
        written = os.write(1, data)
        data = data[written:]


def _create_time(pid: int) -> float:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def _detach_from_server_pipes() -> None:
    """In a child: let go of the server's stdin and stdout, so that the launcher sees the server's
    death (end of file, broken pipe) even while children wait for their task."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)


def _only_fds(keep: set[int]) -> None:
    """Close every descriptor above 2 that is not in `keep`."""
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


class _Server:
    """The server's state: its poller, its children's pidfds, and the pool of pre-forked children.

    The pool: `pool_size` children forked ahead of need, each blocked reading its own pipe. A request
    takes one and writes the sandbox down its pipe (so a launch costs a write, not a fork); the pool is
    filled again after each batch of requests, off the launcher's path. A pooled child that reads end
    of file (the server died) exits without doing anything."""

    def __init__(self, pool_size: int) -> None:
        self.poller = select.poll()
        self.poller.register(0, select.POLLIN)
        self.pidfds: dict[int, int] = {}  # pidfd -> pid
        self.unwatched: set[int] = set()  # children without a pidfd: reaped by polling
        self.pool_size = pool_size
        self.pool: list[tuple[int, float, int]] = []  # (pid, create time, write end of its pipe)

    def watch(self, pid: int) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self.unwatched.add(pid)
        else:
            self.pidfds[pidfd] = pid
            self.poller.register(pidfd, select.POLLIN)

    def fill_pool(self) -> None:
        while len(self.pool) < self.pool_size:
            r, w = os.pipe()
            try:
                pid = os.fork()
            except OSError:
                os.close(r)
                os.close(w)
                return
            if pid == 0:
                _detach_from_server_pipes()
                _only_fds({r})  # not even the other pooled children's pipes: their end of file matters
                chunks = []
                while True:
                    try:
                        chunk = os.read(r, 65536)
                    except InterruptedError:
                        continue
                    if not chunk:
                        break
                    chunks.append(chunk)
                if not chunks:
                    os._exit(0)  # the server is gone and never gave us a task
                _become_supervisor(b"".join(chunks).decode())
            os.close(r)
            self.watch(pid)
            self.pool.append((pid, _create_time(pid), w))

    def handle_batch(self, lines: list[bytes]) -> None:
        """Start a supervisor per request: a pooled child when there is one, else a new fork. No child
        of a batch starts working before the whole batch is answered (in one write): pooled children get
        their sandbox then, forked ones wait at a gate (a pipe whose write end the server holds) until
        then. A child that ran at once would compete with the server for the CPU mid-batch."""
        if not lines:
            return
        gate_r, gate_w = os.pipe()
        replies: list[dict[str, Any]] = []
        assigned: list[tuple[int, bytes]] = []
        try:
            for line in lines:
                replies.append(self.handle(line, (gate_r, gate_w), assigned))
        finally:
            if replies:
                _send_many(replies)
            for w, sandbox in assigned:
                try:
                    os.write(w, sandbox)
                except OSError:
                    pass  # that child is gone (its pidfd reports it); the launcher finds no supervisor
                finally:
                    os.close(w)
            os.close(gate_r)
            os.close(gate_w)  # opens the gate

    def handle(self, line: bytes, gate: tuple[int, int], assigned: list[tuple[int, bytes]]) -> dict[str, Any]:
        """The answer to one request; a pooled child taken is added to `assigned` (pipe, sandbox)."""
        try:
            request = json.loads(line)
            request_id = request["id"]
            sandbox = str(request["sandbox"])
        except (ValueError, KeyError, TypeError) as exc:
            return {"id": None, "error": f"bad request: {exc}"}
        if self.pool:
            pid, created, w = self.pool.pop(0)
            assigned.append((w, sandbox.encode()))
            return {"id": request_id, "pid": pid, "create_time": created}
        try:
            pid = os.fork()
        except OSError as exc:
            return {"id": request_id, "error": f"fork: {exc.strerror or exc}"}
        if pid == 0:
            _detach_from_server_pipes()
            gate_r, gate_w = gate
            os.close(gate_w)
            try:
                os.read(gate_r, 1)  # end of file once the server closed its end (or died)
            except OSError:
                pass
            _become_supervisor(sandbox)
        self.watch(pid)
        return {"id": request_id, "pid": pid, "create_time": _create_time(pid)}

    def reap(self, fd: int) -> None:
        pid = self.pidfds.pop(fd)
        self.poller.unregister(fd)
        os.close(fd)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        _send({"exited": pid})

    def reap_unwatched(self) -> None:
        for pid in list(self.unwatched):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.unwatched.discard(pid)
                _send({"exited": pid})


def serve(pool_size: int = POOL_SIZE) -> int:
    """The server's loop: read requests on stdin, start supervisors, report their exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Imported here, before any request, so that every child starts with them loaded.
    import psutil  # noqa: F401

    import tessera.agent.executor.supervisor  # noqa: F401

    server = _Server(pool_size)
    _send({"ready": os.getpid()})
    server.fill_pool()
    buffer = b""
    while True:
        for fd, _ in server.poller.poll(200 if server.unwatched else None):
            if fd == 0:
                try:
                    data = os.read(0, 65536)
                except InterruptedError:
                    continue
                if not data:
                    return 0  # the agent is gone; the supervisors run on, pooled children exit
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                server.handle_batch([line for line in lines if line.strip()])
                server.fill_pool()
            elif fd in server.pidfds:
                server.reap(fd)
        server.reap_unwatched()


# ---- the launcher's side -----------------------------------------------------------------------------


class ForkServer:
    """A running fork server, started on first use and again whenever it died.

    `spawn(sandbox)` -> (pid, create_time) of the new supervisor. `on_exit(pid)` is called on the reader
    thread when a supervisor forked by this server exits."""

    def __init__(self, python: str = sys.executable, env: dict[str, str] | None = None,
                 on_exit: Callable[[int], None] | None = None, pool_size: int = POOL_SIZE) -> None:
        self.python = python
        self.pool_size = pool_size
        self.env = env
        self.on_exit = on_exit
        self._lock = threading.Lock()  # one request at a time
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._replies: dict[int, dict[str, Any]] = {}
        self._ready: int | None = None
        self._next_id = 0
        self._closed = False
        self.starts = 0  # how many servers were started (tests, logs)

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def ensure_started(self) -> None:
        with self._lock:
            self._ensure_started()

    def _ensure_started(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return proc
        if proc is not None:
            log.warning("the supervisor fork server (pid %d) died (exit %s); starting a new one", proc.pid,
                        proc.returncode)
            self._close_pipes(proc)
        try:
            proc = subprocess.Popen(
                [self.python, "-m", "tessera.agent.executor.forkserver", "--pool", str(self.pool_size)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, close_fds=True, start_new_session=True, env=self.env, bufsize=0,
            )
        except OSError as exc:
            raise ForkServerLost(f"cannot start the supervisor fork server: {exc.strerror or exc}") from exc
        with self._cond:
            self._proc = proc
            self._ready = None
        self.starts += 1
        self._closed = False
        threading.Thread(target=self._read, args=(proc,), name=f"forkserver-{proc.pid}", daemon=True).start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._ready is not None or proc.poll() is not None, START_TIMEOUT):
                proc.kill()
                raise ForkServerLost("the supervisor fork server did not start in time")
        if self._ready is None:
            raise ForkServerLost(f"the supervisor fork server exited at start (exit {proc.poll()})")
        return proc

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        served = False  # it said it was ready
        with open(proc.stdout.fileno(), "rb", closefd=False) as out:  # buffered: one read, many lines
            for raw in out:
                try:
                    message = json.loads(raw)
                except ValueError:
                    log.warning("fork server: unreadable line %r", raw[:200])
                    continue
                if "exited" in message:
                    if self.on_exit is not None:
                        try:
                            self.on_exit(int(message["exited"]))
                        except Exception:  # noqa: BLE001 - a listener's failure must not stop the reader
                            log.exception("fork server exit listener failed")
                    continue
                with self._cond:
                    if "ready" in message:
                        self._ready = int(message["ready"])
                        served = True
                    elif message.get("id") is not None:
                        self._replies[int(message["id"])] = message
                    self._cond.notify_all()
        proc.stdout.close()
        proc.wait()
        with self._cond:
            self._cond.notify_all()
        # A server that died on its own after serving is replaced at once, not at the next launch (one
        # that dies before it is ready is not: the next launch tries, and reports a failure).
        with self._lock:
            if served and not self._closed and self._proc is proc:
                try:
                    self._ensure_started()
                except ForkServerLost as exc:
                    log.warning("%s (tried again at the next launch)", exc)

    def spawn(self, sandbox: Path, timeout: float = SPAWN_TIMEOUT) -> tuple[int, float]:
        [found] = self.spawn_many([sandbox], timeout)
        if isinstance(found, Exception):
            raise found
        return found

    def spawn_many(self, sandboxes: list[Path], timeout: float = SPAWN_TIMEOUT
                   ) -> list[tuple[int, float] | ForkServerLost | OSError]:
        """Fork one supervisor per sandbox; every request is written before the first answer is
        awaited. One result per sandbox: (pid, start time), ForkServerLost, or OSError (fork failed)."""
        if not sandboxes:
            return []
        with self._lock:
            try:
                proc = self._ensure_started()
            except ForkServerLost as exc:
                return [exc for _ in sandboxes]
            first = self._next_id + 1
            self._next_id += len(sandboxes)
            ids = list(range(first, first + len(sandboxes)))
            data = b"".join((json.dumps({"id": i, "sandbox": str(s)}) + "\n").encode()
                            for i, s in zip(ids, sandboxes, strict=True))
            written = _write_all(proc, data)
            if written == 0:
                # The server was gone before a byte of this request reached it (it died after the
                # liveness check): nothing was forked, so asking a new server is safe.
                proc.wait()
                try:
                    proc = self._ensure_started()
                except ForkServerLost as exc:
                    return [exc for _ in sandboxes]
                written = _write_all(proc, data)
            if written < len(data):
                # Part of the request may have been read and acted on: never ask again (a task could
                # run twice); what was forked is found through its sandbox by the launcher.
                lost = ForkServerLost("the supervisor fork server died while reading a request")
                return [lost for _ in sandboxes]
            deadline = timeout + 0.05 * len(sandboxes)
            with self._cond:
                self._cond.wait_for(lambda: all(i in self._replies for i in ids) or proc.poll() is not None,
                                    deadline)
                replies = [self._replies.pop(i, None) for i in ids]
        out: list[tuple[int, float] | ForkServerLost | OSError] = []
        for reply in replies:
            if reply is None:
                out.append(ForkServerLost("the supervisor fork server died or did not answer while starting "
                                          "a supervisor"))
            elif reply.get("error"):
                out.append(OSError(str(reply["error"])))
            else:
                out.append((int(reply["pid"]), float(reply.get("create_time") or 0.0)))
        return out

    @staticmethod
    def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
        for pipe in (proc.stdin,):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass

    def close(self, timeout: float = 5.0) -> None:
        """Stop the server (end of file on its stdin); the supervisors it started run on."""
        with self._lock:
            self._closed = True
            proc = self._proc
            self._proc = None
            if proc is None:
                return
            self._close_pipes(proc)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)


def _write_all(proc: subprocess.Popen[bytes], data: bytes) -> int:
    """Write `data` to the server's stdin; returns how many bytes it took before its end broke."""
    assert proc.stdin is not None
    fd = proc.stdin.fileno()
    done = 0
    while done < len(data):
        try:
            done += os.write(fd, data[done:])
        except InterruptedError:
            continue
        except OSError:
            return done
    return done


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tessera.agent.executor.forkserver")
    parser.add_argument("--pool", type=int, default=POOL_SIZE, help="children forked ahead of need")
    return serve(max(0, parser.parse_args(argv).pool))


if __name__ == "__main__":
    sys.exit(main())
