"""When the agent drops its stream to the master: the stale-stream rule, pure (times are inputs).

A stream is only as good as both directions of it. The agent drops it, and the link dials again (a
re-registration follows), when either side has been silent for longer than `stale_after` (three
heartbeats and a second):
- the master: nothing received for that long (the master is gone, or the stream died without an error:
  no client keepalive pings, docs/protocol.md);
- the agent itself: nothing told the master it is alive for that long, neither the `Register` that
  opened the stream nor a heartbeat. The agent's loop did not run: the process was stopped (SIGSTOP)
  or starved. The master may have marked it unreachable meanwhile, and heartbeats on the old stream do
  not undo that; only a re-registration does.

The second rule does not depend on what happens to arrive first when the loop runs again: a message
the master sent before the pause (an acknowledgement of the last heartbeat, in flight when the process
stopped) refreshes `last_received`, but nothing the loop handles refreshes `last_alive` except a
heartbeat or a `Register` it sends, after this check.
"""

from __future__ import annotations


def stale_stream(now: float, *, last_received: float, last_alive: float, stale_after: float) -> str | None:
    """Why the current stream must be dropped at `now`, or None to keep it.

    `last_received`: when the last message from the master on this stream was handled (the stream's
    opening counts). `last_alive`: when the agent last told the master it is alive on this stream (its
    `Register`, or a heartbeat). All three times on the same monotonic clock."""
    silent_master = now - last_received
    if silent_master > stale_after:
        return f"no message from the master for {silent_master:.1f}s"
    silent_agent = now - last_alive
    if silent_agent > stale_after:
        return (f"this agent sent no heartbeat for {silent_agent:.1f}s (it was stopped or starved); the master "
                f"may have marked it unreachable")
    return None
