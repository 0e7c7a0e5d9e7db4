"""``python die_with_parent.py PARENT_PID COMMAND...``: exec COMMAND so that it dies with PARENT_PID.

Test processes must not outlive a test runner that is killed hard. Linux's PR_SET_PDEATHSIG does it,
but it has to be set in the child, and a ``preexec_fn`` is not safe in the test process: the runner has
gRPC and writer threads, and a forked child can deadlock before ``exec`` on a lock one of them held
(the Python docs say so). This launcher is a fresh single-threaded process: it sets the signal, checks
that the parent did not already die in between, and replaces itself with the command (same PID).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: die_with_parent.py PARENT_PID COMMAND...", file=sys.stderr)
        return 2
    parent, command = int(argv[0]), argv[1:]
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError as exc:  # not glibc Linux: the command still runs, it just may outlive a killed runner
        print(f"die_with_parent: cannot arm PR_SET_PDEATHSIG ({exc}); continuing", file=sys.stderr)
    if os.getppid() != parent:  # the parent died before the signal was armed
        return 1
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"die_with_parent: cannot execute {command[0]}: {exc.strerror or exc}", file=sys.stderr)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
