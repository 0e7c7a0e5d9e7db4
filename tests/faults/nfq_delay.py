"""``python -m tests.faults.nfq_delay --queue 0 --delay-ms 20 --jitter-ms 10 --loss 0.01``: delay, jitter,
loss and reordering of a network namespace's outgoing packets, in user space, for kernels without
`sch_netem` (this machine's kernel is built without CONFIG_NET_SCH_NETEM and has no modules to load).

Run inside the namespace (`ip netns exec`), it binds nfnetlink queue `--queue` of that namespace; the
harness (`tests/faults/netns.py`) then sends the namespace's egress there with
`iptables -A OUTPUT -o eth0 -j NFQUEUE --queue-num N --queue-bypass`. The kernel keeps each packet and
hands us only its id (copy mode META); we give the verdict later: DROP with probability `loss`, else
ACCEPT at `now + delay ± jitter` (uniform), or at once with probability `reorder` (like netem's
`reorder`). Jitter alone reorders packets too, as netem's does. `--queue-bypass` lets packets through
unchanged when no process is bound (this one exited).

The decision per packet is `decide` (pure: the random draws are its inputs); the netlink messages are
built and read by `config_message`, `verdict_message` and `packet_ids` (pure), tested in
tests/faults/test_netns_units.py. Counters go to `--stats` (JSON) every second and at exit.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
NF_DROP = 0
NF_ACCEPT = 1
QUEUE_MAXLEN = 20000


@dataclass(frozen=True)
class Shape:
    delay: float = 0.0  # seconds
    jitter: float = 0.0  # seconds, uniform +-
    loss: float = 0.0  # probability
    reorder: float = 0.0  # probability of no delay at all


def decide(shape: Shape, now: float, loss_draw: float, reorder_draw: float, jitter_draw: float) -> float | None:
    """When to let one packet go (None: drop it). Draws are uniform in [0, 1)."""
    if loss_draw < shape.loss:
        return None
    if reorder_draw < shape.reorder:
        return now
    return now + max(0.0, shape.delay + (2.0 * jitter_draw - 1.0) * shape.jitter)


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _message(msg: int, queue: int, flags: int, seq: int, attrs: bytes, family: int = socket.AF_INET) -> bytes:
    body = struct.pack("!BBH", family, 0, queue) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq, 0) + body


def config_message(queue: int, seq: int, command: int | None = None) -> bytes:
    """Bind queue `queue` (command) or set copy mode META and the queue length (no command)."""
    if command is not None:
        attrs = _attr(NFQA_CFG_CMD, struct.pack("!BxH", command, socket.AF_INET))
    else:
        attrs = (_attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                 + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN)))
    return _message(NFQNL_MSG_CONFIG, queue, NLM_F_REQUEST | NLM_F_ACK, seq, attrs, socket.AF_UNSPEC)


def verdict_message(queue: int, packet_id: int, verdict: int) -> bytes:
    return _message(NFQNL_MSG_VERDICT, queue, NLM_F_REQUEST, 0,
                    _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id)))


def _messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            return
        yield kind, data[offset + 16:offset + length]
        offset += (length + 3) & ~3


def packet_ids(data: bytes) -> tuple[list[int], list[int]]:
    """The ids of the packets in one netlink read, and the errno of every error message in it (0: an ack)."""
    ids: list[int] = []
    errors: list[int] = []
    for kind, body in _messages(data):
        if kind == NLMSG_ERROR:
            errors.append(-struct.unpack_from("=i", body, 0)[0])
            continue
        if kind != (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            continue
        offset = 4  # nfgenmsg
        while offset + 4 <= len(body):
            length, attr = struct.unpack_from("=HH", body, offset)
            if length < 4:
                break
            if attr & 0x7FFF == NFQA_PACKET_HDR:
                ids.append(struct.unpack_from("!I", body, offset + 4)[0])
                break
            offset += (length + 3) & ~3
    return ids, errors


def _request(sock: socket.socket, message: bytes) -> None:
    sock.send(message)
    _ids, errors = packet_ids(sock.recv(65536))
    if any(errors):
        raise OSError(errors[0], f"nfnetlink queue config refused: {os.strerror(errors[0])}")


def serve(queue: int, shape: Shape, seed: int, stats_path: Path | None, ready: Path | None) -> int:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE (root): bursts must not overflow
    sock.bind((0, 0))
    _request(sock, config_message(queue, 1, NFQNL_CFG_CMD_BIND))
    _request(sock, config_message(queue, 2))
    rng = random.Random(seed)
    pending: list[tuple[float, int, int]] = []  # (release time, order, packet id)
    counters = {"packets": 0, "dropped": 0, "immediate": 0, "overruns": 0}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if ready is not None:
        ready.write_text(str(os.getpid()))
    last_stats = 0.0
    order = 0
    while not stopping:
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, _, packet = heapq.heappop(pending)
            sock.send(verdict_message(queue, packet, NF_ACCEPT))
        timeout = max(0.0, pending[0][0] - now) if pending else 0.5
        readable, _, _ = select.select([sock], [], [], timeout)
        if readable:
            try:
                data = sock.recv(1 << 20)
            except OSError:  # ENOBUFS: the kernel dropped messages for us; those packets time out in its queue
                counters["overruns"] += 1
                continue
            now = time.monotonic()
            ids, _errors = packet_ids(data)
            for packet in ids:
                counters["packets"] += 1
                at = decide(shape, now, rng.random(), rng.random(), rng.random())
                if at is None:
                    counters["dropped"] += 1
                    sock.send(verdict_message(queue, packet, NF_DROP))
                elif at <= now:
                    counters["immediate"] += 1
                    sock.send(verdict_message(queue, packet, NF_ACCEPT))
                else:
                    order += 1
                    heapq.heappush(pending, (at, order, packet))
        if stats_path is not None and now - last_stats >= 1.0:
            stats_path.write_text(json.dumps(counters))
            last_stats = now
    for _, _, packet in pending:  # let what we hold go: the rule stays until the namespace is removed
        sock.send(verdict_message(queue, packet, NF_ACCEPT))
    if stats_path is not None:
        stats_path.write_text(json.dumps(counters))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.nfq_delay", description=__doc__.split("\n")[0])
    parser.add_argument("--queue", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0, help="probability a packet is dropped (0.01: 1 %%)")
    parser.add_argument("--reorder", type=float, default=0.0, help="probability a packet goes without delay")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stats", type=Path, default=None)
    parser.add_argument("--ready", type=Path, default=None, help="written once the queue is bound")
    args = parser.parse_args(argv)
    shape = Shape(args.delay_ms / 1000.0, args.jitter_ms / 1000.0, args.loss, args.reorder)
    return serve(args.queue, shape, args.seed, args.stats, args.ready)


if __name__ == "__main__":
    sys.exit(main())
